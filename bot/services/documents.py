"""Text documents sent as files: which ones the bot reads, how they are decoded and trimmed.

Pure functions with no I/O and no Telegram types: a handler downloads the file, passes its name,
MIME type and bytes to `read_document`, trims the text to the token budget with
`trim_to_tokens` and puts `wrap`'s result into the user's turn.

Decoding order: a byte order mark decides (UTF-8, UTF-16, UTF-32); otherwise strict UTF-8;
otherwise charset_normalizer's guess, accepted only if it decodes strictly and the result looks
like text. Data with NUL bytes and no UTF-16/32 byte order mark is binary (executables, archives,
images all have them), so is text with too many control characters.

PDFs (a .pdf name or application/pdf, confirmed by the %PDF- header) are read by
`bot.services.pdf`, imported at the first one.
"""

from __future__ import annotations

import codecs
import enum
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_DOCUMENT_MAX_BYTES = 512 * 1024

TEXT_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".txt", ".md", ".markdown", ".csv", ".tsv", ".json", ".jsonl", ".log",
        ".py", ".js", ".ts", ".go", ".rs", ".java", ".kt", ".swift", ".c", ".cpp", ".h", ".hpp",
        ".cs", ".rb", ".php", ".sh", ".html", ".css", ".xml", ".yaml", ".yml", ".toml", ".ini",
        ".sql",
    }
)  # fmt: skip

TEXT_MIME_TYPES: frozenset[str] = frozenset(
    {
        "application/json",
        "application/xml",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/sql",
        "application/x-sh",
        "application/javascript",
    }
)

PDF_EXTENSION = ".pdf"
PDF_MIME_TYPE = "application/pdf"
# A PDF starts with this header; readers accept it anywhere in the first kilobyte.
PDF_MAGIC = b"%PDF-"
PDF_MAGIC_WINDOW = 1024
NAME_MAX_CHARS = 100
DEFAULT_NAME = "file"

# Share of control characters (other than \t \n \r \f) above which decoded text is binary.
MAX_CONTROL_SHARE = 0.10

# Single-byte encodings are often indistinguishable by statistics alone (cp1251 Russian text
# also decodes cleanly as mac_cyrillic). Among guesses that are equally clean, take the encoding
# people actually save files in, in this order.
_PREFERRED_ENCODINGS = (
    "cp1251",
    "cp1252",
    "koi8_r",
    "koi8_u",
    "cp866",
    "cp1250",
    "cp1253",
    "cp1254",
    "cp1255",
    "cp1256",
    "cp1257",
    "gb18030",
    "big5",
    "shift_jis",
    "euc_jp",
    "euc_kr",
)
_CHAOS_TOLERANCE = 0.02

