"""Text files (.txt, .md, .csv, code…) sent to the bot: read into the conversation and answered."""

from __future__ import annotations

import asyncio

from aiogram import Bot, Router
from aiogram.types import Message

from bot.config import Settings
from bot.i18n import _, format_number
from bot.services.chat import ChatService
from bot.services.documents import DocumentRefusal, accepts, is_pdf, read_document
from bot.telegram.downloads import DownloadFailed, TooLarge, download
from bot.telegram.filters import Addressed, Carries, NotFromBot
from bot.telegram.replies import Replies
from bot.telegram.requests import chat_request


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
    pdf = is_pdf(attached.file_name, attached.mime_type)
    limit = settings.pdf_max_bytes if pdf else settings.document_max_bytes
    if not accepts(attached.file_name, attached.mime_type):
        await replies.text(message, _not_text())
        return
    if attached.file_size is not None and attached.file_size > limit:
        await replies.text(message, _too_large(limit, pdf=pdf))
        return
    # A spent budget is refused before anything is downloaded.
    refusal = await chat_service.budget_refusal(user_id=user.id)
    if refusal is not None:
        await replies.text(message, refusal)
        return
    try:
        data = await download(bot, attached.file_id, limit=limit, chat_id=message.chat.id)
    except TooLarge:
        await replies.text(message, _too_large(limit, pdf=pdf))
        return
    except DownloadFailed:
        await replies.text(message, download_failed())
        return
    # Guessing an encoding can take a second on a large file: off the event loop.
    read = await asyncio.to_thread(
        read_document, attached.file_name, attached.mime_type, data, max_bytes=limit
    )
    if isinstance(read, DocumentRefusal):
        await replies.text(message, _refusal(read))
        return
    text = chat_service.document_turn(read, prompt)
    writer = replies.writer(message)
    await chat_service.reply(request=chat_request(message, user, text), sink=writer)
    if writer.moved_to is not None:
        await replies.chat_moved(old_chat_id=message.chat.id, new_chat_id=writer.moved_to)


def download_failed() -> str:
    """The file could not be downloaded from Telegram."""
    return _("I could not download this file. Please send it again.")


def _refusal(refusal: DocumentRefusal) -> str:
    """Why the file was not read (past the limit cannot happen: the download stops at it)."""
    if refusal is DocumentRefusal.EMPTY:
        return _("This file has no text in it.")
    if refusal is DocumentRefusal.ENCRYPTED:
        return _("This PDF is protected with a password, so I cannot read it.")
    if refusal is DocumentRefusal.UNREADABLE:
        return _("This PDF is damaged or too complex to read.")
    if refusal is DocumentRefusal.NO_TEXT:
        return _(
            "This PDF has no text layer (it looks like scanned pages). Send the pages as "
            "photos instead."
        )
    return _not_text()


def _not_text() -> str:
    return _(
        "I can read text files (.txt, .md, .csv, .json, .log, source code and the like), PDFs, "
        "pictures and voice messages, but not this file."
    )


def _too_large(limit: int, *, pdf: bool) -> str:
    size = format_number(limit // 1024)
    if pdf:
        return _("This PDF is too large: I read PDFs of up to {size} KB.").format(size=size)
    return _("This file is too large: I read text files of up to {size} KB.").format(size=size)


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(document, Carries("document"), Addressed())
    return router
