"""A streamed chat answer: its bytes, bounded, parsed as SSE into text deltas and usage."""

from __future__ import annotations

import codecs
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bot.llm.dialects import (
    is_image_job,
    is_wrapped_error,
    loads,
    loads_or_text,
    parse_usage,
    payload_error,
    text_of,
)
from bot.llm.errors import LLMProtocolError, LLMResponseTooLargeError
from bot.llm.policy import Within
from bot.llm.types import ChatEvent, StreamEnd, TextDelta, Usage

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# An SSE line is one event's JSON, a few hundred bytes; a megabyte is no answer, but a backend
# (or proxy) that never sends a newline, which the line parser would buffer without end.
MAX_LINE_BYTES = 1 * MIB
# About 300,000 tokens of OpenAI-shaped chunks (200 bytes each), beyond any model's output.
MAX_ANSWER_BYTES = 64 * MIB

REPLACEMENT = "\ufffd"

# Returns the deadline that bounds the next read of the body, or None once answer text has been
# sent on: then each read is bounded by the idle timeout of the HTTP client alone, and the total
# deadline is checked by the callable itself before the read (a timer per read would cost more
# than the rest of the read for the small events of a stream).
ReadBudget = Callable[[], Within | None]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The most a streamed answer may send: in one line, and in all (decoded bytes)."""

    line_bytes: int = MAX_LINE_BYTES
    answer_bytes: int = MAX_ANSWER_BYTES


@dataclass(slots=True)
class StreamState:
    """What one streamed answer has brought so far."""

    # A content or reasoning delta arrived, so the first-token timer no longer applies.
    started: bool = False
    # A TextDelta reached the consumer: a lost connection is reported as lost mid-answer.
    text_sent: bool = False
    done: bool = False
    chunks: int = 0
    skipped: int = 0
    finish_reason: str | None = None
    usage: Usage | None = None
    # The first half of a character split across chunks, held until its second half arrives.
    carry: str = ""


class BodyBounds:
    """The limits of one streamed body, checked per chunk of decoded bytes as it arrives.

    The check runs before the SSE parser buffers anything: one search for the last line break
    per chunk, so an endless line fails at the limit rather than filling memory.
    """

    __slots__ = ("_limits", "_line", "_total")

    def __init__(self, limits: StreamLimits) -> None:
        """Bound a body by `limits`."""
        self._limits = limits
        self._line = 0  # bytes since the last line break
        self._total = 0

    def check(self, chunk: bytes) -> None:
        """Count `chunk` in; raise LLMResponseTooLargeError past a limit."""
        limits = self._limits
        self._total += len(chunk)
        if self._total > limits.answer_bytes:
            raise LLMResponseTooLargeError(
                f"backend sent more than {_size(limits.answer_bytes)} in one answer"
            )
        # SSE lines end in LF, CRLF or a lone CR.
        last = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if last < 0:
            self._line += len(chunk)
        else:
            # No line ending in this chunk is longer than what came before plus `last`: only
            # when that passes the limit (rarely: a huge read) are its lines measured.
            if self._line + last > limits.line_bytes:
                lengths = [len(line) for line in chunk[:last].replace(b"\r", b"\n").split(b"\n")]
                lengths[0] += self._line
                if max(lengths) > limits.line_bytes:
                    self._too_long()
            self._line = len(chunk) - last - 1
        if self._line > limits.line_bytes:
            self._too_long()

    def _too_long(self) -> None:
        raise LLMResponseTooLargeError(
            f"backend sent a line longer than {_size(self._limits.line_bytes)}"
        )


def _size(limit: int) -> str:
    return f"{limit // MIB} MiB" if limit % MIB == 0 else f"{limit} bytes"


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its type ("message" unless named) and its data lines joined."""

    event: str
    data: str


class SSEParser:
    """Server-sent events from a body's text, fed as it arrives, by the WHATWG rules.

    Lines end in LF, CRLF or a lone CR (even split across feeds); a blank line dispatches the
    event; comments and unknown fields are ignored; an event without data is not dispatched,
    nor is one the body ends before its blank line. `id` and `retry` are not kept: a chat
    completion is never resumed.
    """

    __slots__ = ("_after_cr", "_data", "_event", "_partial")

    def __init__(self) -> None:
        """Start before the first line."""
        self._partial = ""  # a line still waiting for its end
        self._after_cr = False  # the last feed ended in CR: a leading LF belongs to it
        self._event = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[Event]:
        """The events that `text` completes."""
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if len(lines) == 1:
            self._partial += text
            return []
        lines[0] = self._partial + lines[0]
        self._partial = lines.pop()
        events: list[Event] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(Event(self._event or "message", "\n".join(self._data)))
                    self._data = []
                self._event = ""
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event = value
        return events


def _text_decoder(response: httpx.Response) -> codecs.IncrementalDecoder:
    """A decoder of the body's charset (UTF-8 unless it names a known other), bad bytes as U+FFFD.

    Some proxies stream valid SSE as text/plain or without a Content-Type at all: the body is
    parsed as SSE whatever its Content-Type says.
    """
    charset = response.charset_encoding or "utf-8"
    try:
        factory = codecs.getincrementaldecoder(charset)
    except LookupError:
        logger.warning("backend streams in unknown charset %r; reading it as UTF-8", charset)
        factory = codecs.getincrementaldecoder("utf-8")
    return factory(errors="replace")


