"""Conversation: text messages addressed to the bot get a streamed answer. Registered last."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.i18n import _
from bot.services.chat import ChatService
from bot.telegram.filters import (
    GROUP_TYPES,
    Addressed,
    Carries,
    CommandText,
    ContentType,
    NotFromBot,
)
from bot.telegram.replies import Replies
from bot.telegram.requests import chat_request

MEDIA_TYPES = frozenset(
    {
        "sticker",
        "photo",
        "voice",
        "video",
        "video_note",
        "audio",
        "document",
        "animation",
        "location",
        "venue",
        "contact",
        "poll",
        "dice",
        "story",
    }
)


async def unknown_command(message: Message, replies: Replies) -> None:
    """A command no other router knows (commands for other bots never get here in groups)."""
    command = (message.text or "").split()[0]
    mention = command.partition("@")[2]
    if message.chat.type in GROUP_TYPES and not mention:
        return  # a bare /cmd in a group may be meant for another bot
    await replies.text(message, _("Unknown command. See /help for the list."))


async def converse(
    message: Message, prompt: str, chat_service: ChatService, replies: Replies
) -> None:
    """Stream the model's answer to a text message."""
    if not prompt or message.from_user is None:
        return  # empty text (e.g. only the bot's @mention) is ignored
    request = chat_request(message, message.from_user, prompt)
    writer = replies.writer(message)
    await chat_service.reply(request=request, sink=writer)
    if writer.moved_to is not None:
        # Only now that the answer's turn is stored (under the old id) does the chat move.
        await replies.chat_moved(old_chat_id=message.chat.id, new_chat_id=writer.moved_to)


async def retry(message: Message, chat_service: ChatService, replies: Replies) -> None:
    """/retry: answer the chat's last question again, replacing the last answer."""
    if message.from_user is None:
        return
    # The question is read from the chat's history, not from this message.
    request = chat_request(message, message.from_user, "")
    writer = replies.writer(message)
    await chat_service.retry(request=request, sink=writer)
    if writer.moved_to is not None:
        await replies.chat_moved(old_chat_id=message.chat.id, new_chat_id=writer.moved_to)


async def unsupported(message: Message, replies: Replies) -> None:
    """Stickers, videos, locations and the like: say what is supported."""
    text = _(
        "I can read text, pictures, voice messages and text files. Stickers, videos and the "
        "like are not supported — please write your question as text."
    )
    await replies.text(message, text)


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(retry, Command("retry"))
    router.message.register(unknown_command, CommandText(), Addressed())
    router.message.register(converse, Carries("text", "caption"), Addressed())
    router.message.register(unsupported, ContentType(MEDIA_TYPES), Addressed())
    return router
