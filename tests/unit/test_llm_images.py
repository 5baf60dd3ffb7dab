"""Image client tests, fed with the providers' captured image responses wherever one exists."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.llm.errors import (
    ImageLinkRefusedError,
    LLMBadRequestError,
    LLMContentPolicyError,
    LLMImageDownloadError,
    LLMNotFoundError,
    LLMProtocolError,
    LLMResponseTooLargeError,
    LLMServerError,
    LLMTimeoutError,
)
from bot.llm.fetch import Address
from bot.llm.images import ImageApi, ImageClient, choose_image_api, sniff_image
from bot.llm.policy import RetryPolicy
from tests.fakes.openai import PNG_1X1, make_png

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"
BASE_URL = "https://llm.example/v1"
API_KEY = "sk-test-0123456789abcdef"
PROMPT = "a small red square"

# OpenAI's documented refusal (no server could capture one): 400 content_policy_violation.
OPENAI_POLICY_ERROR = {
    "error": {
        "code": "content_policy_violation",
        "message": "Your request was rejected as a result of our safety system. Your prompt may "
        "contain text that is not allowed by our safety system.",
        "param": None,
        "type": "invalid_request_error",
    }
}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def webp(width: int, height: int) -> bytes:
    """A lossless WebP header of the given size (enough for sniffing)."""
    bits = (width - 1) | ((height - 1) << 14)
    body = b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", bits) + b"\x00"
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def jpeg(width: int, height: int) -> bytes:
    """A JPEG start: SOI, an APP0 segment, then a baseline frame header with the size."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


Reply = Callable[[httpx.Request], httpx.Response]


# What every name resolves to unless a test says otherwise (example.com's address).
PUBLIC_IP = "93.184.215.14"


@dataclass
class Backend:
    """Answers by URL: each URL has a list of replies, used in turn; the last one repeats.

    It also stands in for DNS (`names`, default PUBLIC_IP) and for the pinned connections to
    hosts other than the backend's own, noting which addresses each was pinned to.
    """

    routes: dict[str, list[Reply | Exception]]
    requests: list[httpx.Request] = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)
    pinned: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[str]:
        return self.names.get(host, [PUBLIC_IP])

    def connect(self, host: str, addresses: Sequence[Address]) -> httpx.AsyncBaseTransport:
        self.pinned.append((host, tuple(str(a) for a in addresses)))
        return httpx.MockTransport(self)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        replies = self.routes.get(str(request.url))
        if replies is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply(request)

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]


def body(
    data: bytes | dict[str, Any], status: int = 200, content_type: str | None = None
) -> Reply:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    kind = content_type or ("application/json" if isinstance(data, dict) else "image/png")
    return lambda request: httpx.Response(status, content=raw, headers={"content-type": kind})


def json_fixture(name: str, status: int = 200) -> Reply:
    return body(fixture(name), status, "application/json")


@dataclass
class Harness:
    backend: Backend
    client: ImageClient
    sleeps: list[float]

    async def generate(self, model: str = "dall-e-3", api: ImageApi = "images") -> Any:
        return await self.client.generate(model=model, prompt=PROMPT, size="1024x1024", api=api)


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Harness]]:
    clients: list[httpx.AsyncClient] = []

    def build(routes: dict[str, list[Reply | Exception]], **options: Any) -> Harness:
        backend = Backend(routes)
        http = httpx.AsyncClient(transport=httpx.MockTransport(backend))
        clients.append(http)
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        options.setdefault("retry", RetryPolicy(max_retries=2))
        client = ImageClient(
            http=http,
            base_url=BASE_URL,
            api_key=API_KEY,
            sleep=sleep,
            resolve=backend.resolve,
            connect=backend.connect,
            **options,
        )
        return Harness(backend, client, sleeps)

    yield build
    for http in clients:
        await http.aclose()


IMAGES = f"{BASE_URL}/images/generations"
CHAT = f"{BASE_URL}/chat/completions"


# -- the images API -------------------------------------------------------------------------------


