"""Fake OpenAI-compatible LLM backend: a real aiohttp server scripted by tests.

Start it, point the bot's ``LLM_BASE_URL`` at :attr:`FakeLLM.base_url`, enqueue replies
(:class:`Stream`, :class:`Error`, :class:`StreamError`, :class:`Disconnect`, :class:`Hang`,
:class:`Raw`) and inspect :attr:`FakeLLM.requests` afterwards.

It also serves ``POST /v1/images/generations`` (:meth:`FakeLLM.enqueue_image`) and
``POST /v1/audio/transcriptions`` (:meth:`FakeLLM.enqueue_transcription`,
:meth:`FakeLLM.transcription_requests`), the latter switched off by ``transcriptions=False``
(404, like any unknown path) or ``transcriptions=405``.

The reply shapes follow what real backends were seen to send (OpenAI, LiteLLM, mock servers,
akashchat-api-go): role-only first chunk or not, usage in a separate chunk, inside the finish
chunk, on the last content chunk or all zeros, ``[DONE]`` or none, in-stream error events,
connections cut mid-body.

Token estimates (documented, deliberately rough):

* usage ``prompt_tokens`` defaults to :func:`count_words` of the request's messages;
* usage ``completion_tokens`` defaults to the number of content chunks;
* the ``max_context`` check uses :func:`estimate_tokens` = ceil(characters of text / 4).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.message
import email.parser
import email.policy
import json
import math
import re
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from aiohttp import web

__all__ = [
    "AKASHCHAT_MODELS",
    "DEFAULT_MODELS",
    "PNG_1X1",
    "Disconnect",
    "Error",
    "FakeLLM",
    "Hang",
    "ImageReply",
    "ImageResult",
    "Raw",
    "Recorded",
    "Reply",
    "Stream",
    "StreamError",
    "Transcription",
    "TranscriptionReply",
    "TranscriptionRequest",
    "count_words",
    "default_reply",
    "estimate_tokens",
    "make_png",
]

UsageMode: TypeAlias = Literal["separate", "in_finish", "in_last_content", "zeros", "none"]
ModelsShape: TypeAlias = Literal["openai", "bare", "error"]
JSONDict: TypeAlias = dict[str, Any]

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
IMAGES_PATH = "/v1/images/generations"
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"

#: Bytes of audio per second the default transcription reports: Telegram's voice notes are
#: Opus at about 16 kbit/s.
AUDIO_BYTES_PER_SECOND = 2000

# ---------------------------------------------------------------------------------------------
# Bodies copied from captured provider responses (see the provider fixtures README).
# ---------------------------------------------------------------------------------------------

#: The 70-byte 1x1 PNG that the captured servers returned as ``b64_json``.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

_OPENAI_500_BODY: JSONDict = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
_OPENAI_429_BODY: JSONDict = {
    "error": {
        "message": "Rate limit reached for requests",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
_OPENAI_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)
_OPENAI_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    "a username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
_LITELLM_UPSTREAM_DROPPED_ERROR: JSONDict = {
    "message": (
        "litellm.APIConnectionError: APIConnectionError: OpenAIException - Response payload "
        "is not completed: <TransferEncodingError: 400, message='Not enough data to satisfy "
        "transfer length header.'>"
    ),
    "type": None,
    "param": None,
    "code": "500",
}

#: Models served by default (OpenAI shape).
DEFAULT_MODELS: list[JSONDict] = [
    {"id": "gpt-4o-mini", "created": 1721172741, "owned_by": "system"},
    {"id": "gpt-4o", "created": 1715367049, "owned_by": "system"},
    {"id": "dall-e-3", "created": 1698785189, "owned_by": "system"},
]

#: akashchat-api-go ``GET /v1/models`` entries (first verbatim from its README, two
#: illustrative; ``AkashGen`` is unavailable), for ``models_shape="bare"``.
AKASHCHAT_MODELS: list[JSONDict] = [
    {
        "id": "openai-gpt-oss-120b",
        "name": "GPT-OSS-120B",
        "description": "Efficient reasoning model with 117B parameters (5.1B active)",
        "temperature": 0.6,
        "top_p": 0.95,
        "tokenLimit": 128000,
        "parameters": "117B (5.1B active)",
        "architecture": "Transformer with native MXFP4 quantization",
        "hf_repo": "openai/gpt-oss-120b",
        "aboutContent": (
            "Experience **GPT-OSS-120B**, OpenAI's open-source reasoning model with 117B total "
            "parameters and 5.1B active parameters. Built with native MXFP4 quantization, this "
            "model is designed for powerful reasoning, agentic tasks, and versatile developer "
            "use cases.\n\nGPT-OSS-120B features configurable reasoning levels (Low, Medium, "
            "High) and supports advanced capabilities like tool use, web browsing, and function "
            "calling. Optimized to run efficiently on a single H100 GPU while delivering "
            "high-quality reasoning performance."
        ),
        "infoContent": (
            "\n* ⚡ Open-source reasoning model with configurable reasoning levels\n* 🧠 117B "
            "parameters (5.1B active) with native MXFP4 quantization\n* 🌐 Decentralized hosting "
            "for lower costs & full control\n* 🔍 Optimized for reasoning, agentic tasks, and "
            "tool use"
        ),
        "thumbnailId": "llama-3",
        "deployUrl": (
            "https://console.akash.network/templates/"
            "akash-network-awesome-akash-openai-gpt-oss-120b"
        ),
        "available": True,
    },
    {
        "id": "Meta-Llama-3-3-70B-Instruct",
        "name": "Llama 3.3 70B",
        "description": "Text model named in the proxy README",
        "temperature": 0.6,
        "top_p": 0.95,
        "tokenLimit": 128000,
        "parameters": "70B",
        "architecture": "Transformer",
        "hf_repo": "meta-llama/Llama-3.3-70B-Instruct",
        "aboutContent": "",
        "infoContent": "",
        "thumbnailId": "llama-3",
        "deployUrl": "",
        "available": True,
    },
    {
        "id": "AkashGen",
        "name": "AkashGen",
        "description": "Image model named in the proxy README; unavailable to test filtering",
        "temperature": 0.85,
        "top_p": 1,
        "tokenLimit": 0,
        "parameters": "",
        "architecture": "",
        "hf_repo": "",
        "aboutContent": "",
        "infoContent": "",
        "thumbnailId": "",
        "deployUrl": "",
        "available": False,
    },
]

_BARE_ONLY_KEYS = frozenset(
    {
        "name",
        "description",
        "temperature",
        "top_p",
        "tokenLimit",
        "parameters",
        "architecture",
        "hf_repo",
        "aboutContent",
        "infoContent",
        "thumbnailId",
        "deployUrl",
        "available",
    }
)
_OPENAI_ONLY_KEYS = frozenset({"object", "created", "owned_by"})


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def make_png(
    width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (220, 40, 40)
) -> bytes:
    """Return a valid single-colour RGB PNG of the given size."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


