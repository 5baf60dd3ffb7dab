"""/start, /help and /reset."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from bot import texts
from bot.services.chat import ChatService
from bot.telegram.filters import NotFromBot
from bot.telegram.replies import Replies


async def start(message: Message, replies: Replies) -> None:
    """Greet and say what the bot does."""
    name = message.from_user.first_name if message.from_user else ""
    await replies.text(message, texts.START.format(name=f", {name}" if name else ""))


async def help_(message: Message, replies: Replies, bot: Bot) -> None:
    """List the commands."""
    me = await bot.me()
    await replies.text(message, texts.HELP.format(username=me.username or "bot"))


async def reset(message: Message, replies: Replies, chat_service: ChatService) -> None:
    """Forget this chat's conversation."""
    await chat_service.reset(chat_id=message.chat.id)
    await replies.text(message, texts.RESET_DONE)


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(start, CommandStart())
    router.message.register(help_, Command("help"))
    router.message.register(reset, Command("reset", "new"))
    return router
