"""End-to-end: /image through fake Telegram and a fake backend (images API and AkashGen)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import text

from tests.e2e.conftest import BotHarness
from tests.fakes.openai import IMAGES_PATH, Error, Hang, ImageResult, Raw, make_png
from tests.fakes.telegram import SentMessage

# What the bot says, in English (the fake's users write from English Telegram apps).
REFUSED = (
    "The image service refused this description under its content policy. Please describe "
    "something else."
)
SERVER_ERROR = "The AI backend failed to draw the image ({detail}). Please try again later."
LINK_REFUSED = (
    "The image was drawn, but the bot does not download it from the link the AI backend gave "
    "(a private or local address, or an unsafe link). The bot's owner finds the reason in the log."
)
DOWNLOAD_FAILED = (
    "The image was drawn, but downloading it from the AI backend failed. Please try again."
)


CHAT = 2001
GROUP = -100700
PROMPT = "a red fox asleep in the snow, watercolour"
# OpenAI's documented refusal of a prompt by its safety system.
POLICY_ERROR = Error(
    400,
    {
        "error": {
            "code": "content_policy_violation",
            "message": "Your request was rejected as a result of our safety system.",
            "param": None,
            "type": "invalid_request_error",
        }
    },
)
NO_LIMITS = {"image_cooldown_seconds": 0, "image_daily_limit": 0}


def webp(width: int, height: int) -> bytes:
    """A lossless WebP header of the given size, as akashchat's pictures are."""
    bits = (width - 1) | ((height - 1) << 14)
    body = b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", bits) + b"\x00"
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


async def start(harness: BotHarness, **settings: Any) -> BotHarness:
    await harness.start(**{"image_model": "dall-e-3", **NO_LIMITS, **settings})
    return harness


async def wait_media(bot: BotHarness, chat_id: int, count: int = 1) -> list[SentMessage]:
    await bot.tg.wait_for(
        lambda t: sum(m.kind != "text" for m in t.messages(chat_id)) >= count, timeout=10
    )
    return [m for m in bot.tg.messages(chat_id) if m.kind != "text"]


async def usage_rows(bot: BotHarness) -> list[Any]:
    assert bot.app is not None
    async with bot.app.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT user_id, chat_id, model, kind, status, images, size, error "
                "FROM usage_records ORDER BY id"
            )
        )
        return list(result.all())


async def test_private_image_from_base64_is_sent_as_a_captioned_photo(
    harness: BotHarness,
) -> None:
    bot = await start(harness)
    picture = make_png(64, 48)
    bot.llm.enqueue_image(ImageResult(b64=picture))
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}", user_id=CHAT)
    [photo] = await wait_media(bot, CHAT)
    assert photo.kind == "photo"
    assert photo.text == PROMPT
    assert photo.file is not None and photo.file.data == picture
    assert photo.reply_to_message_id is None
    methods = [c.method for c in bot.tg.calls if c.chat_id == CHAT]
    assert methods.index("sendChatAction") < methods.index("sendPhoto")
    assert (CHAT, "upload_photo") in bot.tg.chat_actions
    assert bot.llm.image_requests == [
        {
            "model": "dall-e-3",
            "prompt": PROMPT,
            "n": 1,
            "size": "1024x1024",
            "response_format": "b64_json",
        }
    ]
    assert bot.llm.chat_requests == []  # the command is not a conversation message
    rows = await usage_rows(bot)
    assert [tuple(r)[:7] for r in rows] == [
        (CHAT, CHAT, "dall-e-3", "image", "ok", 1, "1024x1024")
    ]


async def test_image_link_is_downloaded_and_sent(harness: BotHarness) -> None:
    bot = await start(harness, image_model="gpt-image-1", image_size="1536x1024")
    picture = make_png(48, 32)
    bot.llm.enqueue_image(ImageResult(url=bot.llm.add_file("fox.png", picture)))
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}")
    [photo] = await wait_media(bot, CHAT)
    assert photo.file is not None and photo.file.data == picture
    [request] = bot.llm.image_requests
    assert request["size"] == "1536x1024"
    assert "response_format" not in request  # LiteLLM rejects it for gpt-image-1