_DATA_URL_RE = re.compile(r"data:(image/(?:jpeg|png|webp|gif));base64,([A-Za-z0-9+/]*={0,2})")
_IMAGE_MAGIC = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


def _content_parts_problem(parts: list[Any], param: str) -> tuple[str, str] | None:
    """What OpenAI would say about a message's content parts (message, param), or None.

    Text parts need a string `text`; image parts an `image_url.url` that is an http(s) link or
    a base64 `data:` URL of a JPEG, PNG, WebP or GIF whose bytes are that format.
    """
    for number, part in enumerate(parts):
        where = f"{param}.[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                return f"Invalid type for '{where}.text': expected a string.", f"{where}.text"
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                return f"Missing required parameter: '{where}.image_url.url'.", where
            if url.startswith(("http://", "https://")):
                continue
            match = _DATA_URL_RE.fullmatch(url)
            try:
                data = base64.b64decode(match.group(2), validate=True) if match else b""
            except binascii.Error:
                data = b""
            if match is None or not data.startswith(_IMAGE_MAGIC[match.group(1)]):
                return (
                    "Invalid image URL: expected a base64-encoded data URL with an image MIME "
                    "type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got "
                    "unsupported MIME type or invalid data.",
                    f"{where}.image_url",
                )
        else:
            return (
                f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', "
                "'input_audio', 'refusal', 'audio', and 'file'.",
                f"{where}.type",
            )
    return None


def _message_texts(messages: Any) -> list[str]:
    texts: list[str] = []
    if not isinstance(messages, list):
        return texts
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return texts


def count_words(messages: Any) -> int:
    """Whitespace-separated words in the text content of chat messages."""
    return sum(len(text.split()) for text in _message_texts(messages))


def estimate_tokens(messages: Any) -> int:
    """Rough token count used for ``max_context``: ceil(characters of text content / 4)."""
    return math.ceil(sum(len(text) for text in _message_texts(messages)) / 4)


def _last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return " ".join(_message_texts([message]))
    return ""


def _split_words(text: str, per_chunk: int = 2) -> list[str]:
    words = re.findall(r"\S+\s*", text)
    chunks = ["".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)]
    return chunks or [text]


def _mask_key(key: str) -> str:
    return f"{key[:5]}***{key[-2:]}" if len(key) > 7 else "***"


def _error_body(message: str, type_: str | None, param: str | None, code: str | None) -> JSONDict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """A successful answer, streamed as OpenAI SSE chunks (or joined for non-stream requests)."""

    chunks: list[str]  # delta.content pieces
    delay: float = 0.0  # seconds between chunks (reasoning and content)
    first_delay: float = 0.0  # seconds between the headers and the first chunk
    # separate: OpenAI's final `choices: []` chunk, only if stream_options.include_usage
    # (then every other chunk carries `usage: null`); in_finish: usage in the finish chunk;
    # in_last_content: the last content chunk has finish_reason + usage (no finish chunk);
    # zeros: akashchat all-zero usage in the finish chunk; none: no usage anywhere.
    usage: UsageMode = "separate"
    prompt_tokens: int | None = None  # default: words in the request's messages
    completion_tokens: int | None = None  # default: len(chunks)
    role_chunk: bool = True  # False: `role` rides on the first content/reasoning chunk
    finish_reason: str = "stop"
    done: bool = True  # send `data: [DONE]`
    keepalive: float | None = None  # `: keep-alive` comment interval while waiting
    reasoning: list[str] = field(default_factory=list)  # delta.reasoning_content first
    extra_blank_line: bool = False  # end events with \n\n\n (Go json.Encoder)
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers

    @classmethod
    def text(cls, text: str, *, per_chunk: int = 2, **kwargs: Any) -> Stream:
        """Stream ``text`` split into chunks of ``per_chunk`` words."""
        return cls(_split_words(text, per_chunk), **kwargs)

    @classmethod
    def litellm(cls, chunks: list[str], **kwargs: Any) -> Stream:
        """LiteLLM proxy shape: role on the first content chunk, usage in a separate chunk."""
        kwargs.setdefault("role_chunk", False)
        kwargs.setdefault("usage", "separate")
        return cls(chunks, **kwargs)

    @classmethod
    def mock_ai_api(cls, chunks: list[str], **kwargs: Any) -> Stream:
        """mock-ai-api / vLLM-like shape: usage inside the finish chunk, always."""
        kwargs.setdefault("usage", "in_finish")
        return cls(chunks, **kwargs)

    @classmethod
    def akashchat(cls, chunks: list[str], **kwargs: Any) -> Stream:
        """akashchat-api-go shape: ``\\n\\n\\n`` event endings, zero usage, no ``[DONE]``."""
        kwargs.setdefault("role_chunk", False)
        kwargs.setdefault("usage", "zeros")
        kwargs.setdefault("done", False)
        kwargs.setdefault("extra_blank_line", True)
        return cls(chunks, **kwargs)


