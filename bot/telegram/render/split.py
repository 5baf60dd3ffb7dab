"""Cutting long answers into pieces that each fit one Telegram message.

A piece must fit twice: as Markdown (what the stream writer shows while the answer grows) and
as the HTML `render_html` makes of it, which escaping can make much longer. Pieces are cut at
paragraph boundaries, else line breaks, else spaces, else between whole characters; a code
block cut in two is closed at the end of one piece and reopened at the start of the next. The
splitter is total: it never raises on any input, including Markdown cut off mid-stream.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from markdown_it.token import Token

from bot.telegram.render.markdown import parse_blocks, render_blocks, render_html, utf16_len

__all__ = [
    "TELEGRAM_TEXT_LIMIT",
    "Piece",
    "first_piece",
    "render_fitting",
    "split_markdown",
]

TELEGRAM_TEXT_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Piece:
    """One message's worth of an answer: self-contained Markdown and where the rest starts."""

    markdown: str
    end: int
    carry: str


# Whitespace a message may be cut at; no-break spaces exist precisely to prevent that.
_WS_RUN_RE = re.compile(r"[^\S\u00a0\u2007\u202f]+")
# The same runs, only those holding a line break.
_BREAK_RUN_RE = re.compile(r"[^\S\r\n\u00a0\u2007\u202f]*[\r\n][^\S\u00a0\u2007\u202f]*")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")
_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")
_NOT_QUOTE_RE = re.compile(r"[^>\s]")


@dataclass(frozen=True, slots=True)
class _Fence:
    open_start: int  # offset of the opening fence line
    content_start: int  # offset of the first line after it
    content_end: int  # offset of the closing fence line, or where the unclosed fence ends
    first_code: int  # offset of the first non-whitespace character of the code
    close_line: str  # line that closes the fence at a cut (keeps the quote/list prefix)
    reopen: str  # line that reopens it at the start of the next piece, e.g. "```python\n"
    closing_re: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class _Cut:
    start: int  # the piece is body[:start] (plus a closing fence line when `fence` is set)
    next_start: int  # body offset where the next piece's source starts
    size: int  # UTF-16 length of the piece's Markdown
    kind: int  # 2: paragraph boundary, 1: line break, 0: other whitespace, -1: hard cut
    fence: _Fence | None


