"""Speech to text on OpenAI-compatible backends: `POST /audio/transcriptions`.

The request is OpenAI's: a multipart form with the audio as `file` (its name and content type
set), `model` and `response_format=json`. The answer is `{"text": ...}`; what the audio lasted
comes as whisper-1's `usage: {"type": "duration", "seconds": N}` or verbose_json's `duration`,
and not at all from token-billed models (gpt-4o-transcribe sends `usage: {"type": "tokens"}`).

Many backends have no such endpoint (Ollama, chat-only proxies): they answer 404, or 405 where
the path exists for other methods. Both raise `LLMEndpointMissingError`, which the caller can
tell from other failures (`is_missing_endpoint`) to say that voice is not transcribed here.

Neither the audio nor the transcript is ever logged, only their sizes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bot.llm.dialects import (
    ErrorInfo,
    classify,
    is_wrapped_error,
    loads,
    payload_error,
    status_error,
)
from bot.llm.errors import (
    LLMError,
    LLMHTTPError,
    LLMNotFoundError,
    LLMProtocolError,
    LLMRateLimitError,
)
from bot.llm.policy import Retrying, RetryPolicy, Within, chat_retryable
from bot.llm.transport import as_httpx_error, read_capped, read_error_body, transport_error

logger = logging.getLogger(__name__)

PATH = "/audio/transcriptions"
# A transcript is text: even an hour of verbose_json segments stays far below this.
MAX_BODY_BYTES = 4 * 1024 * 1024
# The one retry waits for a backend's Retry-After only this long; a user is waiting.
RETRY_AFTER_CAP = 10.0

# A 404 that names a model is about the model (OpenAI's `model_not_found`), not the endpoint.
_MODEL_HINT_RE = re.compile(r"\bmodel", re.IGNORECASE)


class LLMEndpointMissingError(LLMNotFoundError):
    """404 or 405 for the transcription endpoint itself: this backend does not transcribe."""


def is_missing_endpoint(exc: BaseException) -> bool:
    """True if `exc` says the backend has no transcription endpoint (not a missing model)."""
    return isinstance(exc, LLMEndpointMissingError)


@dataclass(frozen=True, slots=True)
class Transcript:
    """What the backend heard; `seconds` of audio as it reported them, if it did."""

    text: str
    seconds: float | None = None


class TranscriptionClient:
    """Asks one OpenAI-compatible backend to transcribe audio with one model."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout: float,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Use the caller's shared `http` client; `timeout` bounds a whole call, its retry
        included; `retry` defaults to one retry, and `sleep` is injectable so tests need not
        wait."""
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._model = model
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        policy = retry or RetryPolicy(max_retries=1)
        self._retrying = Retrying(policy, _retryable, sleep, "transcription")

    async def transcribe(self, *, filename: str, data: bytes, content_type: str) -> Transcript:
        """The text spoken in `data` (an audio file named `filename`); raise an LLMError.

        An empty transcript is returned as it came: whether silence is an error is the
        caller's decision.
        """
        logger.debug(
            "transcription request: model=%s, %s, %d bytes", self._model, content_type, len(data)
        )
        deadline = asyncio.get_running_loop().time() + self._timeout
        async with Within(deadline, "total", self._timeout):
            document = await self._retrying.call(
                lambda: self._post(filename, data, content_type), deadline
            )
        transcript = parse_transcript(document)
        logger.debug(
            "transcript: %d characters, %s seconds of audio",
            len(transcript.text),
            "unknown" if transcript.seconds is None else f"{transcript.seconds:g}",
        )
        return transcript

    # -- one attempt -------------------------------------------------------------------------

    async def _post(self, filename: str, data: bytes, content_type: str) -> dict[str, Any]:
        # httpx writes the multipart Content-Type, boundary included.
        headers = {"Accept": "application/json", **self._auth()}
        try:
            async with self._http.stream(
                "POST",
                f"{self._base_url}{PATH}",
                files={"file": (filename, data, content_type)},
                data={"model": self._model, "response_format": "json"},
                headers=headers,
                timeout=self._httpx_timeout(),
            ) as response:
                if not response.is_success:
                    body = await read_error_body(response)
                    raise self._status_error(response, body)
                body = await read_capped(response, MAX_BODY_BYTES, "backend's transcript")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            plain = as_httpx_error(exc)
            raise self._transport_error(plain) from plain
        try:
            document = loads(body)
        except ValueError as exc:
            raise LLMProtocolError("backend's transcript is not JSON") from exc
        if not isinstance(document, dict):
            raise LLMProtocolError("backend's transcript has an unexpected shape")
        if is_wrapped_error(document):
            raise payload_error(document, secret=self._api_key, classifier=_classify)
        return document

    # -- errors and requests -----------------------------------------------------------------

    def _status_error(self, response: httpx.Response, body: bytes) -> LLMHTTPError:
        return status_error(
            response.status_code,
            response.reason_phrase,
            response.headers,
            body,
            secret=self._api_key,
            classifier=_classify,
        )

    def _transport_error(self, exc: Exception) -> LLMError:
        return transport_error(
            exc,
            connect_seconds=self._connect_timeout,
            read_phase="total",
            read_seconds=self._timeout,
            secret=self._api_key,
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _httpx_timeout(self) -> httpx.Timeout:
        # The backend says nothing until it has listened to the whole file.
        return httpx.Timeout(
            connect=self._connect_timeout,
            read=self._timeout,
            write=self._timeout,
            pool=self._connect_timeout,
        )


# -- answers -------------------------------------------------------------------------------------


def parse_transcript(document: dict[str, Any]) -> Transcript:
    """The transcript in a JSON answer; LLMProtocolError when it holds no text."""
    text = document.get("text")
    if not isinstance(text, str):
        raise LLMProtocolError("backend's transcript holds no text")
    return Transcript(text=text, seconds=_seconds(document))


def _seconds(document: dict[str, Any]) -> float | None:
    """Seconds of audio: whisper-1's duration usage, else verbose_json's `duration`."""
    usage = document.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "duration":
        seconds = _duration(usage.get("seconds"))
        if seconds is not None:
            return seconds
    return _duration(document.get("duration"))


def _duration(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# -- errors --------------------------------------------------------------------------------------


def _classify(
    status: int, message: str, info: ErrorInfo, retry_after: float | None
) -> LLMHTTPError:
    if status == 405 or (status == 404 and not _names_model(message, info)):
        return LLMEndpointMissingError(status, message, info.code)
    return classify(status, message, info, retry_after)


def _names_model(message: str, info: ErrorInfo) -> bool:
    return info.code == "model_not_found" or bool(_MODEL_HINT_RE.search(message))


def _retryable(exc: LLMError) -> bool:
    """429, 5xx and lost connections, as for chat; not a wait longer than RETRY_AFTER_CAP."""
    if isinstance(exc, LLMRateLimitError) and (exc.retry_after or 0.0) > RETRY_AFTER_CAP:
        return False
    return chat_retryable(exc)
