"""Model Markdown -> Telegram HTML: what the user sees, and that Telegram accepts it."""

from __future__ import annotations

import html
import random
import re
from html.parser import HTMLParser

import pytest

from bot.telegram.render import markdown as renderer
from bot.telegram.render import render_html, utf16_len

# ---- a checker for what Telegram accepts ---------------------------------------------------

_INLINE_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "tg-spoiler"}
_ALL_TAGS = _INLINE_TAGS | {"span", "a", "code", "pre", "blockquote"}
_TOKEN_RE = re.compile(
    r"(?P<tag></?[a-z-]+(?: [a-z-]+(?:=\"[^\"<>]*\")?)*>)"
    r"|(?P<entity>&(?:lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);)"
    r"|(?P<raw>[<>&])"
)


class _TelegramHtmlChecker(HTMLParser):
    """Collects every way `html` would break Telegram's HTML parse mode."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.pre_has_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag not in _ALL_TAGS:
            self.problems.append(f"unsupported tag <{tag}>")
        if tag in self.stack and tag not in ("code",):
            self.problems.append(f"<{tag}> nested in itself")
        if "pre" in self.stack and not (tag == "code" and self.stack[-1] == "pre"):
            self.problems.append(f"<{tag}> inside <pre>")
        if "code" in self.stack:
            self.problems.append(f"<{tag}> inside <code>")
        if tag == "pre" and self.stack:
            # Telegram: pre can't be part of other entities; inside a quote it is lifted out.
            self.problems.append(f"<pre> inside <{self.stack[-1]}>")
        if tag == "blockquote" and "blockquote" in self.stack:
            self.problems.append("nested <blockquote>")
        if tag == "code" and "a" in self.stack:
            self.problems.append("<code> inside <a>")
        if tag == "code" and self.stack[-1:] == ["pre"] and self.pre_has_text:
            self.problems.append("text between <pre> and <code>")
        allowed: dict[str, set[str]] = {
            "a": {"href"},
            "code": {"class"},
            "span": {"class"},
            "blockquote": {"expandable"},
        }
        extra = set(names) - allowed.get(tag, set())
        if extra:
            self.problems.append(f"<{tag}> with attributes {extra}")
        if tag == "a" and not names.get("href"):
            self.problems.append("<a> without href")
        if tag == "span" and names.get("class") != "tg-spoiler":
            self.problems.append("<span> that is not a spoiler")
        if tag == "code" and "class" in names:
            if self.stack[-1:] != ["pre"]:
                self.problems.append("language on inline <code>")
            if not re.fullmatch(r"language-[A-Za-z0-9_+#.-]+", names["class"] or ""):
                self.problems.append(f"bad language class {names['class']!r}")
        self.stack.append(tag)
        self.pre_has_text = False

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problems.append(f"self-closing <{tag}/>")

    def handle_data(self, data: str) -> None:
        if self.stack[-1:] == ["pre"] and data:
            self.pre_has_text = True
        for ch in "<>&":
            if ch in data:
                self.problems.append(f"raw {ch!r} in text")

    def handle_entityref(self, name: str) -> None:
        if name not in ("lt", "gt", "amp", "quot"):
            self.problems.append(f"named entity &{name}; Telegram does not know")

    def handle_comment(self, data: str) -> None:
        self.problems.append("comment")

    def handle_decl(self, decl: str) -> None:
        self.problems.append("declaration")

    def unknown_decl(self, data: str) -> None:
        self.problems.append("declaration")

    def handle_pi(self, data: str) -> None:
        self.problems.append("processing instruction")


def telegram_html_problems(text: str) -> list[str]:
    """Everything in `text` that Telegram's HTML parse mode would reject (or mangle)."""
    problems = [
        f"raw {m.group('raw')!r} at {m.start()}"
        for m in _TOKEN_RE.finditer(text)
        if m.group("raw") is not None
    ]
    checker = _TelegramHtmlChecker()
    checker.feed(text)
    checker.close()
    problems += checker.problems
    if checker.stack:
        problems.append(f"unclosed {checker.stack}")
    if text != text.strip():
        problems.append("leading or trailing whitespace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        problems.append("not encodable as UTF-8")
    return problems


def assert_telegram_html(text: str) -> None:
    """Fail when Telegram would refuse `text` as HTML."""
    problems = telegram_html_problems(text)
    assert not problems, f"{problems} in {text!r}"


def visible(text: str) -> str:
    """What Telegram shows for `text`."""
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def show(markdown: str) -> str:
    out = render_html(markdown)
    assert_telegram_html(out)
    return out


def test_checker_catches_what_telegram_rejects() -> None:
    for bad in (
        "a < b",
        "a & b",
        "<b>x",
        "<b><i>x</b></i>",
        "<div>x</div>",
        "&nbsp;",
        "<pre><b>x</b></pre>",
        "<blockquote><blockquote>x</blockquote></blockquote>",
        "<blockquote><pre>x</pre></blockquote>",
        '<code class="language-py">x</code>',
        "<a>x</a>",
    ):
        assert telegram_html_problems(bad), bad
    assert_telegram_html('<b>x</b> &lt;&amp;&gt; <pre><code class="language-c++">y</code></pre>')


# ---- each construct ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("Hello **world**", "Hello <b>world</b>"),
        ("*one* and _two_", "<i>one</i> and <i>two</i>"),
        ("~~gone~~ stays", "<s>gone</s> stays"),
        ("use `a < b` here", "use <code>a &lt; b</code> here"),
        ("**bold _and italic_**", "<b>bold <i>and italic</i></b>"),
        ("***both***", "<i><b>both</b></i>"),
        ("# Title\nText", "<b>Title</b>\n\nText"),
        ("## Sub\n\npara", "<b>Sub</b>\n\npara"),
        ("Setext\n======\nnext", "<b>Setext</b>\n\nnext"),
        ("# **Bold** heading", "<b>Bold heading</b>"),
        ("line one\nline two", "line one\nline two"),
        ("first  \nsecond\\\nthird", "first\nsecond\nthird"),
        ("p1\n\n\n\np2", "p1\n\np2"),
        ("  \n\nindented start\n\n", "indented start"),
        (
            "```python\nprint(1 < 2 & 3)\n```",
            '<pre><code class="language-python">print(1 &lt; 2 &amp; 3)</code></pre>',
        ),
        ("```\nplain\n```", "<pre><code>plain</code></pre>"),
        ("```c++ {.numbers}\nint x;\n```", '<pre><code class="language-c++">int x;</code></pre>'),
        ('```py"><b>\nx\n```', '<pre><code class="language-pyb">x</code></pre>'),
        ("```\n\n  keep indentation\n\n```", "<pre><code>\n  keep indentation\n</code></pre>"),
        ("    indented\n      code", "<pre>indented\n  code</pre>"),
        (
            "[site](https://example.com/?a=1&b=2)",
            '<a href="https://example.com/?a=1&amp;b=2">site</a>',
        ),
        ('[q](https://e.com/a"b "title")', '<a href="https://e.com/a%22b">q</a>'),
        ("[me](tg://user?id=42)", '<a href="tg://user?id=42">me</a>'),
        ("[mail](mailto:a@b.example)", '<a href="mailto:a@b.example">mail</a>'),
        ("[x](javascript:alert(1))", "x"),
        ("[file](ftp://host/file) [rel](/docs)", "file rel"),
        ("[**bold** link](https://e.com)", '<a href="https://e.com"><b>bold</b> link</a>'),
        ("[`code`](https://e.com)", '<a href="https://e.com">code</a>'),
        ("[](https://e.com/x)", "https://e.com/x"),
        (
            "<https://e.com/auto> and https://e.com/bare",
            "https://e.com/auto and https://e.com/bare",
        ),
        ("![diagram](https://e.com/d.png)", '<a href="https://e.com/d.png">diagram</a>'),
        ("![diagram](data:image/png;base64,AAA)", "diagram"),
        ("![](https://e.com/d.png)", "https://e.com/d.png"),
        ("[![logo](https://e.com/l.png)](https://e.com)", '<a href="https://e.com">logo</a>'),
        ("[ref] link\n\n[ref]: https://e.com/r", '<a href="https://e.com/r">ref</a> link'),
        ("> quoted\n> text", "<blockquote>quoted\ntext</blockquote>"),
        ("> outer\n> > inner", "<blockquote>outer\n\ninner</blockquote>"),
        (
            "> see:\n> ```py\n> x = 1\n> ```\n> done",
            "<blockquote>see:</blockquote>\n"
            '<pre><code class="language-py">x = 1</code></pre>\n'
            "<blockquote>done</blockquote>",
        ),
        ("- one\n- two\n  - nested\n    - deeper", "• one\n• two\n  ◦ nested\n    ◦ deeper"),
        ("* a\n\n* b\n\n  more b", "• a\n• b\nmore b"),
        ("3. three\n4. four", "3. three\n4. four"),
        ("1. a\n   1. x\n   2. y\n2. b", "1. a\n  1. x\n  2. y\n2. b"),
        ("1) a\n2) b", "1) a\n2) b"),
        ("- [ ] todo\n- [x] done", "• [ ] todo\n• [x] done"),
        ("text\n\n- item", "text\n\n• item"),
        (
            "1. step\n   ```sh\n   make\n   ```",
            '1. step\n<pre><code class="language-sh">make</code></pre>',
        ),
        (
            "| Name | Qty |\n|------|----:|\n| **apple** | 3 |\n| kiwi | 12 |",
            "<pre>| Name  | Qty |\n|-------|-----|\n| apple |   3 |\n| kiwi  |  12 |</pre>",
        ),
        (
            "| a | b |\n|---|:-:|\n| 中文 | x |",
            "<pre>| a    | b |\n|------|---|\n| 中文 | x |</pre>",
        ),
        ("a\n\n---\n\nb", "a\n\n——————\n\nb"),
        ("***", "——————"),
        ("a<br>b", "a&lt;br&gt;b"),
        ("<div>\nhi\n</div>", "&lt;div&gt;\nhi\n&lt;/div&gt;"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("&amp; &lt;tag&gt; &copy; &#65; &nbsp;x", "&amp; &lt;tag&gt; © A \xa0x"),
        ("", ""),
        ("  \n\t \n", ""),
        ("```\n\n```", ""),
    ],
)
def test_renders(markdown: str, expected: str) -> None:
    assert show(markdown) == expected


