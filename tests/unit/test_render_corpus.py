"""Real model answers through the renderer: Telegram accepts them, code and words survive.

The checks here judge what Telegram would store for a message, a visible text plus entities
(UTF-16 offsets), so that HTML output (parsed by the port of TDLib's parser in
`tests/fakes/telegram.py`) and text-plus-entities output are held to the same rules. The
same checks score other libraries in `bench/render_compare.py`.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.telegram.render import TELEGRAM_TEXT_LIMIT, render_html, split_markdown, utf16_len
from tests.fakes.telegram import EntityParseError, finalize_text, parse_html

ANSWERS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "answers"

Entities = list[dict[str, Any]]

# ---- the corpus ----------------------------------------------------------------------------


def load_answers() -> list[tuple[str, str]]:
    """(name, Markdown) of every answer in the corpus, by name."""
    return [(path.stem, path.read_text("utf-8")) for path in sorted(ANSWERS_DIR.glob("*.md"))]


@cache
def _reference_parser() -> MarkdownIt:
    # Plain CommonMark plus the two GFM extensions models use; raw HTML is text, as it is in
    # an answer shown to a user. Every link is a link: where it points is never a word of
    # the answer, not even when it points somewhere unsafe.
    parser = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    parser.validateLink = _any_link  # type: ignore[method-assign]
    return parser


def _any_link(url: str) -> bool:
    return True


def code_blocks(markdown: str) -> list[str]:
    """The content of every fenced code block with something in it (unclosed ones too)."""
    blocks = []
    for tok in _reference_parser().parse(markdown):
        if tok.type == "fence" and tok.content.strip():
            blocks.append(tok.content.strip("\n"))
    return blocks


def _reader_text(tokens: Sequence[Token]) -> list[str]:
    """What a reader of the answer sees: text, code, image descriptions; not link targets."""
    parts: list[str] = []
    for tok in tokens:
        if tok.type in ("fence", "code_block", "code_inline", "text", "html_inline"):
            parts.append(tok.content)
        elif tok.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif tok.children:
            parts.append("".join(_reader_text(tok.children)))
        parts.append("\n" if tok.block else "")
    return parts


_WORD_RE = re.compile(r"\w+")
# GFM task-list markers are markup: a library may show "[x]" as a checkbox.
_TASK_RE = re.compile(r"(?m)^\[[ xX]\](?=\s)")


def words(text: str) -> list[str]:
    """Runs of word characters, case folded; underscores count inside a word, not at its ends."""
    return [w for w in (m.strip("_").casefold() for m in _WORD_RE.findall(text)) if w]


def source_words(markdown: str) -> list[str]:
    """Words of the answer as a CommonMark reader sees them (link targets are not words)."""
    text = "".join(_reader_text(_reference_parser().parse(markdown)))
    return words(_TASK_RE.sub("", text))


def lost_text(markdown: str, shown: str) -> list[str]:
    """Pieces of the answer's words that `shown` does not show, in order.

    Markup characters may vanish and words may be glued or split where markup stood
    (``2*3*4`` is "234" to CommonMark and "2 3 4" to a renderer that keeps the stars), so
    the words are compared glued together; underscores inside identifiers are not markup.
    Case is ignored: a heading shown in capitals has lost nothing.
    """
    wanted, seen = source_words(markdown), words(shown)
    if not Counter(wanted) - Counter(seen):
        return []
    ref, vis = "".join(wanted), "".join(seen)
    matcher = SequenceMatcher(None, ref, vis, autojunk=False)
    return [
        ref[i1:i2] for tag, i1, i2, _, _ in matcher.get_opcodes() if tag in ("delete", "replace")
    ]


# ---- what Telegram accepts -----------------------------------------------------------------

_FORMAT_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "tg-spoiler"}
_TAG_RE = re.compile(
    r"<(?P<close>/?)(?P<name>[a-zA-Z][a-zA-Z0-9-]*)"
    r"(?P<attrs>(?:\s+[a-zA-Z-]+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'))?)*)\s*>"
)
_ATTR_RE = re.compile(r"([a-zA-Z-]+)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'))?")
_REFERENCE_RE = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")
_ENTITY_TYPES = {
    "bold",
    "italic",
    "underline",
    "strikethrough",
    "spoiler",
    "code",
    "pre",
    "text_link",
    "text_mention",  # what Telegram makes of a tg://user?id= link
    "blockquote",
    "expandable_blockquote",
    # Telegram finds these in any text by itself; harmless when a library sends them.
    "url",
    "email",
}
_QUOTES = ("blockquote", "expandable_blockquote")
_FORMATTING = {"bold", "italic", "underline", "strikethrough", "spoiler"}
# Schemes that are safe to make clickable; javascript:, data:, vbscript:, file: are not.
_SAFE_SCHEMES = {"http", "https", "tg", "ton", "mailto"}
_SCHEME_RE = re.compile(r"\s*([a-zA-Z][a-zA-Z0-9+.-]*):")


def _unsafe_link(url: str) -> bool:
    scheme = _SCHEME_RE.match(html.unescape(url))
    return scheme is not None and scheme.group(1).lower() not in _SAFE_SCHEMES


def _attr_problems(name: str, attrs: str) -> list[str]:
    found = {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _ATTR_RE.finditer(attrs)}
    problems = []
    allowed = {"a": {"href"}, "code": {"class"}, "span": {"class"}, "blockquote": {"expandable"}}
    extra = set(found) - allowed.get(name, set())
    if extra:
        problems.append(f"<{name}> with attributes {sorted(extra)}")
    for value in found.values():
        if re.search(r"[<>]|&(?!(?:lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);)", value):
            problems.append(f"unescaped character in attribute {value!r}")
    if name == "a" and _unsafe_link(found.get("href", "")):
        problems.append(f"unsafe link {found.get('href')!r}")
    if name == "span" and found.get("class") != "tg-spoiler":
        problems.append("<span> that is not a spoiler")
    if name == "code" and "class" in found and not found["class"].startswith("language-"):
        problems.append(f"<code class={found['class']!r}>")
    return problems


def html_lexical_problems(text: str) -> list[str]:
    """Tags and characters outside Telegram's HTML subset; every <, >, & must be escaped."""
    problems: list[str] = []
    pos = 0
    while pos < len(text):
        ch = text[pos]
        if ch == "<":
            tag = _TAG_RE.match(text, pos)
            if tag is None:
                problems.append(f"raw '<' at {pos}")
                pos += 1
                continue
            name = tag.group("name").lower()
            if name not in _FORMAT_TAGS | {"span", "a", "code", "pre", "blockquote"}:
                problems.append(f"unsupported tag <{name}>")
            elif not tag.group("close"):
                problems += _attr_problems(name, tag.group("attrs"))
            elif tag.group("attrs").strip():
                problems.append(f"attributes on </{name}>")
            pos = tag.end()
        elif ch == "&":
            reference = _REFERENCE_RE.match(text, pos)
            if reference is None:
                problems.append(f"raw '&' at {pos}")
                pos += 1
            else:
                pos = reference.end()
        else:
            if ch == ">":
                problems.append(f"raw '>' at {pos}")
            pos += 1
    return problems


