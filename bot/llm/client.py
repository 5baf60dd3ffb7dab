"""Streaming client for OpenAI-compatible chat backends, tolerant of their many dialects."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import html
import json
import logging
import math
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

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
from bot.llm.transport import paced_stream
from bot.llm.types import ChatEvent, ChatMessage, ModelInfo, StreamEnd, TextDelta, Usage

logger = logging.getLogger(__name__)

# A backend asking us to wait longer than this gets its error raised instead of a silent wait.
RETRY_AFTER_CAP = 60.0

_MESSAGE_LIMIT = 300
_ERROR_BODY_LIMIT = 64 * 1024
_JSON_BODY_LIMIT = 16 * 1024 * 1024
_MID_ANSWER = "connection to the backend was lost mid-answer"

_CONTEXT_RE = re.compile(
    r"context[ _-]?(?:length|window)|maximum context|too many tokens|prompt is too long"
    r"|input is too long|reduce the length of the (?:messages|prompt|input)"
    r"|maximum (?:input|prompt) length",
    re.IGNORECASE,
)
_UNKNOWN_MODEL_RE = re.compile(
    r"model_not_found|invalid model|unknown model|no such model"
    r"|\bmodel\b[^.]{0,80}?\b(?:not found|does not exist|is invalid|is not valid)",
    re.IGNORECASE,
)
_BAD_KEY_RE = re.compile(
    r"invalid_api_key|(?:invalid|incorrect) api key|api key (?:is )?(?:not valid|invalid)",
    re.IGNORECASE,
)
_STATUS_IN_CODE_RE = re.compile(r"(?<!\d)([45]\d\d)(?!\d)")
_RATE_HINT_RE = re.compile(r"rate.?limit|throttl|too.?many.?requests|quota", re.IGNORECASE)
_AUTH_HINT_RE = re.compile(r"auth|api.?key|permission|forbidden", re.IGNORECASE)
_HTML_TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_TAG_RE = re.compile(r"<[^>]+>")
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_CONTEXT_KEYS = (
    "tokenLimit",
    "context_length",
    "context_window",
    "max_input_tokens",
    "max_model_len",  # vLLM
)
_KIND_BY_MODE = {
    "chat": "chat",
    "image_generation": "image",
    "image_edit": "image",
    "embedding": "embedding",
    "audio_transcription": "audio",
    "audio_speech": "audio",
}


@dataclass(frozen=True, slots=True)
class LLMTimeouts:
    """Time limits of one backend call, in seconds."""

    connect: float = 10.0  # TCP/TLS connect
    first_token: float = 90.0  # from sending the request to the first content delta
    idle: float = 60.0  # max silence between bytes of the stream (httpx read timeout)
    total: float = 600.0  # whole answer


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures are retried: exponential backoff with full jitter."""

    max_retries: int = 3  # retries after the first attempt
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, exc: LLMError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before retrying after `exc`, or None if no retry is left in time.

        The caller decides which errors are retryable at all (chat and image calls differ).
        `attempt` counts retries so far; no retry may start at or after `deadline` (loop time).
        """
        if attempt >= self.max_retries:
            return None
        cap = min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 60))
        delay = _full_jitter(cap)
        if isinstance(exc, LLMRateLimitError) and exc.retry_after is not None:
            if exc.retry_after > RETRY_AFTER_CAP:
                return None
            delay = max(delay, exc.retry_after)
        if asyncio.get_running_loop().time() + delay >= deadline:
            return None
        return delay


@dataclass(slots=True)
class _ErrorInfo:
    message: str | None = None
    code: str | None = None
    type: str | None = None
    status: int | None = None


@dataclass(slots=True)
class _StreamState:
    # A content or reasoning delta arrived, so the first-token timer no longer applies.
    started: bool = False
    # A TextDelta reached the consumer: the user sees text, so the call must never be retried.
    text_sent: bool = False
    done: bool = False
    chunks: int = 0
    skipped: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    # The first half of a character split across chunks, held until its second half arrives.
    carry: str = ""


class _AnyTypeEventSource(EventSource):
    """An EventSource that parses the body as SSE whatever its Content-Type says."""

    def _check_content_type(self) -> None:
        # Some proxies stream valid SSE as text/plain or without a Content-Type at all.
        return None


class LLMClient:
    """Talks to one OpenAI-compatible backend: streamed chat completions and the model list."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        timeouts: LLMTimeouts = LLMTimeouts(),
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        read_interval: float = 0.0,
    ) -> None:
        """Use the caller's shared `http` client; `sleep` is injectable so tests need not wait.

        `read_interval`: once an answer has started, read its connection at most this often,
        when `http` sends through `bot.llm.transport.AiohttpTransport`; 0 reads at once.
        """
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._timeouts = timeouts
        self._retry = retry
        self._sleep = sleep
        self._read_interval = read_interval

    async def stream_chat(
        self,
        *,
        model: str,
        messages: Sequence[ChatMessage],
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """Yield the answer as TextDelta pieces, then exactly one StreamEnd; raise LLMError.

        Wrap the iteration in `contextlib.aclosing` when it may stop early, so that the HTTP
        response is closed at once rather than when the generator is garbage-collected.
        """
        payload: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if temperature is not None:
            payload["temperature"] = temperature
        logger.debug(
            "chat request: model=%s, %d messages, %d characters",
            model,
            len(messages),
            sum(len(m.content) for m in messages),
        )
        deadline = asyncio.get_running_loop().time() + self._timeouts.total
        attempt = 0
        while True:
            state = _StreamState()
            try:
                attempt_events = self._stream_attempt(payload, deadline, state)
                async with contextlib.aclosing(attempt_events):
                    async for event in attempt_events:
                        yield event
                return
            except LLMError as exc:
                if state.text_sent:
                    raise
                delay = self._retry.delay(exc, attempt, deadline) if _is_retryable(exc) else None
                if delay is None:
                    raise
                self._log_retry(exc, attempt, delay)
            attempt += 1
            await self._sleep(delay)

    async def list_models(self) -> list[ModelInfo]:
        """Return the backend's model list, whichever of the known shapes it uses."""
        deadline = asyncio.get_running_loop().time() + self._timeouts.total
        attempt = 0
        while True:
            try:
                return await self._list_models_once(deadline)
            except LLMError as exc:
                delay = self._retry.delay(exc, attempt, deadline) if _is_retryable(exc) else None
                if delay is None:
                    raise
                self._log_retry(exc, attempt, delay)
            attempt += 1
            await self._sleep(delay)

    # -- one attempt -------------------------------------------------------------------------

    async def _stream_attempt(
        self, payload: dict[str, Any], deadline: float, state: _StreamState
    ) -> AsyncGenerator[ChatEvent, None]:
        first_token_at = asyncio.get_running_loop().time() + self._timeouts.first_token

        def budget() -> tuple[float, str, float]:
            # Reasoning models may think for minutes before the answer starts. Any delta,
            # reasoning included, proves the model is working, so it stops the first-token
            # timer; a bare role chunk does not, since proxies send it before the model starts.
            if not state.started and first_token_at < deadline:
                return first_token_at, "first_token", self._timeouts.first_token
            return deadline, "total", self._timeouts.total

        completion: bytes | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with _Within(*budget()):
                    source = await stack.enter_async_context(
                        aconnect_sse(
                            self._http,
                            "POST",
                            f"{self._base_url}/chat/completions",
                            json=payload,
                            headers=self._headers(),
                            timeout=self._httpx_timeout(),
                        )
                    )
                response = source.response
                if not response.is_success:
                    async with _Within(deadline, "total", self._timeouts.total):
                        body = await _read_error_body(response)
                    raise self._status_error(response, body)
                content_type = response.headers.get("content-type", "").lower()
                if "json" in content_type:
                    # Some backends ignore `stream: true` and answer with one JSON document.
                    async with _Within(deadline, "total", self._timeouts.total):
                        completion = await _read_limited(response, _JSON_BODY_LIMIT)
                elif "text/html" in content_type:
                    raise LLMProtocolError(
                        "backend answered with an HTML page instead of an event stream; "
                        "check the base URL"
                    )
                else:
                    if "text/event-stream" not in content_type:
                        logger.warning(
                            "backend streams with content type %r; parsing it as SSE",
                            content_type,
                        )
                        source = _AnyTypeEventSource(response)
                    # Paced from the first text on: see bot.llm.transport.
                    pacer = paced_stream(response) if self._read_interval > 0 else None
                    # The budget bounds each read of the body rather than each event: a read
                    # brings several events, and a timer per event cost more than parsing it.
                    assert isinstance(response.stream, httpx.AsyncByteStream)  # an AsyncClient's
                    response.stream = _BoundedStream(response.stream, budget)
                    events = source.aiter_sse()
                    try:
                        async with contextlib.aclosing(events):
                            async for sse in events:
                                for text in self._handle_event(sse, state):
                                    if pacer is not None:
                                        pacer.pace = self._read_interval
                                    state.text_sent = True
                                    yield TextDelta(text)
                                if state.done:
                                    break
                    finally:
                        if pacer is not None:
                            # Before the connection goes back to the pool for other requests.
                            pacer.pace = 0.0
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error(exc, mid_answer=state.text_sent) from exc

        if completion is not None:
            for event in self._completion_events(completion):
                if isinstance(event, TextDelta):
                    state.text_sent = True
                yield event
            return
        if state.carry:
            state.text_sent = True
            yield TextDelta(_REPLACEMENT)  # the second half never came
        if state.chunks == 0:
            detail = f" ({state.skipped} events were not valid JSON)" if state.skipped else ""
            raise LLMProtocolError(f"backend sent no completion chunk{detail}")
        logger.debug(
            "stream finished: reason=%s, %d chunks, %d skipped, usage=%s",
            state.finish_reason,
            state.chunks,
            state.skipped,
            state.usage,
        )
        yield StreamEnd(finish_reason=state.finish_reason, usage=state.usage)

    async def _list_models_once(self, deadline: float) -> list[ModelInfo]:
        headers = {"Accept": "application/json", **self._headers()}
        try:
            async with (
                _Within(deadline, "total", self._timeouts.total),
                self._http.stream(
                    "GET",
                    f"{self._base_url}/models",
                    headers=headers,
                    timeout=self._httpx_timeout(),
                ) as response,
            ):
                if not response.is_success:
                    body = await _read_error_body(response)
                    raise self._status_error(response, body)
                body = await _read_limited(response, _JSON_BODY_LIMIT)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error(exc, mid_answer=False) from exc
        try:
            payload = _loads(body)
        except ValueError as exc:
            raise LLMProtocolError("backend's model list is not JSON") from exc
        models = _parse_models(payload)
        logger.debug("backend lists %d models", len(models))
        return models

    # -- stream content ----------------------------------------------------------------------

    def _handle_event(self, sse: ServerSentEvent, state: _StreamState) -> list[str]:
        data = sse.data.strip()
        if sse.event == "error":
            raise self._payload_error(_loads_or_text(data))
        if not data:
            return []
        if data == "[DONE]":
            state.done = True
            return []
        try:
            chunk = _loads(data)
        except ValueError:
            state.skipped += 1
            logger.warning("skipping a stream event that is not valid JSON (%d bytes)", len(data))
            return []
        if not isinstance(chunk, dict):
            state.skipped += 1
            logger.warning("skipping a stream event that is not a JSON object")
            return []
        if chunk.get("error"):
            # HTTP 200 with an error event: mock-llm for error rules, LiteLLM when its
            # upstream fails after the first chunk.
            raise self._payload_error(chunk)
        choices = chunk.get("choices")
        if not isinstance(choices, list) and "usage" not in chunk:
            logger.debug("ignoring a stream event without choices or usage")
            return []
        state.chunks += 1
        usage = _parse_usage(chunk.get("usage"))
        if usage is not None:
            state.usage = usage
        texts: list[str] = []
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta") or choice.get("message") or {}
            if isinstance(delta, dict):
                text = _text_of(delta.get("content"))
                if text:
                    state.started = True
                    text = _whole_characters(text, state)
                    if text:
                        texts.append(text)
                # Reasoning is not part of the answer, but it shows the model is working.
                if delta.get("reasoning_content") or delta.get("reasoning"):
                    state.started = True
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                state.finish_reason = reason
        return texts

    def _completion_events(self, body: bytes) -> list[ChatEvent]:
        try:
            document = _loads(body)
        except ValueError as exc:
            raise LLMProtocolError("backend answered with invalid JSON") from exc
        if not isinstance(document, dict):
            raise LLMProtocolError("backend answered with JSON that is not a completion")
        if is_wrapped_error(document):
            raise self._payload_error(document)
        data = document.get("data")
        choices = document.get("choices")
        if not isinstance(choices, list):
            if isinstance(data, dict) and ("pic" in data or "jobId" in data):
                raise LLMProtocolError("backend answered with an image job, not a chat completion")
            raise LLMProtocolError("backend answered with JSON that is not a completion")
        events: list[ChatEvent] = []
        finish_reason: str | None = None
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            message = choice.get("message") or choice.get("delta") or {}
            if isinstance(message, dict):
                text = _text_of(message.get("content"))
                if text:
                    events.append(TextDelta(text))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                finish_reason = reason
        logger.debug("backend ignored stream=true and sent one completion (%d bytes)", len(body))
        events.append(StreamEnd(finish_reason, _parse_usage(document.get("usage"))))
        return events

    # -- errors ------------------------------------------------------------------------------

    def _status_error(self, response: httpx.Response, body: bytes) -> LLMHTTPError:
        status = response.status_code
        info = _error_info_from_body(body)
        message = self._short(info.message or response.reason_phrase or "no details")
        retry_after = _retry_after(response.headers) if status == 429 else None
        return _classify(status, message, info.code, info.type, retry_after)

    def _payload_error(self, payload: Any) -> LLMHTTPError:
        info = _error_info(payload)
        if info.message is None and isinstance(payload, str) and payload:
            info.message = payload
        message = self._short(info.message or "backend reported an error")
        return _classify(_status_from_hints(info), message, info.code, info.type, None)

    def _transport_error(self, exc: Exception, *, mid_answer: bool) -> LLMError:
        t = self._timeouts
        if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
            return LLMTimeoutError("connect", t.connect)
        if isinstance(exc, httpx.TimeoutException):
            return LLMTimeoutError("idle", t.idle)
        if isinstance(exc, httpx.DecodingError):
            return LLMProtocolError("backend sent a body that could not be decoded")
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return LLMUnavailableError(f"backend URL is not usable: {self._short(str(exc))}")
        if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
            detail = self._short(str(exc))
            return LLMUnavailableError(f"could not connect to the backend: {detail}")
        if mid_answer:
            return LLMUnavailableError(_MID_ANSWER)
        return LLMUnavailableError("connection to the backend was lost")

    def _short(self, text: str) -> str:
        text = " ".join(text.split())
        if self._api_key and len(self._api_key) >= 8:
            text = text.replace(self._api_key, "***")
        if len(text) > _MESSAGE_LIMIT:
            text = text[: _MESSAGE_LIMIT - 1].rstrip() + "…"
        return text

    # -- retries -----------------------------------------------------------------------------

    def _log_retry(self, exc: LLMError, attempt: int, delay: float) -> None:
        logger.warning(
            "backend call failed (%s: %s); retry %d of %d in %.2fs",
            type(exc).__name__,
            exc,
            attempt + 1,
            self._retry.max_retries,
            delay,
        )

    # -- request -----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _httpx_timeout(self) -> httpx.Timeout:
        t = self._timeouts
        return httpx.Timeout(connect=t.connect, read=t.idle, write=t.idle, pool=t.connect)


# -- helpers -----------------------------------------------------------------------------------


def _loads(data: str | bytes) -> Any:
    """Parse a backend's JSON.

    orjson parses a stream chunk about four times faster than the standard library, which
    matters at a hundred chunks an answer. What it refuses but json accepts (NaN, a lone
    surrogate escape from a model that split an emoji) is still parsed, by json.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


class _Within:
    """Bound the awaits of an `async with` block by an absolute loop-time deadline.

    Only awaits on the backend are wrapped, never a `yield`: a timeout spanning a yield would
    cancel the consumer's code instead of ours. A class rather than a generator-based context
    manager, as it is entered for every read of a streaming answer.
    """

    __slots__ = ("_phase", "_seconds", "_timeout")

    def __init__(self, when: float, phase: str, seconds: float) -> None:
        self._timeout = asyncio.timeout_at(when)
        self._phase = phase
        self._seconds = seconds

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, traceback)
        except TimeoutError as expired:
            raise LLMTimeoutError(self._phase, self._seconds) from expired
        if isinstance(exc, TimeoutError):
            raise LLMTimeoutError(self._phase, self._seconds) from exc


class _BoundedStream(httpx.AsyncByteStream):
    """A response body whose every read must finish before the deadline `budget` gives then."""

    def __init__(
        self, inner: httpx.AsyncByteStream, budget: Callable[[], tuple[float, str, float]]
    ) -> None:
        self._inner = inner
        self._budget = budget

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner)
        try:
            while True:
                async with _Within(*self._budget()):
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                yield chunk
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def aclose(self) -> None:
        await self._inner.aclose()


def is_wrapped_error(document: dict[str, Any]) -> bool:
    """True for an error delivered in a successful answer's body.

    OpenAI-style `{"error": ...}` objects, and akashchat's `{"code": 500, "data": {"msg": ...}}`
    envelope, which it sends even with HTTP 200.
    """
    data = document.get("data")
    return bool(document.get("error")) or (
        isinstance(data, dict) and "msg" in data and document.get("code") != 200
    )


def _full_jitter(cap: float) -> float:
    return random.uniform(0.0, cap)


def _is_retryable(exc: LLMError) -> bool:
    if isinstance(exc, LLMRateLimitError | LLMServerError):
        return True
    if isinstance(exc, LLMTimeoutError):
        return exc.phase == "connect"
    if isinstance(exc, LLMUnavailableError):
        return not isinstance(exc.__cause__, httpx.UnsupportedProtocol | httpx.InvalidURL)
    return False


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


async def _read_error_body(response: httpx.Response) -> bytes:
    try:
        return await _read_limited(response, _ERROR_BODY_LIMIT)
    except httpx.HTTPError:
        # The status alone still tells what went wrong.
        return b""


def _classify(
    status: int, message: str, code: str | None, etype: str | None, retry_after: float | None
) -> LLMHTTPError:
    hints = f"{code or ''} {etype or ''} {message}"
    if status in (401, 403):
        return LLMAuthError(status, message, code)
    if status == 404:
        return LLMNotFoundError(status, message, code)
    if status == 429:
        return LLMRateLimitError(status, message, code, retry_after)
    if status == 413:
        return LLMContextLengthError(status, message, code)
    if status == 408 or not 400 <= status < 500:
        return LLMServerError(status, message, code)
    if _CONTEXT_RE.search(hints):
        return LLMContextLengthError(status, message, code)
    # LiteLLM answers an unknown model with 400, not 404.
    if _UNKNOWN_MODEL_RE.search(hints):
        return LLMNotFoundError(status, message, code)
    # Some gateways (LiteLLM without a database, Google's compatibility layer) reject a bad key
    # with 400; only an explicit wording is trusted.
    if _BAD_KEY_RE.search(hints):
        return LLMAuthError(status, message, code)
    return LLMBadRequestError(status, message, code)


def _status_from_hints(info: _ErrorInfo) -> int:
    """Guess an HTTP status for an error object that arrived with HTTP 200."""
    if info.status is not None and 400 <= info.status <= 599:
        return info.status
    for value in (info.code, info.type):
        if value and (match := _STATUS_IN_CODE_RE.search(value)):
            return int(match.group(1))
    hints = f"{info.code or ''} {info.type or ''}"
    if _RATE_HINT_RE.search(hints):
        return 429
    if _AUTH_HINT_RE.search(hints):
        return 401
    if "not_found" in hints or "not found" in hints:
        return 404
    if _CONTEXT_RE.search(hints) or "invalid_request" in hints:
        return 400
    return 500


def _error_info_from_body(body: bytes) -> _ErrorInfo:
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return _ErrorInfo()
    try:
        payload = _loads(text)
    except ValueError:
        if title := _HTML_TITLE_RE.search(text):
            return _ErrorInfo(message=html.unescape(title.group(1)))
        if text.lstrip().startswith("<"):
            return _ErrorInfo(message=html.unescape(_HTML_TAG_RE.sub(" ", text)))
        return _ErrorInfo(message=text)
    info = _error_info(payload)
    if info.message is None:
        info.message = text
    return info


def _error_info(payload: Any) -> _ErrorInfo:
    """Read message, code and type from any of the error shapes backends use."""
    if isinstance(payload, list):
        # Google's compatibility layer wraps the error object in a list.
        payload = payload[0] if payload else None
    if not isinstance(payload, dict):
        return _ErrorInfo()
    error = payload.get("error")
    if isinstance(error, dict):
        return _ErrorInfo(
            message=_str(error.get("message")) or _str(error.get("detail")),
            code=_code(error.get("code")),
            type=_str(error.get("type")),
            status=_int(error.get("status")),
        )
    if isinstance(error, str) and error:
        # Express-style {"error": "Not Found", "message": "...", "status": 404}.
        extra = _str(payload.get("message"))
        message = f"{error}: {extra}" if extra and extra != error else error
        return _ErrorInfo(message=message, status=_int(payload.get("status")))
    if "detail" in payload:
        return _ErrorInfo(message=_detail_text(payload["detail"]))
    data = payload.get("data")
    if isinstance(data, dict) and isinstance(data.get("msg"), str):
        # akashchat: {"code": 500, "data": {"msg": "..."}}
        return _ErrorInfo(
            message=data["msg"], code=_code(payload.get("code")), status=_int(payload.get("code"))
        )
    if text := _str(payload.get("message")):
        return _ErrorInfo(
            message=text,
            code=_code(payload.get("code")),
            type=_str(payload.get("type")),
            status=_int(payload.get("status")),
        )
    return _ErrorInfo()


def _detail_text(detail: Any) -> str:
    # FastAPI: a string, or a list of {"loc", "msg", "type"} for validation errors.
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = [d["msg"] for d in detail if isinstance(d, dict) and isinstance(d.get("msg"), str)]
        if parts:
            return "; ".join(parts)
    if isinstance(detail, dict):
        found = _str(detail.get("message")) or _str(detail.get("msg"))
        if found:
            return found
    return json.dumps(detail, ensure_ascii=False)


def _loads_or_text(data: str) -> Any:
    try:
        return _loads(data)
    except ValueError:
        return data


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _code(value: Any) -> str | None:
    # OpenAI sends strings, LiteLLM numbers as strings ("429"), others plain numbers.
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        return str(value) or None
    return None


_REPLACEMENT = "\ufffd"


def _whole_characters(text: str, state: _StreamState) -> str:
    """`text` with UTF-16 surrogate halves paired into characters, ready to be sent on.

    Some backends escape a character outside the BMP (most emoji) as two halves, "\\ud83e" and
    "\\udda6", and may split the pair across chunks. A first half at the end waits in `state`
    for the next text; a half without its partner becomes U+FFFD, since it cannot be encoded.
    """
    text = state.carry + text
    state.carry = ""
    if text.isascii():
        return text
    if "\ud800" <= text[-1] <= "\udbff":
        state.carry, text = text[-1], text[:-1]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Some backends send content as a list of typed parts.
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type", "text") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = _int(raw.get("prompt_tokens", raw.get("input_tokens")))
    completion = _int(raw.get("completion_tokens", raw.get("output_tokens")))
    # akashchat always sends zeros as placeholders: zeros mean "unknown", not "free".
    if not prompt and not completion:
        return None
    return Usage(prompt_tokens=max(prompt or 0, 0), completion_tokens=max(completion or 0, 0))


def _retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the backend asks us to wait, from the first retry header that parses."""
    # LiteLLM forwards its upstream's headers with an `llm_provider-` prefix.
    for prefix in ("", "llm_provider-"):
        value = headers.get(f"{prefix}retry-after-ms")
        if value is not None and (ms := _number(value)) is not None:
            return ms / 1000.0
        value = headers.get(f"{prefix}retry-after")
        if value is not None and (seconds := _seconds_or_date(value, now)) is not None:
            return seconds
    for prefix in ("", "llm_provider-"):
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            value = headers.get(f"{prefix}{name}")
            if value is not None and (seconds := _duration(value)) is not None:
                return seconds
    return None


def _number(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return max(number, 0.0) if math.isfinite(number) else None


def _seconds_or_date(value: str, now: datetime | None) -> float | None:
    if (seconds := _number(value)) is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _duration(value: str) -> float | None:
    """Parse OpenAI-style reset durations such as `1s`, `6m0s`, `20ms`, or plain seconds."""
    value = value.strip()
    if (seconds := _number(value)) is not None:
        return seconds
    if not _DURATION_RE.fullmatch(value):
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART_RE.findall(value))


def _parse_models(payload: Any) -> list[ModelInfo]:
    entries: Any = payload
    if isinstance(payload, dict):
        # OpenAI {"object": "list", "data": [...]}; mockllm {"models": [...]}.
        entries = payload.get("data", payload.get("models"))
    if not isinstance(entries, list):
        raise LLMProtocolError("backend's model list has an unexpected shape")
    models: list[ModelInfo] = []
    for entry in entries:
        if isinstance(entry, str) and entry:
            models.append(ModelInfo(id=entry))
        elif isinstance(entry, dict) and (model_id := _str(entry.get("id"))):
            models.append(_model_info(model_id, entry))
    return models


def _model_info(model_id: str, entry: dict[str, Any]) -> ModelInfo:
    context: int | None = None
    for key in _CONTEXT_KEYS:
        value = _int(entry.get(key))
        if value is not None and value > 0:
            context = value
            break
    available = entry.get("available")
    mode = entry.get("mode")
    return ModelInfo(
        id=model_id,
        name=_str(entry.get("name")),
        context_tokens=context,
        available=available if isinstance(available, bool) else True,
        kind=_KIND_BY_MODE.get(mode) if isinstance(mode, str) else None,
    )
