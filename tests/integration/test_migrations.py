"""Alembic migrations: they run both ways on both backends and match the ORM models."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db import (
    Base,
    ChatRepository,
    NewTurn,
    NewUsage,
    TurnRepository,
    UsageRecord,
    UsageRepository,
    create_engine,
    create_sessionmaker,
    migrate,
)
from bot.db.engine import MIGRATIONS_DIR, alembic_config
from bot.db.usage_queries import ModelUsage, TopLists, UsageQueries
from bot.pricing import PriceList

ROOT = Path(__file__).resolve().parents[2]
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
TABLES = {"chats", "users", "turns", "usage_records", "inbox", "turn_images", "handled_updates"}


async def run_alembic(
    engine: AsyncEngine,
    action: Callable[[Config, str], None],
    revision: str,
    config: Config | None = None,
) -> None:
    """Run an Alembic command on a connection shared from `engine`, as `migrate` does."""
    config = config or alembic_config()

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        action(config, revision)

    async with engine.connect() as connection:
        await connection.run_sync(run)


def schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def schema_facts(connection: Connection) -> dict[str, Any]:
    """What autogenerate does not compare: check constraints and foreign-key actions."""
    inspector = inspect(connection)
    return {
        table: {
            "checks": sorted(c["name"] for c in inspector.get_check_constraints(table)),
            "foreign_keys": sorted(
                (fk["name"], fk["referred_table"], fk["options"].get("ondelete"))
                for fk in inspector.get_foreign_keys(table)
            ),
        }
        for table in sorted(TABLES)
    }


def metadata_facts() -> dict[str, Any]:
    facts = {}
    for table in sorted(TABLES):
        t = Base.metadata.tables[table]
        facts[table] = {
            "checks": sorted(
                str(c.name) for c in t.constraints if c.__class__.__name__ == "CheckConstraint"
            ),
            "foreign_keys": sorted(
                (str(fk.name), fk.referred_table.name, fk.ondelete)
                for fk in t.foreign_key_constraints
            ),
        }
    return facts


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await run_alembic(engine, command.upgrade, "head")
        async with engine.connect() as conn:
            assert await conn.run_sync(table_names) == TABLES | {"alembic_version"}
            assert await conn.run_sync(schema_differences) == []
            assert await conn.run_sync(schema_facts) == metadata_facts()

        await run_alembic(engine, command.downgrade, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(table_names) == {"alembic_version"}

        await run_alembic(engine, command.upgrade, "head")
        async with engine.connect() as conn:
            assert await conn.run_sync(schema_differences) == []
            assert await conn.run_sync(schema_facts) == metadata_facts()
    finally:
        await engine.dispose()


def clauses(sql: str) -> set[str]:
    """A statement's head and its top-level column and constraint definitions.

    Compared as a set: clause order may legitimately differ, and SQLite's ALTER TABLE ADD COLUMN
    appends the new column's definition to the last column's line of the stored statement. The
    head's quotes are dropped: a table rebuilt by a batch migration is renamed into place, and
    SQLite's ALTER TABLE RENAME stores its new name quoted (`CREATE TABLE "usage_records"`).
    """
    head, _, body = sql.partition("(")
    parts: list[str] = []
    depth = 0
    current = ""
    for char in body.rstrip().removesuffix(")"):
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += (char == "(") - (char == ")")
        current += char
    parts.append(current)
    return {" ".join(head.replace('"', "").split())} | {" ".join(part.split()) for part in parts}


async def test_sqlite_migrations_build_exactly_the_model_schema(tmp_path: Path) -> None:
    """The DDL stored by SQLite, server defaults and CHECKs included, matches `create_all`."""

    async def stored_schema(engine: AsyncEngine) -> dict[str, set[str]]:
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master "
                "WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE 'alembic_%'"
            )
            return {row.name: clauses(row.sql) for row in rows}

    migrated = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}")
    created = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'created.db'}")
    try:
        await migrate(migrated)
        async with created.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        assert await stored_schema(migrated) == await stored_schema(created)
    finally:
        await migrated.dispose()
        await created.dispose()


async def test_migrate_twice_is_a_no_op(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session, session.begin():
            await ChatRepository(session).upsert(chat_id=1, type="private", title=None)

        statements: list[str] = []
        event.listen(
            engine.sync_engine,
            "before_cursor_execute",
            lambda conn, cursor, statement, *args: statements.append(statement),
        )
        await migrate(engine)
        ddl = [s for s in statements if s.lstrip().upper().startswith(("CREATE", "ALTER", "DROP"))]
        assert ddl == []

        async with engine.connect() as conn:
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
            assert version == [(HEAD,)]
        async with sessionmaker() as session:
            assert await ChatRepository(session).get(chat_id=1) is not None
    finally:
        await engine.dispose()


async def test_migrate_creates_missing_sqlite_directory(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there" / "bot.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(table_names) == TABLES | {"alembic_version"}
            # Foreign keys are switched back on after migrating.
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await engine.dispose()
    assert path.is_file()


async def usage_sums(engine: AsyncEngine) -> tuple[list[ModelUsage], TopLists]:
    """What /usage and the budget checks sum: per model, and per user."""
    async with create_sessionmaker(engine)() as session:
        queries = UsageQueries(session)
        return await queries.by_model(), await queries.top_users(
            since=None, until=None, prices=PriceList(), limit=10
        )


async def test_0003_clamps_absurd_usage_so_sums_work_again(database_url: str) -> None:
    """Rows a backend's absurd usage wrote before 0003 are clamped to [0, 10**7] by it."""
    ceiling = 10_000_000
    engine = create_engine(database_url)
    # PostgreSQL's INTEGER is 32-bit, so its worst stored figure is 2**31 - 1, which overflows
    # the per-row prompt + completion; SQLite took 2**63 - 1, which overflows any SUM.
    absurd = 2**63 - 1 if engine.dialect.name == "sqlite" else 2**31 - 1
    rows = [  # prompt, completion, images
        (absurd, absurd, 0),
        (absurd, 5, absurd),
        (-5, 7, -1),
        (12, 3, 0),
    ]
    try:
        await run_alembic(engine, command.upgrade, "0002")
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session, session.begin():
            for prompt, completion, images in rows:
                await session.execute(
                    insert(UsageRecord).values(
                        user_id=1,
                        chat_id=1,
                        model="m",
                        kind="chat",
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        images=images,
                        estimated=False,
                        status="ok",
                        latency_ms=1,
                    )
                )
        # The sums /usage takes, over the schema of 0002 (today's queries read later columns):
        # SQLite's SUM raises "integer overflow"; PostgreSQL's int4 addition "out of range".
        with pytest.raises(DBAPIError, match=r"overflow|out of range"):
            async with sessionmaker() as session:
                await session.execute(
                    text(
                        "SELECT model, SUM(prompt_tokens), SUM(completion_tokens), SUM(images), "
                        "SUM(prompt_tokens + completion_tokens) FROM usage_records GROUP BY model"
                    )
                )

        await run_alembic(engine, command.upgrade, "head")

        async with sessionmaker() as session:
            stored = (
                await session.execute(
                    select(
                        UsageRecord.prompt_tokens,
                        UsageRecord.completion_tokens,
                        UsageRecord.images,
                    ).order_by(UsageRecord.id)
                )
            ).all()
            assert [tuple(row) for row in stored] == [
                (ceiling, ceiling, 0),
                (ceiling, 5, ceiling),
                (0, 7, 0),
                (12, 3, 0),
            ]
        [model], top = await usage_sums(engine)
        assert (model.sums.prompt_tokens, model.sums.completion_tokens) == (
            2 * ceiling + 12,
            ceiling + 15,
        )
        assert model.sums.images == ceiling
        assert [user.tokens for user in top.by_tokens] == [3 * ceiling + 27]
    finally:
        await engine.dispose()


