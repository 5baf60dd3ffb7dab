"""Database fixtures: a fresh SQLite file per test and a throwaway PostgreSQL database.

PostgreSQL: once per test session a new database `bot_test_<random>` is created on the server
named by `TEST_POSTGRES_URL` (default: the `test` database on 127.0.0.1:5432 as `postgres`,
falling back to `root`), and dropped at the end. Migration tests get an empty `public` schema
in it; repository tests share the migrated schema, with every table emptied before each test.
If no server answers, PostgreSQL tests are skipped, except on CI (`CI` set) where they fail;
a server that answers but refuses the connection (unknown role, missing database) fails them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db import create_engine, create_sessionmaker, migrate

DEFAULT_POSTGRES_URLS = (
    "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "postgresql+asyncpg://root@127.0.0.1:5432/test",
)
BACKENDS = ("sqlite", "postgresql")
TABLES = ("chats", "users", "turns", "usage_records", "inbox")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses the `engine` fixture once per backend."""
    if "migrated_url" in metafunc.fixturenames:
        metafunc.parametrize("migrated_url", BACKENDS, indirect=True)


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin_execute(url: URL, *statements: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _connect_to_server() -> tuple[URL | None, bool, str]:
    """Return the first PostgreSQL URL that accepts a connection, or None, whether any server
    answered at all, and what went wrong."""
    configured = os.environ.get("TEST_POSTGRES_URL")
    candidates = (configured,) if configured else DEFAULT_POSTGRES_URLS
    answered = False
    problems = []
    for candidate in candidates:
        url = make_url(candidate)
        try:
            asyncio.run(_admin_execute(url, "SELECT 1"))
        except asyncpg.PostgresError as exc:  # the server answered, but refused
            answered = True
            problems.append(f"{url.render_as_string()}: {type(exc).__name__}: {exc}")
        except (OSError, TimeoutError) as exc:
            problems.append(f"{url.render_as_string()}: {type(exc).__name__}: {exc}")
        else:
            return url, True, ""
    return None, answered, "; ".join(problems)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[URL]:
    """Create a throwaway database for this test session and drop it afterwards."""
    server, answered, problem = _connect_to_server()
    if server is None:
        if answered:
            pytest.fail(
                f"PostgreSQL refused the test connection ({problem}); set TEST_POSTGRES_URL"
            )
        message = f"PostgreSQL server unreachable ({problem}); set TEST_POSTGRES_URL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"bot_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_admin_execute(server, f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name)
    finally:
        asyncio.run(_admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def postgres_url(postgres_database: URL) -> str:
    """The session's PostgreSQL database with an empty public schema."""
    await _admin_execute(postgres_database, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    return postgres_database.render_as_string(hide_password=False)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file that does not exist yet."""
    return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend in turn."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test instead of migrating again."""
    path = tmp_path_factory.mktemp("template") / "bot.db"

    async def build() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await migrate(engine)
        finally:
            await engine.dispose()  # the last connection checkpoints and removes the WAL

    asyncio.run(build())
    return path


@pytest.fixture
def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an already migrated database of the backend named by the parameter."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite_template")
        path = tmp_path / "bot.db"
        shutil.copyfile(template, path)
        return f"sqlite+aiosqlite:///{path}"
    database: URL = request.getfixturevalue("postgres_database")
    return database.render_as_string(hide_password=False)


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a migrated database with empty tables, on each backend in turn."""
    engine = create_engine(migrated_url)
    try:
        # A no-op, unless a migration test left the PostgreSQL schema in another state. The
        # PostgreSQL database is shared by the session, so its tables are emptied (DELETE is
        # quicker than TRUNCATE on tables this small); SQLite files are fresh copies.
        await migrate(engine)
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                for table in TABLES:
                    await conn.exec_driver_sql(f"DELETE FROM {table}")
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a migrated, empty SQLite file."""
    engine = create_engine(sqlite_url)
    await migrate(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on the migrated database of each backend."""
    return create_sessionmaker(engine)
