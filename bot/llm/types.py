"""Plain data exchanged with the backend client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.pictures import Picture

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the prompt sent to the backend; a user's may carry pictures."""

    role: Role
    content: str
    images: tuple[Picture, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call; `estimated` is True when the backend reported none or zeros."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text, in arrival order."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The end of a stream: why it finished and the usage the backend reported, if any.

    Through the router it also names the backend that answered and the model it was asked for.
    """

    finish_reason: str | None
    usage: Usage | None
    backend: str | None = None
    model: str | None = None


ChatEvent = TextDelta | StreamEnd


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of the backend's model list."""

    id: str
    name: str | None = None
    context_tokens: int | None = None
    available: bool = True
    kind: str | None = None  # "chat", "image", "embedding", "audio" when the backend says
    backend: str | None = None  # set where only a fallback backend lists it (its name)
    vision: bool | None = None  # reads pictures, where the backend says (None: not said)
