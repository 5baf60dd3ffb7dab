"""Database engine, session factory and schema migration at start-up."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Applied to every new SQLite connection. busy_timeout comes first so that switching the journal
# mode of a fresh file waits for other connections instead of failing.
SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=10000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)

# The report connection only reads; it leaves the journal mode to the main connection.
REPORT_PRAGMAS = ("PRAGMA busy_timeout=10000", "PRAGMA query_only=ON")

# How long a transaction may wait for the SQLite connection before failing. Transactions are
# short (no network I/O inside), so even a thousand queued chats get their turn well within it.
SQLITE_POOL_TIMEOUT_S = 120.0

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


def create_report_engine(url: str | URL) -> AsyncEngine | None:
    """An engine for long read-only queries (usage sums), or None where the main one serves.

    On a SQLite file the main connection runs its statements on the event loop (see
    `_SQLiteConnection`), which suits the conversation's short indexed statements but not a
    sum over a month of usage records. Those run here: on a read-only connection of their own,
    on a worker thread, in deferred transactions that never take the write lock (with WAL,
    readers and the writer do not wait for each other). PostgreSQL's driver never blocks the
    loop, and an in-memory database cannot be shared between connections, so both use the
    main engine.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or _in_memory(parsed):
        return None
    engine = _sqlite_file_engine(parsed, threaded=True)
    event.listen(engine.sync_engine, "connect", _on_report_connect)
    event.listen(engine.sync_engine, "begin", _on_report_begin)
    return engine


def _in_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file:")


def _create_sqlite_engine(url: URL) -> AsyncEngine:
    if _in_memory(url):
        engine = create_async_engine(url)
    else:
        Path(url.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = _sqlite_file_engine(url, threaded=False)
    # Transaction control follows SQLAlchemy's recipe for SQLite: the driver's own implicit
    # BEGIN handling is switched off and every transaction starts with BEGIN IMMEDIATE. A
    # deferred transaction that reads and later writes fails at once with "database is locked"
    # when another connection wrote in between; taking the write lock up front makes writers
    # queue on busy_timeout instead, and makes SAVEPOINT and DDL properly transactional.
    event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    event.listen(engine.sync_engine, "begin", _on_sqlite_begin)
    return engine


def _sqlite_file_engine(url: URL, *, threaded: bool) -> AsyncEngine:
    async def connect() -> _SQLiteConnection:
        args, kwargs = engine.sync_engine.dialect.create_connect_args(url)
        return await _SQLiteConnection.open(*args, threaded=threaded, **kwargs)

    # One connection per engine. SQLite lets one writer in at a time, and every transaction of
    # the main engine starts with BEGIN IMMEDIATE, so more connections would not add throughput:
    # they would queue inside SQLite's busy handler, which polls with sleeps and leaves the
    # database idle between holders. Waiting in the pool's queue instead is first-come
    # first-served and hands the connection over at once.
    engine = create_async_engine(
        url,
        async_creator=connect,
        pool_size=1,
        max_overflow=0,
        pool_timeout=SQLITE_POOL_TIMEOUT_S,
    )
    return engine


def _on_sqlite_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    _pragmas(dbapi_connection, SQLITE_PRAGMAS)


def _on_report_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    _pragmas(dbapi_connection, REPORT_PRAGMAS)


def _pragmas(dbapi_connection: Any, pragmas: Sequence[str]) -> None:
    if dbapi_connection.isolation_level is not None:
        dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in pragmas:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _on_report_begin(connection: Connection) -> None:
    # Deferred: a read transaction sees one snapshot and never holds up the writer.
    connection.exec_driver_sql("BEGIN")


_T = TypeVar("_T")


class _SQLiteConnection:
    """A sqlite3 connection behind the asyncio API SQLAlchemy's aiosqlite dialect expects.

    It stands in for aiosqlite's connection (the dialect adapts either). aiosqlite hands every
    call to a thread of its own and back; each such hop costs 100-300 µs of CPU in thread
    wake-ups, while the indexed statements of a conversation take SQLite 10-50 µs. So by
    default a statement runs in place, on the event loop, with its rows fetched at once; a
    conversation's transaction then never waits for a thread. `threaded=True` keeps the hop,
    one per statement rather than aiosqlite's several, for the long read-only queries of
    `create_report_engine`.
    """

    def __init__(self, db: sqlite3.Connection, worker: ThreadPoolExecutor | None) -> None:
        self._db: sqlite3.Connection | None = db
        self._worker = worker

    @classmethod
    async def open(cls, *args: Any, threaded: bool, **kwargs: Any) -> _SQLiteConnection:
        """Connect; transactions are left to explicit BEGIN/COMMIT."""
        kwargs["isolation_level"] = None
        if not threaded:
            return cls(sqlite3.connect(*args, **kwargs), None)
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        try:
            db = await loop.run_in_executor(worker, lambda: sqlite3.connect(*args, **kwargs))
        except BaseException:
            worker.shutdown(wait=False)
            raise
        return cls(db, worker)

    @property
    def _connection(self) -> sqlite3.Connection | None:
        # SQLAlchemy's adapter skips commit and rollback once this is None (closed).
        return self._db

    @property
    def isolation_level(self) -> str | None:
        """Always None: autocommit mode, transactions are begun explicitly."""
        return None

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run `function(*args)` in place, or on the connection's thread if it has one."""
        if self._worker is None:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self._worker, function, *args)

    def cursor(self) -> _SQLiteCursor:
        """A cursor; it touches the database only when executing."""
        return _SQLiteCursor(self)

    async def commit(self) -> None:
        """Commit the current transaction."""
        if self._db is not None:
            await self.run(self._db.commit)

    async def rollback(self) -> None:
        """Roll back the current transaction."""
        if self._db is not None:
            await self.run(self._db.rollback)

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        """Register an SQL function (SQLAlchemy adds regexp and floor)."""
        db = self._db
        if db is not None:
            await self.run(lambda: db.create_function(*args, **kwargs))

    async def close(self) -> None:
        """Close the connection and end its thread."""
        db, self._db = self._db, None
        if db is not None:
            try:
                await self.run(db.close)
            finally:
                self._stop_worker()

    def stop(self) -> None:
        """Abandon the connection without waiting (SQLAlchemy's forced termination)."""
        self._db = None
        self._stop_worker()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False)