def test_fenced_code_keeps_content_verbatim() -> None:
    code = (
        "def f(x):\n    if x < 1 and y > 2:\n        return '&amp;' ** 2\n\n\n    # *not* emphasis"
    )
    out = show(f"```python\n{code}\n```\n")
    assert out.startswith('<pre><code class="language-python">')
    assert html.unescape(out.removeprefix('<pre><code class="language-python">')) == (
        code + "</code></pre>"
    )


def test_table_inside_quote_is_lifted_out() -> None:
    out = show("> intro\n>\n> | a | b |\n> |---|---|\n> | 1 | 2 |")
    assert out == "<blockquote>intro</blockquote>\n<pre>| a | b |\n|---|---|\n| 1 | 2 |</pre>"


# ---- broken and partial Markdown -----------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        (
            "```python\ndef f():\n    return 1",
            '<pre><code class="language-python">def f():\n    return 1</code></pre>',
        ),
        ("Intro\n\n```js\n", "Intro"),
        ("Some **bold", "Some **bold"),
        ("Some **bold and *it", "Some **bold and *it"),
        ("a * b * c", "a * b * c"),
        ("stray * star and _ underscore", "stray * star and _ underscore"),
        ("<script>alert('x')</script>", "&lt;script&gt;alert('x')&lt;/script&gt;"),
        ("`lone backtick", "`lone backtick"),
        ("``", "``"),
        ("a ` b ` c", "a <code>b</code> c"),
        ("[unfinished link](https://e.c", "[unfinished link](https://e.c"),
        ("[text", "[text"),
        ("**a **b** c**", "<b>a b c</b>"),
        ("> ```\n> code in quote", "<pre><code>code in quote</code></pre>"),
        ("- ", "•"),
        ("| a | b |\n|--", "| a | b |\n|--"),
        ("\ud83d\ude00 lone \ud800 surrogate", "😀 lone \ufffd surrogate"),
        ("nul\x00byte", "nul\ufffdbyte"),
    ],
)
def test_broken_markdown(markdown: str, expected: str) -> None:
    assert show(markdown) == expected


