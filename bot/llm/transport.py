"""The HTTP transport to the backend: httpx's client API, sent and received by aiohttp.

The bot talks to the backend through ``httpx.AsyncClient`` (timeouts, errors, streaming
responses), but the bytes travel through aiohttp, which aiogram already brings. Its C parser
and asyncio-native connections cost a fraction of httpcore's pure-Python h11 and anyio layers:
at 1,000 answers streaming at once the bot spent half its CPU inside those layers.

Backends send an event per token or so, while Telegram shows an answer at most once a second.
So once an answer has started its response is read at most a few times a second
(:attr:`PacedStream.pace`); the events that arrive meanwhile wait in the buffer and come in
together with the next read. The request, the headers and the first token are read at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import httpx
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

Clock = Callable[[], float]
_Proxy = tuple[URL | None, aiohttp.BasicAuth | None]
Sleep = Callable[[float], Awaitable[None]]


class PacedStream(httpx.AsyncByteStream):
    """The body of one response; while `pace` is above zero, reads start at most that often.

    Each read returns all that has arrived, so a paced answer is read in a few large pieces.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        read_timeout: float | None,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Read `response`; `clock` (default: the loop's) and `sleep` are injectable for tests."""
        self._response = response
        self._read_timeout = read_timeout
        self._clock = clock
        self._sleep = sleep
        self._last_read = float("-inf")
        self.pace = 0.0
        self.reads = 0

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives, paced while `pace` is set."""
        content = self._response.content
        while True:
            if self.pace > 0 and not content.is_eof():  # nothing more can come: no wait
                wait = self._last_read + self.pace - self._now()
                if wait > 0:
                    await self._unread_for(wait)
            self.reads += 1
            try:
                with _mapped_errors(reading=True):
                    data = content.read_nowait()  # all that has arrived, without a timer
                    if not data and not content.at_eof():
                        async with asyncio.timeout(self._read_timeout):
                            data = await content.readany()
            except httpx.ReadError:
                # aiohttp refuses every read once the connection broke, even of what had
                # arrived before: hand that on first, so a cut-off answer keeps all its text.
                buffered = getattr(content, "_buffer", None)  # a deque of bytes in aiohttp 3.x
                if buffered:
                    tail = b"".join(buffered)
                    buffered.clear()
                    yield tail
                raise
            self._last_read = self._now()
            if not data:
                return
            yield data

    @property
    def reading(self) -> bool:
        """False while a paced wait leaves the connection unread."""
        transport = self._transport()
        return transport is not None and transport.is_reading()

    def _transport(self) -> asyncio.Transport | None:
        connection = self._response.connection  # None once the body is read and released
        return connection.transport if connection is not None else None

    async def _unread_for(self, seconds: float) -> None:
        """Wait with the socket unread, so what arrives meanwhile comes in with one read.

        Left alone, the event loop would take each event from the socket as it arrives, a
        wake-up and a parse per token, only for the text to wait in aiohttp's buffer.
        """
        transport = self._transport()
        if transport is None or not transport.is_reading():
            await self._sleep(seconds)
            return
        transport.pause_reading()
        try:
            await self._sleep(seconds)
        finally:
            if not transport.is_closing():
                transport.resume_reading()

    async def aclose(self) -> None:
        """Give the connection back: kept alive if the body was read to the end, else closed."""
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests with one aiohttp session; bodies come as :class:`PacedStream`."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_seconds: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Up to `max_connections` at once; idle ones are kept for `keepalive_seconds`.

        The session is created on the first request, inside the running event loop. Proxies
        come from HTTP_PROXY/HTTPS_PROXY/NO_PROXY, as with httpx's own transport.
        """
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._ssl_context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[
            tuple[str, str | None], tuple[URL | None, aiohttp.BasicAuth | None]
        ] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_seconds,
                ssl=self._ssl_context,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes the body itself
            )
        return self._session

    def _proxy_for(self, url: URL) -> _Proxy:
        """The proxy HTTP_PROXY/HTTPS_PROXY/NO_PROXY give for `url`, looked up once per host.

        aiohttp's own `trust_env` looks it up (and ~/.netrc) on a thread for every request.
        """
        key = (url.scheme, url.host)
        if key not in self._proxies:
            try:
                self._proxies[key] = get_env_proxy_for_url(url)
            except LookupError:  # none set, or NO_PROXY covers the host
                self._proxies[key] = (None, None)
        return self._proxies[key]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; the response body is read later, through the returned stream."""
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        body = await request.aread()
        url = URL(str(request.url), encoded=True)
        proxy, proxy_auth = self._proxy_for(url)
        with _mapped_errors(reading=False):
            response = await self._get_session().request(
                request.method,
                url,
                proxy=proxy,
                proxy_auth=proxy_auth,
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeouts.get("pool"),
                    sock_connect=timeouts.get("connect"),
                    # The body's reads are bounded by PacedStream, once per read rather than
                    # once per network packet as aiohttp's sock_read would.
                    sock_read=None,
                ),
            )
        stream = PacedStream(response, read_timeout=timeouts.get("read"))
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1", "network_stream": stream}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        """Close every connection."""
        if self._session is not None:
            await self._session.close()


@contextlib.contextmanager
def _mapped_errors(*, reading: bool) -> Iterator[None]:
    """Turn aiohttp's errors into httpx's, which the backend client understands."""
    try:
        yield
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise _httpx_error(exc, reading=reading) from exc


def _httpx_error(exc: Exception, *, reading: bool) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message or "timed out waiting for the backend")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return httpx.ProxyError(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message) if not reading else httpx.ReadError(message)
    return httpx.ReadError(message) if reading else httpx.NetworkError(message)


def paced_stream(response: httpx.Response) -> PacedStream | None:
    """The body stream of a response sent through :class:`AiohttpTransport`, else None."""
    stream = response.extensions.get("network_stream")
    return stream if isinstance(stream, PacedStream) else None
