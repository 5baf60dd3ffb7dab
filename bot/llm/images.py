"""Image generation on OpenAI-compatible backends: the images API and chat-style image models.

Two dialects exist in the wild:

* the OpenAI images API, `POST /images/generations`, answering `data[0].b64_json` or
  `data[0].url` (OpenAI, LiteLLM, mock servers); whichever comes back is accepted;
* image models behind chat completions: akashchat's `AkashGen` answers a plain chat request
  with `{"code": 200, "data": {"pic": URL, ...}}` instead of a completion, and failures with
  `{"code": 500, "data": {"msg": ...}}`.

Linked images are downloaded here rather than handed to Telegram by URL: Telegram's servers may
not reach the backend's host, and OpenAI's links expire after an hour. The download goes through
`bot.llm.fetch`, which keeps a link chosen by the backend's answer off the bot's own network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from bot.llm.dialects import (
    ErrorInfo,
    classify,
    is_wrapped_error,
    loads,
    nonempty_str,
    parse_usage,
    payload_error,
    status_error,
)
from bot.llm.errors import (
    ImageLinkRefusedError,
    LLMContentPolicyError,
    LLMError,
    LLMHTTPError,
    LLMProtocolError,
)
from bot.llm.fetch import (
    Connect,
    GuardedDownloader,
    Resolve,
    system_resolve,
)
from bot.llm.policy import Retrying, RetryPolicy, Within, image_retryable
from bot.llm.transport import as_httpx_error, read_capped, read_error_body, transport_error
from bot.llm.types import Usage

logger = logging.getLogger(__name__)

ImageApi = Literal["images", "chat"]
ImageApiSetting = Literal["auto", "images", "chat"]

# Telegram takes documents up to 50 MB; anything larger could not be delivered anyway.
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# A base64 body is a third larger than the image it carries, plus a little JSON.
_MAX_BODY_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024

_POLICY_RE = re.compile(
    r"content[_ ]policy|safety system|moderation_blocked|content[_ ]filter"
    r"|responsibleaipolicyviolation",
    re.IGNORECASE,
)
_MARKDOWN_IMAGE_RE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?[^)]*\)")


def choose_image_api(setting: ImageApiSetting, model: str) -> ImageApi:
    """How to ask `model` for an image: IMAGE_API, or for `auto` a guess from the model id."""
    if setting != "auto":
        return setting
    # akashchat serves its image model only through chat completions; it has no images endpoint.
    return "chat" if "akashgen" in model.lower() else "images"


def wants_b64_format(model: str) -> bool:
    """True for models that must be asked for `b64_json` (DALL·E), False where it is omitted."""
    # DALL·E answers with a URL unless asked otherwise; gpt-image-1 always sends base64 and
    # LiteLLM rejects `response_format` for it, so the parameter is sent to DALL·E models only.
    return model.rsplit("/", 1)[-1].lower().startswith("dall-e")


@dataclass(frozen=True, slots=True)
class ImageFormat:
    """What the first bytes of an image say about it."""

    mime_type: str
    extension: str
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """An image the backend produced, downloaded, with its format."""

    data: bytes
    mime_type: str
    extension: str
    width: int | None = None
    height: int | None = None
    usage: Usage | None = None


def sniff_image(data: bytes) -> ImageFormat | None:
    """Recognise PNG, JPEG, WebP and GIF data and read their dimensions; None for anything else."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return ImageFormat("image/png", "png", width, height)
        if data.startswith(b"\xff\xd8\xff"):
            return ImageFormat("image/jpeg", "jpg", *_jpeg_size(data))
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return ImageFormat("image/webp", "webp", *_webp_size(data))
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return ImageFormat("image/gif", "gif", width, height)
    except struct.error:
        return None  # a truncated header: not a usable image
    return None


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None, None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        # Start-of-frame markers carry the dimensions (C4, C8 and CC are other tables).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None, None


