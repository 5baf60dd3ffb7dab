"""/start, /help, /reset, and the command menu."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import BotCommand, Message

from bot.i18n import _
from bot.services.chat import ChatService
from bot.telegram.filters import NotFromBot
from bot.telegram.replies import Replies


def command_menu(*, images: bool) -> list[BotCommand]:
    """The command menu in the current locale (/image only while an image model is set)."""
    commands = [
        ("start", _("What this bot does")),
        ("help", _("List of commands")),
        ("reset", _("Start a new conversation")),
        ("new", _("Start a new conversation")),
        ("retry", _("Answer the last message again")),
        ("image", _("Generate an image")),
        ("usage", _("Token and image usage")),
        ("model", _("Choose the AI model")),
        ("language", _("Choose the language")),
    ]
    return [
        BotCommand(command=command, description=description)
        for command, description in commands
        if command != "image" or images
    ]


async def start(message: Message, replies: Replies) -> None:
    """Greet and say what the bot does."""
    name = message.from_user.first_name if message.from_user else ""
    greeting = _("Hi, {name}!").format(name=name) if name else _("Hi!")
    text = _(
        "{greeting} I am an AI assistant. Write me anything and I will answer, keeping our "
        "conversation in mind.\n\n"
        "In groups, mention me or reply to my message.\n"
        "Use /reset to start a new conversation and /help to see all commands."
    )
    await replies.text(message, text.format(greeting=greeting))


async def help_(message: Message, replies: Replies, bot: Bot) -> None:
    """List the commands."""
    me = await bot.me()
    text = _(
        "Commands:\n"
        "/start — what this bot does\n"
        "/help — this list\n"
        "/reset (or /new) — forget this chat's conversation and start over\n"
        "/retry — answer the last message again (the new answer replaces the old one)\n"
        "/image <description> — draw a picture (or reply /image to a message to draw what it "
        "says)\n"
        "/usage — your tokens, images and their cost today, this month and in total\n"
        "/model — show or change the AI model of this chat (/model <id> switches directly)\n"
        "/language — choose the language I speak with you\n\n"
        "Just write a message to talk. In groups, mention me (@{username}) or reply to one of my "
        "messages."
    )
    await replies.text(message, text.format(username=me.username or "bot"))


async def reset(message: Message, replies: Replies, chat_service: ChatService) -> None:
    """Forget this chat's conversation."""
    await chat_service.reset(chat_id=message.chat.id)
    await replies.text(message, _("Started a new conversation. Previous messages are forgotten."))


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(start, CommandStart())
    router.message.register(help_, Command("help"))
    router.message.register(reset, Command("reset", "new"))
    return router
