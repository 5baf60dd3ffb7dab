"""Telegram's rules for pictures: which go as photos, and how long a caption may be."""

from __future__ import annotations

# sendPhoto's documented limits: at most 10 MB, width + height at most 10000, and a width to
# height ratio of at most 20. Larger pictures are sent with sendDocument (up to 50 MB).
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDES = 10_000
PHOTO_MAX_RATIO = 20
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
CAPTION_LIMIT = 1024  # characters of a media caption


def fits_photo(*, size: int, mime_type: str, width: int | None, height: int | None) -> bool:
    """True when Telegram accepts the picture as a photo rather than only as a file."""
    if mime_type not in PHOTO_TYPES or size > PHOTO_MAX_BYTES or not width or not height:
        return False
    return width + height <= PHOTO_MAX_SIDES and max(width, height) <= PHOTO_MAX_RATIO * min(
        width, height
    )


def shorten_caption(text: str, limit: int = CAPTION_LIMIT) -> str:
    """Cut `text` to at most `limit` UTF-16 code units (as Telegram counts), ending with "…"."""
    text = text.strip()
    if _utf16_len(text) <= limit:
        return text
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit - 1:  # room for the ellipsis
            return text[:index].rstrip() + "…"
    return text


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2
