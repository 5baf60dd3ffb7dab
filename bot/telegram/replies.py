"""Builds reply writers for incoming messages; every bot message goes through one of them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiogram import Bot
from aiogram.enums import ChatAction
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import InlineKeyboardMarkup, Message, ReplyParameters

from bot.telegram.filters import GROUP_TYPES
from bot.telegram.media import ChatActionKeeper, ImageSender
from bot.telegram.pacing import FloodGate
from bot.telegram.streaming import NO_PREVIEW, TelegramReplyWriter, WriterOptions

logger = logging.getLogger(__name__)

# Keyboard messages are small and interactive: a few paced attempts, then give up and log.
KEYBOARD_ATTEMPTS = 3


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

    def chat_action(self, message: Message, action: ChatAction) -> ChatActionKeeper:
        """A keeper of `action` in `message`'s chat, shown from its `start()` until it stops."""
        return ChatActionKeeper(
            bot=self._bot,
            chat_id=message.chat.id,
            action=action,
            thread_id=message.message_thread_id if message.is_topic_message else None,
        )

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
        in_group = message.chat.type in GROUP_TYPES
        return await ImageSender(bot=self._bot, gate=self._gate).send(
            chat_id=message.chat.id,
            data=data,
            filename=filename,
            mime_type=mime_type,
            width=width,
            height=height,
            caption=caption,
            reply_to=message.message_id if in_group else None,
            thread_id=message.message_thread_id if message.is_topic_message else None,
        )

    async def keyboard(self, message: Message, text: str, markup: InlineKeyboardMarkup) -> bool:
        """Answer `message` with plain text and an inline keyboard; False if it was not sent."""
        in_group = message.chat.type in GROUP_TYPES
        reply = (
            ReplyParameters(message_id=message.message_id, allow_sending_without_reply=True)
            if in_group
            else None
        )
        return await self._paced(
            message.chat.id,
            lambda: self._bot.send_message(
                chat_id=message.chat.id,
                text=text,
                reply_markup=markup,
                message_thread_id=message.message_thread_id if message.is_topic_message else None,
                reply_parameters=reply,
                link_preview_options=NO_PREVIEW,
            ),
        )

    async def edit(
        self, message: Message, text: str, markup: InlineKeyboardMarkup | None = None
    ) -> bool:
        """Replace the text and keyboard of one of the bot's messages; False if refused."""
        return await self._paced(
            message.chat.id,
            lambda: self._bot.edit_message_text(
                chat_id=message.chat.id,
                message_id=message.message_id,
                text=text,
                reply_markup=markup,
                link_preview_options=NO_PREVIEW,
            ),
        )

    async def _paced(self, chat_id: int, call: Callable[[], Awaitable[object]]) -> bool:
        # Edits count against the same flood limits as new messages, so both take a turn.
        for _ in range(KEYBOARD_ATTEMPTS):
            await self._gate.turn(chat_id)
            try:
                await call()
                return True
            except TelegramRetryAfter as exc:
                self._gate.block(chat_id, exc.retry_after)
            except (TelegramNetworkError, TelegramServerError) as exc:
                logger.info("chat %s: Telegram call failed (%s), retrying", chat_id, exc)
            except TelegramBadRequest as exc:
                # A double press can ask for the text the message already shows.
                if "not modified" in exc.message.lower():
                    return True
                logger.warning("chat %s: message refused: %s", chat_id, exc.message)
                return False
            except TelegramAPIError as exc:
                logger.warning("chat %s: unreachable: %s", chat_id, exc.message)
                return False
        logger.warning("chat %s: gave up sending after %s attempts", chat_id, KEYBOARD_ATTEMPTS)
        return False
