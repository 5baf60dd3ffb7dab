"""Pacing of Bot API calls with an injected clock."""

from __future__ import annotations

import asyncio
import itertools

from bot.telegram.pacing import FloodGate


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def gate(t: FakeTime) -> FloodGate:
    return FloodGate(
        private_interval=1.0, group_interval=3.0, global_rate=1000, clock=t.clock, sleep=t.sleep
    )


async def test_first_call_to_a_chat_is_immediate() -> None:
    t = FakeTime()
    await gate(t).turn(42)
    assert t.sleeps == []


async def test_private_chat_calls_are_a_second_apart() -> None:
    t = FakeTime()
    g = gate(t)
    times = []
    for _ in range(4):
        await g.turn(42)
        times.append(t.now)
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [1.0, 1.0, 1.0]


async def test_group_chat_stays_within_20_per_minute() -> None:
    t = FakeTime()
    g = gate(t)
    start = t.now
    for _ in range(21):
        await g.turn(-100123)
    # 21 calls need at least 60 s: the 21st comes 20 intervals of 3 s after the first.
    assert t.now - start >= 60.0


async def test_chats_do_not_wait_for_each_other() -> None:
    t = FakeTime()
    g = gate(t)
    await g.turn(1)
    await g.turn(2)
    await g.turn(3)
    assert t.sleeps == []


async def test_retry_after_blocks_the_chat_for_the_whole_window() -> None:
    t = FakeTime()
    g = gate(t)
    await g.turn(7)
    g.block(7, 12)
    assert g.ready_in(7) == 12
    await g.turn(7)
    assert t.now >= 1000.0 + 12
    # other chats are unaffected
    before = t.now
    await g.turn(8)
    assert t.now == before


async def test_concurrent_callers_for_one_chat_queue_up() -> None:
    t = FakeTime()
    g = gate(t)
    done: list[float] = []

    async def call() -> None:
        await g.turn(5)
        done.append(t.now)

    await asyncio.gather(*(call() for _ in range(3)))
    assert sorted(done)[-1] - sorted(done)[0] >= 2.0


async def test_429_during_a_wait_extends_it() -> None:
    t = FakeTime()
    g = gate(t)
    await g.turn(9)  # next allowed at +1

    async def late_429() -> None:
        g.block(9, 5)  # runs while turn() sleeps towards its slot

    await asyncio.gather(g.turn(9), late_429())
    assert t.now >= 1000.0 + 5
