"""Streaming client for OpenAI-compatible chat backends: the facade the services call.

The pieces it is made of: `dialects` (what backends send), `stream` (SSE to text deltas,
bounded), `policy` (retries and deadlines) and `transport` (HTTP and its errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bot.llm.dialects import loads, parse_models, status_error
from bot.llm.errors import LLMError, LLMHTTPError, LLMProtocolError, LLMTimeoutError
from bot.llm.policy import RETRY_AFTER_CAP, Retrying, RetryPolicy, Within, chat_retryable
from bot.llm.stream import (
    StreamLimits,
    StreamState,
    answer_texts,
    completion_events,
    finish,
)
from bot.llm.transport import as_httpx_error, read_capped, read_error_body, transport_error
from bot.llm.types import ChatEvent, ChatMessage, ModelInfo, TextDelta

__all__ = ["RETRY_AFTER_CAP", "LLMClient", "LLMTimeouts", "RetryPolicy"]

logger = logging.getLogger(__name__)

# A whole JSON answer (a model list, a completion sent without streaming) is read into memory.
JSON_BODY_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LLMTimeouts:
    """Time limits of one backend call, in seconds."""

    connect: float = 10.0  # TCP/TLS connect
    first_token: float = 90.0  # from sending the request to the first content delta
    idle: float = 60.0  # max silence between bytes of the stream (httpx read timeout)
    total: float = 600.0  # whole answer


_RETRY = RetryPolicy()
_LIMITS = StreamLimits()


class LLMClient:
    """Talks to one OpenAI-compatible backend: streamed chat completions and the model list."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        timeouts: LLMTimeouts = LLMTimeouts(),
        retry: RetryPolicy = _RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        limits: StreamLimits = _LIMITS,
    ) -> None:
        """Use the caller's shared `http` client; `sleep` is injectable so tests need not wait.

        `limits` bound what one streamed answer may send (see bot.llm.stream).
        """
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._timeouts = timeouts
        self._limits = limits
        self._retrying = Retrying(retry, chat_retryable, sleep)

    async def stream_chat(
        self,
        *,
        model: str,
        messages: Sequence[ChatMessage],
        max_tokens: int | None = None,
        temperature: float | None = None,
        first_token_by: float | None = None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """Yield the answer as TextDelta pieces, then exactly one StreamEnd; raise LLMError.

        One attempt: retries and other backends are the router's (bot.llm.router). The first
        token is due by loop time `first_token_by` if given, else within the first-token
        timeout. Wrap the iteration in `contextlib.aclosing` when it may stop early, so that
        the HTTP response is closed at once rather than when the generator is collected.
        """
        payload = _chat_payload(model, messages, max_tokens, temperature)
        logger.debug(
            "chat request: model=%s, %d messages, %d characters",
            model,
            len(messages),
            sum(len(m.content) for m in messages),
        )
        now = asyncio.get_running_loop().time()
        deadline = now + self._timeouts.total
        first_token_at = now + self._timeouts.first_token
        if first_token_by is not None:
            first_token_at = min(first_token_at, first_token_by)
        events = self._stream_attempt(payload, deadline, first_token_at)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def list_models(self) -> list[ModelInfo]:
        """Return the backend's model list, whichever of the known shapes it uses."""
        deadline = asyncio.get_running_loop().time() + self._timeouts.total
        return await self._retrying.call(lambda: self._list_models_once(deadline), deadline)

    # -- one attempt -------------------------------------------------------------------------

    async def _stream_attempt(
        self, payload: dict[str, Any], deadline: float, first_token_at: float
    ) -> AsyncGenerator[ChatEvent, None]:
        state = StreamState()
        budget = self._read_budget(state, deadline, first_token_at)
        completion: bytes | None = None
        try:
            async with self._open_stream(payload, budget) as response:
                completion = await self._check_answer(response, deadline)
                if completion is None:
                    texts = answer_texts(
                        response, budget, self._limits, state, secret=self._api_key
                    )
                    async with contextlib.aclosing(texts):
                        async for text in texts:
                            yield TextDelta(text)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            plain = as_httpx_error(exc)
            raise self._transport_error(plain, mid_answer=state.text_sent) from plain
        # The response is closed (its connection back in the pool) before the last events.
        ending = finish(state) if completion is None else self._completion(completion)
        for event in ending:
            yield event

    def _read_budget(
        self, state: StreamState, deadline: float, first_token_at: float
    ) -> Callable[[], Within | None]:
        """The deadline of the next read of the body: the first token's, then none (see
        bot.llm.stream.ReadBudget) once the total deadline has been checked."""
        t = self._timeouts
        loop = asyncio.get_running_loop()
        first_token_seconds = round(first_token_at - loop.time(), 1)

        def budget() -> Within | None:
            # Reasoning models may think for minutes before the answer starts. Any delta,
            # reasoning included, proves the model is working, so it stops the first-token
            # timer; a bare role chunk does not, since proxies send it before the model starts.
            if not state.started and first_token_at < deadline:
                return Within(first_token_at, "first_token", first_token_seconds)
            if not state.text_sent:
                return Within(deadline, "total", t.total)
            if loop.time() >= deadline:
                raise LLMTimeoutError("total", t.total)
            return None

        return budget

    @functools.cached_property
    def _chat_url(self) -> httpx.URL:
        # Parsed once: httpx parses a URL given as a string on every request. A base URL
        # httpx refuses raises InvalidURL here, inside the request's error handling, each time.
        return httpx.URL(f"{self._base_url}/chat/completions")

    @contextlib.asynccontextmanager
    async def _open_stream(
        self, payload: dict[str, Any], budget: Callable[[], Within | None]
    ) -> AsyncIterator[httpx.Response]:
        """Send the chat request; the response's headers have arrived when this is entered."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store", **self._auth()}
        request = self._http.build_request(
            "POST",
            self._chat_url,
            json=payload,
            headers=headers,
            timeout=self._httpx_timeout(),
        )
        within = budget()  # nothing has streamed yet: always a deadline
        assert within is not None
        async with within:
            response = await self._http.send(request, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def _check_answer(self, response: httpx.Response, deadline: float) -> bytes | None:
        """Raise for an error answer; the body of a JSON answer, or None for a stream."""
        within_total = Within(deadline, "total", self._timeouts.total)
        if not response.is_success:
            async with within_total:
                body = await read_error_body(response)
            raise self._status_error(response, body)
        content_type = response.headers.get("content-type", "").lower()
        if "json" in content_type:
            # Some backends ignore `stream: true` and answer with one JSON document.
            async with within_total:
                return await read_capped(response, JSON_BODY_LIMIT, "backend's answer")
        if "text/html" in content_type:
            raise LLMProtocolError(
                "backend answered with an HTML page instead of an event stream; check the base URL"
            )
        if "text/event-stream" not in content_type:
            logger.warning("backend streams with content type %r; parsing it as SSE", content_type)
        return None

    def _completion(self, body: bytes) -> list[ChatEvent]:
        return completion_events(body, secret=self._api_key)

    async def _list_models_once(self, deadline: float) -> list[ModelInfo]:
        headers = {"Accept": "application/json", **self._auth()}
        try:
            async with (
                Within(deadline, "total", self._timeouts.total),
                self._http.stream(
                    "GET",
                    f"{self._base_url}/models",
                    headers=headers,
                    timeout=self._httpx_timeout(),
                ) as response,
            ):
                if not response.is_success:
                    body = await read_error_body(response)
                    raise self._status_error(response, body)
                body = await read_capped(response, JSON_BODY_LIMIT, "backend's model list")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            plain = as_httpx_error(exc)
            raise self._transport_error(plain, mid_answer=False) from plain
        try:
            payload = loads(body)
        except ValueError as exc:
            raise LLMProtocolError("backend's model list is not JSON") from exc
        models = parse_models(payload)
        logger.debug("backend lists %d models", len(models))
        return models

    # -- errors and requests -----------------------------------------------------------------

    def _status_error(self, response: httpx.Response, body: bytes) -> LLMHTTPError:
        return status_error(
            response.status_code,
            response.reason_phrase,
            response.headers,
            body,
            secret=self._api_key,
        )

    def _transport_error(self, exc: Exception, *, mid_answer: bool) -> LLMError:
        t = self._timeouts
        return transport_error(
            exc,
            connect_seconds=t.connect,
            read_phase="idle",
            read_seconds=t.idle,
            mid_answer=mid_answer,
            secret=self._api_key,
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _httpx_timeout(self) -> httpx.Timeout:
        t = self._timeouts
        return httpx.Timeout(connect=t.connect, read=t.idle, write=t.idle, pool=t.connect)


def _chat_payload(
    model: str,
    messages: Sequence[ChatMessage],
    max_tokens: int | None,
    temperature: float | None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    if temperature is not None:
        payload["temperature"] = temperature
    return payload


def _message(message: ChatMessage) -> dict[str, Any]:
    """A message as OpenAI's chat API takes it: with pictures, a list of content parts."""
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = []
    if message.content:
        parts.append({"type": "text", "text": message.content})
    parts.extend(
        {"type": "image_url", "image_url": {"url": image.data_url()}} for image in message.images
    )
    return {"role": message.role, "content": parts}
