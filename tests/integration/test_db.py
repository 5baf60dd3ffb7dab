"""Engine settings and repositories, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import pytest
from sqlalchemy import Connection, delete, event, func, insert, make_url, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db import (
    Chat,
    ChatRecord,
    ChatRepository,
    NewTurn,
    NewUsage,
    Turn,
    TurnRepository,
    UsageRecord,
    UsageRepository,
    User,
    UserRecord,
    UserRepository,
    create_engine,
    create_sessionmaker,
)
from bot.db.engine import create_read_engine, normalize_url

Sessionmaker = async_sessionmaker[AsyncSession]


def usage(chat_id: int = 1, **overrides: Any) -> NewUsage:
    fields: dict[str, Any] = {
        "user_id": 10,
        "chat_id": chat_id,
        "model": "test-model",
        "kind": "chat",
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "estimated": False,
        "status": "ok",
        "latency_ms": 1500,
        "finish_reason": "stop",
    }
    fields.update(overrides)
    return NewUsage(**fields)


async def count(session: AsyncSession, model: type[Any], **where: Any) -> int:
    stmt = select(func.count()).select_from(model).filter_by(**where)
    return int(await session.scalar(stmt) or 0)


async def add_chat(sessionmaker: Sessionmaker, chat_id: int) -> None:
    async with sessionmaker() as session, session.begin():
        await ChatRepository(session).upsert(chat_id=chat_id, type="private", title=None)


# --- engine ---------------------------------------------------------------------------------


async def test_sqlite_connection_settings(sqlite_engine: AsyncEngine) -> None:
    async with sqlite_engine.connect() as conn:
        pragmas = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
        }
    assert pragmas == {
        "journal_mode": "wal",
        "busy_timeout": 10000,
        "foreign_keys": 1,
        "synchronous": 1,  # NORMAL
    }


def other_process_can_write(sqlite_url: str) -> bool:
    """Whether a second connection (a backup, the sqlite3 shell) gets the write lock at once."""
    other = sqlite3.connect(make_url(sqlite_url).database or "", timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    else:
        other.execute("ROLLBACK")
        return True
    finally:
        other.close()


async def test_sqlite_transactions_hold_the_write_lock_from_their_first_read(
    sqlite_url: str, sqlite_engine: AsyncEngine
) -> None:
    """BEGIN IMMEDIATE: a transaction that reads and then writes never fails half-way because
    another connection wrote in between; it queues for the lock up front instead."""
    sessionmaker = create_sessionmaker(sqlite_engine)
    async with sessionmaker() as session:
        await ChatRepository(session).get(chat_id=1)  # autobegun: a read, nothing written yet
        assert not other_process_can_write(sqlite_url)
    assert other_process_can_write(sqlite_url)
    async with sessionmaker() as session, session.begin():
        await add_chat_in(session, 1)
        assert not other_process_can_write(sqlite_url)
    assert other_process_can_write(sqlite_url)


async def test_connection_returned_inside_a_transaction_is_rolled_back(
    sqlite_url: str, sqlite_engine: AsyncEngine
) -> None:
    """A connection handed back to the pool mid-transaction keeps neither its rows nor the lock.

    Sessions end their transactions themselves; this is the pool's reset on return, for a
    connection whose user did not (here the driver connection is written to directly).
    """

    def write_without_ending(connection: Connection) -> None:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("INSERT INTO chats (id, type) VALUES (7, 'private')")
        cursor.close()

    async with sqlite_engine.connect() as conn:
        await conn.run_sync(write_without_ending)
        assert not other_process_can_write(sqlite_url)
    assert other_process_can_write(sqlite_url)
    async with create_sessionmaker(sqlite_engine)() as session:
        assert await ChatRepository(session).get(chat_id=7) is None


async def add_chat_in(session: AsyncSession, chat_id: int) -> None:
    await ChatRepository(session).upsert(chat_id=chat_id, type="private", title=None)


async def test_sqlite_engine_creates_missing_directory(tmp_path: Any) -> None:
    path = tmp_path / "nested" / "dir" / "bot.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    finally:
        await engine.dispose()
    assert path.exists()


@pytest.fixture
async def read_engine(sqlite_url: str, sqlite_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The report engine on the same migrated SQLite file as `sqlite_engine`."""
    engine = create_read_engine(sqlite_url)
    assert engine is not None
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_read_engine_reads_what_was_committed(
    sqlite_engine: AsyncEngine, read_engine: AsyncEngine
) -> None:
    await add_chat(create_sessionmaker(sqlite_engine), 1)
    async with create_sessionmaker(read_engine)() as session, session.begin():
        assert await ChatRepository(session).get(chat_id=1) == ChatRecord(
            id=1, type="private", title=None, model=None
        )


