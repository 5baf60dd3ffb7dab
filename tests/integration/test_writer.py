"""Group commit: many finished turns in one transaction, each caller told its own outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import ColumnElement, event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db.models import Chat, Turn, UsageRecord, User
from bot.db.repositories import ChatRecord, NewTurn, NewUsage, UserRecord
from bot.db.writer import TurnWrite, TurnWriter


def entry(chat_id: int, *, message_id: int | None = None, title: str | None = None) -> TurnWrite:
    return TurnWrite(
        turns=[
            NewTurn(
                role="user",
                content=f"question {chat_id}",
                tokens=2,
                author_id=chat_id,
                telegram_message_id=message_id,
            ),
            NewTurn(role="assistant", content=f"answer {chat_id}", tokens=2),
        ],
        usage=NewUsage(
            user_id=chat_id,
            chat_id=chat_id,
            model="m",
            kind="chat",
            prompt_tokens=5,
            completion_tokens=3,
            estimated=False,
            status="ok",
            latency_ms=10,
        ),
        chat=ChatRecord(id=chat_id, type="private", title=title, model=None),
        user=UserRecord(
            id=chat_id,
            username=None,
            full_name=f"user {chat_id}",
            language_code="en",
            language=None,
        ),
    )


async def count(sessions: async_sessionmaker[AsyncSession], column: ColumnElement[Any]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count(column))) or 0)


async def test_a_burst_of_turns_is_stored_in_a_few_transactions(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    commits = 0

    def on_commit(connection: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine.sync_engine, "commit", on_commit)
    writer = TurnWriter(sessionmaker)
    await asyncio.gather(*(writer.write(entry(chat_id)) for chat_id in range(1, 201)))
    event.remove(engine.sync_engine, "commit", on_commit)

    assert await count(sessionmaker, Chat.id) == 200
    assert await count(sessionmaker, User.id) == 200
    assert await count(sessionmaker, Turn.id) == 400
    assert await count(sessionmaker, UsageRecord.id) == 200
    # The first write starts alone; the 199 queued meanwhile share one transaction.
    assert commits <= 3
    async with sessionmaker() as session:
        rows = (await session.execute(select(Turn.chat_id, Turn.role).order_by(Turn.id))).all()
    # Each chat's question comes before its answer.
    assert [(r.chat_id, r.role) for r in rows[:4]] == [
        (1, "user"),
        (1, "assistant"),
        (2, "user"),
        (2, "assistant"),
    ]


async def test_a_turn_that_cannot_be_stored_fails_alone(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    writer = TurnWriter(sessionmaker)
    await writer.write(entry(1, message_id=50))
    # Queued together: the middle one repeats an answered Telegram message of chat 1.
    results = await asyncio.gather(
        writer.write(entry(2, message_id=60)),
        writer.write(entry(1, message_id=50)),
        writer.write(entry(3, message_id=70)),
        return_exceptions=True,
    )

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IntegrityError)
    assert await count(sessionmaker, Turn.id) == 6
    assert await count(sessionmaker, UsageRecord.id) == 3


async def test_a_renamed_chat_is_updated_and_its_model_kept(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    writer = TurnWriter(sessionmaker)
    await writer.write(entry(-5, title="Old name"))
    async with sessionmaker.begin() as session:
        await session.execute(update(Chat).values(model="chosen"))
    await writer.write(entry(-5, title="New name"))

    async with sessionmaker() as session:
        chat = (await session.execute(select(Chat.title, Chat.model))).one()
    assert tuple(chat) == ("New name", "chosen")


async def test_a_cancelled_caller_still_has_its_turn_stored(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    writer = TurnWriter(sessionmaker)
    task = asyncio.create_task(writer.write(entry(9)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.close()

    assert await count(sessionmaker, Turn.id) == 2
    assert await count(sessionmaker, UsageRecord.id) == 1