async def test_litellm_b64_answer_for_dall_e_asks_for_b64(make: Callable[..., Harness]) -> None:
    h = make({IMAGES: [json_fixture("litellm/images-b64-json.json")]})
    image = await h.generate("dall-e-3")
    assert image.data == PNG_1X1
    assert (image.mime_type, image.extension, image.width, image.height) == (
        "image/png",
        "png",
        1,
        1,
    )
    assert image.usage is None  # LiteLLM's all-zero usage means "not reported"
    [sent] = h.backend.bodies()
    assert sent == {
        "model": "dall-e-3",
        "prompt": PROMPT,
        "n": 1,
        "size": "1024x1024",
        "response_format": "b64_json",
    }
    assert h.backend.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_absurd_image_usage_is_not_believed(make: Callable[..., Harness]) -> None:
    answer = {
        "created": 1,
        "data": [{"b64_json": base64.b64encode(PNG_1X1).decode()}],
        "usage": {"input_tokens": 2**63 - 1, "output_tokens": 12.7},
    }
    h = make({IMAGES: [body(answer)]})
    image = await h.generate("gpt-image-1")
    assert image.data == PNG_1X1
    assert image.usage is None


async def test_gpt_image_is_asked_without_response_format(make: Callable[..., Harness]) -> None:
    h = make({IMAGES: [json_fixture("mock-ai-api/images-b64-json.json")]})
    image = await h.generate("gpt-image-1")
    assert image.data == PNG_1X1
    [sent] = h.backend.bodies()
    assert "response_format" not in sent
    # A LiteLLM-prefixed DALL·E id still gets the parameter.
    h = make({IMAGES: [json_fixture("mock-ai-api/images-b64-json.json")]})
    await h.generate("openai/dall-e-2")
    assert h.backend.bodies()[0]["response_format"] == "b64_json"


async def test_b64_comes_back_although_a_url_was_expected(make: Callable[..., Harness]) -> None:
    # mock-ai-api ignores response_format and always answers b64_json.
    h = make({IMAGES: [json_fixture("mock-ai-api/images-url-requested.json")]})
    assert (await h.generate()).data == PNG_1X1


async def test_url_answer_is_downloaded_without_the_key(make: Callable[..., Harness]) -> None:
    picture = make_png(32, 16)
    h = make(
        {
            IMAGES: [json_fixture("litellm/images-url.json")],
            "https://example.com/mock-image.png": [body(picture)],
        }
    )
    image = await h.generate()
    assert image.data == picture
    assert (image.width, image.height) == (32, 16)
    download = h.backend.requests[1]
    assert download.method == "GET"
    assert "authorization" not in download.headers  # a third-party host never sees the key
    # The connection went to the address that was checked, not to a second lookup.
    assert h.backend.pinned == [("example.com", (PUBLIC_IP,))]


async def test_link_on_the_backend_itself_is_fetched_with_the_key(
    make: Callable[..., Harness],
) -> None:
    url = "https://llm.example/files/1.png"
    h = make({IMAGES: [body({"data": [{"url": url}]})], url: [body(make_png())]})
    await h.generate()
    assert h.backend.requests[1].headers["authorization"] == f"Bearer {API_KEY}"
    assert h.backend.pinned == []  # the backend's own links go through the shared client


async def test_data_url_and_unknown_image_types(make: Callable[..., Harness]) -> None:
    encoded = base64.b64encode(jpeg(640, 480)).decode()
    h = make({IMAGES: [body({"data": [{"url": f"data:image/jpeg;base64,{encoded}"}]})]})
    image = await h.generate()
    assert (image.mime_type, image.width, image.height) == ("image/jpeg", 640, 480)

    url = "https://cdn.example/x.avif"
    h = make(
        {
            IMAGES: [body({"data": [{"url": url}]})],
            url: [body(b"\x00\x00\x00\x1cftypavif", content_type="image/avif")],
        }
    )
    image = await h.generate()
    assert (image.mime_type, image.extension, image.width) == ("image/avif", "avif", None)


async def test_response_format_rejected_by_litellm(make: Callable[..., Harness]) -> None:
    h = make(
        {IMAGES: [json_fixture("litellm/error-400-images-response-format-unsupported.json", 400)]}
    )
    with pytest.raises(LLMBadRequestError) as err:
        await h.generate()
    assert not isinstance(err.value, LLMContentPolicyError)
    assert "response_format" in err.value.message


async def test_content_policy_refusal(make: Callable[..., Harness]) -> None:
    h = make({IMAGES: [body(OPENAI_POLICY_ERROR, 400)]})
    with pytest.raises(LLMContentPolicyError) as err:
        await h.generate()
    assert err.value.code == "content_policy_violation"
    assert len(h.backend.requests) == 1


