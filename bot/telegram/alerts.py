"""Messages the bot sends its owners unasked: a backend that refused its API key."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.i18n import _, use_locale
from bot.llm.backends import BackendSpec
from bot.services.languages import LanguageService
from bot.telegram.replies import Replies

logger = logging.getLogger(__name__)

# The backend's own words are shown, cut to this many characters.
REASON_LIMIT = 300


class OwnerAlerts:
    """Tells every owner (OWNER_IDS), in private and in their language."""

    def __init__(
        self, *, replies: Replies, owner_ids: Sequence[int], languages: LanguageService
    ) -> None:
        self._replies = replies
        self._owner_ids = tuple(owner_ids)
        self._languages = languages

    async def backend_refused_key(self, spec: BackendSpec, reason: str) -> None:
        """A backend refused its key (401/403) and left rotation: its name and its words."""
        for owner_id in self._owner_ids:
            locale = await self._languages.locale_for(user_id=owner_id, language_code=None)
            with use_locale(locale):
                text = _(
                    "⚠️ The AI backend “{name}” refused the bot's API key, so it was taken out "
                    "of rotation; chats are answered by the other backends meanwhile. The "
                    "backend said: {reason}\n\nCheck its key (LLM_API_KEY or its LLM_FALLBACKS "
                    "entry). /status shows every backend's state."
                ).format(name=spec.name, reason=reason[:REASON_LIMIT])
            if not await self._replies.notice(owner_id, text):
                # An owner who never started a private chat with the bot cannot be written to.
                logger.warning("could not tell owner %s about backend %s", owner_id, spec.name)
