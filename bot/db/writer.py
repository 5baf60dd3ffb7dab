"""Group commit: the rows of many finished turns written in one transaction.

Every answer ends with a write: the two turns, the usage record and, for a chat or user seen
for the first time (or renamed), their rows. SQLite lets one writer in at a time, and through
aiosqlite every statement, BEGIN and COMMIT is a round trip to the driver's thread, so a
thousand chats finishing together used to queue a thousand transactions of a dozen round trips
each. Here one task writes whatever has queued up meanwhile in a single transaction of at most
four statements (chats, users, turns, usage, each one executemany), and each caller learns
whether its own rows were committed.

A batch that fails as a whole (one turn breaks a constraint, the disk is full) is written again
one entry at a time, so an entry fails only for a reason of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import (
    ChatRecord,
    ChatRepository,
    NewTurn,
    NewUsage,
    TurnRepository,
    UsageRepository,
    UserRecord,
    UserRepository,
)

logger = logging.getLogger(__name__)

# Entries per transaction: enough to drain a burst in a few commits, few enough that one
# transaction holds the write lock for milliseconds, not seconds.
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class TurnWrite:
    """What one finished request stores: its chat and user first when they need writing."""

    turns: Sequence[NewTurn]  # of the usage record's chat
    usage: NewUsage
    chat: ChatRecord | None = None  # inserted, or its type and title updated (model kept)
    user: UserRecord | None = None  # inserted, or what Telegram reports updated (language kept)
    replaces: Sequence[int] = ()  # ids of turns the new ones replace (a regenerated answer)


class TurnWriter:
    """Writes TurnWrites in batches, one transaction per batch, in the order they came."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, max_batch: int = MAX_BATCH
    ) -> None:
        """Write through `sessions` (a writing session factory)."""
        self._sessions = sessions
        self._max_batch = max_batch
        self._queue: list[tuple[TurnWrite, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def write(self, entry: TurnWrite) -> None:
        """Return once `entry` is committed; raise the database's error if it cannot be.

        A caller cancelled meanwhile (a shutdown) does not take its entry back: it is written
        all the same, so a shown answer is kept.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A cancelled caller no longer awaits it: its failure must not be reported as unseen.
        future.add_done_callback(_observe)
        self._queue.append((entry, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="turn-writer")
        await asyncio.shield(future)

    async def close(self) -> None:
        """Wait until everything queued is written (or has failed)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._write_batch(batch)
        finally:
            self._task = None
            # Only a cancelled writer leaves entries behind: they fail rather than hang.
            for _, future in self._queue:
                if not future.done():
                    future.set_exception(asyncio.CancelledError())
            self._queue.clear()

    async def _write_batch(self, batch: list[tuple[TurnWrite, asyncio.Future[None]]]) -> None:
        try:
            await self._commit([entry for entry, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            logger.warning(
                "group commit of %d turns failed (%s); writing them one by one",
                len(batch),
                type(exc).__name__,
            )
            for entry, future in batch:
                try:
                    await self._commit([entry])
                except Exception as single:
                    _settle(future, single)
                else:
                    _settle(future, None)
        except BaseException as exc:
            for _, future in batch:
                _settle(future, exc)
            raise
        else:
            for _, future in batch:
                _settle(future, None)

    async def _commit(self, entries: Sequence[TurnWrite]) -> None:
        chats = {e.chat.id: e.chat for e in entries if e.chat is not None}
        users = {e.user.id: e.user for e in entries if e.user is not None}
        async with self._sessions.begin() as session:
            # Chats before turns: the turns' foreign key needs their chat's row.
            await ChatRepository(session).store(list(chats.values()))
            await UserRepository(session).store(list(users.values()))
            turns = TurnRepository(session)
            await turns.remove(turn_ids=[turn_id for e in entries for turn_id in e.replaces])
            await turns.add_to_chats([(e.usage.chat_id, e.turns) for e in entries])
            await UsageRepository(session).add(*(e.usage for e in entries))


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _observe(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