@dataclass
class Error:
    """A plain HTTP error response; ``body`` is sent as JSON (dict/list) or text (str)."""

    status: int
    body: dict[str, Any] | list[Any] | str
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def invalid_api_key(cls, key: str = "sk-wrong") -> Error:
        """OpenAI 401 for a wrong key (the key is masked like OpenAI does)."""
        message = (
            f"Incorrect API key provided: {_mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return cls(401, _error_body(message, "invalid_request_error", None, "invalid_api_key"))

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1) -> Error:
        """OpenAI-style 429 ``rate_limit_exceeded``, with ``Retry-After`` unless None."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return cls(429, json.loads(json.dumps(_OPENAI_429_BODY)), headers)

    @classmethod
    def server_error(cls) -> Error:
        """OpenAI-style 500 ``server_error``."""
        return cls(500, json.loads(json.dumps(_OPENAI_500_BODY)))

    @classmethod
    def plaintext_500(cls) -> Error:
        """Plain-text ``Internal Server Error`` (LiteLLM auth crash, mockllm validation)."""
        return cls(500, "Internal Server Error", {"Connection": "close"})

    @classmethod
    def service_unavailable(cls) -> Error:
        """mock-ai-api 503 ``api_error``."""
        body = {
            "error": {
                "message": "Mock scenario mock-503 triggered",
                "type": "api_error",
                "code": "mock_503",
            }
        }
        return cls(503, body)

    @classmethod
    def model_not_found(cls, model: str) -> Error:
        """OpenAI 404 ``model_not_found``."""
        message = f"The model `{model}` does not exist or you do not have access to it."
        return cls(404, _error_body(message, "invalid_request_error", None, "model_not_found"))

    @classmethod
    def context_length_exceeded(cls, limit: int, used: int) -> Error:
        """OpenAI 400 ``context_length_exceeded``."""
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {used} tokens. Please reduce the length of the messages."
        )
        return cls(
            400,
            _error_body(message, "invalid_request_error", "messages", "context_length_exceeded"),
        )

    @classmethod
    def litellm_rate_limited(cls, model_group: str = "rate-limited") -> Error:
        """LiteLLM 429 ``throttling_error`` (no Retry-After at all)."""
        message = (
            "litellm.RateLimitError: this is a mock rate limit error\n\nLiteLLM: model group "
            f"'{model_group}' failed with the error above. No fallback was attempted."
        )
        return cls(429, _error_body(message, "throttling_error", None, "429"))

    @classmethod
    def litellm_rpm_limited(cls, model_group: str = "rpm-limited") -> Error:
        """LiteLLM 429 RPM limit, retry hint only as ``llm_provider-retry-after: 60``."""
        message = (
            "litellm.RateLimitError: Model rate limit exceeded. RPM limit=1, current usage=2"
            f"\n\nLiteLLM: model group '{model_group}' failed with the error above. "
            "No fallback was attempted."
        )
        return cls(
            429,
            _error_body(message, "throttling_error", None, "429"),
            {"llm_provider-retry-after": "60"},
        )

    @classmethod
    def litellm_server_error(cls, model_group: str = "server-error") -> Error:
        """LiteLLM 500 ``internal_server_error``."""
        message = (
            "litellm.InternalServerError: this is a mock internal server error\n\nLiteLLM: "
            f"model group '{model_group}' failed with the error above. No fallback was attempted."
        )
        return cls(500, _error_body(message, "internal_server_error", None, "500"))

    @classmethod
    def litellm_unknown_model(cls, model: str) -> Error:
        """LiteLLM 400 for an unknown model (not 404), with ``provider_specific_fields``."""
        message = (
            f"/chat/completions: Invalid model name passed in model={model}. "
            "Call `/v1/models` to view available models for your key."
        )
        body = _error_body(message, "invalid_request_error", None, "400")
        body["error"]["provider_specific_fields"] = {"error": message}
        return cls(400, body)

    @classmethod
    def litellm_empty_bearer(cls) -> Error:
        """LiteLLM 401 for ``Authorization: Bearer `` (param/code are strings)."""
        message = (
            "Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix."
        )
        return cls(401, _error_body(message, "auth_error", "None", "401"))

    @classmethod
    def litellm_no_db(cls) -> Error:
        """LiteLLM without a database answering a wrong ``sk-`` key: 400 ``No connected db.``."""
        return cls(400, _error_body("No connected db.", "no_db_connection", None, "400"))

    @classmethod
    def litellm_529(cls) -> Error:
        """LiteLLM 529 (error on the first stream chunk) with ``type: null``."""
        message = (
            "litellm.APIError: APIError: OpenAIException - litellm.MockException: "
            "This is a mock error raised mid-stream"
        )
        return cls(529, _error_body(message, None, None, "529"))

    @classmethod
    def akashchat(cls, msg: str = "Error Model.", status: int = 500) -> Error:
        """akashchat-api-go envelope ``{"code": status, "data": {"msg": msg}}``."""
        return cls(status, {"code": status, "data": {"msg": msg}})


@dataclass
class StreamError:
    """HTTP 200 stream: some chunks, then ``data: {"error": error}`` and the end (no [DONE])."""

    chunks: list[str]
    error: dict[str, Any]
    delay: float = 0.0
    role_chunk: bool = True

    @classmethod
    def litellm_upstream_dropped(cls, chunks: list[str], delay: float = 0.0) -> StreamError:
        """LiteLLM's in-stream error after its upstream died mid-answer."""
        return cls(chunks, dict(_LITELLM_UPSTREAM_DROPPED_ERROR), delay)

    @classmethod
    def rate_limited(cls) -> StreamError:
        """dwmkerr mock-llm: a 200 stream holding only a 429 error event."""
        return cls([], dict(_OPENAI_429_BODY["error"]), role_chunk=False)


@dataclass
class Disconnect:
    """Send chunks, then drop the connection mid-body (``reset=True``: TCP RST via abort)."""

    chunks: list[str]
    delay: float = 0.0
    reset: bool = False


@dataclass
class Hang:
    """Send headers (and ``after_chunks``) then nothing until the client leaves or the stop."""

    after_chunks: list[str] = field(default_factory=list)