async def test_akashgen_picture_is_fetched_and_sent(harness: BotHarness) -> None:
    bot = await start(harness, image_model="AkashGen")
    picture = webp(1024, 768)
    pic_url = bot.llm.add_file("job_727ef62f_00001_.webp", picture, "image/webp")
    bot.llm.enqueue(Raw.akashgen(pic_url, prompt=PROMPT))
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}")
    [photo] = await wait_media(bot, CHAT)
    assert photo.kind == "photo" and photo.text == PROMPT
    assert photo.file is not None and photo.file.data == picture
    assert bot.llm.image_requests == []
    [request] = bot.llm.chat_requests
    assert request["model"] == "AkashGen"
    assert request["messages"] == [{"role": "user", "content": PROMPT}]
    [row] = await usage_rows(bot)
    assert (row.model, row.status, row.images, row.size) == ("AkashGen", "ok", 1, "1024x768")


async def test_group_image_replies_to_the_request(harness: BotHarness) -> None:
    bot = await start(harness)
    bot.tg.user_message(chat_id=GROUP, chat_type="supergroup", text="/image@other_bot a cat")
    asked = bot.tg.user_message(
        chat_id=GROUP,
        chat_type="supergroup",
        chat_title="Team",
        text=f"/image@test_llm_bot {PROMPT}",
        user_id=42,
        first_name="Bob",
    )
    [photo] = await wait_media(bot, GROUP)
    assert photo.reply_to_message_id == asked["message"]["message_id"]
    assert photo.text == PROMPT
    await bot.idle()
    assert len(bot.llm.image_requests) == 1  # the command for another bot was left alone
    assert len(bot.tg.messages(GROUP)) == 1


async def test_reply_with_image_draws_the_replied_message(harness: BotHarness) -> None:
    bot = await start(harness)
    said = bot.tg.user_message(
        chat_id=GROUP, chat_type="supergroup", text="a castle made of cheese", user_id=41
    )
    bot.tg.user_message(
        chat_id=GROUP,
        chat_type="supergroup",
        text="/image",
        user_id=42,
        reply_to_message_id=said["message"]["message_id"],
    )
    [photo] = await wait_media(bot, GROUP)
    assert photo.text == "a castle made of cheese"
    assert bot.llm.image_requests[0]["prompt"] == "a castle made of cheese"


async def test_image_without_prompt_explains_usage(harness: BotHarness) -> None:
    bot = await start(harness)
    bot.tg.user_message(chat_id=CHAT, text="/image")
    await bot.wait_text(
        CHAT,
        "Describe the picture after the command, for example:\n"
        "/image a red fox sleeping in the snow, watercolour\n\n"
        "Or reply /image to a message to draw what it says.",
    )
    await bot.idle()
    assert bot.llm.image_requests == []


async def test_image_is_off_without_an_image_model(bot: BotHarness) -> None:
    assert "image" not in {c["command"] for c in bot.tg.commands_for()}
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}")
    await bot.wait_text(
        CHAT,
        "Image generation is not enabled on this bot. The bot's owner can turn it on by setting "
        "IMAGE_MODEL.",
    )
    assert bot.llm.image_requests == []


async def test_image_command_is_in_the_menu_when_enabled(harness: BotHarness) -> None:
    bot = await start(harness)
    assert "image" in {c["command"] for c in bot.tg.commands_for()}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (POLICY_ERROR, REFUSED),
        (
            Error.server_error(),
            SERVER_ERROR.format(
                detail="The server had an error while processing your request. Sorry about that!"
            ),
        ),
        (
            Error(404, {"error": "Not Found", "message": "Cannot POST /v1/images/generations"}),
            (
                "The image model “dall-e-3” is not available on the AI backend, or the backend "
                "cannot draw images. The bot's owner needs to change IMAGE_MODEL."
            ),
        ),
        (
            Error.invalid_api_key(),
            "The AI backend refused the bot's API key. The bot's owner needs to fix LLM_API_KEY.",
        ),
    ],
    ids=["content-policy", "server-error", "no-images-endpoint", "bad-key"],
)
async def test_backend_failures_are_explained(
    harness: BotHarness, reply: Error, expected: str
) -> None:
    bot = await start(harness)
    bot.llm.enqueue_image(reply)
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}", user_id=CHAT)
    await bot.wait_text(CHAT, expected)
    await bot.idle()
    assert bot.tg.calls_to("sendPhoto") == []
    [row] = await usage_rows(bot)
    assert (row.status, row.images, row.size) == ("error", 0, "1024x1024")
    assert row.error


async def test_akashgen_error_is_explained(harness: BotHarness) -> None:
    bot = await start(harness, image_model="AkashGen")
    bot.llm.enqueue(Error.akashchat("Image generation failed: no GPU available"))
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}")
    await bot.wait_text(
        CHAT, SERVER_ERROR.format(detail="Image generation failed: no GPU available")
    )


