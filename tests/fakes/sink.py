"""A ReplySink that records what a service would show, for service-level tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class RecordingSink:
    """Collects what the service shows, as the Telegram stream writer would."""

    pushed: list[str] = field(default_factory=list)
    finished: bool = False
    note: str | None = None
    mark: str | None = None
    failure: str | None = None
    # Set it to stop the answer, as the user's Stop button would.
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Nothing to show before the answer."""

    def push(self, text: str) -> None:
        """Record a piece of the answer."""
        self.pushed.append(text)

    async def finish(self, *, note: str | None = None, mark: str | None = None) -> bool:
        """Record that the answer was delivered, with its note and mark."""
        self.finished, self.note, self.mark = True, note, mark
        return True

    async def fail(self, message: str) -> None:
        """Record the failure message shown instead of an answer."""
        self.failure = message

    @property
    def shown(self) -> bool:
        """True once any answer text was pushed."""
        return bool(self.pushed)