_BOMS: tuple[tuple[bytes, str], ...] = (
    # UTF-32 first: its little-endian mark starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_NEWLINES = re.compile(r"\r\n?")
_BACKTICKS = re.compile(r"`+")
# Characters dropped from a display name: format characters (bidi overrides, zero widths),
# surrogates, private use and unassigned code points.
_DROPPED_NAME_CATEGORIES = frozenset({"Cf", "Cs", "Co", "Cn"})
# Characters that become a space in a display name: control characters and line separators.
_SPACED_NAME_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class TextDocument:
    """A file the bot can read as text."""

    name: str  # safe for display: no control characters, at most NAME_MAX_CHARS
    text: str  # newlines normalised to \n
    encoding: str  # Python codec name, e.g. "utf-8", "utf-16", "cp1251"; "pdf" for a PDF's text
    pages_read: int | None = None  # a PDF: how many pages (from the first) the text comes from
    pages_total: int | None = None  # a PDF: how many pages it has

    @property
    def pages_cut(self) -> bool:
        """True for a PDF whose later pages were not read."""
        return (
            self.pages_read is not None
            and self.pages_total is not None
            and self.pages_read < self.pages_total
        )


class DocumentRefusal(enum.Enum):
    """Why a file is not read."""

    NOT_TEXT = "not_text"  # extension/MIME not text-like, or the content is binary
    TOO_LARGE = "too_large"  # over the byte limit
    EMPTY = "empty"  # nothing but whitespace after decoding
    ENCRYPTED = "encrypted"  # a PDF that does not open without a password
    UNREADABLE = "unreadable"  # a PDF too broken (or too hostile) to read
    NO_TEXT = "no_text"  # a PDF without extractable text, e.g. scanned pages


@dataclass(frozen=True, slots=True)
class Trimmed:
    """A text cut to a token budget."""

    text: str
    trimmed: bool  # True when the text was cut
    kept_chars: int
    total_chars: int


def _extension(file_name: str) -> str:
    """The lower-case extension with its dot ('.txt'), or '' when the name has none."""
    _, dot, ext = file_name.strip().rpartition(".")
    return f".{ext.lower()}" if dot else ""


def _mime_essence(mime_type: str) -> str:
    """'Text/Plain; charset=utf-8' -> 'text/plain'."""
    return mime_type.split(";", 1)[0].strip().lower()


def is_pdf(file_name: str | None, mime_type: str | None) -> bool:
    """True when the file's extension is .pdf or its MIME type application/pdf (both
    case-insensitive, MIME parameters ignored)."""
    if file_name and _extension(file_name) == PDF_EXTENSION:
        return True
    return mime_type is not None and _mime_essence(mime_type) == PDF_MIME_TYPE


def accepts(file_name: str | None, mime_type: str | None) -> bool:
    """True when the file's extension or MIME type says it is a text document or a PDF.

    The extension must be in TEXT_EXTENSIONS or .pdf (case-insensitive); the MIME type must be
    text/*, one of TEXT_MIME_TYPES or application/pdf (case-insensitive, parameters like
    '; charset=utf-8' ignored).
    """
    if is_pdf(file_name, mime_type):
        return True
    if file_name and _extension(file_name) in TEXT_EXTENSIONS:
        return True
    if not mime_type:
        return False
    essence = _mime_essence(mime_type)
    return essence.startswith("text/") or essence in TEXT_MIME_TYPES


def display_name(file_name: str | None) -> str:
    """The file name safe to show: control characters and line breaks removed, whitespace
    collapsed, at most NAME_MAX_CHARS characters (the extension kept); "file" when none is left.
    """
    chars: list[str] = []
    for char in file_name or "":
        category = unicodedata.category(char)
        if category in _SPACED_NAME_CATEGORIES:
            chars.append(" ")
        elif category not in _DROPPED_NAME_CATEGORIES:
            chars.append(char)
    name = " ".join("".join(chars).split())
    if not name:
        return DEFAULT_NAME
    if len(name) <= NAME_MAX_CHARS:
        return name
    ext = _extension(name)
    if len(ext) > 10:
        ext = ""
    return name[: NAME_MAX_CHARS - len(ext) - 1].rstrip() + "…" + ext


def _looks_like_text(text: str) -> bool:
    """False when more than MAX_CONTROL_SHARE of the characters are control characters."""
    if not text:
        return True
    return len(_CONTROL.findall(text)) <= MAX_CONTROL_SHARE * len(text)


def _decode_strict(data: bytes, encoding: str) -> str | None:
    """The data decoded with `encoding`, or None when it does not decode."""
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def _guess(data: bytes) -> tuple[str, str] | None:
    """charset_normalizer's best guess as (text, encoding), preferring common encodings among
    equally clean guesses; None when there is no guess or it does not decode."""
    # Imported at the first file that is not UTF-8: a few MB the bot does not need otherwise.
    import charset_normalizer

    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    clean = [m for m in matches if m.chaos <= best.chaos + _CHAOS_TOLERANCE]
    encoding = next(
        (
            preferred
            for preferred in _PREFERRED_ENCODINGS
            if any(preferred in m.could_be_from_charset for m in clean)
        ),
        best.encoding,
    )
    text = _decode_strict(data, encoding)
    return None if text is None else (text, encoding)


def _decode(data: bytes) -> tuple[str, str] | None:
    """(text, encoding) for data that is text, None for binary data."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = _decode_strict(data, encoding)
            return None if text is None else (text, encoding)
    if b"\x00" in data:
        return None
    text = _decode_strict(data, "utf-8")
    if text is not None:
        return text, "utf-8"
    return _guess(data)


def _paired_surrogates(text: str) -> str:
    """`text` with surrogate halves paired into characters and lone ones replaced by U+FFFD
    (a PDF's broken font map can yield them; they cannot be encoded as UTF-8)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _has_pdf_header(data: bytes, *, anywhere_in_window: bool) -> bool:
    """True when the data starts with PDF_MAGIC, or has it within the first PDF_MAGIC_WINDOW
    bytes when `anywhere_in_window`."""
    if anywhere_in_window:
        return PDF_MAGIC in data[:PDF_MAGIC_WINDOW]
    return data.startswith(PDF_MAGIC)


def _read_pdf(
    file_name: str | None, data: bytes, *, max_bytes: int
) -> TextDocument | DocumentRefusal:
    """A PDF's text as a document, checked like decoded text; a PDF without text is NO_TEXT."""
    # Imported at the first PDF: pypdf adds some 10 MB to every process otherwise.
    from bot.services import pdf as pdf_reader

    pdf = pdf_reader.read_pdf(data, max_bytes=max_bytes)
    if isinstance(pdf, DocumentRefusal):
        return pdf
    # NUL characters mean nothing to a model, and PostgreSQL's text columns refuse them.
    text = _NEWLINES.sub("\n", _paired_surrogates(pdf.text)).replace("\x00", "")
    if not text.strip() or not _looks_like_text(text):
        return DocumentRefusal.NO_TEXT
    return TextDocument(
        name=display_name(file_name),
        text=text,
        encoding="pdf",
        pages_read=pdf.pages_read,
        pages_total=pdf.pages_total,
    )


def read_document(
    file_name: str | None,
    mime_type: str | None,
    data: bytes,
    *,
    max_bytes: int = DEFAULT_DOCUMENT_MAX_BYTES,
) -> TextDocument | DocumentRefusal:
    """The file as text, or why it is not read.

    Refuses files whose name and MIME type are neither text-like nor PDF and binary content
    (NOT_TEXT), more than `max_bytes` bytes (TOO_LARGE), and files with nothing but whitespace
    (EMPTY). A file named or typed as PDF is read as one if it has the PDF header (NOT_TEXT
    otherwise); a file named as text that starts with the header is read as a PDF if it opens as
    one. PDFs are refused as ENCRYPTED, UNREADABLE or NO_TEXT too. Never raises.
    """
    if not accepts(file_name, mime_type):
        return DocumentRefusal.NOT_TEXT
    if len(data) > max_bytes:
        return DocumentRefusal.TOO_LARGE
    named_pdf = is_pdf(file_name, mime_type)
    if _has_pdf_header(data, anywhere_in_window=named_pdf):
        pdf = _read_pdf(file_name, data, max_bytes=max_bytes)
        # A file named as text is read as text unless it opens as a PDF.
        if named_pdf or isinstance(pdf, TextDocument) or pdf is DocumentRefusal.ENCRYPTED:
            return pdf
    elif named_pdf:
        return DocumentRefusal.NOT_TEXT
    decoded = _decode(data)
    if decoded is None:
        return DocumentRefusal.NOT_TEXT
    raw, encoding = decoded
    text = _NEWLINES.sub("\n", raw).replace("\x00", "")  # no NUL, as for PDFs
    if not text.strip():
        return DocumentRefusal.EMPTY
    if not _looks_like_text(text):
        return DocumentRefusal.NOT_TEXT
    return TextDocument(name=display_name(file_name), text=text, encoding=encoding)


def _longest_fitting_prefix(text: str, max_tokens: int, count: Callable[[str], int]) -> int:
    """The largest n with count(text[:n]) <= max_tokens, found by binary search (assumes the
    whole text does not fit and the empty prefix does)."""
    low, high = 0, len(text)  # text[:low] fits, text[:high] does not
    while high - low > 1:
        middle = (low + high) // 2
        if count(text[:middle]) <= max_tokens:
            low = middle
        else:
            high = middle
    return low


def trim_to_tokens(text: str, max_tokens: int, count: Callable[[str], int]) -> Trimmed:
    """The longest prefix of `text` with count(prefix) <= max_tokens.

    The cut is at a line boundary (the newline dropped) when that keeps at least half of the
    longest fitting prefix, else at a character. `count` is a token counter such as
    TokenCounter().count; it is called O(log n) times. max_tokens <= 0 keeps nothing.
    """
    total = len(text)
    if not text:
        return Trimmed(text="", trimmed=False, kept_chars=0, total_chars=0)
    if max_tokens <= 0:
        return Trimmed(text="", trimmed=True, kept_chars=0, total_chars=total)
    if count(text) <= max_tokens:
        return Trimmed(text=text, trimmed=False, kept_chars=total, total_chars=total)
    cut = _longest_fitting_prefix(text, max_tokens, count)
    line_end = text.rfind("\n", 0, cut)
    # Token counts of prefixes are not strictly monotonic, so the shorter prefix is checked too.
    if line_end >= cut / 2 and count(text[:line_end]) <= max_tokens:
        cut = line_end
    kept = text[:cut]
    return Trimmed(text=kept, trimmed=True, kept_chars=len(kept), total_chars=total)


def wrap(document: TextDocument, text: str, *, trimmed: bool, total_chars: int) -> str:
    """The document as it goes into the user's turn for the model.

    A header line 'File: {name}', then `text` in a fenced block whose fence is longer than any
    backtick run inside it (so the content cannot close it), then, for a PDF whose later pages
    were not read, a note saying how many were, and, when trimmed, a note saying how many
    characters are shown.
    """
    longest_run = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest_run + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    wrapped = f"File: {document.name}\n{fence}\n{body}{fence}"
    if document.pages_cut:
        wrapped += (
            f"\n[… cut: only the first {document.pages_read} of {document.pages_total} pages "
            "were read]"
        )
    if trimmed:
        wrapped += f"\n[… trimmed: the first {len(text)} of {total_chars} characters are shown]"
    return wrapped