def _webp_size(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None, None


class ImageClient:
    """Asks one OpenAI-compatible backend for images and downloads the result."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        timeout: float = 180.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_bytes: int = MAX_IMAGE_BYTES,
        allow_private: bool = False,
        resolve: Resolve = system_resolve,
        connect: Connect | None = None,
    ) -> None:
        """Use the caller's shared `http` client; `timeout` bounds a whole request, download
        included; `sleep`, `resolve` and `connect` are injectable so tests need neither wait
        nor DNS; `allow_private` lets links reach private addresses (a backend on the LAN)."""
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        policy = retry or RetryPolicy()
        self._retrying = Retrying(policy, image_retryable, sleep, "image call")
        # A refused link is refused again however often it is asked for.
        self._fetch_retrying = Retrying(policy, _download_retryable, sleep, "image download")
        self._downloader = GuardedDownloader(
            http=http,
            trusted_origin=self._base_url,
            trusted_headers=self._auth(),
            max_bytes=max_bytes,
            timeout=timeout,
            connect_timeout=connect_timeout,
            allow_private=allow_private,
            secret=self._api_key,
            resolve=resolve,
            connect=connect,
        )

    async def generate(
        self, *, model: str, prompt: str, size: str, api: ImageApi
    ) -> GeneratedImage:
        """Generate one image for `prompt`; raise an LLMError subclass when that fails.

        Only failures after which the backend surely did no work (no connection, 429) are
        retried: generating is slow and may be billed, so a 5xx is reported, not repeated.
        A failed download is retried, since the image exists already.
        """
        deadline = asyncio.get_running_loop().time() + self._timeout
        logger.debug("image request: model=%s api=%s size=%s", model, api, size)
        data: bytes | None
        url: str | None
        usage: Usage | None = None
        declared: str | None = None
        async with Within(deadline, "total", self._timeout):
            if api == "chat":
                chat = _chat_payload(model, prompt)
                answer = await self._retrying.call(
                    lambda: self._post("/chat/completions", chat), deadline
                )
                data, url = None, _picture_link(answer)
            else:
                request = _images_payload(model, prompt, size)
                answer = await self._retrying.call(
                    lambda: self._post("/images/generations", request), deadline
                )
                data, url = _images_item(answer)
                usage = parse_usage(answer.get("usage"))
            if data is None and url is not None:
                link = url
                data, declared = await self._fetch_retrying.call(
                    lambda: self._fetch(link), deadline
                )
            if data is None:
                raise LLMProtocolError("backend's image answer holds no image")
        return _image(data, declared, usage)

    # -- requests ----------------------------------------------------------------------------

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Accept": "application/json", **self._auth()}
        try:
            async with self._http.stream(
                "POST",
                f"{self._base_url}{path}",
                json=payload,
                headers=headers,
                timeout=self._httpx_timeout(),
            ) as response:
                if not response.is_success:
                    body = await read_error_body(response)
                    raise self._status_error(response, body)
                body = await read_capped(response, _MAX_BODY_BYTES, "backend's image answer")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            plain = as_httpx_error(exc)
            raise self._transport_error(plain) from plain
        try:
            document = loads(body)
        except ValueError as exc:
            raise LLMProtocolError("backend's image answer is not JSON") from exc
        if not isinstance(document, dict):
            raise LLMProtocolError("backend's image answer has an unexpected shape")
        if is_wrapped_error(document):
            raise self._payload_error(document)
        return document

    async def _fetch(self, url: str) -> tuple[bytes, str | None]:
        """Download a linked image; returns its bytes and declared content type."""
        if url.startswith("data:"):
            return _data_url(url), None
        # The key goes only to the backend's own origin (the downloader's trusted one): links
        # elsewhere are pre-signed, and a third-party host must never see it.
        download = await self._downloader.fetch(url)
        return download.data, download.content_type

    # -- errors ------------------------------------------------------------------------------

    def _status_error(self, response: httpx.Response, body: bytes) -> LLMHTTPError:
        return status_error(
            response.status_code,
            response.reason_phrase,
            response.headers,
            body,
            secret=self._api_key,
            classifier=_classify,
        )

    def _payload_error(self, payload: Any) -> LLMHTTPError:
        return payload_error(payload, secret=self._api_key, classifier=_classify)

    def _transport_error(self, exc: Exception) -> LLMError:
        return transport_error(
            exc,
            connect_seconds=self._connect_timeout,
            read_phase="total",
            read_seconds=self._timeout,
            secret=self._api_key,
        )

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _httpx_timeout(self) -> httpx.Timeout:
        # Generating sends nothing until the image is done, so reads may be silent for minutes.
        return httpx.Timeout(
            connect=self._connect_timeout,
            read=self._timeout,
            write=self._timeout,
            pool=self._connect_timeout,
        )


# -- payloads and answers ------------------------------------------------------------------------


def _images_payload(model: str, prompt: str, size: str) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "prompt": prompt, "n": 1, "size": size}
    if wants_b64_format(model):
        payload["response_format"] = "b64_json"
    return payload


def _chat_payload(model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": False}


def _images_item(payload: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """The first image of an images API answer: its bytes (b64_json) or its link."""
    items = payload.get("data")
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise LLMProtocolError("backend's image answer holds no image")
    item = items[0]
    if encoded := nonempty_str(item.get("b64_json")):
        return _b64(encoded), None
    if url := nonempty_str(item.get("url")):
        return None, url
    raise LLMProtocolError("backend's image answer holds neither b64_json nor url")


def _picture_link(payload: dict[str, Any]) -> str:
    """The image link in a chat-style answer, whichever of the known shapes it uses."""
    data = payload.get("data")
    if isinstance(data, dict) and (pic := nonempty_str(data.get("pic"))):
        return pic  # akashchat: {"code": 200, "data": {"pic": URL, ...}}
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            # OpenRouter-style image models: message.images[].image_url.url (often a data: URL)
            images = message.get("images")
            if isinstance(images, list):
                for image in images:
                    link = image.get("image_url") if isinstance(image, dict) else None
                    if isinstance(link, dict) and (url := nonempty_str(link.get("url"))):
                        return url
            content = message.get("content")
            if isinstance(content, str) and (found := _MARKDOWN_IMAGE_RE.search(content)):
                return found.group(1)
        raise LLMProtocolError("the model answered with text, not an image")
    raise LLMProtocolError("backend's answer holds no image")


def _image(data: bytes, declared: str | None, usage: Usage | None) -> GeneratedImage:
    found = sniff_image(data)
    if found is not None:
        return GeneratedImage(
            data, found.mime_type, found.extension, found.width, found.height, usage
        )
    mime = (declared or "").split(";")[0].strip().lower()
    if mime.startswith("image/"):
        # A format we cannot measure (AVIF, HEIC...): still an image, sent as a file.
        extension = re.sub(r"[^a-z0-9]", "", mime.removeprefix("image/").split("+")[0]) or "img"
        return GeneratedImage(data, mime, extension, usage=usage)
    raise LLMProtocolError("backend sent something that is not an image")


def _b64(encoded: str) -> bytes:
    if encoded.startswith("data:"):
        return _data_url(encoded)
    try:
        return base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise LLMProtocolError("backend's b64_json is not valid base64") from exc


def _data_url(url: str) -> bytes:
    header, _, encoded = url.partition(",")
    if not header.endswith(";base64"):
        raise LLMProtocolError("backend sent a data: link that is not base64")
    try:
        return base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise LLMProtocolError("backend's data: link is not valid base64") from exc


def _download_retryable(exc: LLMError) -> bool:
    return not isinstance(exc, ImageLinkRefusedError) and image_retryable(exc)


def _classify(
    status: int, message: str, info: ErrorInfo, retry_after: float | None
) -> LLMHTTPError:
    hints = f"{info.code or ''} {info.type or ''} {message}"
    if 400 <= status < 500 and status not in (401, 403, 404, 429) and _POLICY_RE.search(hints):
        # OpenAI: 400 `content_policy_violation` ("...rejected by our safety system").
        return LLMContentPolicyError(status, message, info.code)
    return classify(status, message, info, retry_after)
