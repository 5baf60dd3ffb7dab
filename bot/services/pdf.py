"""PDFs sent as files: the text of their pages, read with pypdf within limits.

The text of the pages in order, at most PDF_MAX_PAGES pages, under limits that keep a hostile
file (streams that inflate to gigabytes, a form parsed thousands of times) from taking all
memory or holding the thread for long. `bot.services.documents` imports this module at the
first PDF, so a bot that is never sent one does not carry pypdf (about 10 MB).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass

import pypdf
from pypdf.errors import DependencyError, LimitReachedError, PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, StreamObject

from bot.services.documents import DocumentRefusal

logger = logging.getLogger(__name__)

# pypdf tells how it coped with a malformed file in warnings that quote the file's own bytes
# (names, strings, whole dictionaries); the bot's log never holds file content.
logging.getLogger("pypdf").setLevel(logging.CRITICAL + 1)

# Pages of a PDF whose text is read, from the first.
PDF_MAX_PAGES = 200
# Reading stops after the page that brings the text past this many characters per byte of the
# document limit (max_bytes)…
PDF_TEXT_CHARS_PER_BYTE = 4
# …and before a page that brings the inflated streams text extraction may read (contents, form
# XObjects, font maps, counted once each) past this many bytes per byte of the limit.
PDF_INFLATED_BYTES_PER_BYTE = 8
# The most one stream may inflate to (pypdf's own default is 75 MB); a page with a larger one
# ends the reading.
PDF_STREAM_MAX_BYTES = 16 * 1024 * 1024
# pypdf's limits while a PDF is read, applied to that call only (pypdf keeps them in a context
# variable). Made at import, so that a pypdf without these settings fails loudly (the tests
# import this module).
_PDF_CONFIGURATION = pypdf.Configuration().with_overwrites(
    zlib_maximum_output_length=PDF_STREAM_MAX_BYTES,
    lzw_maximum_output_length=PDF_STREAM_MAX_BYTES,
    run_length_maximum_output_length=PDF_STREAM_MAX_BYTES,
    brotli_maximum_output_length=PDF_STREAM_MAX_BYTES,
    array_based_stream_maximum_output_length=PDF_STREAM_MAX_BYTES,
)
# CPU seconds (of the reading thread) after which reading stops, the page under way dropped: a
# 1 KB PDF can have pypdf parse the same inflated form XObject thousands of times per page.
PDF_MAX_CPU_SECONDS = 30.0
# Keys not followed when counting what a page's text extraction may inflate: the page tree,
# annotations, thumbnails, metadata and font programs pypdf does not decode to extract text.
_UNREAD_PDF_KEYS = frozenset(
    {"/Parent", "/Annots", "/Thumb", "/B", "/Metadata", "/FontFile2", "/FontFile3"}
)


@dataclass(frozen=True, slots=True)
class PdfText:
    """The text of a PDF's first `pages_read` pages (of `pages_total`)."""

    text: str
    pages_read: int
    pages_total: int


_PdfRef = tuple[int, int]  # (object number, generation) of an indirect object


def _inflated_bytes(page: DictionaryObject, seen: set[_PdfRef], *, room: int) -> int:
    """Bytes of the streams reachable from `page` that text extraction may read (contents, form
    XObjects, font maps), inflating them; pypdf keeps them, so extraction does not inflate them
    again. Raises LimitReachedError as soon as they pass `room` bytes.

    Objects in `seen` are skipped and the new ones added, so a font or form that pages share
    counts once. Images and the keys in _UNREAD_PDF_KEYS are not followed.
    """
    total = 0
    pending: list[object] = [page]
    while pending:
        item = pending.pop()
        if isinstance(item, IndirectObject):
            ref = (item.idnum, item.generation)
            if ref in seen:
                continue
            seen.add(ref)
            item = item.get_object()
        if isinstance(item, ArrayObject):
            pending.extend(item)
        elif isinstance(item, DictionaryObject):
            if isinstance(item, StreamObject):
                if item.get("/Subtype") == "/Image":
                    continue
                total += len(item.get_data())
                if total > room:
                    raise LimitReachedError("the inflated streams are past the budget")
            pending.extend(value for key, value in item.items() if key not in _UNREAD_PDF_KEYS)
    return total


class _OutOfTime(Exception):
    """The CPU time for reading a PDF ran out (PDF_MAX_CPU_SECONDS)."""


def _page_text(page: pypdf.PageObject, *, deadline: float) -> str:
    """The page's text, stripped; raises _OutOfTime when `deadline` (a time.thread_time() value)
    has passed before the page or at any operator of its content streams."""

    def check_time(*_: object) -> None:
        if time.thread_time() > deadline:
            raise _OutOfTime

    check_time()
    return page.extract_text(visitor_operand_before=check_time).strip()


def _pdf_pages_text(
    reader: pypdf.PdfReader, *, max_chars: int, max_inflated: int
) -> PdfText | DocumentRefusal:
    """The text of the reader's pages in order, page texts apart by a blank line.

    At most PDF_MAX_PAGES pages; reading ends after the page that brings the text past
    `max_chars` characters, and before a page that brings the inflated streams past
    `max_inflated` bytes, has a stream past pypdf's limits or is not read within
    PDF_MAX_CPU_SECONDS (UNREADABLE if that is the first).
    """
    deadline = time.thread_time() + PDF_MAX_CPU_SECONDS
    pages = reader.pages
    total = len(pages)
    texts: list[str] = []
    chars = inflated = read = 0
    seen: set[_PdfRef] = set()
    for index in range(min(total, PDF_MAX_PAGES)):
        page = pages[index]
        try:
            inflated += _inflated_bytes(page, seen, room=max_inflated - inflated)
            text = _page_text(page, deadline=deadline)
        except (LimitReachedError, _OutOfTime):
            if not read:
                return DocumentRefusal.UNREADABLE
            break
        read = index + 1
        if text:
            texts.append(text)
            chars += len(text)
        if chars > max_chars:
            break
    return PdfText(text="\n\n".join(texts), pages_read=read, pages_total=total)


def read_pdf(data: bytes, *, max_bytes: int) -> PdfText | DocumentRefusal:
    """The text of a PDF (see _pdf_pages_text; its limits scale with `max_bytes`), ENCRYPTED
    when it does not open without a password, UNREADABLE when pypdf cannot read it."""
    try:
        with pypdf.apply_configuration(_PDF_CONFIGURATION):
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and reader.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
                return DocumentRefusal.ENCRYPTED
            return _pdf_pages_text(
                reader,
                max_chars=PDF_TEXT_CHARS_PER_BYTE * max_bytes,
                max_inflated=PDF_INFLATED_BYTES_PER_BYTE * max_bytes,
            )
    except DependencyError:
        # AES encryption needs a cryptography package, and none is installed.
        return DocumentRefusal.ENCRYPTED
    except PyPdfError:
        return DocumentRefusal.UNREADABLE
    except Exception as exc:  # pypdf's own words: "broken PDF files might cause other Exceptions"
        # The type only: the message may quote the file.
        logger.info("PDF not read: pypdf raised %s", type(exc).__name__)
        return DocumentRefusal.UNREADABLE