@pytest.mark.parametrize(
    "name", ["dwmkerr-mock-llm/error-404-images-unsupported.json", "mockllm/error-404-images.json"]
)
async def test_backend_without_images_endpoint(make: Callable[..., Harness], name: str) -> None:
    h = make({IMAGES: [json_fixture(name, 404)]})
    with pytest.raises(LLMNotFoundError):
        await h.generate()


async def test_server_error_is_reported_not_repeated(make: Callable[..., Harness]) -> None:
    h = make({IMAGES: [body({"error": {"message": "boom", "type": "server_error"}}, 500)]})
    with pytest.raises(LLMServerError):
        await h.generate()
    assert len(h.backend.requests) == 1  # generating is slow and billed: no blind repeat


async def test_rate_limit_and_refused_connection_are_retried(
    make: Callable[..., Harness],
) -> None:
    limited = body({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, 429)
    h = make(
        {
            IMAGES: [
                lambda r: httpx.Response(
                    429, content=limited(r).content, headers={"retry-after": "2"}
                ),
                httpx.ConnectError("refused"),
                json_fixture("litellm/images-b64-json.json"),
            ]
        }
    )
    assert (await h.generate()).data == PNG_1X1
    assert len(h.backend.requests) == 3
    assert h.sleeps[0] >= 2


async def test_answer_without_an_image(make: Callable[..., Harness]) -> None:
    h = make({IMAGES: [body({"created": 1, "data": []})]})
    with pytest.raises(LLMProtocolError):
        await h.generate()


async def test_download_failures(make: Callable[..., Harness]) -> None:
    url = "https://example.com/mock-image.png"
    h = make({IMAGES: [json_fixture("litellm/images-url.json")], url: [body(b"gone", 404)]})
    with pytest.raises(LLMImageDownloadError):
        await h.generate()
    assert len(h.backend.requests) == 2  # a 404 will not heal

    html = body(b"<html>login</html>", content_type="text/html")
    h = make({IMAGES: [json_fixture("litellm/images-url.json")], url: [html]})
    with pytest.raises(LLMProtocolError):
        await h.generate()

    h = make(
        {IMAGES: [json_fixture("litellm/images-url.json")], url: [body(make_png())]}, max_bytes=10
    )
    with pytest.raises(LLMProtocolError, match="larger than"):
        await h.generate()


def redirect(location: str, status: int = 302) -> Reply:
    return lambda request: httpx.Response(status, headers={"location": location})


@pytest.mark.parametrize(
    ("link", "names"),
    [
        ("http://169.254.169.254/latest/meta-data/iam", {}),
        ("http://127.0.0.1:8080/x.png", {}),
        ("http://[::ffff:127.0.0.1]/x.png", {}),
        ("http://10.0.0.5/x.png", {}),
        ("https://cdn.example/x.png", {"cdn.example": ["127.0.0.1"]}),
        # One bad address among good ones is enough: the connection may pick any of them.
        ("https://cdn.example/x.png", {"cdn.example": [PUBLIC_IP, "192.168.1.20"]}),
        ("https://cdn.example/x.png", {"cdn.example": ["2606:4700::1111", "fd00::7"]}),
    ],
    ids=[
        "metadata",
        "loopback",
        "mapped-loopback",
        "private",
        "name-to-loopback",
        "one-of-two",
        "ula",
    ],
)
async def test_links_to_private_addresses_are_refused(
    make: Callable[..., Harness], link: str, names: dict[str, list[str]]
) -> None:
    h = make({IMAGES: [body({"data": [{"url": link}]})], link: [body(make_png())]})
    h.backend.names.update(names)
    with pytest.raises(ImageLinkRefusedError, match="IMAGE_FETCH_ALLOW_PRIVATE"):
        await h.generate()
    assert [r.method for r in h.backend.requests] == ["POST"]  # nothing was fetched
    assert h.backend.pinned == [] and h.sleeps == []  # nor tried again


async def test_private_links_are_fetched_when_allowed(make: Callable[..., Harness]) -> None:
    link = "http://nas.lan:8080/out/1.png"
    h = make(
        {IMAGES: [body({"data": [{"url": link}]})], link: [body(make_png())]},
        allow_private=True,
    )
    h.backend.names["nas.lan"] = ["192.168.1.20"]
    assert (await h.generate()).mime_type == "image/png"
    assert h.backend.pinned == [("nas.lan", ("192.168.1.20",))]


@pytest.mark.parametrize(
    "link",
    [
        "http://user:secret@cdn.example/x.png",
        "http://user@llm.example/files/1.png",
        "ftp://cdn.example/x.png",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "http:///x.png",
    ],
)
async def test_unusable_links_are_refused(make: Callable[..., Harness], link: str) -> None:
    h = make({IMAGES: [body({"data": [{"url": link}]})]})
    with pytest.raises(ImageLinkRefusedError, match="image link refused"):
        await h.generate()
    assert len(h.backend.requests) == 1 and h.sleeps == []


async def test_every_redirect_is_checked(make: Callable[..., Harness]) -> None:
    own = "https://llm.example/files/1.png"
    h = make(
        {
            IMAGES: [body({"data": [{"url": own}]})],
            own: [redirect("https://cdn.example/a/1.png")],
            "https://cdn.example/a/1.png": [redirect("../b/1.png", 301)],  # relative
            "https://cdn.example/b/1.png": [redirect("http://10.1.2.3/1.png", 307)],
        }
    )
    with pytest.raises(ImageLinkRefusedError, match=r"10\.1\.2\.3 is a private address"):
        await h.generate()
    fetched = [str(r.url) for r in h.backend.requests if r.method == "GET"]
    assert fetched == [own, "https://cdn.example/a/1.png", "https://cdn.example/b/1.png"]
    assert h.backend.requests[1].headers["authorization"] == f"Bearer {API_KEY}"
    # The key stays on the backend's own origin, redirect or not.
    assert all("authorization" not in r.headers for r in h.backend.requests[2:])


async def test_redirect_back_to_the_backend_and_on_to_the_image(
    make: Callable[..., Harness],
) -> None:
    own = "https://llm.example/files/1.png"
    h = make(
        {
            IMAGES: [body({"data": [{"url": "https://cdn.example/1"}]})],
            "https://cdn.example/1": [redirect(own, 303)],
            own: [body(make_png(5, 5))],
        }
    )
    assert (await h.generate()).width == 5
    assert h.backend.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"


async def test_redirects_are_capped_at_three(make: Callable[..., Harness]) -> None:
    routes: dict[str, list[Reply | Exception]] = {
        IMAGES: [body({"data": [{"url": "https://cdn.example/0"}]})],
        **{f"https://cdn.example/{i}": [redirect(f"/{i + 1}")] for i in range(4)},
        "https://cdn.example/4": [body(make_png())],
    }
    h = make(routes)
    with pytest.raises(ImageLinkRefusedError, match="more than 3 redirects"):
        await h.generate()
    assert len([r for r in h.backend.requests if r.method == "GET"]) == 4

    routes[IMAGES] = [body({"data": [{"url": "https://cdn.example/1"}]})]
    assert (await make(routes).generate()).mime_type == "image/png"  # three are fine


async def test_content_type_is_checked_before_the_body_is_read(
    make: Callable[..., Harness],
) -> None:
    url = "https://cdn.example/x"
    streamed: list[bytes] = []

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b'{"a":', b"1}"):
            streamed.append(chunk)
            yield chunk

    def as_json(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks(), headers={"content-type": "application/json"})

    h = make({IMAGES: [body({"data": [{"url": url}]})], url: [as_json]})
    with pytest.raises(LLMProtocolError, match="application/json, not an image"):
        await h.generate()
    assert streamed == []

    # Undescribed bytes are judged by what they are.
    h = make(
        {
            IMAGES: [body({"data": [{"url": url}]})],
            url: [body(make_png(3, 2), content_type="application/octet-stream")],
        }
    )
    assert (await h.generate()).mime_type == "image/png"
    h = make(
        {
            IMAGES: [body({"data": [{"url": url}]})],
            url: [body(b"MZ\x90\x00 not a picture", content_type="binary/octet-stream")],
        }
    )
    with pytest.raises(LLMProtocolError, match="not an image"):
        await h.generate()


