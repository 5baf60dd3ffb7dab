"""Copy a SQLite database's data into PostgreSQL, for owners who outgrow one machine.

    python -m bot.db.copy --from sqlite:///data/bot.db --to postgresql://user@host/db

`--from` takes a SQLite URL or a plain file path, `--to` a PostgreSQL URL (`postgresql://`,
`postgres://` or `postgresql+asyncpg://`), `--batch` the rows per insert (default 1000). Stop
the bot first: rows it writes to the SQLite file after the copy has begun are not copied.

What happens, in order:

1. Both databases are migrated to the newest schema, so the source may come from an older
   version of the bot (its file is upgraded in place, as the bot itself would at its next start;
   keep a backup if an older version must still open it) and the target may be empty.
2. In one transaction on the target, its tables are locked against other writers and checked:
   if it already holds any chats, users, turns or usage records, the copy is refused (exit code
   2) and nothing is written. Data is never merged.
3. Chats, users, turns, kept pictures (`turn_images`) and usage records are copied in that
   (foreign-key) order with their primary keys, streamed from one consistent read of the SQLite
   file in batches and inserted in batches (pictures 10 at a time, whatever `--batch` says).
4. The id sequences of `turns` and `usage_records` are moved past the highest copied id, so rows
   the bot adds later get fresh ids; then the transaction commits.

Not copied: the `inbox` of Telegram updates fetched and not yet handled, and the
`handled_updates` of webhook mode. They belong to the process that fetched them; updates
Telegram has not delivered yet go to the bot once it runs on PostgreSQL.

Output: one line per table with the rows copied and a final line; never any message content.
Exit codes: 0 copied; 2 usage or configuration error, or a target that already holds data (one
line on stderr); 1 the copy failed (one line on stderr). A failure rolls the transaction back,
so the target holds none of the data (its schema stays migrated).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

from sqlalchemy import Table, insert, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.db.engine import create_engine, create_read_engine, migrate, normalize_url
from bot.db.models import Base

DEFAULT_BATCH = 1000

# Every table whose rows are copied, parents before the tables referring to them.
COPIED_TABLES: tuple[str, ...] = ("chats", "users", "turns", "turn_images", "usage_records")
# Tables the target must not hold rows in (turn_images cannot without turns).
GUARDED_TABLES: tuple[str, ...] = ("chats", "users", "turns", "usage_records")
# Tables whose `id` is drawn from a sequence on PostgreSQL.
SEQUENCED_TABLES: tuple[str, ...] = ("turns", "usage_records")
NOT_COPIED = "inbox, handled_updates (pending updates belong to the old process)"
# Pictures are up to VISION_MAX_BYTES each (5 MB by default, at most 20 MB): fewer per insert,
# so that a batch stays within tens of megabytes of memory.
MAX_BATCH = {"turn_images": 10}

SOURCE_HINT = "use sqlite:///path/to/bot.db or a file path"
TARGET_HINT = "use postgresql://user@host/db"


class UsageError(Exception):
    """A wrong argument or setting, or a target that must not be written to: exit code 2."""


@dataclass(frozen=True, slots=True)
class Options:
    """What to copy where."""

    source: URL
    target: URL
    batch: int


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports errors as one UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m bot.db.copy",
        description="Copy the bot's SQLite database into an empty PostgreSQL database.",
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SQLITE",
        help="SQLite URL or file path (sqlite:///data/bot.db or data/bot.db)",
    )
    parser.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="POSTGRESQL",
        help="PostgreSQL URL of an empty database (postgresql://user@host/db)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        metavar="ROWS",
        help=f"rows per insert (default {DEFAULT_BATCH})",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> Options:
    """Read and check the command line; raises UsageError."""
    args = _parser().parse_args(argv)
    if args.batch < 1:
        raise UsageError("--batch must be at least 1")
    return Options(
        source=source_url(args.source), target=target_url(args.target), batch=args.batch
    )


def source_url(value: str) -> URL:
    """The async URL of an existing SQLite file, from a URL or a plain path."""
    if "://" in value:
        url = _parse_url("--from", value, SOURCE_HINT)
        if url.get_backend_name() != "sqlite":
            raise UsageError(f"--from must be a SQLite database; {SOURCE_HINT}")
    else:
        url = URL.create("sqlite+aiosqlite", database=str(Path(value).expanduser()))
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise UsageError(f"--from names no database file; {SOURCE_HINT}")
    if not Path(database).is_file():
        raise UsageError(f"--from: no such file: {database}")
    return url


def target_url(value: str) -> URL:
    """The async URL of a PostgreSQL database."""
    url = _parse_url("--to", value, TARGET_HINT)
    if url.get_backend_name() != "postgresql":
        raise UsageError(f"--to must be a PostgreSQL database; {TARGET_HINT}")
    if not url.database:
        raise UsageError(f"--to names no database; {TARGET_HINT}")
    return url


def _parse_url(option: str, value: str, hint: str) -> URL:
    try:
        return normalize_url(value.strip())
    except (ArgumentError, ValueError):
        raise UsageError(f"{option} is not a supported database URL; {hint}") from None


async def copy_database(options: Options) -> dict[str, int]:
    """Migrate both databases and copy every table; returns the rows copied per table."""
    source = create_engine(options.source)
    target = create_engine(options.target)
    try:
        await migrate(source)
        await migrate(target)
        # The writer's engine is no longer needed: reads go through a read-only connection.
        await source.dispose()
        reader = create_read_engine(options.source) or source
        try:
            return await _copy(reader, target, options.batch)
        finally:
            await reader.dispose()
    finally:
        await source.dispose()
        await target.dispose()


async def _copy(source: AsyncEngine, target: AsyncEngine, batch: int) -> dict[str, int]:
    """Copy all tables from one read transaction into one write transaction."""
    counts: dict[str, int] = {}
    async with source.connect() as reading, target.begin() as writing:
        await _lock_and_check_empty(writing)
        for name in COPIED_TABLES:
            size = min(batch, MAX_BATCH.get(name, batch))
            counts[name] = await _copy_table(reading, writing, _table(name), size)
        for name in SEQUENCED_TABLES:
            await _advance_sequence(writing, name)
    return counts


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


async def _lock_and_check_empty(target: AsyncConnection) -> None:
    """Keep other writers out until commit, and refuse a target that holds any data."""
    names = ", ".join(COPIED_TABLES)
    # SHARE ROW EXCLUSIVE conflicts with inserts and with itself: two copies run one after the
    # other, and the second finds the first one's rows.
    await target.exec_driver_sql(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE")
    filled = [name for name in GUARDED_TABLES if await _has_rows(target, name)]
    if filled:
        raise UsageError(
            f"the target database already holds {', '.join(filled)}; "
            "copy only into an empty database (nothing was changed)"
        )


async def _has_rows(connection: AsyncConnection, name: str) -> bool:
    table = _table(name)
    return bool(await connection.scalar(select(select(table).exists())))


async def _copy_table(
    source: AsyncConnection, target: AsyncConnection, table: Table, batch: int
) -> int:
    """Stream the table's rows in primary-key order and insert them in batches."""
    query = select(table).order_by(*table.primary_key.columns)
    result = await source.stream(query, execution_options={"yield_per": batch})
    copied = 0
    try:
        async for rows in result.partitions(batch):
            await target.execute(insert(table), [dict(row._mapping) for row in rows])
            copied += len(rows)
    finally:
        await result.close()
    return copied