@dataclass
class Raw:
    """Exact bytes with the given status and content type."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def sse(cls, body: bytes | str) -> Raw:
        """A captured ``text/event-stream`` body replayed verbatim with status 200."""
        data = body.encode() if isinstance(body, str) else body
        return cls(200, data, "text/event-stream; charset=utf-8", {"Cache-Control": "no-cache"})

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Raw:
        """A JSON payload serialised compactly."""
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(status, data, "application/json")

    @classmethod
    def akashgen(
        cls,
        pic_url: str,
        *,
        prompt: str = "a cute anime girl with blue eyes",
        job_id: str = "727ef62f-76c9-45b8-9637-dc461590fe49",
    ) -> Raw:
        """akashchat AkashGen image answer ``{"code":200,"data":{...,"pic": url}}``."""
        data = {"model": "AkashGen", "jobId": job_id, "prompt": prompt, "pic": pic_url}
        return cls.json({"code": 200, "data": data})


@dataclass
class ImageResult:
    """Images API success: ``b64`` raw bytes (sent base64) and/or ``url``; neither = default."""

    b64: bytes | None = None
    url: str | None = None
    delay: float = 0.0


@dataclass
class Transcription:
    """A transcription answer; ``text``/``seconds`` None: derived from the upload (see
    :meth:`FakeLLM.enqueue_transcription`).

    ``usage``: ``duration`` is whisper-1's ``{"type": "duration", "seconds": N}``, ``tokens``
    gpt-4o-transcribe's token usage (about ten audio tokens a second), ``none`` no usage.
    """

    text: str | None = None
    seconds: float | None = None
    usage: Literal["duration", "tokens", "none"] = "duration"
    delay: float = 0.0


@dataclass(frozen=True)
class TranscriptionRequest:
    """One ``POST /v1/audio/transcriptions`` as the served route parsed it; None: not sent."""

    model: str | None
    filename: str | None  # of the ``file`` part
    content_type: str | None  # of the ``file`` part, as sent
    data: bytes | None  # the ``file`` part's bytes
    response_format: str | None
    fields: dict[str, str] = field(default_factory=dict)  # every text field, as sent


Reply: TypeAlias = Stream | Error | StreamError | Disconnect | Hang | Raw
ImageReply: TypeAlias = ImageResult | Error | Disconnect | Hang | Raw
#: A ``str`` is the transcript's text.
TranscriptionReply: TypeAlias = str | Transcription | Error | Disconnect | Hang | Raw
_REPLY_TYPES = (Stream, Error, StreamError, Disconnect, Hang, Raw)
_IMAGE_REPLY_TYPES = (ImageResult, Error, Disconnect, Hang, Raw)
_TRANSCRIPTION_REPLY_TYPES = (str, Transcription, Error, Disconnect, Hang, Raw)


def default_reply(body: Mapping[str, Any]) -> Reply:
    """The default echo: ``You said: <last user content>`` streamed two words per chunk."""
    return Stream(_split_words(f"You said: {_last_user_text(body)}"))


@dataclass
class Recorded:
    """One request received by the fake (header names are lower-cased)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float
    reply: Reply | ImageReply | TranscriptionReply | None = None
    first_chunk_at: float | None = None
    finished_at: float | None = None
    disconnected: bool = False
    cut_by_server: bool = False


@dataclass
class _ChatCtx:
    id: str
    created: int
    model: str
    include_usage: bool
    body: JSONDict