async def test_declared_length_past_the_cap_is_not_read(make: Callable[..., Harness]) -> None:
    url = "https://cdn.example/huge.png"

    def huge(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "image/png", "content-length": str(10**12)}
        return httpx.Response(200, content=make_png(), headers=headers)

    h = make({IMAGES: [body({"data": [{"url": url}]})], url: [huge]})
    with pytest.raises(LLMResponseTooLargeError):
        await h.generate()


async def test_slow_backend_times_out(make: Callable[..., Harness]) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    http = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    client = ImageClient(http=http, base_url=BASE_URL, api_key=None, timeout=0.05)
    try:
        with pytest.raises(LLMTimeoutError) as err:
            await client.generate(model="dall-e-3", prompt=PROMPT, size="1024x1024", api="images")
    finally:
        await http.aclose()
    assert err.value.phase == "total"


# -- chat-style image models (akashchat AkashGen) -----------------------------------------------


async def test_akashgen_picture_link_is_downloaded(make: Callable[..., Harness]) -> None:
    pic = "https://chat.akash.network/api/image/job_727ef62f_00001_.webp"
    h = make(
        {
            CHAT: [json_fixture("akashchat-api-go/chat-akashgen-image.json")],
            pic: [body(webp(1024, 768), content_type="image/webp")],
        }
    )
    image = await h.generate("AkashGen", api="chat")
    assert (image.mime_type, image.extension, image.width, image.height) == (
        "image/webp",
        "webp",
        1024,
        768,
    )
    sent = h.backend.bodies()[0]
    assert sent == {
        "model": "AkashGen",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": False,
    }
    assert "authorization" not in h.backend.requests[1].headers


