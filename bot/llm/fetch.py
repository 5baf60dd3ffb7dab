"""Downloads of links a backend hands out, kept away from the bot's own network.

The backend's answer chooses the image link, so whoever controls that answer could point the
bot at 127.0.0.1, a cloud metadata address or a host on the LAN (server-side request forgery)
and have the reply delivered to a chat. Every hop of a download is therefore checked before a
byte is sent:

* http and https only, and no `user:pass@` in the link;
* the host is resolved once, off the event loop, and every address it resolves to must be
  public (IPv4 inside IPv6 addresses is judged as the IPv4 it carries), unless the operator
  allows private addresses for a backend on the LAN;
* the connection goes to the addresses that were checked, never to a second lookup, so a name
  that resolves differently a moment later (DNS rebinding) cannot move it;
* redirects are followed here, at most three, each checked the same way; size, time and
  content type are bounded.

Links on the backend's own origin (LLM_BASE_URL's scheme, host and port) are trusted as the
backend is: they go through the shared client, with the API key, wherever that host lives.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import httpx
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from bot.llm.dialects import short_message
from bot.llm.errors import (
    ImageLinkRefusedError,
    LLMImageDownloadError,
    LLMProtocolError,
    LLMResponseTooLargeError,
)
from bot.llm.transport import as_httpx_error, read_capped

logger = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as strings.
Resolve = Callable[[str, int], Awaitable[Sequence[str]]]
# (host, checked addresses) -> a transport that connects to those addresses only.
Connect = Callable[[str, Sequence[Address]], httpx.AsyncBaseTransport]

MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Types under which servers send files they do not describe (S3 says binary/octet-stream);
# the caller judges those by their bytes.
UNDESCRIBED_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
# Carrier-grade NAT space: not global, yet Python's ipaddress calls it neither private nor
# reserved.
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
# IETF protocol assignments: not globally reachable, though Python before 3.12.4 calls most of
# the block global.
_PROTOCOL_ASSIGNMENTS = ipaddress.IPv4Network("192.0.0.0/24")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True, slots=True)
class Download:
    """A downloaded body, its declared content type and the URL it finally came from."""

    data: bytes
    content_type: str | None
    url: str


def address_refusal(ip: Address) -> str | None:
    """Why a download may not connect to `ip`; None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        carried = _carried_ipv4(ip)
        if carried is not None:
            # The packets go to that IPv4 address (by the OS or a NAT64 gateway): judge it.
            reason = address_refusal(carried)
            return f"{reason} (as {ip})" if reason else None
        for tunnelled in _tunnel_ipv4(ip):
            if reason := address_refusal(tunnelled):
                return f"{reason} (tunnelled in {ip})"
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "a shared (CGNAT) address"),
        (
            isinstance(ip, ipaddress.IPv4Address) and ip in _PROTOCOL_ASSIGNMENTS,
            "a special-purpose address",
        ),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "a site-local address"),
        (not ip.is_global, "not a public address"),
    )
    for refused, reason in checks:
        if refused:
            return f"{ip} is {reason}"
    return None


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, -translated, -compatible or NAT64 address stands for."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64 or ip in _IPV4_TRANSLATED:
        return low
    # `::` and `::1` are IPv6's own unspecified and loopback addresses, judged as such.
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return low
    return None


