"""Bot-wide pacing under load: urgent calls first, slots held until answered, newest text sent.

Time is virtual: sleepers wake in order of their deadlines, and time only moves when every task
is waiting, so no test depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from aiogram import Bot

from bot.telegram.delivery import Delivery
from bot.telegram.pacing import FloodGate, GlobalPace
from bot.telegram.streaming import TelegramReplyWriter


class VirtualTime:
    """A clock and sleep for many tasks: the earliest sleeper wakes when all tasks wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), waiter))
        await waiter

    async def run_until(self, done: Callable[[], bool], limit: float = 600.0) -> None:
        """Advance time sleeper by sleeper until `done()` holds."""
        while True:
            for _ in range(30):  # let every task that can run, run
                await asyncio.sleep(0)
            if done():
                return
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled sleeps
            assert self._sleepers, "nothing left to wait for, yet not done"
            when, _, waiter = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            assert self.now <= limit, "virtual time limit reached"
            waiter.set_result(None)


@dataclass
class FakeBot:
    """Records message calls with the virtual time they were made at."""

    time: VirtualTime
    id: int = 42  # aiogram's ChatActionSender logs it
    answer_after: float = 0.0  # virtual seconds each call takes to be answered
    calls: list[tuple[float, str, int, str]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def send_message(self, *, chat_id: int, text: str, **_: Any) -> SimpleNamespace:
        self.calls.append((self.time.now, "send", chat_id, text))
        await self._answer()
        return SimpleNamespace(message_id=next(self._ids))

    async def edit_message_text(self, *, chat_id: int, text: str, **_: Any) -> bool:
        self.calls.append((self.time.now, "edit", chat_id, text))
        await self._answer()
        return True

    async def send_chat_action(self, **_: Any) -> bool:
        return True

    async def _answer(self) -> None:
        if self.answer_after:
            await self.time.sleep(self.answer_after)

    def to(self, chat_id: int) -> list[tuple[float, str, int, str]]:
        return [c for c in self.calls if c[2] == chat_id]


def writer(bot: FakeBot, gate: FloodGate, chat_id: int) -> TelegramReplyWriter:
    delivery = Delivery(bot=cast(Bot, bot), gate=gate, sleep=bot.time.sleep)
    return TelegramReplyWriter(delivery=delivery, chat_id=chat_id)


async def finish_all(t: VirtualTime, writers: list[TelegramReplyWriter]) -> None:
    finishing = asyncio.gather(*(w.finish() for w in writers))
    await t.run_until(finishing.done)
    await finishing


# ---- the bot-wide pace ---------------------------------------------------------------------


async def test_urgent_callers_go_before_earlier_non_urgent_ones() -> None:
    t = VirtualTime()
    pace = GlobalPace(1.0, clock=t.clock, sleep=t.sleep)
    order: list[str] = []

    async def call(name: str, *, urgent: bool) -> None:
        await pace.acquire(hash(name), urgent=urgent)
        order.append(name)
        pace.release()

    await pace.acquire(0)  # takes the only slot of this second
    pace.release()
    tasks = [asyncio.create_task(call(f"edit{i}", urgent=False)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(call("final", urgent=True)))
    await t.run_until(lambda: len(order) == 4)
    assert order[0] == "final"
    assert order[1:] == ["edit0", "edit1", "edit2"]


async def test_a_hurried_wait_moves_ahead_of_the_other_non_urgent_ones() -> None:
    t = VirtualTime()
    pace = GlobalPace(1.0, clock=t.clock, sleep=t.sleep)
    order: list[int] = []

    async def call(key: int) -> None:
        await pace.acquire(key, urgent=False)
        order.append(key)
        pace.release()

    await pace.acquire(0)
    pace.release()
    tasks = [asyncio.create_task(call(key)) for key in (1, 2, 3)]
    await asyncio.sleep(0)
    pace.hurry(3)  # chat 3's answer is complete: its pending edit carries the final text
    await t.run_until(lambda: len(order) == 3)
    assert order == [3, 1, 2]
    await asyncio.gather(*tasks)


async def test_no_more_calls_reach_telegram_in_a_second_than_the_rate() -> None:
    # A token bucket holding a second's worth of calls let 2x the rate through in one second.
    t = VirtualTime()
    pace = GlobalPace(5.0, clock=t.clock, sleep=t.sleep)
    starts: list[float] = []

    async def call() -> None:
        await pace.acquire(0)
        starts.append(t.now)
        pace.release()

    tasks = [asyncio.create_task(call()) for _ in range(23)]
    await t.run_until(lambda: len(starts) == 23)
    for first in starts:
        assert sum(1 for s in starts if first <= s < first + 1.0) <= 5
    await asyncio.gather(*tasks)


async def test_slow_answers_keep_their_slots_until_answered() -> None:
    # Telegram counts a call when it arrives, which may be any time before its answer comes
    # back; counting from the answer keeps bunched arrivals within the limit.
    t = VirtualTime()
    pace = GlobalPace(3.0, clock=t.clock, sleep=t.sleep)
    spans: list[tuple[float, float]] = []

    async def call() -> None:
        await pace.acquire(0)
        start = t.now
        await t.sleep(0.7)  # the answer takes a while
        spans.append((start, t.now))
        pace.release()

    tasks = [asyncio.create_task(call()) for _ in range(9)]
    await t.run_until(lambda: len(spans) == 9)
    # Any 4 calls span more than a second from the first sent to the last answered... so
    # wherever in between Telegram saw them, no second held more than 3.
    ordered = sorted(spans)
    for i in range(len(ordered) - 3):
        assert ordered[i + 3][0] - ordered[i][1] >= 1.0
    await asyncio.gather(*tasks)


# ---- the writer under a saturated bot-wide budget ------------------------------------------


async def test_final_texts_are_not_starved_by_other_chats_edits() -> None:
    t = VirtualTime()
    bot = FakeBot(t)
    gate = FloodGate(global_rate=2.0, clock=t.clock, sleep=t.sleep)
    busy = [writer(bot, gate, chat_id) for chat_id in range(1, 21)]
    for w in busy:
        await w.start()
        w.push("streaming ")
    await t.run_until(lambda: all(w.shown for w in busy))

    async def keep_streaming() -> None:
        for i in range(200):
            for w in busy:
                w.push(f"word{i} ")
            await t.sleep(0.1)

    streams = asyncio.create_task(keep_streaming())
    await t.run_until(lambda: t.now > 30.0)  # every busy chat has an edit waiting by now

    started_at = t.now
    late = writer(bot, gate, 100)
    await late.start()
    late.push("A short answer.")
    await t.run_until(lambda: late.shown)
    first_at = bot.to(100)[0][0]
    late.push(" Complete.")
    finish = asyncio.create_task(late.finish())
    finished_at = t.now
    await t.run_until(finish.done)

    # 20 chats keep 20 edits queued at 2 calls a second: waiting in line would take ~10 s.
    assert first_at - started_at < 1.1  # the next free slot: at most one window away
    final_at, _, _, text = bot.to(100)[-1]
    assert text == "A short answer. Complete."
    assert final_at - finished_at < 1.6  # the chat's own 1 s interval, then the next slot
    streams.cancel()
    await finish_all(t, busy)


async def test_a_busy_chat_s_pending_edit_becomes_its_final_text_promptly() -> None:
    t = VirtualTime()
    bot = FakeBot(t)
    gate = FloodGate(global_rate=2.0, clock=t.clock, sleep=t.sleep)
    chats = [writer(bot, gate, chat_id) for chat_id in range(1, 21)]
    for w in chats:
        await w.start()
        w.push("part one ")
    await t.run_until(lambda: all(w.shown for w in chats))
    for i in range(5):
        for w in chats:
            w.push(f"more{i} ")
        await t.run_until(lambda i=i: t.now > 10.0 + i)

    done = chats[-1]
    done.push("end.")
    finished_at = t.now
    finish = asyncio.create_task(done.finish())
    await t.run_until(finish.done)
    final_at, _, _, text = bot.to(20)[-1]
    assert text.endswith("end.")
    assert final_at - finished_at < 1.6
    await finish_all(t, chats[:-1])


async def test_a_message_sent_after_a_long_wait_shows_the_newest_text() -> None:
    t = VirtualTime()
    bot = FakeBot(t, answer_after=0.01)
    gate = FloodGate(global_rate=1.0, clock=t.clock, sleep=t.sleep)
    ahead = [writer(bot, gate, chat_id) for chat_id in range(1, 6)]
    for w in ahead:
        await w.start()
        w.push("first message")
    w = writer(bot, gate, 9)
    await w.start()
    w.push("Hello")
    w.push(", world")  # arrives while the first message waits for its turn
    await t.run_until(lambda: w.shown)
    assert bot.to(9)[0][3] == "Hello, world"
    await finish_all(t, [*ahead, w])
