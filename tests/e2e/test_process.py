"""End-to-end: `python -m bot` as a real process — configuration errors and SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.fakes.openai import FakeLLM, Hang, Stream
from tests.fakes.telegram import FakeTelegram

ROOT = Path(__file__).parents[2]
TOKEN = "123456:TEST-TOKEN"
API_KEY = "sk-secret-key-123"


def bot_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"BOT_TOKEN", "LLM_API_KEY"}}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


async def start_bot(tmp_path: Path, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=tmp_path,
        env=bot_env(tmp_path, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_missing_setting_stops_with_one_clear_line(tmp_path: Path) -> None:
    proc = await start_bot(tmp_path)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert lines == ["Configuration error: BOT_TOKEN: is required but not set"]


async def run_with_fakes(
    tmp_path: Path, tg: FakeTelegram, llm: FakeLLM, **env: str
) -> asyncio.subprocess.Process:
    return await start_bot(
        tmp_path,
        BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL=tg.url,
        LLM_BASE_URL=llm.base_url,
        LLM_API_KEY=API_KEY,
        LLM_MODEL="gpt-4o-mini",
        **env,
    )


async def test_sigterm_lets_the_answer_in_progress_finish(tmp_path: Path) -> None:
    async with FakeTelegram(token=TOKEN) as tg, FakeLLM(api_key=API_KEY) as llm:
        proc = await run_with_fakes(tmp_path, tg, llm, SHUTDOWN_GRACE="20")
        try:
            await tg.wait_for(lambda t: bool(t.calls_to("getUpdates")), timeout=60)
            words = [f"w{i} " for i in range(20)]
            llm.enqueue(Stream(words, delay=0.1))
            tg.user_message(chat_id=5, text="long answer please")
            await tg.wait_for(lambda t: bool(t.messages(5)), timeout=20)
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.returncode == 0
        assert [m.text for m in tg.messages(5)] == ["".join(words).strip()]
        log = err.decode()
        assert "answer chat=5 model=gpt-4o-mini" in log
        assert "status=ok" in log
        assert TOKEN.split(":")[1] not in log and API_KEY not in log
        assert "long answer please" not in log  # no message contents at INFO
        assert "alembic" not in log  # start-up is quiet: no migration tool chatter
        assert (tmp_path / "data" / "bot.db").exists()


async def test_sigterm_past_the_grace_period_marks_the_answer_interrupted(
    tmp_path: Path,
) -> None:
    async with FakeTelegram(token=TOKEN) as tg, FakeLLM(api_key=API_KEY) as llm:
        proc = await run_with_fakes(tmp_path, tg, llm, SHUTDOWN_GRACE="0.5")
        try:
            await tg.wait_for(lambda t: bool(t.calls_to("getUpdates")), timeout=60)
            llm.enqueue(Hang(after_chunks=["Partial ", "answer"]))
            tg.user_message(chat_id=6, text="question")
            await tg.wait_for(
                lambda t: (
                    (draft := t.visible_draft(6)) is not None and draft.text == "Partial answer"
                )
            )
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.returncode == 0
        texts = [m.text for m in tg.messages(6)]
        assert texts[0] == "Partial answer"
        assert "interrupted" in texts[1] and "restarted" in texts[1]
        assert "status=interrupted" in err.decode()


async def test_unreachable_telegram_is_retried_and_sigterm_still_stops(tmp_path: Path) -> None:
    proc = await start_bot(
        tmp_path,
        BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL="http://127.0.0.1:9",  # nothing listens there
        LLM_API_KEY=API_KEY,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=60)
        while b"Telegram unreachable" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err.decode()


async def test_sigterm_during_start_up_stops_cleanly(tmp_path: Path) -> None:
    database = tmp_path / "data" / "bot.db"
    async with FakeTelegram(token=TOKEN) as tg, FakeLLM(api_key=API_KEY) as llm:
        # While migrating (the database file appears), then while reaching Telegram (getMe).
        # (Not earlier: bot/__init__.py imports aiogram, 1.5 s, before bot.__main__ runs.)
        def migrating(_: FakeTelegram) -> bool:
            return database.exists()

        def reaching_telegram(t: FakeTelegram) -> bool:
            return bool(t.calls_to("getMe"))

        for reached in (migrating, reaching_telegram):
            database.unlink(missing_ok=True)
            tg.calls.clear()
            proc = await run_with_fakes(tmp_path, tg, llm)
            try:
                await tg.wait_for(reached, timeout=60)
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
            finally:
                if proc.returncode is None:
                    proc.kill()
            assert proc.returncode == 0, err.decode()
            assert "Traceback" not in err.decode()
            if reached is migrating:
                assert not tg.calls_to("getUpdates")
