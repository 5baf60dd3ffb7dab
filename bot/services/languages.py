"""Which language the bot speaks with each user: their choice, the owner's, or Telegram's."""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import UserRepository
from bot.i18n import DEFAULT_LOCALE, normalize
from bot.services.directory import Directory

logger = logging.getLogger(__name__)

# Users whose stored choice is kept in memory; beyond this the least recently seen are dropped
# (and read again from the database when they come back).
CACHE_SIZE = 100_000


class LanguageService:
    """Resolves each user's locale: stored choice > DEFAULT_LANGUAGE > Telegram's > English.

    Stored choices are cached in memory, so resolving a locale costs a database query only the
    first time a user is seen after a start; `choose` writes through the cache.
    """

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        default_language: str | None = None,
        cache_size: int = CACHE_SIZE,
        directory: Directory | None = None,
    ) -> None:
        self._sessions = sessions
        self._directory = directory or Directory(capacity=0)
        self._default = normalize(default_language)
        self._cache_size = cache_size
        self._chosen: OrderedDict[int, str | None] = OrderedDict()

    def automatic(self, *, language_code: str | None) -> str:
        """The locale of a user who chose none: DEFAULT_LANGUAGE, else Telegram's, else English."""
        return self._default or normalize(language_code) or DEFAULT_LOCALE

    async def chosen(self, *, user_id: int) -> str | None:
        """The locale the user picked with /language, or None for automatic."""
        if user_id in self._chosen:
            self._chosen.move_to_end(user_id)
            return self._chosen[user_id]
        async with self._sessions() as session:
            user = await UserRepository(session).get(user_id=user_id)
        # A language no longer offered counts as no choice.
        choice = normalize(user.language) if user is not None else None
        self._remember(user_id, choice)
        return choice

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
        self._remember(user_id, choice)
        logger.info("user %s chose language %s", user_id, choice or "automatic")
        return choice or self.automatic(language_code=language_code)

    def _remember(self, user_id: int, choice: str | None) -> None:
        self._chosen[user_id] = choice
        self._chosen.move_to_end(user_id)
        while len(self._chosen) > self._cache_size:
            self._chosen.popitem(last=False)
