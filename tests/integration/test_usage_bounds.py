"""The repository stores no usage figure outside [0, MAX_USAGE_COUNT], on both backends."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import NewUsage, UsageRecord, UsageRepository
from bot.db.repositories import MAX_USAGE_COUNT
from bot.db.usage_queries import UsageQueries
from bot.pricing import Price, PriceList


def usage(prompt: int, completion: int, images: int = 0) -> NewUsage:
    return NewUsage(
        user_id=1,
        chat_id=1,
        model="m",
        kind="chat",
        prompt_tokens=prompt,
        completion_tokens=completion,
        estimated=False,
        status="ok",
        latency_ms=10,
        images=images,
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ((2**64 - 1, 2**63 - 1, 2**31), (MAX_USAGE_COUNT, MAX_USAGE_COUNT, MAX_USAGE_COUNT)),
        ((-5, -1, -2), (0, 0, 0)),
        ((MAX_USAGE_COUNT, 0, 1), (MAX_USAGE_COUNT, 0, 1)),
    ],
)
async def test_counts_are_clamped_to_the_ceiling(
    sessionmaker: async_sessionmaker[AsyncSession],
    given: tuple[int, int, int],
    stored: tuple[int, int, int],
    caplog: Any,
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.db.repositories"):
        async with sessionmaker() as session, session.begin():
            await UsageRepository(session).add(usage(*given))

    record = UsageRecord
    async with sessionmaker() as session:
        counts = select(record.prompt_tokens, record.completion_tokens, record.images)
        row = (await session.execute(counts)).one()
    assert tuple(row) == stored
    clamped = sum(g != s for g, s in zip(given, stored, strict=True))
    assert len(caplog.records) == clamped
    assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_sums_over_many_rows_at_the_ceiling_do_not_overflow(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # PostgreSQL's INTEGER columns are 32-bit: 300 rows at the ceiling sum past 2**31, and one
    # row's prompt + completion is 2 * 10**7, both of which must still be summed exactly.
    rows = 300
    async with sessionmaker() as session, session.begin():
        repository = UsageRepository(session)
        for _ in range(rows):
            await repository.add(usage(2**63 - 1, 2**63 - 1, images=2**40))

    prices = PriceList(default=Price(prompt_per_million=1.0, completion_per_million=2.0))
    async with sessionmaker() as session:
        queries = UsageQueries(session)
        [model] = await queries.by_model()
        top = await queries.top_users(since=None, until=None, prices=prices, limit=5)
    total = rows * MAX_USAGE_COUNT
    assert total > 2**31
    assert (model.sums.prompt_tokens, model.sums.completion_tokens, model.sums.images) == (
        total,
        total,
        total,
    )
    [user] = top.by_tokens
    assert user.tokens == 2 * total
    assert user.cost == pytest.approx(3 * total / 1_000_000)
