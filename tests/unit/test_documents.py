"""Files sent to the bot: which are read as text, how they are decoded, trimmed and wrapped."""

from __future__ import annotations

import codecs
import logging
import random
import time

import pytest

from bot.services.documents import (
    DEFAULT_DOCUMENT_MAX_BYTES,
    DocumentRefusal,
    TextDocument,
    Trimmed,
    accepts,
    display_name,
    is_pdf,
    read_document,
    trim_to_tokens,
    wrap,
)
from bot.services.pdf import PDF_INFLATED_BYTES_PER_BYTE, PDF_MAX_PAGES, PDF_STREAM_MAX_BYTES
from bot.services.tokens import TokenCounter
from tests.fakes.pdf import encrypt_pdf, make_pdf, pdf_stream, text_content

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
        ("slides.pptx", "application/vnd.ms-powerpoint"),
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


# --- PDFs -----------------------------------------------------------------------------------

PDF_LIMIT = 10 * 1024 * 1024  # the handler's PDF byte limit by default


def _read_pdf(data: bytes, name: str = "report.pdf", **kwargs: int) -> TextDocument:
    result = read_document(name, "application/pdf", data, **kwargs)
    assert isinstance(result, TextDocument), result
    return result


def _wrapped(document: TextDocument) -> str:
    return wrap(document, document.text, trimmed=False, total_chars=len(document.text))


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("report.pdf", None),
        ("SCAN.PDF", "application/octet-stream"),  # the extension is enough
        (None, "application/pdf"),
        ("document", "Application/PDF; name=document"),
    ],
)
def test_pdfs_are_accepted(name: str | None, mime: str | None) -> None:
    assert accepts(name, mime)
    assert is_pdf(name, mime)


def test_text_files_are_not_pdfs() -> None:
    assert not is_pdf("notes.txt", "text/plain")
    assert not is_pdf("report.pdf.txt", None)
    assert not is_pdf(None, None)


def test_the_pages_of_a_pdf_are_read_in_order() -> None:
    data = make_pdf(text_content("First page, line one", "line two"), text_content("Second page"))
    document = _read_pdf(data)
    assert document.text == "First page, line one\nline two\n\nSecond page"
    assert (document.pages_read, document.pages_total) == (2, 2)
    assert document.name == "report.pdf"
    wrapped = _wrapped(document)
    assert wrapped.startswith("File: report.pdf\n```\nFirst page, line one\n")
    assert "cut:" not in wrapped  # every page was read


def test_a_pdf_is_read_by_its_mime_type_alone() -> None:
    data = make_pdf(text_content("Sent without a name"))
    assert _read_pdf(data, name="upload").text == "Sent without a name"


def test_deflated_content_streams_are_read() -> None:
    document = _read_pdf(make_pdf(text_content("Compressed words"), compress=True))
    assert document.text == "Compressed words"


@pytest.mark.parametrize(
    "data",
    [b"plain words, not a PDF", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64, b""],
    ids=["text", "png", "empty"],
)
def test_a_pdf_name_without_a_pdf_inside_is_refused(data: bytes) -> None:
    assert read_document("report.pdf", None, data) is DocumentRefusal.NOT_TEXT
    assert read_document(None, "application/pdf", data) is DocumentRefusal.NOT_TEXT


def test_a_pdf_named_as_text_is_read_as_a_pdf() -> None:
    data = make_pdf(text_content("Renamed, still a PDF"))
    document = read_document("notes.txt", "text/plain", data)
    assert isinstance(document, TextDocument)
    assert document.text == "Renamed, still a PDF"


def test_a_text_file_that_starts_like_a_pdf_is_read_as_text() -> None:
    text = "%PDF-1.7 is the version we target.\nNothing else here is PDF.\n"
    document = _read("notes.txt", text.encode())
    assert document.text == text
    assert document.encoding == "utf-8"


def test_a_pdf_locked_with_a_password_is_refused() -> None:
    data = encrypt_pdf(
        make_pdf(text_content("Top secret")), user_password="secret", owner_password="owner"
    )
    assert read_document("locked.pdf", None, data) is DocumentRefusal.ENCRYPTED


def test_a_pdf_that_opens_without_a_password_is_read() -> None:
    # Only editing is locked (an owner password): anyone may open and read it.
    data = encrypt_pdf(
        make_pdf(text_content("Read me, do not edit me")), user_password="", owner_password="o"
    )
    assert _read_pdf(data).text == "Read me, do not edit me"


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + random.Random(3).randbytes(4096),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n",
        b"%PDF-1.7\n",
        _truncated(make_pdf(text_content("cut short"))),
        make_pdf(b"BT /F1 12 Tf " + b"[" * 5000 + b" TJ ET"),  # pypdf recurses into each array
    ],
    ids=["noise", "no-trailer", "header-only", "truncated", "deep-nesting"],
)
def test_a_broken_pdf_is_unreadable_without_an_exception(data: bytes) -> None:
    assert read_document("broken.pdf", None, data) is DocumentRefusal.UNREADABLE


