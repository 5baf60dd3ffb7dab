"""Which language the bot speaks with each user: their choice, the owner's, or Telegram's."""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import UserRepository
from bot.i18n import DEFAULT_LOCALE, normalize
from bot.services.directory import Directory

logger = logging.getLogger(__name__)


class LanguageService:
    """Resolves each user's locale: stored choice > DEFAULT_LANGUAGE > Telegram's > English.

    Stored choices are kept in memory by the shared Directory, so resolving a locale costs a
    database query only the first time a user is seen after a start; `choose` writes through.
    """

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        default_language: str | None = None,
        directory: Directory | None = None,
        read_sessions: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        """`read_sessions`: read-only sessions for reads that write nothing (else `sessions`)."""
        self._sessions = sessions
        self._read_sessions = read_sessions or sessions
        self._directory = directory or Directory(capacity=0)
        self._default = normalize(default_language)

    def automatic(self, *, language_code: str | None) -> str:
        """The locale of a user who chose none: DEFAULT_LANGUAGE, else Telegram's, else English."""
        return self._default or normalize(language_code) or DEFAULT_LOCALE

    async def chosen(self, *, user_id: int) -> str | None:
        """The locale the user picked with /language, or None for automatic."""
        user = await self._directory.stored_user(self._read_sessions, user_id=user_id)
        # A language no longer offered counts as no choice.
        return normalize(user.language) if user is not None else None

    async def locale_for(self, *, user_id: int | None, language_code: str | None) -> str:
        """The locale to speak with this user now."""
        chosen = await self.chosen(user_id=user_id) if user_id is not None else None
        return chosen or self.automatic(language_code=language_code)

    async def choose(
        self,
        *,
        user_id: int,
        username: str | None,
        full_name: str,
        language_code: str | None,
        language: str | None,
    ) -> str:
        """Store the user's choice (None: automatic) and return the locale now in effect."""
        choice = normalize(language)
        async with self._sessions() as session, session.begin():
            # The user may never have written before, and set_language needs their row.
            user = await self._directory.user(
                session,
                user_id=user_id,
                username=username,
                full_name=full_name,
                language_code=language_code,
            )
            await UserRepository(session).set_language(user_id=user_id, language=choice)
        self._directory.remember(dataclasses.replace(user, language=choice))
        logger.info("user %s chose language %s", user_id, choice or "automatic")
        return choice or self.automatic(language_code=language_code)
