"""Backend client tests, fed with the providers' captured responses wherever one exists."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.llm.backends import Action, BackendHealth, BackendSpec, decide
from bot.llm.client import LLMClient, LLMTimeouts
from bot.llm.dialects import retry_after
from bot.llm.errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMContextLengthError,
    LLMError,
    LLMHTTPError,
    LLMNotFoundError,
    LLMProtocolError,
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from bot.llm.policy import RETRY_AFTER_CAP, RetryPolicy
from bot.llm.router import Backend as RoutedBackend
from bot.llm.router import BackendRouter
from bot.llm.types import ChatEvent, ChatMessage, ModelInfo, StreamEnd, TextDelta, Usage

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
BASE_URL = "https://llm.example/v1"
API_KEY = "sk-test-0123456789abcdef"
MESSAGES = [ChatMessage("system", "Be brief."), ChatMessage("user", "Why do otters hold hands?")]

PROMPT = (
    "Hello! Please tell me, in one or two short sentences, why otters hold hands while they sleep."
)
LITELLM_ANSWER = (
    "Hello from the LiteLLM mock. This reply is streamed in several chunks so the bot can edit "
    "its message."
)
MOCK_AI_ANSWER = "Hello. It's nice to meet you."
MOCKLLM_STREAM_ANSWER = "I don't know the answer to that."
OTTERS = (
    "Otters are playful semi-aquatic mammals that hold hands while sleeping so they do not "
    "drift apart. "
)
# What both killed-upstream captures delivered before the connection died.
PARTIAL_LONG_ANSWER = "Mock stream for: " + OTTERS * 7 + "Otters are playful semi-aquatic mammals "


# -- fake backend ---------------------------------------------------------------------------------


class FakeStream(httpx.AsyncByteStream):
    """A response body sent in small pieces, then optionally an error or an endless silence."""

    def __init__(
        self,
        body: bytes,
        *,
        piece: int = 37,
        error: Exception | None = None,
        hang: bool = False,
        keepalive: float | None = None,
    ) -> None:
        self.body = body
        self.piece = piece
        self.error = error
        self.hang = hang
        self.keepalive = keepalive  # then SSE comments at this interval, without end
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.piece):
            yield self.body[start : start + self.piece]
        if self.error is not None:
            raise self.error
        while self.keepalive is not None:
            await asyncio.sleep(self.keepalive)
            yield b": keep-alive\n\n"
        if self.hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


Reply = Callable[[httpx.Request], httpx.Response]


@dataclass
class Backend:
    """Answers each request with the next reply; the last one repeats."""

    replies: list[Reply | Exception]
    requests: list[httpx.Request] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        response = reply(request)
        if isinstance(response.stream, FakeStream):
            self.streams.append(response.stream)
        return response


def reply(
    body: bytes | str,
    *,
    status: int = 200,
    content_type: str | None = "text/event-stream",
    headers: Iterable[tuple[str, str]] = (),
    error: Exception | None = None,
    hang: bool = False,
    keepalive: float | None = None,
) -> Reply:
    raw = body.encode() if isinstance(body, str) else body
    all_headers = list(headers)
    if content_type is not None:
        all_headers.append(("content-type", content_type))

    def make(request: httpx.Request) -> httpx.Response:
        stream = FakeStream(raw, error=error, hang=hang, keepalive=keepalive)
        return httpx.Response(status, headers=all_headers, stream=stream, request=request)

    return make


def fixture(case: str, **kwargs: Any) -> Reply:
    """The captured response `provider/name.ext`, with the status and headers captured with it."""
    body_path = FIXTURES / case
    headers_path = body_path.with_name(body_path.stem + ".headers.txt")
    status = 200
    headers: list[tuple[str, str]] = []
    if headers_path.exists():
        status_line, *lines = headers_path.read_bytes().decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        for line in lines:
            if not line:
                break
            name, _, value = line.partition(":")
            # The fake stream delivers the exact body; framing headers would only mislead.
            if name.lower() not in ("content-length", "transfer-encoding"):
                headers.append((name, value.strip()))
    else:
        headers.append(("content-type", "application/json"))
    kwargs.setdefault("status", status)
    return reply(body_path.read_bytes(), content_type=None, headers=headers, **kwargs)


def sse(*chunks: dict[str, Any] | str, done: bool = True, sep: str = "\n\n") -> str:
    events = [c if isinstance(c, str) else json.dumps(c) for c in chunks]
    if done:
        events.append("[DONE]")
    return "".join(f"data: {e}{sep}" for e in events)


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    delta.update(extra.pop("delta", {}))
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


@dataclass
class Harness:
    backend: Backend
    client: LLMClient  # one attempt
    router: BackendRouter  # the client as the only backend: retries, cooldowns
    sleeps: list[float]


HarnessFactory = Callable[..., Harness]


@pytest.fixture
async def make() -> AsyncIterator[HarnessFactory]:
    opened: list[httpx.AsyncClient] = []

    def factory(
        *replies: Reply | Exception,
        api_key: str | None = API_KEY,
        timeouts: LLMTimeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> Harness:
        backend = Backend(list(replies))
        http = httpx.AsyncClient(transport=httpx.MockTransport(backend))
        opened.append(http)
        sleeps: list[float] = []
        now = [0.0]  # the backends' clock, which the fake sleep advances

        async def fake_sleep(delay: float) -> None:
            sleeps.append(delay)
            now[0] += delay

        timeouts = timeouts or LLMTimeouts()
        client = LLMClient(
            http=http,
            base_url=BASE_URL,
            api_key=api_key,
            timeouts=timeouts,
            retry=retry or RetryPolicy(),
            sleep=fake_sleep,
        )
        spec = BackendSpec(name="backend", base_url=BASE_URL, api_key=api_key)
        router = BackendRouter(
            [RoutedBackend(spec, client, BackendHealth(spec, clock=lambda: now[0]))],
            first_token_timeout=timeouts.first_token,
            retry=retry or RetryPolicy(),
            sleep=fake_sleep,
        )
        return Harness(backend, client, router, sleeps)

    yield factory
    for http in opened:
        await http.aclose()


NO_RETRY = RetryPolicy(max_retries=0)


async def answer(client: LLMClient | BackendRouter, **kwargs: Any) -> tuple[list[str], StreamEnd]:
    """The text pieces and the final event; checks the stream's contract on the way."""
    events: list[ChatEvent] = [
        e async for e in client.stream_chat(model="gpt-4o-mini", messages=MESSAGES, **kwargs)
    ]
    assert events, "a stream always ends with StreamEnd"
    *deltas, end = events
    assert isinstance(end, StreamEnd)
    assert all(isinstance(d, TextDelta) and d.text for d in deltas)
    return [d.text for d in deltas if isinstance(d, TextDelta)], end


