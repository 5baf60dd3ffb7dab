"""Stop shared by the replicas: a Stop ends the answer whichever replica generates it.

With several replicas, the update saying that a user pressed Stop (a draft's stop button, or
the inline Stop button of an answer streamed by edits) is often handled by another replica than
the one reading the backend for that answer. So, with REDIS_URL set:

- each running answer is recorded under `{prefix}:answer:{id}` (its chat and who asked), from
  its start until it ends, and at most ANSWER_TTL; the id is reserved there, so two replicas
  never give two answers the same id;
- a replica handling a Stop for an answer it does not run finds it there, checks who may stop
  it as for its own answers, and publishes the id on `{prefix}:stops`;
- every replica listens on that channel and stops its own answer of that id.

If Redis cannot be reached, a Stop still ends the answers of the replica that handles it, and
a warning is logged once per outage. A Stop published while a replica was reconnecting to
Redis does not reach it (Redis's publish/subscribe keeps no messages).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.outage import Outage
from bot.telegram.stops import Asked

logger = logging.getLogger(__name__)

# The longest an answer is remembered: past any backend's total timeout.
ANSWER_TTL = 3600
# How long the listener waits for a message before asking again (it never blocks forever).
LISTEN_WAIT = 5.0
# Reconnection backoff of the listener after Redis failed, first and longest, in seconds.
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 10.0

T = TypeVar("T")


class SharedStops:
    """Running answers and Stops, shared by the replicas under one key prefix per bot."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._outage = Outage(
            logger,
            begins="Redis failed (%s): a Stop reaches only the answers of the replica handling it",
            ends="Redis answers again: Stops reach every replica",
        )

    @property
    def channel(self) -> str:
        """Where Stops are published."""
        return f"{self._prefix}:stops"

    async def reserve(self, generation_id: int, *, chat_id: int, asker_id: int | None) -> bool:
        """Record a new answer under `generation_id`; False if another answer holds that id.

        When Redis fails the id is taken as free (the answer is then stoppable on this replica
        only).
        """
        value = f"{chat_id}:{'' if asker_id is None else asker_id}"
        reserved = await self._call(
            self._redis.set(self._key(generation_id), value, nx=True, ex=ANSWER_TTL), failed=True
        )
        return bool(reserved)

    async def release(self, generation_id: int) -> None:
        """The answer has ended: a later Stop for it finds nothing."""
        await self._call(self._redis.delete(self._key(generation_id)), failed=0)

    async def find(self, generation_id: int) -> Asked | None:
        """The running answer with this id, on any replica; None if there is none."""
        raw = await self._call(self._redis.get(self._key(generation_id)), failed=None)
        if raw is None:
            return None
        chat, _, asker = bytes(raw).decode().partition(":")
        return Asked(id=generation_id, chat_id=int(chat), asker_id=int(asker) if asker else None)

    async def stop(self, generation_id: int) -> None:
        """Ask the replica running answer `generation_id` to stop it."""
        await self._call(self._redis.publish(self.channel, str(generation_id)), failed=0)

    async def listen(self, on_stop: Callable[[int], object]) -> None:
        """Call `on_stop(id)` for every Stop published, until cancelled; reconnects on failure."""
        backoff = RECONNECT_FIRST
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._outage.answered()
                    backoff = RECONNECT_FIRST
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=LISTEN_WAIT
                        )
                        if message is not None:
                            _deliver(message.get("data"), on_stop)
            except (RedisError, OSError) as exc:
                self._outage.failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)

    async def _call(self, command: Awaitable[T], *, failed: T) -> T:
        try:
            result = await command
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)
            return failed
        self._outage.answered()
        return result

    def _key(self, generation_id: int) -> str:
        return f"{self._prefix}:answer:{generation_id}"


def _deliver(data: object, on_stop: Callable[[int], object]) -> None:
    try:
        generation_id = int(cast(bytes, data))
    except (TypeError, ValueError):
        logger.warning("ignored a malformed Stop on the shared channel: %r", data)
        return
    on_stop(generation_id)
