"""The durable inbox: every fetched update is stored before Telegram is told it arrived.

aiogram's polling confirms a batch of updates with its next getUpdates (offset = last id + 1)
while their handlers still run as tasks, so a stop or a crash used to lose every update fetched
and not yet answered. Each batch is now written to the `inbox` table before aiogram sees it
(:class:`InboxRecorder`), an update leaves the table once it was handled (InflightTracker
collects the ids; they are deleted in bulk with the next batch and at shutdown), and at start
what is left is fed to the dispatcher again (:meth:`Inbox.replay`), before polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.methods import GetUpdates
from aiogram.methods.base import TelegramMethod, TelegramType
from aiogram.types import Update
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import InboxEntry, InboxRepository
from bot.telegram.middlewares import InflightTracker

if TYPE_CHECKING:
    from aiogram import Bot, Dispatcher

logger = logging.getLogger(__name__)


class Inbox:
    """Stores fetched updates, deletes handled ones and feeds the rest again at start."""

    def __init__(
        self, *, sessions: async_sessionmaker[AsyncSession], tracker: InflightTracker
    ) -> None:
        """`tracker` tells which updates were handled."""
        self._sessions = sessions
        self._tracker = tracker
        self._replays: set[asyncio.Task[None]] = set()
        self.last_stored_id: int | None = None

    async def record(self, updates: Sequence[Update], *, offset: int | None = None) -> None:
        """Store a fetched batch and delete the handled updates, in one short transaction."""
        handled = self._tracker.take_handled()
        if not updates and not handled:
            return
        entries = [
            InboxEntry(
                update_id=update.update_id,
                payload=update.model_dump_json(exclude_unset=True, by_alias=True),
            )
            for update in updates
        ]
        try:
            async with self._sessions.begin() as session:
                repository = InboxRepository(session)
                await repository.add(entries=entries)
                await repository.remove(update_ids=sorted(handled))
        except BaseException:
            # Deleted next time; the batch itself is fetched again (it was not confirmed).
            self._tracker.handled |= handled
            raise
        if updates:
            newest = max(update.update_id for update in updates)
            self.last_stored_id = max(newest, self.last_stored_id or newest)
        if offset:
            # Polling confirmed everything below `offset`: Telegram never sends it again.
            self._tracker.forget_below(offset)

    async def flush(self) -> None:
        """Delete the handled updates now (at shutdown)."""
        await self.record([])

    async def replay(self, dispatcher: Dispatcher, bot: Bot) -> int:
        """Feed the updates left from an earlier run to the dispatcher; how many there were.

        They are fed as tasks in update id order, before polling fetches anything newer, so
        each chat's messages reach the ChatSequencer in the order they were sent.
        """
        async with self._sessions() as session:
            waiting = await InboxRepository(session).waiting()
        broken: list[int] = []
        for entry in waiting:
            try:
                update = Update.model_validate_json(entry.payload, context={"bot": bot})
            except ValidationError:
                logger.error("inbox: update %s cannot be read back, dropping it", entry.update_id)
                broken.append(entry.update_id)
                continue
            task = asyncio.create_task(self._feed(dispatcher, bot, update))
            self._replays.add(task)
            task.add_done_callback(self._replays.discard)
        if broken:
            self._tracker.handled.update(broken)
        if waiting:
            logger.info("inbox: answering %s updates left from the last run", len(waiting))
        return len(waiting)

    async def _feed(self, dispatcher: Dispatcher, bot: Bot, update: Update) -> None:
        # As aiogram's polling does for each update: a failure is logged, the others go on.
        try:
            await dispatcher.feed_update(bot, update)
        except Exception:
            logger.exception("inbox: update %s failed", update.update_id)


class InboxRecorder(BaseRequestMiddleware):
    """A Bot API request middleware: getUpdates' batch reaches aiogram only once stored."""

    def __init__(self, inbox: Inbox) -> None:
        """Store batches in `inbox`."""
        self._inbox = inbox

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Any:  # aiogram's sessions pass the call's result through their middlewares
        """Make the call; for getUpdates, store the updates before returning them."""
        result = await make_request(bot, method)
        if isinstance(method, GetUpdates) and isinstance(result, list):
            # Should this fail, aiogram's polling backs off and asks again with the same
            # offset, so the batch is neither lost nor confirmed.
            await self._inbox.record(result, offset=method.offset)
        return result
