"""PDFs written by hand for tests: text pages, form XObjects, and password-locked copies."""

from __future__ import annotations

import io
import zlib

import pypdf

HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def pdf_stream(data: bytes, *, extra: bytes = b"", compress: bool = False) -> bytes:
    """A stream object's body: `data`, deflated when `compress`, with `extra` dictionary keys."""
    if compress:
        data = zlib.compress(data)
        extra += b" /Filter /FlateDecode"
    return b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(data), extra, data)


def make_pdf(*contents: bytes, compress: bool = False, objects: tuple[bytes, ...] = ()) -> bytes:
    """A valid PDF written by hand: one page per content stream, each with Helvetica as /F1.

    `objects` are appended after the pages and the last page's resources name them /X0, /X1…
    as XObjects.
    """
    body = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", HELVETICA]
    first_extra = 4 + 2 * len(contents)
    xobjects = b" ".join(b"/X%d %d 0 R" % (i, first_extra + i) for i in range(len(objects)))
    kids = []
    for index, content in enumerate(contents, 1):
        number = len(body) + 1
        kids.append(b"%d 0 R" % number)
        body.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> /XObject << %s >> >> /Contents %d 0 R >>"
            % (xobjects if index == len(contents) else b"", number + 1)
        )
        body.append(pdf_stream(content, compress=compress))
    body[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    body.extend(objects)
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, item in enumerate(body, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, item)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(body) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(body) + 1, xref)
    return bytes(out)


def text_content(*lines: str) -> bytes:
    """A content stream showing `lines` one under another in Helvetica."""
    shown = b" T* ".join(b"(%s) Tj" % line.encode("latin-1") for line in lines)
    return b"BT /F1 12 Tf 14 TL 72 720 Td " + shown + b" ET"


def encrypt_pdf(data: bytes, *, user_password: str, owner_password: str) -> bytes:
    """`data` encrypted by pypdf (RC4, 128 bits)."""
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
