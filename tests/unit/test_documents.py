"""Files sent to the bot: which are read as text, how they are decoded, trimmed and wrapped."""

from __future__ import annotations

import codecs
import random

import pytest

from bot.services.documents import (
    DEFAULT_DOCUMENT_MAX_BYTES,
    DocumentRefusal,
    TextDocument,
    Trimmed,
    accepts,
    display_name,
    read_document,
    trim_to_tokens,
    wrap,
)
from bot.services.tokens import TokenCounter

RUSSIAN = "Привет, мир! Это проверка кодировки файла.\n" * 4


def _binary_tail(size: int = 4096) -> bytes:
    return random.Random(7).randbytes(size)


def _read(name: str | None, data: bytes, mime: str | None = None) -> TextDocument:
    result = read_document(name, mime, data)
    assert isinstance(result, TextDocument), result
    return result


# --- which files are read -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("notes.txt", None),
        ("README.MD", None),  # upper-case extension
        ("main.py", "application/octet-stream"),  # extension wins over a generic MIME type
        ("data.JSON", None),
        ("config.yml", None),
        ("query.sql", None),
        (None, "text/plain"),  # no name
        ("notes", "text/plain; charset=utf-8"),  # parameters ignored
        ("Makefile", "text/x-makefile"),
        (None, "Application/JSON"),  # case-insensitive
        ("feed", "application/xml"),
        ("deploy", "application/x-sh"),
        ("", "application/x-yaml"),
    ],
)
def test_text_files_are_accepted(name: str | None, mime: str | None) -> None:
    assert accepts(name, mime)


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("archive.zip", "application/zip"),
        ("setup.exe", "application/x-msdownload"),
        ("photo.png", "image/png"),
        ("archive.zip", None),
        ("report.pdf", "application/pdf"),
        ("notes.txt.exe", None),  # only the last extension counts
        (None, None),
        ("Makefile", None),  # no extension and no MIME type: nothing says it is text
    ],
)
def test_non_text_files_are_refused(name: str | None, mime: str | None) -> None:
    assert not accepts(name, mime)
    assert read_document(name, mime, b"plain words") is DocumentRefusal.NOT_TEXT


# --- decoding -------------------------------------------------------------------------------


def test_utf8_text_is_read_as_is() -> None:
    document = _read("notes.txt", "Hello, wörld — 你好 🙂\n".encode())
    assert document.text == "Hello, wörld — 你好 🙂\n"
    assert document.encoding == "utf-8"
    assert document.name == "notes.txt"


def test_utf8_bom_is_not_part_of_the_text() -> None:
    document = _read("notes.txt", codecs.BOM_UTF8 + RUSSIAN.encode())
    assert document.text == RUSSIAN
    assert not document.text.startswith("\ufeff")


def test_utf16_le_with_bom_is_decoded() -> None:
    document = _read("export.csv", codecs.BOM_UTF16_LE + "a,b\nпривет,1\n".encode("utf-16-le"))
    assert document.text == "a,b\nпривет,1\n"
    assert document.encoding == "utf-16"


def test_utf16_be_and_utf32_with_bom_are_decoded() -> None:
    assert _read("a.txt", "Grüße".encode("utf-16")).text == "Grüße"
    assert _read("a.txt", codecs.BOM_UTF16_BE + "Grüße".encode("utf-16-be")).text == "Grüße"
    utf32 = _read("a.txt", "Grüße, мир".encode("utf-32"))
    assert utf32.text == "Grüße, мир"
    assert utf32.encoding == "utf-32"


def test_cp1251_russian_text_is_decoded() -> None:
    document = _read("письмо.txt", RUSSIAN.encode("cp1251"))
    assert document.text == RUSSIAN
    assert document.encoding == "cp1251"


def test_legacy_western_text_is_decoded() -> None:
    text = "Größe über alles, ça va très bien. Äpfel und Öl.\n" * 3
    assert _read("brief.txt", text.encode("cp1252")).text == text


def test_windows_and_old_mac_line_endings_become_newlines() -> None:
    document = _read("crlf.txt", b"one\r\ntwo\rthree\n\r\nfour")
    assert document.text == "one\ntwo\nthree\n\nfour"
    utf16 = _read("crlf.txt", "one\r\ntwo".encode("utf-16"))
    assert utf16.text == "one\ntwo"


@pytest.mark.parametrize(
    "header",
    [
        b"\x7fELF\x02\x01\x01\x00",
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
    ],
    ids=["elf", "zip", "png", "pdf"],
)
def test_binary_content_with_a_text_name_is_refused(header: bytes) -> None:
    assert read_document("notes.txt", "text/plain", header + _binary_tail()) is (
        DocumentRefusal.NOT_TEXT
    )


def test_binary_content_without_nul_bytes_is_refused() -> None:
    noise = bytes(b for b in _binary_tail(8192) if b)
    assert read_document("notes.txt", None, b"%PDF-1.7\n" + noise) is DocumentRefusal.NOT_TEXT


def test_text_full_of_control_characters_is_refused() -> None:
    data = ("a\x01\x02\x03\x1b" * 100).encode()
    assert read_document("notes.txt", None, data) is DocumentRefusal.NOT_TEXT


def test_a_few_control_characters_are_tolerated() -> None:
    log = "\x1b[32mINFO\x1b[0m server started on port 8080, waiting for connections\n" * 20
    assert _read("server.log", log.encode()).text == log


# --- size and emptiness ---------------------------------------------------------------------