def _tunnel_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 endpoints a 6to4 or Teredo address carries."""
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    return []


def check_link(url: str | httpx.URL) -> httpx.URL:
    """`url` parsed as the request will send it; ImageLinkRefusedError if it is not usable."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ImageLinkRefusedError(f"image link refused: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise ImageLinkRefusedError("image link refused: only http and https links are fetched")
    if parsed.userinfo:
        # Credentials in a link would be sent on (and logged) wherever it points; a backend
        # has no reason to hand them out.
        raise ImageLinkRefusedError("image link refused: it carries a user name or password")
    if not parsed.raw_host:
        raise ImageLinkRefusedError("image link refused: it names no host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ImageLinkRefusedError(f"image link refused: port {parsed.port} does not exist")
    return parsed


def literal_address(host: str) -> Address | None:
    """`host` as an IP address when it is one (IPv6 without brackets), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, looked up in a worker thread."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one request: the checked addresses of one host, nothing else."""

    def __init__(self, host: str, addresses: Sequence[Address]) -> None:
        """Answer `host` with `addresses`; refuse every other name."""
        self._host = _name_key(host)
        self._addresses = tuple(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The pinned addresses of the checked host, of `family` (AF_UNSPEC: all)."""
        if _name_key(host) != self._host:
            raise OSError(f"{host} was not checked for this download")
        results: list[ResolveResult] = []
        for ip in self._addresses:
            ip_family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            if family not in (socket.AF_UNSPEC, ip_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(ip),
                    port=port,
                    family=ip_family,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise OSError(f"{host} has no checked address of the family asked for")
        return results

    async def close(self) -> None:
        """Nothing to release."""


class PinnedConnections:
    """The default `Connect`: a one-request aiohttp session whose resolver is pinned.

    The URL keeps its host name, so the Host header, TLS's SNI and certificate checks all use
    the name while the socket goes to a checked address. No proxy is used: a proxy would look
    the name up again itself.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Verify TLS with `ssl_context` (default: httpx's, i.e. certifi or SSL_CERT_FILE)."""
        self._ssl = ssl_context

    def __call__(self, host: str, addresses: Sequence[Address]) -> httpx.AsyncBaseTransport:
        """A transport that reaches `host` only at `addresses`."""
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        context = self._ssl

        def session() -> aiohttp.ClientSession:
            connector = aiohttp.TCPConnector(
                resolver=PinnedResolver(host, addresses),
                use_dns_cache=False,
                ssl=context,
                force_close=True,
            )
            return aiohttp.ClientSession(connector=connector, trust_env=False)

        return _HostGuard(host, addresses, AiohttpTransport(client=session))


class _HostGuard(httpx.AsyncBaseTransport):
    """Refuses a request whose host aiohttp would read differently from the checked one.

    aiohttp skips its resolver for IP literals, so an IP the checked host did not resolve to
    must never reach it, however the URL's two parsers (httpx's and yarl's) might disagree.
    """

    def __init__(
        self, host: str, addresses: Sequence[Address], inner: httpx.AsyncBaseTransport
    ) -> None:
        self._host = _name_key(host)
        self._addresses = frozenset(addresses)
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        seen = yarl.URL(str(request.url)).raw_host or ""
        literal = literal_address(seen)
        if literal is not None and literal not in self._addresses:
            raise httpx.ConnectError(f"{seen} was not checked for this download", request=request)
        if literal is None and _name_key(seen) != self._host:
            raise httpx.ConnectError(f"{seen} was not checked for this download", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _name_key(host: str) -> str:
    # aiohttp collapses trailing dots to one; the name is the same either way.
    return host.rstrip(".").lower()


def same_origin(url: httpx.URL, base: httpx.URL) -> bool:
    """True when `url` has `base`'s scheme, host and port (default ports normalised)."""
    return (url.scheme, url.raw_host.lower(), url.port) == (
        base.scheme,
        base.raw_host.lower(),
        base.port,
    )


class GuardedDownloader:
    """Downloads one link a backend handed out, checking every hop before connecting."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        trusted_origin: str,
        trusted_headers: Mapping[str, str],
        max_bytes: int,
        timeout: float,
        connect_timeout: float,
        allow_private: bool = False,
        secret: str | None = None,
        resolve: Resolve = system_resolve,
        connect: Connect | None = None,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        """`http` and `trusted_headers` serve `trusted_origin` (the backend's own links);
        `resolve` and `connect` reach every other host and are injectable for tests."""
        self._http = http
        self._origin = httpx.URL(trusted_origin)
        self._trusted_headers = dict(trusted_headers)
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._allow_private = allow_private
        self._secret = secret
        self._resolve = resolve
        self._connect = connect or PinnedConnections()
        self._max_redirects = max_redirects

    async def fetch(self, url: str, *, accept: str = "image/") -> Download:
        """The body behind `url`, whose declared type must start with `accept` or say nothing.

        Raises ImageLinkRefusedError for a link (or redirect) it will not follow,
        LLMImageDownloadError when the download fails, LLMProtocolError for a wrong type or
        LLMResponseTooLargeError past `max_bytes`.
        """
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(check_link(url), accept)
        except TimeoutError as exc:
            raise LLMImageDownloadError("image download timed out") from exc

    async def _follow(self, url: httpx.URL, accept: str) -> Download:
        for hop in range(self._max_redirects + 1):
            if same_origin(url, self._origin):
                trusted, client = True, self._http
            else:
                trusted, client = False, await self._pinned_client(url)
            try:
                async with client.stream(
                    "GET",
                    url,
                    headers=self._trusted_headers if trusted else self._headers(),
                    timeout=self._httpx_timeout(),
                    follow_redirects=False,
                ) as response:
                    location = _redirect(response)
                    if location is None:
                        return await self._read(response, accept)
                    # Relative locations are relative to the URL that answered.
                    url = check_link(url.join(location))
                    logger.debug("image link redirected (hop %s) to %s", hop + 1, url.host)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise self._download_error(exc) from exc
            finally:
                if not trusted:
                    await client.aclose()
        raise ImageLinkRefusedError(
            f"image link refused: more than {self._max_redirects} redirects"
        )

    async def _pinned_client(self, url: httpx.URL) -> httpx.AsyncClient:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await self._addresses(host, port)
        # trust_env=False: proxies from the environment would resolve the name again.
        return httpx.AsyncClient(transport=self._connect(host, addresses), trust_env=False)

    async def _addresses(self, host: str, port: int) -> list[Address]:
        """The addresses `host` resolves to, each allowed, or ImageLinkRefusedError."""
        literal = literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                found = await self._resolve(host, port)
            except OSError as exc:  # socket.gaierror included
                raise LLMImageDownloadError(f"image host {host} could not be resolved") from exc
            addresses = [a for a in (literal_address(s) for s in found) if a is not None]
            if not addresses:
                raise LLMImageDownloadError(f"image host {host} has no address")
        if not self._allow_private:
            # Every address, not the first: the connection may use any of them.
            for address in addresses:
                if reason := address_refusal(address):
                    raise ImageLinkRefusedError(
                        f"image link refused: {host} resolves to {reason} "
                        "(IMAGE_FETCH_ALLOW_PRIVATE is off)"
                    )
        return addresses

    async def _read(self, response: httpx.Response, accept: str) -> Download:
        if not response.is_success:
            raise LLMImageDownloadError(
                f"image download failed: HTTP {response.status_code}", response.status_code
            )
        declared = response.headers.get("content-type")
        mime = (declared or "").split(";")[0].strip().lower()
        if mime and not mime.startswith(accept) and mime not in UNDESCRIBED_TYPES:
            # Refused before reading: an HTML login page or an API's JSON is no picture.
            raise LLMProtocolError(f"the image link led to {mime[:60]}, not an image")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_bytes:
            raise LLMResponseTooLargeError(
                f"the image is larger than {self._max_bytes // (1024 * 1024)} MB"
            )
        data = await read_capped(response, self._max_bytes, "the image")
        return Download(data, declared, str(response.url))

    def _headers(self) -> dict[str, str]:
        # The shared client's User-Agent, and nothing that belongs to the backend.
        return {"User-Agent": self._http.headers.get("user-agent", "python-httpx")}

    def _httpx_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self._connect_timeout,
            read=self._timeout,
            write=self._timeout,
            pool=self._connect_timeout,
        )

    def _download_error(self, exc: Exception) -> LLMImageDownloadError:
        plain = as_httpx_error(exc)
        if isinstance(plain, httpx.TimeoutException):
            return LLMImageDownloadError("image download timed out")
        detail = short_message(str(plain), secret=self._secret)
        return LLMImageDownloadError(f"image download failed: {detail}")


def _redirect(response: httpx.Response) -> str | None:
    """The Location of a redirect answer; None for any other answer."""
    if response.status_code not in _REDIRECT_STATUSES:
        return None
    location = response.headers.get("location")
    if not location:
        raise LLMImageDownloadError(
            f"image download failed: HTTP {response.status_code} without a Location",
            response.status_code,
        )
    return str(location)
