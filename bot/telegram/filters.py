"""Filters deciding whether a message is meant for the bot, and what it carries.

All are coroutines: aiogram runs a plain callable filter, its magic filters (`F.text`…)
included, in a worker thread (`asyncio.to_thread`), a thread hop per filter per message.
"""

from __future__ import annotations

from typing import Any

from aiogram import Bot
from aiogram.filters import BaseFilter
from aiogram.types import Message

GROUP_TYPES = frozenset({"group", "supergroup"})


class NotFromBot(BaseFilter):
    """Passes messages written by people; the bot never answers other bots."""

    async def __call__(self, message: Message) -> bool:
        """True unless the sender is a bot."""
        return message.from_user is not None and not message.from_user.is_bot


class Carries(BaseFilter):
    """Passes messages with any of these fields set (e.g. "text", "caption", "document")."""

    def __init__(self, *fields: str) -> None:
        """The Message fields looked at."""
        self._fields = fields

    async def __call__(self, message: Message) -> bool:
        """True if one of the fields is set and not empty."""
        return any(getattr(message, name, None) for name in self._fields)


class CommandText(BaseFilter):
    """Passes text messages that begin with a slash: commands, known to the bot or not."""

    async def __call__(self, message: Message) -> bool:
        """True for a text starting with "/"."""
        return bool(message.text) and (message.text or "").startswith("/")


class ContentType(BaseFilter):
    """Passes messages of these content types (Telegram's names: "sticker", "video"…)."""

    def __init__(self, types: frozenset[str]) -> None:
        """The content types passed."""
        self._types = types

    async def __call__(self, message: Message) -> bool:
        """True if the message's content type is one of them."""
        return message.content_type in self._types


class Addressed(BaseFilter):
    """Passes private messages, and group messages that mention or reply to the bot.

    Hands the handler `prompt`: the message text (or caption) without the bot's @mention.
    """

    async def __call__(self, message: Message, bot: Bot) -> bool | dict[str, Any]:
        """Decide and, when addressed, strip the mention from the text."""
        text = message.text or message.caption or ""
        if message.chat.type not in GROUP_TYPES:
            return {"prompt": text.strip()}
        me = await bot.me()
        reply = message.reply_to_message
        if reply is not None and reply.from_user is not None and reply.from_user.id == me.id:
            return {"prompt": text.strip()}
        username = (me.username or "").lower()
        entities = message.entities or message.caption_entities or []
        for entity in entities:
            if entity.type == "text_mention" and entity.user and entity.user.id == me.id:
                return {"prompt": text.strip()}
            if entity.type == "mention":
                mention = entity.extract_from(text)
                if mention.lstrip("@").lower() == username:
                    cleaned = (
                        text[: _py(text, entity.offset)]
                        + text[_py(text, entity.offset + entity.length) :]
                    ).strip()
                    return {"prompt": cleaned}
        return False


def _py(text: str, utf16_offset: int) -> int:
    """Convert a UTF-16 offset (as Telegram counts) into a Python string index."""
    units = 0
    for index, char in enumerate(text):
        if units >= utf16_offset:
            return index
        units += 2 if ord(char) > 0xFFFF else 1
    return len(text)