async def failed_answer(client: LLMClient | BackendRouter) -> tuple[str, LLMError]:
    """The text shown before the stream failed, and the error."""
    shown: list[str] = []
    with pytest.raises(LLMError) as caught:
        async for event in client.stream_chat(model="gpt-4o-mini", messages=MESSAGES):
            assert isinstance(event, TextDelta), "no StreamEnd after a failure"
            shown.append(event.text)
    return "".join(shown), caught.value


# -- the request ----------------------------------------------------------------------------------


async def test_request_has_openai_shape_url_and_key(make: HarnessFactory) -> None:
    h = make(fixture("litellm/stream-include-usage.sse"))

    await answer(h.client)

    (request,) = h.backend.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(request.content) == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Why do otters hold hands?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_max_tokens_and_temperature_are_sent_only_when_set(make: HarnessFactory) -> None:
    h = make(fixture("litellm/stream-no-usage.sse"))

    await answer(h.client, max_tokens=256, temperature=0.0)

    body = json.loads(h.backend.requests[0].content)
    assert body["max_tokens"] == 256
    assert body["temperature"] == 0.0


async def test_no_authorization_header_without_key(make: HarnessFactory) -> None:
    h = make(fixture("mockllm/stream-no-usage.sse"), api_key=None)

    await answer(h.client)

    assert "authorization" not in h.backend.requests[0].headers


async def test_timeouts_are_set_per_request(make: HarnessFactory) -> None:
    timeouts = LLMTimeouts(connect=3.0, first_token=20.0, idle=7.0, total=100.0)
    h = make(fixture("mockllm/stream-no-usage.sse"), timeouts=timeouts)

    await answer(h.client)

    assert h.backend.requests[0].extensions["timeout"] == {
        "connect": 3.0,
        "read": 7.0,
        "write": 7.0,
        "pool": 3.0,
    }


# -- captured streams -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "text", "usage"),
    [
        # first chunk carries role and content; choices omit finish_reason; usage chunk has
        # one choice with an empty delta
        ("litellm/stream-include-usage.sse", LITELLM_ANSWER, Usage(29, 23)),
        ("litellm/stream-no-usage.sse", LITELLM_ANSWER, None),
        # role-only first chunk; usage moved into a separate chunk
        ("litellm/proxied-stream-include-usage.sse", MOCK_AI_ANSWER, Usage(34, 12)),
        ("litellm/proxied-stream-no-usage.sse", MOCK_AI_ANSWER, None),
        # usage inside the finish chunk, whose delta is {}
        ("mock-ai-api/stream-include-usage.sse", MOCK_AI_ANSWER, Usage(34, 12)),
        ("mock-ai-api/stream-no-usage.sse", MOCK_AI_ANSWER, Usage(34, 12)),
        (
            "mock-ai-api/stream-multichunk-mock-delay.sse",
            "Mock stream for: " + PROMPT,
            Usage(34, 40),
        ),
        # last content chunk carries finish_reason; no `created`; no usage
        ("dwmkerr-mock-llm/stream-include-usage.sse", PROMPT, None),
        ("dwmkerr-mock-llm/stream-no-usage.sse", PROMPT, None),
        # one character per chunk, new id per chunk, "content": null and "role": null
        ("mockllm/stream-include-usage.sse", MOCKLLM_STREAM_ANSWER, None),
        ("mockllm/stream-no-usage.sse", MOCKLLM_STREAM_ANSWER, None),
    ],
)
async def test_captured_stream_reassembles_the_answer(
    make: HarnessFactory, case: str, text: str, usage: Usage | None
) -> None:
    h = make(fixture(case))

    pieces, end = await answer(h.client)

    assert "".join(pieces) == text
    assert end == StreamEnd(finish_reason="stop", usage=usage)
    assert h.sleeps == []
    assert h.backend.streams[0].closed


async def test_mockllm_one_character_chunks_are_all_delivered(make: HarnessFactory) -> None:
    h = make(fixture("mockllm/stream-include-usage.sse"))

    pieces, _ = await answer(h.client)

    assert pieces == list(MOCKLLM_STREAM_ANSWER)


# -- synthetic stream shapes ----------------------------------------------------------------------


async def test_openai_usage_chunk_with_empty_choices(make: HarnessFactory) -> None:
    body = sse(
        chunk(delta={"role": "assistant"}),
        chunk("Otters "),
        chunk("float.", finish="stop"),
        {
            "id": "chatcmpl-1",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        },
    )
    h = make(reply(body))

    pieces, end = await answer(h.client)

    assert "".join(pieces) == "Otters float."
    assert end == StreamEnd("stop", Usage(12, 3, estimated=False))


async def test_usage_in_last_content_chunk(make: HarnessFactory) -> None:
    body = sse(
        chunk("Hi"),
        chunk(" there", finish="length", usage={"prompt_tokens": 5, "completion_tokens": 2}),
    )
    h = make(reply(body))

    pieces, end = await answer(h.client)

    assert pieces == ["Hi", " there"]
    assert end == StreamEnd("length", Usage(5, 2))


