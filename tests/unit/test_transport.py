"""Paced reads of a streaming answer: fewer network reads, the same text, no delay elsewhere."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httpx
import pytest

from bot.llm.client import LLMClient
from bot.llm.transport import PacedStream, paced_stream, paced_transport
from bot.llm.types import ChatMessage, TextDelta
from tests.fakes.openai import FakeLLM, Stream


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Inner(httpcore.AsyncNetworkStream):
    """A connection that has data whenever asked."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        self.reads += 1
        return b"data"


async def test_reads_are_spaced_only_while_paced() -> None:
    t = FakeTime()
    stream = PacedStream(Inner(), clock=t.clock, sleep=t.sleep)
    await stream.read(100)
    await stream.read(100)
    assert t.sleeps == []  # unpaced: headers and the first token are read at once
    stream.pace = 0.25
    t.now += 0.1
    await stream.read(100)
    assert t.sleeps == [pytest.approx(0.15)]
    await stream.read(100)
    assert t.sleeps[-1] == pytest.approx(0.25)
    stream.pace = 0.0
    await stream.read(100)
    assert len(t.sleeps) == 2


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key="sk-test") as fake:
        yield fake


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_paced_connection_reads_many_events_at_once(llm: FakeLLM) -> None:
    chunks = [f"w{i} " for i in range(40)]
    llm.enqueue(Stream(chunks, delay=0.01))
    async with httpx.AsyncClient(transport=paced_transport(limits=httpx.Limits())) as http:
        request = http.stream(
            "POST",
            f"{llm.base_url}/chat/completions",
            json=body(stream=True),
            headers={"Authorization": "Bearer sk-test"},
        )
        async with request as response:
            connection = paced_stream(response)
            assert connection is not None
            connection.pace = 0.1
            reads_before = connection.reads
            text = ""
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"]
                    text += "".join(c["delta"].get("content") or "" for c in delta)
    assert text == "".join(chunks)
    # 40 events 10 ms apart, read at most every 100 ms: a handful of reads, not one per event.
    assert connection.reads - reads_before < 15


async def test_an_answer_read_paced_is_complete_and_leaves_its_connection_unpaced(
    llm: FakeLLM,
) -> None:
    chunks = [f"part{i} " for i in range(30)]
    llm.enqueue(Stream(chunks, delay=0.01))
    async with httpx.AsyncClient(transport=paced_transport(limits=httpx.Limits())) as http:
        client = LLMClient(http=http, base_url=llm.base_url, api_key="sk-test", read_interval=0.1)
        pieces = [
            event.text
            async for event in client.stream_chat(
                model="m", messages=[ChatMessage(role="user", content="hi")]
            )
            if isinstance(event, TextDelta)
        ]
        assert "".join(pieces) == "".join(chunks)
        # The next request reuses the kept-alive connection, which must not be paced any more.
        async with http.stream("GET", f"{llm.base_url}/models") as response:
            connection = paced_stream(response)
            assert connection is not None and connection.pace == 0.0
            await response.aread()