def _nesting_problem(inner: str, outer: str, *, same: bool) -> str | None:
    """Why Telegram cannot keep `inner` inside `outer`, if it cannot."""
    if same and {inner, outer} <= _FORMATTING | {"pre", "code"}:
        return None  # which one is outside is moot; at worst the formatting is dropped
    if outer in ("pre", "code"):
        return f"{inner} inside {outer}"
    if inner in _QUOTES and outer in _QUOTES:
        return "quote inside a quote"
    if inner == outer == "text_link":
        return "link inside a link"
    if {inner, outer} in ({"pre", "blockquote"}, {"pre", "expandable_blockquote"}):
        # Bot API: blockquote and pre "can't contain each other"; one of them is dropped.
        return "code block inside a quote"
    if {inner, outer} in ({"pre", "text_link"}, {"code", "text_link"}):
        return "code inside a link"
    return None


def entity_problems(text: str, entities: Entities) -> list[str]:
    """Entities Telegram would refuse or silently drop, by the Bot API's nesting rules."""
    units = [0]
    for ch in text:
        units.append(units[-1] + (2 if ord(ch) > 0xFFFF else 1))
    boundaries = set(units)
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for entity in entities:
        kind, start, length = entity.get("type", ""), entity["offset"], entity["length"]
        end = start + length
        if kind not in _ENTITY_TYPES:
            problems.append(f"entity type {kind!r}")
        if length <= 0 or start < 0 or end > units[-1]:
            problems.append(f"{kind} at {start}+{length} outside the text")
        elif start not in boundaries or end not in boundaries:
            problems.append(f"{kind} at {start}+{length} splits a character")
        if kind == "text_link" and _unsafe_link(str(entity.get("url", ""))):
            problems.append(f"unsafe link {entity.get('url')!r}")
        spans.append((start, end, kind))
    for i, (start, end, kind) in enumerate(spans):
        for o_start, o_end, o_kind in spans[i + 1 :]:
            if end <= o_start or o_end <= start:
                continue
            if o_start <= start and end <= o_end:
                problem = _nesting_problem(kind, o_kind, same=(start, end) == (o_start, o_end))
                if problem is None and (start, end) == (o_start, o_end):
                    problem = _nesting_problem(o_kind, kind, same=True)
            elif start <= o_start and o_end <= end:
                problem = _nesting_problem(o_kind, kind, same=False)
            else:
                problem = f"{kind} and {o_kind} overlap without nesting"
            if problem is not None:
                problems.append(problem)
    return problems


