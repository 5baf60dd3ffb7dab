"""The container health check: fresh while the bot polls, stale once it stops."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from bot.health import healthy
from tests.e2e.conftest import BotHarness
from tests.e2e.test_webhook import free_port


def probe(path: Path | None, **env: str) -> int:
    """Run the image's HEALTHCHECK command, `python -m bot.health`."""
    environment = {k: v for k, v in os.environ.items() if k != "HEARTBEAT_FILE"}
    if path is not None:
        environment["HEARTBEAT_FILE"] = str(path)
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "bot.health"], env=environment, capture_output=True, check=False
    )
    return done.returncode


async def test_the_heartbeat_is_fresh_while_the_bot_polls_and_stale_after(
    harness: BotHarness, tmp_path: Path
) -> None:
    path = tmp_path / "heartbeat"
    await harness.start(heartbeat_file=str(path))
    for _ in range(100):
        if path.exists():
            break
        await asyncio.sleep(0.05)
    assert healthy(path)
    assert await asyncio.to_thread(probe, path) == 0
    await harness.stop()
    # A minute and more without a beat: the probe reports the bot unhealthy.
    assert not healthy(path, now=time.time() + 120)
    assert await asyncio.to_thread(probe, path, HEARTBEAT_MAX_AGE="0") == 1


def test_without_a_heartbeat_file_the_probe_fails(tmp_path: Path) -> None:
    assert probe(None) == 1
    assert probe(tmp_path / "never-written") == 1


async def test_in_webhook_mode_the_probe_also_asks_the_server(
    harness: BotHarness, tmp_path: Path
) -> None:
    path = tmp_path / "heartbeat"
    port = free_port()
    await harness.start(
        heartbeat_file=str(path),
        bot_mode="webhook",
        webhook_url=f"http://127.0.0.1:{port}/hook",
        webhook_secret="s3cret",
        webhook_listen=f"0.0.0.0:{port}",
    )
    for _ in range(100):
        if path.exists():
            break
        await asyncio.sleep(0.05)
    webhook = {"BOT_MODE": "webhook", "WEBHOOK_LISTEN": f"0.0.0.0:{port}"}
    assert await asyncio.to_thread(probe, path, **webhook) == 0
    # A fresh heartbeat but no server answering /healthz: unhealthy.
    elsewhere = {"BOT_MODE": "webhook", "WEBHOOK_LISTEN": f"127.0.0.1:{free_port()}"}
    assert await asyncio.to_thread(probe, path, **elsewhere) == 1
