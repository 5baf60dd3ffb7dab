"""Stop across replicas: the running answers and the Stops shared through this machine's Redis."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from bot.telegram import shared_stops
from bot.telegram.shared_stops import SharedStops
from bot.telegram.stops import Asked, Generations
from tests.conftest import REDIS_URL

CHAT = 4242
ASKER = 77


class Replica:
    """One replica's registry of answers, with its own Redis client and Stop listener."""

    def __init__(self, prefix: str, url: str = REDIS_URL) -> None:
        self.redis = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.generations = Generations(SharedStops(self.redis, prefix=prefix))
        self.listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Replica:
        self.listener = asyncio.create_task(self.generations.listen())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.listener is not None
        self.listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.listener
        await self.redis.aclose()


async def subscribed(redis: Redis, channel: str, count: int) -> None:
    """Wait until `count` listeners are subscribed to `channel`."""
    for _ in range(200):
        numbers = dict(await redis.pubsub_numsub(channel))
        if numbers.get(channel.encode(), 0) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} listeners never subscribed to {channel}")


async def test_a_stop_handled_by_another_replica_ends_the_answer(redis_prefix: str) -> None:
    async with Replica(redis_prefix) as running, Replica(redis_prefix) as other:
        await subscribed(other.redis, f"{redis_prefix}:stops", 2)
        generation = await running.generations.open(chat_id=CHAT, asker_id=ASKER)

        # The other replica finds the answer, with who asked, only in its own chat.
        asked = await other.generations.find(chat_id=CHAT, generation_id=generation.id)
        assert asked == Asked(id=generation.id, chat_id=CHAT, asker_id=ASKER)
        assert await other.generations.find(chat_id=CHAT + 1, generation_id=generation.id) is None

        await other.generations.stop(asked)
        await asyncio.wait_for(generation.stopped.wait(), timeout=5)

        # Once the answer ended, no replica finds it.
        await running.generations.close(generation)
        assert await other.generations.find(chat_id=CHAT, generation_id=generation.id) is None


async def test_replicas_never_give_two_answers_one_id(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Replica(redis_prefix) as first, Replica(redis_prefix) as second:
        taken = await first.generations.open(chat_id=CHAT, asker_id=None)
        # The second replica draws the same id first: it must draw again.
        draws = iter([taken.id - 1, taken.id - 1, 4])
        monkeypatch.setattr("bot.telegram.stops.secrets.randbelow", lambda _n: next(draws))
        other = await second.generations.open(chat_id=CHAT, asker_id=ASKER)
        assert other.id == 5
        asked = await first.generations.find(chat_id=CHAT, generation_id=taken.id)
        assert asked is not None and asked.asker_id is None


async def test_the_listener_comes_back_after_redis_drops_it(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_stops, "RECONNECT_FIRST", 0.05)
    async with Replica(redis_prefix) as running, Replica(redis_prefix) as other:
        channel = f"{redis_prefix}:stops"
        await subscribed(other.redis, channel, 2)
        # Redis drops every subscriber's connection (a restart or a failover looks the same).
        assert await other.redis.client_kill_filter(_type="pubsub") >= 2
        await asyncio.sleep(0.2)
        await subscribed(other.redis, channel, 2)
        generation = await running.generations.open(chat_id=CHAT, asker_id=ASKER)
        asked = await other.generations.find(chat_id=CHAT, generation_id=generation.id)
        assert asked is not None
        await other.generations.stop(asked)
        await asyncio.wait_for(generation.stopped.wait(), timeout=5)


async def test_a_malformed_message_on_the_channel_stops_nothing(redis_prefix: str) -> None:
    async with Replica(redis_prefix) as running:
        channel = f"{redis_prefix}:stops"
        await subscribed(running.redis, channel, 1)
        generation = await running.generations.open(chat_id=CHAT, asker_id=ASKER)
        await running.redis.publish(channel, "not-a-number")
        await running.redis.publish(channel, str(generation.id + 1))
        await asyncio.sleep(0.3)
        assert not generation.stopped.is_set()
        assert running.listener is not None and not running.listener.done()


async def test_without_redis_stop_still_works_on_the_replica_running_the_answer() -> None:
    async with Replica("unreachable", url="redis://127.0.0.1:1/0") as alone:
        generation = await alone.generations.open(chat_id=CHAT, asker_id=ASKER)
        asked = await alone.generations.find(chat_id=CHAT, generation_id=generation.id)
        assert asked is not None
        await alone.generations.stop(asked)
        assert generation.stopped.is_set()
        await alone.generations.close(generation)
        assert await alone.generations.find(chat_id=CHAT, generation_id=generation.id) is None
