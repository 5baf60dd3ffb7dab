"""End-to-end: several replicas behind one webhook URL, sharing this machine's PostgreSQL.

A small round-robin balancer stands in front of the replicas, as a reverse proxy would. Each
test gets a database of its own, created on the PostgreSQL server and dropped afterwards; with
no server the tests are skipped, except on CI, where they fail.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web

from tests.conftest import REDIS_URL
from tests.e2e.conftest import BotHarness
from tests.e2e.test_streaming_modes import stop_data, words
from tests.e2e.test_webhook import SECRET, free_port
from tests.fakes.openai import FakeLLM, Hang, Stream
from tests.fakes.telegram import FakeTelegram

ROOT = Path(__file__).parents[2]
SERVER = "postgresql://postgres@127.0.0.1:5432/test"
TOKEN = "123456:TEST-TOKEN"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test (asyncpg URL), dropped afterwards."""
    name = f"bot_e2e_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(SERVER, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {SERVER}: {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Balancer:
    """Round-robin HTTP forwarding to the replicas, as a reverse proxy in front of them."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = targets
        self.sent: list[str] = []
        self._next = itertools.cycle(range(len(targets)))
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tg/hook"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/tg/hook", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-telegram")}
        headers["Content-Type"] = "application/json"
        for _attempt in range(len(self.targets)):
            target = self.targets[next(self._next)]
            try:
                async with self._session.post(target, data=body, headers=headers) as answer:
                    self.sent.append(target)
                    return web.Response(status=answer.status, body=await answer.read())
            except aiohttp.ClientError:
                continue  # that replica is down: the next one
        return web.Response(status=502)


def replica_settings(balancer: Balancer, port: int) -> dict[str, Any]:
    return {
        "bot_mode": "webhook",
        "webhook_url": balancer.url,
        "webhook_secret": SECRET,
        "webhook_listen": f"127.0.0.1:{port}",
        "webhook_path": "/tg/hook",
        "webhook_lease_seconds": 2,
    }


@pytest.mark.parametrize("count", [2, 3])
async def test_replicas_answer_every_update_once_in_order_per_chat(
    tg: FakeTelegram, llm: FakeLLM, postgres_url: str, count: int
) -> None:
    ports = [free_port() for _ in range(count)]
    balancer = Balancer([f"http://127.0.0.1:{port}/tg/hook" for port in ports])
    await balancer.start()
    replicas = [BotHarness(tg=tg, llm=llm, db_url=postgres_url) for _ in ports]
    try:
        # (Alembic keeps its context in module globals: replicas in one process start one
        # after the other; the test below starts processes together.)
        for replica, port in zip(replicas, ports, strict=True):
            await replica.start(**replica_settings(balancer, port))
        llm.set_default(
            lambda body: Stream([f"re: {body['messages'][-1]['content']}"], delay=0.05)
        )
        chats = (7001, 7002, 7003)
        for round_ in ("one", "two", "three"):
            for chat in chats:
                tg.user_message(chat_id=chat, text=f"{round_} from {chat}")
        for chat in chats:
            await replicas[0].wait_messages(chat, lambda t: len(t) == 3, within=30)
    finally:
        for replica in replicas:
            await replica.stop()
        await balancer.stop()
    # Every replica took posts; every update was answered once, in order within its chat.
    assert set(balancer.sent) == set(balancer.targets)
    assert len(llm.chat_requests) == 9
    for chat in chats:
        texts = [m.text for m in tg.messages(chat)]
        assert texts == [f"re: {r} from {chat}" for r in ("one", "two", "three")]
        asked = [
            r["messages"] for r in llm.chat_requests if str(chat) in r["messages"][-1]["content"]
        ]
        # Each question was asked after the one before was answered: its history holds it.
        assert asked[2][-2]["content"] == f"re: two from {chat}"


def replica_env(tg: FakeTelegram, llm: FakeLLM, balancer: Balancer, port: int, db: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "LLM_", "WEBHOOK"))}
    env |= {
        "PYTHONPATH": str(ROOT),
        "BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": tg.url,
        "LLM_BASE_URL": llm.base_url,
        "LLM_API_KEY": "sk-test",
        "LLM_MODEL": "gpt-4o-mini",
        "DATABASE_URL": db,
        "BOT_MODE": "webhook",
        "WEBHOOK_URL": balancer.url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_LISTEN": f"127.0.0.1:{port}",
        "WEBHOOK_PATH": "/tg/hook",
        "WEBHOOK_LEASE_SECONDS": "2",
        "STREAM_MODE": "edit",
    }
    return env


async def test_a_replica_killed_after_acknowledging_loses_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    async with FakeTelegram(token=TOKEN) as tg, FakeLLM(api_key="sk-test") as llm:
        ports = [free_port(), free_port()]
        balancer = Balancer([f"http://127.0.0.1:{port}/tg/hook" for port in ports])
        await balancer.start()
        processes: dict[int, asyncio.subprocess.Process] = {}
        try:
            # Two processes start together on an empty database: one migrates, both start.
            for port in ports:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bot",
                    cwd=tmp_path,
                    env=replica_env(tg, llm, balancer, port, postgres_url),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                processes[process.pid] = process
            await tg.wait_for(lambda t: len(t.calls_to("setWebhook")) == 2, timeout=60)
            llm.enqueue(Hang())  # the replica answering is stuck when it is killed
            tg.user_message(chat_id=8001, text="Do not lose me")
            await llm.wait_for_requests(1, within=30)
            # The update was acknowledged (stored) before it was handled. Kill -9 the replica
            # holding it, found by its lease (host-pid-random).
            owner = await lease_owner(postgres_url)
            pid = int(owner.split("-")[-2])
            processes[pid].send_signal(signal.SIGKILL)
            await processes[pid].wait()
            llm.enqueue(Stream(["Not lost."]))
            # The other replica takes the update over once the dead one's lease ran out.
            await tg.wait_for(
                lambda t: any(m.text == "Not lost." for m in t.messages(8001)), timeout=30
            )
            llm.enqueue(Stream(["And the next one."]))
            tg.user_message(chat_id=8001, text="Next")
            await tg.wait_for(
                lambda t: any(m.text == "And the next one." for m in t.messages(8001)),
                timeout=30,
            )
        finally:
            for process in processes.values():
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(process.wait(), timeout=20)
                    except TimeoutError:
                        process.kill()
            await balancer.stop()
        asked = [r["messages"][-1]["content"] for r in llm.chat_requests]
        assert asked == ["Do not lose me", "Do not lose me", "Next"]


async def lease_owner(url: str) -> str:
    connection = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    try:
        owner = await connection.fetchval(
            "SELECT lease_owner FROM inbox WHERE lease_owner IS NOT NULL"
        )
    finally:
        await connection.close()
    assert isinstance(owner, str), owner
    return owner


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "no-redis"])
async def test_replicas_share_telegram_s_rate_limit_through_redis(
    tg: FakeTelegram, llm: FakeLLM, postgres_url: str, redis_prefix: str, shared: bool
) -> None:
    # Telegram lets this bot make 4 calls a second; each replica is told so.
    tg.flood.global_limit = 4
    ports = [free_port(), free_port()]
    balancer = Balancer([f"http://127.0.0.1:{port}/tg/hook" for port in ports])
    await balancer.start()
    replicas = [BotHarness(tg=tg, llm=llm, db_url=postgres_url) for _ in ports]
    limits: dict[str, Any] = {"telegram_rate_limit": 4, "stream_mode": "edit"}
    if shared:
        limits |= {"redis_url": REDIS_URL, "redis_prefix": redis_prefix}
    try:
        for replica, port in zip(replicas, ports, strict=True):
            await replica.start(**replica_settings(balancer, port), **limits)
        llm.set_default(lambda body: Stream(["Fine."]))
        chats = list(range(9001, 9021))
        for chat in chats:
            tg.user_message(chat_id=chat, text="How are you?")
        for chat in chats:
            await replicas[0].wait_text(chat, "Fine.", within=60)
    finally:
        for replica in replicas:
            await replica.stop()
        await balancer.stop()
    assert set(balancer.sent) == set(balancer.targets)
    if shared:
        assert tg.flood.count_429 == 0  # together within the bot's limit
    else:
        assert tg.flood.count_429 > 0  # each within its own, together over it


@pytest.mark.parametrize("button", [False, True], ids=["draft", "button"])
async def test_a_stop_handled_by_another_replica_ends_the_answer(
    tg: FakeTelegram, llm: FakeLLM, postgres_url: str, redis_prefix: str, button: bool
) -> None:
    chat = 8101
    ports = [free_port(), free_port()]
    balancer = Balancer([f"http://127.0.0.1:{port}/tg/hook" for port in ports])
    await balancer.start()
    replicas = [BotHarness(tg=tg, llm=llm, db_url=postgres_url) for _ in ports]
    try:
        for replica, port in zip(replicas, ports, strict=True):
            await replica.start(
                **replica_settings(balancer, port)
                | {
                    # Long enough that nobody takes over the answer while this test runs.
                    "webhook_lease_seconds": 30,
                    "redis_url": REDIS_URL,
                    "redis_prefix": redis_prefix,
                    "stream_mode": "edit" if button else "auto",
                }
            )
        llm.enqueue(Stream(words(100), delay=0.1))
        tg.user_message(chat_id=chat, text="Count to 100")
        if button:
            await tg.wait_for(lambda t: bool(t.messages(chat)), timeout=15)
        else:
            await tg.wait_for(lambda t: bool(t.visible_draft(chat)), timeout=15)
        # The replica generating the answer claims nothing more: the Stop goes to the other.
        owner = await lease_owner(postgres_url)
        [running] = [r for r in replicas if r.app and r.app.updates.owner == owner]
        running.app.updates.stop()
        if button:
            message = tg.messages(chat)[0]
            data = stop_data(message.reply_markup)
            assert data is not None, "no Stop button while streaming"
            pressed = tg.callback_query(chat_id=chat, message_id=message.message_id, data=data)
            query_id = pressed["callback_query"]["id"]
            await tg.wait_for(lambda t: query_id in t.callback_answers, timeout=10)
            assert tg.callback_answers[query_id]["text"] == "Stopped."
        else:
            tg.stop_generation(chat)
        await tg.wait_for(
            lambda t: any(m.text.endswith("⏹ stopped") for m in t.messages(chat)), timeout=10
        )
        await tg.wait_for(lambda t: llm.requests[-1].finished_at is not None, timeout=5)
    finally:
        for replica in replicas:
            await replica.stop()
        await balancer.stop()
    assert llm.requests[-1].disconnected, "the backend was read to the end"
    [final] = [m.text for m in tg.messages(chat)]
    assert final.startswith("w0") and "w99" not in final


async def test_a_model_or_language_chosen_on_one_replica_holds_on_every_replica(
    tg: FakeTelegram, llm: FakeLLM, postgres_url: str
) -> None:
    chat = 8201
    ports = [free_port(), free_port()]
    balancer = Balancer([f"http://127.0.0.1:{port}/tg/hook" for port in ports])
    await balancer.start()
    replicas = [BotHarness(tg=tg, llm=llm, db_url=postgres_url) for _ in ports]
    bot = replicas[0]

    async def ask(text: str) -> str:
        count = len(tg.messages(chat))
        tg.user_message(chat_id=chat, text=text, user_id=chat)
        texts = await bot.wait_messages(chat, lambda t: len(t) > count, within=15)
        return texts[-1]

    try:
        for replica, port in zip(replicas, ports, strict=True):
            await replica.start(**replica_settings(balancer, port))
        llm.set_default(lambda body: Stream([f"re: {body['messages'][-1]['content']}"]))
        # Each replica gets (and could remember) the chat and its user.
        for text in ("one", "two", "/start", "/start"):
            await ask(text)
        assert "now uses gpt-4o" in await ask("/model gpt-4o")
        await ask("/language")
        [picker] = [m for m in tg.live_messages(chat) if m.reply_markup]
        [data] = [
            b["callback_data"]
            for row in (picker.reply_markup or {})["inline_keyboard"]
            for b in row
            if b["text"] == "Русский"
        ]
        pressed = tg.callback_query(
            chat_id=chat, message_id=picker.message_id, data=data, user_id=chat
        )
        query_id = pressed["callback_query"]["id"]
        await tg.wait_for(lambda t: query_id in t.callback_answers, timeout=10)
        assert tg.callback_answers[query_id]["text"] == "✅ Язык: Русский."
        # Whichever replica answers next knows both choices.
        for text in ("three", "four"):
            assert await ask(text) == f"re: {text}"
            assert llm.chat_requests[-1]["model"] == "gpt-4o"
        for _ in range(2):
            assert (await ask("/start")).startswith("Привет")
    finally:
        for replica in replicas:
            await replica.stop()
        await balancer.stop()
    assert set(balancer.sent) == set(balancer.targets)
