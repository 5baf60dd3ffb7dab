"""Tests of the fake OpenAI-compatible server itself, spoken to over real HTTP with httpx."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import pytest

from tests.fakes.openai import (
    AKASHCHAT_MODELS,
    Disconnect,
    Error,
    FakeLLM,
    Hang,
    ImageResult,
    Raw,
    Stream,
    StreamError,
    Transcription,
    TranscriptionRequest,
    make_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
USER = [{"role": "user", "content": "hello there otter"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM() as server:
        yield server


@pytest.fixture
async def client(fake: FakeLLM) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=fake.base_url, headers={"Authorization": "Bearer sk-test"}, timeout=5.0
    ) as http:
        yield http


def chat_body(stream: bool = True, include_usage: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": USER, "stream": stream}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(extra)
    return body


def parse_sse(raw: str) -> list[Any]:
    """Data payloads of an SSE body (JSON decoded, ``[DONE]`` kept as a string)."""
    events: list[Any] = []
    for block in raw.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def content_of(events: list[Any]) -> str:
    text = ""
    for event in events:
        if isinstance(event, dict):
            for choice in event.get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text


async def stream_raw(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, str, dict]:
    async with client.stream("POST", "/chat/completions", json=body) as resp:
        raw = (await resp.aread()).decode()
        return resp.status_code, raw, dict(resp.headers)


# -- Stream ---------------------------------------------------------------------------------------


async def test_default_echo_streams_and_records(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    status, raw, headers = await stream_raw(client, chat_body())
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    events = parse_sse(raw)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[0]["model"] == "gpt-4o-mini"
    assert content_of(events) == "You said: hello there otter"
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert "usage" not in events[-2]
    assert events[-1] == "[DONE]"
    assert raw.endswith("data: [DONE]\n\n")
    assert fake.chat_requests == [chat_body()]
    assert len(fake.first_chunk_at) == 1
    rec = fake.requests[0]
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.first_chunk_at is not None and rec.first_chunk_at >= rec.received_at


async def test_non_streaming_joins_chunks(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Stream(["Hel", "lo"], reasoning=["hm"], prompt_tokens=7))
    resp = await client.post("/chat/completions", json=chat_body(stream=False))
    data = resp.json()
    assert resp.status_code == 200
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "reasoning_content": "hm",
    }
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


async def test_queue_order_then_default_factory(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Stream(["one"]), Stream(["two"]))
    fake.set_default(lambda body: Stream([f"model={body['model']}"]))
    texts = [content_of(parse_sse((await stream_raw(client, chat_body()))[1])) for _ in range(3)]
    assert texts == ["one", "two", "model=gpt-4o-mini"]
    assert fake.pending == 0


@pytest.mark.parametrize("include_usage", [True, False])
async def test_usage_separate(
    fake: FakeLLM, client: httpx.AsyncClient, include_usage: bool
) -> None:
    fake.enqueue(Stream(["a", "b", "c"], usage="separate", prompt_tokens=5))
    events = parse_sse((await stream_raw(client, chat_body(include_usage=include_usage)))[1])
    chunks = [e for e in events if isinstance(e, dict)]
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "total_tokens": 8,
        }
        assert all(c["usage"] is None for c in chunks[:-1])  # like OpenAI
    else:
        assert all("usage" not in c for c in chunks)
    assert events[-1] == "[DONE]"


async def test_usage_in_finish_chunk(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Stream(["a", "b"], usage="in_finish"))
    events = parse_sse((await stream_raw(client, chat_body()))[1])
    finish = events[-2]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert all("usage" not in e for e in events[:-2])


async def test_usage_in_last_content_chunk(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Stream(["a", "b"], usage="in_last_content", role_chunk=False))
    events = parse_sse((await stream_raw(client, chat_body()))[1])
    assert len(events) == 3  # two content chunks and [DONE]; no separate finish chunk
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    last = events[1]
    assert last["choices"][0] == {"index": 0, "delta": {"content": "b"}, "finish_reason": "stop"}
    assert last["usage"]["completion_tokens"] == 2


async def test_usage_none_and_zeros(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Stream(["a"], usage="none"), Stream(["a"], usage="zeros"))
    none = parse_sse((await stream_raw(client, chat_body(include_usage=True)))[1])
    assert all("usage" not in e for e in none if isinstance(e, dict))
    zeros = parse_sse((await stream_raw(client, chat_body()))[1])
    assert zeros[-2]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


async def test_akashchat_stream_shape(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Stream.akashchat(["Hi", "!"]))
    _, raw, _ = await stream_raw(client, chat_body())
    assert "[DONE]" not in raw
    assert raw.count("}\n\n\n") == 3
    events = parse_sse(raw)
    assert content_of(events) == "Hi!"
    assert events[-1]["usage"]["total_tokens"] == 0


async def test_reasoning_before_content(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Stream(["answer"], reasoning=["think", "ing"]))
    events = parse_sse((await stream_raw(client, chat_body()))[1])
    deltas = [e["choices"][0]["delta"] for e in events if isinstance(e, dict)]
    assert deltas[1:4] == [
        {"reasoning_content": "think"},
        {"reasoning_content": "ing"},
        {"content": "answer"},
    ]


async def test_stream_is_really_paced(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Stream(["a", "b", "c"], delay=0.1, first_delay=0.25, keepalive=0.1))
    arrivals: list[tuple[float, str]] = []
    start = time.monotonic()
    async with client.stream("POST", "/chat/completions", json=chat_body()) as resp:
        async for line in resp.aiter_lines():
            if line:
                arrivals.append((time.monotonic() - start, line))
    keepalives = [t for t, line in arrivals if line == ": keep-alive"]
    contents = [t for t, line in arrivals if '"content":"' in line and '"content":""' not in line]
    assert len(keepalives) >= 2
    assert contents[0] >= 0.24
    assert contents[2] - contents[0] >= 0.18
    rec = fake.requests[0]
    assert rec.first_chunk_at is not None
    assert rec.first_chunk_at - rec.received_at >= 0.24
    assert fake.first_chunk_at == [rec.first_chunk_at]


async def test_injected_clock_is_used() -> None:
    ticks = iter(range(100, 200))
    auth = {"Authorization": "Bearer sk-test"}
    async with (
        FakeLLM(clock=lambda: float(next(ticks))) as server,
        httpx.AsyncClient(headers=auth) as http,
    ):
        await http.post(f"{server.base_url}/chat/completions", json=chat_body())
    assert server.requests[0].received_at == 100.0
    assert server.first_chunk_at == [101.0]


# -- errors ---------------------------------------------------------------------------------------


async def test_error_replies(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Error.rate_limited(retry_after=2), Error.plaintext_500(), Error.akashchat())
    resp = await client.post("/chat/completions", json=chat_body())
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "2"
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    resp = await client.post("/chat/completions", json=chat_body())
    assert (resp.status_code, resp.text) == (500, "Internal Server Error")
    assert resp.headers["content-type"].startswith("text/plain")
    resp = await client.post("/chat/completions", json=chat_body())
    assert resp.status_code == 500
    assert resp.json() == {"code": 500, "data": {"msg": "Error Model."}}


async def test_litellm_unknown_model_is_400(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Error.litellm_unknown_model("nope"), Error.litellm_529())
    resp = await client.post("/chat/completions", json=chat_body(model="nope"))
    assert resp.status_code == 400
    assert "model=nope" in resp.json()["error"]["message"]
    resp = await client.post("/chat/completions", json=chat_body())
    assert resp.status_code == 529
    assert resp.json()["error"]["type"] is None


async def test_stream_error_event(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(StreamError.litellm_upstream_dropped(["par", "tial"]))
    status, raw, _ = await stream_raw(client, chat_body())
    assert status == 200
    assert "[DONE]" not in raw
    assert raw.endswith('"code": "500"}}\n\n')
    events = parse_sse(raw)
    assert content_of(events) == "partial"
    assert events[-1]["error"]["message"].startswith("litellm.APIConnectionError")


async def test_stream_error_non_streaming_is_http_error(
    fake: FakeLLM, client: httpx.AsyncClient
) -> None:
    fake.enqueue(StreamError.rate_limited())
    resp = await client.post("/chat/completions", json=chat_body(stream=False))
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


async def test_disconnect_mid_stream(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Disconnect(["Hel", "lo"], delay=0.02))
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", "/chat/completions", json=chat_body()) as resp:
            assert resp.status_code == 200
            async for piece in resp.aiter_bytes():
                received += piece
    assert content_of(parse_sse(received.decode())) == "Hello"
    assert b"[DONE]" not in received
    assert fake.requests[0].cut_by_server
    assert not fake.requests[0].disconnected


async def test_disconnect_non_streaming(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Disconnect(["Hello"]))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/chat/completions", json=chat_body(stream=False))


async def test_hang_until_client_timeout(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue(Hang(after_chunks=["Hi"]))
    got: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        async with client.stream(
            "POST", "/chat/completions", json=chat_body(), timeout=httpx.Timeout(5.0, read=0.3)
        ) as resp:
            async for line in resp.aiter_lines():
                got.append(line)
    assert content_of(parse_sse("\n".join(got))) == "Hi"
    await asyncio.sleep(0.05)
    assert fake.requests[0].disconnected


async def test_stop_does_not_wait_for_hanging_streams() -> None:
    server = FakeLLM(api_key=None)
    await server.start()
    server.enqueue(Hang())
    async with httpx.AsyncClient(timeout=5.0) as http:

        async def consume() -> None:
            url = f"{server.base_url}/chat/completions"
            async with http.stream("POST", url, json=chat_body()) as resp:
                await resp.aread()

        task = asyncio.create_task(consume())
        await server.wait_for_requests(1)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1.0
        with pytest.raises(httpx.TransportError):
            await task


# -- raw, files, auth -----------------------------------------------------------------------------


async def test_raw_akashgen_and_file(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    pic = make_png(4, 4)
    url = fake.add_file("pic.webp", pic, "image/webp")
    fake.enqueue(Raw.akashgen(url))
    resp = await client.post("/chat/completions", json=chat_body(stream=False, model="AkashGen"))
    assert resp.json()["code"] == 200
    assert resp.json()["data"]["pic"] == url
    file = await client.get(url)
    assert file.content == pic
    assert file.headers["content-type"] == "image/webp"
    assert (await client.get(fake.file_url("missing.png"))).status_code == 404


async def test_raw_sse_verbatim(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    fake.enqueue(Raw.sse(body))
    _, raw, headers = await stream_raw(client, chat_body())
    assert raw.encode() == body
    assert headers["content-type"] == "text/event-stream; charset=utf-8"


async def test_auth(fake: FakeLLM) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        missing = await http.post("/chat/completions", json=chat_body())
        wrong = await http.post(
            "/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sk-wrong"}
        )
        models = await http.get("/models")
    assert missing.status_code == wrong.status_code == models.status_code == 401
    assert missing.json()["error"]["message"].startswith("You didn't provide an API key")
    assert wrong.json() == {
        "error": {
            "message": "Incorrect API key provided: sk-wr***ng. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert fake.pending == 0 and len(fake.chat_requests) == 2


async def test_no_api_key_accepts_anything() -> None:
    async with FakeLLM(api_key=None) as server, httpx.AsyncClient() as http:
        resp = await http.post(f"{server.base_url}/chat/completions", json=chat_body(False))
    assert resp.status_code == 200


# -- models ---------------------------------------------------------------------------------------


async def test_models_shapes(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    data = (await client.get("/models")).json()
    assert data["object"] == "list"
    assert data["data"][0] == {
        "id": "gpt-4o-mini",
        "object": "model",
        "created": 1721172741,
        "owned_by": "system",
    }
    fake.models = AKASHCHAT_MODELS
    fake.models_shape = "bare"
    bare = (await client.get("/models")).json()
    assert isinstance(bare, list)
    assert [m["id"] for m in bare] == [
        "openai-gpt-oss-120b",
        "Meta-Llama-3-3-70B-Instruct",
        "AkashGen",
    ]
    assert bare[2]["available"] is False and bare[0]["tokenLimit"] == 128000
    fake.models_shape = "openai"  # unavailable entries are left out, like the newer fork
    assert [m["id"] for m in (await client.get("/models")).json()["data"]] == [
        "openai-gpt-oss-120b",
        "Meta-Llama-3-3-70B-Instruct",
    ]
    fake.models_shape = "error"
    resp = await client.get("/models")
    assert resp.status_code == 500 and resp.json()["error"]["type"] == "server_error"
    assert fake.models_requests == 4


async def test_models_from_strings_in_bare_shape() -> None:
    async with (
        FakeLLM(api_key=None, models=["m1"], models_shape="bare") as server,
        httpx.AsyncClient() as http,
    ):
        bare = (await http.get(f"{server.base_url}/models")).json()
    assert bare[0]["id"] == bare[0]["name"] == "m1"
    assert bare[0]["available"] is True


# -- validation -----------------------------------------------------------------------------------


async def test_validation_errors_do_not_consume_replies(
    fake: FakeLLM, client: httpx.AsyncClient
) -> None:
    fake.enqueue(Stream(["kept"]))
    no_messages = await client.post("/chat/completions", json={"model": "gpt-4o-mini"})
    empty = await client.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
    bad_json = await client.post("/chat/completions", content=b"{nope")
    assert no_messages.status_code == empty.status_code == bad_json.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"
    assert empty.json()["error"]["code"] == "empty_array"
    assert fake.pending == 1


async def test_strict_models_and_context_length() -> None:
    async with (
        FakeLLM(api_key=None, strict_models=True, max_context=10) as server,
        httpx.AsyncClient(base_url=server.base_url) as http,
    ):
        unknown = await http.post("/chat/completions", json=chat_body(model="x"))
        long = [{"role": "user", "content": "word " * 20}]  # 100 chars -> 25 tokens
        too_long = await http.post("/chat/completions", json=chat_body(messages=long))
        fine = await http.post("/chat/completions", json=chat_body(stream=False))
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "message": "The model `x` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    assert too_long.status_code == 400
    assert too_long.json()["error"] == {
        "message": "This model's maximum context length is 10 tokens. However, your messages "
        "resulted in 25 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert fine.status_code == 200


async def test_unknown_path_is_json_404(client: httpx.AsyncClient) -> None:
    resp = await client.post("/no/such/path", json={})
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "Resource not found"


# -- images ---------------------------------------------------------------------------------------


async def test_images_default_b64_and_url(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    body = {"model": "dall-e-3", "prompt": "a small red square", "n": 1}
    b64 = (await client.post("/images/generations", json=body)).json()
    png = base64.b64decode(b64["data"][0]["b64_json"])
    assert png.startswith(PNG_MAGIC)
    assert isinstance(b64["created"], int)
    url_resp = (
        await client.post("/images/generations", json={**body, "response_format": "url"})
    ).json()
    url = url_resp["data"][0]["url"]
    assert "b64_json" not in url_resp["data"][0]
    assert url.startswith(fake.root_url + "/files/")
    assert (await client.get(url)).content.startswith(PNG_MAGIC)
    assert [r["prompt"] for r in fake.image_requests] == ["a small red square"] * 2


async def test_images_scripted(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue_image(
        ImageResult(b64=b"raw-bytes"),
        ImageResult(url="https://example.com/x.png"),
        Error.server_error(),
    )
    body = {"model": "dall-e-3", "prompt": "p", "response_format": "url"}
    first = (await client.post("/images/generations", json=body)).json()
    assert first["data"] == [{"b64_json": base64.b64encode(b"raw-bytes").decode()}]
    second = (await client.post("/images/generations", json=body)).json()
    assert second["data"] == [{"url": "https://example.com/x.png"}]
    third = await client.post("/images/generations", json=body)
    assert third.status_code == 500
    with pytest.raises(TypeError):
        fake.enqueue_image(Stream(["x"]))  # type: ignore[arg-type]


# -- audio transcriptions -------------------------------------------------------------------------

# Every byte value, and a line that looks like a multipart delimiter: 5146 bytes.
OGG = b"OggS\x00\x02" + bytes(range(256)) * 20 + b"\r\n--not-a-boundary\r\n"


async def transcribe(
    client: httpx.AsyncClient,
    *,
    files: dict[str, Any] | None = None,
    data: dict[str, str] | None = None,
) -> httpx.Response:
    if files is None:
        files = {"file": ("voice.ogg", OGG, "audio/ogg")}
    if data is None:
        data = {"model": "whisper-1", "response_format": "json"}
    return await client.post("/audio/transcriptions", files=files, data=data)


async def test_transcription_default_answer_and_record(
    fake: FakeLLM, client: httpx.AsyncClient
) -> None:
    resp = await transcribe(client, data={"model": "whisper-1", "language": "en"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {
        "text": f"transcript of voice.ogg ({len(OGG)} bytes)",
        "usage": {"type": "duration", "seconds": 3},  # ceil(5146 / 2000)
    }
    assert fake.transcription_requests() == [
        TranscriptionRequest(
            model="whisper-1",
            filename="voice.ogg",
            content_type="audio/ogg",
            data=OGG,
            response_format=None,
            fields={"model": "whisper-1", "language": "en"},
        )
    ]
    assert fake.requests[0].path == "/v1/audio/transcriptions"


async def test_transcription_queue(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue_transcription(
        "hello there",
        Transcription(text="", seconds=7),
        Transcription(text="tok", seconds=2, usage="tokens"),
        Error.rate_limited(retry_after=2),
        Raw(200, b"plain words", "text/plain"),
    )
    first = await transcribe(client)
    assert first.json() == {"text": "hello there", "usage": {"type": "duration", "seconds": 3}}
    assert (await transcribe(client)).json() == {
        "text": "",
        "usage": {"type": "duration", "seconds": 7},
    }
    tokens = (await transcribe(client)).json()
    assert tokens["text"] == "tok"
    assert tokens["usage"]["type"] == "tokens"
    assert tokens["usage"]["input_token_details"] == {"text_tokens": 0, "audio_tokens": 20}
    limited = await transcribe(client)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert (await transcribe(client)).content == b"plain words"
    assert (await transcribe(client)).json()["text"].startswith("transcript of voice.ogg")
    assert len(fake.transcription_requests()) == 6
    with pytest.raises(TypeError):
        fake.enqueue_transcription(Stream(["x"]))  # type: ignore[arg-type]


async def test_transcription_response_formats(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue_transcription(Transcription(text="hi", seconds=3.2), "plain")
    verbose = await transcribe(
        client, data={"model": "whisper-1", "response_format": "verbose_json"}
    )
    assert verbose.json() == {
        "task": "transcribe",
        "language": "english",
        "duration": 3.2,
        "text": "hi",
        "segments": [],
        "usage": {"type": "duration", "seconds": 4},
    }
    text = await transcribe(client, data={"model": "whisper-1", "response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "plain\n"
    srt = await transcribe(client, data={"model": "whisper-1", "response_format": "srt"})
    assert srt.status_code == 400
    assert srt.json()["error"]["param"] == "response_format"


async def test_transcription_validation(fake: FakeLLM, client: httpx.AsyncClient) -> None:
    fake.enqueue_transcription("kept")
    no_file = await client.post(
        "/audio/transcriptions", files={"x": ("a", b"1")}, data={"model": "m"}
    )
    no_name = await client.post(
        "/audio/transcriptions", files={"other": ("a", b"1")}, data={"model": "m", "file": "x"}
    )
    no_model = await transcribe(client, data={"response_format": "json"})
    as_json = await client.post("/audio/transcriptions", json={"model": "m", "file": "x"})
    for resp in (no_file, no_name, no_model, as_json):
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "invalid_request_error"
        assert resp.json()["error"]["code"] is None
    assert no_file.json()["error"] == {
        "message": "Missing required parameter: 'file'.",
        "type": "invalid_request_error",
        "param": "file",
        "code": None,
    }
    assert no_name.json()["error"]["param"] == "file"
    assert no_model.json()["error"]["param"] == "model"
    assert as_json.json()["error"]["message"] == "Could not parse multipart form"
    # Rejected forms are recorded (a body that is no form is not) and take no reply.
    assert [r.model for r in fake.transcription_requests()] == ["m", "m", None]
    assert fake.transcription_requests()[1].fields == {"model": "m", "file": "x"}
    assert fake.transcription_requests()[2].data == OGG
    assert (await transcribe(client)).json()["text"] == "kept"


async def test_transcription_auth(fake: FakeLLM) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as anonymous:
        missing = await transcribe(anonymous)
        bad = await anonymous.post(
            "/audio/transcriptions",
            files={"file": ("voice.ogg", OGG, "audio/ogg")},
            data={"model": "whisper-1"},
            headers={"Authorization": "Bearer sk-wrong-key"},
        )
    assert missing.status_code == bad.status_code == 401
    assert bad.json()["error"]["code"] == "invalid_api_key"
    assert fake.transcription_requests() == []


@pytest.mark.parametrize("setting", [False, 405])
async def test_transcription_route_absent(
    fake: FakeLLM, client: httpx.AsyncClient, setting: Literal[False, 405]
) -> None:
    fake.transcriptions = setting
    fake.enqueue_transcription("never")
    resp = await transcribe(client)
    if setting == 405:
        assert resp.status_code == 405
        assert resp.headers["allow"] == "GET"
        assert resp.json() == {"detail": "Method Not Allowed"}
    else:
        assert resp.status_code == 404
        assert resp.json()["error"]["message"] == "Resource not found"
    assert fake.transcription_requests() == []
    fake.transcriptions = True
    assert (await transcribe(client)).json()["text"] == "never"


async def test_transcription_constructor_flag() -> None:
    async with (
        FakeLLM(api_key=None, transcriptions=False) as server,
        httpx.AsyncClient(base_url=server.base_url) as http,
    ):
        assert (await transcribe(http)).status_code == 404


async def test_image_content_parts_are_checked_like_openai(
    fake: FakeLLM, client: httpx.AsyncClient
) -> None:
    png = base64.b64encode(make_png()).decode()

    def body(url: str) -> dict[str, Any]:
        parts = [
            {"type": "text", "text": "what is it?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        return chat_body(stream=False, messages=[{"role": "user", "content": parts}])

    ok = await client.post("/chat/completions", json=body(f"data:image/png;base64,{png}"))
    assert ok.status_code == 200
    # Bytes that are not the declared format, a MIME type that is not an image, broken base64.
    for url in (
        f"data:image/jpeg;base64,{png}",
        f"data:text/plain;base64,{png}",
        "data:image/png;base64,%%%",
    ):
        bad = await client.post("/chat/completions", json=body(url))
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["param"] == "messages.[0].content.[1].image_url"
        assert "Invalid image URL" in error["message"]
    unknown = chat_body(
        stream=False, messages=[{"role": "user", "content": [{"type": "video", "video": "x"}]}]
    )
    response = await client.post("/chat/completions", json=unknown)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.[0].content.[0].type"
