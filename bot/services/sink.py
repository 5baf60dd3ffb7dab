"""The port through which a service shows an answer to the user while it is produced."""

from __future__ import annotations

import asyncio
from typing import Protocol


class ReplySink(Protocol):
    """Receives an answer as it streams; the Telegram stream writer implements it."""

    async def start(self) -> None:
        """Show that an answer is being prepared (for example a typing indicator)."""

    def push(self, text: str) -> None:
        """Append a piece of the answer; never blocks, delivery happens in the background."""

    async def finish(self, *, note: str | None = None, mark: str | None = None) -> bool:
        """Deliver the complete text; `note` tells the user something went wrong after it.

        `mark` is a short word closing the text itself (e.g. "stopped"). Returns True when the
        complete text reached the user.
        """

    async def fail(self, message: str) -> None:
        """Tell the user the answer could not be produced (no answer text was pushed)."""

    @property
    def shown(self) -> bool:
        """True once any part of the answer is visible to the user."""

    @property
    def stop_requested(self) -> asyncio.Event:
        """Set when the user asks to stop the answer (valid from `start` on)."""
