"""The SSE parser gives what httpx-sse's public EventSource gives, however the body is cut."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
from httpx_sse import EventSource

from bot.llm.stream import Event, SSEParser

PROVIDERS = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
CAPTURES = sorted(PROVIDERS.rglob("*.sse"))

EDGE_CASES = {
    "crlf": "data: a\r\n\r\ndata: b\r\n\r\n",
    "lone cr": "data: a\r\rdata: b\r\r",
    "mixed endings": "data: a\n\r\ndata: b\r\n\rdata: c\r\n\n",
    "no space after colon": "data:a\n\ndata:  two spaces\n\n",
    "multi-line data": "data: first\ndata: second\ndata:\n\n",
    "named event": 'event: error\ndata: {"error": 1}\n\ndata: after\n\n',
    "comments and unknown fields": ": keep-alive\nretry: 100\nid: 7\nfoo: bar\ndata: x\n\n",
    "field without colon": "data\n\ndata: y\n\n",
    "event without data": "event: ping\n\ndata: z\n\n",
    "blank lines only": "\n\n\n\n",
    "unterminated last event": "data: kept\n\ndata: dropped at the end",
    "unicode": "data: «привет» 你好 🦦\n\n",
}


def reference(text: str) -> list[Event]:
    """The events with data httpx-sse makes of `text`: the only ones a stream acts on."""
    response = httpx.Response(
        200, headers={"Content-Type": "text/event-stream"}, content=text.encode()
    )
    return [Event(sse.event, sse.data) for sse in EventSource(response).iter_sse() if sse.data]


def parsed(pieces: list[str]) -> list[Event]:
    parser = SSEParser()
    return [event for piece in pieces for event in parser.feed(piece) if event.data]


def cuts(text: str, rng: random.Random) -> list[str]:
    """`text` cut at random places (a CRLF may be cut in two)."""
    points = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases_match_the_reference(name: str) -> None:
    text = EDGE_CASES[name]
    assert parsed([text]) == reference(text)
    # Every single cut, including between a CR and its LF.
    for at in range(1, len(text)):
        assert parsed([text[:at], text[at:]]) == reference(text), at


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.parent.name + "/" + p.name)
def test_captured_streams_match_the_reference_however_cut(capture: Path) -> None:
    text = capture.read_text(encoding="utf-8")
    expected = reference(text)
    assert expected  # the capture holds events
    assert parsed([text]) == expected
    rng = random.Random(capture.name)
    for _ in range(50):
        assert parsed(cuts(text, rng)) == expected
    assert parsed(list(text)) == expected  # a character at a time


def test_captures_were_found() -> None:
    assert len(CAPTURES) >= 5
