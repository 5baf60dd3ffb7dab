"""The backends' model list shared by every replica through Redis (REDIS_URL).

One replica fetches /models and keeps the merged list here for MODELS_CACHE_SECONDS; the others
read it instead of asking the backends again. Redis failing costs nothing but those calls: the
replica fetches the list itself (logged once).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.llm.types import ModelInfo
from bot.outage import Outage

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SharedListing:
    """A merged model list as a replica left it, and which backends list which model."""

    models: list[ModelInfo]
    listed_by: dict[str, frozenset[str]]
    listing: frozenset[str]
    age: float  # seconds since it was fetched


class SharedModelList:
    """The model list under one Redis key, expiring after `ttl` seconds."""

    def __init__(self, redis: Redis, *, key: str, ttl: float) -> None:
        """`ttl`: MODELS_CACHE_SECONDS (above 0)."""
        self._redis = redis
        self._key = key
        self._ttl_ms = max(1, round(ttl * 1000))
        self._outage = Outage(
            logger, begins="Redis failed (%s): this replica fetches the model list itself"
        )

    async def get(self) -> SharedListing | None:
        """The list another replica fetched, or None (none kept, unreadable, Redis failed)."""
        try:
            raw = await self._redis.get(self._key)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)
            return None
        self._outage.answered()
        if raw is None:
            return None
        try:
            document = json.loads(raw)
            return SharedListing(
                models=[ModelInfo(**entry) for entry in document["models"]],
                listed_by={k: frozenset(v) for k, v in document["listed_by"].items()},
                listing=frozenset(document["listing"]),
                age=max(0.0, time.time() - float(document["fetched_at"])),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            logger.warning("the shared model list in Redis is unreadable; fetching it again")
            return None

    async def put(
        self,
        models: Iterable[ModelInfo],
        listed_by: Mapping[str, Iterable[str]],
        listing: Iterable[str],
    ) -> None:
        """Keep a freshly fetched list for the other replicas."""
        document: dict[str, Any] = {
            "fetched_at": time.time(),
            "models": [dataclasses.asdict(model) for model in models],
            "listed_by": {k: sorted(v) for k, v in listed_by.items()},
            "listing": sorted(listing),
        }
        try:
            await self._redis.set(self._key, json.dumps(document), px=self._ttl_ms)
        except (RedisError, OSError) as exc:
            self._outage.failed(exc)
