"""Answers being generated, so that a user's Stop can find and end one.

Each streaming answer opens a Generation with a random non-zero id. In a private chat streamed
as drafts, the id is the draft's `draft_id`, and Telegram's `stopped_message_generation` update
names it when the user presses the draft's stop button. Streamed by edits, the answer's message
carries an inline Stop button whose callback data names it. Either way the Generation's `stopped`
event is set, and whoever reads the backend for that answer stops reading.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from bot.i18n import _

if TYPE_CHECKING:
    from bot.telegram.shared_stops import SharedStops

# draft_id is a 64-bit integer for Telegram; a positive 31-bit one suits every client.
_MAX_ID = 2**31 - 1


class StopPress(CallbackData, prefix="stop"):
    """The Stop button of generation `g`."""

    g: int


@dataclass(slots=True)
class Generation:
    """One answer being generated: who asked for it, where, and whether it was stopped."""

    id: int
    chat_id: int
    asker_id: int | None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def asked(self) -> Asked:
        """This answer as a Stop sees it."""
        return Asked(id=self.id, chat_id=self.chat_id, asker_id=self.asker_id)

    def stop_button(self) -> InlineKeyboardMarkup:
        """The inline keyboard with this answer's Stop button, in the current language."""
        button = InlineKeyboardButton(text=_("⏹ Stop"), callback_data=StopPress(g=self.id).pack())
        return InlineKeyboardMarkup(inline_keyboard=[[button]])


@dataclass(frozen=True, slots=True)
class Asked:
    """A running answer as a Stop sees it: its id, its chat and who asked for it."""

    id: int
    chat_id: int
    asker_id: int | None


class Generations:
    """The answers being generated right now, by id: this replica's, and with `shared` (Redis)
    those of every replica, so that a Stop handled here also ends an answer running elsewhere.
    """

    def __init__(self, shared: SharedStops | None = None) -> None:
        self._running: dict[int, Generation] = {}
        self._shared = shared

    async def open(self, *, chat_id: int, asker_id: int | None) -> Generation:
        """Register a new answer; `close` it when it ends."""
        while True:
            generation_id = secrets.randbelow(_MAX_ID) + 1
            if generation_id in self._running:
                continue
            if self._shared is None or await self._shared.reserve(
                generation_id, chat_id=chat_id, asker_id=asker_id
            ):
                break
        generation = Generation(id=generation_id, chat_id=chat_id, asker_id=asker_id)
        self._running[generation_id] = generation
        return generation

    async def close(self, generation: Generation) -> None:
        """The answer has ended: a later Stop for it changes nothing."""
        if self._running.get(generation.id) is generation:
            del self._running[generation.id]
            if self._shared is not None:
                await self._shared.release(generation.id)

    async def find(self, *, chat_id: int, generation_id: int) -> Asked | None:
        """The running answer with this id in this chat, on any replica, if there is one."""
        generation = self._running.get(generation_id)
        asked: Asked | None = None
        if generation is not None:
            asked = generation.asked
        elif self._shared is not None:
            asked = await self._shared.find(generation_id)
        return asked if asked is not None and asked.chat_id == chat_id else None

    async def stop(self, asked: Asked) -> None:
        """End that answer: here if it runs here, else on the replica running it."""
        if self._stop_here(asked.id):
            return
        if self._shared is not None:
            await self._shared.stop(asked.id)

    async def listen(self) -> None:
        """Stop this replica's answers that other replicas' Stops name, until cancelled (returns
        at once without `shared`)."""
        if self._shared is not None:
            await self._shared.listen(self._stop_here)

    def _stop_here(self, generation_id: int) -> bool:
        generation = self._running.get(generation_id)
        if generation is None:
            return False
        generation.stopped.set()
        return True