async def test_slow_backend_times_out_with_a_message(harness: BotHarness) -> None:
    bot = await start(harness, image_timeout=0.5)
    bot.llm.enqueue_image(Hang())
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}")
    await bot.wait_text(
        CHAT, "Drawing the image took too long (over 0.5 s). Please try again later."
    )
    assert bot.tg.calls_to("sendPhoto") == []


async def test_cooldown_counts_failed_requests_and_spares_the_owner(
    harness: BotHarness,
) -> None:
    bot = await start(harness, image_cooldown_seconds=3600, owner_ids=[7])
    bot.llm.enqueue_image(Error.server_error())
    bot.tg.user_message(chat_id=CHAT, text="/image one", user_id=CHAT)
    await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    bot.tg.user_message(chat_id=CHAT, text="/image two", user_id=CHAT)
    texts_now = await bot.wait_messages(CHAT, lambda t: len(t) == 2)
    assert texts_now[1] == (
        "Please wait a little between images: you can ask for the next one in 1 h."
    )
    assert len(bot.llm.image_requests) == 1

    # The same user is paced in every chat, the owner nowhere.
    bot.tg.user_message(chat_id=GROUP, chat_type="supergroup", text="/image three", user_id=CHAT)
    await bot.wait_messages(GROUP, lambda t: len(t) == 1 and "next one in" in t[0])
    for prompt in ("four", "five"):
        bot.tg.user_message(chat_id=7, text=f"/image {prompt}", user_id=7)
    await wait_media(bot, 7, count=2)
    assert len(bot.llm.image_requests) == 3


async def test_daily_limit_counts_successful_images(harness: BotHarness) -> None:
    bot = await start(harness, image_daily_limit=2)
    bot.llm.enqueue_image(POLICY_ERROR)
    for prompt in ("refused", "one", "two", "three"):
        bot.tg.user_message(chat_id=CHAT, text=f"/image {prompt}", user_id=CHAT)
    refusal = (
        "You have had your 2 images for the last 24 hours. You can ask for the next one in 1 d."
    )
    texts_now = await bot.wait_messages(CHAT, lambda t: len(t) == 4)
    assert texts_now == [REFUSED, "one", "two", refusal]
    assert len(bot.llm.image_requests) == 3


async def test_other_chats_are_answered_while_an_image_is_drawn(harness: BotHarness) -> None:
    bot = await start(harness)
    bot.llm.enqueue_image(ImageResult(b64=make_png(), delay=3))
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}")
    await bot.llm.wait_for_requests(1, path=IMAGES_PATH)
    bot.tg.user_message(chat_id=CHAT + 1, text="Hello there")
    await bot.wait_text(CHAT + 1, "You said: Hello there")
    assert bot.tg.calls_to("sendPhoto") == []  # the image is still being drawn
    [photo] = await wait_media(bot, CHAT)
    assert photo.text == PROMPT


async def test_picture_too_large_for_a_photo_is_sent_as_a_file(harness: BotHarness) -> None:
    bot = await start(harness)
    panorama = make_png(2100, 100)  # wider than 20:1, which Telegram refuses as a photo
    bot.llm.enqueue_image(ImageResult(b64=panorama))
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}")
    [document] = await wait_media(bot, CHAT)
    assert document.kind == "document" and document.text == PROMPT
    assert document.file is not None and document.file.data == panorama
    assert document.file.filename == "image.png"


async def test_long_prompt_is_drawn_whole_and_captioned_short(harness: BotHarness) -> None:
    bot = await start(harness)
    prompt = "a very detailed scene " * 70
    bot.tg.user_message(chat_id=CHAT, text=f"/image {prompt}")
    [photo] = await wait_media(bot, CHAT)
    assert len(photo.text) <= 1024 and photo.text.endswith("…")
    assert bot.llm.image_requests[0]["prompt"] == prompt.strip()


async def test_image_cut_short_by_a_restart_is_explained(harness: BotHarness) -> None:
    bot = await start(harness, shutdown_grace=0.2)
    bot.llm.enqueue_image(Hang())
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}")
    await bot.llm.wait_for_requests(1, path=IMAGES_PATH)
    await bot.stop()
    assert bot.texts(CHAT) == [
        "⚠️ The image was not finished: the bot was restarted. Please ask again."
    ]
    await bot.start(**NO_LIMITS, image_model="dall-e-3")
    [row] = await usage_rows(bot)
    assert (row.status, row.error) == ("error", "cancelled")


