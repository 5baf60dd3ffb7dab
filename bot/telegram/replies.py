"""Builds reply writers for incoming messages; every bot message goes through one of them."""

from __future__ import annotations

from aiogram import Bot
from aiogram.types import Message

from bot.telegram.filters import GROUP_TYPES
from bot.telegram.pacing import FloodGate
from bot.telegram.streaming import TelegramReplyWriter, WriterOptions


class Replies:
    """Creates paced writers answering a message: in groups as a reply to it."""

    def __init__(self, *, bot: Bot, gate: FloodGate, options: WriterOptions | None = None) -> None:
        self._bot = bot
        self._gate = gate
        self._options = options

    def writer(self, message: Message) -> TelegramReplyWriter:
        """A stream writer answering `message`."""
        in_group = message.chat.type in GROUP_TYPES
        return TelegramReplyWriter(
            bot=self._bot,
            gate=self._gate,
            chat_id=message.chat.id,
            reply_to=message.message_id if in_group else None,
            thread_id=message.message_thread_id if message.is_topic_message else None,
            options=self._options,
        )

    async def text(self, message: Message, text: str) -> None:
        """Send a short plain-text answer to `message`."""
        writer = self.writer(message)
        in_group = message.chat.type in GROUP_TYPES
        await writer.send_text(text, reply_to=message.message_id if in_group else None)