async def test_last_non_zero_usage_wins(make: HarnessFactory) -> None:
    body = sse(
        chunk("a", usage={"prompt_tokens": 5, "completion_tokens": 1}),
        chunk("b", finish="stop", usage={"prompt_tokens": 5, "completion_tokens": 2}),
        chunk(usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
    )
    h = make(reply(body))

    _, end = await answer(h.client)

    assert end.usage == Usage(5, 2)


async def test_absurd_usage_is_not_believed(make: HarnessFactory, caplog: Any) -> None:
    # A backend claiming 2**63 - 1 prompt tokens: stored, it overflowed every sum over usage.
    body = sse(
        chunk("Otters "),
        chunk("float.", finish="stop"),
        {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 2**63 - 1,
                                                      "completion_tokens": 3}},
    )  # fmt: skip
    h = make(reply(body))

    with caplog.at_level(logging.WARNING, logger="bot.llm.dialects"):
        pieces, end = await answer(h.client)

    assert "".join(pieces) == "Otters float."
    assert end == StreamEnd("stop", None)  # so the chat service counts the tokens itself
    [warning] = [r for r in caplog.records if r.name == "bot.llm.dialects"]
    assert "prompt_tokens=9223372036854775807" in warning.getMessage()
    assert "Otters" not in warning.getMessage()


async def test_absurd_usage_does_not_replace_an_earlier_report(make: HarnessFactory) -> None:
    body = sse(
        chunk("a", finish="stop", usage={"prompt_tokens": 5, "completion_tokens": 1}),
        chunk(usage={"prompt_tokens": -5, "completion_tokens": 12.7}),
    )
    h = make(reply(body))

    _, end = await answer(h.client)

    assert end.usage == Usage(5, 1)


async def test_akashchat_stream_ends_without_done_and_zero_usage_is_absent(
    make: HarnessFactory,
) -> None:
    # Go's json.Encoder adds a newline, so every event ends with "\n\n\n"; no [DONE] is sent.
    body = sse(
        {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "Otters "}}]},
        {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "hold hands."}}]},
        {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}},
        done=False,
        sep="\n\n\n",
    )  # fmt: skip
    h = make(reply(body, content_type="text/event-stream"))

    pieces, end = await answer(h.client)

    assert "".join(pieces) == "Otters hold hands."
    assert end == StreamEnd("stop", None)


async def test_reasoning_content_is_not_shown_as_answer(make: HarnessFactory) -> None:
    body = sse(
        chunk(delta={"role": "assistant", "reasoning_content": "The user asks about otters."}),
        chunk(None, delta={"reasoning_content": " Keep it short."}),
        chunk("They sleep", delta={"reasoning_content": None}),
        chunk(" holding paws.", finish="stop"),
    )
    h = make(reply(body))

    pieces, end = await answer(h.client)

    assert "".join(pieces) == "They sleep holding paws."
    assert end.finish_reason == "stop"


async def test_keepalive_comments_event_id_fields_and_crlf(make: HarnessFactory) -> None:
    first = json.dumps(chunk("Hello"))
    second = json.dumps(chunk(" world", finish="stop"))
    body = (
        ": ping\r\n\r\n"
        f"event: message\r\nid: 1\r\ndata: {first}\r\n\r\n"
        ": keep-alive\r\n"
        "retry: 3000\r\n\r\n"
        f"id: 2\r\ndata: {second}\r\n\r\n"
        "data: [DONE]\r\n\r\n"
    )
    h = make(reply(body))

    pieces, end = await answer(h.client)

    assert "".join(pieces) == "Hello world"
    assert end == StreamEnd("stop", None)


async def test_content_parts_list_is_joined(make: HarnessFactory) -> None:
    body = sse(
        chunk(None, delta={"content": [{"type": "text", "text": "Otters"}]}),
        chunk(" rest.", finish="stop"),
    )
    h = make(reply(body))

    pieces, _ = await answer(h.client)

    assert "".join(pieces) == "Otters rest."


async def test_invalid_json_event_is_skipped_with_a_warning(
    make: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body = sse(chunk("Otters "), '{"choices": [broken', chunk("nap.", finish="stop"))
    h = make(reply(body))

    with caplog.at_level(logging.WARNING, logger="bot.llm.client"):
        pieces, end = await answer(h.client)

    assert "".join(pieces) == "Otters nap."
    assert end.finish_reason == "stop"
    assert any("not valid JSON" in r.getMessage() for r in caplog.records)


async def test_stream_of_only_invalid_json_is_a_protocol_error(make: HarnessFactory) -> None:
    h = make(reply(sse("{oops", "not json either")))

    shown, error = await failed_answer(h.client)

    assert shown == ""
    assert isinstance(error, LLMProtocolError)
    assert "2 events were not valid JSON" in str(error)


async def test_chunks_that_json_allows_but_strict_parsers_refuse_are_read(
    make: HarnessFactory,
) -> None:
    # NaN in a field the bot does not use, and an emoji split into two escaped halves.
    nan = '{"choices":[{"index":0,"delta":{"content":"Otters "}}],"x_cost":NaN}'
    halves = '{"choices":[{"index":0,"delta":{"content":"swim \\ud83e"}}]}'
    h = make(reply(sse(nan, halves, chunk("\udda6", finish="stop"))))

    pieces, end = await answer(h.client)

    assert "".join(pieces) == "Otters swim 🦦"
    assert end.finish_reason == "stop"


async def test_half_a_character_without_its_partner_is_replaced(make: HarnessFactory) -> None:
    h = make(reply(sse(chunk("a\udda6b"), chunk("c\ud83e", finish="stop"))))

    pieces, _ = await answer(h.client)

    assert "".join(pieces) == "a\ufffdbc\ufffd"
    "".join(pieces).encode("utf-8")  # Telegram is sent UTF-8


async def test_empty_stream_is_a_protocol_error(make: HarnessFactory) -> None:
    h = make(reply(""))

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMProtocolError)


async def test_sse_with_wrong_content_type_is_still_parsed(make: HarnessFactory) -> None:
    h = make(reply(sse(chunk("Otters", finish="stop")), content_type="text/plain; charset=utf-8"))

    pieces, _ = await answer(h.client)

    assert pieces == ["Otters"]


