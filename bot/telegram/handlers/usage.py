"""/usage: a user's own usage; for owners, in private, the whole bot or any one user.

In groups everyone, owners included, gets only their own figures: a group is no place for
other people's usage or the bot's costs.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.config import Settings
from bot.i18n import _
from bot.services.usage import UsageService
from bot.telegram.filters import GROUP_TYPES, NotFromBot
from bot.telegram.replies import Replies
from bot.telegram.usage_view import bot_report_text, user_report_text


async def usage(
    message: Message,
    command: CommandObject,
    usage_service: UsageService,
    settings: Settings,
    replies: Replies,
) -> None:
    """Show usage figures to whoever may see them."""
    if message.from_user is None:
        return
    caller = message.from_user.id
    owner = settings.is_owner(caller)
    private = message.chat.type not in GROUP_TYPES
    argument = (command.args or "").strip()
    if argument:
        if not owner:
            await replies.text(
                message, _("You can only see your own usage: send /usage without a number.")
            )
            return
        if not private:
            text = _(
                "Reports about the whole bot and about other users are shown only in a private "
                "chat with me."
            )
            await replies.text(message, text)
            return
        try:
            target = int(argument)
        except ValueError:
            await replies.text(
                message, _("Send /usage for the whole bot, or /usage <user id> for one user.")
            )
            return
        report = await usage_service.user_report(user_id=target)
        parts = user_report_text(report, own=target == caller)
    elif owner and private:
        parts = bot_report_text(await usage_service.bot_report())
    else:
        report = await usage_service.user_report(user_id=caller)
        footer = (
            _("The report about the whole bot is in a private chat with me (/usage).")
            if owner
            else None
        )
        parts = user_report_text(report, own=True, footer=footer)
    for part in parts:
        await replies.text(message, part)


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(usage, Command("usage"))
    return router
