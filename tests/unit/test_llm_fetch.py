"""The guarded downloader: which addresses and links it refuses, and that it connects only to
the addresses it checked (real sockets on 127.0.0.1, names answered by a stub resolver)."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from bot.llm.errors import ImageLinkRefusedError, LLMImageDownloadError, LLMResponseTooLargeError
from bot.llm.fetch import (
    GuardedDownloader,
    PinnedConnections,
    PinnedResolver,
    address_refusal,
    check_link,
    system_resolve,
)
from tests.fakes.openai import make_png

PICTURE = make_png(6, 4)
BASE_URL = "https://llm.example/v1"

# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.20.30.40", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("255.255.255.255", "private"),  # broadcast
        ("240.0.0.1", "private"),  # reserved class E
        ("192.0.0.8", "special-purpose"),  # IETF protocol assignments
        ("198.18.0.1", "private"),  # benchmarking
        ("192.0.2.1", "private"),  # documentation
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:0:127.0.0.1", "loopback"),  # IPv4-translated
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 to 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 to 169.254.169.254
        ("2002:7f00:1::1", "loopback"),  # 6to4 around 127.0.0.1
        ("2002:c0a8:101::1", "private"),  # 6to4 around 192.168.1.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address))
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize(
    "address",
    [
        "93.184.215.14",
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",  # just below the shared range
        "100.128.0.1",  # just above it
        "172.32.0.1",  # just above 172.16/12
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",  # IPv4-mapped public
        "64:ff9b::808:808",  # NAT64 to 8.8.8.8
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


# -- links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "reason"),
    [
        ("ftp://cdn.example/a.png", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("//cdn.example/a.png", "only http and https"),
        ("http://user:pass@cdn.example/a.png", "user name or password"),
        ("http://user@cdn.example/a.png", "user name or password"),
        ("https://:pass@cdn.example/a.png", "user name or password"),
        ("http://evil.example\\@127.0.0.1/", "user name or password"),
        ("http:///a.png", "names no host"),
        ("http://cdn.example:99999/a.png", "port 99999"),
        ("http://cdn.example:0/a.png", "port 0"),
    ],
)
def test_unusable_links_are_refused(link: str, reason: str) -> None:
    with pytest.raises(ImageLinkRefusedError, match=reason):
        check_link(link)


def test_usable_links_keep_their_host() -> None:
    assert check_link("https://CDN.Example/a.png?sig=1").host == "cdn.example"
    assert check_link("http://[::1]:8080/a.png").host == "::1"


async def test_pinned_resolver_answers_only_its_host() -> None:
    v4, v6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    resolver = PinnedResolver("pictures.example", [v4, v6])
    found = await resolver.resolve("Pictures.Example.", 443, socket.AF_UNSPEC)
    assert [(r["host"], r["port"]) for r in found] == [("127.0.0.1", 443), ("::1", 443)]
    only_v6 = await resolver.resolve("pictures.example", 443, socket.AF_INET6)
    assert [r["host"] for r in only_v6] == ["::1"]
    with pytest.raises(OSError, match="not checked"):
        await resolver.resolve("other.example", 443, socket.AF_UNSPEC)


async def test_system_resolver_finds_localhost() -> None:
    found = await system_resolve("localhost", 80)
    assert found and all(ipaddress.ip_address(a).is_loopback for a in found)


# -- real connections ---------------------------------------------------------------------------


@dataclass
class Server:
    """A picture server on 127.0.0.1 noting every request (path and Host header)."""

    hits: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        async def picture(request: web.Request) -> web.Response:
            self.hits.append((request.path, request.headers.get("Host", "")))
            return web.Response(body=PICTURE, content_type="image/png")

        async def hang(request: web.Request) -> web.Response:
            self.hits.append((request.path, request.headers.get("Host", "")))
            await asyncio.sleep(30)
            return web.Response()

        async def endless(request: web.Request) -> web.StreamResponse:
            self.hits.append((request.path, request.headers.get("Host", "")))
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            await response.prepare(request)  # chunked: no length to refuse up front
            for _ in range(64):
                await response.write(b"\0" * 4096)
            return response

        app = web.Application()
        app.router.add_get("/hang.png", hang)
        app.router.add_get("/endless.png", endless)
        app.router.add_get("/{tail:.*}", picture)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class StubDNS:
    """Answers names from a table and notes every question; no real DNS is asked."""

    table: dict[str, list[str]]
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., GuardedDownloader]]:
    shared = httpx.AsyncClient()

    def build(**options: Any) -> GuardedDownloader:
        values: dict[str, Any] = {
            "http": shared,
            "trusted_origin": BASE_URL,
            "trusted_headers": {"Authorization": "Bearer sk-never-sent"},
            "max_bytes": 1024 * 1024,
            "timeout": 5.0,
            "connect_timeout": 2.0,
            **options,
        }
        return GuardedDownloader(**values)

    yield build
    await shared.aclose()


async def test_public_looking_name_on_loopback_is_refused(
    server: Server, make: Callable[..., GuardedDownloader]
) -> None:
    dns = StubDNS({"pictures.example": ["127.0.0.1"]})
    with pytest.raises(ImageLinkRefusedError, match=r"127\.0\.0\.1 is a loopback address"):
        await make(resolve=dns).fetch(f"http://pictures.example:{server.port}/a.png")
    assert server.hits == []


async def test_literal_and_localhost_links_are_refused(
    server: Server, make: Callable[..., GuardedDownloader]
) -> None:
    downloader = make()  # the system resolver: `localhost` is looked up for real
    for link in (
        f"http://127.0.0.1:{server.port}/a.png",
        f"http://localhost:{server.port}/a.png",
        f"http://[::ffff:127.0.0.1]:{server.port}/a.png",
        f"http://2130706433:{server.port}/a.png",  # 127.0.0.1 as one number
    ):
        with pytest.raises(ImageLinkRefusedError):
            await downloader.fetch(link)
    assert server.hits == []


async def test_connection_goes_to_the_checked_address(
    server: Server, make: Callable[..., GuardedDownloader]
) -> None:
    # `pictures.example` exists only in the stub: the download can only succeed by connecting
    # to the address the stub gave and the check saw, and the name is asked for once.
    dns = StubDNS({"pictures.example": ["127.0.0.1"]})
    downloader = make(resolve=dns, allow_private=True)
    got = await downloader.fetch(f"http://pictures.example:{server.port}/a.png")
    assert got.data == PICTURE and got.content_type == "image/png"
    assert dns.asked == [("pictures.example", server.port)]
    # The Host header names the host, not the address.
    assert server.hits == [("/a.png", f"pictures.example:{server.port}")]
    assert "authorization" not in str(server.hits).lower()


async def test_a_later_answer_cannot_move_the_connection(
    server: Server, make: Callable[..., GuardedDownloader]
) -> None:
    @dataclass
    class Rebinding:
        """First the checked address, then (for anyone asking again) an address nobody
        listens on."""

        answers: list[list[str]]

        async def __call__(self, host: str, port: int) -> list[str]:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    rebinding = Rebinding([["127.0.0.1"], ["127.0.0.2"]])
    downloader = make(resolve=rebinding, allow_private=True)
    got = await downloader.fetch(f"http://pictures.example:{server.port}/a.png")
    assert got.data == PICTURE


async def test_pinned_transport_refuses_other_hosts(server: Server) -> None:
    loopback = ipaddress.ip_address("127.0.0.1")
    transport = PinnedConnections()("pictures.example", [loopback])
    async with httpx.AsyncClient(transport=transport) as client:
        for link in (
            f"http://other.example:{server.port}/a.png",
            f"http://127.0.0.2:{server.port}/a.png",
        ):
            with pytest.raises(httpx.ConnectError, match="not checked"):
                await client.get(link)
    assert server.hits == []


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for `pictures.example`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=pictures.example"),
            *("-addext", "subjectAltName=DNS:pictures.example"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_keeps_the_name_for_sni_and_certificate(
    certificate: tuple[Path, Path], make: Callable[..., GuardedDownloader]
) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=str(cert))
    tls = Server()
    await tls.start(ssl_context=served)
    try:
        dns = StubDNS({"pictures.example": ["127.0.0.1"]})
        downloader = make(resolve=dns, allow_private=True, connect=PinnedConnections(trusted))
        got = await downloader.fetch(f"https://pictures.example:{tls.port}/a.png")
        assert got.data == PICTURE
        # The same address under another name fails verification: the certificate is
        # checked against the name in the link.
        dns.table["elsewhere.example"] = ["127.0.0.1"]
        with pytest.raises(LLMImageDownloadError):
            await downloader.fetch(f"https://elsewhere.example:{tls.port}/a.png")
    finally:
        await tls.stop()


async def test_time_and_size_are_bounded(
    server: Server, make: Callable[..., GuardedDownloader]
) -> None:
    dns = StubDNS({"pictures.example": ["127.0.0.1"]})
    slow = make(resolve=dns, allow_private=True, timeout=0.3)
    with pytest.raises(LLMImageDownloadError, match="timed out"):
        await slow.fetch(f"http://pictures.example:{server.port}/hang.png")
    small = make(resolve=dns, allow_private=True, max_bytes=10_000)
    with pytest.raises(LLMResponseTooLargeError):
        await small.fetch(f"http://pictures.example:{server.port}/endless.png")


async def test_unknown_name_is_a_download_error(make: Callable[..., GuardedDownloader]) -> None:
    with pytest.raises(LLMImageDownloadError, match="could not be resolved") as err:
        await make(resolve=StubDNS({})).fetch("https://nowhere.example/a.png")
    assert not isinstance(err.value, ImageLinkRefusedError)
