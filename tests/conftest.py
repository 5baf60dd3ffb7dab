"""Fixtures for every kind of test: this machine's Redis under a key prefix of the test's own."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

# The Redis the tests use (db 0; each test keeps to its own key prefix).
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own, its keys deleted afterwards; the test is skipped
    when Redis is not reachable, except on CI (`CI` set), where it fails."""
    redis = Redis.from_url(REDIS_URL)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    prefix = f"test-{secrets.token_hex(4)}"
    try:
        yield prefix
    finally:
        keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
