"""The webhook inbox on SQLite and PostgreSQL: stored once, claimed once, in order per chat."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.models import utcnow
from bot.db.repositories import InboxEntry, InboxRepository

LEASE = 30.0


async def store(sessions: async_sessionmaker[AsyncSession], *entries: InboxEntry) -> None:
    async with sessions.begin() as session:
        await InboxRepository(session).add(entries=list(entries))


async def claim(
    sessions: async_sessionmaker[AsyncSession], owner: str, limit: int = 10, lease: float = LEASE
) -> list[int]:
    async with sessions.begin() as session:
        claimed = await InboxRepository(session).claim(owner=owner, limit=limit, lease=lease)
    return [entry.update_id for entry in claimed]


async def remove(sessions: async_sessionmaker[AsyncSession], *update_ids: int) -> None:
    async with sessions.begin() as session:
        await InboxRepository(session).remove(update_ids=list(update_ids))


def entry(update_id: int, chat: int | None) -> InboxEntry:
    return InboxEntry(update_id=update_id, payload=f'{{"update_id": {update_id}}}', chat_key=chat)


async def test_an_update_posted_twice_is_stored_and_claimed_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await store(sessionmaker, entry(1, 100))
    await store(sessionmaker, entry(1, 100))  # Telegram did not see the 200 and posted again
    assert await claim(sessionmaker, "a") == [1]
    assert await claim(sessionmaker, "b") == []


async def test_a_chat_s_updates_are_claimed_one_at_a_time_in_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await store(
        sessionmaker, entry(1, 100), entry(2, 100), entry(3, 200), entry(4, None), entry(5, 100)
    )
    # Of chat 100 only its oldest; chat 200 and the unordered update go too.
    assert await claim(sessionmaker, "a") == [1, 3, 4]
    # While 1 is in hand, another replica gets nothing of chat 100.
    assert await claim(sessionmaker, "b") == []
    await remove(sessionmaker, 1)
    assert await claim(sessionmaker, "b") == [2]
    await remove(sessionmaker, 2)
    assert await claim(sessionmaker, "a") == [5]


async def test_a_dead_replica_s_updates_are_claimed_again_after_the_lease(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await store(sessionmaker, entry(1, 100), entry(2, 100))
    assert await claim(sessionmaker, "dead", lease=0.2) == [1]
    assert await claim(sessionmaker, "alive") == []
    await asyncio.sleep(0.3)
    assert await claim(sessionmaker, "alive") == [1]


async def test_renewed_leases_hold_and_released_ones_free_at_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await store(sessionmaker, entry(1, 100), entry(2, 200))
    assert await claim(sessionmaker, "a", lease=0.2) == [1, 2]
    async with sessionmaker.begin() as session:
        await InboxRepository(session).renew(owner="a", update_ids=[1], lease=LEASE)
    await asyncio.sleep(0.3)
    assert await claim(sessionmaker, "b") == [2]  # 1 was renewed, 2 ran out
    async with sessionmaker.begin() as session:
        await InboxRepository(session).release(owner="a")
    assert await claim(sessionmaker, "b") == [1]


async def test_replicas_claiming_at_once_never_share_an_update(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await store(sessionmaker, *(entry(n, 1000 + n % 7) for n in range(1, 61)))
    seen: list[int] = []
    owners = ("a", "b", "c")
    for _round in range(20):
        results = await asyncio.gather(*(claim(sessionmaker, o, limit=3) for o in owners))
        claimed = [update_id for result in results for update_id in result]
        seen.extend(claimed)
        await remove(sessionmaker, *claimed)
    assert sorted(seen) == list(range(1, 61))
    assert len(seen) == len(set(seen))


async def test_an_update_posted_again_after_it_was_handled_is_not_stored_again(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await store(sessionmaker, entry(1, 100), entry(2, 100))
    assert await claim(sessionmaker, "a") == [1]
    async with sessionmaker.begin() as session:
        await InboxRepository(session).finish(update_ids=[1])
    # Posted again (Telegram missed the 200), to any replica: not stored, not claimed again.
    async with sessionmaker.begin() as session:
        await InboxRepository(session).add(entries=[entry(1, 100)], unless_handled=True)
    assert await claim(sessionmaker, "b") == [2]
    assert await claim(sessionmaker, "b") == []
    # A day later Telegram no longer posts it, and it is forgotten.
    async with sessionmaker.begin() as session:
        await InboxRepository(session).forget_handled(before=utcnow() + timedelta(seconds=1))
    async with sessionmaker.begin() as session:
        await InboxRepository(session).add(entries=[entry(1, 100)], unless_handled=True)
    async with sessionmaker.begin() as session:
        waiting = await InboxRepository(session).waiting()
    assert [e.update_id for e in waiting] == [1, 2]
