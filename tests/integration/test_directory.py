"""The directory of stored chats and users, on a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db import ChatRecord, ChatRepository, UserRepository, create_sessionmaker
from bot.services.directory import Directory

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
def sessions(sqlite_engine: AsyncEngine) -> Sessions:
    return create_sessionmaker(sqlite_engine)


@pytest.fixture
def statements(sqlite_engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements run on chats and users, as they run."""
    seen: list[str] = []

    def record(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        if " chats" in statement or " users" in statement:
            seen.append(statement)

    event.listen(sqlite_engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(sqlite_engine.sync_engine, "before_cursor_execute", record)


async def see(
    directory: Directory,
    sessions: Sessions,
    *,
    chat_id: int = 1,
    title: str | None = None,
    full_name: str = "Ann",
) -> ChatRecord:
    """Store a message's chat and user as the chat service does, remembering them on commit."""
    async with sessions() as session, session.begin():
        chat = await directory.chat(session, chat_id=chat_id, type="group", title=title)
        user = await directory.user(
            session, user_id=10, username="ann", full_name=full_name, language_code="en"
        )
    directory.remember(chat, user)
    return chat


async def test_a_known_unchanged_sender_costs_no_statement(
    sessions: Sessions, statements: list[str]
) -> None:
    directory = Directory()
    await see(directory, sessions, title="Team")
    assert len(statements) == 2  # one upsert each for the new chat and the new user
    statements.clear()
    assert await see(directory, sessions, title="Team") == ChatRecord(
        id=1, type="group", title="Team", model=None
    )
    assert statements == []


async def test_what_telegram_reports_changed_is_written(sessions: Sessions) -> None:
    directory = Directory()
    await see(directory, sessions, title="Team")
    await see(directory, sessions, title="Renamed team", full_name="Ann Smith")
    async with sessions() as session:
        chat = await ChatRepository(session).get(chat_id=1)
        user = await UserRepository(session).get(user_id=10)
    assert chat is not None and chat.title == "Renamed team"
    assert user is not None and user.full_name == "Ann Smith"


async def test_nothing_is_taken_as_stored_before_its_commit(sessions: Sessions) -> None:
    directory = Directory()
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await directory.chat(session, chat_id=1, type="private", title=None)
            raise RuntimeError("the transaction fails after the chat was written")
    await see(directory, sessions, chat_id=1)
    async with sessions() as session:
        assert await ChatRepository(session).get(chat_id=1) is not None


async def test_the_least_recently_seen_are_forgotten_beyond_capacity(
    sessions: Sessions, statements: list[str]
) -> None:
    directory = Directory(capacity=2)
    await see(directory, sessions, chat_id=1)
    await see(directory, sessions, chat_id=2)  # the user is seen again: chats 1 and 2 kept
    await see(directory, sessions, chat_id=1)
    statements.clear()
    await see(directory, sessions, chat_id=3)  # evicts chat 2, the least recently seen
    await see(directory, sessions, chat_id=1)
    assert len(statements) == 1  # chat 3's insert; chat 1 and the user are still known
    statements.clear()
    await see(directory, sessions, chat_id=2)
    assert len(statements) == 2  # chat 2 was forgotten: upserted unchanged, then read


async def test_capacity_zero_keeps_nothing(sessions: Sessions, statements: list[str]) -> None:
    directory = Directory(capacity=0)
    await see(directory, sessions)
    statements.clear()
    await see(directory, sessions)
    assert len(statements) == 4  # each unchanged row: an upsert that writes nothing, a read