def raw_sse(text: str) -> str:
    """One content event with `text` written as is (not \\u-escaped), then [DONE]."""
    event = json.dumps(chunk(text, finish="stop"), ensure_ascii=False)
    return f"data: {event}\n\ndata: [DONE]\n\n"


async def test_a_stream_in_the_charset_its_content_type_names_is_decoded_in_it(
    make: HarnessFactory,
) -> None:
    body = raw_sse("Привет, выдры").encode("windows-1251")
    h = make(reply(body, content_type="text/event-stream; charset=windows-1251"))

    pieces, _ = await answer(h.client)

    assert pieces == ["Привет, выдры"]


async def test_a_stream_in_an_unknown_charset_is_read_as_utf8(
    make: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body = raw_sse("Выдры 🦦").encode("utf-8")
    h = make(reply(body, content_type="text/event-stream; charset=x-no-such-charset"))

    with caplog.at_level(logging.WARNING):
        pieces, _ = await answer(h.client)

    assert pieces == ["Выдры 🦦"]
    assert "x-no-such-charset" in caplog.text


async def test_html_page_with_200_is_a_protocol_error(make: HarnessFactory) -> None:
    h = make(reply("<html><body>Open WebUI</body></html>", content_type="text/html"))

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMProtocolError)
    assert "base URL" in str(error)


# -- backends that ignore stream=true -------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "text", "usage"),
    [
        ("litellm/nonstream.json", LITELLM_ANSWER, Usage(10, 20)),
        ("litellm/proxied-nonstream.json", MOCK_AI_ANSWER, Usage(34, 12)),
        ("mock-ai-api/nonstream.json", MOCK_AI_ANSWER, Usage(34, 12)),
        # no usage, no created, no choice index
        ("dwmkerr-mock-llm/nonstream.json", PROMPT, None),
        ("mockllm/nonstream.json", "Otters hold hands so they do not drift apart.", Usage(33, 11)),
        # usage all zeros: placeholders, not real counts
        (
            "akashchat-api-go/nonstream-zero-usage.json",
            "Hello! I'm doing well, thank you for asking...",
            None,
        ),
    ],
)
async def test_non_stream_completion_is_accepted(
    make: HarnessFactory, case: str, text: str, usage: Usage | None
) -> None:
    h = make(fixture(case))

    pieces, end = await answer(h.client)

    assert pieces == [text]
    assert end == StreamEnd("stop", usage)


async def test_akashchat_error_envelope_with_200_is_a_server_error(make: HarnessFactory) -> None:
    h = make(fixture("akashchat-api-go/chat-akashgen-error-500.json"), retry=NO_RETRY)

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMServerError)
    assert error.message == "Error Model."


async def test_akashchat_image_job_is_not_a_chat_answer(make: HarnessFactory) -> None:
    h = make(fixture("akashchat-api-go/chat-akashgen-image.json"))

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMProtocolError)
    assert "image" in str(error)


# -- error statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "error_class", "status", "message"),
    [
        ("litellm/error-400-bad-key-no-db.json", LLMBadRequestError, 400, "No connected db."),
        (
            "litellm/error-400-unknown-model.json",
            LLMNotFoundError,
            400,
            "/chat/completions: Invalid model name passed in model=no-such-model. "
            "Call `/v1/models` to view available models for your key.",
        ),
        (
            "litellm/error-400-images-response-format-unsupported.json",
            LLMBadRequestError,
            400,
            None,
        ),
        (
            "litellm/error-401-empty-bearer.json",
            LLMAuthError,
            401,
            "Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix.",
        ),
        (
            "litellm/error-429.json",
            LLMRateLimitError,
            429,
            "litellm.RateLimitError: this is a mock rate limit error LiteLLM: model group "
            "'rate-limited' failed with the error above. No fallback was attempted.",
        ),
        ("litellm/error-429-stream-request.json", LLMRateLimitError, 429, None),
        ("litellm/error-429-rpm-limit.json", LLMRateLimitError, 429, None),
        ("litellm/proxied-error-429.json", LLMRateLimitError, 429, None),
        ("litellm/error-500.json", LLMServerError, 500, None),
        (
            "litellm/error-500-plaintext-auth-crash.txt",
            LLMServerError,
            500,
            "Internal Server Error",
        ),
        ("litellm/error-529-stream-first-chunk.json", LLMServerError, 529, None),
        ("mock-ai-api/error-401.json", LLMAuthError, 401, "Mock scenario mock-401 triggered"),
        ("mock-ai-api/error-404-unknown-path.json", LLMNotFoundError, 404, "Resource not found"),
        ("mock-ai-api/error-429.json", LLMRateLimitError, 429, "Mock scenario mock-429 triggered"),
        ("mock-ai-api/error-500.json", LLMServerError, 500, "Mock scenario mock-500 triggered"),
        ("mock-ai-api/error-503.json", LLMServerError, 503, "Mock scenario mock-503 triggered"),
        (
            "dwmkerr-mock-llm/error-401-bad-key.json",
            LLMAuthError,
            401,
            "Incorrect API key provided.",
        ),
        (
            "dwmkerr-mock-llm/error-404-unknown-model.json",
            LLMNotFoundError,
            404,
            "The model `no-such-model` does not exist or you do not have access to it.",
        ),
        (
            "dwmkerr-mock-llm/error-404-images-unsupported.json",
            LLMNotFoundError,
            404,
            "Not Found: Cannot POST /v1/images/generations",
        ),
        (
            "dwmkerr-mock-llm/error-429.json",
            LLMRateLimitError,
            429,
            "Rate limit reached for requests",
        ),
        (
            "dwmkerr-mock-llm/error-500.json",
            LLMServerError,
            500,
            "The server had an error while processing your request. Sorry about that!",
        ),
        (
            "dwmkerr-mock-llm/error-500-multimodal-content.json",
            LLMServerError,
            500,
            "SyntaxError: Expected ',' or '}' after property value in JSON at position 174",
        ),
        (
            "mockllm/error-400-no-user-message.json",
            LLMBadRequestError,
            400,
            "No user message found in request",
        ),
        ("mockllm/error-404-images.json", LLMNotFoundError, 404, "Not Found"),
        ("mockllm/error-500-missing-messages.txt", LLMServerError, 500, "Internal Server Error"),
    ],
)
async def test_captured_error_status_maps_to_error_class(
    make: HarnessFactory,
    case: str,
    error_class: type[LLMHTTPError],
    status: int,
    message: str | None,
) -> None:
    h = make(fixture(case), retry=NO_RETRY)

    shown, error = await failed_answer(h.client)

    assert shown == ""
    assert type(error) is error_class
    assert isinstance(error, LLMHTTPError)
    assert error.status == status
    if message is not None:
        assert error.message == message
    assert len(error.message) <= 300
    assert h.backend.streams[0].closed


