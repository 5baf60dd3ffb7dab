"""Another process holding SQLite's write lock pauses no chat: statements wait off the loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db import create_sessionmaker
from bot.db.engine import create_read_engine
from bot.llm.client import LLMClient, RetryPolicy
from bot.services.chat import ChatConfig, ChatRequest, ChatService
from bot.services.directory import Directory
from bot.services.tokens import TokenCounter
from tests.fakes.openai import FakeLLM, Stream
from tests.fakes.sink import RecordingSink

LOCK_SECONDS = 5.0

# A second program on the same file, as a backup or the sqlite3 shell would be: it takes the
# write lock, says so, and keeps it for LOCK_SECONDS.
HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
    print("released", flush=True)
    """
)


@dataclass
class TimedSink(RecordingSink):
    """A recording sink that also notes when each piece of the answer arrived."""

    times: list[float] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, text: str) -> None:
        """Record the piece and its arrival time."""
        super().push(text)
        self.times.append(time.monotonic())
        self.started.set()


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=None) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make_service(
    sessions: async_sessionmaker[AsyncSession],
    read_sessions: async_sessionmaker[AsyncSession],
    llm: FakeLLM,
    http: httpx.AsyncClient,
) -> ChatService:
    client = LLMClient(
        http=http, base_url=llm.base_url, api_key=None, retry=RetryPolicy(max_retries=0)
    )
    return ChatService(
        sessions=sessions,
        read_sessions=read_sessions,
        directory=Directory(),
        llm=client,
        tokens=TokenCounter(),
        config=ChatConfig(
            default_model="gpt-4o-mini",
            system_prompt="You are helpful.",
            max_tokens=100,
            temperature=None,
            history_token_budget=10_000,
            context_window=32_000,
        ),
    )


def request(text_: str, *, chat_id: int, message_id: int) -> ChatRequest:
    return ChatRequest(
        chat_id=chat_id,
        chat_type="private",
        chat_title=None,
        user_id=chat_id,
        user_full_name="Ann",
        username=None,
        language_code="en",
        text=text_,
        message_id=message_id,
    )


class LoopWatch:
    """Measures the longest time the event loop went without running a 10 ms timer."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.longest = max(self.longest, loop.time() - before - 0.01)

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_a_write_lock_held_elsewhere_stalls_no_chat_and_loses_nothing(
    sqlite_url: str, sqlite_engine: AsyncEngine, llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    sessions = create_sessionmaker(sqlite_engine)
    read_engine = create_read_engine(sqlite_url)
    assert read_engine is not None
    service = make_service(sessions, create_sessionmaker(read_engine), llm, http)
    # Both chats are known, so the lock-free part of each turn is the streaming itself.
    llm.enqueue(Stream.text("hello"), Stream.text("hello"))
    for chat_id in (1, 2):
        first = request("hi", chat_id=chat_id, message_id=1)
        await service.reply(request=first, sink=RecordingSink())

    # Chat 1 streams an answer over three seconds; the lock is taken once it has started.
    words = [f"word{i} " for i in range(30)]
    llm.enqueue(Stream(chunks=words, delay=0.1), Stream.text("second answer"))
    streaming = TimedSink()
    waiting = TimedSink()
    path = sqlite_url.split("///", 1)[1]
    with LoopWatch() as watch:
        answer = asyncio.create_task(
            service.reply(request=request("long", chat_id=1, message_id=2), sink=streaming)
        )
        await streaming.started.wait()
        holder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HOLDER,
            path,
            str(LOCK_SECONDS),
            stdout=subprocess.PIPE,
        )
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"locked\n"
        locked_at = time.monotonic()
        # A message in another known chat arrives while the lock is held: its history is read
        # on a read-only connection, so it is answered at once; only its storing waits.
        other = asyncio.create_task(
            service.reply(request=request("short", chat_id=2, message_id=2), sink=waiting)
        )
        await asyncio.wait_for(asyncio.gather(answer, other), timeout=LOCK_SECONDS + 10)
        released_at = time.monotonic()
        assert await holder.wait() == 0

    await read_engine.dispose()
    assert watch.longest < 0.1, f"the event loop stalled {watch.longest:.3f}s"
    # Chat 1 kept streaming while the other process held the lock.
    during = [t for t in streaming.times if locked_at < t < locked_at + LOCK_SECONDS - 0.5]
    assert len(during) >= 5
    assert "".join(streaming.pushed) == "".join(words)
    assert waiting.times and waiting.times[0] < locked_at + LOCK_SECONDS - 0.5
    assert streaming.finished and waiting.finished
    assert released_at - locked_at >= LOCK_SECONDS - 0.5  # the writes waited for the lock
    # Nothing lost: both turns and both usage records were stored once the lock was gone.
    async with sessions() as session:
        turns = (
            await session.execute(text("SELECT chat_id, role, content FROM turns ORDER BY id"))
        ).all()
        calls = (await session.execute(text("SELECT count(*) FROM usage_records"))).scalar()
    stored = sorted((chat, role, content) for chat, role, content in turns[-4:])
    assert stored == [
        (1, "assistant", "".join(words)),
        (1, "user", "long"),
        (2, "assistant", "second answer"),
        (2, "user", "short"),
    ]
    assert calls == 4
