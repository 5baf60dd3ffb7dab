"""Prices of model requests: per million tokens, per image and per minute of transcribed audio."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MILLION = 1_000_000
SECONDS_PER_MINUTE = 60


@dataclass(frozen=True, slots=True)
class Price:
    """What one model costs, in the owner's currency (shown as US dollars)."""

    prompt_per_million: float = 0.0
    completion_per_million: float = 0.0
    per_image: float = 0.0
    per_audio_minute: float = 0.0  # speech to text, per minute of audio (by the second)

    @property
    def is_free(self) -> bool:
        """True when nothing this model does costs anything."""
        return not (
            self.prompt_per_million
            or self.completion_per_million
            or self.per_image
            or self.per_audio_minute
        )

    def cost(
        self, *, prompt_tokens: int, completion_tokens: int, images: int, audio_seconds: int = 0
    ) -> float:
        """The cost of the given amounts."""
        per_million = (
            prompt_tokens * self.prompt_per_million
            + completion_tokens * self.completion_per_million
        )
        return (
            per_million / MILLION
            + images * self.per_image
            + audio_seconds * self.per_audio_minute / SECONDS_PER_MINUTE
        )


@dataclass(frozen=True, slots=True)
class PriceList:
    """A default price and the models priced differently."""

    default: Price = Price()
    models: Mapping[str, Price] = field(default_factory=dict)

    def for_model(self, model: str) -> Price:
        """The price of `model`: its own when listed, else the default."""
        return self.models.get(model, self.default)

    @property
    def is_free(self) -> bool:
        """True when no model costs anything, so costs are not worth showing."""
        return self.default.is_free and all(p.is_free for p in self.models.values())
