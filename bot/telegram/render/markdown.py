"""Model Markdown -> Telegram HTML.

Telegram accepts only a small HTML subset (``parse_mode="HTML"``) and rejects the whole
message when a tag is unknown, unbalanced or a bare ``<``/``&`` appears, so the renderer
builds its output itself from markdown-it tokens and escapes everything else. It is total:
it never raises on any input, including Markdown cut off mid-stream.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = [
    "TopLevelBlock",
    "clear_cache",
    "parse_blocks",
    "render_blocks",
    "render_html",
    "utf16_len",
]


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

# A top-level block's source line range (markdown-it's `map`) and its HTML.
TopLevelBlock = tuple[list[int], str]


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


def clear_cache() -> None:
    """Forget cached inline renders, so that a benchmark or test measures a cold render."""
    _inline_html.cache_clear()
    _inline_plain.cache_clear()


# ---- what the splitter needs -------------------------------------------------------------


def parse_blocks(markdown: str) -> tuple[list[Token], bool]:
    """Block tokens of `markdown` and whether it defines link references.

    Offsets stay those of `markdown` (characters the renderer replaces are replaced one for
    one), so token line maps can be turned back into positions in the caller's text.
    """
    env: dict[str, Any] = {}
    # Same length, same structure and same UTF-16 size as the text `render_html` renders.
    cleaned = _SURROGATE_RE.sub("\ufffd", markdown).replace("\x00", "\ufffd")
    tokens = _MD.parse(cleaned, env)
    return tokens, bool(env.get("references"))


def render_blocks(tokens: list[Token]) -> list[TopLevelBlock] | None:
    """Each top-level block of `parse_blocks` tokens with its HTML, or None when unsure.

    Top-level blocks render independently of each other, and `render_html` joins the visible
    ones with a blank line. None when that does not hold: nesting too deep for the parser
    (`render_html` then shows escaped source) or a block that has no line range. Link
    reference definitions are not applied (they act across blocks): see `parse_blocks`.
    """
    if any(tok.level >= _MAX_NESTING - 1 for tok in tokens):
        return None
    try:
        blocks = _Blocks(tokens, ()).top_level()
    except Exception:
        return None
    located = [(line_map, html) for line_map, html in blocks if line_map is not None]
    return located if len(located) == len(blocks) else None
