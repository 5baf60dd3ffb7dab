"""Model Markdown -> Telegram HTML (`markdown`), and cutting answers to size (`split`)."""

from bot.telegram.render.markdown import render_html, utf16_len
from bot.telegram.render.split import (
    TELEGRAM_TEXT_LIMIT,
    Piece,
    first_piece,
    render_fitting,
    split_markdown,
)

__all__ = [
    "TELEGRAM_TEXT_LIMIT",
    "Piece",
    "first_piece",
    "render_fitting",
    "render_html",
    "split_markdown",
    "utf16_len",
]
