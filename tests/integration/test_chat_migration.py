"""A group upgraded to a supergroup: its stored data moves to the new id, on each backend."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import (
    ChatRepository,
    NewTurn,
    NewUsage,
    Turn,
    TurnRepository,
    UsageRecord,
    UsageRepository,
    UserRepository,
)
from bot.db.models import utcnow
from bot.services.directory import Directory
from bot.services.migration import ChatMigration

Sessions = async_sessionmaker[AsyncSession]

OLD = -4242
NEW = -1001234567890
OTHER = -5555
USER = 10


def usage(chat_id: int, kind: str = "chat") -> NewUsage:
    return NewUsage(
        user_id=USER,
        chat_id=chat_id,
        model="gpt-4o",
        kind=kind,
        prompt_tokens=10,
        completion_tokens=5,
        estimated=False,
        status="ok",
        latency_ms=100,
        images=1 if kind == "image" else 0,
    )


async def store_chat(
    sessions: Sessions,
    chat_id: int,
    *,
    type: str = "group",
    model: str | None = None,
    turns: tuple[tuple[str, int | None], ...] = (),
    kinds: tuple[str, ...] = (),
) -> None:
    """A chat with turns (content, Telegram message id) and usage records of these kinds."""
    async with sessions() as session, session.begin():
        chats = ChatRepository(session)
        await chats.upsert(chat_id=chat_id, type=type, title="Team")
        if model is not None:
            await chats.set_model(chat_id=chat_id, model=model)
        await UserRepository(session).upsert(
            user_id=USER, username="ann", full_name="Ann", language_code="en"
        )
        await TurnRepository(session).add(
            chat_id=chat_id,
            turns=[
                NewTurn(
                    role="user" if message_id is not None else "assistant",
                    content=content,
                    tokens=3,
                    telegram_message_id=message_id,
                )
                for content, message_id in turns
            ],
        )
        for kind in kinds:
            await UsageRepository(session).add(usage(chat_id, kind))


async def contents(sessions: Sessions, chat_id: int) -> list[str]:
    async with sessions() as session:
        turns = await TurnRepository(session).recent(chat_id=chat_id, limit=100)
    return [turn.content for turn in turns]


async def usage_count(sessions: Sessions, chat_id: int) -> int:
    async with sessions() as session:
        stmt = select(func.count()).where(UsageRecord.chat_id == chat_id)
        return int(await session.scalar(stmt) or 0)


async def test_the_chat_takes_its_model_history_usage_and_image_limits_along(
    sessionmaker: Sessions,
) -> None:
    await store_chat(
        sessionmaker,
        OLD,
        model="gpt-4o",
        turns=(("my code is 7", 5), ("Noted.", None)),
        kinds=("chat", "image"),
    )
    await store_chat(sessionmaker, OTHER, turns=(("unrelated", 5),), kinds=("chat",))
    directory = Directory()
    async with sessionmaker() as session:
        old = await ChatRepository(session).get(chat_id=OLD)
    assert old is not None
    directory.remember(old)

    assert await ChatMigration(sessions=sessionmaker, directory=directory).move(
        old_chat_id=OLD, new_chat_id=NEW
    )

    async with sessionmaker() as session:
        chats = ChatRepository(session)
        assert await chats.get(chat_id=OLD) is None
        moved = await chats.get(chat_id=NEW)
        assert moved is not None and (moved.title, moved.model) == ("Team", "gpt-4o")
        # The old group's message ids mean other messages in the supergroup.
        assert not await TurnRepository(session).has_message(chat_id=NEW, telegram_message_id=5)
        ids = await session.scalars(select(Turn.telegram_message_id).where(Turn.chat_id == NEW))
        assert list(ids) == [None, None]
        # Image limits count the user's image records, which keep their user and time.
        since = utcnow() - timedelta(days=1)
        assert len(await UsageRepository(session).image_times(user_id=USER, since=since, limit=9))
    assert await contents(sessionmaker, NEW) == ["my code is 7", "Noted."]
    assert await contents(sessionmaker, OLD) == []
    assert (await usage_count(sessionmaker, NEW), await usage_count(sessionmaker, OLD)) == (2, 0)
    assert await contents(sessionmaker, OTHER) == ["unrelated"]
    assert await usage_count(sessionmaker, OTHER) == 1
    # The shared Directory no longer answers for the old id.
    assert directory.known_chat(chat_id=OLD, type="group", title="Team") is None
    known = directory.known_chat(chat_id=NEW, type="group", title="Team")
    assert known is not None and known.model == "gpt-4o"


async def test_moving_again_changes_nothing(sessionmaker: Sessions) -> None:
    await store_chat(sessionmaker, OLD, model="gpt-4o", turns=(("hi", 1),), kinds=("chat",))
    migration = ChatMigration(sessions=sessionmaker, directory=Directory())
    assert await migration.move(old_chat_id=OLD, new_chat_id=NEW)
    assert not await migration.move(old_chat_id=OLD, new_chat_id=NEW)
    assert not await migration.move(old_chat_id=NEW, new_chat_id=NEW)
    assert await contents(sessionmaker, NEW) == ["hi"]
    assert await usage_count(sessionmaker, NEW) == 1
    async with sessionmaker() as session:
        moved = await ChatRepository(session).get(chat_id=NEW)
    assert moved is not None and moved.model == "gpt-4o"


async def test_a_supergroup_already_in_use_takes_the_group_in(sessionmaker: Sessions) -> None:
    await store_chat(sessionmaker, OLD, model="gpt-4o", turns=(("old", 5),), kinds=("chat",))
    # Someone wrote in the supergroup before the move: its message 5 is another message.
    await store_chat(sessionmaker, NEW, type="supergroup", turns=(("new", 5),), kinds=("chat",))
    directory = Directory()
    async with sessionmaker() as session:
        stale = await ChatRepository(session).get(chat_id=NEW)
    assert stale is not None and stale.model is None
    directory.remember(stale)

    assert await ChatMigration(sessions=sessionmaker, directory=directory).move(
        old_chat_id=OLD, new_chat_id=NEW
    )

    assert await contents(sessionmaker, NEW) == ["old", "new"]
    assert await usage_count(sessionmaker, NEW) == 2
    async with sessionmaker() as session:
        merged = await ChatRepository(session).get(chat_id=NEW)
        assert await TurnRepository(session).has_message(chat_id=NEW, telegram_message_id=5)
    assert merged is not None and (merged.type, merged.model) == ("supergroup", "gpt-4o")
    known = directory.known_chat(chat_id=NEW, type="supergroup", title="Team")
    assert known is not None and known.model == "gpt-4o"


async def test_a_supergroup_keeps_a_model_of_its_own(sessionmaker: Sessions) -> None:
    await store_chat(sessionmaker, OLD, model="gpt-4o", turns=(("old", 5),))
    await store_chat(sessionmaker, NEW, type="supergroup", model="gpt-4o-mini")
    await ChatMigration(sessions=sessionmaker, directory=Directory()).move(
        old_chat_id=OLD, new_chat_id=NEW
    )
    async with sessionmaker() as session:
        merged = await ChatRepository(session).get(chat_id=NEW)
    assert merged is not None and merged.model == "gpt-4o-mini"
    assert await contents(sessionmaker, NEW) == ["old"]


async def test_usage_of_a_chat_never_stored_moves_too(sessionmaker: Sessions) -> None:
    # Usage records keep no foreign key: a refused first request leaves one without a chat row.
    async with sessionmaker() as session, session.begin():
        await UsageRepository(session).add(usage(OLD))
    migration = ChatMigration(sessions=sessionmaker, directory=Directory())
    assert await migration.move(old_chat_id=OLD, new_chat_id=NEW)
    assert await usage_count(sessionmaker, NEW) == 1
    async with sessionmaker() as session:
        assert await ChatRepository(session).get(chat_id=NEW) is None
