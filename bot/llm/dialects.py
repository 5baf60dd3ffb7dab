"""What OpenAI-compatible backends send: their error shapes, status codes, headers and lists.

Every provider quirk the client knows lives here, each with the provider it comes from; the
captured answers in tests/fixtures/providers/ show them.
"""

from __future__ import annotations

import email.utils
import html
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from bot.llm.errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMContextLengthError,
    LLMHTTPError,
    LLMNotFoundError,
    LLMProtocolError,
    LLMRateLimitError,
    LLMServerError,
)
from bot.llm.types import ModelInfo, Usage

logger = logging.getLogger(__name__)

# Error messages are shown to admins and logged; a backend's HTML page or stack trace is not.
MESSAGE_LIMIT = 300
# The most tokens one call may report per field. No model has a context anywhere near ten
# million tokens, so a larger figure is a backend's bug or attack, not usage; believed, it would
# overflow every SUM over usage (2**63 - 1 did) or the column itself.
MAX_USAGE_TOKENS = 10_000_000

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
    # LiteLLM's completion-only, moderation and reranking models cannot hold a conversation.
    "completion": "completion",
    "moderation": "moderation",
    "rerank": "rerank",
}


@dataclass(slots=True)
class ErrorInfo:
    """What an error body said: message, code, type and status, where it said them."""

    message: str | None = None
    code: str | None = None
    type: str | None = None
    status: int | None = None


Classifier = Callable[[int, str, ErrorInfo, float | None], LLMHTTPError]


def loads(data: str | bytes) -> Any:
    """Parse a backend's JSON.

    orjson parses a stream chunk about four times faster than the standard library, which
    matters at a hundred chunks an answer. What it refuses but json accepts (NaN, a lone
    surrogate escape from a model that split an emoji) is still parsed, by json.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def loads_or_text(data: str) -> Any:
    """`data` parsed as JSON, or the text itself when it is not JSON."""
    try:
        return loads(data)
    except ValueError:
        return data


def short_message(text: str, *, secret: str | None) -> str:
    """`text` on one line, at most MESSAGE_LIMIT characters, with `secret` masked."""
    text = " ".join(text.split())
    if secret and len(secret) >= 8:
        text = text.replace(secret, "***")
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 1].rstrip() + "…"
    return text


# -- errors --------------------------------------------------------------------------------------


def classify(
    status: int, message: str, info: ErrorInfo, retry_after: float | None
) -> LLMHTTPError:
    """The error class an HTTP status and the error's wording stand for."""
    hints = f"{info.code or ''} {info.type or ''} {message}"
    code = info.code
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


def status_error(
    status: int,
    reason: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str | None,
    classifier: Classifier = classify,
) -> LLMHTTPError:
    """The error an answer with an error `status` and this `body` stands for."""
    info = error_info_from_body(body)
    message = short_message(info.message or reason or "no details", secret=secret)
    wait = retry_after(headers) if status == 429 else None
    return classifier(status, message, info, wait)


def payload_error(
    payload: Any, *, secret: str | None, classifier: Classifier = classify
) -> LLMHTTPError:
    """The error an error object inside a successful answer (or an SSE error event) stands for."""
    info = error_info(payload)
    if info.message is None and isinstance(payload, str) and payload:
        info.message = payload
    message = short_message(info.message or "backend reported an error", secret=secret)
    return classifier(status_from_hints(info), message, info, None)


def is_wrapped_error(document: dict[str, Any]) -> bool:
    """True for an error delivered in a successful answer's body.

    OpenAI-style `{"error": ...}` objects, and akashchat's `{"code": 500, "data": {"msg": ...}}`
    envelope, which it sends even with HTTP 200.
    """
    data = document.get("data")
    return bool(document.get("error")) or (
        isinstance(data, dict) and "msg" in data and document.get("code") != 200
    )


def status_from_hints(info: ErrorInfo) -> int:
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


