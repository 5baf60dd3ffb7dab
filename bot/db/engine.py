"""Database engine, session factory and schema migration at start-up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, AdaptedConnection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Applied to every new SQLite connection. busy_timeout comes first so that switching the journal
# mode of a fresh file waits for other connections instead of failing.
SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=10000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)

# Read connections only read; they leave the journal mode to the main connection.
READ_PRAGMAS = ("PRAGMA busy_timeout=10000", "PRAGMA query_only=ON")

# How long a transaction may wait for the SQLite connection before failing. Transactions are
# short (no network I/O inside), so even a thousand queued chats get their turn well within it.
SQLITE_POOL_TIMEOUT_S = 120.0

# Read-only connections of a SQLite file, each with its driver thread: enough for a burst of
# messages to read their chats' history side by side while a report runs.
READ_POOL_SIZE = 4

POSTGRES_POOL_SIZE = 10
POSTGRES_MAX_OVERFLOW = 20
POSTGRES_POOL_RECYCLE_S = 1800

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_SUPPORTED = ("sqlite+aiosqlite", "postgresql+asyncpg")


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL, selecting the async driver when none (or `postgres://`) is given."""
    parsed = make_url(url)
    backend = "postgresql" if parsed.drivername == "postgres" else parsed.drivername
    if backend in _ASYNC_DRIVERS:
        parsed = parsed.set(drivername=_ASYNC_DRIVERS[backend])
    if parsed.drivername not in _SUPPORTED:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}; "
            "use sqlite+aiosqlite:///path/to/bot.db or postgresql+asyncpg://user@host/db"
        )
    return parsed


def create_engine(url: str | URL) -> AsyncEngine:
    """Create the async engine for a SQLite (aiosqlite) or PostgreSQL (asyncpg) URL."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _create_sqlite_engine(parsed)
    return create_async_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=POSTGRES_POOL_SIZE,
        max_overflow=POSTGRES_MAX_OVERFLOW,
        pool_recycle=POSTGRES_POOL_RECYCLE_S,
    )


def create_read_engine(url: str | URL) -> AsyncEngine | None:
    """An engine for reads that write nothing, or None where the main one serves.

    A SQLite file's main engine has one connection, and each of its transactions takes the
    write lock (see `_create_sqlite_engine`), so its transactions run one after another. Reads
    need neither: here READ_POOL_SIZE read-only connections run them side by side, in deferred
    transactions that never take the write lock (with WAL, readers and the writer do not wait
    for each other, and a reader sees everything committed before it began). The history of a
    known chat, the users' languages, the usage reports and the budget checks read here, so a
    burst of messages or a long report never queues behind the writes. PostgreSQL pools many
    connections itself, and an in-memory database cannot be shared between connections, so
    both use the main engine.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or _in_memory(parsed):
        return None
    engine = _sqlite_file_engine(parsed, pool_size=READ_POOL_SIZE)
    event.listen(engine.sync_engine, "connect", _on_read_connect)
    event.listen(engine.sync_engine, "begin", _on_read_begin)
    return engine


def _in_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file:")


def _create_sqlite_engine(url: URL) -> AsyncEngine:
    if _in_memory(url):
        engine = _sqlite_async_engine(url)
    else:
        Path(url.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
        # One connection. SQLite lets one writer in at a time, and every transaction here
        # starts with BEGIN IMMEDIATE, so more connections would not add throughput: they would
        # queue inside SQLite's busy handler, which polls with sleeps and leaves the database
        # idle between holders. Waiting in the pool's queue instead is first-come first-served
        # and hands the connection over at once.
        engine = _sqlite_file_engine(url, pool_size=1)
    # Transaction control follows SQLAlchemy's recipe for SQLite: the driver's own implicit
    # BEGIN handling is switched off and every transaction starts with BEGIN IMMEDIATE. A
    # deferred transaction that reads and later writes fails at once with "database is locked"
    # when another connection wrote in between; taking the write lock up front makes writers
    # queue on busy_timeout instead, and makes SAVEPOINT and DDL properly transactional.
    event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
    return engine


def _sqlite_file_engine(url: URL, *, pool_size: int) -> AsyncEngine:
    # aiosqlite runs every statement on a thread of the connection's own, so a statement that
    # waits for another process's write lock (a backup, the sqlite3 shell) waits there, up to
    # busy_timeout, while the event loop goes on streaming answers.
    return _sqlite_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_timeout=SQLITE_POOL_TIMEOUT_S
    )


def _sqlite_async_engine(url: URL, **pool: Any) -> AsyncEngine:
    """Every SQLite engine: aiosqlite, and the pool's reset on return done by `_on_sqlite_reset`.

    Each driver call is a round trip to the connection's thread and back through the event
    loop, which is most of what a transaction costs (about 60 µs of CPU a trip). So BEGIN takes
    one trip instead of three (see `_begin`), and a connection going back to the pool is rolled
    back only when it is still inside a transaction, where the pool's default would roll back
    every time, even after a COMMIT.
    """
    engine = create_async_engine(url, pool_reset_on_return=None, **pool)
    event.listen(engine.sync_engine, "reset", _on_sqlite_reset)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    _pragmas(dbapi_connection, SQLITE_PRAGMAS)


def _on_read_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    _pragmas(dbapi_connection, READ_PRAGMAS)


def _pragmas(dbapi_connection: Any, pragmas: Sequence[str]) -> None:
    # No implicit BEGIN from the driver: transactions are begun by the "begin" listeners.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in pragmas:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    _begin(connection, "BEGIN IMMEDIATE")


def _on_read_begin(connection: Connection) -> None:
    # Deferred: a read transaction sees one snapshot and never holds up the writer.
    _begin(connection, "BEGIN")


def _begin(connection: Connection, statement: str) -> None:
    """Run `statement` in one round trip to the driver's thread.

    Through SQLAlchemy's cursor, a statement is three trips (open a cursor, execute, close
    it). aiosqlite's `execute_fetchall` opens, runs and drops its cursor in one call on the
    driver's thread. `run_async` is SQLAlchemy's documented way to await the asyncio driver
    from an event hook.
    """
    adapted = connection.connection.dbapi_connection
    assert isinstance(adapted, AdaptedConnection)
    adapted.run_async(lambda driver: driver.execute_fetchall(statement))


def _on_sqlite_reset(
    dbapi_connection: Any, connection_record: ConnectionPoolEntry, reset_state: PoolResetState
) -> None:
    """Reset a connection coming back to the pool: roll back what its user left open.

    The engines take `pool_reset_on_return=None` and this hook instead (SQLAlchemy's recipe
    for a custom reset): the pool's default rolls back on every return, a round trip even after
    COMMIT. The driver's `in_transaction` is SQLite's own flag, read without a trip. A
    connection the pool is discarding, or one it may not await here, needs no rollback.
    """
    if reset_state.terminate_only or not reset_state.asyncio_safe:
        return
    if dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Create the session factory; loaded values stay usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    """Build the Alembic configuration for the migrations shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def migrate(engine: AsyncEngine, *, revision: str = "head") -> None:
    """Upgrade the database schema to `revision` (the newest by default); a no-op when current.

    The connection is handed to Alembic without an open transaction: the migration environment
    disables SQLite's foreign keys first (only possible outside a transaction) and then runs
    all pending migrations in a single transaction.
    """
    config = alembic_config()
    async with engine.connect() as connection:
        await connection.run_sync(_upgrade, config, revision)


def _upgrade(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