class _Window:
    """What one `first_piece` call knows about the start of `carry + text`."""

    def __init__(self, text: str, carry: str, limit: int) -> None:
        self.text = text
        self.carry = carry
        self.limit = limit
        # No piece reaches past this: each character is at least one UTF-16 unit.
        self.body = carry + text[: limit + 1]
        self.astral = [m.start() for m in _ASTRAL_RE.finditer(self.body)]
        self.line_starts = [0] + [m.end() for m in _NEWLINE_RE.finditer(self.body)]
        self.verdicts: dict[int, bool] = {}
        tokens, has_references = parse_blocks(self.body)
        self.fences = self._find_fences(tokens)
        self.fence_starts = [fence.open_start for fence in self.fences]
        # Top-level blocks already rendered, so that a fit check only renders the block
        # being cut. Link reference definitions act across blocks: then render it all.
        self.composable = not has_references
        self.block_starts: list[int] = []
        self.block_ends: list[int] = []
        self.before_size = [0]  # UTF-16 size of the joined HTML of the blocks before j
        self.before_count = [0]  # how many of them show something
        if self.composable:
            self._index_blocks(tokens)

    def _line_start(self, line: int) -> int:
        return self.line_starts[line] if line < len(self.line_starts) else len(self.body)

    def _line(self, line: int) -> str:
        return self.body[self._line_start(line) : self._line_start(line + 1)].rstrip("\r\n")

    def _find_fences(self, tokens: list[Token]) -> list[_Fence]:
        fences: list[_Fence] = []
        for tok in tokens:
            if tok.type != "fence" or not tok.map or not tok.markup:
                continue
            first, after = tok.map
            opening = self._line(first)
            prefix = _NOT_QUOTE_RE.sub(" ", opening[: max(opening.find(tok.markup), 0)])
            fence_char, length = re.escape(tok.markup[0]), len(tok.markup)
            closing_re = re.compile(rf"[\s>]*{fence_char}{{{length},}}[ \t]*")
            closed = after - 1 > first and closing_re.fullmatch(self._line(after - 1))
            content_start = self._line_start(first + 1)
            code = _WS_RUN_RE.match(self.body, content_start)
            # A quote prefix keeps the reopened fence inside the quote; list indentation
            # of 4+ would turn the reopened fence into an indented code block instead.
            reopen_prefix = prefix if ">" in prefix or len(prefix) <= 3 else ""
            fences.append(
                _Fence(
                    open_start=self._line_start(first),
                    content_start=content_start,
                    content_end=self._line_start(after - 1 if closed else after),
                    first_code=code.end() if code else content_start,
                    close_line=prefix + tok.markup,
                    reopen=reopen_prefix + tok.markup + tok.info + "\n",
                    closing_re=closing_re,
                )
            )
        return fences

    def _index_blocks(self, tokens: list[Token]) -> None:
        blocks = render_blocks(tokens)
        if blocks is None:
            self.composable = False
            return
        size = count = 0
        for line_map, html in blocks:
            self.block_starts.append(self._line_start(line_map[0]))
            self.block_ends.append(self._line_start(line_map[1]))
            if html:
                size += utf16_len(html) + (2 if count else 0)
                count += 1
            self.before_size.append(size)
            self.before_count.append(count)

    def _fence_at(self, pos: int) -> _Fence | None:
        index = bisect_right(self.fence_starts, pos) - 1
        if index >= 0 and pos < self.fences[index].content_end:
            return self.fences[index]
        return None

    def _utf16(self, pos: int) -> int:
        return pos + bisect_left(self.astral, pos)

    def _slice(self, start: int, stop: int) -> str:
        """(carry + text)[start:stop] without building the whole body."""
        if stop <= len(self.body):
            return self.body[start:stop]
        carry = len(self.carry)
        if start >= carry:
            return self.text[start - carry : stop - carry]
        return self.carry[start:] + self.text[: stop - carry]

    def _run_end(self, match: re.Match[str]) -> int:
        """End of a whitespace run, looking past the window into the whole text."""
        if match.end() < len(self.body):
            return match.end()
        full = _WS_RUN_RE.match(self.text, match.start() - len(self.carry))
        return len(self.carry) + full.end() if full else match.end()

    def _line_end(self, pos: int) -> int:
        carry = len(self.carry)
        newline = _NEWLINE_RE.search(self.text, max(pos - carry, 0))
        return carry + (newline.start() if newline else len(self.text))

    # -- cut points

    def whitespace_cuts(self, *, breaks_only: bool) -> list[_Cut]:
        """Cuts at whitespace runs (only those holding a line break, if `breaks_only`)."""
        cuts: list[_Cut] = []
        floor = len(self.carry)
        total = floor + len(self.text)
        pattern = _BREAK_RUN_RE if breaks_only else _WS_RUN_RE
        for match in pattern.finditer(self.body, floor):
            start = match.start()
            if start > self.limit:
                break
            if start <= floor:
                continue  # the piece would hold nothing of the text
            end = self._run_end(match)
            breaks = list(_NEWLINE_RE.finditer(self._slice(start, end)))
            fence = self._fence_at(start)
            next_start = end
            size = self._utf16(start)
            if fence is not None:
                if start <= fence.first_code:
                    continue  # the piece would end with an empty code block
                if breaks:
                    # Code keeps the indentation of the line after the cut.
                    next_start = line_start = start + breaks[-1].end()
                else:
                    line_start = 1 + max(
                        self.body.rfind("\n", 0, start), self.body.rfind("\r", 0, start)
                    )
                line = self._slice(line_start, self._line_end(end))
                if end >= total or fence.closing_re.fullmatch(line):
                    continue  # only the closing fence is left: cut after it instead
                size += 1 + len(fence.close_line)
            if size <= self.limit:
                cuts.append(_Cut(start, next_start, size, min(len(breaks), 2), fence))
        return cuts

    def hard_cut(self) -> _Cut:
        """The longest fitting cut at any character boundary (a word longer than a message)."""
        floor = len(self.carry) + 1
        lo, hi = floor, min(len(self.body) - 1, self.limit)
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            pos = mid
            while pos >= lo and not _char_boundary(self.body, pos):
                pos -= 1
            if pos < lo:
                lo = mid + 1
                continue
            cut = self._hard_cut_at(pos)
            if cut.size <= self.limit and self.fits(cut):
                best = cut
                lo = mid + 1
            else:
                hi = pos - 1
        if best is not None:
            return best
        # Not even one character fits (an absurdly small limit): still make progress.
        pos = floor
        while pos < len(self.body) - 1 and not _char_boundary(self.body, pos):
            pos += 1
        return self._hard_cut_at(min(pos, len(self.carry) + len(self.text)))

    def _hard_cut_at(self, pos: int) -> _Cut:
        fence = self._fence_at(pos)
        if fence is not None and pos < fence.content_start:
            fence = None
        size = self._utf16(pos) + (1 + len(fence.close_line) if fence else 0)
        return _Cut(pos, pos, size, -1, fence)

    # -- fit

    def markdown(self, cut: _Cut) -> str:
        piece = self.body[: cut.start]
        return piece + "\n" + cut.fence.close_line if cut.fence else piece

    def fits(self, cut: _Cut) -> bool:
        verdict = self.verdicts.get(cut.start)
        if verdict is None:
            composed = self._composed_fits(cut) if self.composable else None
            verdict = self.really_fits(cut) if composed is None else composed
            self.verdicts[cut.start] = verdict
        return verdict

    def really_fits(self, cut: _Cut) -> bool:
        return utf16_len(render_html(self.markdown(cut))) <= self.limit

    def _composed_fits(self, cut: _Cut) -> bool | None:
        """Fit of the piece from the blocks before the cut plus a render of the cut block.

        Top-level blocks render independently of each other, so this is what rendering
        the whole piece gives; `first_piece` still renders its final choice in full.
        """
        j = bisect_right(self.block_ends, cut.start)
        tail_start = self.block_starts[j] if j < len(self.block_starts) else cut.start
        if tail_start > cut.start:
            return None
        tail = self.body[tail_start : cut.start]
        tail_html = render_html(tail + "\n" + cut.fence.close_line if cut.fence else tail)
        size = self.before_size[j] + utf16_len(tail_html)
        if self.before_count[j] and tail_html:
            size += 2  # the blank line between blocks
        return size <= self.limit

    def piece(self, cut: _Cut) -> Piece:
        end = cut.next_start - len(self.carry)
        carry = ""
        if cut.fence is not None and self.text[end:].strip():
            carry = cut.fence.reopen
        return Piece(markdown=self.markdown(cut), end=end, carry=carry)