async def test_open_report_does_not_hold_up_writes(
    sqlite_engine: AsyncEngine, read_engine: AsyncEngine
) -> None:
    sessions = create_sessionmaker(sqlite_engine)
    await add_chat(sessions, 1)
    async with create_sessionmaker(read_engine)() as report, report.begin():
        assert await count(report, Chat) == 1
        # Without the write lock a reader leaves the writer free (busy_timeout is 10 s).
        await asyncio.wait_for(add_chat(sessions, 2), timeout=2)
        assert await count(report, Chat) == 1  # one snapshot for the whole report
    async with create_sessionmaker(read_engine)() as report:
        assert await count(report, Chat) == 2


async def test_read_engine_cannot_write(read_engine: AsyncEngine) -> None:
    with pytest.raises(OperationalError, match="readonly"):
        async with create_sessionmaker(read_engine)() as session, session.begin():
            await ChatRepository(session).upsert(chat_id=1, type="private", title=None)


async def test_slow_report_leaves_the_event_loop_running(read_engine: AsyncEngine) -> None:
    def add_slow_function(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.create_function("slow", 1, lambda s: time.sleep(s) or s)

    event.listen(read_engine.sync_engine, "connect", add_slow_function)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        async with read_engine.connect() as conn:
            assert (await conn.execute(text("SELECT slow(0.5)"))).scalar() == 0.5
    finally:
        ticker.cancel()
    # A query holding the loop for 0.5 s would have let the ticker run once at most.
    assert ticks >= 10


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:///:memory:", "sqlite://", "postgresql://u@127.0.0.1/db"]
)
def test_read_engine_is_the_main_one_where_the_driver_allows(url: str) -> None:
    assert create_read_engine(url) is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/bot.db", "sqlite+aiosqlite:///data/bot.db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string() == expected


def test_unsupported_driver_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        create_engine("mysql+aiomysql://u@h/db")


# --- chats and users ------------------------------------------------------------------------


