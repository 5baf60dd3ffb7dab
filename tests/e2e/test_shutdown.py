"""End-to-end: SIGTERM with answers streaming and messages queued loses none of them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from pathlib import Path
from typing import Any

from tests.e2e.test_process import API_KEY, TOKEN, run_with_fakes
from tests.fakes.openai import FakeLLM, Reply, Stream
from tests.fakes.telegram import FakeTelegram

CHATS = [201, 202, 203, 204, 205]
PER_CHAT = 4
# Each answer streams for about 3 s, so at SIGTERM every chat has one answer in flight and
# three messages waiting behind it (the bot answers one message of a chat at a time).
CHUNKS = 15
DELAY = 0.2
ANSWER = re.compile(r"A\[(c\d+m\d+)\]")


def slow_echo(body: dict[str, Any]) -> Reply:
    """An answer naming the user message it answers, streamed slowly."""
    question = ""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            question = message["content"]
            break
    found = re.search(r"c\d+m\d+", question)
    key = found.group(0) if found else "?"
    return Stream([f"A[{key}] "] + ["word "] * CHUNKS, delay=DELAY)


def answers(tg: FakeTelegram) -> dict[str, int]:
    """How many of the bot's messages answer each user message."""
    counts: dict[str, int] = {}
    for chat_id in CHATS:
        for message in tg.live_messages(chat_id):
            found = ANSWER.match(message.text)
            if found:
                counts[found.group(1)] = counts.get(found.group(1), 0) + 1
    return counts


async def stop(proc: asyncio.subprocess.Process) -> tuple[float, str]:
    """SIGTERM the bot; seconds until it exited, and its log."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return time.monotonic() - started, err.decode()


async def test_sigterm_with_queued_messages_loses_none_and_answers_each_once(
    tmp_path: Path,
) -> None:
    expected = {f"c{chat_id}m{i}" for chat_id in CHATS for i in range(PER_CHAT)}
    async with FakeTelegram(token=TOKEN) as tg, FakeLLM(api_key=API_KEY) as llm:
        llm.set_default(slow_echo)
        proc = await run_with_fakes(tmp_path, tg, llm)
        try:
            await tg.wait_for(lambda t: bool(t.calls_to("getUpdates")), timeout=60)
            for i in range(PER_CHAT):
                for chat_id in CHATS:
                    tg.user_message(chat_id=chat_id, user_id=chat_id, text=f"c{chat_id}m{i}")
            # Every chat's first answer is streaming; the other fifteen messages wait.
            await tg.wait_for(lambda t: all(t.messages(c) for c in CHATS), timeout=20)
            took, log = await stop(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.returncode == 0, log
        assert took < 10, f"shutdown took {took:.1f} s"
        first_run = answers(tg)

        proc = await run_with_fakes(tmp_path, tg, llm)
        try:
            # On timeout the counts below say which messages went unanswered.
            with contextlib.suppress(AssertionError):
                await tg.wait_for(lambda t: set(answers(t)) >= expected, timeout=40)
            # Room for a duplicate answer to show up, if one were coming.
            await asyncio.sleep(1.5)
            _, log = await stop(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.returncode == 0, log
        counts = answers(tg)
        missing = sorted(expected - set(counts))
        twice = sorted(key for key, n in counts.items() if n > 1)
        assert not missing and not twice, (
            f"{len(missing)} of 20 never answered: {missing}; answered twice: {twice}; "
            f"answered before SIGTERM took effect: {len(first_run)}"
        )
        assert "Traceback" not in log
