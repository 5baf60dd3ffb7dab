"""Pacing of Bot API calls: per chat, for the whole bot, and after a 429."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.telegram.shared_pacing import SharedPace

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# Whether a call is urgent, or a question asked when it joins the bot-wide queue.
Urgency = bool | Callable[[], bool]

# A chat's pacing state is dropped once it has been idle this long, so memory stays bounded by
# the chats active in the last minute rather than by every chat ever seen.
_FORGET_AFTER = 60.0

# Slack on Telegram's one-second window, for clock granularity.
GLOBAL_WINDOW_MARGIN = 1.02


class FloodGate:
    """Spaces message-producing calls per chat and across the bot, and honours `retry_after`.

    Telegram allows about one message per second in a private chat, 20 per minute in a group and
    about 30 per second for the whole bot; exceeding them earns a 429 whose `retry_after` must be
    waited out for that chat. Every call that creates or edits a message takes a turn here first.
    When the bot-wide budget is short, calls that must happen (a first message, a final text, a
    notice) go before intermediate edits of answers still streaming, which only use what is left.

    `acquire` ... `release` brackets a call, so its slot is counted until its answer is back;
    `turn` is the same with the call assumed to reach Telegram at once.
    """

    def __init__(
        self,
        *,
        private_interval: float = 1.0,
        group_interval: float = 3.0,
        global_rate: float = 30.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        shared: SharedPace | None = None,
    ) -> None:
        """`shared`: the limits kept with the other replicas (REDIS_URL), on top of this one's."""
        self._shared = shared
        self._background: set[asyncio.Task[None]] = set()
        self._shared_calls: dict[int, deque[str]] = {}  # bot-wide slots held in Redis, by chat
        self._private_interval = private_interval
        self._group_interval = group_interval
        self._clock = clock
        self._sleep = sleep
        self._next_at: dict[int, float] = {}
        self._blocked_until: dict[int, float] = {}
        self._global = GlobalPace(global_rate, clock=clock, sleep=sleep)

    def interval_for(self, chat_id: int) -> float:
        """Minimum spacing between calls to this chat (groups have negative ids)."""
        return self._group_interval if chat_id < 0 else self._private_interval

    def ready_in(self, chat_id: int) -> float:
        """Seconds until this chat may be called again (0 if now)."""
        now = self._clock()
        at = max(self._next_at.get(chat_id, now), self._blocked_until.get(chat_id, now))
        return max(0.0, at - now)

    def free_now(self, chat_id: int) -> bool:
        """True when a call to this chat could go at once, however urgent."""
        return self.ready_in(chat_id) == 0 and self._global.free_now()

    async def turn(self, chat_id: int, *, urgent: Urgency = True) -> None:
        """Wait for this chat's next slot and a bot-wide slot, then claim them."""
        await self.acquire(chat_id, urgent=urgent)
        self.release(chat_id)

    async def acquire(
        self, chat_id: int, *, urgent: Urgency = True, spacing: float | None = None
    ) -> None:
        """Wait for this chat's next slot and a bot-wide one; hold them until `release`.

        Non-urgent calls only refresh what the user already sees (intermediate edits): they get
        a bot-wide slot only when no urgent call is waiting for one. A callable `urgent` is asked
        once the chat's own slot has come, so a caller can become urgent while it waits for that.
        `spacing` replaces the chat's interval after this call (drafts are spaced more closely).
        """
        interval = self.interval_for(chat_id) if spacing is None else spacing
        while True:
            now = self._clock()
            at = max(now, self._next_at.get(chat_id, 0.0), self._blocked_until.get(chat_id, 0.0))
            # Reserve the slot before sleeping so concurrent callers for one chat queue up.
            self._next_at[chat_id] = at + interval
            if at > now:
                await self._sleep(at - now)
            # A 429 may have extended the window while we slept: then wait again.
            if self._blocked_until.get(chat_id, 0.0) <= self._clock():
                break
        shared = self._shared
        if shared is not None:
            # The chat's slot among all replicas (another one may have called it just now).
            wait = await shared.chat_turn(chat_id, interval)
            if wait > 0:
                await self._sleep(wait)
        await self._global.acquire(chat_id, urgent=urgent() if callable(urgent) else urgent)
        if shared is not None:
            try:
                member = await shared.global_slot()
            except BaseException:
                self._global.release()  # the slot held here is not used after all
                raise
            if member is not None:
                self._shared_calls.setdefault(chat_id, deque()).append(member)
        self._spaced_from_now(chat_id, interval)

    def release(self, chat_id: int, *, spacing: float | None = None) -> None:
        """The call made after `acquire` got its answer (or was not made after all)."""
        self._global.release()
        # Telegram saw the call at some moment up to now: space the next one from now.
        interval = self.interval_for(chat_id) if spacing is None else spacing
        self._spaced_from_now(chat_id, interval)
        if self._shared is not None:
            self._in_background(self._shared.spaced(chat_id, interval))
            calls = self._shared_calls.get(chat_id)
            if calls:
                self._in_background(self._shared.global_done(calls.popleft()))
                if not calls:
                    del self._shared_calls[chat_id]

    def hurry(self, chat_id: int) -> None:
        """Make this chat's non-urgent wait for a bot-wide slot urgent, if it is waiting."""
        self._global.hurry(chat_id)

    def block(self, chat_id: int, retry_after: float) -> None:
        """Record a 429 for this chat: no call to it until `retry_after` seconds have passed."""
        until = self._clock() + max(0.0, retry_after)
        self._blocked_until[chat_id] = max(until, self._blocked_until.get(chat_id, 0.0))
        if self._shared is not None:
            self._in_background(self._shared.block(chat_id, retry_after))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Tell the other replicas without making the caller wait (SharedPace never raises)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _spaced_from_now(self, chat_id: int, interval: float) -> None:
        now = self._clock()
        # However long the wait for the bot-wide slot or for the answer was, the chat's next
        # call keeps its distance from this one.
        self._next_at[chat_id] = max(self._next_at.get(chat_id, now), now + interval)
        self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        if len(self._next_at) < 1024:
            return
        stale = [c for c, at in self._next_at.items() if at + _FORGET_AFTER < now]
        for chat_id in stale:
            del self._next_at[chat_id]
        for chat_id in [c for c, at in self._blocked_until.items() if at < now]:
            del self._blocked_until[chat_id]