async def test_spent_cost_budget_stops_image_requests_before_the_backend(
    harness: BotHarness,
) -> None:
    bot = await start(harness, price_per_image=0.05, user_daily_cost=0.04)
    bot.llm.enqueue_image(ImageResult(b64=make_png(8, 8)))
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}", user_id=CHAT)
    await wait_media(bot, CHAT)
    bot.tg.user_message(chat_id=CHAT, text="/image another one", user_id=CHAT)
    await bot.tg.wait_for(
        lambda t: any(m.kind == "text" and "daily" in m.text for m in t.messages(CHAT))
    )
    assert len(bot.llm.image_requests) == 1  # the refused request cost nothing


# -- links the bot must not follow into its own network -----------------------------------------


class InternalHost:
    """A server on the bot's own network (another port of 127.0.0.1: not the backend's
    origin) holding a picture, and noting every request that reaches it."""

    def __init__(self, picture: bytes) -> None:
        self.picture = picture
        self.hits: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def serve(request: web.Request) -> web.Response:
            self.hits.append(request.path_qs)
            return web.Response(body=self.picture, content_type="image/png")

        app = web.Application()
        app.router.add_get("/{tail:.*}", serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def internal() -> AsyncIterator[InternalHost]:
    host = InternalHost(make_png(40, 30))
    await host.start()
    yield host
    await host.stop()


async def ask_for_link(bot: BotHarness, link: str, api: str) -> None:
    """Have the backend answer the next /image with `link`, as the images API or AkashGen."""
    if api == "chat":
        bot.llm.enqueue(Raw.akashgen(link, prompt=PROMPT))
    else:
        bot.llm.enqueue_image(ImageResult(url=link))
    bot.tg.user_message(chat_id=CHAT, text=f"/image {PROMPT}", user_id=CHAT)


@pytest.mark.parametrize("api", ["images", "chat"])
async def test_link_to_an_internal_host_is_refused(
    harness: BotHarness, internal: InternalHost, api: str
) -> None:
    bot = await start(harness, image_model="AkashGen" if api == "chat" else "gpt-image-1")
    await ask_for_link(bot, f"{internal.url}/latest/meta-data.png", api)
    await bot.wait_text(CHAT, LINK_REFUSED)
    await bot.idle()
    assert internal.hits == []
    assert bot.tg.calls_to("sendPhoto") == [] and bot.tg.calls_to("sendDocument") == []
    [row] = await usage_rows(bot)
    assert row.status == "error" and "refused" in row.error and "loopback" in row.error


async def test_backend_redirect_to_an_internal_host_is_refused(
    harness: BotHarness, internal: InternalHost
) -> None:
    bot = await start(harness, image_model="gpt-image-1")
    # The link is on the backend's own origin, which is trusted; where it leads is not.
    link = bot.llm.add_redirect("moved.png", f"{internal.url}/secret.png")
    await ask_for_link(bot, link, "images")
    await bot.wait_text(CHAT, LINK_REFUSED)
    await bot.idle()
    assert internal.hits == []
    assert len(bot.llm.requests_to("/files/moved.png")) == 1  # refused, so not retried
    assert bot.tg.calls_to("sendPhoto") == []


async def test_private_links_are_fetched_when_allowed(
    harness: BotHarness, internal: InternalHost
) -> None:
    bot = await start(harness, image_model="AkashGen", image_fetch_allow_private=True)
    await ask_for_link(bot, f"{internal.url}/pictures/fox.png", "chat")
    [photo] = await wait_media(bot, CHAT)
    assert photo.file is not None and photo.file.data == internal.picture
    # A redirect from the backend to the LAN host is followed too.
    link = bot.llm.add_redirect("moved.png", f"{internal.url}/pictures/moved.png")
    await ask_for_link(bot, link, "chat")
    await wait_media(bot, CHAT, count=2)
    assert internal.hits == ["/pictures/fox.png", "/pictures/moved.png"]


async def test_link_with_credentials_is_refused_without_a_crash(harness: BotHarness) -> None:
    bot = await start(harness, image_model="gpt-image-1")
    bot.llm.add_file("fox.png", make_png())
    link = bot.llm.file_url("fox.png").replace("http://", "http://user:pass@")
    await ask_for_link(bot, link, "images")
    await bot.wait_text(CHAT, LINK_REFUSED)
    await bot.idle()
    assert bot.llm.requests_to("/files/fox.png") == []
    [row] = await usage_rows(bot)
    assert "user name or password" in row.error
    # The bot goes on answering.
    bot.tg.user_message(chat_id=CHAT, text="Hello there", user_id=CHAT)
    await bot.wait_text(CHAT, "You said: Hello there")