def _char_boundary(text: str, pos: int) -> bool:
    """Whether a hard cut between text[pos-1] and text[pos] keeps characters whole."""
    before, after = text[pos - 1], text[pos]
    if before == "\r" and after == "\n":
        return False
    if "\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff":
        return False
    if before == "\u200d" or after == "\u200d":
        return False  # inside a ZWJ emoji sequence
    if unicodedata.combining(before) == 9:
        return False  # a virama joins the next consonant into one conjunct
    code = ord(after)
    if 0xFE00 <= code <= 0xFE0F or 0x1F3FB <= code <= 0x1F3FF or 0xE0000 <= code <= 0xE01EF:
        return False  # variation selector, skin tone, tag: part of the previous character
    if _is_regional(after) and _is_regional(before):
        # Flags are pairs of regional indicators: cut only between pairs.
        run = pos - 1
        while run > 0 and _is_regional(text[run - 1]):
            run -= 1
        return (pos - run) % 2 == 0
    return unicodedata.category(after) not in ("Mn", "Mc", "Me")


def _is_regional(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def _last_fitting(cuts: Sequence[_Cut], window: _Window) -> _Cut | None:
    """Binary search for the last cut that fits (a longer prefix renders longer)."""
    best = None
    lo, hi = 0, len(cuts) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if window.fits(cuts[mid]):
            best = cuts[mid]
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def _preferred(window: _Window, cuts: list[_Cut], threshold: int, upto: int) -> _Cut | None:
    """The last fitting paragraph boundary, else line break, at least `threshold` long."""
    for kinds in ((2,), (1, 2)):
        eligible = [c for c in cuts if c.kind in kinds and threshold <= c.size and c.start <= upto]
        chosen = _last_fitting(eligible, window)
        if chosen is not None:
            return chosen
    return None


def _choose(window: _Window) -> _Cut:
    breaks = window.whitespace_cuts(breaks_only=True)
    chosen = _preferred(window, breaks, window.limit // 2, len(window.body))
    if chosen is not None:
        return chosen
    widest = _last_fitting(window.whitespace_cuts(breaks_only=False), window)
    if widest is not None:
        # Escaping can make the HTML much longer than the Markdown: judge "long enough"
        # against the longest piece that actually fits.
        return _preferred(window, breaks, widest.size // 2, widest.start) or widest
    return window.hard_cut()


def render_fitting(markdown: str, *, limit: int = TELEGRAM_TEXT_LIMIT) -> str | None:
    """The HTML of `markdown` when it fits one message (as Markdown and as HTML), else None.

    What `first_piece` checks first; a caller about to send the text uses this to render once.
    """
    if len(markdown) > limit or utf16_len(markdown) > limit:
        return None
    html = render_html(markdown)
    return html if utf16_len(html) <= limit else None


def first_piece(text: str, *, carry: str = "", limit: int = TELEGRAM_TEXT_LIMIT) -> Piece | None:
    """None when `carry + text` fits one message, else the first message-sized piece of it."""
    if render_fitting(carry + text, limit=limit) is not None:
        return None
    window = _Window(text, carry, limit)
    cut = _choose(window)
    if window.composable and not window.really_fits(cut):
        # The shortcut disagreed with a real render: decide again, rendering every try.
        window.composable = False
        window.verdicts.clear()
        cut = _choose(window)
    return window.piece(cut)


def split_markdown(text: str, *, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    """Cut a whole answer into self-contained Markdown pieces that each fit one message."""
    pieces: list[str] = []
    carry = ""
    while True:
        piece = first_piece(text, carry=carry, limit=limit)
        if piece is None:
            if text.strip():
                pieces.append(carry + text)
            return pieces
        if piece.markdown.strip():
            pieces.append(piece.markdown)
        text = text[piece.end :]
        carry = piece.carry
        if not text.strip():
            return pieces