def telegram_text(output: str) -> tuple[str, Entities, list[str]]:
    """(visible text, entities, problems) of HTML as Telegram's HTML parse mode reads it."""
    problems = html_lexical_problems(output)
    try:
        text, entities = parse_html(output)
    except EntityParseError as error:
        return "", [], [*problems, f"Telegram refuses it: {error}"]
    return text, entities, problems


# ---- the verdict ---------------------------------------------------------------------------


@dataclass
class Verdict:
    """How one rendering of one answer fares on the three criteria."""

    problems: list[str] = field(default_factory=list)  # (a): empty when Telegram accepts it
    missing_code: list[str] = field(default_factory=list)  # (b): code blocks not intact
    lost_words: list[str] = field(default_factory=list)  # (c): text of words not shown

    @property
    def ok(self) -> bool:
        """True when the rendering passes all three criteria."""
        return not (self.problems or self.missing_code or self.lost_words)


def judge_entities(
    markdown: str, text: str, entities: Entities, problems: Sequence[str] = ()
) -> Verdict:
    """Judge a rendering given as Telegram's visible text and entities."""
    verdict = Verdict(problems=[*problems, *entity_problems(text, entities)])
    try:
        finalize_text(text, entities)
    except ValueError as error:
        verdict.problems.append(f"Telegram refuses it: {error}")
    index_of_unit: dict[int, int] = {}
    unit = 0
    for index, ch in enumerate(text):
        index_of_unit[unit] = index
        unit += 2 if ord(ch) > 0xFFFF else 1
    index_of_unit[unit] = len(text)
    pre_texts = []
    for entity in entities:
        if entity.get("type") == "pre":
            start = index_of_unit.get(entity["offset"], 0)
            end = index_of_unit.get(entity["offset"] + entity["length"], len(text))
            pre_texts.append(text[start:end])
    verdict.missing_code = [
        code for code in code_blocks(markdown) if not any(code in pre for pre in pre_texts)
    ]
    verdict.lost_words = lost_text(markdown, text)
    return verdict


def judge_html(markdown: str, output: str) -> Verdict:
    """Judge a rendering given as Telegram HTML."""
    text, entities, problems = telegram_text(output)
    if not text and problems:
        return Verdict(problems, code_blocks(markdown), ["(refused: nothing shown)"])
    return judge_entities(markdown, text, entities, problems)