def extra_migration(directory: Path, body: str) -> Config:
    """An Alembic config whose history has one more migration, 9999, after the real ones."""
    directory.mkdir()
    (directory / "9999_extra.py").write_text(
        "import sqlalchemy as sa\n"
        "from alembic import op\n"
        "revision = '9999'\n"
        f"down_revision = {HEAD!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n"
        "def upgrade():\n"
        f"{body}\n"
        "def downgrade():\n"
        "    pass\n"
    )
    config = alembic_config()
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", os.pathsep.join([str(MIGRATIONS_DIR / "versions"), str(directory)])
    )
    return config


async def test_sqlite_table_rebuild_keeps_child_rows(sqlite_url: str, tmp_path: Path) -> None:
    """A batch migration rebuilding `chats` must not cascade-delete the chats' turns."""
    config = extra_migration(
        tmp_path / "versions",
        "    with op.batch_alter_table('chats', recreate='always') as batch:\n"
        "        batch.add_column(sa.Column('note', sa.String(), nullable=True))\n",
    )
    engine = create_engine(sqlite_url)
    try:
        await migrate(engine)
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session, session.begin():
            await ChatRepository(session).upsert(chat_id=1, type="private", title=None)
            await TurnRepository(session).add(
                chat_id=1, turns=[NewTurn(role="user", content="kept", tokens=1)]
            )

        await run_alembic(engine, command.upgrade, "head", config)

        async with sessionmaker() as session:
            turns = await TurnRepository(session).recent(chat_id=1, limit=10)
            assert [t.content for t in turns] == ["kept"]
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        # The rebuilt table still enforces the foreign key.
        async with sessionmaker() as session:
            with pytest.raises(IntegrityError):
                await TurnRepository(session).add(
                    chat_id=2, turns=[NewTurn(role="user", content="x", tokens=1)]
                )
    finally:
        await engine.dispose()


