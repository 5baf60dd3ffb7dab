"""End-to-end: photos and image files go to the model as OpenAI content parts."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Error, Stream, make_png

CHAT = 4001
GROUP = -100400
GROUP_FIELDS: dict[str, Any] = {"chat_type": "supergroup", "chat_title": "Team"}

SMALL = make_png(8, 8, (10, 20, 30))
MEDIUM = make_png(64, 48, (200, 100, 50))
LARGE = make_png(400, 300, (1, 2, 3))


def photo_sizes(bot: BotHarness, *versions: bytes) -> list[dict[str, Any]]:
    """Telegram's PhotoSize array for one photo kept in several sizes, smallest first."""
    sizes = []
    for number, data in enumerate(versions):
        file_id = bot.tg.add_file(data, file_path="photos/file")
        sizes.append(
            {
                "file_id": file_id,
                "file_unique_id": f"U{file_id}",
                "width": 90 * (number + 1),
                "height": 60 * (number + 1),
                "file_size": len(data),
            }
        )
    return sizes


def send_photo(
    bot: BotHarness,
    *versions: bytes,
    caption: str | None = None,
    chat_id: int = CHAT,
    **fields: Any,
) -> int:
    extra: dict[str, Any] = {"photo": photo_sizes(bot, *versions)}
    if caption is not None:
        extra["caption"] = caption
    update = bot.tg.user_message(chat_id=chat_id, **fields, **extra)
    return int(update["message"]["message_id"])


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def parts_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    assert isinstance(content, list), content
    return content


async def test_a_photo_goes_as_text_and_image_parts_and_history_keeps_a_placeholder(
    harness: BotHarness,
) -> None:
    await harness.start(vision_max_bytes=len(MEDIUM) + 10)
    harness.llm.enqueue(Stream(["A brown square."]))
    send_photo(harness, SMALL, MEDIUM, LARGE, caption="What is this?")
    await harness.wait_text(CHAT, "A brown square.")
    asked = harness.llm.chat_requests[0]["messages"][-1]
    assert asked["role"] == "user"
    # The largest size within VISION_MAX_BYTES, as a base64 data URL after the question.
    assert parts_of(asked) == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": data_url(MEDIUM)}},
    ]
    # Later requests carry a short placeholder, not the picture again.
    harness.llm.enqueue(Stream(["Brown."]))
    harness.tg.user_message(chat_id=CHAT, text="Which colour again?")
    await harness.wait_text(CHAT, "Brown.")
    history = harness.llm.chat_requests[1]["messages"]
    assert history[1] == {"role": "user", "content": "[image] What is this?"}
    assert all(isinstance(m["content"], str) for m in history)


async def test_kept_images_are_sent_again_with_later_questions(harness: BotHarness) -> None:
    await harness.start(vision_keep_images=True)
    harness.llm.enqueue(Stream(["A square."]))
    send_photo(harness, SMALL)  # no caption: the picture alone is the question
    await harness.wait_text(CHAT, "A square.")
    assert parts_of(harness.llm.chat_requests[0]["messages"][-1]) == [
        {"type": "image_url", "image_url": {"url": data_url(SMALL)}}
    ]
    harness.llm.enqueue(Stream(["Dark blue."]))
    harness.tg.user_message(chat_id=CHAT, text="What colour is it?")
    await harness.wait_text(CHAT, "Dark blue.")
    earlier = harness.llm.chat_requests[1]["messages"][1]
    assert parts_of(earlier) == [
        {"type": "text", "text": "[image]"},
        {"type": "image_url", "image_url": {"url": data_url(SMALL)}},
    ]
    # /reset forgets kept pictures with their turns.
    harness.tg.user_message(chat_id=CHAT, text="/reset")
    harness.llm.enqueue(Stream(["Fresh."]))
    harness.tg.user_message(chat_id=CHAT, text="Hi")
    await harness.wait_text(CHAT, "Fresh.")
    assert len(harness.llm.chat_requests[2]["messages"]) == 2


async def test_an_image_file_is_read_by_its_bytes_not_its_name(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["A chart."]))
    file_id = bot.tg.add_file(MEDIUM, file_path="documents/chart.png")
    document = {"file_id": file_id, "file_unique_id": "Uc", "file_name": "chart.png"}
    bot.tg.user_message(
        chat_id=CHAT, document=document | {"mime_type": "image/png"}, caption="Explain"
    )
    await bot.wait_text(CHAT, "A chart.")
    asked = bot.llm.chat_requests[0]["messages"][-1]
    assert parts_of(asked)[1]["image_url"]["url"] == data_url(MEDIUM)
    # A file calling itself a PNG that is not one is refused without a backend call.
    fake_id = bot.tg.add_file(b"<html>not a picture</html>", file_path="documents/x.png")
    fake = {"file_id": fake_id, "file_unique_id": "Ux", "file_name": "x.png"}
    bot.tg.user_message(chat_id=CHAT, document=fake | {"mime_type": "image/png"})
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 2)
    assert "JPEG, PNG and WebP" in texts[1]
    await bot.idle()
    assert len(bot.llm.chat_requests) == 1
    # History names the file the picture came in.
    bot.llm.enqueue(Stream(["Yes."]))
    bot.tg.user_message(chat_id=CHAT, text="Still there?")
    await bot.wait_text(CHAT, "Yes.")
    assert bot.llm.chat_requests[1]["messages"][1]["content"] == "[image: chart.png] Explain"