async def test_openai_error_code_is_kept(make: HarnessFactory) -> None:
    h = make(fixture("litellm/error-401-empty-bearer.json"), retry=NO_RETRY)

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMAuthError)
    assert error.code == "401"


async def test_akashchat_error_envelope_with_500(make: HarnessFactory) -> None:
    body = (FIXTURES / "akashchat-api-go/chat-akashgen-error-500.json").read_bytes()
    h = make(reply(body, status=500, content_type="application/json"), retry=NO_RETRY)

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMServerError)
    assert error.message == "Error Model."


@pytest.mark.parametrize(
    ("body", "error_class"),
    [
        (
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens. However, "
                    "your messages resulted in 9000 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
            LLMContextLengthError,
        ),
        (
            # vLLM: no code, only the wording
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens. However, you "
                "requested 5000 tokens.",
                "type": "BadRequestError",
                "code": 400,
            },
            LLMContextLengthError,
        ),
        ({"detail": "Too many tokens in the prompt"}, LLMContextLengthError),
        (
            # Google's compatibility layer wraps the error in a list and uses 400 for a bad key
            [{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                        "status": "INVALID_ARGUMENT"}}],
            LLMAuthError,
        ),
        ({"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}, LLMBadRequestError),
    ],
)  # fmt: skip
async def test_bad_request_variants(
    make: HarnessFactory, body: Any, error_class: type[LLMHTTPError]
) -> None:
    h = make(reply(json.dumps(body), status=400, content_type="application/json"))

    _, error = await failed_answer(h.client)

    assert type(error) is error_class
    assert h.sleeps == []


async def test_empty_error_body_uses_reason_phrase(make: HarnessFactory) -> None:
    h = make(reply(b"", status=502, content_type=None), retry=NO_RETRY)

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMServerError)
    assert error.message == "Bad Gateway"


async def test_html_error_page_uses_its_title(make: HarnessFactory) -> None:
    page = "<html><head><title>504 Gateway Time-out</title></head><body><h1>504</h1></body></html>"
    h = make(reply(page, status=504, content_type="text/html"), retry=NO_RETRY)

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMServerError)
    assert error.message == "504 Gateway Time-out"


async def test_long_error_message_is_truncated(make: HarnessFactory) -> None:
    body = {"error": {"message": "x" * 5000, "type": "invalid_request_error"}}
    h = make(reply(json.dumps(body), status=400, content_type="application/json"))

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMBadRequestError)
    assert len(error.message) <= 300
    assert error.message.endswith("…")


async def test_api_key_never_reaches_messages_or_logs(
    make: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": {"message": f"Key {API_KEY} is over quota", "code": "500"}}
    h = make(reply(json.dumps(body), status=500, content_type="application/json"))

    with caplog.at_level(logging.DEBUG):
        _, error = await failed_answer(h.router)

    assert API_KEY not in str(error)
    assert "Key *** is over quota" in str(error)
    assert len(h.sleeps) == 3
    assert all(API_KEY not in record.getMessage() for record in caplog.records)


# -- errors inside a 200 stream -------------------------------------------------------------------


async def test_in_stream_auth_error_is_raised_without_retry(make: HarnessFactory) -> None:
    h = make(fixture("dwmkerr-mock-llm/stream-error-401-bad-key.sse"))

    shown, error = await failed_answer(h.router)

    assert shown == ""
    assert isinstance(error, LLMAuthError)
    assert error.message == "Incorrect API key provided."
    assert error.code == "invalid_api_key"
    assert len(h.backend.requests) == 1


async def test_in_stream_rate_limit_is_retried_then_raised(make: HarnessFactory) -> None:
    h = make(fixture("dwmkerr-mock-llm/stream-error-429.sse"))

    _, error = await failed_answer(h.router)

    assert isinstance(error, LLMRateLimitError)
    assert error.message == "Rate limit reached for requests"
    assert len(h.backend.requests) == 4
    assert len(h.sleeps) == 3


async def test_in_stream_error_after_text_is_raised_without_retry(make: HarnessFactory) -> None:
    h = make(fixture("litellm/stream-error-upstream-dropped.sse"))

    shown, error = await failed_answer(h.router)

    assert shown == PARTIAL_LONG_ANSWER
    assert isinstance(error, LLMServerError)
    assert error.message.startswith("litellm.APIConnectionError: APIConnectionError:")
    assert len(h.backend.requests) == 1
    assert h.sleeps == []


@pytest.mark.parametrize(
    ("error", "error_class"),
    [
        ({"message": "boom", "type": "mystery"}, LLMServerError),
        ({"message": "slow down", "type": "rate_limit_error"}, LLMRateLimitError),
        ({"message": "nope", "code": 403}, LLMAuthError),
        ({"message": "too long", "code": "context_length_exceeded"}, LLMContextLengthError),
    ],
)
async def test_in_stream_error_maps_by_code_and_type(
    make: HarnessFactory, error: dict[str, Any], error_class: type[LLMHTTPError]
) -> None:
    h = make(reply(sse({"error": error}, done=False)), retry=NO_RETRY)

    _, raised = await failed_answer(h.client)

    assert type(raised) is error_class
    assert raised.message == error["message"]


async def test_error_event_type_is_an_error(make: HarnessFactory) -> None:
    h = make(reply("event: error\ndata: upstream exploded\n\n"), retry=NO_RETRY)

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMServerError)
    assert error.message == "upstream exploded"


