"""The backend transport: httpx requests over aiohttp, with paced reads of streaming answers."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from bot.llm.client import LLMClient, LLMTimeouts
from bot.llm.errors import LLMTimeoutError, LLMUnavailableError
from bot.llm.transport import AiohttpTransport, PacedStream, paced_stream
from bot.llm.types import ChatMessage, TextDelta
from tests.fakes.openai import Disconnect, FakeLLM, Hang, Stream


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key="sk-test") as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        yield client


AUTH = {"Authorization": "Bearer sk-test"}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_paced_stream_reads_many_events_at_once(
    llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    chunks = [f"w{i} " for i in range(40)]
    llm.enqueue(Stream(chunks, delay=0.01))
    request = http.stream(
        "POST",
        f"{llm.base_url}/chat/completions",
        json=body(stream=True),
        headers=AUTH,
    )
    reading: list[bool] = []

    async def watch(stream: PacedStream) -> None:
        while True:
            await asyncio.sleep(0.01)
            reading.append(stream.reading)

    async with request as response:
        stream = paced_stream(response)
        assert stream is not None
        stream.pace = 0.1
        watcher = asyncio.create_task(watch(stream))
        text = ""
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                text += "".join(c["delta"].get("content") or "" for c in delta)
        watcher.cancel()
    assert text == "".join(chunks)
    # 40 events 10 ms apart, read at most every 100 ms: a handful of reads, not one per event.
    assert stream.reads < 15
    # Between reads the socket is left alone, so the events waiting in it come in one go.
    assert reading.count(False) >= 0.8 * len(reading)


async def test_unpaced_stream_yields_each_event_as_it_arrives(
    llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    llm.enqueue(Stream(["a", "b", "c", "d"], delay=0.05))
    async with http.stream(
        "POST", f"{llm.base_url}/chat/completions", json=body(stream=True), headers=AUTH
    ) as response:
        stream = paced_stream(response)
        assert stream is not None and stream.pace == 0.0
        seen = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    assert len(seen) >= 4
    assert stream.reads >= 4


async def test_an_answer_read_paced_is_complete_and_the_next_request_is_unpaced(
    llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    chunks = [f"part{i} " for i in range(30)]
    llm.enqueue(Stream(chunks, delay=0.01))
    client = LLMClient(http=http, base_url=llm.base_url, api_key="sk-test", read_interval=0.1)
    pieces = [
        event.text
        async for event in client.stream_chat(
            model="m", messages=[ChatMessage(role="user", content="hi")]
        )
        if isinstance(event, TextDelta)
    ]
    assert "".join(pieces) == "".join(chunks)
    async with http.stream("GET", f"{llm.base_url}/models", headers=AUTH) as response:
        stream = paced_stream(response)
        assert stream is not None and stream.pace == 0.0
        await response.aread()
    assert response.json()["data"]


async def test_a_refused_connection_is_a_connect_error(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await http.get("http://127.0.0.1:9/v1/models")


async def test_an_unsupported_scheme_is_reported_as_such(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await http.get("ftp://127.0.0.1/v1/models")


@pytest.mark.parametrize("reset", [False, True])
async def test_a_stream_cut_off_is_a_lost_connection_not_a_timeout(
    llm: FakeLLM, reset: bool
) -> None:
    llm.enqueue(Disconnect(["Hello ", "wor"], reset=reset))
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        client = LLMClient(http=http, base_url=llm.base_url, api_key="sk-test")
        pieces: list[str] = []
        with pytest.raises(LLMUnavailableError):
            async for event in client.stream_chat(
                model="m", messages=[ChatMessage(role="user", content="hi")]
            ):
                if isinstance(event, TextDelta):
                    pieces.append(event.text)
    assert "".join(pieces) == "Hello wor"


async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_request_headers_body_and_gzip_answers_pass_through(
    http: httpx.AsyncClient,
) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        seen["auth"] = request.headers.get("Authorization")
        seen["agent"] = request.headers.get("User-Agent")
        seen["body"] = await request.json()
        payload = gzip.compress(json.dumps({"ok": True}).encode())
        return web.Response(
            body=payload,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_post("/echo", handler)
    async for base in serve(app):
        response = await http.post(
            f"{base}/echo",
            json={"x": 1},
            headers={"Authorization": "Bearer k", "User-Agent": "llm-telegram-bot"},
        )
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert seen == {"auth": "Bearer k", "agent": "llm-telegram-bot", "body": {"x": 1}}


async def test_a_silent_backend_hits_the_read_timeout(http: httpx.AsyncClient) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        await asyncio.sleep(5)
        return response

    app = web.Application()
    app.router.add_post("/chat/completions", handler)
    async for base in serve(app):
        with pytest.raises(httpx.ReadTimeout):
            async with http.stream(
                "POST", f"{base}/chat/completions", json={}, timeout=httpx.Timeout(0.2)
            ) as response:
                async for _ in response.aiter_bytes():
                    pass


async def test_the_client_reports_a_silent_backend_as_idle(llm: FakeLLM) -> None:
    llm.enqueue(Hang(after_chunks=["slow"]))
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        client = LLMClient(
            http=http,
            base_url=llm.base_url,
            api_key="sk-test",
            timeouts=LLMTimeouts(connect=2.0, first_token=10.0, idle=0.2, total=10.0),
        )
        with pytest.raises(LLMTimeoutError) as caught:
            async for _ in client.stream_chat(
                model="m", messages=[ChatMessage(role="user", content="hi")]
            ):
                pass
    assert caught.value.phase == "idle"


async def test_requests_take_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxied: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        proxied.append(str(request.url))  # a proxy is sent the absolute URL
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    async for proxy_url in serve(app):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("NO_PROXY", "direct.invalid")
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            for _ in range(2):
                answer = await client.get("http://backend.invalid/v1/models")
                assert answer.json() == {"data": []}
            with pytest.raises(httpx.ConnectError):  # no proxy, and the name does not resolve
                await client.get("http://direct.invalid/v1/models")
    assert proxied == ["http://backend.invalid/v1/models"] * 2
