"""Transcription client tests, against the fake backend over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

import bot.llm.transcribe as transcribe_module
from bot.llm.errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMNotFoundError,
    LLMProtocolError,
    LLMRateLimitError,
    LLMResponseTooLargeError,
    LLMServerError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from bot.llm.transcribe import (
    LLMEndpointMissingError,
    Transcript,
    TranscriptionClient,
    is_missing_endpoint,
)
from bot.llm.transport import backend_http_client
from tests.fakes.openai import (
    Disconnect,
    Error,
    FakeLLM,
    Hang,
    Raw,
    Transcription,
    TranscriptionReply,
)

API_KEY = "sk-test"
VOICE = b"OggS\x00\x02" + bytes(range(256)) * 20  # 5126 bytes: three seconds by default
SECRET_WORDS = "my bank PIN is 4711"

Make = Callable[..., TranscriptionClient]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=API_KEY) as server:
        yield server


@pytest.fixture(params=["httpx", "httpx-aiohttp"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """httpx's own transport, and the aiohttp one the bot runs on (bot.llm.transport)."""
    client = (
        httpx.AsyncClient() if request.param == "httpx" else backend_http_client(max_connections=4)
    )
    async with client:
        yield client


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make(fake: FakeLLM, http: httpx.AsyncClient, sleeps: list[float]) -> Make:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def build(**options: Any) -> TranscriptionClient:
        settings: dict[str, Any] = {
            "http": http,
            "base_url": fake.base_url + "/",
            "api_key": API_KEY,
            "model": "whisper-1",
            "timeout": 5.0,
            "sleep": sleep,
            **options,
        }
        return TranscriptionClient(**settings)

    return build


async def voice(client: TranscriptionClient) -> Transcript:
    return await client.transcribe(filename="voice.ogg", data=VOICE, content_type="audio/ogg")


# -- the request and the answer -------------------------------------------------------------------


async def test_request_shape_and_default_answer(fake: FakeLLM, make: Make) -> None:
    transcript = await voice(make())
    assert transcript == Transcript(
        text=f"transcript of voice.ogg ({len(VOICE)} bytes)", seconds=3
    )
    [sent] = fake.transcription_requests()
    assert sent.model == "whisper-1"
    assert sent.filename == "voice.ogg"
    assert sent.content_type == "audio/ogg"
    assert sent.data == VOICE
    assert sent.response_format == "json"
    assert sent.fields == {"model": "whisper-1", "response_format": "json"}
    [recorded] = fake.requests
    assert recorded.path == "/v1/audio/transcriptions"
    assert recorded.headers["authorization"] == f"Bearer {API_KEY}"
    assert recorded.headers["accept"] == "application/json"
    assert recorded.headers["content-type"].startswith("multipart/form-data; boundary=")


async def test_no_key_sends_no_authorization(http: httpx.AsyncClient) -> None:
    async with FakeLLM(api_key=None) as server:
        client = TranscriptionClient(
            http=http, base_url=server.base_url, api_key="", model="m", timeout=5.0
        )
        await client.transcribe(filename="a.mp3", data=b"ID3", content_type="audio/mpeg")
        [recorded] = server.requests
        [sent] = server.transcription_requests()
    assert "authorization" not in recorded.headers
    assert (sent.model, sent.filename, sent.content_type) == ("m", "a.mp3", "audio/mpeg")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("hello", Transcript("hello", 3.0)),
        ("", Transcript("", 3.0)),  # silence is the caller's business
        (Transcription(text="hi", seconds=7), Transcript("hi", 7.0)),
        # gpt-4o-transcribe bills tokens and says nothing of the duration.
        (Transcription(text="hi", usage="tokens"), Transcript("hi", None)),
        (Transcription(text="hi", usage="none"), Transcript("hi", None)),
        (Raw.json({"text": "hi", "duration": 3.2}), Transcript("hi", 3.2)),
        (
            Raw.json({"text": "hi", "duration": 3.2, "usage": {"type": "duration", "seconds": 4}}),
            Transcript("hi", 4.0),
        ),
        (
            Raw.json({"text": "hi", "usage": {"type": "duration", "seconds": "4"}}),
            Transcript("hi"),
        ),
        (Raw.json({"text": "hi", "duration": True}), Transcript("hi")),
        (Raw.json({"text": "hi", "duration": -1}), Transcript("hi")),
    ],
)
async def test_answers(
    fake: FakeLLM, make: Make, reply: TranscriptionReply, expected: Transcript
) -> None:
    fake.enqueue_transcription(reply)
    assert await voice(make()) == expected


@pytest.mark.parametrize(
    "body",
    [
        Raw(200, b"hello there", "text/plain"),
        Raw(200, b"<html><title>Open WebUI</title></html>", "text/html"),
        Raw.json({"transcript": "hello"}),
        Raw.json({"text": None}),
        Raw.json(["hello"]),
    ],
)
async def test_no_transcript_is_a_protocol_error(fake: FakeLLM, make: Make, body: Raw) -> None:
    fake.enqueue_transcription(body)
    with pytest.raises(LLMProtocolError):
        await voice(make())
    assert len(fake.transcription_requests()) == 1


async def test_answer_is_read_within_a_bound(
    fake: FakeLLM, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transcribe_module, "MAX_BODY_BYTES", 1000)
    fake.enqueue_transcription("word " * 300)
    with pytest.raises(LLMResponseTooLargeError):
        await voice(make())