@pytest.mark.parametrize(
    "markdown",
    [
        "[" * 3000,
        "*a" * 2000,
        "**" * 500 + "x" + "**" * 500,
        "`" * 3000,
        "~" * 3000,
        ">" * 300 + " deep",
        "".join("  " * i + "- x\n" for i in range(80)),
        "|a|b|\n|-|-|\n" + "|x|y|\n" * 500,
        "&#" * 2000,
        "[a](" * 1000,
        "\n".join("> " * (i % 30) + "line" for i in range(200)),
        "<" * 1000 + ">" * 1000,
        "\r\n".join(["```", "code", "```"] * 100),
    ],
)
def test_pathological_input_stays_valid(markdown: str) -> None:
    show(markdown)


def test_too_deep_nesting_is_shown_as_text() -> None:
    # The parser would silently drop what is nested this deep: show the source instead.
    out = show(">" * 300 + " deep")
    assert "deep" in visible(out)


RICH_SAMPLE = """# Release notes

Here is **what changed** in *this* release, with `inline code`, ~~old stuff~~ and a
[link](https://example.com/page?a=1&b=2 "Title") plus ![img](https://example.com/i.png).

## Details

1. First **step**
2. Second step with `code`
   - nested bullet
   - another _one_
     1. deep
3. Third

- [ ] task
- [x] done

> A quote with **bold**
> > and a nested one
>
> ```bash
> echo "in quote" && exit 1
> ```

```python
def main(argv: list[str]) -> int:
    if len(argv) < 2 and argv[0] != "<none>":
        return 1  # a & b
    return 0
```

| Column A | Column B |
|:---------|---------:|
| `x < y`  | **1** |
| 中文      | 😀 |

---

Raw <b>html</b> and <br> and a < b && c > d, entities &amp; &copy; &#x1F600;.
    indented code after a paragraph is a continuation

    real indented code

Trailing paragraph with emoji 👨‍👩‍👧 and a very_long_identifier_name and 2*3*4.
"""


