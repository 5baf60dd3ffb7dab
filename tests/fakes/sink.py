"""A ReplySink that records what a service would show, for service-level tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecordingSink:
    """Collects what the service shows, as the Telegram stream writer would."""

    pushed: list[str] = field(default_factory=list)
    finished: bool = False
    note: str | None = None
    failure: str | None = None

    async def start(self) -> None:
        """Nothing to show before the answer."""

    def push(self, text: str) -> None:
        """Record a piece of the answer."""
        self.pushed.append(text)

    async def finish(self, *, note: str | None = None) -> bool:
        """Record that the answer was delivered, with its note."""
        self.finished, self.note = True, note
        return True

    async def fail(self, message: str) -> None:
        """Record the failure message shown instead of an answer."""
        self.failure = message

    @property
    def shown(self) -> bool:
        """True once any answer text was pushed."""
        return bool(self.pushed)
