"""The HTTP under the backend client: the shared client, its errors, bounded body reads.

Requests go through httpx's API, sent and received by aiohttp via the httpx-aiohttp package:
aiohttp's C parser and asyncio-native connections cost about half the CPU per streamed answer
that httpx's own httpcore/h11/anyio stack does (see bench/transport.py). The body is read as
the backend sends it; how often Telegram shows the answer is the reply writer's business.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import HttpxAiohttpClient

from bot.llm.dialects import short_message
from bot.llm.errors import (
    LLMError,
    LLMProtocolError,
    LLMResponseTooLargeError,
    LLMTimeoutError,
    LLMUnavailableError,
)

ERROR_BODY_LIMIT = 64 * 1024
MID_ANSWER = "connection to the backend was lost mid-answer"


def backend_http_client(
    *, max_connections: int, keepalive_seconds: float = 5.0, headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    """The one pooled client for every backend call; proxies come from HTTP(S)_PROXY/NO_PROXY."""
    return HttpxAiohttpClient(
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_seconds,
        ),
        headers=headers,
        trust_env=True,
    )


def as_httpx_error(exc: Exception) -> Exception:
    """`exc` as httpx's own transport would have raised it.

    httpx-aiohttp turns every aiohttp ClientConnectionError into ConnectTimeout, including a
    refused connection and a connection the server closed mid-answer; only a real connect
    timeout stays one.
    """
    cause = exc.__cause__
    if not isinstance(exc, httpx.ConnectTimeout) or not isinstance(cause, aiohttp.ClientError):
        return exc
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return exc
    mapped: httpx.TransportError
    if isinstance(cause, aiohttp.ClientProxyConnectionError):
        mapped = httpx.ProxyError(str(exc), request=exc.request)
    elif isinstance(cause, aiohttp.ClientConnectorError):
        mapped = httpx.ConnectError(str(exc), request=exc.request)
    else:
        mapped = httpx.ReadError(str(exc), request=exc.request)
    mapped.__cause__ = cause
    return mapped


def transport_error(
    exc: Exception,
    *,
    connect_seconds: float,
    read_phase: str,
    read_seconds: float,
    mid_answer: bool = False,
    secret: str | None = None,
) -> LLMError:
    """The LLMError an httpx error (or httpx.InvalidURL) stands for; pass it `as_httpx_error`'s.

    Raise it `from` that error: whether a call is retried may depend on the cause's type.
    """
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return LLMTimeoutError("connect", connect_seconds)
    if isinstance(exc, httpx.TimeoutException):
        return LLMTimeoutError(read_phase, read_seconds)
    if isinstance(exc, httpx.DecodingError):
        return LLMProtocolError("backend sent a body that could not be decoded")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return LLMUnavailableError(
            f"backend URL is not usable: {short_message(str(exc), secret=secret)}"
        )
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError):
        detail = short_message(str(exc), secret=secret)
        return LLMUnavailableError(f"could not connect to the backend: {detail}")
    if mid_answer:
        return LLMUnavailableError(MID_ANSWER)
    return LLMUnavailableError("connection to the backend was lost")


async def read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """The whole (decoded) body; LLMResponseTooLargeError if it is larger than `limit`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise LLMResponseTooLargeError(f"{what} is larger than {limit // (1024 * 1024)} MB")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_error_body(response: httpx.Response) -> bytes:
    """The first ERROR_BODY_LIMIT bytes of an error answer; empty if it cannot be read."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        # The status alone still tells what went wrong.
        return b""
    return b"".join(chunks)[:ERROR_BODY_LIMIT]
