"""Files users send, downloaded through getFile into memory: capped in bytes and in time.

Nothing is written to disk, and nothing of a file's content reaches the log.
"""

from __future__ import annotations

import io
import logging

import aiohttp
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

logger = logging.getLogger(__name__)

# Seconds one download may take, and the most Telegram lets bots download through getFile.
DOWNLOAD_TIMEOUT_SECONDS = 30
TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024


class TooLarge(Exception):
    """The file went past the byte limit while downloading."""


class DownloadFailed(Exception):
    """Telegram or the network failed the download (or it took too long)."""


class _CappedBuffer(io.BytesIO):
    """Holds a download in memory and refuses it once it grows past `limit` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def write(self, data: bytes, /) -> int:  # type: ignore[override]
        """Append `data`, unless the whole would exceed the limit."""
        if self.tell() + len(data) > self._limit:
            raise TooLarge
        return super().write(data)


async def download(bot: Bot, file_id: str, *, limit: int, chat_id: int) -> bytes:
    """The file's bytes, at most `limit` of them (TooLarge past it; DownloadFailed on errors).

    Works with Telegram's servers and with a local Bot API server alike: aiogram's Bot.download
    asks getFile and reads the file from the configured server.
    """
    buffer = _CappedBuffer(min(limit, TELEGRAM_DOWNLOAD_LIMIT))
    try:
        await bot.download(file_id, destination=buffer, timeout=DOWNLOAD_TIMEOUT_SECONDS)
    except (TelegramAPIError, aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("chat %s: file download failed: %s", chat_id, type(exc).__name__)
        raise DownloadFailed from exc
    return buffer.getvalue()
