"""Pacing of Bot API calls: per chat, for the whole bot, and after a 429."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# A chat's pacing state is dropped once it has been idle this long, so memory stays bounded by
# the chats active in the last minute rather than by every chat ever seen.
_FORGET_AFTER = 60.0


class FloodGate:
    """Spaces message-producing calls per chat and across the bot, and honours `retry_after`.

    Telegram allows about one message per second in a private chat, 20 per minute in a group and
    about 30 per second for the whole bot; exceeding them earns a 429 whose `retry_after` must be
    waited out for that chat. Every call that creates or edits a message takes a turn here first.
    """

    def __init__(
        self,
        *,
        private_interval: float = 1.0,
        group_interval: float = 3.0,
        global_rate: float = 30.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._private_interval = private_interval
        self._group_interval = group_interval
        self._clock = clock
        self._sleep = sleep
        self._next_at: dict[int, float] = {}
        self._blocked_until: dict[int, float] = {}
        # aiolimiter's leaky bucket with capacity of one second's worth of calls
        self._global = AsyncLimiter(global_rate, 1.0)

    def interval_for(self, chat_id: int) -> float:
        """Minimum spacing between calls to this chat (groups have negative ids)."""
        return self._group_interval if chat_id < 0 else self._private_interval

    def ready_in(self, chat_id: int) -> float:
        """Seconds until this chat may be called again (0 if now)."""
        now = self._clock()
        at = max(self._next_at.get(chat_id, now), self._blocked_until.get(chat_id, now))
        return max(0.0, at - now)

    async def turn(self, chat_id: int) -> None:
        """Wait for this chat's next slot and a global slot, then claim them."""
        while True:
            now = self._clock()
            at = max(now, self._next_at.get(chat_id, 0.0), self._blocked_until.get(chat_id, 0.0))
            # Reserve the slot before sleeping so concurrent callers for one chat queue up.
            self._next_at[chat_id] = at + self.interval_for(chat_id)
            if at > now:
                await self._sleep(at - now)
            # A 429 may have extended the window while we slept: then wait again.
            if self._blocked_until.get(chat_id, 0.0) <= self._clock():
                break
        now = self._clock()
        await self._global.acquire()
        self._forget_idle(now)

    def block(self, chat_id: int, retry_after: float) -> None:
        """Record a 429 for this chat: no call to it until `retry_after` seconds have passed."""
        until = self._clock() + max(0.0, retry_after)
        self._blocked_until[chat_id] = max(until, self._blocked_until.get(chat_id, 0.0))

    def _forget_idle(self, now: float) -> None:
        if len(self._next_at) < 1024:
            return
        stale = [c for c, at in self._next_at.items() if at + _FORGET_AFTER < now]
        for chat_id in stale:
            del self._next_at[chat_id]
        for chat_id in [c for c, at in self._blocked_until.items() if at < now]:
            del self._blocked_until[chat_id]