def test_a_pdf_with_a_wrong_cross_reference_offset_is_still_read() -> None:
    data = make_pdf(text_content("Repaired on the fly")).replace(b"startxref\n", b"startxref\n9")
    assert _read_pdf(data).text == "Repaired on the fly"


def test_mangled_pdfs_never_raise() -> None:
    original = make_pdf(
        text_content("Line one", "Line two"), text_content("Page two"), compress=True
    )
    rng = random.Random(11)
    for _attempt in range(60):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        result = read_document("mangled.pdf", None, bytes(data))
        assert isinstance(result, TextDocument | DocumentRefusal)


def test_a_pdf_without_text_is_refused_as_such() -> None:
    scan_like = make_pdf(b"0.5 g 72 72 468 648 re f", b"q 1 0 0 1 0 0 cm Q")
    assert read_document("scan.pdf", None, scan_like) is DocumentRefusal.NO_TEXT


def test_only_the_first_pages_of_a_long_pdf_are_read_and_the_cut_is_noted() -> None:
    total = PDF_MAX_PAGES + 5
    data = make_pdf(*(text_content(f"Page {n} of the manual") for n in range(1, total + 1)))
    document = _read_pdf(data)
    assert (document.pages_read, document.pages_total) == (PDF_MAX_PAGES, total)
    assert f"Page {PDF_MAX_PAGES} of the manual" in document.text
    assert f"Page {PDF_MAX_PAGES + 1} of the manual" not in document.text
    wrapped = _wrapped(document)
    cut = f"[… cut: only the first {PDF_MAX_PAGES} of {total} pages were read]"
    assert wrapped.endswith(f"```\n{cut}")
    trimmed = wrap(document, document.text[:100], trimmed=True, total_chars=len(document.text))
    assert f"```\n{cut}\n[… trimmed" in trimmed
    assert trimmed.endswith(
        f"[… trimmed: the first 100 of {len(document.text)} characters are shown]"
    )


def test_reading_stops_once_the_text_passes_four_times_the_byte_limit() -> None:
    # Deflated content: 12,000 characters per page from a few hundred bytes.
    pages = [text_content(f"{n}" * 12_000) for n in range(1, 6)]
    data = make_pdf(*pages, compress=True)
    assert 4 * len(data) < 12_000  # the first page is past the cap
    document = _read_pdf(data, max_bytes=len(data))
    assert document.text == "1" * 12_000
    assert "first 1 of 5 pages" in _wrapped(document)


def _form(content: bytes) -> bytes:
    """A form XObject that can show text in Helvetica."""
    extra = b" /Type /XObject /Subtype /Form /BBox [0 0 612 792]"
    extra += b" /Resources << /Font << /F1 3 0 R >> >>"
    return pdf_stream(content, extra=extra, compress=True)


def test_a_page_that_inflates_past_the_budget_ends_the_reading() -> None:
    limit = 64 * 1024
    inflated = b"%" + b" " * (PDF_INFLATED_BYTES_PER_BYTE * limit) + b"\n"
    data = make_pdf(text_content("Kept"), text_content("Lost") + b"\n" + inflated, compress=True)
    assert len(data) < limit
    document = _read_pdf(data, max_bytes=limit)
    assert document.text == "Kept"
    assert "first 1 of 2 pages" in _wrapped(document)


def test_form_xobjects_count_toward_the_budget() -> None:
    limit = 64 * 1024
    blank = b" " * (limit * PDF_INFLATED_BYTES_PER_BYTE // 4)
    forms = tuple(_form(b"%d" % i + blank + text_content("hidden")) for i in range(8))
    shows = b" ".join(b"/X%d Do" % i for i in range(8))
    data = make_pdf(text_content("Kept"), shows, compress=True, objects=forms)
    assert len(data) < limit
    document = _read_pdf(data, max_bytes=limit)
    assert document.text == "Kept"
    assert (document.pages_read, document.pages_total) == (1, 2)


def test_a_stream_that_inflates_past_the_stream_limit_is_unreadable_quickly() -> None:
    bomb = b"%" + b" " * (PDF_STREAM_MAX_BYTES + 1)
    data = make_pdf(bomb + b"\n" + text_content("never read"), compress=True)
    assert len(data) < 100 * 1024
    started = time.monotonic()
    assert read_document("bomb.pdf", None, data, max_bytes=PDF_LIMIT) is (
        DocumentRefusal.UNREADABLE
    )
    assert time.monotonic() - started < 5


def test_pdf_content_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # pypdf warns about junk before the header and quotes it.
    data = b"SECRET-WORDS\n" + make_pdf(text_content("Also secret"))[:-40]
    read_document("report.pdf", None, data)
    read_document("report.pdf", None, b"SECRET-WORDS\n" + make_pdf(text_content("Also secret")))
    assert "SECRE" not in caplog.text
    assert "Also secret" not in caplog.text