async def test_akashgen_errors(make: Callable[..., Harness]) -> None:
    h = make({CHAT: [json_fixture("akashchat-api-go/chat-akashgen-error-500.json", 500)]})
    with pytest.raises(LLMServerError) as err:
        await h.generate("AkashGen", api="chat")
    assert err.value.message == "Error Model."
    assert len(h.backend.requests) == 1
    # The same envelope inside an HTTP 200.
    failed = {"code": 500, "data": {"msg": "Image generation failed: upstream busy"}}
    h = make({CHAT: [body(failed)]})
    with pytest.raises(LLMServerError, match="Image generation failed"):
        await h.generate("AkashGen", api="chat")


async def test_chat_model_answering_text_is_no_image(make: Callable[..., Harness]) -> None:
    h = make({CHAT: [json_fixture("akashchat-api-go/nonstream-zero-usage.json")]})
    with pytest.raises(LLMProtocolError, match="text"):
        await h.generate("Meta-Llama-3-3-70B-Instruct", api="chat")


async def test_chat_models_with_markdown_or_openrouter_images(
    make: Callable[..., Harness],
) -> None:
    url = "https://img.example/a.png"
    markdown = {"choices": [{"message": {"role": "assistant", "content": f"Here: ![a]({url})"}}]}
    h = make({CHAT: [body(markdown)], url: [body(make_png())]})
    assert (await h.generate("some-image-model", api="chat")).mime_type == "image/png"

    encoded = base64.b64encode(make_png(4, 4)).decode()
    images = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}}]
    openrouter = {"choices": [{"message": {"role": "assistant", "content": "", "images": images}}]}
    h = make({CHAT: [body(openrouter)]})
    assert (await h.generate("google/gemini-2.5-flash-image", api="chat")).width == 4


# -- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "model", "expected"),
    [
        ("auto", "AkashGen", "chat"),
        ("auto", "akash/akashgen-v2", "chat"),
        ("auto", "dall-e-3", "images"),
        ("auto", "gpt-image-1", "images"),
        ("images", "AkashGen", "images"),
        ("chat", "dall-e-3", "chat"),
    ],
)
def test_choose_image_api(setting: Any, model: str, expected: str) -> None:
    assert choose_image_api(setting, model) == expected


def test_sniff_image_reads_sizes() -> None:
    png = sniff_image(make_png(300, 200))
    assert png is not None and (png.mime_type, png.width, png.height) == ("image/png", 300, 200)
    jpg = sniff_image(jpeg(4000, 3000))
    assert jpg is not None and (jpg.mime_type, jpg.width, jpg.height) == ("image/jpeg", 4000, 3000)
    wbp = sniff_image(webp(1792, 1024))
    assert wbp is not None and (wbp.width, wbp.height) == (1792, 1024)
    gif = sniff_image(b"GIF89a" + struct.pack("<HH", 10, 20) + b"\x00" * 10)
    assert gif is not None and (gif.mime_type, gif.width, gif.height) == ("image/gif", 10, 20)
    assert sniff_image(b"<html>not an image</html>") is None
    assert sniff_image(b"\x89PNG\r\n\x1a\n\x00\x00") is None  # truncated