async def test_logs_hold_neither_audio_nor_text(
    fake: FakeLLM, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    fake.enqueue_transcription(SECRET_WORDS)
    with caplog.at_level(logging.DEBUG, logger="bot.llm.transcribe"):
        transcript = await voice(make())
    assert transcript.text == SECRET_WORDS
    assert f"{len(VOICE)} bytes" in caplog.text
    assert f"{len(SECRET_WORDS)} characters" in caplog.text
    assert SECRET_WORDS not in caplog.text
    assert "OggS" not in caplog.text
    assert "voice.ogg" not in caplog.text


# -- errors ---------------------------------------------------------------------------------------


async def test_wrong_key_is_an_auth_error(fake: FakeLLM, make: Make, sleeps: list[float]) -> None:
    with pytest.raises(LLMAuthError) as caught:
        await voice(make(api_key="sk-wrong-0123456789"))
    assert caught.value.status == 401
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-0123456789" not in str(caught.value)
    assert sleeps == []


async def test_rate_limit_is_retried_once_after_retry_after(
    fake: FakeLLM, make: Make, sleeps: list[float]
) -> None:
    fake.enqueue_transcription(Error.rate_limited(retry_after=2), "after the wait")
    assert (await voice(make())).text == "after the wait"
    assert sleeps == [2.0]
    assert len(fake.transcription_requests()) == 2


async def test_rate_limit_twice_is_raised(fake: FakeLLM, make: Make, sleeps: list[float]) -> None:
    fake.enqueue_transcription(Error.rate_limited(retry_after=2), Error.rate_limited(3), "unused")
    with pytest.raises(LLMRateLimitError) as caught:
        await voice(make())
    assert caught.value.retry_after == 3.0
    assert sleeps == [2.0]
    assert len(fake.transcription_requests()) == 2


async def test_long_retry_after_is_not_waited_for(
    fake: FakeLLM, make: Make, sleeps: list[float]
) -> None:
    fake.enqueue_transcription(Error.rate_limited(retry_after=30), "unused")
    with pytest.raises(LLMRateLimitError) as caught:
        await voice(make())
    assert caught.value.retry_after == 30.0
    assert sleeps == []


async def test_server_error_is_retried_once(
    fake: FakeLLM, make: Make, sleeps: list[float]
) -> None:
    fake.enqueue_transcription(Error.server_error(), Error.plaintext_500(), "unused")
    with pytest.raises(LLMServerError) as caught:
        await voice(make())
    assert caught.value.status == 500
    assert len(sleeps) == 1 and 0.0 <= sleeps[0] <= 1.0
    assert len(fake.transcription_requests()) == 2


async def test_error_inside_a_success_is_raised(fake: FakeLLM, make: Make) -> None:
    wrapped = Raw.json({"error": {"message": "model overloaded", "code": "503"}})
    fake.enqueue_transcription(wrapped, wrapped)
    with pytest.raises(LLMServerError, match="model overloaded"):
        await voice(make())


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (
            Error(400, {"error": {"message": "Audio file is too short", "param": "file"}}),
            LLMBadRequestError,
        ),
        (Error.model_not_found("whisper-9"), LLMNotFoundError),
        (Error.litellm_unknown_model("whisper-9"), LLMNotFoundError),
    ],
)
async def test_client_errors_are_not_retried(
    fake: FakeLLM, make: Make, sleeps: list[float], reply: Error, error: type[LLMError]
) -> None:
    fake.enqueue_transcription(reply)
    with pytest.raises(error) as caught:
        await voice(make())
    # A missing model is the configuration's fault, not a backend without transcription.
    assert not is_missing_endpoint(caught.value)
    assert sleeps == []


@pytest.mark.parametrize(
    ("setting", "status"),
    [(False, 404), (405, 405)],
)
async def test_missing_endpoint(
    fake: FakeLLM, make: Make, sleeps: list[float], setting: Any, status: int
) -> None:
    fake.transcriptions = setting
    with pytest.raises(LLMNotFoundError) as caught:
        await voice(make())
    assert isinstance(caught.value, LLMEndpointMissingError)
    assert is_missing_endpoint(caught.value)
    assert caught.value.status == status
    assert sleeps == []


@pytest.mark.parametrize(
    "body",
    [b"404 page not found", b'{"detail":"Not Found"}'],  # Ollama, FastAPI
)
async def test_other_404_pages_mean_a_missing_endpoint(
    fake: FakeLLM, make: Make, body: bytes
) -> None:
    fake.enqueue_transcription(Raw(404, body, "text/plain"))
    with pytest.raises(LLMEndpointMissingError):
        await voice(make())


async def test_timeout(fake: FakeLLM, make: Make) -> None:
    fake.enqueue_transcription(Hang())
    with pytest.raises(LLMTimeoutError) as caught:
        await voice(make(timeout=0.3))
    assert caught.value.seconds == 0.3
    assert len(fake.transcription_requests()) == 1  # a slow backend is not asked twice


async def test_connection_cut_is_retried(fake: FakeLLM, make: Make, sleeps: list[float]) -> None:
    fake.enqueue_transcription(Disconnect([]), "second try")
    assert (await voice(make())).text == "second try"
    assert len(sleeps) == 1


async def test_unreachable_backend(http: httpx.AsyncClient, sleeps: list[float]) -> None:
    async with FakeLLM() as server:
        base_url = server.base_url

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    client = TranscriptionClient(
        http=http, base_url=base_url, api_key=None, model="m", timeout=5.0, sleep=sleep
    )
    with pytest.raises(LLMUnavailableError):
        await voice(client)
    assert len(sleeps) == 1