# ---- the checks have teeth -----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "a < b",
        "a & b",
        "a > b",
        "<b>x",
        "<b><i>x</b></i>",
        "<div>x</div>",
        "&nbsp;",
        "<pre>a <b>x</b></pre>",
        "<blockquote><blockquote>x</blockquote></blockquote>",
        "<blockquote><pre>x</pre></blockquote>",
        '<a href="javascript:alert(1)">x</a>',
        '<a href="https://e.com"><a href="https://f.com">x</a></a>',
        '<span class="x">y</span>',
        "<br>",
        "   ",
    ],
)
def test_checks_catch_what_telegram_refuses_or_drops(bad: str) -> None:
    assert judge_html("x", bad).problems, bad


def test_checks_accept_what_telegram_takes() -> None:
    good = (
        '<b>x</b> &lt;&amp;&gt;&quot; <a href="https://e.com/?a=1&amp;b=2">l</a>\n'
        '<pre><code class="language-c++">y</code></pre><blockquote><i>q</i></blockquote>'
    )
    assert judge_html("x", good).problems == []


def test_checks_catch_lost_code_and_words() -> None:
    source = "Use **snake_case** names.\n\n```py\nx = 1 < 2\n```"
    assert judge_html(source, render_html(source)).ok
    verdict = judge_html(source, "Use snake<i>case</i> names.\n\n<pre>x = 1</pre>")
    assert verdict.missing_code == ["x = 1 < 2"]
    assert verdict.lost_words == ["_", "2"]


def test_entity_checks() -> None:
    text = "bold code"
    good = [{"type": "bold", "offset": 0, "length": 4}, {"type": "pre", "offset": 5, "length": 4}]
    assert entity_problems(text, good) == []
    for bad in (
        [{"type": "bold", "offset": 0, "length": 20}],
        [{"type": "bold", "offset": 0, "length": 6}, {"type": "italic", "offset": 3, "length": 6}],
        [{"type": "pre", "offset": 0, "length": 9}, {"type": "bold", "offset": 0, "length": 4}],
        [{"type": "text_link", "offset": 0, "length": 4, "url": "javascript:x"}],
        [{"type": "mention", "offset": 0, "length": 4}],
    ):
        assert entity_problems(text, bad), bad
    assert entity_problems("😀", [{"type": "bold", "offset": 1, "length": 1}])


def test_the_corpus_is_what_it_says() -> None:
    answers = dict(load_answers())
    assert 30 <= len(answers) <= 60
    assert sum(utf16_len(text) > TELEGRAM_TEXT_LIMIT for text in answers.values()) >= 3
    assert sum(len(code_blocks(text)) for text in answers.values()) >= 40
    assert all(source_words(text) for text in answers.values())


# ---- our renderer over the corpus ----------------------------------------------------------

ANSWERS = load_answers()


@pytest.mark.parametrize(("name", "markdown"), ANSWERS, ids=[name for name, _ in ANSWERS])
def test_answer_renders_valid_intact_and_complete(name: str, markdown: str) -> None:
    verdict = judge_html(markdown, render_html(markdown))
    assert verdict.problems == []
    assert verdict.missing_code == []
    assert verdict.lost_words == []


@pytest.mark.parametrize(("name", "markdown"), ANSWERS, ids=[name for name, _ in ANSWERS])
def test_answer_split_into_messages_stays_valid_and_complete(name: str, markdown: str) -> None:
    # What the user finally sees of a long answer: each message fits and is accepted, and
    # together they show every word.
    shown = []
    for piece in split_markdown(markdown):
        out = render_html(piece)
        assert utf16_len(out) <= TELEGRAM_TEXT_LIMIT
        text, entities, problems = telegram_text(out)
        assert problems + entity_problems(text, entities) == [], piece
        shown.append(text)
    assert lost_text(markdown, "\n".join(shown)) == []
