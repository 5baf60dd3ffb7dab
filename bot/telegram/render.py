"""Model Markdown -> Telegram HTML, and cutting long answers into message-sized pieces.

Telegram accepts only a small HTML subset (``parse_mode="HTML"``) and rejects the whole
message when a tag is unknown, unbalanced or a bare ``<``/``&`` appears, so the renderer
builds its output itself from markdown-it tokens and escapes everything else. Both the
renderer and the splitter are total: they never raise on any input, including Markdown cut
off mid-stream.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = [
    "TELEGRAM_TEXT_LIMIT",
    "Piece",
    "first_piece",
    "render_fitting",
    "render_html",
    "split_markdown",
    "utf16_len",
]

TELEGRAM_TEXT_LIMIT = 4096


def utf16_len(text: str) -> int:
    """Length of `text` in UTF-16 code units, the unit of Telegram's message limit."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# ---- parser ------------------------------------------------------------------------------


# markdown-it silently drops everything nested deeper than this; such input is shown as
# escaped text instead (see `_render`).
_MAX_NESTING = 50


def _make_parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "maxNesting": _MAX_NESTING})
    md.enable(["strikethrough", "table"])
    # Inline content is parsed per block by `_inline_html` (with a cache), so the core
    # parse only builds blocks: the splitter renders overlapping prefixes of one answer
    # many times and the same paragraphs must not be re-parsed each time.
    md.disable(["inline", "text_join"])
    # Every link is parsed as a link (markdown-it would leave `javascript:` ones as raw
    # source); `_safe_href` then decides whether it becomes a Telegram link or just text.
    md.validateLink = _accept_link  # type: ignore[method-assign]
    return md


def _accept_link(url: str) -> bool:
    return True


_MD = _make_parser()

# ---- escaping and small helpers ----------------------------------------------------------

_TAG_RE = re.compile(r"<[^>]*>")
_LANG_JUNK_RE = re.compile(r"[^A-Za-z0-9_+#.-]")
_SAFE_URL_PREFIXES = ("http://", "https://", "tg://", "mailto:")
_HR = "——————"
_BULLETS = ("• ", "◦ ")

# A code block inside a quote is lifted out of it (see `_finish_quote`); these markers
# delimit such blocks until the outermost quote is assembled. NUL never reaches the
# renderer's text: markdown-it replaces it with U+FFFD, and `render_html` does too.
_LIFT_OPEN = "\x00\x01"
_LIFT_CLOSE = "\x00\x02"
_LIFT_RE = re.compile("\x00\x01(.*?)\x00\x02", re.DOTALL)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _esc(text: str) -> str:
    # Telegram recognises only &lt; &gt; &amp; &quot;, so nothing else is ever produced.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _esc_attr(text: str) -> str:
    return _esc(text).replace('"', "&quot;")


def _visible(html: str) -> bool:
    """True when `html` shows something other than whitespace."""
    return bool(_TAG_RE.sub("", html).strip())


def _safe_href(url: str) -> str | None:
    url = url.strip()
    low = url.lower()
    for prefix in _SAFE_URL_PREFIXES:
        if low.startswith(prefix) and len(url) > len(prefix):
            break
    else:
        return None
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in url):
        return None
    return url


def _clean_text(text: str) -> str:
    # Lone surrogates cannot be sent as UTF-8 at all; a valid pair written as two code
    # points is joined back into one character. NUL would clash with the lift markers.
    if _SURROGATE_RE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text.replace("\x00", "\ufffd")


def _display_width(text: str) -> int:
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or ch in "\u200d\ufe0f":
            continue
        width += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
    return width


# ---- inline rendering --------------------------------------------------------------------

_INLINE_TAGS = {"em": "i", "strong": "b", "s": "s"}

_RefsKey = tuple[tuple[str, str, str], ...]


def _refs_key(env: dict[str, Any]) -> _RefsKey:
    refs = env.get("references")
    if not isinstance(refs, dict) or not refs:
        return ()
    return tuple(
        sorted(
            (str(label), str(ref.get("href", "")), str(ref.get("title", "")))
            for label, ref in refs.items()
            if isinstance(ref, dict)
        )
    )


