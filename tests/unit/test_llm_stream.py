"""Bounded reading of a streamed answer: endless lines and endless answers fail, at the bound."""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterable

import httpx
import pytest
from aiohttp import web

from bot.llm.client import LLMClient
from bot.llm.errors import LLMResponseTooLargeError
from bot.llm.policy import RetryPolicy
from bot.llm.stream import MAX_LINE_BYTES, MIB, BodyBounds, StreamLimits
from bot.llm.transport import backend_http_client
from bot.llm.types import ChatMessage, StreamEnd, TextDelta

MESSAGES = [ChatMessage(role="user", content="hi")]


def event(text: str) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


def read_all(chunks: Iterable[bytes], limits: StreamLimits) -> bytes:
    bounds = BodyBounds(limits)
    read = []
    for chunk in chunks:
        bounds.check(chunk)
        read.append(chunk)
    return b"".join(read)


# -- the bounds, chunk by chunk ------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a" * 10 + b"\n", b"b" * 10 + b"\r\n", b"c" * 10 + b"\r"],  # LF, CRLF, lone CR
        [b"a" * 4, b"a" * 6, b"\n" + b"b" * 10],  # a line of exactly 10 over two chunks
        [(b"x" * 10 + b"\n") * 50],  # one large chunk of short lines
    ],
)
def test_lines_up_to_the_limit_pass(chunks: list[bytes]) -> None:
    assert read_all(chunks, StreamLimits(line_bytes=10)) == b"".join(chunks)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a" * 11],  # no line break yet
        [b"a" * 6, b"a" * 5 + b"\n"],  # the line ends in the chunk that makes it too long
        [b"a" * 6, b"\r", b"b" * 6, b"b" * 5],  # after a lone CR
        [b"short\n" + b"y" * 30 + b"\nshort\n"],  # inside one large chunk
    ],
)
def test_a_line_past_the_limit_fails(chunks: list[bytes]) -> None:
    with pytest.raises(LLMResponseTooLargeError, match="line longer than 10 bytes"):
        read_all(chunks, StreamLimits(line_bytes=10))


def test_an_answer_past_the_total_limit_fails() -> None:
    chunks = [b"x" * 9 + b"\n"] * 10
    assert len(read_all(chunks, StreamLimits(answer_bytes=100))) == 100
    with pytest.raises(LLMResponseTooLargeError, match="more than 99 bytes in one answer"):
        read_all(chunks, StreamLimits(answer_bytes=99))


# -- through the client, from a real server ------------------------------------------------------


async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def endless(first: bytes, repeated: bytes) -> tuple[web.Application, list[int]]:
    """A backend that sends `first`, then `repeated` until the client goes away."""
    sent = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        with_gone = (ConnectionError, asyncio.CancelledError)
        try:
            while True:
                await response.write(repeated)
                sent[0] += len(repeated)
        except with_gone:
            pass
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app, sent


async def test_an_endless_line_fails_at_the_bound_with_memory_bounded() -> None:
    app, _ = endless(b'data: {"choices": [{"delta": {"content": "', b"x" * 65536)
    pieces: list[str] = []
    tracemalloc.start()
    try:
        async for base_url in serve(app):
            async with backend_http_client(max_connections=4) as http:
                client = LLMClient(http=http, base_url=base_url, api_key=None)
                with pytest.raises(LLMResponseTooLargeError, match="line longer than 1 MiB"):
                    async with asyncio.timeout(20):
                        async for item in client.stream_chat(model="m", messages=MESSAGES):
                            assert isinstance(item, TextDelta)
                            pieces.append(item.text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pieces == []
    # The line is held (as bytes and as text) while it grows: a few times the bound, not more.
    assert peak < 8 * MAX_LINE_BYTES


async def test_many_small_events_past_the_answer_bound_fail_clearly() -> None:
    app, sent = endless(b"", event("word "))
    pieces: list[str] = []
    async for base_url in serve(app):
        async with backend_http_client(max_connections=4) as http:
            client = LLMClient(
                http=http,
                base_url=base_url,
                api_key=None,
                retry=RetryPolicy(max_retries=0),
                limits=StreamLimits(answer_bytes=256 * 1024),
            )
            too_large = pytest.raises(LLMResponseTooLargeError, match="more than 262144 bytes")
            with too_large:
                async with asyncio.timeout(20):
                    async for item in client.stream_chat(model="m", messages=MESSAGES):
                        assert isinstance(item, TextDelta)
                        pieces.append(item.text)
    # Everything up to the bound was shown; nothing past it was read.
    shown = len(pieces) * len(event("word "))
    assert 192 * 1024 < shown <= 256 * 1024
    assert sent[0] >= 256 * 1024


async def test_a_normal_answer_with_long_lines_below_the_bounds_is_whole() -> None:
    long_text = "y" * 5000

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for text in ("a", long_text, "b"):
            await response.write(event(text))
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async for base_url in serve(app):
        async with backend_http_client(max_connections=4) as http:
            client = LLMClient(
                http=http,
                base_url=base_url,
                api_key=None,
                limits=StreamLimits(line_bytes=6000, answer_bytes=20000),
            )
            events = [e async for e in client.stream_chat(model="m", messages=MESSAGES)]
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", long_text, "b"]
    assert isinstance(events[-1], StreamEnd)


async def test_the_bound_is_on_the_decoded_body() -> None:
    # 2 MiB of one line compress to a few kilobytes; it is measured after decompressing.
    body = gzip.compress(b'data: {"choices": [{"delta": {"content": "' + b"x" * (2 * MIB))

    def backend(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}
        return httpx.Response(200, headers=headers, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(backend)) as http:
        client = LLMClient(http=http, base_url="http://backend/v1", api_key=None)
        with pytest.raises(LLMResponseTooLargeError, match="line longer than 1 MiB"):
            async for _ in client.stream_chat(model="m", messages=MESSAGES):
                pass
