"""What several replicas share through Redis (REDIS_URL): one client, under one key prefix.

- Telegram's limits (`bot.telegram.shared_pacing`);
- the backends' model list (`bot.services.shared_models`);
- the running answers, so a Stop reaches the replica generating one (`bot.telegram.shared_stops`).

`bot.app` imports this module only when REDIS_URL is set: redis-py adds some 7 MB to a process
that needs none of it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import Settings
from bot.services.shared_models import SharedModelList
from bot.telegram.pacing import GLOBAL_WINDOW_MARGIN
from bot.telegram.shared_pacing import SharedPace
from bot.telegram.shared_stops import SharedStops

# A replica waits no longer than this for Redis before it goes on alone.
REDIS_TIMEOUT = 2.0


@dataclass(frozen=True)
class Shared:
    """The parts of the bot kept in Redis, over one client."""

    redis: Redis
    pace: SharedPace
    models: SharedModelList | None
    stops: SharedStops

    async def ping(self) -> str | None:
        """What is wrong with Redis, or None when it answers (for /readyz)."""
        try:
            await cast(Awaitable[bool], self.redis.ping())
        except (RedisError, OSError) as exc:
            return f"redis: {type(exc).__name__}"
        return None

    async def close(self) -> None:
        """Close the connections."""
        await self.redis.aclose()


def connect(settings: Settings) -> Shared:
    """The shared parts for REDIS_URL, under keys `REDIS_PREFIX:<bot id>:…` (connects lazily)."""
    assert settings.redis_url, "connect() needs REDIS_URL"
    redis = Redis.from_url(
        settings.redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    prefix = f"{settings.redis_prefix}:{settings.bot_token.get_secret_value().partition(':')[0]}"
    rate = settings.telegram_rate_limit
    limit = max(1, math.floor(rate))
    models = None
    if settings.models_cache_seconds > 0:
        models = SharedModelList(redis, key=f"{prefix}:models", ttl=settings.models_cache_seconds)
    return Shared(
        redis=redis,
        pace=SharedPace(
            redis, prefix=prefix, limit=limit, window=limit / rate * GLOBAL_WINDOW_MARGIN
        ),
        models=models,
        stops=SharedStops(redis, prefix=prefix),
    )
