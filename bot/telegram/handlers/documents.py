"""Text files (.txt, .md, .csv, code…) sent to the bot: read into the conversation and answered."""

from __future__ import annotations

import asyncio
import io
import logging

import aiohttp
from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import Message

from bot.config import Settings
from bot.i18n import _, format_number
from bot.services.chat import ChatService
from bot.services.documents import DocumentRefusal, accepts, read_document
from bot.telegram.filters import Addressed, NotFromBot
from bot.telegram.replies import Replies
from bot.telegram.requests import chat_request

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_SECONDS = 30


class _TooLarge(Exception):
    """The download went past the byte limit."""


class _CappedBuffer(io.BytesIO):
    """Holds a download in memory and refuses it once it grows past `limit` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: bytes, /) -> int:  # type: ignore[override]
        """Append `data`, unless the whole would exceed the limit."""
        if self.tell() + len(data) > self._limit:
            raise _TooLarge
        return super().write(data)


async def document(
    message: Message,
    prompt: str,
    bot: Bot,
    settings: Settings,
    chat_service: ChatService,
    replies: Replies,
) -> None:
    """Read a text file (within DOCUMENT_MAX_BYTES) and answer it with its caption."""
    attached = message.document
    user = message.from_user
    if attached is None or user is None:
        return
    limit = settings.document_max_bytes
    if not accepts(attached.file_name, attached.mime_type):
        await replies.text(message, _not_text())
        return
    if attached.file_size is not None and attached.file_size > limit:
        await replies.text(message, _too_large(limit))
        return
    # A spent budget is refused before anything is downloaded.
    refusal = await chat_service.budget_refusal(user_id=user.id)
    if refusal is not None:
        await replies.text(message, refusal)
        return
    buffer = _CappedBuffer(limit)
    try:
        await bot.download(attached.file_id, destination=buffer, timeout=DOWNLOAD_TIMEOUT_SECONDS)
    except _TooLarge:
        await replies.text(message, _too_large(limit))
        return
    except (TelegramAPIError, aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("chat %s: file download failed: %s", message.chat.id, type(exc).__name__)
        await replies.text(message, _("I could not download this file. Please send it again."))
        return
    # Guessing an encoding can take a second on a large file: off the event loop.
    read = await asyncio.to_thread(
        read_document, attached.file_name, attached.mime_type, buffer.getvalue(), max_bytes=limit
    )
    if isinstance(read, DocumentRefusal):
        # Past the limit cannot happen here: the download stopped at it.
        empty = read is DocumentRefusal.EMPTY
        await replies.text(message, _("This file has no text in it.") if empty else _not_text())
        return
    text = chat_service.document_turn(read, prompt)
    writer = replies.writer(message)
    await chat_service.reply(request=chat_request(message, user, text), sink=writer)
    if writer.moved_to is not None:
        await replies.chat_moved(old_chat_id=message.chat.id, new_chat_id=writer.moved_to)


def _not_text() -> str:
    return _(
        "I can read text files (.txt, .md, .csv, .json, .log, source code and the like), but "
        "not this one."
    )


def _too_large(limit: int) -> str:
    return _("This file is too large: I read text files of up to {size} KB.").format(
        size=format_number(limit // 1024)
    )


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(document, F.document, Addressed())
    return router
