"""The backend's HTTP: httpx over aiohttp (httpx-aiohttp), its errors as httpx's own would be."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from bot.llm.client import LLMClient, LLMTimeouts
from bot.llm.errors import LLMTimeoutError, LLMUnavailableError
from bot.llm.policy import RetryPolicy
from bot.llm.transport import as_httpx_error, backend_http_client
from bot.llm.types import ChatMessage, TextDelta
from tests.fakes.openai import Disconnect, FakeLLM, Hang, Stream

MESSAGES = [ChatMessage(role="user", content="hi")]


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key="sk-test") as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with backend_http_client(max_connections=16) as client:
        yield client


async def no_sleep(delay: float) -> None:
    pass


def client_for(http: httpx.AsyncClient, base_url: str, **kwargs: Any) -> LLMClient:
    return LLMClient(http=http, base_url=base_url, api_key="sk-test", sleep=no_sleep, **kwargs)


async def texts(client: LLMClient, pieces: list[str]) -> None:
    async for event in client.stream_chat(model="m", messages=MESSAGES):
        if isinstance(event, TextDelta):
            pieces.append(event.text)


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


async def raw_server(
    behave: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A server that reads a request's head and then does exactly what `behave` does."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await behave(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()


# -- connections and their errors ----------------------------------------------------------------


async def test_an_answer_streams_through_one_shared_client(
    llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    chunks = [f"part{i} " for i in range(30)]
    llm.enqueue(Stream(chunks, delay=0.005), Stream(["again"]))
    client = client_for(http, llm.base_url)
    pieces: list[str] = []
    await texts(client, pieces)
    assert "".join(pieces) == "".join(chunks)
    second: list[str] = []
    await texts(client, second)
    assert second == ["again"]


async def test_a_refused_connection_is_a_connect_error(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.TransportError) as caught:
        await http.get("http://127.0.0.1:9/v1/models")
    assert isinstance(as_httpx_error(caught.value), httpx.ConnectError)


async def test_a_refused_connection_is_retried_as_could_not_connect(
    http: httpx.AsyncClient,
) -> None:
    client = client_for(http, "http://127.0.0.1:9/v1", retry=RetryPolicy(max_retries=2))
    with pytest.raises(LLMUnavailableError, match="could not connect") as caught:
        await client.list_models()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_an_unsupported_scheme_is_reported_as_such(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await http.get("ftp://127.0.0.1/v1/models")


@pytest.mark.parametrize("reset", [False, True])
async def test_a_stream_cut_off_is_a_lost_connection_not_a_timeout(
    llm: FakeLLM, http: httpx.AsyncClient, reset: bool
) -> None:
    llm.enqueue(Disconnect(["Hello ", "wor"], reset=reset))
    pieces: list[str] = []
    with pytest.raises(LLMUnavailableError, match="mid-answer"):
        await texts(client_for(http, llm.base_url), pieces)
    assert "".join(pieces) == "Hello wor"


async def test_a_server_gone_before_the_headers_is_a_lost_connection(
    http: httpx.AsyncClient,
) -> None:
    async def hang_up(writer: asyncio.StreamWriter) -> None:
        writer.close()

    async for base_url in raw_server(hang_up):
        client = client_for(http, base_url, retry=RetryPolicy(max_retries=0))
        with pytest.raises(LLMUnavailableError) as caught:
            await texts(client, [])
    # httpx-aiohttp names aiohttp's ServerDisconnectedError a ConnectTimeout.
    assert not isinstance(caught.value, LLMTimeoutError)
    assert str(caught.value) == "connection to the backend was lost"


def test_a_server_disconnect_mid_answer_is_a_read_error_not_a_connect_timeout() -> None:
    request = httpx.Request("POST", "http://backend/v1/chat/completions")
    odd = httpx.ConnectTimeout("Server disconnected", request=request)
    odd.__cause__ = aiohttp.ServerDisconnectedError()
    assert isinstance(as_httpx_error(odd), httpx.ReadError)
    real = httpx.ConnectTimeout("timed out", request=request)
    real.__cause__ = aiohttp.ConnectionTimeoutError()
    assert as_httpx_error(real) is real


async def test_a_server_disconnect_mid_answer_keeps_the_text_and_is_not_retried() -> None:
    event = b'data: {"choices":[{"index":0,"delta":{"content":"Hello "}}]}\n\n'

    class CutOff(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield event
            # What httpx-aiohttp raises when aiohttp reports ServerDisconnectedError.
            error = httpx.ConnectTimeout("Server disconnected")
            raise error from aiohttp.ServerDisconnectedError()

    requests: list[httpx.Request] = []

    def backend(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=CutOff())

    async with httpx.AsyncClient(transport=httpx.MockTransport(backend)) as mock:
        pieces: list[str] = []
        with pytest.raises(LLMUnavailableError, match="mid-answer") as caught:
            await texts(client_for(mock, "http://backend/v1"), pieces)
    assert pieces == ["Hello "]
    assert len(requests) == 1
    assert not isinstance(caught.value, LLMTimeoutError)


# -- requests and bodies -------------------------------------------------------------------------


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


async def test_the_client_reports_a_silent_backend_as_idle(
    llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    llm.enqueue(Hang(after_chunks=["slow"]))
    client = client_for(
        http,
        llm.base_url,
        timeouts=LLMTimeouts(connect=2.0, first_token=10.0, idle=0.2, total=10.0),
    )
    with pytest.raises(LLMTimeoutError) as caught:
        await texts(client, [])
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
        async with backend_http_client(max_connections=4) as client:
            for _ in range(2):
                answer = await client.get("http://backend.invalid/v1/models")
                assert answer.json() == {"data": []}
            # No proxy, and the name does not resolve.
            with pytest.raises(httpx.TransportError) as caught:
                await client.get("http://direct.invalid/v1/models")
            assert isinstance(as_httpx_error(caught.value), httpx.ConnectError)
    assert proxied == ["http://backend.invalid/v1/models"] * 2
