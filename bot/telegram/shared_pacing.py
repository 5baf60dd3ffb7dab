"""Telegram's rate limits shared by every replica of the bot, kept in Redis.

Each replica paces its own calls with a FloodGate; with REDIS_URL set, every call also takes
its turn here, so N replicas together stay within what Telegram allows one bot:

- a chat's spacing (one message a second in private chats, one every few seconds in groups):
  the next moment the chat may be called, reserved atomically by whichever replica asks first;
- the 429 cooldown of a chat (`retry_after`), seen by every replica;
- the bot-wide rate (TELEGRAM_RATE_LIMIT): a sliding window of call starts.

Each rule is one Lua script run atomically by Redis on Redis's own clock (TIME), so replicas'
clocks need not agree. If Redis cannot be reached the replica goes on with its own pacing and
logs a warning: a short Redis outage slows nothing down and loses nothing, at the risk of a
few 429s, which the FloodGate honours anyway.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.outage import Outage

logger = logging.getLogger(__name__)

# A chat's keys expire a minute (60000 ms) after the moment they hold.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: next-at, blocked-until. ARGV: interval ms. Reserves the chat's next slot; returns the
# milliseconds to wait for it.
_CHAT_TURN = (
    _NOW
    + """
local at = now
local next_at = tonumber(redis.call('GET', KEYS[1]) or '0')
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if next_at > at then at = next_at end
if blocked > at then at = blocked end
local interval = tonumber(ARGV[1])
redis.call('SET', KEYS[1], at + interval, 'PX', at - now + interval + 60000)
return at - now
"""
)

# KEYS: next-at. ARGV: interval ms. The chat's call was answered: space the next one from now.
_CHAT_SPACED = (
    _NOW
    + """
local wanted = now + tonumber(ARGV[1])
local next_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if next_at < wanted then
  redis.call('SET', KEYS[1], wanted, 'PX', tonumber(ARGV[1]) + 60000)
end
return 0
"""
)

# KEYS: blocked-until. ARGV: retry_after ms.
_CHAT_BLOCK = (
    _NOW
    + """
local till = now + tonumber(ARGV[1])
local blocked = tonumber(redis.call('GET', KEYS[1]) or '0')
if blocked < till then
  redis.call('SET', KEYS[1], till, 'PX', tonumber(ARGV[1]) + 60000)
end
return 0
"""
)

# KEYS: the calls' sorted set, scored by when each was answered (a call in flight by when it
# is given up for lost). ARGV: limit, window ms, a unique member, in-flight ms. Takes a slot and
# returns 0, or returns the milliseconds to wait before asking again.
_GLOBAL_SLOT = (
    _NOW
    + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local flight = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + flight, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window + flight)
  return 0
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
if oldest > now then
  return 20
end
return oldest + window - now + 1
"""
)

# KEYS: the calls' sorted set. ARGV: the member. The call was answered: it counts for one
# window from now.
_GLOBAL_DONE = (
    _NOW
    + """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
end
return 0
"""
)
# A call still unanswered after this long no longer holds its slot (its replica died).
IN_FLIGHT_LIMIT = 30.0


class SharedPace:
    """The limits every replica shares, under one key prefix per bot."""

    def __init__(self, redis: Redis, *, prefix: str, limit: int, window: float) -> None:
        """`limit` calls may start within any `window` seconds, across all replicas."""
        self._redis = redis
        self._prefix = prefix
        self._limit = limit
        self._window_ms = max(1, round(window * 1000))
        self._chat_turn = redis.register_script(_CHAT_TURN)
        self._chat_spaced = redis.register_script(_CHAT_SPACED)
        self._chat_block = redis.register_script(_CHAT_BLOCK)
        self._global_slot = redis.register_script(_GLOBAL_SLOT)
        self._global_done = redis.register_script(_GLOBAL_DONE)
        self._outage = Outage(
            logger,
            begins="Redis failed (%s): pacing this replica on its own",
            ends="Redis answers again: pacing shared with the other replicas",
        )

    async def chat_turn(self, chat_id: int, interval: float) -> float:
        """Reserve the chat's next slot; the seconds to wait for it (0 if Redis failed)."""
        keys = [self._key("next", chat_id), self._key("blocked", chat_id)]
        return await self._run(self._chat_turn, keys, [_ms(interval)]) / 1000

    async def spaced(self, chat_id: int, interval: float) -> None:
        """The chat's call was answered: its next call keeps `interval` from now."""
        await self._run(self._chat_spaced, [self._key("next", chat_id)], [_ms(interval)])

    async def block(self, chat_id: int, retry_after: float) -> None:
        """Telegram answered 429 for this chat: no replica calls it for `retry_after` s."""
        await self._run(self._chat_block, [self._key("blocked", chat_id)], [_ms(retry_after)])

    async def global_slot(self) -> str | None:
        """Take a bot-wide slot, waiting for one; the call's name for `global_done`.

        As the FloodGate's own bot-wide pace, a call holds its slot until it is answered, and
        counts for a window after: no more than `limit` calls can reach Telegram within one
        window, however long each takes to arrive. None when Redis failed.
        """
        member = uuid.uuid4().hex
        args = [self._limit, self._window_ms, member, _ms(IN_FLIGHT_LIMIT)]
        while True:
            wait = await self._run(self._global_slot, [self._global_key], args, failed=-1)
            if wait == 0:
                return member
            if wait < 0:
                return None
            await asyncio.sleep(wait / 1000)

    async def global_done(self, member: str) -> None:
        """The call that took slot `member` was answered."""
        await self._run(self._global_done, [self._global_key], [member])

    @property
    def _global_key(self) -> str:
        return f"{self._prefix}:global"

    def _key(self, kind: str, chat_id: int) -> str:
        return f"{self._prefix}:{kind}:{chat_id}"

    async def _run(self, script: Any, keys: list[str], args: list[Any], failed: int = 0) -> int:
        """The script's answer, or `failed` when Redis failed (logged once per outage)."""
        try:
            result = int(await script(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)
            return failed
        self._outage.answered()
        return max(0, result)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
