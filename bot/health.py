"""Liveness for container health checks: the running bot touches a file, a probe reads its age.

`python -m bot.health` exits 0 while the file named by HEARTBEAT_FILE was touched within the
last HEARTBEAT_MAX_AGE seconds (default 60), 1 otherwise. The bot touches it every
HEARTBEAT_INTERVAL seconds from its event loop, so a stuck loop shows as unhealthy too. In
webhook mode (BOT_MODE=webhook) the bot's own GET /healthz on WEBHOOK_LISTEN must answer 200
as well.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request
from pathlib import Path

HEARTBEAT_INTERVAL = 15.0
HEARTBEAT_MAX_AGE = 60.0


async def heartbeat(path: Path, *, interval: float = HEARTBEAT_INTERVAL) -> None:
    """Touch `path` now and every `interval` seconds until cancelled."""
    while True:
        # The write runs on a worker thread: a slow disk must not hold up the event loop.
        await asyncio.to_thread(path.touch)
        await asyncio.sleep(interval)


def healthy(path: Path, *, max_age: float = HEARTBEAT_MAX_AGE, now: float | None = None) -> bool:
    """True if `path` was touched within the last `max_age` seconds."""
    try:
        touched = path.stat().st_mtime
    except OSError:
        return False
    return (now if now is not None else time.time()) - touched <= max_age


def serving(listen: str, *, timeout: float = 5.0) -> bool:
    """True if the webhook server at `listen` (host:port) answers GET /healthz with 200."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # listening everywhere: ask it on this machine
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError):
        return False


def main() -> int:
    """The health check: 0 if the bot's heartbeat is fresh (and, in webhook mode, its server
    answers), 1 if not (or no heartbeat is configured)."""
    name = os.environ.get("HEARTBEAT_FILE", "")
    if not name:
        print("HEARTBEAT_FILE is not set", file=sys.stderr)
        return 1
    max_age = float(os.environ.get("HEARTBEAT_MAX_AGE", HEARTBEAT_MAX_AGE))
    if not healthy(Path(name), max_age=max_age):
        return 1
    if os.environ.get("BOT_MODE", "").strip().lower() == "webhook":
        return 0 if serving(os.environ.get("WEBHOOK_LISTEN", "0.0.0.0:8080")) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
