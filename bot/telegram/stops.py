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

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from bot.i18n import _

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

    def stop_button(self) -> InlineKeyboardMarkup:
        """The inline keyboard with this answer's Stop button, in the current language."""
        button = InlineKeyboardButton(text=_("⏹ Stop"), callback_data=StopPress(g=self.id).pack())
        return InlineKeyboardMarkup(inline_keyboard=[[button]])


class Generations:
    """The answers being generated right now, by id."""

    def __init__(self) -> None:
        self._running: dict[int, Generation] = {}

    def open(self, *, chat_id: int, asker_id: int | None) -> Generation:
        """Register a new answer; `close` it when it ends."""
        while True:
            generation_id = secrets.randbelow(_MAX_ID) + 1
            if generation_id not in self._running:
                break
        generation = Generation(id=generation_id, chat_id=chat_id, asker_id=asker_id)
        self._running[generation_id] = generation
        return generation

    def close(self, generation: Generation) -> None:
        """The answer has ended: a later Stop for it changes nothing."""
        if self._running.get(generation.id) is generation:
            del self._running[generation.id]

    def find(self, *, chat_id: int, generation_id: int) -> Generation | None:
        """The running answer with this id in this chat, if any."""
        generation = self._running.get(generation_id)
        if generation is None or generation.chat_id != chat_id:
            return None
        return generation
