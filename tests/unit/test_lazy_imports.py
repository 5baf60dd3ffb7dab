"""What a default bot (polling, SQLite, no Redis) does not load: memory it would carry idle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

# Loaded only when used: with REDIS_URL, in webhook mode, at the first PDF, at the first file
# not in UTF-8 (together some 13 MB of resident memory; see bench/memory.py).
OPTIONAL = ("redis", "aiohttp.web", "pypdf", "charset_normalizer", "asyncpg")


def loaded_after(statement: str) -> list[str]:
    probe = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_a_default_bot_does_not_load_the_optional_libraries() -> None:
    modules = set(loaded_after("import bot.app, bot.__main__"))
    assert [name for name in OPTIONAL if name in modules] == []


def test_each_optional_part_still_loads_where_it_is_used() -> None:
    modules = set(
        loaded_after("import bot.replicas, bot.telegram.webhook, bot.services.pdf; import asyncpg")
    )
    assert {"redis", "aiohttp.web", "pypdf", "asyncpg"} <= modules
