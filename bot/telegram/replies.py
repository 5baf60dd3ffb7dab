"""Answers to incoming messages: where they go (reply, topic), delivered through `Delivery`."""

from __future__ import annotations

from typing import Literal

from aiogram import Bot
from aiogram.enums import ChatAction
from aiogram.types import InlineKeyboardMarkup, Message
from aiogram.utils.chat_action import ChatActionSender

from bot.services.migration import ChatMigration
from bot.telegram.delivery import Delivery, DeliveryPolicy, Sent
from bot.telegram.filters import GROUP_TYPES
from bot.telegram.pacing import FloodGate
from bot.telegram.stops import Generations
from bot.telegram.streaming import TelegramReplyWriter

StreamMode = Literal["auto", "draft", "edit"]


class Replies:
    """Answers a message in its chat and topic: in groups as a reply to it.

    When an answer finds the group upgraded to a supergroup (it then goes there), the chat's
    stored data follows it through `migration`. Streamed answers are registered in
    `generations` for a Stop; `stream_mode` says where they grow: "edit" always in an edited
    message, "auto" and "draft" in a draft in private chats (drafts are private-only) and in an
    edited message in groups.
    """

    def __init__(
        self,
        *,
        bot: Bot,
        gate: FloodGate,
        policy: DeliveryPolicy | None = None,
        migration: ChatMigration | None = None,
        stream_mode: StreamMode = "auto",
        draft_interval: float = 0.5,
        generations: Generations | None = None,
    ) -> None:
        self._delivery = Delivery(bot=bot, gate=gate, policy=policy)
        self._migration = migration
        self._stream_mode = stream_mode
        self._draft_interval = draft_interval
        self.generations = generations or Generations()

    def writer(self, message: Message) -> TelegramReplyWriter:
        """A stream writer answering `message` (its sender may stop the answer)."""
        return TelegramReplyWriter(
            delivery=self._delivery,
            chat_id=message.chat.id,
            reply_to=_reply_to(message),
            thread_id=_thread(message),
            generations=self.generations,
            asker_id=message.from_user.id if message.from_user else None,
            drafts=self._stream_mode != "edit" and message.chat.type == "private",
            draft_interval=self._draft_interval,
        )

    async def text(self, message: Message, text: str) -> None:
        """Send a short plain-text answer to `message`."""
        sent = await self._delivery.send_text(
            message.chat.id, text, thread_id=_thread(message), reply_to=_reply_to(message)
        )
        await self._follow(message, sent)

    async def notice(self, chat_id: int, text: str) -> bool:
        """Send a plain-text message to a chat unasked (an owner's private chat); True if sent."""
        sent = await self._delivery.send_text(chat_id, text)
        return sent.ok

    def chat_action(self, message: Message, action: ChatAction) -> ChatActionSender:
        """`action` shown in `message`'s chat while the returned sender's block runs."""
        return self._delivery.chat_action(message.chat.id, action, thread_id=_thread(message))

    async def image(
        self,
        message: Message,
        *,
        data: bytes,
        filename: str,
        mime_type: str,
        width: int | None,
        height: int | None,
        caption: str,
    ) -> bool:
        """Answer `message` with a picture: a photo, or a file when too large for a photo."""
        sent = await self._delivery.send_picture(
            message.chat.id,
            data=data,
            filename=filename,
            mime_type=mime_type,
            width=width,
            height=height,
            caption=caption,
            thread_id=_thread(message),
            reply_to=_reply_to(message),
        )
        await self._follow(message, sent)
        return sent.ok

    async def keyboard(self, message: Message, text: str, markup: InlineKeyboardMarkup) -> bool:
        """Answer `message` with plain text and an inline keyboard; False if it was not sent."""
        sent = await self._delivery.send_text(
            message.chat.id,
            text,
            markup=markup,
            thread_id=_thread(message),
            reply_to=_reply_to(message),
        )
        await self._follow(message, sent)
        return sent.ok

    async def edit(
        self, message: Message, text: str, markup: InlineKeyboardMarkup | None = None
    ) -> bool:
        """Replace the text and keyboard of one of the bot's messages; False if refused."""
        sent = await self._delivery.edit_text(
            message.chat.id, message.message_id, text, markup=markup
        )
        await self._follow(message, sent)
        return sent.ok

    async def chat_moved(self, *, old_chat_id: int, new_chat_id: int) -> None:
        """Move the chat's stored data to the supergroup its group became."""
        if self._migration is not None:
            await self._migration.move(old_chat_id=old_chat_id, new_chat_id=new_chat_id)

    async def _follow(self, message: Message, sent: Sent) -> None:
        if sent.moved_to is not None:
            await self.chat_moved(old_chat_id=message.chat.id, new_chat_id=sent.moved_to)


def _reply_to(message: Message) -> int | None:
    # In a group several people talk at once: say which message the answer is for.
    return message.message_id if message.chat.type in GROUP_TYPES else None


def _thread(message: Message) -> int | None:
    return message.message_thread_id if message.is_topic_message else None
