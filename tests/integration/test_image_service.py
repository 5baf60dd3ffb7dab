"""The image service's limits and usage records on SQLite and PostgreSQL, with a mocked backend.

The service's clock runs ahead of real time by `shift` to see limits expire; records keep their
real times.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.models import UsageRecord, utcnow
from bot.i18n import use_locale
from bot.llm.images import ImageClient
from bot.services.images import ImageConfig, ImageReady, ImageRefusal, ImageRequest, ImageService
from tests.fakes.openai import make_png

Sessionmaker = async_sessionmaker[AsyncSession]
USER = 501


def request(user_id: int = USER, chat_id: int = -100900) -> ImageRequest:
    return ImageRequest(
        chat_id=chat_id,
        chat_type="supergroup",
        chat_title="Painters",
        user_id=user_id,
        user_full_name="Ann",
        username="ann",
        language_code="en",
        prompt="a lighthouse at dusk",
    )


@pytest.fixture
async def backend() -> AsyncIterator[list[httpx.Response]]:
    """Responses for the next image requests; an image when none is queued."""
    queue: list[httpx.Response] = []
    yield queue


@pytest.fixture
async def make(
    sessionmaker: Sessionmaker, backend: list[httpx.Response]
) -> AsyncIterator[Callable[..., tuple[ImageService, list[timedelta]]]]:
    encoded = base64.b64encode(make_png(8, 8)).decode()

    def answer(request: httpx.Request) -> httpx.Response:
        if backend:
            return backend.pop(0)
        return httpx.Response(200, json={"data": [{"b64_json": encoded}]})

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))

    def build(**config: int) -> tuple[ImageService, list[timedelta]]:
        shift = [timedelta(0)]
        service = ImageService(
            sessions=sessionmaker,
            images=ImageClient(http=http, base_url="https://llm.example/v1", api_key=None),
            config=ImageConfig(
                model="dall-e-3",
                api="auto",
                size="1024x1024",
                cooldown_seconds=config.get("cooldown", 0),
                daily_limit=config.get("daily", 0),
                exempt_user_ids=frozenset({1}),
            ),
            now=lambda: utcnow() + shift[0],
        )
        return service, shift

    yield build
    await http.aclose()


async def test_cooldown_runs_from_the_last_request(
    make: Callable[..., tuple[ImageService, list[timedelta]]], backend: list[httpx.Response]
) -> None:
    service, shift = make(cooldown=60)
    backend.append(httpx.Response(500, json={"error": {"message": "boom"}}))
    failed = await service.generate(request=request())
    assert isinstance(failed, ImageRefusal) and failed.reason == "failed"

    refused = await service.generate(request=request(chat_id=77))  # any chat
    assert isinstance(refused, ImageRefusal) and refused.reason == "cooldown"
    assert refused.retry_in is not None and 0 < refused.retry_in <= 60

    shift[0] += timedelta(seconds=61)
    assert isinstance(await service.generate(request=request()), ImageReady)
    # Another user, and the exempt owner, are not held up.
    assert isinstance(await service.generate(request=request(user_id=502)), ImageReady)
    assert isinstance(await service.generate(request=request(user_id=1)), ImageReady)


async def test_daily_limit_is_a_rolling_day_of_successful_images(
    make: Callable[..., tuple[ImageService, list[timedelta]]],
    backend: list[httpx.Response],
    sessionmaker: Sessionmaker,
) -> None:
    service, shift = make(daily=2)
    backend.append(httpx.Response(500, json={"error": {"message": "boom"}}))
    outcomes = [await service.generate(request=request()) for _ in range(4)]
    assert [type(o).__name__ for o in outcomes] == [
        "ImageRefusal",
        "ImageReady",
        "ImageReady",
        "ImageRefusal",
    ]
    limit = outcomes[3]
    assert isinstance(limit, ImageRefusal) and limit.reason == "daily_limit"
    assert limit.retry_in is not None and 23.9 * 3600 < limit.retry_in <= 24 * 3600
    assert limit.text == (
        "You have had your 2 images for the last 24 hours. You can ask for the next one in 1 d."
    )
    with use_locale("ru"):
        russian = await service.generate(request=request())
    assert isinstance(russian, ImageRefusal)
    assert russian.text == (
        "Лимит — 2 картинки за 24 часа, и он исчерпан. "
        "Через 1 дн. можно будет попросить следующую."
    )

    shift[0] += timedelta(hours=24, seconds=1)
    assert isinstance(await service.generate(request=request()), ImageReady)

    async with sessionmaker() as session:
        rows = (await session.scalars(select(UsageRecord).order_by(UsageRecord.id))).all()
    assert [(r.kind, r.status, r.images, r.size, r.model) for r in rows] == [
        ("image", "error", 0, "1024x1024", "dall-e-3"),
        ("image", "ok", 1, "1024x1024", "dall-e-3"),
        ("image", "ok", 1, "1024x1024", "dall-e-3"),
        ("image", "ok", 1, "1024x1024", "dall-e-3"),
    ]
    assert rows[0].error is not None and "boom" in rows[0].error
    assert {(r.user_id, r.chat_id) for r in rows} == {(USER, -100900)}


async def test_one_image_at_a_time_per_user(
    make: Callable[..., tuple[ImageService, list[timedelta]]],
) -> None:
    service, _ = make()
    seen: list[ImageRefusal | ImageReady] = []

    async def meanwhile() -> None:
        # Called once the first request passed its checks: a second one must wait its turn.
        seen.append(await service.generate(request=request(chat_id=78)))

    first = await service.generate(request=request(), on_start=meanwhile)
    assert isinstance(first, ImageReady)
    [second] = seen
    assert isinstance(second, ImageRefusal) and second.reason == "busy"
