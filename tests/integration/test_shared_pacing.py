"""Telegram's limits shared through this machine's Redis by several replicas' FloodGates."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bot.telegram.pacing import GLOBAL_WINDOW_MARGIN, FloodGate
from bot.telegram.shared_pacing import SharedPace
from tests.conftest import REDIS_URL

OPENED: list[Redis] = []


@pytest.fixture(autouse=True)
async def close_shared() -> AsyncIterator[None]:
    yield
    while OPENED:
        await OPENED.pop().aclose()


def replica(prefix: str, *, rate: float, private: float = 1.0, url: str = REDIS_URL) -> FloodGate:
    """One replica's gate, sharing the limits kept under `prefix`."""
    limit = max(1, int(rate))
    redis = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    OPENED.append(redis)
    shared = SharedPace(
        redis,
        prefix=prefix,
        limit=limit,
        window=limit / rate * GLOBAL_WINDOW_MARGIN,
    )
    return FloodGate(private_interval=private, group_interval=3, global_rate=rate, shared=shared)


async def calls(gate: FloodGate, chat_ids: list[int], starts: list[float]) -> None:
    for chat_id in chat_ids:
        await gate.acquire(chat_id)
        starts.append(time.monotonic())
        gate.release(chat_id)


async def test_replicas_together_keep_the_bot_wide_rate(redis_prefix: str) -> None:
    # Each replica alone would let 4 a second through; together they must too.
    gates = [replica(redis_prefix, rate=4, private=0.01) for _ in range(3)]
    starts: list[float] = []
    await asyncio.gather(
        *(calls(gate, list(range(100 * n, 100 * n + 6)), starts) for n, gate in enumerate(gates))
    )
    starts.sort()
    assert len(starts) == 18
    # Any 5 consecutive calls span more than a second: never 5 within one second.
    assert min(b - a for a, b in zip(starts, starts[4:], strict=False)) >= 1.0


async def test_a_chat_s_spacing_and_429_hold_across_replicas(redis_prefix: str) -> None:
    first, second = (
        replica(redis_prefix, rate=30, private=0.4),
        replica(redis_prefix, rate=30, private=0.4),
    )
    starts: list[float] = []
    await asyncio.gather(calls(first, [7] * 3, starts), calls(second, [7] * 3, starts))
    starts.sort()
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.35
    # Telegram told one replica to wait: the other waits too.
    first.block(8, 1.0)
    await asyncio.sleep(0.05)  # the cooldown reaches Redis in the background
    began = time.monotonic()
    await second.acquire(8)
    second.release(8)
    assert time.monotonic() - began >= 0.9


async def test_without_redis_a_replica_paces_on_its_own() -> None:
    gate = replica("unreachable", rate=30, url="redis://127.0.0.1:1/0")
    began = time.monotonic()
    await gate.acquire(1)
    gate.release(1)
    await gate.acquire(2)
    gate.release(2)
    assert time.monotonic() - began < 3  # no hang, no error: local pacing only