class GlobalPace:
    """At most `rate` calls reach Telegram in any one second, urgent callers first.

    Telegram counts calls when they arrive, somewhere between our sending them and getting the
    answer; under load that lag varies, so sends spaced evenly can still arrive bunched. A call
    therefore holds its slot from being let through until its answer is back (`release`), and
    a new one goes only while fewer than `rate` calls are in flight or were answered within the
    last second: then no `rate + 1` calls can ever arrive within one second. Waiters are let
    through by one task, urgent ones first, each kind in order of arrival.
    """

    def __init__(self, rate: float, *, clock: Clock, sleep: Sleep) -> None:
        self._limit = max(1, math.floor(rate))
        self._window = self._limit / rate * GLOBAL_WINDOW_MARGIN
        self._clock = clock
        self._sleep = sleep
        self._in_flight = 0
        self._ends: deque[float] = deque(maxlen=self._limit)  # when recent calls were answered
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()
        self._waiting: dict[int, asyncio.Future[None]] = {}  # non-urgent waits by key
        self._dispatcher: asyncio.Task[None] | None = None
        self._nap: asyncio.Future[None] | None = None

    @property
    def in_flight(self) -> int:
        """Calls let through and not yet released."""
        return self._in_flight

    async def acquire(self, key: int, *, urgent: bool = True) -> None:
        """Wait for a slot; a caller with `urgent=False` waits while any urgent caller does."""
        if self.free_now():
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if urgent:
            self._urgent.append(waiter)
        else:
            self._normal.append(waiter)
            self._waiting[key] = waiter
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # let through just as the caller gave up
            raise
        finally:
            if self._waiting.get(key) is waiter:
                del self._waiting[key]

    def free_now(self) -> bool:
        """True when a call could go at once, nobody waiting before it."""
        return not self._urgent and not self._normal and self._free_at() <= self._clock()

    def release(self) -> None:
        """A call let through has been answered (or was not made)."""
        self._in_flight = max(0, self._in_flight - 1)
        self._ends.append(self._clock())
        if self._nap is not None and not self._nap.done():
            self._nap.cancel()  # the dispatcher may be waiting for exactly this

    def hurry(self, key: int) -> None:
        """Move `key`'s non-urgent wait, if any, to the end of the urgent queue."""
        waiter = self._waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            # Also left in the normal queue, where it is skipped once served.
            self._urgent.append(waiter)
            if self._nap is not None and not self._nap.done():
                self._nap.cancel()

    def _free_at(self) -> float:
        """When the next call may go, given what is in flight and what was answered lately."""
        room = self._limit - self._in_flight
        if room <= 0:
            return math.inf  # until a release
        if len(self._ends) < room:
            return -math.inf
        return self._ends[-room] + self._window

    def _head(self) -> asyncio.Future[None] | None:
        for queue in (self._urgent, self._normal):
            while queue and queue[0].done():
                queue.popleft()  # cancelled, or already served from the other queue
            if queue:
                return queue[0]
        return None

    async def _dispatch(self) -> None:
        while (waiter := self._head()) is not None:
            delay = self._free_at() - self._clock()
            if delay > 0:
                # A release or a hurried waiter ends the nap early; either way look again.
                self._nap = asyncio.ensure_future(self._sleep(min(delay, 60.0)))
                try:
                    await self._nap
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
                finally:
                    self._nap = None
                continue
            waiter.set_result(None)
            self._in_flight += 1


class Turn:
    """One chat's turn at the FloodGate, which a caller may take before it knows what to send.

    Taking the turn first and building the text after it means a long wait still sends the
    newest text. `take` does nothing while the turn is held, so whoever makes the call can take
    it again without knowing whether the caller already did; `end` is likewise safe to repeat.
    """

    def __init__(self, gate: FloodGate, chat_id: int, *, spacing: float | None = None) -> None:
        """`spacing`: the chat's interval after each call of this turn (None: the chat's own)."""
        self._gate = gate
        self._chat_id = chat_id
        self._held = False
        self.spacing = spacing

    @property
    def held(self) -> bool:
        """True between `take` and `end`."""
        return self._held

    async def take(self, *, urgent: Urgency = True) -> None:
        """Wait for the chat's next slot and a bot-wide one, unless the turn is already held."""
        if not self._held:
            await self._gate.acquire(self._chat_id, urgent=urgent, spacing=self.spacing)
            self._held = True

    def end(self) -> None:
        """The call made in this turn has its answer, or will not be made."""
        # The gate counts the call against Telegram's limits until its answer is back.
        if self._held:
            self._held = False
            self._gate.release(self._chat_id, spacing=self.spacing)

    def free_now(self) -> bool:
        """True when the turn could be taken at once."""
        return self._held or self._gate.free_now(self._chat_id)

    def hurry(self) -> None:
        """Make a non-urgent wait for this turn urgent: it will carry final text."""
        self._gate.hurry(self._chat_id)