# -- broken connections ---------------------------------------------------------------------------


async def test_truncated_stream_raises_after_the_text_already_shown(make: HarnessFactory) -> None:
    # curl saw "transfer closed with outstanding read data remaining"; httpx raises this.
    lost = httpx.RemoteProtocolError("peer closed connection without sending complete body")
    h = make(fixture("mock-ai-api/stream-truncated-server-killed.sse", error=lost))

    shown, error = await failed_answer(h.client)

    assert shown == PARTIAL_LONG_ANSWER
    assert type(error) is LLMUnavailableError
    assert str(error) == "connection to the backend was lost mid-answer"
    assert len(h.backend.requests) == 1
    assert h.backend.streams[0].closed


async def test_read_error_mid_answer_is_not_retried(make: HarnessFactory) -> None:
    h = make(reply(sse(chunk("Otters"), done=False), error=httpx.ReadError("reset by peer")))

    shown, error = await failed_answer(h.client)

    assert shown == "Otters"
    assert str(error) == "connection to the backend was lost mid-answer"
    assert h.sleeps == []


async def test_disconnect_before_any_text_is_retried(make: HarnessFactory) -> None:
    lost = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    h = make(
        reply(sse(chunk(delta={"role": "assistant"}), done=False), error=lost),
        fixture("mock-ai-api/stream-include-usage.sse"),
    )

    pieces, end = await answer(h.router)

    assert "".join(pieces) == MOCK_AI_ANSWER
    assert (end.finish_reason, end.usage) == ("stop", Usage(34, 12))
    assert len(h.backend.requests) == 2
    assert len(h.sleeps) == 1


async def test_connect_error_exhausts_retries(make: HarnessFactory) -> None:
    h = make(httpx.ConnectError("[Errno 111] Connection refused"))

    _, error = await failed_answer(h.router)

    assert type(error) is LLMUnavailableError
    assert "Connection refused" in str(error)
    assert len(h.backend.requests) == 4
    assert len(h.sleeps) == 3


async def test_connect_error_then_success(make: HarnessFactory) -> None:
    h = make(httpx.ConnectError("refused"), fixture("litellm/stream-include-usage.sse"))

    pieces, _ = await answer(h.router)

    assert "".join(pieces) == LITELLM_ANSWER
    assert len(h.sleeps) == 1


async def test_url_without_scheme_is_not_retried(make: HarnessFactory) -> None:
    h = make(httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://'"))

    _, error = await failed_answer(h.router)

    assert isinstance(error, LLMUnavailableError)
    assert h.sleeps == []


# -- timeouts -------------------------------------------------------------------------------------

SHORT = LLMTimeouts(connect=1.0, first_token=0.05, idle=5.0, total=5.0)


async def test_connect_timeout_is_retried_then_raised(make: HarnessFactory) -> None:
    h = make(httpx.ConnectTimeout("timed out"))

    _, error = await failed_answer(h.router)

    assert isinstance(error, LLMTimeoutError)
    assert error.phase == "connect"
    assert len(h.backend.requests) == 4


async def test_no_first_token_in_time(make: HarnessFactory) -> None:
    h = make(reply(sse(chunk(delta={"role": "assistant"}), done=False), hang=True), timeouts=SHORT)

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMTimeoutError)
    assert error.phase == "first_token"
    assert h.backend.streams[0].closed
    assert h.sleeps == []


async def test_no_response_headers_in_time(make: HarnessFactory) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    http = httpx.AsyncClient(transport=httpx.MockTransport(never))
    async with http:
        client = LLMClient(http=http, base_url=BASE_URL, api_key=None, timeouts=SHORT)
        _, error = await failed_answer(client)

    assert isinstance(error, LLMTimeoutError)
    assert error.phase == "first_token"


async def test_reasoning_deltas_stop_the_first_token_timer(make: HarnessFactory) -> None:
    # The model is thinking: only the total deadline may end the wait.
    timeouts = LLMTimeouts(connect=1.0, first_token=0.02, idle=5.0, total=0.1)
    thinking = sse(chunk(None, delta={"reasoning_content": "Let me think."}), done=False)
    h = make(reply(thinking, hang=True), timeouts=timeouts)

    _, error = await failed_answer(h.client)

    assert isinstance(error, LLMTimeoutError)
    assert error.phase == "total"


async def test_total_deadline_after_text(make: HarnessFactory) -> None:
    # Once text streams, a read waits at most the idle timeout (the HTTP client's); the total
    # deadline cuts a backend that keeps sending (here: keep-alive comments) past it.
    timeouts = LLMTimeouts(connect=1.0, first_token=5.0, idle=5.0, total=0.05)
    h = make(reply(sse(chunk("Otters"), done=False), keepalive=0.01), timeouts=timeouts)

    shown, error = await failed_answer(h.client)

    assert shown == "Otters"
    assert isinstance(error, LLMTimeoutError)
    assert error.phase == "total"
    assert h.backend.streams[0].closed


async def test_idle_read_timeout(make: HarnessFactory) -> None:
    stalled = httpx.ReadTimeout("no data")
    h = make(reply(sse(chunk("Otters"), done=False), error=stalled))

    shown, error = await failed_answer(h.client)

    assert shown == "Otters"
    assert isinstance(error, LLMTimeoutError)
    assert error.phase == "idle"
    assert error.seconds == 60.0
    assert h.sleeps == []


# -- retries --------------------------------------------------------------------------------------


def rate_limited(headers: Iterable[tuple[str, str]]) -> Reply:
    body = json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}})
    return reply(body, status=429, content_type="application/json", headers=headers)


async def test_retry_after_seconds_is_honoured(make: HarnessFactory) -> None:
    h = make(rate_limited([("Retry-After", "7")]), fixture("mockllm/stream-no-usage.sse"))

    pieces, _ = await answer(h.router)

    assert "".join(pieces) == MOCKLLM_STREAM_ANSWER
    assert h.sleeps == [7.0]


