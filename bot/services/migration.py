"""A chat's stored data follows the chat when Telegram gives it a new id."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import ChatRepository
from bot.services.directory import Directory

logger = logging.getLogger(__name__)


class ChatMigration:
    """Moves a chat's conversation, settings and usage records to its new id.

    Telegram gives a basic group a new id when it becomes a supergroup, and says so twice: with
    the service message ``migrate_to_chat_id`` in the old group, and with the error answered to
    any call naming the old id. Either may come first, or only one of them, so moving is safe to
    repeat: once the old id holds nothing, moving again changes nothing.
    """

    def __init__(
        self, *, sessions: async_sessionmaker[AsyncSession], directory: Directory
    ) -> None:
        """Store through `sessions`; `directory` is the one the other services share."""
        self._sessions = sessions
        self._directory = directory

    async def move(self, *, old_chat_id: int, new_chat_id: int) -> bool:
        """Move everything stored under `old_chat_id` to `new_chat_id` in one transaction.

        Returns True if anything was moved; False if nothing was left to move, or if the
        database refused (logged: the next announcement of the move tries again).
        """
        if old_chat_id == new_chat_id:
            return False
        try:
            async with self._sessions() as session, session.begin():
                moved = await ChatRepository(session).move(
                    old_chat_id=old_chat_id, new_chat_id=new_chat_id
                )
        except SQLAlchemyError:
            logger.exception("chat %s: could not move its data to %s", old_chat_id, new_chat_id)
            return False
        # After the commit, as the Directory wants: the old chat is gone, and the new one may
        # have taken the old one's model.
        self._directory.forget_chat(old_chat_id)
        self._directory.forget_chat(new_chat_id)
        if moved.chat is not None:
            self._directory.remember(moved.chat)
        if not moved.changed:
            return False
        logger.info(
            "chat %s moved to %s: %s turns, %s usage records",
            old_chat_id,
            new_chat_id,
            moved.turns,
            moved.usage_records,
        )
        return True
