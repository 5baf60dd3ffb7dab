"""Benchmark: how long /usage and the budget check take over a million usage records.

Fills a fresh database with usage records spread evenly over the last year (one INSERT ...
SELECT over a recursive CTE on SQLite, generate_series on PostgreSQL: a few seconds for a
million rows), then times what the bot does on `/usage` and before every request:

* the owner's report (today, this month, all time per model; top users and chats this month
  by tokens and by cost) through `UsageService.bot_report`;
* one user's report through `UsageService.user_report`;
* the budget check before a request, with per-user and whole-bot daily and monthly limits in
  tokens and cost (the most queries it ever runs), through `BudgetService.check`.

It prints the median and the slowest of several runs, and with `--explain` the query plan of
every statement they run. It only measures and prints; it never fails. Usage:

    .venv/bin/python bench/usage_report.py                      # 1,000,000 rows, SQLite
    .venv/bin/python bench/usage_report.py --rows 100000 --explain
    .venv/bin/python bench/usage_report.py --database-url postgresql://postgres@127.0.0.1/bench

A PostgreSQL database given with `--database-url` must be empty or disposable: its usage
records, users and chats are replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bot` importable
    sys.path.insert(0, str(ROOT))

from sqlalchemy import event, insert, text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from bot.db import Chat, User, create_engine, create_sessionmaker, migrate  # noqa: E402
from bot.db.engine import create_read_engine  # noqa: E402
from bot.pricing import Price, PriceList  # noqa: E402
from bot.services.usage import BudgetService, Limits, UsagePolicy, UsageService  # noqa: E402

MODELS = ("gpt-4o", "gpt-4o-mini", "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8", "dall-e-3")
GROUPS = 200
PRICES = PriceList(
    default=Price(prompt_per_million=0.00123, completion_per_million=0.00123),
    models={
        "gpt-4o": Price(prompt_per_million=2.5, completion_per_million=10.0),
        "gpt-4o-mini": Price(prompt_per_million=0.15, completion_per_million=0.6),
        "dall-e-3": Price(per_image=0.04),
    },
)
# Budgets set everywhere, so that the check runs every query it can.
LIMITS = Limits(daily_tokens=10**9, monthly_tokens=10**10, daily_cost=10**6, monthly_cost=10**7)

# Row n of n = 1..rows: a user, a chat (a third of requests in groups), a model (every fourth
# request an image), token counts, every tenth figure estimated, and a time spread evenly
# from now back over the given number of days. The same arithmetic on both databases.
_ROW = """
    1 + (n * 7919) % :users,
    CASE WHEN n % 3 = 0 THEN -(1000 + n % {groups}) ELSE 1 + (n * 7919) % :users END,
    CASE n % 4 WHEN 0 THEN '{m0}' WHEN 1 THEN '{m1}' WHEN 2 THEN '{m2}' ELSE '{m3}' END,
    CASE WHEN n % 4 = 3 THEN 'image' ELSE 'chat' END,
    CASE WHEN n % 4 = 3 THEN 0 ELSE 200 + (n * 37) % 3000 END,
    CASE WHEN n % 4 = 3 THEN 0 ELSE 50 + (n * 53) % 800 END,
    CASE WHEN n % 4 = 3 THEN 1 ELSE 0 END,
    {estimated},
    'ok',
    500 + n % 5000,
    {created_at}
