"""Each user's language: their stored choice, else DEFAULT_LANGUAGE, else Telegram's, else
English; choices are remembered without a database query per message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db import UserRepository
from bot.services.directory import Directory
from bot.services.languages import LanguageService

Sessionmaker = async_sessionmaker[AsyncSession]


async def choose(service: LanguageService, user_id: int, language: str | None) -> str:
    return await service.choose(
        user_id=user_id,
        username=None,
        full_name=f"User {user_id}",
        language_code="en",
        language=language,
    )


@contextmanager
def counted_queries(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements run on `engine` inside the block."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def selects(statements: list[str]) -> int:
    return sum(1 for s in statements if s.lstrip().upper().startswith("SELECT"))


async def test_telegram_language_then_english(sessionmaker: Sessionmaker) -> None:
    service = LanguageService(sessions=sessionmaker)
    assert await service.locale_for(user_id=1, language_code="ru-RU") == "ru"
    assert await service.locale_for(user_id=2, language_code="zh-hans") == "zh"
    assert await service.locale_for(user_id=3, language_code="de") == "en"
    assert await service.locale_for(user_id=4, language_code=None) == "en"
    assert await service.locale_for(user_id=None, language_code="ru") == "ru"


async def test_default_language_replaces_telegrams_but_not_a_users_choice(
    sessionmaker: Sessionmaker,
) -> None:
    service = LanguageService(sessions=sessionmaker, default_language="ru")
    assert await service.locale_for(user_id=1, language_code="en") == "ru"
    assert await service.locale_for(user_id=2, language_code="zh-CN") == "ru"

    assert await choose(service, 1, "zh") == "zh"
    assert await service.locale_for(user_id=1, language_code="en") == "zh"
    # "Automatic" goes back to the owner's language, not the app's.
    assert await choose(service, 1, None) == "ru"
    assert await service.chosen(user_id=1) is None


async def test_a_choice_is_stored_for_users_never_seen_before_and_survives_a_restart(
    sessionmaker: Sessionmaker,
) -> None:
    assert await choose(LanguageService(sessions=sessionmaker), 7, "ru") == "ru"

    restarted = LanguageService(sessions=sessionmaker)
    assert await restarted.chosen(user_id=7) == "ru"
    assert await restarted.locale_for(user_id=7, language_code="en") == "ru"
    async with sessionmaker() as session:
        user = await UserRepository(session).get(user_id=7)
    assert user is not None and user.full_name == "User 7" and user.language == "ru"


async def test_a_language_no_longer_offered_counts_as_no_choice(
    sessionmaker: Sessionmaker,
) -> None:
    async with sessionmaker() as session, session.begin():
        users = UserRepository(session)
        await users.upsert(user_id=8, username=None, full_name="Eight", language_code="zh")
        await users.set_language(user_id=8, language="de")
    service = LanguageService(sessions=sessionmaker)
    assert await service.chosen(user_id=8) is None
    assert await service.locale_for(user_id=8, language_code="zh") == "zh"


async def test_choices_are_read_once_then_served_from_memory(
    engine: AsyncEngine, sessionmaker: Sessionmaker
) -> None:
    service = LanguageService(sessions=sessionmaker, directory=Directory(capacity=2))
    with counted_queries(engine) as statements:
        for _ in range(5):
            assert await service.locale_for(user_id=1, language_code="ru") == "ru"
    assert selects(statements) == 1

    await choose(service, 1, "zh")
    with counted_queries(engine) as statements:
        assert await service.locale_for(user_id=1, language_code="ru") == "zh"
    assert statements == []  # /language wrote through the cache

    # Beyond its size the least recently seen user is forgotten, then read again.
    await service.locale_for(user_id=2, language_code="en")
    await service.locale_for(user_id=3, language_code="en")
    with counted_queries(engine) as statements:
        assert await service.locale_for(user_id=1, language_code="ru") == "zh"
    assert selects(statements) == 1