async def test_litellm_prefixed_retry_after_is_honoured(make: HarnessFactory) -> None:
    h = make(fixture("litellm/error-429-rpm-limit.json"), fixture("litellm/stream-no-usage.sse"))

    pieces, _ = await answer(h.router)

    assert "".join(pieces) == LITELLM_ANSWER
    assert h.sleeps == [60.0]


async def test_ratelimit_reset_header_is_honoured(make: HarnessFactory) -> None:
    h = make(
        rate_limited([("x-ratelimit-reset-requests", "1.5s")]),
        fixture("mockllm/stream-no-usage.sse"),
    )

    await answer(h.router)

    assert h.sleeps == [1.5]


async def test_retry_after_over_the_cap_is_raised_at_once(make: HarnessFactory) -> None:
    h = make(rate_limited([("Retry-After", str(int(RETRY_AFTER_CAP) + 60))]))

    _, error = await failed_answer(h.router)

    assert isinstance(error, LLMRateLimitError)
    assert error.retry_after == RETRY_AFTER_CAP + 60
    assert h.sleeps == []
    assert len(h.backend.requests) == 1


async def test_retry_that_would_pass_the_total_deadline_is_not_attempted(
    make: HarnessFactory,
) -> None:
    h = make(
        rate_limited([("Retry-After", "30")]),
        timeouts=LLMTimeouts(connect=1.0, first_token=5.0, idle=5.0, total=10.0),
    )

    _, error = await failed_answer(h.router)

    assert isinstance(error, LLMRateLimitError)
    assert h.sleeps == []


async def test_backoff_doubles_up_to_max_delay(make: HarnessFactory) -> None:
    h = make(
        fixture("mock-ai-api/error-503.json"),
        retry=RetryPolicy(max_retries=4, base_delay=1.0, max_delay=5.0, jitter=lambda cap: cap),
    )

    _, error = await failed_answer(h.router)

    assert isinstance(error, LLMServerError)
    assert error.status == 503
    assert h.sleeps == [1.0, 2.0, 4.0, 5.0]
    assert len(h.backend.requests) == 5


async def test_backoff_has_full_jitter(make: HarnessFactory) -> None:
    h = make(fixture("litellm/error-529-stream-first-chunk.json"), retry=RetryPolicy(5, 0.5, 3.0))

    _, error = await failed_answer(h.router)

    assert isinstance(error, LLMServerError)
    assert error.status == 529
    caps = [0.5, 1.0, 2.0, 3.0, 3.0]
    assert len(h.sleeps) == len(caps)
    assert all(0.0 <= d <= cap for d, cap in zip(h.sleeps, caps, strict=True))


async def test_server_error_then_success(make: HarnessFactory) -> None:
    h = make(fixture("litellm/error-500.json"), fixture("litellm/stream-include-usage.sse"))

    pieces, end = await answer(h.router)

    assert "".join(pieces) == LITELLM_ANSWER
    assert end.usage == Usage(29, 23)
    assert len(h.sleeps) == 1


@pytest.mark.parametrize(
    "case",
    [
        "litellm/error-400-bad-key-no-db.json",
        "litellm/error-400-unknown-model.json",
        "litellm/error-401-empty-bearer.json",
        "mock-ai-api/error-401.json",
        "mock-ai-api/error-404-unknown-path.json",
        "mockllm/error-400-no-user-message.json",
    ],
)
async def test_client_errors_are_never_retried(make: HarnessFactory, case: str) -> None:
    h = make(fixture(case))

    await failed_answer(h.router)

    assert len(h.backend.requests) == 1
    assert h.sleeps == []


async def test_forbidden_is_never_retried(make: HarnessFactory) -> None:
    h = make(reply('{"error": "Forbidden"}', status=403, content_type="application/json"))

    _, error = await failed_answer(h.router)

    assert isinstance(error, LLMAuthError)
    assert h.sleeps == []


def test_retry_after_accepts_http_dates_and_durations() -> None:
    now = datetime(2026, 11, 21, 14, 52, 0, tzinfo=UTC)
    parse = retry_after

    assert parse(httpx.Headers({"Retry-After": "Sat, 21 Nov 2026 14:52:30 GMT"}), now) == 30.0
    assert parse(httpx.Headers({"Retry-After": "Sat, 21 Nov 2026 14:00:00 GMT"}), now) == 0.0
    assert parse(httpx.Headers({"retry-after-ms": "1500"}), now) == 1.5
    assert parse(httpx.Headers({"x-ratelimit-reset-requests": "6m0s"}), now) == 360.0
    assert parse(httpx.Headers({"x-ratelimit-reset-tokens": "20ms"}), now) == 0.02
    assert parse(httpx.Headers({"Retry-After": "soon"}), now) is None
    assert parse(httpx.Headers({}), now) is None


# -- cancellation ---------------------------------------------------------------------------------


async def test_consumer_stopping_early_closes_the_response(make: HarnessFactory) -> None:
    h = make(reply(sse(chunk("Otters "), chunk("sleep"), done=False), hang=True))

    stream = h.client.stream_chat(model="m", messages=MESSAGES)
    async with contextlib.aclosing(stream):
        async for event in stream:
            assert event == TextDelta("Otters ")
            break

    assert h.backend.streams[0].closed


async def test_cancelled_task_closes_the_response(make: HarnessFactory) -> None:
    h = make(reply(sse(chunk("Otters "), done=False), hang=True))
    got_text = asyncio.Event()

    async def consume() -> None:
        async for _ in h.client.stream_chat(model="m", messages=MESSAGES):
            got_text.set()

    task = asyncio.create_task(consume())
    await got_text.wait()
    await asyncio.sleep(0)  # let the consumer wait for the next chunk
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert h.backend.streams[0].closed
    assert h.sleeps == []


# -- model list -----------------------------------------------------------------------------------


async def test_models_request(make: HarnessFactory) -> None:
    h = make(fixture("dwmkerr-mock-llm/models.json"))

    models = await h.client.list_models()

    assert models == [ModelInfo(id="gpt-5.2")]
    (request,) = h.backend.requests
    assert request.method == "GET"
    assert str(request.url) == f"{BASE_URL}/models"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


