"""End-to-end harness: the bot's composition root against fake Telegram and backend servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.app import App, build_app, serve
from bot.config import Settings
from tests.fakes.openai import FakeLLM
from tests.fakes.telegram import FakeTelegram, SentMessage

TOKEN = "123456:TEST-TOKEN"


@dataclass
class BotHarness:
    """Starts and stops the real bot (in-process) pointed at the fakes."""

    tg: FakeTelegram
    llm: FakeLLM
    db_url: str
    defaults: dict[str, Any] = field(default_factory=dict)
    app: App | None = None
    task: asyncio.Task[None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def settings(self, **overrides: Any) -> Settings:
        """Settings for the bot under test; never reads a developer's .env."""
        values: dict[str, Any] = {
            "bot_token": TOKEN,
            "telegram_api_url": self.tg.url,
            "llm_base_url": self.llm.base_url,
            "llm_api_key": "sk-test",
            "llm_model": "gpt-4o-mini",
            "database_url": self.db_url,
            "llm_max_retries": 1,
            "shutdown_grace": 5,
            **self.defaults,
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    async def start(self, prepare: Callable[[App], None] | None = None, **overrides: Any) -> App:
        """Build the app from settings (then let `prepare` adjust it) and start polling."""
        assert self.task is None, "already running"
        self.app = await build_app(self.settings(**overrides))
        if prepare is not None:
            prepare(self.app)
        webhook = self.app.settings.bot_mode == "webhook"
        method = "setWebhook" if webhook else "getUpdates"
        polled = len(self.tg.calls_to(method))
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(
            serve(self.app, handle_signals=False, polling_timeout=2, stop=self.stopping)
        )
        # Polled (or the webhook set) by this run, not an earlier one: stopping before polling
        # starts is refused.
        await self.tg.wait_for(lambda t: len(t.calls_to(method)) > polled, timeout=10)
        return self.app

    async def stop(self) -> None:
        """Stop polling the way SIGTERM does and wait for the clean shutdown."""
        if self.task is None or self.app is None:
            return
        self.stopping.set()
        await asyncio.wait_for(self.task, timeout=30)
        self.task = None
        self.app = None

    async def restart(self, **overrides: Any) -> App:
        """Stop and start again with the same database."""
        await self.stop()
        return await self.start(**overrides)

    # ---- observing ---------------------------------------------------------------------------

    def texts(self, chat_id: int) -> list[str]:
        """Visible texts of the bot's live messages in a chat, in order."""
        return [m.text for m in self.tg.messages(chat_id) if not m.deleted]

    async def wait_text(self, chat_id: int, text: str, within: float = 10) -> SentMessage:
        """Wait until a bot message in the chat shows exactly `text`."""
        await self.tg.wait_for(
            lambda t: any(m.text == text for m in t.messages(chat_id) if not m.deleted),
            timeout=within,
        )
        return next(m for m in self.tg.messages(chat_id) if m.text == text and not m.deleted)

    async def wait_messages(
        self, chat_id: int, predicate: Callable[[list[str]], bool], within: float = 10
    ) -> list[str]:
        """Wait until the chat's live bot texts satisfy `predicate`; return them."""
        await self.tg.wait_for(lambda t: predicate(self.texts(chat_id)), timeout=within)
        return self.texts(chat_id)

    async def idle(self, within: float = 10) -> None:
        """Wait until no update is queued or being handled."""

        def busy() -> bool:
            return self.app is None or bool(self.app.tracker.tasks or self.tg.pending_updates())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if not busy():
                await asyncio.sleep(0.05)  # an update may be between getUpdates and dispatch
                if not busy():
                    return
            await asyncio.sleep(0.02)
        raise AssertionError("bot still busy")


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram(token=TOKEN, bot_username="test_llm_bot")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    fake = FakeLLM(api_key="sk-test")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def harness(tg: FakeTelegram, llm: FakeLLM, tmp_path: Path) -> AsyncIterator[BotHarness]:
    h = BotHarness(tg=tg, llm=llm, db_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    yield h
    await h.stop()


@pytest.fixture
async def bot(harness: BotHarness) -> BotHarness:
    """A running bot with default settings."""
    await harness.start()
    return harness


@pytest.fixture
async def edit_bot(harness: BotHarness) -> BotHarness:
    """A running bot that streams by editing messages in private chats too (STREAM_MODE=edit),
    for what edits meet: flood waits on edits, deleted or unreadable edited messages."""
    await harness.start(stream_mode="edit")
    return harness