async def answer_texts(
    response: httpx.Response,
    budget: ReadBudget,
    limits: StreamLimits,
    state: StreamState,
    *,
    secret: str | None,
) -> AsyncGenerator[str, None]:
    """The answer's text pieces, until `[DONE]` or the end of the body; `state` keeps the rest.

    The body is read as the backend sends it, each read within `budget()`. Each chunk goes
    through bounds, decoding, SSE and the completion chunk in one pass, with no layers of async
    iterators (httpx's text and line iterators, an SSE library's) in between.
    """
    chunks = response.aiter_bytes()
    bounds = BodyBounds(limits)
    decoder = _text_decoder(response)
    parser = SSEParser()
    try:
        while True:
            within = budget()
            try:
                if within is None:
                    chunk = await anext(chunks)
                else:
                    async with within:
                        chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            bounds.check(chunk)
            for sse in parser.feed(decoder.decode(chunk)):
                for text in handle_event(sse, state, secret=secret):
                    state.text_sent = True
                    yield text
                if state.done:
                    return
    finally:
        close = getattr(chunks, "aclose", None)  # an async generator, typed as an iterator
        if close is not None:
            await close()


def finish(state: StreamState) -> list[ChatEvent]:
    """The events that end a stream that has run to its end: a held half, then StreamEnd."""
    events: list[ChatEvent] = []
    if state.carry:
        events.append(TextDelta(REPLACEMENT))  # the second half never came
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
    events.append(StreamEnd(finish_reason=state.finish_reason, usage=state.usage))
    return events


def handle_event(sse: Event, state: StreamState, *, secret: str | None) -> list[str]:
    """The text pieces one SSE event brings; records finish reason, usage and `[DONE]`."""
    chunk = _chunk(sse, state, secret=secret)
    if chunk is None:
        return []
    state.chunks += 1
    usage = parse_usage(chunk.get("usage"))
    if usage is not None:
        state.usage = usage
    texts: list[str] = []
    for choice in _answer_choices(chunk.get("choices")):
        if text := _delta_text(choice, state):
            texts.append(text)
        state.finish_reason = _finish_reason(choice) or state.finish_reason
    return texts


def _chunk(sse: Event, state: StreamState, *, secret: str | None) -> dict[str, Any] | None:
    """The event's completion chunk (a dict), or None for an event that brings none."""
    data = sse.data.strip()
    if sse.event == "error":
        raise payload_error(loads_or_text(data), secret=secret)
    if not data:
        return None
    if data == "[DONE]":
        state.done = True
        return None
    try:
        chunk = loads(data)
    except ValueError:
        state.skipped += 1
        logger.warning("skipping a stream event that is not valid JSON (%d bytes)", len(data))
        return None
    if not isinstance(chunk, dict):
        state.skipped += 1
        logger.warning("skipping a stream event that is not a JSON object")
        return None
    if chunk.get("error"):
        # HTTP 200 with an error event: mock-llm for error rules, LiteLLM when its
        # upstream fails after the first chunk.
        raise payload_error(chunk, secret=secret)
    if not isinstance(chunk.get("choices"), list) and "usage" not in chunk:
        logger.debug("ignoring a stream event without choices or usage")
        return None
    return chunk


def _answer_choices(choices: Any) -> list[dict[str, Any]]:
    # Other indexes are alternative answers, which are never asked for.
    if not isinstance(choices, list):
        return []
    return [c for c in choices if isinstance(c, dict) and c.get("index", 0) in (0, None)]


def _delta_text(choice: dict[str, Any], state: StreamState) -> str:
    delta = choice.get("delta") or choice.get("message") or {}
    if not isinstance(delta, dict):
        return ""
    # Reasoning is not part of the answer, but it shows the model is working.
    if delta.get("reasoning_content") or delta.get("reasoning"):
        state.started = True
    text = text_of(delta.get("content"))
    if not text:
        return ""
    state.started = True
    return whole_characters(text, state)


def _finish_reason(choice: dict[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) and reason else None


def whole_characters(text: str, state: StreamState) -> str:
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


def completion_events(body: bytes, *, secret: str | None) -> list[ChatEvent]:
    """The events of a backend that ignored `stream: true` and sent one JSON completion."""
    try:
        document = loads(body)
    except ValueError as exc:
        raise LLMProtocolError("backend answered with invalid JSON") from exc
    if not isinstance(document, dict):
        raise LLMProtocolError("backend answered with JSON that is not a completion")
    if is_wrapped_error(document):
        raise payload_error(document, secret=secret)
    choices = document.get("choices")
    if not isinstance(choices, list):
        if is_image_job(document):
            raise LLMProtocolError("backend answered with an image job, not a chat completion")
        raise LLMProtocolError("backend answered with JSON that is not a completion")
    events: list[ChatEvent] = []
    finish_reason: str | None = None
    for choice in _answer_choices(choices):
        message = choice.get("message") or choice.get("delta") or {}
        if isinstance(message, dict) and (text := text_of(message.get("content"))):
            events.append(TextDelta(text))
        finish_reason = _finish_reason(choice) or finish_reason
    logger.debug("backend ignored stream=true and sent one completion (%d bytes)", len(body))
    events.append(StreamEnd(finish_reason, parse_usage(document.get("usage"))))
    return events
