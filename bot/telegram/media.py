"""Sending pictures: a photo when Telegram takes it as one, else a file; and a lasting action."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from aiogram import Bot
from aiogram.enums import ChatAction
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import BufferedInputFile, ReplyParameters

from bot.telegram.pacing import FloodGate, Sleep
from bot.telegram.streaming import TYPING_RENEW_SECONDS

logger = logging.getLogger(__name__)

# sendPhoto's documented limits: at most 10 MB, width + height at most 10000, and a width to
# height ratio of at most 20. Larger pictures are sent with sendDocument (up to 50 MB).
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDES = 10_000
PHOTO_MAX_RATIO = 20
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
CAPTION_LIMIT = 1024  # characters of a media caption
SEND_ATTEMPTS = 6


def fits_photo(*, size: int, mime_type: str, width: int | None, height: int | None) -> bool:
    """True when Telegram accepts the picture as a photo rather than only as a file."""
    if mime_type not in PHOTO_TYPES or size > PHOTO_MAX_BYTES or not width or not height:
        return False
    return width + height <= PHOTO_MAX_SIDES and max(width, height) <= PHOTO_MAX_RATIO * min(
        width, height
    )


def shorten_caption(text: str, limit: int = CAPTION_LIMIT) -> str:
    """Cut `text` to at most `limit` UTF-16 code units (as Telegram counts), ending with "…"."""
    text = text.strip()
    if _utf16_len(text) <= limit:
        return text
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit - 1:  # room for the ellipsis
            return text[:index].rstrip() + "…"
    return text


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class ChatActionKeeper:
    """Shows a chat action (such as "sending a photo…") from `start()` until the block ends.

    Telegram shows an action for about five seconds or until the bot's next message, so it is
    renewed until `stop()`; failures to send it are ignored, it is only a courtesy.
    """

    def __init__(
        self,
        *,
        bot: Bot,
        chat_id: int,
        action: ChatAction,
        thread_id: int | None = None,
        interval: float = TYPING_RENEW_SECONDS,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._action = action
        self._thread_id = thread_id
        self._interval = interval
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin showing the action (once; later calls do nothing)."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep())

    async def stop(self) -> None:
        """Stop renewing the action."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> ChatActionKeeper:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _keep(self) -> None:
        while True:
            with contextlib.suppress(TelegramAPIError):
                await self._bot.send_chat_action(
                    chat_id=self._chat_id, action=self._action, message_thread_id=self._thread_id
                )
            await self._sleep(self._interval)


class ImageSender:
    """Delivers one picture to a chat, paced by the FloodGate, retrying what may succeed later."""

    def __init__(self, *, bot: Bot, gate: FloodGate, sleep: Sleep = asyncio.sleep) -> None:
        self._bot = bot
        self._gate = gate
        self._sleep = sleep

    async def send(
        self,
        *,
        chat_id: int,
        data: bytes,
        filename: str,
        mime_type: str,
        width: int | None,
        height: int | None,
        caption: str,
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> bool:
        """Send the picture with `caption`; True once Telegram has it, False if it refused."""
        as_photo = fits_photo(size=len(data), mime_type=mime_type, width=width, height=height)
        caption = shorten_caption(caption)
        reply = (
            ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
            if reply_to is not None
            else None
        )
        for attempt in range(SEND_ATTEMPTS):
            await self._gate.turn(chat_id)
            upload = BufferedInputFile(data, filename=filename)
            try:
                if as_photo:
                    await self._bot.send_photo(
                        chat_id=chat_id,
                        photo=upload,
                        caption=caption or None,
                        message_thread_id=thread_id,
                        reply_parameters=reply,
                    )
                else:
                    await self._bot.send_document(
                        chat_id=chat_id,
                        document=upload,
                        caption=caption or None,
                        message_thread_id=thread_id,
                        reply_parameters=reply,
                    )
                return True
            except TelegramRetryAfter as exc:
                self._gate.block(chat_id, exc.retry_after)
                logger.info("chat %s: flood control, retry after %ss", chat_id, exc.retry_after)
            except (TelegramNetworkError, TelegramServerError) as exc:
                logger.info("chat %s: sending the image failed (%s), retrying", chat_id, exc)
                await self._sleep(min(10.0, 0.5 * 2**attempt))
            except TelegramBadRequest as exc:
                if not as_photo:
                    logger.error("chat %s: image refused: %s", chat_id, exc.message)
                    return False
                # Telegram has limits of its own on photos (dimensions it cannot process, say):
                # the file itself is still worth delivering.
                logger.warning("chat %s: photo refused (%s), sending a file", chat_id, exc.message)
                as_photo = False
            except TelegramAPIError as exc:
                logger.warning("chat %s: unreachable: %s", chat_id, exc.message)
                return False
        logger.error("chat %s: gave up sending the image after %s attempts", chat_id, attempt + 1)
        return False
