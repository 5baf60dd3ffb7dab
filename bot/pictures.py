"""Pictures users send to a vision model: what they are (by their bytes) and how they travel.

Plain data shared by the layers that carry a picture: the handler reads it from Telegram, the
chat service puts it in the prompt, the backend client sends it as an OpenAI content part, and
the database keeps it when VISION_KEEP_IMAGES is on.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

# What vision backends take (OpenAI, Anthropic through LiteLLM, vLLM, Ollama): JPEG, PNG, WebP.
VISION_MIME_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})

# Tokens one picture is counted as for history budgets and usage estimates: OpenAI's figure for
# a high-detail picture of Telegram's photo size (1280 px: 4 tiles of 170, plus 85).
IMAGE_TOKENS = 765

# What stands in a turn's stored text for a picture not kept (the model reads it later).
PLACEHOLDER = "[image]"


@dataclass(frozen=True, slots=True)
class Picture:
    """A picture's bytes and its MIME type, as found in the bytes themselves."""

    mime_type: str
    data: bytes

    def data_url(self) -> str:
        """The picture as a `data:` URL, the way OpenAI-compatible backends take images."""
        encoded = base64.b64encode(self.data).decode("ascii")
        return f"data:{self.mime_type};base64,{encoded}"


def sniff(data: bytes) -> str | None:
    """The MIME type of a JPEG, PNG or WebP picture by its first bytes; None for anything else.

    A file's name and declared type are the sender's word; its first bytes are what a backend
    will decode, so they alone decide.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def picture(data: bytes) -> Picture | None:
    """The picture these bytes hold, or None if they are not a JPEG, PNG or WebP."""
    mime_type = sniff(data)
    return None if mime_type is None else Picture(mime_type=mime_type, data=data)


def with_placeholder(text: str, name: str | None = None) -> str:
    """A turn's text with the placeholder of its picture in front (and the file's name)."""
    mark = f"[image: {name}]" if name else PLACEHOLDER
    return f"{mark} {text}" if text else mark