async def test_chat_upsert_get_and_model(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker() as session, session.begin():
        repo = ChatRepository(session)
        assert await repo.get(chat_id=-100) is None
        created = await repo.upsert(chat_id=-100, type="group", title="Team")
        assert created == ChatRecord(id=-100, type="group", title="Team", model=None)
        await repo.set_model(chat_id=-100, model="big-model")

    async with sessionmaker() as session, session.begin():
        repo = ChatRepository(session)
        updated = await repo.upsert(chat_id=-100, type="supergroup", title="Team 2")
        assert updated == ChatRecord(-100, "supergroup", "Team 2", "big-model")
        unchanged = await repo.upsert(chat_id=-100, type="supergroup", title="Team 2")
        assert unchanged == updated
        assert await repo.get(chat_id=-100) == updated
        await repo.set_model(chat_id=-100, model=None)
        assert await repo.get(chat_id=-100) == ChatRecord(-100, "supergroup", "Team 2", None)
        await repo.set_model(chat_id=12345, model="x")  # unknown chat: ignored
        assert await repo.get(chat_id=12345) is None


async def test_chat_timestamps_are_utc(sessionmaker: Sessionmaker) -> None:
    await add_chat(sessionmaker, 7)
    async with sessionmaker() as session:
        row = (await session.execute(select(Chat.created_at, Chat.updated_at))).one()
    assert row.created_at.tzinfo is UTC
    assert row.updated_at >= row.created_at


async def test_user_upsert_keeps_language(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker() as session, session.begin():
        repo = UserRepository(session)
        assert await repo.get(user_id=5) is None
        created = await repo.upsert(
            user_id=5, username="ann", full_name="Ann A", language_code="en"
        )
        assert created == UserRecord(5, "ann", "Ann A", "en", None)
        await repo.set_language(user_id=5, language="de")

    async with sessionmaker() as session, session.begin():
        repo = UserRepository(session)
        updated = await repo.upsert(
            user_id=5, username=None, full_name="Ann B", language_code=None
        )
        assert updated == UserRecord(5, None, "Ann B", None, "de")
        assert (
            await repo.upsert(user_id=5, username=None, full_name="Ann B", language_code=None)
            == updated
        )
        assert await repo.get(user_id=5) == updated
        await repo.set_language(user_id=5, language=None)
        assert (await repo.get(user_id=5)) == UserRecord(5, None, "Ann B", None, None)


# --- turns ----------------------------------------------------------------------------------


async def test_recent_returns_newest_oldest_first(sessionmaker: Sessionmaker) -> None:
    await add_chat(sessionmaker, 1)
    await add_chat(sessionmaker, 2)
    async with sessionmaker() as session, session.begin():
        repo = TurnRepository(session)
        await repo.add(
            chat_id=1,
            turns=[
                NewTurn(role="user" if i % 2 == 0 else "assistant", content=f"m{i}", tokens=i)
                for i in range(10)
            ],
        )
        await repo.add(chat_id=2, turns=[NewTurn(role="user", content="other", tokens=1)])

    async with sessionmaker() as session:
        repo = TurnRepository(session)
        recent = await repo.recent(chat_id=1, limit=4)
        assert [t.content for t in recent] == ["m6", "m7", "m8", "m9"]
        assert [t.tokens for t in recent] == [6, 7, 8, 9]
        assert [t.id for t in recent] == sorted(t.id for t in recent)
        assert [t.content for t in await repo.recent(chat_id=1, limit=100)] == [
            f"m{i}" for i in range(10)
        ]
        assert await repo.recent(chat_id=1, limit=0) == []
        assert await repo.recent(chat_id=3, limit=5) == []


async def test_turn_fields_round_trip(sessionmaker: Sessionmaker) -> None:
    await add_chat(sessionmaker, -5)
    async with sessionmaker() as session, session.begin():
        repo = TurnRepository(session)
        await repo.add(
            chat_id=-5,
            turns=[
                NewTurn(
                    role="user",
                    content="hi",
                    tokens=3,
                    author_id=2**40,
                    author_name="Ann",
                    telegram_message_id=2**33,
                ),
                NewTurn(role="assistant", content="half an ans", tokens=4, interrupted=True),
            ],
        )
    async with sessionmaker() as session:
        repo = TurnRepository(session)
        user, assistant = await repo.recent(chat_id=-5, limit=2)
        assert (user.role, user.content, user.tokens) == ("user", "hi", 3)
        assert (user.author_id, user.author_name, user.interrupted) == (2**40, "Ann", False)
        assert (assistant.role, assistant.author_id, assistant.interrupted) == (
            "assistant",
            None,
            True,
        )
        assert await repo.has_message(chat_id=-5, telegram_message_id=2**33)
        assert not await repo.has_message(chat_id=-5, telegram_message_id=1)
        assert not await repo.has_message(chat_id=-6, telegram_message_id=2**33)


@pytest.mark.parametrize(
    "turn",
    [
        NewTurn(role="system", content="x", tokens=1),
        NewTurn(role="user", content="", tokens=1),
        NewTurn(role="user", content="x", tokens=-1),
    ],
)
async def test_invalid_turns_are_rejected(sessionmaker: Sessionmaker, turn: NewTurn) -> None:
    async with sessionmaker() as session:
        with pytest.raises(ValueError):
            await TurnRepository(session).add(chat_id=1, turns=[turn])


async def test_database_checks_turns(sessionmaker: Sessionmaker) -> None:
    await add_chat(sessionmaker, 1)
    async with sessionmaker() as session:
        with pytest.raises(IntegrityError):
            await session.execute(
                insert(Turn).values(chat_id=1, role="user", content="", tokens=1)
            )


async def explain_recent(session: AsyncSession, chat_id: int) -> str:
    """Run `TurnRepository.recent` and return the database's plan for the query it sent."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Connection, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    sync_engine = session.get_bind().engine
    event.listen(sync_engine, "before_cursor_execute", capture)
    try:
        recent = await TurnRepository(session).recent(chat_id=chat_id, limit=20)
    finally:
        event.remove(sync_engine, "before_cursor_execute", capture)
    assert len(recent) == 20
    [(statement, parameters)] = sent
    conn = await session.connection()
    if conn.dialect.name == "sqlite":
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        return " | ".join(str(row[-1]) for row in rows)
    rows = await conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
    return " | ".join(str(row[0]) for row in rows)


async def test_recent_uses_the_chat_index(sessionmaker: Sessionmaker) -> None:
    for chat_id in (1, 2, 3):
        await add_chat(sessionmaker, chat_id)
    async with sessionmaker() as session, session.begin():
        repo = TurnRepository(session)
        # An old, small chat, then a chat with 5,000 turns, then a newer, busier one.
        for chat_id, n in ((3, 50), (1, 5000), (2, 500)):
            await repo.add(
                chat_id=chat_id,
                turns=[NewTurn(role="user", content=f"{chat_id}:{i}", tokens=1) for i in range(n)],
            )

    async with sessionmaker() as session, session.begin():
        recent = await TurnRepository(session).recent(chat_id=1, limit=20)
        assert [t.content for t in recent] == [f"1:{i}" for i in range(4980, 5000)]

        if session.get_bind().dialect.name == "sqlite":
            for chat_id in (1, 3):
                plan = await explain_recent(session, chat_id)
                assert "USING INDEX ix_turns_chat_id_id" in plan, plan
                assert "SCAN turns" not in plan, plan
                assert "TEMP B-TREE" not in plan, plan  # no sort: the index gives the order
        else:
            await session.execute(text("ANALYZE turns"))
            # PostgreSQL may walk the primary key backwards for a chat owning most rows, but
            # never reads the whole table or sorts; for the small old chat it must use the
            # chat index, or it would wade through every newer turn.
            for chat_id in (1, 3):
                plan = await explain_recent(session, chat_id)
                assert "Index Scan" in plan, plan
                assert "Seq Scan" not in plan and "Sort" not in plan, plan
            assert "ix_turns_chat_id_id" in await explain_recent(session, 3)


async def test_clear_removes_only_that_chat(sessionmaker: Sessionmaker) -> None:
    for chat_id in (1, 2):
        await add_chat(sessionmaker, chat_id)
        async with sessionmaker() as session, session.begin():
            await TurnRepository(session).add(
                chat_id=chat_id,
                turns=[NewTurn(role="user", content="x", tokens=1) for _ in range(3)],
            )
    async with sessionmaker() as session, session.begin():
        repo = TurnRepository(session)
        assert await repo.clear(chat_id=1) == 3
        assert await repo.clear(chat_id=1) == 0
        assert await repo.recent(chat_id=1, limit=10) == []
        assert len(await repo.recent(chat_id=2, limit=10)) == 3


async def test_duplicate_message_rejected_in_chat_only(sessionmaker: Sessionmaker) -> None:
    for chat_id in (1, 2):
        await add_chat(sessionmaker, chat_id)
    async with sessionmaker() as session, session.begin():
        repo = TurnRepository(session)
        await repo.add(
            chat_id=1, turns=[NewTurn(role="user", content="a", tokens=1, telegram_message_id=42)]
        )
        # The same Telegram message id in another chat is a different message.
        await repo.add(
            chat_id=2, turns=[NewTurn(role="user", content="a", tokens=1, telegram_message_id=42)]
        )
        # Assistant turns carry no message id; any number of NULLs is fine.
        await repo.add(chat_id=1, turns=[NewTurn(role="assistant", content="b", tokens=1)] * 2)
        with pytest.raises(IntegrityError):
            async with session.begin_nested():
                await repo.add(
                    chat_id=1,
                    turns=[NewTurn(role="user", content="c", tokens=1, telegram_message_id=42)],
                )
        # The savepoint rolled back only the duplicate; the transaction goes on.
        assert [t.content for t in await repo.recent(chat_id=1, limit=10)] == ["a", "b", "b"]
    async with sessionmaker() as session:
        assert await count(session, Turn) == 4


async def test_turn_for_unknown_chat_is_rejected(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker() as session:
        with pytest.raises(IntegrityError):
            await TurnRepository(session).add(
                chat_id=999, turns=[NewTurn(role="user", content="a", tokens=1)]
            )


async def test_deleting_chat_cascades_to_turns(sessionmaker: Sessionmaker) -> None:
    for chat_id in (1, 2):
        await add_chat(sessionmaker, chat_id)
        async with sessionmaker() as session, session.begin():
            await TurnRepository(session).add(
                chat_id=chat_id, turns=[NewTurn(role="user", content="x", tokens=1)] * 2
            )
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(Chat).where(Chat.id == 1))
    async with sessionmaker() as session:
        assert await count(session, Turn, chat_id=1) == 0
        assert await count(session, Turn, chat_id=2) == 2


# --- usage ----------------------------------------------------------------------------------


async def test_usage_add(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker() as session, session.begin():
        repo = UsageRepository(session)
        await repo.add(usage(chat_id=77))  # no chat or user row needed
        await repo.add(
            usage(
                user_id=None,
                kind="image",
                images=2,
                status="error",
                estimated=True,
                finish_reason=None,
                error="x" * 2000,
            )
        )
    async with sessionmaker() as session:
        rows = (
            (await session.execute(select(UsageRecord).order_by(UsageRecord.id))).scalars().all()
        )
        first, second = rows
        assert (first.chat_id, first.user_id, first.model, first.kind) == (
            77,
            10,
            "test-model",
            "chat",
        )
        assert (first.prompt_tokens, first.completion_tokens, first.images) == (100, 20, 0)
        assert (first.status, first.finish_reason, first.latency_ms) == ("ok", "stop", 1500)
        assert first.estimated is False and first.error is None
        assert first.created_at.tzinfo is UTC
        assert (second.user_id, second.kind, second.images, second.estimated) == (
            None,
            "image",
            2,
            True,
        )
        assert second.error is not None and len(second.error) == 500


async def test_usage_rejects_unknown_status(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker() as session:
        with pytest.raises(ValueError):
            await UsageRepository(session).add(usage(status="weird"))


# --- concurrency ----------------------------------------------------------------------------

TASKS = 50


async def test_concurrent_transactions(sessionmaker: Sessionmaker) -> None:
    async def handle_message(i: int) -> None:
        chat_id, user_id = i % 5, 100 + i % 7
        async with sessionmaker() as session, session.begin():
            await ChatRepository(session).upsert(chat_id=chat_id, type="group", title=f"t{i}")
            await UserRepository(session).upsert(
                user_id=user_id, username=None, full_name=f"u{i}", language_code=None
            )
            await TurnRepository(session).add(
                chat_id=chat_id,
                turns=[
                    NewTurn(role="user", content=f"q{i}", tokens=1, telegram_message_id=i),
                    NewTurn(role="assistant", content=f"a{i}", tokens=2),
                ],
            )
            await UsageRepository(session).add(usage(chat_id=chat_id, user_id=user_id))

    await asyncio.gather(*(handle_message(i) for i in range(TASKS)))

    async with sessionmaker() as session:
        assert await count(session, Chat) == 5
        assert await count(session, User) == 7
        assert await count(session, Turn) == 2 * TASKS
        assert await count(session, UsageRecord) == TASKS
        for chat_id in range(5):
            turns = await TurnRepository(session).recent(chat_id=chat_id, limit=1000)
            # Each transaction's two turns are adjacent: question, then its answer.
            pairs = [(q.content, a.content) for q, a in zip(turns[::2], turns[1::2], strict=True)]
            assert all(q[1:] == a[1:] for q, a in pairs)


async def test_sqlite_read_then_write_transactions(sqlite_engine: AsyncEngine) -> None:
    """Read-modify-write transactions neither fail with "database is locked" nor lose updates.

    With deferred transactions, a transaction that read before another one committed could not
    write afterwards and failed immediately; BEGIN IMMEDIATE makes them queue instead.
    """
    sessionmaker = create_sessionmaker(sqlite_engine)
    await add_chat(sessionmaker, 1)
    async with sessionmaker() as session, session.begin():
        await ChatRepository(session).set_model(chat_id=1, model="0")

    async def increment() -> None:
        async with sessionmaker() as session, session.begin():
            repo = ChatRepository(session)
            chat = await repo.get(chat_id=1)
            assert chat is not None and chat.model is not None
            await asyncio.sleep(0)  # let the other transactions interleave
            await repo.set_model(chat_id=1, model=str(int(chat.model) + 1))
            await TurnRepository(session).add(
                chat_id=1, turns=[NewTurn(role="user", content=chat.model, tokens=1)]
            )

    await asyncio.gather(*(increment() for _ in range(TASKS)))

    async with sessionmaker() as session:
        chat = await ChatRepository(session).get(chat_id=1)
        assert chat is not None and chat.model == str(TASKS)
        turns = await TurnRepository(session).recent(chat_id=1, limit=1000)
        assert [t.content for t in turns] == [str(i) for i in range(TASKS)]