def test_size_limit_is_inclusive() -> None:
    assert isinstance(read_document("a.txt", None, b"x" * 100, max_bytes=100), TextDocument)
    assert read_document("a.txt", None, b"x" * 101, max_bytes=100) is DocumentRefusal.TOO_LARGE


def test_default_size_limit() -> None:
    at_limit = b"word" * (DEFAULT_DOCUMENT_MAX_BYTES // 4)
    assert len(at_limit) == DEFAULT_DOCUMENT_MAX_BYTES
    assert isinstance(read_document("a.txt", None, at_limit), TextDocument)
    too_big = at_limit + b"x"
    assert read_document("a.txt", None, too_big) is DocumentRefusal.TOO_LARGE


def test_too_large_is_reported_before_looking_at_the_content() -> None:
    data = b"\x7fELF" + _binary_tail(200)
    assert read_document("a.txt", None, data, max_bytes=100) is DocumentRefusal.TOO_LARGE


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", "\n \n".encode("utf-16")])
def test_whitespace_only_files_are_empty(data: bytes) -> None:
    assert read_document("empty.txt", None, data) is DocumentRefusal.EMPTY


# --- display names --------------------------------------------------------------------------


def test_control_characters_and_newlines_are_removed_from_names() -> None:
    document = _read("report\n2024\r\t\x00\x1b[31m.txt", b"text")
    assert document.name == "report 2024 [31m.txt"
    assert display_name("evil\u202etxt.exe") == "eviltxt.exe"  # bidi override dropped


def test_missing_or_blank_names_become_file() -> None:
    assert _read(None, b"text", "text/plain").name == "file"
    assert display_name("  \n\x00 ") == "file"


def test_long_names_are_shortened_keeping_the_extension() -> None:
    name = display_name("x" * 300 + ".txt")
    assert len(name) == 100
    assert name.endswith("….txt")


# --- trimming -------------------------------------------------------------------------------


class CountingCounter:
    """One token per character, remembering how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        return len(text)


def test_text_within_budget_is_not_trimmed() -> None:
    result = trim_to_tokens("short\ntext", 100, len)
    assert result == Trimmed(text="short\ntext", trimmed=False, kept_chars=10, total_chars=10)


def test_trimming_cuts_at_a_line_boundary_within_budget() -> None:
    text = "".join(f"line {i:03}\n" for i in range(100))  # 9 characters per line
    result = trim_to_tokens(text, 50, len)
    assert result.trimmed
    assert len(result.text) <= 50
    assert result.text == "".join(f"line {i:03}\n" for i in range(5))[:-1]
    assert text.startswith(result.text)
    assert result.kept_chars == len(result.text)
    assert result.total_chars == len(text)


def test_a_single_long_line_is_cut_at_a_character() -> None:
    result = trim_to_tokens("a" * 1000, 123, len)
    assert result.text == "a" * 123
    assert (result.kept_chars, result.total_chars) == (123, 1000)


def test_a_far_away_line_break_does_not_waste_the_budget() -> None:
    text = "title\n" + "b" * 1000
    assert trim_to_tokens(text, 500, len).kept_chars == 500


def test_trimming_calls_the_counter_few_times() -> None:
    counter = CountingCounter()
    text = "".join(f"row {i}: some words here\n" for i in range(5000))
    assert len(text) > 100_000
    result = trim_to_tokens(text, 20_000, counter)
    assert result.trimmed
    assert result.kept_chars <= 20_000
    assert counter.calls < 40


def test_zero_budget_keeps_nothing() -> None:
    assert trim_to_tokens("some text", 0, len) == Trimmed("", True, 0, 9)
    assert trim_to_tokens("", 0, len) == Trimmed("", False, 0, 0)


def test_trimming_with_the_real_token_counter() -> None:
    counter = TokenCounter()
    text = ("Привет, мир! Это проверка. " * 3 + "Hello, world.\n") * 2000
    result = trim_to_tokens(text, 1000, counter.count)
    assert result.trimmed
    assert counter.count(result.text) <= 1000
    assert counter.count(result.text) > 900  # most of the budget is used
    assert text.startswith(result.text)
    assert text[result.kept_chars] == "\n"  # cut at the end of a line


# --- wrapping -------------------------------------------------------------------------------


def test_wrap_puts_the_text_under_a_header_in_a_fence() -> None:
    document = TextDocument(name="notes.md", text="hello\n", encoding="utf-8")
    assert wrap(document, document.text, trimmed=False, total_chars=6) == (
        "File: notes.md\n```\nhello\n```"
    )


def test_wrap_fence_cannot_be_closed_by_the_content() -> None:
    text = "Example:\n```python\nprint(1)\n```\nand ````` five"
    document = TextDocument(name="a.md", text=text, encoding="utf-8")
    wrapped = wrap(document, text, trimmed=False, total_chars=len(text))
    lines = wrapped.split("\n")
    assert lines[1] == "``````"
    assert lines[-1] == "``````"
    assert text in wrapped
    assert "trimmed" not in wrapped


def test_wrap_notes_a_trimmed_text() -> None:
    document = TextDocument(name="big.txt", text="x" * 5000, encoding="utf-8")
    wrapped = wrap(document, "x" * 1200, trimmed=True, total_chars=5000)
    assert wrapped.endswith("```\n[… trimmed: the first 1200 of 5000 characters are shown]")
    assert wrapped.startswith("File: big.txt\n```\n")