def _execute(
    db: sqlite3.Connection | None, operation: str, parameters: Any, many: bool
) -> tuple[Any, list[Any], int, int | None]:
    """Execute and fetch everything in one go."""
    if db is None:
        raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
    cursor = db.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class _SQLiteCursor:
    """The results of one statement, fetched with it; the DB-API cursor surface SQLAlchemy uses."""

    arraysize = 1

    def __init__(self, connection: _SQLiteConnection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def __aenter__(self) -> _SQLiteCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def execute(self, operation: str, parameters: Sequence[Any] = ()) -> _SQLiteCursor:
        """Execute one statement and keep its rows."""
        db = self._connection._connection
        result = await self._connection.run(_execute, db, operation, parameters, False)
        self.description, self._rows, self.rowcount, self.lastrowid = result
        return self

    async def executemany(self, operation: str, parameters: Any) -> _SQLiteCursor:
        """Execute one statement for each parameter set."""
        db = self._connection._connection
        result = await self._connection.run(_execute, db, operation, list(parameters), True)
        self.description, self._rows, self.rowcount, self.lastrowid = result
        return self

    async def fetchone(self) -> Any:
        """The next row, or None."""
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to `size` rows."""
        size = size or self.arraysize
        rows, self._rows = self._rows[:size], self._rows[size:]
        return rows

    async def fetchall(self) -> list[Any]:
        """The remaining rows."""
        rows, self._rows = self._rows, []
        return rows

    async def close(self) -> None:
        """Forget the rows; the database cursor was closed right after executing."""
        self._rows = []


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