_REC_KEY = web.RequestKey("fake_llm_record", Recorded)
_Handler: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class FakeLLM:
    """A real HTTP server speaking the OpenAI chat/models/images/audio API, scripted by tests.

    ``transcriptions``: True serves ``POST /v1/audio/transcriptions``; False answers it 404
    like any unknown path (Ollama, chat-only proxies); 405 answers it ``Method Not Allowed``
    (a server whose route takes other methods only). An attribute, read per request.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "sk-test",
        models: Sequence[Mapping[str, Any] | str] | None = None,
        models_shape: ModelsShape = "openai",
        clock: Callable[[], float] = time.monotonic,
        strict_models: bool = False,
        max_context: int | None = None,
        transcriptions: bool | Literal[405] = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.models_shape: ModelsShape = models_shape
        self.clock = clock
        self.strict_models = strict_models
        self.max_context = max_context
        self.transcriptions: bool | Literal[405] = transcriptions
        self.host = host
        self._port = port
        self._models: list[JSONDict] = []
        self.models = DEFAULT_MODELS if models is None else models
        self.requests: list[Recorded] = []
        self.first_chunk_at: list[float] = []
        self._queue: deque[Reply] = deque()
        self._image_queue: deque[ImageReply] = deque()
        self._transcription_queue: deque[TranscriptionReply] = deque()
        self._transcriptions: list[TranscriptionRequest] = []
        self._default: Callable[[dict[str, Any]], Reply] = default_reply
        self._files: dict[str, tuple[bytes, str]] = {}
        self._redirects: dict[str, tuple[str, int]] = {}
        self._image_counter = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._arrived = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind to a free port on 127.0.0.1 and start serving."""
        if self._runner is not None:
            return
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._arrived = asyncio.Event()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024**2)
        app.router.add_post(CHAT_PATH, self._handle_chat)
        app.router.add_get(MODELS_PATH, self._handle_models)
        app.router.add_get(MODELS_PATH + "/{model:.+}", self._handle_model)
        app.router.add_post(IMAGES_PATH, self._handle_images)
        app.router.add_post(TRANSCRIPTIONS_PATH, self._handle_transcriptions)
        app.router.add_get("/files/{name}", self._handle_file)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving; open streams (Hang, slow streams) are cut, not waited for."""
        runner = self._runner
        if runner is None:
            return
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._runner is None:
            raise RuntimeError("FakeLLM is not started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` without the ``/v1`` suffix."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the value for ``LLM_BASE_URL``."""
        return f"{self.root_url}/v1"

    # -- scripting ------------------------------------------------------------------------------

    @property
    def models(self) -> list[JSONDict]:
        """The configured model entries (strings given to the setter become ``{"id": s}``)."""
        return self._models

    @models.setter
    def models(self, value: Sequence[Mapping[str, Any] | str]) -> None:
        self._models = [{"id": m} if isinstance(m, str) else dict(m) for m in value]

    def enqueue(self, *replies: Reply) -> None:
        """Queue replies for the next chat requests, one consumed per (valid) request."""
        for reply in replies:
            if not isinstance(reply, _REPLY_TYPES):
                raise TypeError(f"not a chat reply: {reply!r}")
        self._queue.extend(replies)

    def set_default(self, reply_factory: Callable[[dict[str, Any]], Reply]) -> None:
        """Set the factory (request body -> Reply) used when the queue is empty."""
        self._default = reply_factory

    def enqueue_image(self, *replies: ImageReply) -> None:
        """Queue replies for the next image generation requests."""
        for reply in replies:
            if not isinstance(reply, _IMAGE_REPLY_TYPES):
                raise TypeError(f"not an image reply: {reply!r}")
        self._image_queue.extend(replies)

    def enqueue_transcription(self, *replies: TranscriptionReply) -> None:
        """Queue replies for the next valid transcription requests: a ``str`` is the text.

        With the queue empty the answer is ``transcript of <filename> (<n> bytes)``, lasting
        ceil(n / AUDIO_BYTES_PER_SECOND) seconds (at least one), with whisper-1's usage.
        """
        for reply in replies:
            if not isinstance(reply, _TRANSCRIPTION_REPLY_TYPES):
                raise TypeError(f"not a transcription reply: {reply!r}")
        self._transcription_queue.extend(replies)

    @property
    def pending(self) -> int:
        """Chat replies still queued."""
        return len(self._queue)

    def add_file(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        """Serve ``data`` at ``GET /files/{name}``; returns its URL (needs a started server)."""
        self._files[name] = (data, content_type)
        return self.file_url(name)

    def add_redirect(self, name: str, location: str, status: int = 302) -> str:
        """Answer ``GET /files/{name}`` with a redirect to ``location``; returns its URL."""
        self._redirects[name] = (location, status)
        return self.file_url(name)

    def file_url(self, name: str) -> str:
        """Absolute URL of ``/files/{name}``."""
        return f"{self.root_url}/files/{name}"

    def reset(self) -> None:
        """Forget recorded requests and queued replies; restore the default reply."""
        self.requests.clear()
        self.first_chunk_at.clear()
        self._queue.clear()
        self._image_queue.clear()
        self._transcription_queue.clear()
        self._transcriptions.clear()
        self._default = default_reply

    # -- inspection -----------------------------------------------------------------------------

    def requests_to(self, path: str, method: str | None = None) -> list[Recorded]:
        """Recorded requests for an exact path (e.g. ``/v1/chat/completions``)."""
        return [
            r for r in self.requests if r.path == path and (method is None or r.method == method)
        ]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of all ``POST /v1/chat/completions`` requests, in order."""
        return [r.json for r in self.requests_to(CHAT_PATH, "POST")]

    @property
    def image_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of all ``POST /v1/images/generations`` requests, in order."""
        return [r.json for r in self.requests_to(IMAGES_PATH, "POST")]

    def transcription_requests(self) -> list[TranscriptionRequest]:
        """Transcription requests the served route parsed, rejected ones included, in order."""
        return list(self._transcriptions)

    @property
    def models_requests(self) -> int:
        """How many ``GET /v1/models`` requests were received."""
        return len(self.requests_to(MODELS_PATH, "GET"))

    async def wait_for_requests(
        self, count: int, *, path: str = CHAT_PATH, within: float = 5.0
    ) -> list[Recorded]:
        """Wait (at most ``within`` seconds) until ``count`` requests to ``path`` arrived."""
        async with asyncio.timeout(within):
            while len(found := self.requests_to(path)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return found

    # -- HTTP plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        # A request arrives when it starts to come in, not once its body is read and parsed.
        received_at = self.clock()
        raw = await request.read()
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=raw,
            json=parsed,
            received_at=received_at,
        )
        self.requests.append(rec)
        self._arrived.set()
        request[_REC_KEY] = rec
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            denied = self._check_auth(request)
            if denied is not None:
                return denied
            return await handler(request)
        except asyncio.CancelledError:
            if not self._stopping and not rec.cut_by_server:
                rec.disconnected = True
            raise
        except ConnectionError:
            # The client went away while we were writing: end quietly like a disconnect.
            rec.disconnected = True
            raise asyncio.CancelledError() from None
        finally:
            rec.finished_at = self.clock()
            if task is not None:
                self._tasks.discard(task)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or not request.path.startswith("/v1/"):
            return None
        header = request.headers.get("Authorization")
        if header == f"Bearer {self.api_key}":
            return None
        if not header:
            body = _error_body(_OPENAI_NO_KEY_MESSAGE, "invalid_request_error", None, None)
            return _json_response(401, body)
        given = header.removeprefix("Bearer ").strip()
        return _error_response(Error.invalid_api_key(given))

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        body = {"error": {"message": "Resource not found", "type": "invalid_request_error"}}
        return _json_response(404, body)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        redirect = self._redirects.get(request.match_info["name"])
        if redirect is not None:
            location, status = redirect
            return web.Response(status=status, headers={"Location": location})
        item = self._files.get(request.match_info["name"])
        if item is None:
            return _json_response(404, {"detail": "Not Found"})
        data, content_type = item
        return web.Response(body=data, headers={"Content-Type": content_type})

    # -- /v1/models -----------------------------------------------------------------------------

    def _openai_entries(self) -> list[JSONDict]:
        entries = []
        for model in self._models:
            if model.get("available") is False:
                continue
            entry: JSONDict = {
                "id": model["id"],
                "object": "model",
                "created": model.get("created", 1686935002),
                "owned_by": model.get("owned_by", "openai"),
            }
            entry.update({k: v for k, v in model.items() if k not in _BARE_ONLY_KEYS})
            entries.append(entry)
        return entries

    def _bare_entries(self) -> list[JSONDict]:
        entries = []
        for model in self._models:
            entry: JSONDict = {
                "id": model["id"],
                "name": model["id"],
                "description": "",
                "temperature": 0.6,
                "top_p": 0.95,
                "tokenLimit": 128000,
                "parameters": "",
                "architecture": "",
                "hf_repo": "",
                "aboutContent": "",
                "infoContent": "",
                "thumbnailId": "",
                "deployUrl": "",
                "available": True,
            }
            entry.update({k: v for k, v in model.items() if k not in _OPENAI_ONLY_KEYS})
            entries.append(entry)
        return entries

    async def _handle_models(self, request: web.Request) -> web.StreamResponse:
        if self.models_shape == "error":
            return _json_response(500, _OPENAI_500_BODY)
        if self.models_shape == "bare":
            return _json_response(200, self._bare_entries())
        return _json_response(200, {"object": "list", "data": self._openai_entries()})

    async def _handle_model(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]
        for entry in self._openai_entries():
            if entry["id"] == name:
                return _json_response(200, entry)
        return _error_response(Error.model_not_found(name))

    # -- /v1/chat/completions -------------------------------------------------------------------

    def _validate_chat(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict):
            bad = _error_body(_OPENAI_BAD_JSON_MESSAGE, "invalid_request_error", None, None)
            return _json_response(400, bad)
        if "model" not in body:
            message = "you must provide a model parameter"
            return _json_response(400, _error_body(message, "invalid_request_error", None, None))
        messages = body.get("messages")
        if messages is None:
            message = "Missing required parameter: 'messages'."
            return _json_response(
                400,
                _error_body(
                    message, "invalid_request_error", "messages", "missing_required_parameter"
                ),
            )
        if not isinstance(messages, list) or not messages:
            message = (
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead."
            )
            return _json_response(
                400, _error_body(message, "invalid_request_error", "messages", "empty_array")
            )
        for index, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                problem = _content_parts_problem(content, f"messages.[{index}].content")
                if problem is not None:
                    text, param = problem
                    return _json_response(
                        400, _error_body(text, "invalid_request_error", param, None)
                    )
        model = str(body.get("model"))
        if self.strict_models and model not in {m["id"] for m in self._models}:
            return _error_response(Error.model_not_found(model))
        if self.max_context is not None:
            used = estimate_tokens(messages)
            if used > self.max_context:
                return _error_response(Error.context_length_exceeded(self.max_context, used))
        return None

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        rec = request[_REC_KEY]
        invalid = self._validate_chat(rec.json)
        if invalid is not None:
            return invalid
        body: JSONDict = rec.json
        reply = self._queue.popleft() if self._queue else self._default(body)
        rec.reply = reply
        options = body.get("stream_options")
        ctx = _ChatCtx(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=str(body.get("model")),
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            body=body,
        )
        streaming = body.get("stream") is True
        if isinstance(reply, Error):
            await self._sleep(reply.delay)
            return _error_response(reply)
        if isinstance(reply, Raw):
            await self._sleep(reply.delay)
            return _raw_response(reply)
        if isinstance(reply, Hang):
            return await self._hang(request, rec, ctx, reply, streaming)
        if streaming:
            if isinstance(reply, Stream):
                return await self._stream(request, rec, ctx, reply)
            if isinstance(reply, StreamError):
                return await self._stream_error(request, rec, ctx, reply)
            return await self._stream_disconnect(request, rec, ctx, reply)
        if isinstance(reply, Stream):
            pieces = len(reply.reasoning) + len(reply.chunks)
            await self._sleep(reply.first_delay + reply.delay * max(pieces - 1, 0))
            return _json_response(200, self._completion(ctx, reply))
        if isinstance(reply, StreamError):
            await self._sleep(reply.delay * len(reply.chunks))
            return _json_response(
                _status_from_code(reply.error.get("code")), {"error": reply.error}
            )
        await self._sleep(reply.delay * len(reply.chunks))
        payload = self._completion(ctx, Stream(reply.chunks, usage="none"))
        return await self._cut_json(request, rec, payload)

    # -- chat building blocks -------------------------------------------------------------------

    def _usage(self, ctx: _ChatCtx, reply: Stream) -> JSONDict:
        if reply.usage == "zeros":
            return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = count_words(ctx.body.get("messages"))
        completion = reply.completion_tokens
        if completion is None:
            completion = len(reply.chunks)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(self, ctx: _ChatCtx, reply: Stream) -> JSONDict:
        message: JSONDict = {"role": "assistant", "content": "".join(reply.chunks)}
        if reply.reasoning:
            message["reasoning_content"] = "".join(reply.reasoning)
        payload: JSONDict = {
            "id": ctx.id,
            "object": "chat.completion",
            "created": ctx.created,
            "model": ctx.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
        }
        if reply.usage != "none":
            payload["usage"] = self._usage(ctx, reply)
        return payload

    @staticmethod
    def _chunk(
        ctx: _ChatCtx,
        delta: JSONDict,
        finish_reason: str | None = None,
        *,
        usage_null: bool = False,
    ) -> JSONDict:
        chunk: JSONDict = {
            "id": ctx.id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        if usage_null:
            chunk["usage"] = None
        return chunk

    async def _open_sse(
        self, request: web.Request, headers: Mapping[str, str] | None = None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                **(headers or {}),
            },
        )
        await resp.prepare(request)
        return resp

    @staticmethod
    async def _event(
        resp: web.StreamResponse, data: JSONDict | str, extra_blank_line: bool = False
    ) -> None:
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        await resp.write(("data: " + text + ("\n\n\n" if extra_blank_line else "\n\n")).encode())

    async def _sleep(
        self,
        seconds: float,
        resp: web.StreamResponse | None = None,
        keepalive: float | None = None,
    ) -> None:
        if seconds <= 0:
            return
        if resp is None or not keepalive:
            await asyncio.sleep(seconds)
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            if left < keepalive:
                await asyncio.sleep(left)
                return
            await asyncio.sleep(keepalive)
            await resp.write(b": keep-alive\n\n")

    def _mark_first_chunk(self, rec: Recorded) -> None:
        if rec.first_chunk_at is None:
            rec.first_chunk_at = self.clock()
            self.first_chunk_at.append(rec.first_chunk_at)

    async def _send_content(
        self,
        resp: web.StreamResponse,
        rec: Recorded,
        ctx: _ChatCtx,
        chunks: list[str],
        delay: float,
        *,
        role_chunk: bool,
    ) -> None:
        """Role chunk (optional) then content chunks; used by StreamError/Disconnect/Hang."""
        if role_chunk:
            await self._event(resp, self._chunk(ctx, {"role": "assistant", "content": ""}))
        for i, text in enumerate(chunks):
            if i:
                await self._sleep(delay)
            delta: JSONDict = {"content": text}
            if not role_chunk and i == 0:
                delta = {"role": "assistant", **delta}
            await self._event(resp, self._chunk(ctx, delta))
            self._mark_first_chunk(rec)

    async def _stream(
        self, request: web.Request, rec: Recorded, ctx: _ChatCtx, reply: Stream
    ) -> web.StreamResponse:
        resp = await self._open_sse(request, reply.headers)
        blank = reply.extra_blank_line
        usage_null = reply.usage == "separate" and ctx.include_usage
        usage = self._usage(ctx, reply)
        await self._sleep(reply.first_delay, resp, reply.keepalive)
        role_pending = True
        if reply.role_chunk:
            role = self._chunk(ctx, {"role": "assistant", "content": ""}, usage_null=usage_null)
            await self._event(resp, role, blank)
            role_pending = False
        pieces = [("reasoning_content", r) for r in reply.reasoning]
        pieces += [("content", c) for c in reply.chunks]
        finish_inline = reply.usage == "in_last_content" and bool(reply.chunks)
        for i, (key, text) in enumerate(pieces):
            if i:
                await self._sleep(reply.delay, resp, reply.keepalive)
            delta: JSONDict = {key: text}
            if role_pending:
                delta = {"role": "assistant", **delta}
                role_pending = False
            last = finish_inline and i == len(pieces) - 1
            chunk = self._chunk(
                ctx, delta, reply.finish_reason if last else None, usage_null=usage_null
            )
            if last:
                chunk["usage"] = usage
            await self._event(resp, chunk, blank)
            if key == "content":
                self._mark_first_chunk(rec)
        if not finish_inline:
            finish = self._chunk(ctx, {}, reply.finish_reason, usage_null=usage_null)
            if reply.usage in ("in_finish", "in_last_content", "zeros"):
                finish["usage"] = usage
            await self._event(resp, finish, blank)
        if usage_null:
            final: JSONDict = {
                "id": ctx.id,
                "object": "chat.completion.chunk",
                "created": ctx.created,
                "model": ctx.model,
                "choices": [],
                "usage": usage,
            }
            await self._event(resp, final, blank)
        if reply.done:
            await self._event(resp, "[DONE]", blank)
        await resp.write_eof()
        return resp

    async def _stream_error(
        self, request: web.Request, rec: Recorded, ctx: _ChatCtx, reply: StreamError
    ) -> web.StreamResponse:
        resp = await self._open_sse(request)
        await self._send_content(
            resp, rec, ctx, reply.chunks, reply.delay, role_chunk=reply.role_chunk
        )
        if reply.chunks:
            await self._sleep(reply.delay)
        # LiteLLM writes this event with default json.dumps separators (spaces), unlike chunks.
        await self._event(resp, json.dumps({"error": reply.error}))
        await resp.write_eof()
        return resp

    async def _cut(self, request: web.Request, rec: Recorded, reset: bool = False) -> None:
        """Close the connection without finishing the body, after flushing what was written."""
        transport = request.transport
        if transport is None:
            return
        for _ in range(200):
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        rec.cut_by_server = True
        if reset:
            transport.abort()
        else:
            transport.close()

    async def _stream_disconnect(
        self, request: web.Request, rec: Recorded, ctx: _ChatCtx, reply: Disconnect
    ) -> web.StreamResponse:
        resp = await self._open_sse(request)
        await self._send_content(resp, rec, ctx, reply.chunks, reply.delay, role_chunk=True)
        await self._cut(request, rec, reply.reset)
        return resp

    async def _cut_json(
        self, request: web.Request, rec: Recorded, payload: Any, reset: bool = False
    ) -> web.StreamResponse:
        """Announce a full JSON body by Content-Length, send half of it, then cut."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        await self._cut(request, rec, reset)
        return resp

    async def _hang(
        self,
        request: web.Request,
        rec: Recorded,
        ctx: _ChatCtx | None,
        reply: Hang,
        streaming: bool,
    ) -> web.StreamResponse:
        """Streaming: headers + chunks, then silence. Non-streaming: silence before headers."""
        resp: web.StreamResponse | None = None
        if streaming and ctx is not None:
            resp = await self._open_sse(request)
            await self._send_content(resp, rec, ctx, reply.after_chunks, 0.0, role_chunk=False)
        assert self._stop_event is not None
        await self._stop_event.wait()
        # Server stopping: drop the connection so the client sees an error, not a clean end.
        await self._cut(request, rec)
        raise asyncio.CancelledError()

    # -- /v1/images/generations -----------------------------------------------------------------

    async def _handle_images(self, request: web.Request) -> web.StreamResponse:
        rec = request[_REC_KEY]
        body = rec.json
        if not isinstance(body, dict):
            bad = _error_body(_OPENAI_BAD_JSON_MESSAGE, "invalid_request_error", None, None)
            return _json_response(400, bad)
        if not body.get("prompt"):
            message = "Missing required parameter: 'prompt'."
            return _json_response(
                400,
                _error_body(
                    message, "invalid_request_error", "prompt", "missing_required_parameter"
                ),
            )
        reply = self._image_queue.popleft() if self._image_queue else ImageResult()
        rec.reply = reply
        if isinstance(reply, Error):
            await self._sleep(reply.delay)
            return _error_response(reply)
        if isinstance(reply, Raw):
            await self._sleep(reply.delay)
            return _raw_response(reply)
        if isinstance(reply, Hang):
            return await self._hang(request, rec, None, reply, streaming=False)
        created = int(time.time())
        if isinstance(reply, Disconnect):
            await self._sleep(reply.delay)
            payload = {"created": created, "data": [{"b64_json": _b64(make_png())}]}
            return await self._cut_json(request, rec, payload, reply.reset)
        await self._sleep(reply.delay)
        n = body.get("n")
        count = n if isinstance(n, int) and n > 0 else 1
        items: list[JSONDict] = []
        for _ in range(count):
            item: JSONDict = {}
            if reply.b64 is not None:
                item["b64_json"] = _b64(reply.b64)
            if reply.url is not None:
                item["url"] = reply.url
            if not item:  # nothing scripted: follow the request's response_format
                if body.get("response_format") == "url":
                    item["url"] = self._store_generated_image()
                else:
                    item["b64_json"] = _b64(make_png())
            items.append(item)
        return _json_response(200, {"created": created, "data": items})

    def _store_generated_image(self) -> str:
        self._image_counter += 1
        return self.add_file(f"img-{self._image_counter}.png", make_png(), "image/png")

    # -- /v1/audio/transcriptions ---------------------------------------------------------------

    async def _handle_transcriptions(self, request: web.Request) -> web.StreamResponse:
        if self.transcriptions == 405:
            return web.json_response(
                {"detail": "Method Not Allowed"}, status=405, headers={"Allow": "GET"}
            )
        if not self.transcriptions:
            return await self._handle_unknown(request)
        rec = request[_REC_KEY]
        parts = _form_parts(request.headers.get("Content-Type", ""), rec.body)
        if parts is None:
            message = "Could not parse multipart form"
            return _json_response(400, _error_body(message, "invalid_request_error", None, None))
        upload = _transcription_request(parts)
        self._transcriptions.append(upload)
        invalid = _validate_transcription(upload)
        if invalid is not None:
            return invalid
        reply = self._transcription_queue.popleft() if self._transcription_queue else None
        rec.reply = reply
        if isinstance(reply, Error):
            await self._sleep(reply.delay)
            return _error_response(reply)
        if isinstance(reply, Raw):
            await self._sleep(reply.delay)
            return _raw_response(reply)
        if isinstance(reply, Hang):
            return await self._hang(request, rec, None, reply, streaming=False)
        if isinstance(reply, Disconnect):
            await self._sleep(reply.delay)
            payload = _transcription_payload(upload, Transcription())
            return await self._cut_json(request, rec, payload, reply.reset)
        answer = Transcription(text=reply) if isinstance(reply, str) else reply or Transcription()
        await self._sleep(answer.delay)
        payload = _transcription_payload(upload, answer)
        if upload.response_format == "text":
            return web.Response(text=payload["text"] + "\n", content_type="text/plain")
        return _json_response(200, payload)


@dataclass(frozen=True)
class _FormPart:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def _form_parts(content_type: str, body: bytes) -> list[_FormPart] | None:
    """The parts of a multipart/form-data body (RFC 7578); None if it is not one.

    The middleware has read the body already, so aiohttp's own reader cannot parse it again.
    """
    header = email.message.EmailMessage()
    header["Content-Type"] = content_type
    boundary = header.get_boundary()
    if header.get_content_type() != "multipart/form-data" or not boundary:
        return None
    # Every delimiter but a first one at the very start follows a CRLF (RFC 2046 5.1.1).
    sections = (b"\r\n" + body).split(b"\r\n--" + boundary.encode("latin-1"))
    parts: list[_FormPart] = []
    parser = email.parser.BytesHeaderParser(policy=email.policy.HTTP)
    for section in sections[1:]:
        if section.startswith(b"--"):  # the close delimiter
            return parts
        head, found, data = section.partition(b"\r\n\r\n")
        if not found:
            return None
        # The head starts with the rest of the delimiter line (padding, then CRLF).
        headers = parser.parsebytes(head.partition(b"\r\n")[2] + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        kind = headers.get("Content-Type")
        parts.append(
            _FormPart(
                name=name if isinstance(name, str) else None,
                filename=headers.get_filename(),
                content_type=None if kind is None else str(kind),
                data=data,
            )
        )
    return None  # no close delimiter: the body was cut


def _transcription_request(parts: list[_FormPart]) -> TranscriptionRequest:
    files = [p for p in parts if p.name == "file" and p.filename is not None]
    fields = {
        p.name: p.data.decode("utf-8", "replace")
        for p in parts
        if p.name is not None and p.filename is None
    }
    upload = files[0] if files else None
    return TranscriptionRequest(
        model=fields.get("model"),
        filename=None if upload is None else upload.filename,
        content_type=None if upload is None else upload.content_type,
        data=None if upload is None else upload.data,
        response_format=fields.get("response_format"),
        fields=fields,
    )


def _validate_transcription(upload: TranscriptionRequest) -> web.Response | None:
    if not upload.filename:
        if "file" in upload.fields:
            message = "Invalid file format: 'file' must be a file upload with a filename."
        else:
            message = "Missing required parameter: 'file'."
        return _json_response(400, _error_body(message, "invalid_request_error", "file", None))
    if not upload.model:
        message = "you must provide a model parameter"
        return _json_response(400, _error_body(message, "invalid_request_error", "model", None))
    if upload.response_format not in (None, "json", "verbose_json", "text"):
        message = (
            f"Invalid value: '{upload.response_format}'. Supported values are: 'json', "
            "'text' and 'verbose_json'."
        )
        return _json_response(
            400, _error_body(message, "invalid_request_error", "response_format", None)
        )
    return None


def _transcription_payload(upload: TranscriptionRequest, answer: Transcription) -> JSONDict:
    size = len(upload.data or b"")
    text = answer.text
    if text is None:
        text = f"transcript of {upload.filename} ({size} bytes)"
    seconds = answer.seconds
    if seconds is None:
        seconds = max(1, math.ceil(size / AUDIO_BYTES_PER_SECOND))
    payload: JSONDict = {"text": text}
    if upload.response_format == "verbose_json":
        payload = {
            "task": "transcribe",
            "language": "english",
            "duration": seconds,
            "text": text,
            "segments": [],
        }
    if answer.usage == "duration":
        payload["usage"] = {"type": "duration", "seconds": math.ceil(seconds)}
    elif answer.usage == "tokens":
        audio = math.ceil(seconds * 10)
        words = len(text.split())
        payload["usage"] = {
            "type": "tokens",
            "input_tokens": audio,
            "input_token_details": {"text_tokens": 0, "audio_tokens": audio},
            "output_tokens": words,
            "total_tokens": audio + words,
        }
    return payload


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _status_from_code(code: Any) -> int:
    with contextlib.suppress(TypeError, ValueError):
        status = int(code)
        if 400 <= status <= 599:
            return status
    return 500


def _json_response(status: int, payload: Any) -> web.Response:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return web.Response(status=status, body=data, headers={"Content-Type": "application/json"})


def _error_response(error: Error) -> web.Response:
    if isinstance(error.body, str):
        content_type = "text/plain; charset=utf-8"
        data = error.body.encode()
    else:
        content_type = "application/json"
        data = json.dumps(error.body, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": content_type, **error.headers}
    return web.Response(status=error.status, body=data, headers=headers)


def _raw_response(raw: Raw) -> web.Response:
    headers = {"Content-Type": raw.content_type, **raw.headers}
    return web.Response(status=raw.status, body=raw.body, headers=headers)