def _parse_inline(content: str, refs: _RefsKey) -> list[Token]:
    env: dict[str, Any] = {}
    if refs:
        env["references"] = {label: {"href": href, "title": title} for label, href, title in refs}
    tokens: list[Token] = []
    _MD.inline.parse(content, _MD, env, tokens)
    return tokens


def _plain_text(tokens: Sequence[Token]) -> str:
    """What a reader sees of inline tokens, without any formatting."""
    parts: list[str] = []
    for tok in tokens:
        if tok.type in ("text", "text_special", "code_inline", "html_inline"):
            parts.append(tok.content)
        elif tok.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif tok.type == "image":
            parts.append(_plain_text(tok.children or ()) or tok.content)
    return "".join(parts)


def _inline_tokens_html(tokens: Sequence[Token]) -> str:
    out: list[str] = []
    # Open spans: (kind, index in `out` where the span's content starts, href).
    stack: list[tuple[str, int, str | None]] = []
    in_link = 0

    def close_top() -> None:
        nonlocal in_link
        kind, start, href = stack.pop()
        inner = "".join(out[start:])
        del out[start:]
        if kind == "link":
            in_link -= 1
            if href is None:
                out.append(inner)
            elif _visible(inner):
                out.append(f'<a href="{_esc_attr(href)}">{inner}</a>')
            else:
                # An empty link text would make an invisible link: show the address.
                out.append(_esc(href))
        elif any(entry[0] == kind for entry in stack) or not _visible(inner):
            out.append(inner)  # "***a* b**" style nesting of the same format: already on
        else:
            tag = _INLINE_TAGS[kind]
            out.append(f"<{tag}>{inner}</{tag}>")

    for tok in tokens:
        kind = tok.type
        if kind in ("text", "text_special", "html_inline"):
            out.append(_esc(tok.content))
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "code_inline":
            # Telegram cannot nest code in a link (one of the two would be dropped).
            out.append(_esc(tok.content) if in_link else f"<code>{_esc(tok.content)}</code>")
        elif kind.endswith("_open") and kind[:-5] in _INLINE_TAGS:
            stack.append((kind[:-5], len(out), None))
        elif kind == "link_open":
            href: str | None = None
            if tok.info != "auto" and not in_link:
                href = _safe_href(str(tok.attrGet("href") or ""))
            stack.append(("link", len(out), href))
            in_link += 1
        elif kind.endswith("_close"):
            name = kind[:-6]
            if any(entry[0] == name for entry in stack):
                while stack:
                    top = stack[-1][0]
                    close_top()
                    if top == name:
                        break
        elif kind == "image":
            alt = _plain_text(tok.children or ()) or tok.content
            src = None if in_link else _safe_href(str(tok.attrGet("src") or ""))
            if src is None:
                out.append(_esc(alt))
            elif alt.strip():
                out.append(f'<a href="{_esc_attr(src)}">{_esc(alt)}</a>')
            else:
                out.append(_esc(src))
        elif tok.content:
            out.append(_esc(tok.content))
    while stack:
        close_top()
    return "".join(out)


# Characters that start some inline syntax (entity, escape, code, strike, emphasis, link,
# image, autolink); text without any of them is only text and line breaks.
_INLINE_SYNTAX_RE = re.compile(r"[&\\`~*_\[!<]")


@lru_cache(maxsize=4096)
def _inline_html(content: str, refs: _RefsKey) -> str:
    if "\t" not in content and not _INLINE_SYNTAX_RE.search(content):
        # What markdown-it's newline rule does: spaces before a line break are dropped
        # (hard or soft break, both "\n" here), indentation after it too.
        lines = content.split("\n")
        if len(lines) > 1:
            content = "\n".join(line.strip(" ") for line in lines)
        return _esc(content)
    return _inline_tokens_html(_parse_inline(content, refs))


@lru_cache(maxsize=4096)
def _inline_plain(content: str, refs: _RefsKey) -> str:
    return _plain_text(_parse_inline(content, refs))


# ---- block rendering ---------------------------------------------------------------------