def error_info_from_body(body: bytes) -> ErrorInfo:
    """Read an error body: any JSON error shape, an HTML page's title, or plain text."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return ErrorInfo()
    try:
        payload = loads(text)
    except ValueError:
        if title := _HTML_TITLE_RE.search(text):
            return ErrorInfo(message=html.unescape(title.group(1)))
        if text.lstrip().startswith("<"):
            return ErrorInfo(message=html.unescape(_HTML_TAG_RE.sub(" ", text)))
        return ErrorInfo(message=text)
    info = error_info(payload)
    if info.message is None:
        info.message = text
    return info


def error_info(payload: Any) -> ErrorInfo:
    """Read message, code and type from any of the error shapes backends use."""
    if isinstance(payload, list):
        # Google's compatibility layer wraps the error object in a list.
        payload = payload[0] if payload else None
    if not isinstance(payload, dict):
        return ErrorInfo()
    error = payload.get("error")
    if isinstance(error, dict):
        return ErrorInfo(
            message=nonempty_str(error.get("message")) or nonempty_str(error.get("detail")),
            code=_code(error.get("code")),
            type=nonempty_str(error.get("type")),
            status=_int(error.get("status")),
        )
    if isinstance(error, str) and error:
        # Express-style {"error": "Not Found", "message": "...", "status": 404}.
        extra = nonempty_str(payload.get("message"))
        message = f"{error}: {extra}" if extra and extra != error else error
        return ErrorInfo(message=message, status=_int(payload.get("status")))
    if "detail" in payload:
        return ErrorInfo(message=_detail_text(payload["detail"]))
    data = payload.get("data")
    if isinstance(data, dict) and isinstance(data.get("msg"), str):
        # akashchat: {"code": 500, "data": {"msg": "..."}}
        return ErrorInfo(
            message=data["msg"], code=_code(payload.get("code")), status=_int(payload.get("code"))
        )
    if text := nonempty_str(payload.get("message")):
        return ErrorInfo(
            message=text,
            code=_code(payload.get("code")),
            type=nonempty_str(payload.get("type")),
            status=_int(payload.get("status")),
        )
    return ErrorInfo()


def _detail_text(detail: Any) -> str:
    # FastAPI: a string, or a list of {"loc", "msg", "type"} for validation errors.
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = [d["msg"] for d in detail if isinstance(d, dict) and isinstance(d.get("msg"), str)]
        if parts:
            return "; ".join(parts)
    if isinstance(detail, dict):
        found = nonempty_str(detail.get("message")) or nonempty_str(detail.get("msg"))
        if found:
            return found
    return json.dumps(detail, ensure_ascii=False)


# -- retry headers -------------------------------------------------------------------------------


def retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
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


# -- answers -------------------------------------------------------------------------------------


def text_of(content: Any) -> str:
    """The text of a message's `content`: a string, or a list of typed parts."""
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


def parse_usage(raw: Any) -> Usage | None:
    """Token counts from a `usage` object in either naming; None when it says nothing usable."""
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens", raw.get("input_tokens"))
    completion = raw.get("completion_tokens", raw.get("output_tokens"))
    absurd = {
        name: value
        for name, value in (("prompt_tokens", prompt), ("completion_tokens", completion))
        if value is not None and not _is_token_count(value)
    }
    if absurd:
        # One absurd figure discredits the whole report: the caller then counts both sides
        # itself, marked as an estimate, which keeps the user's /usage and budgets meaningful
        # (a clamped ten million would spend any budget at once). Only the figures are logged,
        # cut short: a string figure is the backend's text.
        logger.warning(
            "ignoring the backend's usage, not a token count in [0, %d]: %s",
            MAX_USAGE_TOKENS,
            ", ".join(f"{name}={_short_repr(value)}" for name, value in absurd.items()),
        )
        return None
    # akashchat always sends zeros as placeholders: zeros mean "unknown", not "free".
    if not prompt and not completion:
        return None
    return Usage(prompt_tokens=prompt or 0, completion_tokens=completion or 0)


def _is_token_count(value: Any) -> bool:
    # Not bool (an int in Python), float (12.7 tokens is no count) or a numeric string.
    return type(value) is int and 0 <= value <= MAX_USAGE_TOKENS


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def is_image_job(document: dict[str, Any]) -> bool:
    """True for akashchat's image answer, `{"code": 200, "data": {"pic" or "jobId": ...}}`."""
    data = document.get("data")
    return isinstance(data, dict) and ("pic" in data or "jobId" in data)


def parse_models(payload: Any) -> list[ModelInfo]:
    """The model list, whichever of the known shapes it uses."""
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
        elif isinstance(entry, dict) and (model_id := nonempty_str(entry.get("id"))):
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
        name=nonempty_str(entry.get("name")),
        context_tokens=context,
        available=available if isinstance(available, bool) else True,
        kind=_KIND_BY_MODE.get(mode) if isinstance(mode, str) else None,
        vision=_vision(entry),
    )


def _vision(entry: dict[str, Any]) -> bool | None:
    """Whether a model list entry says the model reads pictures; None where it does not say.

    LiteLLM's model info says `supports_vision`; OpenRouter lists `architecture.
    input_modalities`; Ollama and some proxies list `capabilities` ("vision").
    """
    for holder in (entry, entry.get("model_info")):
        if isinstance(holder, dict) and isinstance(holder.get("supports_vision"), bool):
            return bool(holder["supports_vision"])
    architecture = entry.get("architecture")
    if isinstance(architecture, dict):
        modalities = architecture.get("input_modalities")
        if isinstance(modalities, list):
            return "image" in modalities
    capabilities = entry.get("capabilities")
    if isinstance(capabilities, list) and capabilities:
        return "vision" in capabilities
    if isinstance(capabilities, dict) and isinstance(capabilities.get("vision"), bool):
        return bool(capabilities["vision"])
    return None


# -- JSON values ---------------------------------------------------------------------------------


def nonempty_str(value: Any) -> str | None:
    """`value` if it is a non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # isdigit() alone also takes "²" and other Unicode digits, which int() refuses.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _code(value: Any) -> str | None:
    # OpenAI sends strings, LiteLLM numbers as strings ("429"), others plain numbers.
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        return str(value) or None
    return None
