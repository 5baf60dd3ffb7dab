"""Benchmark: many chats at once on one polling process (SQLite) and on 1, 2 and 3 webhook
replicas sharing PostgreSQL and Redis behind a round-robin balancer.

Every configuration gets fresh fakes, a fresh database (a new PostgreSQL database for the
replicas, dropped afterwards) and its own Redis key prefix. All chats ask at once; the figures
are taken when every answer is complete:

- answers per second: chats / (last final text - first question);
- CPU per answer: the CPU time of every bot process together, divided by the answers;
- Bot API calls per answer, and 429s (the fake Bot API's flood control is on: 30 calls a
  second for the bot, one message a second per private chat).

It only measures and prints. Usage:

    .venv/bin/python bench/replicas.py                      # 300 chats, each configuration once
    .venv/bin/python bench/replicas.py --chats 100 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bot`, `bench` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    API_KEY,
    BOT_USERNAME,
    TOKEN,
    BotProcess,
    chunked,
    plain_text,
    scratch_dir,
)
from tests.e2e.test_replicas import Balancer  # noqa: E402
from tests.e2e.test_webhook import free_port  # noqa: E402
from tests.fakes.openai import FakeLLM, Stream  # noqa: E402
from tests.fakes.telegram import FakeTelegram  # noqa: E402

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "bench-secret"


@dataclass
class Result:
    """One configuration's figures."""

    setup: str
    chats: int
    complete: int
    wall: float
    answers_per_second: float
    cpu_ms_per_answer: float
    calls_per_answer: float
    count_429: int


async def database() -> tuple[str, str]:
    """A fresh PostgreSQL database: its name and its URL for the bot."""
    name = f"bot_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(POSTGRES, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


async def drop(name: str) -> None:
    admin = await asyncpg.connect(POSTGRES, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def run(setup: str, replicas: int, args: argparse.Namespace, workdir: Path) -> Result:
    """All chats ask at once against `replicas` webhook processes (0: one polling process)."""
    answer = plain_text(args.answer_chars, seed=7)
    pieces = chunked(answer, args.chunk_chars)
    tg = FakeTelegram(token=TOKEN, bot_username=BOT_USERNAME)
    llm = FakeLLM(api_key=API_KEY)
    await tg.start()
    await llm.start()
    llm.set_default(lambda body: Stream(pieces, delay=args.stream_seconds / len(pieces)))
    bots: list[BotProcess] = []
    balancer = None
    db_name = None
    try:
        if replicas == 0:
            db_path = scratch_dir(workdir / setup) / "bot.db"
            bots.append(
                await BotProcess.start(tg=tg, llm=llm, workdir=workdir / setup, db_path=db_path)
            )
        else:
            db_name, db_url = await database()
            ports = [free_port() for _ in range(replicas)]
            balancer = Balancer([f"http://127.0.0.1:{port}/tg/hook" for port in ports])
            await balancer.start()
            prefix = f"bench-{secrets.token_hex(4)}"
            for number, port in enumerate(ports):
                home = scratch_dir(workdir / f"{setup}-{number}")
                env = {
                    "DATABASE_URL": db_url,
                    "BOT_MODE": "webhook",
                    "WEBHOOK_URL": balancer.url,
                    "WEBHOOK_SECRET": SECRET,
                    "WEBHOOK_LISTEN": f"127.0.0.1:{port}",
                    "WEBHOOK_PATH": "/tg/hook",
                    "REDIS_URL": REDIS_URL,
                    "REDIS_PREFIX": prefix,
                }
                bots.append(
                    await BotProcess.start(
                        tg=tg,
                        llm=llm,
                        workdir=home,
                        db_path=home / "unused.db",
                        extra_env=env,
                        ready_method="setWebhook",
                    )
                )
        ids = [200_000 + i for i in range(args.chats)]
        for chat_id in ids:
            tg.register_chat(chat_id)
        calls_start, flood_start = len(tg.calls), tg.flood.count_429
        cpu_start = sum(bot.cpu_seconds() for bot in bots)
        t0 = time.monotonic()
        for chat_id in ids:
            tg.user_message(chat_id=chat_id, text=f"question for {chat_id}")
        pending = set(ids)
        deadline = t0 + 120 + args.chats * 0.5
        last_done = t0
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            for chat_id in list(pending):
                live = tg.live_messages(chat_id)
                if len(live) == 1 and live[0].text == answer:
                    pending.discard(chat_id)
                    last_done = time.monotonic()
        await asyncio.sleep(0.5)
        cpu = sum(bot.cpu_seconds() for bot in bots) - cpu_start
        wanted = set(ids)
        calls = sum(1 for call in tg.calls[calls_start:] if call.chat_id in wanted)
        complete = args.chats - len(pending)
        wall = last_done - t0
        return Result(
            setup=setup,
            chats=args.chats,
            complete=complete,
            wall=wall,
            answers_per_second=complete / wall if wall > 0 else 0.0,
            cpu_ms_per_answer=1000 * cpu / max(1, complete),
            calls_per_answer=calls / max(1, complete),
            count_429=tg.flood.count_429 - flood_start,
        )
    finally:
        for bot in bots:
            await bot.stop()
        if balancer is not None:
            await balancer.stop()
        await llm.stop()
        await tg.stop()
        if db_name is not None:
            await drop(db_name)


def table(results: list[Result]) -> str:
    lines = [
        "| setup | answers complete | answers/s | CPU per answer | Bot API calls per answer "
        "| 429s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.setup} | {r.complete}/{r.chats} | {r.answers_per_second:.1f} "
            f"| {r.cpu_ms_per_answer:.1f} ms | {r.calls_per_answer:.1f} | {r.count_429} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    setups = [("polling, SQLite", 0)] + [
        (f"webhook ×{n}, PostgreSQL + Redis", n) for n in args.replicas
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as scratch:
        for setup, replicas in setups:
            print(f"… {setup}", file=sys.stderr, flush=True)
            results.append(await run(setup, replicas, args, Path(scratch)))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=300)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--answer-chars", type=int, default=600)
    parser.add_argument("--chunk-chars", type=int, default=20)
    parser.add_argument("--stream-seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