async def test_failed_migration_changes_nothing(database_url: str, tmp_path: Path) -> None:
    """All pending migrations run in one transaction, DDL included, on both backends."""
    config = extra_migration(
        tmp_path / "versions",
        "    op.create_table('scratch', sa.Column('id', sa.Integer(), primary_key=True))\n"
        "    raise RuntimeError('migration failed')\n",
    )
    engine = create_engine(database_url)
    try:
        with pytest.raises(RuntimeError, match="migration failed"):
            await run_alembic(engine, command.upgrade, "head", config)
        async with engine.connect() as conn:
            assert await conn.run_sync(table_names) == set()
    finally:
        await engine.dispose()


def test_alembic_command_line(tmp_path: Path) -> None:
    """Developers can run `alembic -c bot/db/migrations/alembic.ini ...` against any URL."""
    path = tmp_path / "cli" / "bot.db"
    ini = ROOT / "bot" / "db" / "migrations" / "alembic.ini"
    base = ["-c", str(ini), "-x", f"url=sqlite+aiosqlite:///{path}"]
    # Both commands in one fresh interpreter, outside the repository: the ini file alone must
    # make the `bot` package importable. `check` fails if models and migrations disagree.
    script = (
        "from alembic.config import main\n"
        f"main(argv={[*base, 'upgrade', 'head']!r})\n"
        f"main(argv={[*base, 'check']!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


def transcription(**overrides: Any) -> NewUsage:
    values: dict[str, Any] = {
        "user_id": 1,
        "chat_id": 1,
        "model": "whisper-1",
        "kind": "transcription",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "estimated": False,
        "status": "ok",
        "latency_ms": 900,
        "audio_seconds": 200,
        **overrides,
    }
    return NewUsage(**values)


async def test_0007_keeps_usage_and_admits_transcriptions(database_url: str) -> None:
    """Rows from before 0007 keep everything (0 seconds of audio); transcriptions fit after."""
    engine = create_engine(database_url)
    sessionmaker = create_sessionmaker(engine)
    record = UsageRecord
    # The columns of 0006: the model's INSERT leaves out `audio_seconds`, which has no default
    # in Python.
    old = [
        {"kind": "chat", "model": "small", "prompt_tokens": 12, "images": 0, "size": None},
        {"kind": "image", "model": "dall-e-3", "prompt_tokens": 0, "images": 1, "size": "1x1"},
    ]
    fixed = {
        "user_id": 1,
        "chat_id": 1,
        "completion_tokens": 3,
        "estimated": False,
        "status": "ok",
        "latency_ms": 1,
        "backend": "primary",
    }
    try:
        await run_alembic(engine, command.upgrade, "0006")
        async with sessionmaker() as session, session.begin():
            for row in old:
                await session.execute(insert(record).values(**fixed, **row))
        with pytest.raises(IntegrityError):  # not yet a kind
            async with sessionmaker() as session, session.begin():
                await session.execute(
                    insert(record).values(
                        **fixed, kind="transcription", model="whisper-1", prompt_tokens=0
                    )
                )

        await run_alembic(engine, command.upgrade, "0007")

        async with sessionmaker() as session, session.begin():
            await UsageRepository(session).add(transcription())
        columns = (record.id, record.kind, record.model, record.prompt_tokens, record.images)
        async with sessionmaker() as session:
            rows = (
                await session.execute(
                    select(*columns, record.size, record.backend, record.audio_seconds).order_by(
                        record.id
                    )
                )
            ).all()
        # The old rows keep their ids (PostgreSQL's sequence skipped one: the refused insert).
        assert [tuple(row) for row in rows[:2]] == [
            (1, "chat", "small", 12, 0, None, "primary", 0),
            (2, "image", "dall-e-3", 0, 1, "1x1", "primary", 0),
        ]
        assert tuple(rows[2])[1:] == ("transcription", "whisper-1", 0, 0, None, None, 200)
        # The rebuilt table (on SQLite) still checks kinds and statuses.
        for bad in ({"kind": "speech"}, {"status": "lost"}):
            with pytest.raises(IntegrityError):
                async with sessionmaker() as session, session.begin():
                    values = {
                        "user_id": 1,
                        "chat_id": 1,
                        "model": "m",
                        "kind": "chat",
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                        "estimated": False,
                        "status": "ok",
                        "latency_ms": 1,
                    }
                    await session.execute(insert(record).values({**values, **bad}))
        async with engine.connect() as conn:
            indexes = await conn.run_sync(
                lambda c: sorted(i["name"] for i in inspect(c).get_indexes("usage_records"))
            )
        assert indexes == [
            "ix_usage_records_chat_id_created_at",
            "ix_usage_records_created_at",
            "ix_usage_records_model_created_at",
            "ix_usage_records_user_id_created_at",
        ]
    finally:
        await engine.dispose()


async def test_0007_downgrade_deletes_transcriptions_and_keeps_the_rest(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        await run_alembic(engine, command.upgrade, "0007")
        async with sessionmaker() as session, session.begin():
            await UsageRepository(session).add(
                transcription(kind="chat", model="small", prompt_tokens=5, audio_seconds=0),
                transcription(),
                transcription(status="error", audio_seconds=0),
            )

        await run_alembic(engine, command.downgrade, "0006")

        async with engine.connect() as conn:
            columns = await conn.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("usage_records")}
            )
            assert "audio_seconds" not in columns
            rows = (
                await conn.exec_driver_sql("SELECT kind, model, prompt_tokens FROM usage_records")
            ).all()
            assert [tuple(row) for row in rows] == [("chat", "small", 5)]
        # Revision 0006's kinds again.
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.exec_driver_sql(
                    "INSERT INTO usage_records (user_id, chat_id, model, kind, prompt_tokens, "
                    "completion_tokens, estimated, status, latency_ms) "
                    "VALUES (1, 1, 'whisper-1', 'transcription', 0, 0, false, 'ok', 1)"
                )

        await run_alembic(engine, command.upgrade, "head")
        async with engine.connect() as conn:
            assert await conn.run_sync(schema_differences) == []
            assert await conn.run_sync(schema_facts) == metadata_facts()
    finally:
        await engine.dispose()
