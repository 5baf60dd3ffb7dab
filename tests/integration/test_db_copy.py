"""`python -m bot.db.copy`: a SQLite database's rows arrive unchanged in an empty PostgreSQL one.

Each test copies into a PostgreSQL database of its own, created on the server of the session's
`postgres_database` and dropped afterwards; tests that need no server come last.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import URL

from bot.db import (
    ChatRepository,
    NewTurn,
    NewUsage,
    TurnRepository,
    UsageRepository,
    UserRepository,
    create_engine,
    create_sessionmaker,
    migrate,
)
from bot.db import copy as db_copy
from bot.db.models import Base
from bot.db.repositories import InboxEntry, InboxRepository
from bot.pictures import Picture

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("chats", "users", "turns", "turn_images", "usage_records")
SECRET = "Секретный вопрос про кофе ☕ — 日本語のテキスト 👋"
ANSWER = "Ответ с «кавычками» и emoji 🤖"
PICTURE = Picture("image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
GROUP, PRIVATE = -1001234567890, 42


async def admin_execute(server: URL, statement: str) -> None:
    dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
async def target(postgres_database: URL) -> AsyncIterator[URL]:
    """A new, empty PostgreSQL database (no schema yet), dropped after the test."""
    name = f"bot_copy_{os.getpid()}_{secrets.token_hex(4)}"
    await admin_execute(postgres_database, f'CREATE DATABASE "{name}"')
    try:
        yield postgres_database.set(database=name)
    finally:
        await admin_execute(postgres_database, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def plain(url: URL) -> str:
    """The URL as an owner types it: `postgresql://`, without the driver."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def build_source(path: Path) -> None:
    """A migrated SQLite file with rows in every table, through the bot's repositories."""
    engine = create_engine(sqlite_url(path))
    try:
        await migrate(engine)
        async with create_sessionmaker(engine).begin() as session:
            chats = ChatRepository(session)
            await chats.upsert(chat_id=GROUP, type="supergroup", title="Кофейня ☕")
            await chats.set_model(chat_id=GROUP, model="gpt-4o-mini")
            await chats.upsert(chat_id=PRIVATE, type="private", title=None)
            users = UserRepository(session)
            await users.upsert(
                user_id=PRIVATE, username="anna", full_name="Анна Каренина", language_code="ru"
            )
            await users.set_language(user_id=PRIVATE, language="uk")
            await users.upsert(user_id=7, username=None, full_name="李小龍", language_code=None)
            await add_turns(TurnRepository(session))
            await UsageRepository(session).add(*usage_records())
            await InboxRepository(session).add(
                entries=[InboxEntry(update_id=900, payload='{"update_id": 900}', chat_key=42)]
            )
        async with create_sessionmaker(engine).begin() as session:
            # A gap in the ids: copied turns keep theirs instead of being renumbered.
            await TurnRepository(session).remove(turn_ids=[3])
    finally:
        await engine.dispose()


async def add_turns(turns: TurnRepository) -> None:
    await turns.add(
        chat_id=PRIVATE,
        turns=[
            NewTurn(
                role="user",
                content=SECRET,
                tokens=800,
                author_id=PRIVATE,
                author_name="Анна",
                telegram_message_id=1001,
                image=PICTURE,
            ),
            NewTurn(role="assistant", content=ANSWER, tokens=12),
            NewTurn(role="user", content="удалено", tokens=2, telegram_message_id=1002),
            NewTurn(role="assistant", content="Половина отв…", tokens=4, interrupted=True),
        ],
    )
    await turns.add(
        chat_id=GROUP,
        turns=[
            NewTurn(role="user", content=f"{SECRET} {n}", tokens=n, telegram_message_id=n)
            for n in range(1, 5)
        ]
        + [NewTurn(role="assistant", content="…", tokens=1, interrupted=True)],
    )