async def test_litellm_models_with_mode_and_context(make: HarnessFactory) -> None:
    h = make(fixture("litellm/models.json"))

    models = {m.id: m for m in await h.client.list_models()}

    assert len(models) == 11
    assert models["gpt-4o-mini"] == ModelInfo(id="gpt-4o-mini", context_tokens=128000, kind="chat")
    assert models["via-mock-ai-api"].context_tokens == 1047576
    assert models["dall-e-3"] == ModelInfo(id="dall-e-3", kind="image")
    # no mode: the backend does not say
    assert models["via-mock-ai-api-429"] == ModelInfo(id="via-mock-ai-api-429")


async def test_mock_ai_api_models(make: HarnessFactory) -> None:
    h = make(fixture("mock-ai-api/models.json"))

    models = await h.client.list_models()

    ids = [m.id for m in models]
    assert ids[:3] == ["gpt-4.1", "gpt-4o-mini", "gpt-3.5-turbo-instruct"]
    assert "gpt-4.1:mock-429" in ids
    assert all(m.kind is None and m.context_tokens is None and m.available for m in models)


async def test_akashchat_bare_list_of_rich_models(make: HarnessFactory) -> None:
    h = make(fixture("akashchat-api-go/models.json"))

    models = await h.client.list_models()

    assert models == [
        ModelInfo(id="openai-gpt-oss-120b", name="GPT-OSS-120B", context_tokens=128000),
        ModelInfo(id="Meta-Llama-3-3-70B-Instruct", name="Llama 3.3 70B", context_tokens=128000),
        ModelInfo(id="AkashGen", name="AkashGen", context_tokens=None, available=False),
    ]


async def test_mockllm_models_are_plain_strings(make: HarnessFactory) -> None:
    h = make(fixture("mockllm/models-nonstandard-path.json"))

    models = await h.client.list_models()

    assert [m.id for m in models] == [
        "gpt-3.5-turbo",
        "gpt-4",
        "gpt-4-turbo",
        "claude-3-sonnet-20240229",
        "claude-3-opus-20240229",
        "claude-3-haiku-20240307",
    ]


async def test_missing_models_endpoint_is_not_found(make: HarnessFactory) -> None:
    h = make(fixture("mockllm/error-404-models.json"))

    with pytest.raises(LLMNotFoundError) as caught:
        await h.client.list_models()

    assert caught.value.message == "Not Found"
    assert h.sleeps == []


async def test_models_are_retried_on_server_errors(make: HarnessFactory) -> None:
    h = make(fixture("mock-ai-api/error-503.json"), fixture("mock-ai-api/models.json"))

    models = await h.client.list_models()

    assert models[0].id == "gpt-4.1"
    assert len(h.sleeps) == 1


async def test_model_kinds_from_litellm_modes(make: HarnessFactory) -> None:
    entries = [
        {"id": "e", "mode": "embedding"},
        {"id": "t", "mode": "audio_transcription", "context_window": 0},
        {"id": "s", "mode": "audio_speech"},
        {"id": "r", "mode": "rerank", "max_model_len": 32768},
    ]
    h = make(reply(json.dumps({"data": entries}), content_type="application/json"))

    models = await h.client.list_models()

    assert [(m.kind, m.context_tokens) for m in models] == [
        ("embedding", None),
        ("audio", None),
        ("audio", None),
        ("rerank", 32768),
    ]


async def test_models_with_unexpected_shape(make: HarnessFactory) -> None:
    h = make(reply('{"object": "list"}', content_type="application/json"))

    with pytest.raises(LLMProtocolError):
        await h.client.list_models()


async def test_models_connection_refused(make: HarnessFactory) -> None:
    h = make(httpx.ConnectError("refused"))

    with pytest.raises(LLMUnavailableError):
        await h.client.list_models()

    assert len(h.sleeps) == 3


# -- what each captured provider error means for the turn ---------------------------------------


@pytest.mark.parametrize(
    ("case", "on_primary", "on_fallback"),
    [
        ("litellm/error-500.json", Action.NEXT, Action.NEXT),
        ("litellm/error-529-stream-first-chunk.json", Action.NEXT, Action.NEXT),
        ("litellm/error-500-plaintext-auth-crash.txt", Action.NEXT, Action.NEXT),
        ("mock-ai-api/error-503.json", Action.NEXT, Action.NEXT),
        ("litellm/error-429.json", Action.COOL_DOWN, Action.COOL_DOWN),
        ("litellm/error-429-rpm-limit.json", Action.COOL_DOWN, Action.COOL_DOWN),
        ("dwmkerr-mock-llm/error-429.json", Action.COOL_DOWN, Action.COOL_DOWN),
        ("litellm/error-401-empty-bearer.json", Action.REMOVE, Action.REMOVE),
        ("mock-ai-api/error-401.json", Action.REMOVE, Action.REMOVE),
        ("dwmkerr-mock-llm/error-401-bad-key.json", Action.REMOVE, Action.REMOVE),
        # The chat's model: the user's to change on the primary; a fallback just lacks it.
        ("litellm/error-400-unknown-model.json", Action.STOP, Action.NEXT),
        ("dwmkerr-mock-llm/error-404-unknown-model.json", Action.STOP, Action.NEXT),
        # LiteLLM without its database: shown to the user as the gateway's words, not a key.
        ("litellm/error-400-bad-key-no-db.json", Action.STOP, Action.STOP),
        ("mockllm/error-400-no-user-message.json", Action.STOP, Action.STOP),
    ],
)
async def test_captured_errors_decide_the_next_attempt(
    make: HarnessFactory, case: str, on_primary: Action, on_fallback: Action
) -> None:
    h = make(fixture(case))
    _, error = await failed_answer(h.client)
    spec = BackendSpec(name="b", base_url=BASE_URL)

    assert decide(error, spec, primary=True) is on_primary
    assert decide(error, spec, primary=False) is on_fallback