def test_rich_sample_renders() -> None:
    out = show(RICH_SAMPLE)
    assert out.startswith("<b>Release notes</b>\n\nHere is <b>what changed</b> in <i>this</i>")
    assert '<a href="https://example.com/page?a=1&amp;b=2">link</a>' in out
    assert "1. First <b>step</b>\n2. Second step with <code>code</code>\n  ◦ nested" in out
    assert "<blockquote>A quote with <b>bold</b>\n\nand a nested one</blockquote>\n<pre>" in out
    assert '<pre><code class="language-python">def main(argv: list[str]) -&gt; int:' in out
    assert "——————" in out
    assert "Raw &lt;b&gt;html&lt;/b&gt; and &lt;br&gt;" in out
    assert "&amp; © 😀" in out


def test_every_truncation_of_a_rich_answer_is_valid() -> None:
    # Mid-stream the text is cut anywhere: every prefix must still be accepted.
    for end in range(len(RICH_SAMPLE) + 1):
        out = render_html(RICH_SAMPLE[:end])
        problems = telegram_html_problems(out)
        assert not problems, (end, problems, out)


_FUZZ_ALPHABET = [
    *"*_`~[]()<>&!#-+|:.\\\"' \n\n\n\t\r",
    "**",
    "```",
    "```py\n",
    "> ",
    "- ",
    "1. ",
    "http://",
    "&amp;",
    "&lt;",
    "<b>",
    "|---|",
    "😀",
    "中",
    "\u200d",
    "\ud800",
    "word",
    "  ",
    "\n    ",
]


def test_random_markdown_soup_is_valid() -> None:
    rng = random.Random(20240601)
    for _ in range(1500):
        text = "".join(rng.choice(_FUZZ_ALPHABET) for _ in range(rng.randint(0, 120)))
        out = render_html(text)
        problems = telegram_html_problems(out)
        assert not problems, (text, problems, out)


def test_words_survive_rendering() -> None:
    rng = random.Random(7)
    words = ["alpha", "beta", "a&b", "x<y", "p>q", "中文", "😀", "tail"]
    for _ in range(200):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
        assert visible(show(text)).split() == text.split()


def test_plain_text_shortcut_matches_the_parser() -> None:
    # Inline text without syntax characters skips markdown-it: it must give the same HTML.
    rng = random.Random(3)
    alphabet = [*"abc XY 12 # - + = . , ; : ' \" > ( ) { } / 中 😀 \n\n", "  \n", " \n  "]
    for _ in range(500):
        content = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50))).strip()
        if not content:
            continue
        slow = renderer._inline_tokens_html(renderer._parse_inline(content, ()))
        assert renderer._inline_html.__wrapped__(content, ()) == slow, repr(content)


def test_utf16_len_counts_astral_characters_twice() -> None:
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("中文") == 2
    assert utf16_len("😀") == 2
    assert utf16_len("👨‍👩‍👧") == 8
    assert utf16_len("\ud800") == 1


def test_render_is_fast_enough_for_streaming() -> None:
    import time

    text = RICH_SAMPLE * 40  # about 60 KB
    renderer.clear_cache()
    started = time.perf_counter()
    out = show(text)
    assert time.perf_counter() - started < 2.0
    assert utf16_len(out) > len(text) // 2
