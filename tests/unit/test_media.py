"""Telegram's picture rules: photo or file, captions within Telegram's limit."""

from __future__ import annotations

import pytest

from bot.telegram.media import CAPTION_LIMIT, fits_photo, shorten_caption

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "mime", "width", "height", "photo"),
    [
        (2 * MB, "image/png", 1024, 1024, True),
        (2 * MB, "image/webp", 1792, 1024, True),
        (2 * MB, "image/jpeg", 5000, 5000, True),  # width + height exactly 10000
        (11 * MB, "image/png", 1024, 1024, False),  # over 10 MB
        (2 * MB, "image/png", 6000, 4001, False),  # width + height over 10000
        (2 * MB, "image/png", 2100, 100, False),  # ratio over 20
        (2 * MB, "image/gif", 512, 512, False),  # would lose its animation as a photo
        (2 * MB, "image/avif", None, None, False),  # size unknown
    ],
)
def test_pictures_telegram_would_refuse_as_photos_go_as_files(
    size: int, mime: str, width: int | None, height: int | None, photo: bool
) -> None:
    assert fits_photo(size=size, mime_type=mime, width=width, height=height) is photo


def test_long_captions_are_cut_to_telegrams_limit() -> None:
    assert shorten_caption("  a red fox  ") == "a red fox"
    cut = shorten_caption("fox " * 400)
    assert len(cut) <= CAPTION_LIMIT and cut.endswith("…")
    # Telegram counts UTF-16 code units: each emoji takes two, and none is split in half.
    emoji = shorten_caption("🦊" * 600)
    assert len(emoji.encode("utf-16-le")) // 2 <= CAPTION_LIMIT
    assert emoji == "🦊" * 511 + "…"
