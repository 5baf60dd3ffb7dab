"""Who may change a chat's settings or stop an answer there."""

from __future__ import annotations

import logging

from aiogram import Bot
from aiogram.enums import ChatMemberStatus
from aiogram.exceptions import TelegramAPIError
from aiogram.types import Chat

from bot.config import Settings
from bot.telegram.filters import GROUP_TYPES

logger = logging.getLogger(__name__)

ADMIN_STATUSES = frozenset({ChatMemberStatus.CREATOR, ChatMemberStatus.ADMINISTRATOR})


async def manages_chat(*, bot: Bot, settings: Settings, chat: Chat, user_id: int) -> bool:
    """Anyone in a private chat; in groups the group's administrators and the bot's owners."""
    if chat.type not in GROUP_TYPES or settings.is_owner(user_id):
        return True
    try:
        member = await bot.get_chat_member(chat_id=chat.id, user_id=user_id)
    except TelegramAPIError as exc:
        # Telegram may not know the user's membership (e.g. hidden members): refuse, safely.
        logger.warning("chat %s: could not check user %s: %s", chat.id, user_id, exc)
        return False
    return member.status in ADMIN_STATUSES