async def _advance_sequence(target: AsyncConnection, name: str) -> None:
    """Make the next id drawn for the table the one after its highest id (1 when empty)."""
    sequence = await target.scalar(
        text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": name}
    )
    if sequence is None:
        raise RuntimeError(f"{name}.id has no sequence in the target database")
    await target.execute(
        text(f"SELECT setval(:sequence, COALESCE(max(id), 0) + 1, false) FROM {name}"),
        {"sequence": sequence},
    )


def describe_error(exc: BaseException) -> str:
    """One line naming what went wrong, without the SQL statement or its parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # The driver's own error (asyncpg's is the cause of SQLAlchemy's adapted one).
        exc = exc.orig.__cause__ or exc.orig
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def print_summary(counts: dict[str, int], options: Options, out: TextIO) -> None:
    """One line per table with its rows copied, and a final line; no content."""
    width = max(len(name) for name in counts)
    for name, count in counts.items():
        print(f"{name:<{width}}  {count} {_rows(count)} copied", file=out)
    total = sum(counts.values())
    target = options.target.set(drivername="postgresql").render_as_string(hide_password=True)
    print(
        f"Done: {total} {_rows(total)} copied from {options.source.database} to {target}; "
        f"not copied: {NOT_COPIED}.",
        file=out,
    )


def _rows(count: int) -> str:
    return "row" if count == 1 else "rows"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the copy described by the command line; returns the exit code."""
    try:
        options = parse_args(argv)
        counts = asyncio.run(copy_database(options))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print("interrupted (no rows were copied)", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"copy failed (no rows were copied): {describe_error(exc)}", file=sys.stderr)
        return 1
    print_summary(counts, options, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
