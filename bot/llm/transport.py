"""The HTTP transport to the backend: httpx's own, with the reads of a streaming answer paced.

Receiving a streamed answer costs far more per network read than per event: each read goes
through httpx, httpcore, h11 and anyio and takes two turns of the event loop, about 0.25 ms of
CPU, against some 0.03 ms to parse an event. Backends send an event per token or so, while
Telegram shows an answer at most once a second. So once an answer has started, its connection
is read at most a few times a second (`PacedStream.pace`): the events that arrive meanwhile
wait in the socket buffer and come in together with the next read. Nothing else changes: the
request, the headers and the first token are read as soon as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class PacedStream(httpcore.AsyncNetworkStream):
    """One connection; while `pace` is above zero, its reads start at most that often."""

    def __init__(
        self,
        inner: httpcore.AsyncNetworkStream,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Wrap `inner`; `clock` (default: the loop's) and `sleep` are injectable for tests."""
        self._inner = inner
        self._clock = clock
        self._sleep = sleep
        self._last_read = float("-inf")
        self.pace = 0.0
        self.reads = 0

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # httpcore's interface passes timeouts as arguments, hence the noqa: ASYNC109 below.
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        """Read what has arrived, after waiting out the pace since the previous read."""
        if self.pace > 0:
            wait = self._last_read + self.pace - self._now()
            if wait > 0:
                await self._sleep(wait)
        self.reads += 1
        data = await self._inner.read(max_bytes, timeout)
        self._last_read = self._now()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Send bytes."""
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        """Close the connection."""
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        """Upgrade to TLS; the upgraded connection can be paced too."""
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return PacedStream(inner, clock=self._clock, sleep=self._sleep)

    def get_extra_info(self, info: str) -> Any:
        """What the underlying connection says (socket, addresses, TLS object, readability)."""
        return self._inner.get_extra_info(info)


class _PacedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections through another backend and wraps them in `PacedStream`."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return PacedStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return PacedStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def paced_transport(*, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport, its connections opened as `PacedStream`s (unpaced until asked)."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx takes no network backend, so it is swapped into the pool it built; if a future
    # httpx or httpcore moves it, the transport still works, only unpaced.
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.AsyncNetworkBackend):
        pool._network_backend = _PacedBackend(backend)  # type: ignore[union-attr]
    else:
        logger.warning("cannot pace backend reads with this httpx version; reading unpaced")
    return transport


def paced_stream(response: httpx.Response) -> PacedStream | None:
    """The connection a response is read from, if it can be paced (HTTP/1.1 via our transport)."""
    stream = response.extensions.get("network_stream")
    return stream if isinstance(stream, PacedStream) else None