def usage_records() -> list[NewUsage]:
    common: dict[str, Any] = {"estimated": False, "latency_ms": 1200}
    return [
        NewUsage(
            user_id=PRIVATE,
            chat_id=PRIVATE,
            model="gpt-4o-mini",
            kind="chat",
            prompt_tokens=800,
            completion_tokens=12,
            status="ok",
            finish_reason="stop",
            backend="openai",
            **common,
        ),
        NewUsage(
            user_id=PRIVATE,
            chat_id=PRIVATE,
            model="gpt-4o-mini",
            kind="chat",
            prompt_tokens=10,
            completion_tokens=4,
            status="interrupted",
            **{**common, "estimated": True},
        ),
        NewUsage(
            user_id=7,
            chat_id=GROUP,
            model="dall-e-3",
            kind="image",
            prompt_tokens=0,
            completion_tokens=0,
            images=1,
            size="1024x1024",
            status="ok",
            **common,
        ),
        NewUsage(
            user_id=None,
            chat_id=GROUP,
            model="whisper-1",
            kind="transcription",
            prompt_tokens=0,
            completion_tokens=0,
            audio_seconds=37,
            status="ok",
            **common,
        ),
        NewUsage(
            user_id=7,
            chat_id=GROUP,
            model="gpt-4o",
            kind="chat",
            prompt_tokens=0,
            completion_tokens=0,
            status="error",
            error="Ошибка: backend недоступен",
            **common,
        ),
    ]


async def dump(url: str | URL) -> dict[str, list[dict[str, Any]]]:
    """Every row of the copied tables, in primary-key order."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = {}
            for name in TABLES:
                table = Base.metadata.tables[name]
                query = select(table).order_by(*table.primary_key.columns)
                result = await connection.execute(query)
                rows[name] = [dict(row) for row in result.mappings()]
            return rows
    finally:
        await engine.dispose()


async def count_inbox(url: str | URL) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(text("SELECT count(*) FROM inbox")) or 0)
    finally:
        await engine.dispose()


async def run_copy(argv: Sequence[str]) -> int:
    """Call the command's main function in-process (on a thread: it runs its own event loop)."""
    return await asyncio.to_thread(db_copy.main, list(argv))


def summary_counts(out: str) -> dict[str, int]:
    lines = out.splitlines()
    assert len(lines) == len(TABLES) + 1, out
    counts = {}
    for line in lines[:-1]:
        name, count, *_ = line.split()
        counts[name] = int(count)
    assert lines[-1].startswith("Done: ")
    assert "inbox" in lines[-1]
    return counts


def assert_no_content(*outputs: str) -> None:
    for output in outputs:
        for secret in (SECRET, ANSWER, "Анна", "Ошибка"):
            assert secret not in output