class _Blocks:
    """Renders the block tokens of one document."""

    def __init__(self, tokens: list[Token], refs: _RefsKey) -> None:
        self.tokens = tokens
        self.refs = refs
        self.pos = 0

    def top_level(self) -> list[tuple[list[int] | None, str]]:
        """Each top-level block's source line range (markdown-it's `map`) and its HTML."""
        blocks: list[tuple[list[int] | None, str]] = []
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            if tok.nesting == -1:  # stray close: nothing to show
                self.pos += 1
                continue
            blocks.append((tok.map, self._block(quote=0, level=0)))
        return blocks

    def _children(self, quote: int, level: int) -> list[str]:
        """Render blocks up to (and consuming) the close token of the current container."""
        blocks: list[str] = []
        while self.pos < len(self.tokens):
            if self.tokens[self.pos].nesting == -1:
                self.pos += 1
                break
            block = self._block(quote, level)
            if block:
                blocks.append(block)
        return blocks

    def _inline_at(self, index: int) -> str:
        if index < len(self.tokens) and self.tokens[index].type == "inline":
            return _inline_html(self.tokens[index].content, self.refs)
        return ""

    def _block(self, quote: int, level: int) -> str:
        tok = self.tokens[self.pos]
        kind = tok.type
        if kind in ("paragraph_open", "heading_open"):
            inner = self._inline_at(self.pos + 1)
            self._skip_container()
            if kind == "heading_open" and _visible(inner):
                # The whole heading is bold; bold inside it would nest <b> in <b>.
                return "<b>" + inner.replace("<b>", "").replace("</b>", "") + "</b>"
            return inner if _visible(inner) else ""
        if kind == "fence":
            self.pos += 1
            lang = _LANG_JUNK_RE.sub("", (tok.info.split() or [""])[0])[:64]
            return self._code(tok.content, lang, quote, fenced=True)
        if kind == "code_block":
            self.pos += 1
            return self._code(tok.content, "", quote, fenced=False)
        if kind == "hr":
            self.pos += 1
            return _HR
        if kind == "blockquote_open":
            self.pos += 1
            # Telegram cannot nest blockquotes: inner quotes merge into the outer one.
            body = "\n\n".join(self._children(quote + 1, level))
            return _finish_quote(body) if quote == 0 else body
        if kind in ("bullet_list_open", "ordered_list_open"):
            return self._list(tok, quote, level)
        if kind == "table_open":
            return self._table(quote)
        if kind == "inline":
            self.pos += 1
            return _inline_html(tok.content, self.refs)
        if tok.nesting == 1:
            self.pos += 1
            return "\n\n".join(self._children(quote, level))
        self.pos += 1
        return _esc(tok.content) if tok.content.strip() else ""

    def _skip_container(self) -> None:
        """Move past the current open token and everything up to its close token."""
        depth = 0
        while self.pos < len(self.tokens):
            nesting = self.tokens[self.pos].nesting
            self.pos += 1
            depth += nesting
            if depth <= 0:
                return

    def _code(self, content: str, lang: str, quote: int, *, fenced: bool) -> str:
        if content.endswith("\n"):
            content = content[:-1]
        if not content.strip():
            return ""
        body = _esc(content)
        if lang:
            html = f'<pre><code class="language-{lang}">{body}</code></pre>'
        elif fenced:
            html = f"<pre><code>{body}</code></pre>"
        else:
            html = f"<pre>{body}</pre>"
        return _LIFT_OPEN + html + _LIFT_CLOSE if quote else html

    def _list(self, tok: Token, quote: int, level: int) -> str:
        self.pos += 1
        ordered = tok.type == "ordered_list_open"
        try:
            number = int(tok.attrGet("start") or 1)
        except (TypeError, ValueError):
            number = 1
        indent = "  " * level
        items: list[str] = []
        while self.pos < len(self.tokens):
            item = self.tokens[self.pos]
            if item.nesting == -1:
                self.pos += 1
                break
            if item.type != "list_item_open":
                block = self._block(quote, level + 1)
                if block:
                    items.append(block)
                continue
            self.pos += 1
            if ordered:
                delim = ")" if item.markup == ")" else "."
                marker = f"{indent}{number}{delim} "
                number += 1
            else:
                marker = indent + _BULLETS[min(level, 1)]
            # Loose and tight lists alike: one item per line, its blocks on the next lines.
            body = "\n".join(self._children(quote, level + 1))
            items.append(marker + body if body else marker.rstrip())
        return "\n".join(items)

    def _table(self, quote: int) -> str:
        rows: list[list[tuple[str, str]]] = []
        header_rows = 0
        align = ""
        depth = 0
        in_head = False
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            self.pos += 1
            depth += tok.nesting
            if tok.type == "thead_open":
                in_head = True
            elif tok.type == "thead_close":
                in_head = False
            elif tok.type == "tr_open":
                rows.append([])
                header_rows += in_head
            elif tok.type in ("th_open", "td_open"):
                style = str(tok.attrGet("style") or "")
                align = "right" if "right" in style else "center" if "center" in style else ""
            elif tok.type == "inline" and rows:
                rows[-1].append((_inline_plain(tok.content, self.refs), align))
            if depth <= 0:
                break
        rows = [row for row in rows if row]
        if not rows:
            return ""
        columns = max(len(row) for row in rows)
        widths = [0] * columns
        for row in rows:
            for i, (text, _) in enumerate(row):
                widths[i] = max(widths[i], _display_width(text))
        lines: list[str] = []
        for index, row in enumerate(rows):
            cells = []
            for i in range(columns):
                text, cell_align = row[i] if i < len(row) else ("", "")
                pad = widths[i] - _display_width(text)
                if cell_align == "right":
                    text = " " * pad + text
                elif cell_align == "center":
                    text = " " * (pad // 2) + text + " " * (pad - pad // 2)
                else:
                    text += " " * pad
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
            if index + 1 == header_rows:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        # Monospace keeps the columns aligned; Telegram has no table markup.
        html = "<pre>" + _esc("\n".join(lines)) + "</pre>"
        return _LIFT_OPEN + html + _LIFT_CLOSE if quote else html


def _finish_quote(body: str) -> str:
    """Wrap a quote's content in <blockquote>, lifting code blocks out of it.

    Telegram's formatting rules say blockquote and pre entities "can't contain each
    other", so the quote is closed before a code block or table and reopened after it.
    """
    parts: list[str] = []
    pos = 0
    for match in _LIFT_RE.finditer(body):
        parts.append(_quote_text(body[pos : match.start()]))
        parts.append(match.group(1))
        pos = match.end()
    parts.append(_quote_text(body[pos:]))
    return "\n".join(part for part in parts if part)


def _quote_text(text: str) -> str:
    text = text.strip()
    return f"<blockquote>{text}</blockquote>" if _visible(text) else ""


class _TooDeep(Exception):
    """Markdown nested deeper than the parser keeps."""


def _render(markdown: str) -> str:
    env: dict[str, Any] = {}
    tokens = _MD.parse(markdown, env)
    if any(tok.level >= _MAX_NESTING - 1 for tok in tokens):
        raise _TooDeep
    blocks = _Blocks(tokens, _refs_key(env)).top_level()
    return _finish_document(html for _, html in blocks)


def _finish_document(blocks: Iterable[str]) -> str:
    html = "\n\n".join(block for block in blocks if block).replace("\x00", "").strip()
    return html if _visible(html) else ""


def render_html(markdown: str) -> str:
    """Render model Markdown as Telegram HTML; never raises, "" when nothing is visible."""
    try:
        text = _clean_text(markdown)
    except Exception:
        return ""
    if not text.strip():
        return ""
    try:
        return _render(text)
    except Exception:
        # Anything unexpected still shows the answer, as escaped text.
        return _esc(text.strip())


# ---- splitting ---------------------------------------------------------------------------


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
        env: dict[str, Any] = {}
        # Same length as the body (offsets stay valid), same structure, same UTF-16 size.
        parsed = _SURROGATE_RE.sub("\ufffd", self.body).replace("\x00", "\ufffd")
        tokens = _MD.parse(parsed, env)
        self.fences = self._find_fences(tokens)
        self.fence_starts = [fence.open_start for fence in self.fences]
        # Top-level blocks already rendered, so that a fit check only renders the block
        # being cut. Link reference definitions act across blocks: then render it all.
        self.composable = not env.get("references")
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
        if any(tok.level >= _MAX_NESTING - 1 for tok in tokens):
            self.composable = False
            return
        try:
            blocks = _Blocks(tokens, ()).top_level()
        except Exception:
            self.composable = False
            return
        size = count = 0
        for line_map, html in blocks:
            if line_map is None:
                self.composable = False
                return
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
