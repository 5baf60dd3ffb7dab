"""Group upgrades: a basic group that became a supergroup takes its conversation along."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import Message

from bot.services.migration import ChatMigration
from bot.telegram.filters import Carries


async def group_upgraded(message: Message, chat_migration: ChatMigration) -> None:
    """The old group's last message names the supergroup it became: move the chat's data."""
    new_chat_id = message.migrate_to_chat_id
    if new_chat_id is not None:
        await chat_migration.move(old_chat_id=message.chat.id, new_chat_id=new_chat_id)


def build_router() -> Router:
    """A fresh router with this module's handler (one per Dispatcher)."""
    router = Router(name=__name__)
    # Only the old group's announcement: it is handled in that chat's turn (ChatSequencer), so
    # after an answer still being written there has stored its turn under the old id. The
    # supergroup's own announcement (`migrate_from_chat_id`) could overtake that answer.
    router.message.register(group_upgraded, Carries("migrate_to_chat_id"))
    return router