async def test_copy_keeps_every_row_and_refuses_a_second_copy(
    tmp_path: Path, target: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bot.db"
    await build_source(source)
    expected = await dump(sqlite_url(source))
    assert [len(expected[name]) for name in TABLES] == [2, 2, 8, 1, 5]
    assert [turn["id"] for turn in expected["turns"]][:3] == [1, 2, 4]

    code = await run_copy(["--from", f"sqlite:///{source}", "--to", plain(target), "--batch", "2"])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert summary_counts(out) == {name: len(expected[name]) for name in TABLES}
    assert_no_content(out)
    assert await dump(target) == expected
    assert await count_inbox(target) == 0
    assert await count_inbox(sqlite_url(source)) == 1

    # The bot's next rows on PostgreSQL get ids after the copied ones.
    engine = create_engine(target)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await TurnRepository(session).add(
                chat_id=PRIVATE, turns=[NewTurn(role="user", content="новый", tokens=1)]
            )
            await UsageRepository(session).add(usage_records()[0])
    finally:
        await engine.dispose()
    after = await dump(target)
    assert after["turns"][-1]["id"] == max(t["id"] for t in expected["turns"]) + 1
    assert after["usage_records"][-1]["id"] == max(u["id"] for u in expected["usage_records"]) + 1

    code = await run_copy(["--from", str(source), "--to", plain(target)])

    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "already holds chats, users, turns, usage_records" in err
    assert await dump(target) == after


async def test_entry_point_copies_from_a_file_path(tmp_path: Path, target: URL) -> None:
    source = tmp_path / "bot.db"
    await build_source(source)

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.db.copy",
        "--from",
        str(source),
        "--to",
        plain(target),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()

    out, err = stdout.decode(), stderr.decode()
    assert (process.returncode, err) == (0, "")
    expected = await dump(sqlite_url(source))
    assert summary_counts(out) == {name: len(expected[name]) for name in TABLES}
    assert_no_content(out)
    assert await dump(target) == expected


async def test_an_older_source_is_migrated_before_the_copy(
    tmp_path: Path, target: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "old.db"
    engine = create_engine(sqlite_url(source))
    try:
        await migrate(engine, revision="0004")
        async with engine.begin() as connection:
            await connection.exec_driver_sql(
                "INSERT INTO chats (id, type, title) VALUES (5, 'private', 'Ёж')"
            )
            await connection.exec_driver_sql(
                "INSERT INTO turns (id, chat_id, role, content, tokens) "
                "VALUES (17, 5, 'user', 'старый текст', 3)"
            )
            await connection.exec_driver_sql(
                "INSERT INTO usage_records (id, user_id, chat_id, model, kind, prompt_tokens, "
                "completion_tokens, images, estimated, status, latency_ms) "
                "VALUES (23, 5, 5, 'm', 'chat', 3, 4, 0, 0, 'ok', 10)"
            )
    finally:
        await engine.dispose()

    code = await run_copy(["--from", str(source), "--to", plain(target)])

    assert code == 0, capsys.readouterr().err
    copied = await dump(target)
    assert await dump(sqlite_url(source)) == copied
    assert [t["id"] for t in copied["turns"]] == [17]
    (usage,) = copied["usage_records"]
    assert (usage["id"], usage["backend"], usage["audio_seconds"]) == (23, None, 0)
    engine = create_engine(target)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await TurnRepository(session).add(
                chat_id=5, turns=[NewTurn(role="user", content="x", tokens=1)]
            )
    finally:
        await engine.dispose()
    assert [t["id"] for t in (await dump(target))["turns"]] == [17, 18]


async def test_a_failed_copy_leaves_the_target_empty(
    tmp_path: Path, target: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bot.db"
    await build_source(source)
    # SQLite does not enforce VARCHAR lengths; PostgreSQL refuses this row of the last table,
    # after every other table's rows were inserted.
    engine = create_engine(sqlite_url(source))
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(
                "UPDATE usage_records SET size = ? WHERE id = 5", (f"{SECRET} {'x' * 40}",)
            )
    finally:
        await engine.dispose()

    code = await run_copy(["--from", str(source), "--to", plain(target), "--batch", "3"])

    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("copy failed")
    assert "value too long" in err
    assert_no_content(err)
    assert await dump(target) == {name: [] for name in TABLES}


async def test_an_unreachable_target_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bot.db"
    await build_source(source)

    code = await run_copy(["--from", str(source), "--to", "postgresql://postgres@127.0.0.1:1/x"])

    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("copy failed")


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("mysql://user@host/db", "--to is not a supported database URL"),
        ("sqlite:///elsewhere.db", "--to must be a PostgreSQL database"),
        ("postgresql://user@host", "--to names no database"),
        ("no url at all", "--to is not a supported database URL"),
    ],
)
def test_a_bad_target_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], to: str, message: str
) -> None:
    source = tmp_path / "bot.db"
    source.write_bytes(b"")

    assert db_copy.main(["--from", str(source), "--to", to]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {message}")
    assert "postgresql://user@host/db" in err  # how to write it


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from", "{missing}", "--to", "postgresql://u@h/db"], "--from: no such file"),
        (["--from", "sqlite:///{missing}", "--to", "postgresql://u@h/db"], "--from: no such"),
        (["--from", "sqlite://", "--to", "postgresql://u@h/db"], "--from names no database"),
        (["--from", "postgresql://u@h/db", "--to", "postgresql://u@h/db"], "--from must be"),
        (["--from", "{existing}", "--to", "postgresql://u@h/db", "--batch", "0"], "--batch"),
        (["--from", "{existing}", "--to", "postgresql://u@h/db", "--batch", "x"], "argument"),
        (["--from", "{existing}"], "the following arguments are required: --to"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    existing = tmp_path / "bot.db"
    existing.write_bytes(b"")
    values = {"missing": tmp_path / "absent.db", "existing": existing}

    assert db_copy.main([arg.format(**values) for arg in argv]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {message}")
    assert existing.read_bytes() == b""  # nothing was opened, let alone migrated
