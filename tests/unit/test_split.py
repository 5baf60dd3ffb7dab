"""Cutting long answers into Telegram-sized messages: every piece fits, nothing is lost."""

from __future__ import annotations

import random
import time

import pytest

from bot.telegram.render import (
    TELEGRAM_TEXT_LIMIT,
    Piece,
    first_piece,
    render_html,
    split_markdown,
    utf16_len,
)
from bot.telegram.render import markdown as renderer
from tests.unit.test_render import assert_telegram_html, visible


def assert_fits(markdown: str, limit: int = TELEGRAM_TEXT_LIMIT) -> str:
    """The piece fits as HTML and as plain text; returns its HTML."""
    out = render_html(markdown)
    assert_telegram_html(out)
    assert utf16_len(out) <= limit, (utf16_len(out), limit)
    assert utf16_len(markdown) <= limit, (utf16_len(markdown), limit)
    return out


def split_checked(text: str, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    pieces = split_markdown(text, limit=limit)
    assert pieces or not text.strip()
    for piece in pieces:
        assert piece.strip(), "whitespace-only piece"
        assert_fits(piece, limit)
    return pieces


def words(markdown: str) -> list[str]:
    """Words of the source, fence lines aside (pieces close and reopen fences)."""
    return [w for w in markdown.split() if not w.startswith(("```", "~~~"))]


def glued(*markdown: str) -> str:
    """All the visible characters of the sources, in order."""
    return "".join("".join(words(m)) for m in markdown)


def paragraphs(rng: random.Random, total: int) -> list[str]:
    vocabulary = ["lorem", "ipsum", "dolor", "sit", "amet", "tempor", "magna", "aliqua"]
    out: list[str] = []
    while sum(len(p) + 2 for p in out) < total:
        count = rng.randint(40, 110)
        out.append(
            " ".join(f"{rng.choice(vocabulary)}{rng.randint(0, 999)}" for _ in range(count))
        )
    return out


# ---- first_piece ---------------------------------------------------------------------------


def test_first_piece_is_none_when_everything_fits() -> None:
    assert first_piece("") is None
    assert first_piece("short **answer**") is None
    assert first_piece("x" * TELEGRAM_TEXT_LIMIT) is None
    assert first_piece("😀" * (TELEGRAM_TEXT_LIMIT // 2)) is None
    assert first_piece("x = 1\n```", carry="```python\n") is None


def test_first_piece_measures_carry_and_html() -> None:
    # 4,090 characters fit alone but not after the reopened fence.
    text = "word " * 818
    assert first_piece(text.strip()) is None
    piece = first_piece(text.strip(), carry="```python\n")
    assert piece is not None
    assert piece.markdown.startswith("```python\nword word")
    assert piece.markdown.endswith("word\n```")
    assert piece.carry == "```python\n"
    assert_fits(piece.markdown)
    # The HTML is what overflows here: "&" becomes "&amp;".
    dense = "a&b " * 1000
    assert utf16_len(dense) < TELEGRAM_TEXT_LIMIT
    piece = first_piece(dense)
    assert piece is not None and piece.carry == ""
    assert_fits(piece.markdown)


def test_first_piece_end_points_past_the_cut_whitespace() -> None:
    first, second = "A" * 10 + " " + "b " * 1500, "second paragraph " * 200
    text = first.strip() + "\n\n  \n" + second
    piece = first_piece(text)
    assert piece == Piece(markdown=first.strip(), end=len(first.strip()) + 5, carry="")
    assert text[piece.end :].startswith("second paragraph")


def test_cut_inside_code_reopens_the_fence_and_keeps_indentation() -> None:
    code = "def f():\n" + "    value = compute(1, 2)  # step\n" * 400
    text = f"Intro.\n\n```python\n{code}```\n\nOutro."
    piece = first_piece(text)
    assert piece is not None
    assert piece.markdown.endswith("# step\n```")
    assert piece.carry == "```python\n"
    rest = text[piece.end :]
    assert rest.startswith("    value = compute")  # indentation is code, it is kept
    assert render_html(piece.carry + rest).startswith(
        '<pre><code class="language-python">    value = compute'
    )


def test_first_piece_prefers_a_paragraph_boundary() -> None:
    head = " ".join(f"word{i}" for i in range(330))  # about 2,600 characters
    lines = "\n".join(f"line {i} with some words in it" for i in range(60))
    piece = first_piece(head + "\n\n" + lines)
    assert piece is not None
    assert piece.markdown == head


def test_first_piece_uses_a_line_break_when_paragraphs_are_too_short() -> None:
    lines = "\n".join(f"line {i} with some words in it" for i in range(200))
    piece = first_piece("Short intro.\n\n" + lines)
    assert piece is not None
    assert piece.markdown.endswith("with some words in it")
    assert utf16_len(piece.markdown) > TELEGRAM_TEXT_LIMIT * 0.9


def test_first_piece_always_makes_progress() -> None:
    piece = first_piece("x" * 50, limit=1)
    assert piece is not None and piece.end >= 1


# ---- split_markdown ------------------------------------------------------------------------


def test_ten_thousand_chars_split_at_paragraph_boundaries() -> None:
    paras = paragraphs(random.Random(10), 10_000)
    text = "\n\n".join(paras)
    assert len(text) >= 10_000
    pieces = split_checked(text)
    assert len(pieces) >= 3
    for piece in pieces:
        # Whole paragraphs only, in order.
        assert all(p in paras for p in piece.split("\n\n"))
    for piece in pieces[:-1]:
        assert utf16_len(piece) >= TELEGRAM_TEXT_LIMIT // 2
    assert "\n\n".join(pieces) == text


def test_long_single_line_splits_at_spaces_only() -> None:
    rng = random.Random(2)
    line = " ".join(f"w{rng.randint(0, 10**6)}x" for _ in range(3000))
    pieces = split_checked(line)
    assert len(pieces) >= 5
    assert [w for p in pieces for w in p.split()] == line.split()
    for piece in pieces:
        assert piece.startswith("w") and piece.endswith("x")
    for piece in pieces[:-1]:
        assert utf16_len(render_html(piece)) > TELEGRAM_TEXT_LIMIT - 20


def test_nine_thousand_char_code_block() -> None:
    lines = [f"    total += item_{i} * factor  # accumulate" for i in range(220)]
    text = "```python\n" + "\n".join(lines) + "\n```"
    assert len(text) > 9000
    pieces = split_checked(text)
    assert len(pieces) >= 3
    seen: list[str] = []
    for piece in pieces:
        assert piece.startswith("```python\n")
        assert piece.endswith("\n```")
        out = render_html(piece)
        assert out.startswith('<pre><code class="language-python">')
        assert out.endswith("</code></pre>")
        seen += piece.split("\n")[1:-1]
    assert seen == lines  # every line once, indentation included


def test_code_block_between_paragraphs() -> None:
    rng = random.Random(4)
    code = "\n".join(f"let v{i} = f({i});" for i in range(400))
    text = "\n\n".join(paragraphs(rng, 3000)) + f"\n\n```rust\n{code}\n```\n\n" + "Done."
    pieces = split_checked(text)
    assert [w for p in pieces for w in words(p)] == words(text)
    for piece in pieces:
        if "let v" in piece:
            assert '<pre><code class="language-rust">' in render_html(piece)
    # Text outside the code is never wrapped in a fence.
    assert not pieces[0].startswith("```")
    assert pieces[-1].endswith("Done.")


def test_cjk_text_without_spaces() -> None:
    text = "这是一个没有空格的很长的中文句子，用来测试分割。" * 400
    pieces = split_checked(text)
    assert len(pieces) >= 3
    assert "".join(pieces) == text
    for piece in pieces[:-1]:
        assert len(piece) > TELEGRAM_TEXT_LIMIT - 10


def test_emoji_are_measured_in_utf16() -> None:
    text = "😀" * 5000  # 10,000 UTF-16 units
    pieces = split_checked(text)
    assert "".join(pieces) == text
    assert all(len(p) <= TELEGRAM_TEXT_LIMIT // 2 for p in pieces)
    assert len(pieces) == 3


def test_emoji_sequences_are_not_broken() -> None:
    family = "👨‍👩‍👧‍👦"
    flag_ok = "👍🏽"
    text = (family + flag_ok + "é") * 900  # combining accent, skin tone, ZWJ
    pieces = split_checked(text)
    assert "".join(pieces) == text
    for piece in pieces:
        assert not piece.startswith(("\u200d", "🏽", "\u0301"))
        assert not piece.endswith("\u200d")


def test_flags_and_marks_stay_whole() -> None:
    text = "नमस्ते" * 1000 + "🇺🇦🇯🇵🇧🇷" * 700
    pieces = split_checked(text)
    assert "".join(pieces) == text
    for piece in pieces[1:]:
        assert piece.startswith(("🇺🇦", "🇯🇵", "🇧🇷", "न", "स", "त"))
    for piece in pieces[:-1]:
        assert not piece.endswith("\u094d")  # virama


def test_crlf_is_never_split() -> None:
    text = ("x" * 100 + "\r\n") * 120
    pieces = split_checked(text)
    assert "".join(pieces).replace("\r\n", "") == text.replace("\r\n", "")
    assert not any(p.startswith("\n") or p.endswith("\r") for p in pieces)


def test_markup_dense_text_still_fits() -> None:
    # Escaping doubles the size: the Markdown must be cut far below the limit.
    text = "a&b<c>d " * 3000
    pieces = split_checked(text)
    assert [w for p in pieces for w in p.split()] == text.split()
    for piece in pieces[:-1]:
        assert utf16_len(render_html(piece)) > TELEGRAM_TEXT_LIMIT - 30


def test_markup_dense_paragraphs_still_prefer_paragraph_boundaries() -> None:
    para = " ".join(["x<y&z"] * 60)  # 359 chars of Markdown, 779 of HTML
    text = "\n\n".join([para] * 40)
    pieces = split_checked(text)
    for piece in pieces:
        assert all(p == para for p in piece.split("\n\n"))


def test_whitespace_is_never_a_piece() -> None:
    text = "start\n\n" + " \n" * 5000 + "\t" * 3000 + "\n\nend"
    pieces = split_checked(text)
    assert [w for p in pieces for w in words(p)] == ["start", "end"]


def test_fence_inside_a_quote_is_reopened_inside_the_quote() -> None:
    text = "> ```js\n" + "".join(f"> step({i});\n" for i in range(300)) + "> ```\n\nafter"
    pieces = split_checked(text, limit=1000)
    assert len(pieces) >= 3
    shown = [visible(render_html(p)) for p in pieces]
    assert sum(s.count("step(") for s in shown) == 300
    assert all("> step" not in s for s in shown)


def test_fence_with_longer_markup_is_closed_with_the_same_markup() -> None:
    text = "````md\n```\nnested fence\n```\n" + "body line\n" * 500 + "````"
    pieces = split_checked(text, limit=1000)
    for piece in pieces:
        assert piece.startswith("````md\n") and piece.endswith("\n````")


# ---- generated answers -------------------------------------------------------------------

_WORDS = ["alpha", "beta", "gamma", "x<y", "a&b", "p>q", "中文字", "😀", "👍🏽", "é", "ok"]


def generated_answer(rng: random.Random) -> str:
    blocks: list[str] = []
    for _ in range(rng.randint(1, 30)):
        kind = rng.random()
        if kind < 0.2:
            lang = rng.choice(["python", "js", "", "c++"])
            body = "\n".join(
                " " * rng.choice([0, 4, 8]) + " ".join(rng.choices(_WORDS, k=rng.randint(1, 9)))
                for _ in range(rng.randint(1, 60))
            )
            blocks.append(f"```{lang}\n{body}\n```")
        elif kind < 0.3:
            blocks.append("https://example.com/" + "verylongpath" * rng.randint(5, 150))
        elif kind < 0.4:
            blocks.append("中文没有空格的句子" * rng.randint(10, 300))
        elif kind < 0.5:
            blocks.append("😀👨‍👩‍👧" * rng.randint(10, 300))
        else:
            sentences = [
                " ".join(rng.choices(_WORDS, k=rng.randint(3, 25)))
                for _ in range(rng.randint(1, 12))
            ]
            blocks.append(rng.choice([" ", "\n"]).join(sentences))
    return rng.choice(["\n\n", "\n\n\n", "\r\n\r\n"]).join(blocks)


@pytest.mark.parametrize("seed", range(40))
def test_generated_answers_split_without_loss(seed: int) -> None:
    rng = random.Random(seed)
    text = generated_answer(rng)
    limit = rng.choice([300, 700, 1500, TELEGRAM_TEXT_LIMIT])
    pieces = split_checked(text, limit)
    assert glued(*pieces) == glued(text)
    shown = "".join(visible(render_html(p)) for p in pieces)
    assert "".join(shown.split()) == glued(text)


@pytest.mark.parametrize("seed", range(10))
def test_streaming_with_first_piece_matches_split(seed: int) -> None:
    # The stream writer calls first_piece on the growing text: frozen pieces never change.
    rng = random.Random(100 + seed)
    text = generated_answer(rng)
    frozen: list[str] = []
    offset, carry = 0, ""
    for end in range(0, len(text) + 200, 200):
        while (piece := first_piece(text[offset:end], carry=carry, limit=1000)) is not None:
            assert piece.end > 0
            assert_fits(piece.markdown, 1000)
            frozen.append(piece.markdown)
            offset += piece.end
            carry = piece.carry
    tail = carry + text[offset:]
    shown = frozen + ([tail] if text[offset:].strip() else [])
    assert glued(*shown) == glued(text)


def test_hundred_kilobytes_split_quickly() -> None:
    rng = random.Random(5)
    blocks: list[str] = []
    while sum(len(b) for b in blocks) < 100_000:
        r = rng.random()
        if r < 0.12:
            blocks.append(
                "```python\n"
                + "\n".join(f"    result = compute({i}, value)  # step" for i in range(20))
                + "\n```"
            )
        elif r < 0.25:
            blocks.append("\n".join(f"{i}. **item** with `code` and text" for i in range(1, 6)))
        else:
            blocks.append(" ".join(paragraphs(rng, 400)[:1]))
    text = "\n\n".join(blocks)
    renderer.clear_cache()
    started = time.perf_counter()
    pieces = split_markdown(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5, elapsed  # about 0.05 s on a developer machine
    assert len(pieces) >= 25
    assert [w for p in pieces for w in words(p)] == words(text)