async def test_a_picture_too_large_in_every_size_is_refused_before_downloading(
    harness: BotHarness,
) -> None:
    await harness.start(vision_max_bytes=len(SMALL) - 1)
    send_photo(harness, SMALL, MEDIUM, caption="What is it?")
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "too large" in texts[0]
    assert not harness.tg.calls_to("getFile")
    assert not harness.llm.chat_requests


async def test_in_a_group_a_photo_needs_a_mention_or_a_reply(bot: BotHarness) -> None:
    photo_id = send_photo(bot, SMALL, caption="our logo", chat_id=GROUP, **GROUP_FIELDS)
    bot.llm.enqueue(Stream(["It is a logo."]))
    send_photo(bot, MEDIUM, caption="@test_llm_bot what is this?", chat_id=GROUP, **GROUP_FIELDS)
    await bot.wait_text(GROUP, "It is a logo.")
    first = bot.llm.chat_requests[0]["messages"][-1]
    assert parts_of(first)[0] == {"type": "text", "text": "Alice: what is this?"}
    # A question replying to an earlier photo asks about that photo.
    bot.llm.enqueue(Stream(["Dark blue."]))
    bot.tg.user_message(
        chat_id=GROUP,
        text="@test_llm_bot which colour is it?",
        reply_to_message_id=photo_id,
        **GROUP_FIELDS,
    )
    await bot.wait_text(GROUP, "Dark blue.")
    await bot.idle()
    assert len(bot.llm.chat_requests) == 2
    second = parts_of(bot.llm.chat_requests[1]["messages"][-1])
    assert second == [
        {"type": "text", "text": "Alice: which colour is it?"},
        {"type": "image_url", "image_url": {"url": data_url(SMALL)}},
    ]


async def test_a_model_listed_without_vision_is_not_sent_the_picture(
    harness: BotHarness,
) -> None:
    # LiteLLM's model info says which models read pictures; the list is loaded at start.
    harness.llm.models = [
        {"id": "gpt-4o-mini", "supports_vision": False},
        {"id": "llava-13b", "supports_vision": True},
        {"id": "text-only", "supports_vision": False},
    ]
    await harness.start()
    bot = harness
    await bot.tg.wait_for(lambda _: bot.llm.models_requests >= 1, timeout=10)
    send_photo(bot, SMALL, caption="What is this?")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "cannot read pictures" in texts[0]
    assert "llava-13b" in texts[0] and "text-only" not in texts[0]
    await bot.idle()
    assert not bot.llm.chat_requests
    # Nothing was stored as answered: the next question comes without history.
    bot.llm.enqueue(Stream(["Hello."]))
    bot.tg.user_message(chat_id=CHAT, text="Hi")
    await bot.wait_text(CHAT, "Hello.")
    assert len(bot.llm.chat_requests[0]["messages"]) == 2


async def test_a_backend_refusing_pictures_gets_a_clear_message_and_nothing_stored(
    bot: BotHarness,
) -> None:
    bot.llm.models = ["gpt-4o-mini", "gpt-4o"]
    refusal = {
        "error": {
            "message": "Invalid content type. image_url is only supported by certain models.",
            "type": "invalid_request_error",
            "param": "messages.[1].content.[1].type",
            "code": None,
        }
    }
    bot.llm.enqueue(Error(400, refusal))
    send_photo(bot, SMALL, caption="What is this?")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "cannot read pictures" in texts[0]
    assert "gpt-4o" in texts[0].split("\n")[-1]
    bot.llm.enqueue(Stream(["Hello."]))
    bot.tg.user_message(chat_id=CHAT, text="Hi")
    await bot.wait_text(CHAT, "Hello.")
    assert len(bot.llm.chat_requests[1]["messages"]) == 2


async def test_with_a_local_bot_api_server_files_are_read_from_its_disk(
    harness: BotHarness, tmp_path: Path
) -> None:
    # getFile answers an absolute path; the server's HTTP file endpoint does not serve it.
    harness.tg.local_files_dir = tmp_path
    await harness.start(telegram_api_local=True)
    harness.llm.enqueue(Stream(["Read from disk."]))
    send_photo(harness, SMALL, caption="What is it?")
    await harness.wait_text(CHAT, "Read from disk.")
    parts = parts_of(harness.llm.chat_requests[0]["messages"][-1])
    assert parts[1]["image_url"]["url"] == data_url(SMALL)
