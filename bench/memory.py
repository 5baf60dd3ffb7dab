"""Where the bot's resident memory goes at start, library by library.

A fresh interpreter loads what the bot loads, one part after another, in the bot's own order,
and reads its resident set size (RSS) and the Python heap traced by tracemalloc after each
step. A library's share is what its step added, so what several share is counted where it
first came in. Run:

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each step runs after the previous ones, in the same process.
STEPS: list[tuple[str, str]] = [
    ("Python itself", "pass"),
    ("pydantic, pydantic-settings", "import pydantic, pydantic_settings"),
    ("aiogram, its models deferred (bot/telegram/lazy_types.py)", "import bot, aiogram"),
    (
        "aiogram: the models the bot uses, built",
        "from bot.telegram.lazy_types import build_hot_models; build_hot_models()",
    ),
    ("SQLAlchemy with aiosqlite", "import sqlalchemy.ext.asyncio, aiosqlite"),
    ("Alembic and the bot's models (bot.db)", "import alembic.command, bot.db"),
    ("httpx, aiohttp, orjson (bot.llm)", "import httpx, aiohttp, bot.llm.client"),
    ("Babel and the compiled catalogues (bot.i18n)", "import bot.i18n; bot.i18n.catalogues()"),
    ("markdown-it-py and the renderer", "import bot.telegram.render"),
    (
        "tiktoken with cl100k_base loaded",
        "from bot.services.tokens import TokenCounter; TokenCounter().count('warm up')",
    ),
    ("the rest of the bot (bot.app)", "import bot.app"),
    ("asyncpg (loaded only for a PostgreSQL DATABASE_URL)", "import asyncpg"),
    ("redis-py and the shared parts (loaded only with REDIS_URL)", "import bot.replicas"),
    ("aiohttp's server (loaded only in webhook mode)", "import bot.telegram.webhook, aiohttp.web"),
    ("pypdf (loaded at the first PDF)", "import bot.services.pdf"),
    ("charset_normalizer (loaded at the first file not in UTF-8)", "import charset_normalizer"),
]

# Run twice: tracemalloc's own bookkeeping inflates RSS, so RSS is read in a run without it.
PROBE = """
import gc, json, sys, tracemalloc
if sys.argv[2] == "traced":
    tracemalloc.start()

def rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

rows = []
for name, code in json.loads(sys.argv[1]):
    exec(code, {})
    gc.collect()
    rows.append([name, rss_kb(), tracemalloc.get_traced_memory()[0] // 1024])
print(json.dumps(rows))
"""


def _probe(mode: str) -> list[tuple[str, int, int]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(STEPS), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return [(name, rss, traced) for name, rss, traced in json.loads(done.stdout)]


def measure() -> list[tuple[str, int, int]]:
    """Cumulative (step, RSS KiB, traced KiB) after each step, in fresh interpreters."""
    plain = _probe("plain")
    traced = _probe("traced")
    return [(name, rss, heap) for (name, rss, _), (_, _, heap) in zip(plain, traced, strict=True)]


def report(rows: list[tuple[str, int, int]]) -> str:
    """A Markdown table of what each step added."""
    lines = [
        "| step | RSS added MB | Python heap added MB | RSS total MB |",
        "| --- | ---: | ---: | ---: |",
    ]
    previous_rss = previous_traced = 0
    for name, rss, traced in rows:
        lines.append(
            f"| {name} | {(rss - previous_rss) / 1024:.1f} | "
            f"{(traced - previous_traced) / 1024:.1f} | {rss / 1024:.1f} |"
        )
        previous_rss, previous_traced = rss, traced
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(measure()))