"""
_COLUMNS = (
    "user_id, chat_id, model, kind, prompt_tokens, completion_tokens, images, estimated, "
    "status, latency_ms, created_at"
)
_FILL_SQLITE = f"""
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :rows)
INSERT INTO usage_records ({_COLUMNS})
SELECT {{row}} FROM seq
"""
_FILL_POSTGRES = f"""
INSERT INTO usage_records ({_COLUMNS})
SELECT {{row}} FROM generate_series(1::bigint, :rows) AS seq(n)
"""


async def fill(engine: AsyncEngine, *, rows: int, users: int, days: int) -> float:
    """Replace all usage records, users and chats with generated ones; returns seconds taken."""
    now = time.time()
    span = days * 86400
    names = {f"m{i}": model for i, model in enumerate(MODELS)}
    if engine.dialect.name == "sqlite":
        # Stored the way SQLAlchemy writes datetimes to SQLite, so that range filters compare
        # like with like.
        created = (
            "strftime('%Y-%m-%d %H:%M:%S', :now - (n * :span) / :rows, 'unixepoch') || '.000000'"
        )
        sql = _FILL_SQLITE.format(
            row=_ROW.format(groups=GROUPS, estimated="n % 10 = 0", created_at=created, **names)
        )
    else:
        created = "to_timestamp(:now - (n::float8 * :span) / :rows)"
        sql = _FILL_POSTGRES.format(
            row=_ROW.format(groups=GROUPS, estimated="n % 10 = 0", created_at=created, **names)
        )
    started = time.perf_counter()
    async with engine.begin() as conn:
        for table in ("usage_records", "users", "chats"):
            await conn.execute(text(f"DELETE FROM {table}"))
        await conn.execute(text(sql), {"rows": rows, "users": users, "now": now, "span": span})
        stamp = datetime.now(UTC)
        await conn.execute(
            insert(User),
            [
                {
                    "id": i,
                    "username": f"user{i}",
                    "full_name": f"User Number {i}",
                    "created_at": stamp,
                    "updated_at": stamp,
                }
                for i in range(1, users + 1)
            ],
        )
        await conn.execute(
            insert(Chat),
            [
                {
                    "id": -(1000 + g),
                    "type": "supergroup",
                    "title": f"Group {g}",
                    "created_at": stamp,
                    "updated_at": stamp,
                }
                for g in range(GROUPS)
            ],
        )
    return time.perf_counter() - started


async def timed(label: str, action: Callable[[], Awaitable[Any]], repeat: int) -> None:
    """Run `action` once (the first run fills caches), then `repeat` times; print the times."""
    started = time.perf_counter()
    await action()
    first = (time.perf_counter() - started) * 1000
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await action()
        times.append((time.perf_counter() - started) * 1000)
    print(
        f"{label:<36} first {first:7.1f} ms   then median {statistics.median(times):7.1f} ms, "
        f"max {max(times):7.1f} ms ({repeat} runs)"
    )


async def explain(engine: AsyncEngine, action: Callable[[], Awaitable[Any]]) -> None:
    """Print the plan of every statement `action` runs."""
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        await action()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    async with engine.connect() as conn:
        for statement, parameters in statements:
            print("\n" + " ".join(statement.split())[:300])
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            if engine.dialect.name == "sqlite":
                assert driver is not None
                cursor = await driver.execute(prefix + statement, parameters)
                for row in await cursor.fetchall():
                    print("   ", row[-1])
            else:
                assert driver is not None
                for row in await driver.fetch(prefix + statement, *parameters):
                    print("   ", row[0])


async def run(args: argparse.Namespace) -> None:
    """Fill the database, then time the report and the budget check."""
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'usage.db'}"
        engine = create_engine(url)
        report_engine: AsyncEngine | None = None
        try:
            await migrate(engine)
            seconds = await fill(engine, rows=args.rows, users=args.users, days=args.days)
            print(
                f"{engine.dialect.name}: inserted {args.rows:,} usage records "
                f"({args.users:,} users, {args.days} days) in {seconds:.1f} s"
            )
            if args.analyze:
                async with engine.begin() as conn:
                    await conn.execute(text("ANALYZE"))
                print("ran ANALYZE")
            # As in the bot: the sums run on the report engine where there is one.
            report_engine = create_read_engine(url)
            sessions = create_sessionmaker(report_engine or engine)
            policy = UsagePolicy(prices=PRICES, user_limits=LIMITS, bot_limits=LIMITS)
            usage = UsageService(sessions=sessions, policy=policy)
            budgets = BudgetService(sessions=sessions, policy=policy)
            heavy = 1  # every user has about rows / users records
            await timed("owner report (/usage, whole bot)", usage.bot_report, args.repeat)
            await timed(
                "user report (/usage, one user)",
                lambda: usage.user_report(user_id=heavy),
                args.repeat,
            )
            await timed(
                "budget check before a request",
                lambda: budgets.check(user_id=heavy),
                args.repeat,
            )
            if args.explain:
                explained = report_engine or engine
                await explain(explained, usage.bot_report)
                await explain(explained, lambda: usage.user_report(user_id=heavy))
                await explain(explained, lambda: budgets.check(user_id=heavy))
        finally:
            if report_engine is not None:
                await report_engine.dispose()
            await engine.dispose()


def main() -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="usage records to insert")
    parser.add_argument("--users", type=int, default=2_000, help="distinct users")
    parser.add_argument("--days", type=int, default=365, help="days the records span")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each action")
    parser.add_argument("--database-url", help="default: a temporary SQLite file")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    parser.add_argument("--analyze", action="store_true", help="run ANALYZE before timing")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
