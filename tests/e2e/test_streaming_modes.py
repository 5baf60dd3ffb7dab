"""End-to-end: drafts in private chats, edits in groups, Stop in both, and /retry."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from bot.telegram import streaming
from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Error, Stream
from tests.fakes.telegram import SentMessage

CHAT = 2001
GROUP = -100900
ASKER = 501
MEMBER = 502
ADMIN = 503


def history_of(body: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"]]


def words(count: int) -> list[str]:
    return [f"w{i} " for i in range(count)]


async def wait_draft(bot: BotHarness, chat_id: int, *, min_text: int = 1) -> None:
    await bot.tg.wait_for(
        lambda t: (d := t.visible_draft(chat_id)) is not None and len(d.text) >= min_text,
        timeout=10,
    )


async def answer_of(bot: BotHarness, query: dict) -> dict:
    query_id = query["callback_query"]["id"]
    await bot.tg.wait_for(lambda t: query_id in t.callback_answers, timeout=10)
    return bot.tg.callback_answers[query_id]


def stop_data(message_markup: dict | None) -> str | None:
    if not message_markup:
        return None
    data = [b["callback_data"] for row in message_markup["inline_keyboard"] for b in row]
    return next((d for d in data if d.startswith("stop:")), None)


async def test_private_answer_grows_in_one_draft_then_is_sent_formatted(bot: BotHarness) -> None:
    chunks = ["Here is ", "**bold** ", "and `code`", " and more", " text."]
    bot.llm.enqueue(Stream(chunks, delay=0.4))
    bot.tg.user_message(chat_id=CHAT, text="Hello!")
    message = await bot.wait_text(CHAT, "Here is bold and code and more text.")

    drafts = bot.tg.drafts(CHAT)
    assert len(drafts) >= 2, "the answer did not grow in a draft"
    assert len({d.draft_id for d in drafts}) == 1 and drafts[0].draft_id != 0
    assert all(d.can_stop for d in drafts)
    texts = [d.text for d in drafts]
    assert all(a != b and b.startswith(a.rstrip()) for a, b in itertools.pairwise(texts))
    assert {"bold", "code"} <= {e["type"] for e in drafts[-1].entities}, "drafts are formatted"
    # Persisted by one formatted message; no message was sent or edited while streaming.
    assert len(bot.tg.messages(CHAT)) == 1
    assert not bot.tg.calls_to("editMessageText", CHAT)
    assert {"bold", "code"} <= {e["type"] for e in message.entities}
    assert message.reply_markup is None
    assert bot.tg.visible_draft(CHAT) is None
    assert bot.tg.flood.violations == 0


async def test_a_long_pause_refreshes_the_draft_before_it_fades(
    bot: BotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streaming, "DRAFT_REFRESH_SECONDS", 0.3)
    bot.llm.enqueue(Stream(["Thinking about it", " and done."], delay=1.5))
    bot.tg.user_message(chat_id=CHAT, text="Hm?")
    await bot.wait_text(CHAT, "Thinking about it and done.")
    same = [d for d in bot.tg.drafts(CHAT) if d.text == "Thinking about it"]
    assert len(same) >= 2, "the draft was not shown again during the pause"


async def test_a_long_answer_is_split_into_messages_while_the_rest_streams(
    bot: BotHarness,
) -> None:
    paragraph = "word " * 150  # 750 characters
    chunks = [paragraph.strip() + "\n\n" for _ in range(8)]  # about 6,000 characters
    bot.llm.enqueue(Stream(chunks, delay=0.15))
    bot.tg.user_message(chat_id=CHAT, text="Long, please")
    await bot.wait_messages(CHAT, lambda t: len(t) == 2, within=20)
    await bot.idle()
    texts = bot.texts(CHAT)
    assert "\n\n".join(texts).split() == "".join(chunks).split(), "text was lost or repeated"
    assert all(len(t) <= 4096 for t in texts)
    assert bot.tg.drafts(CHAT), "drafts were not used"


async def test_group_answer_is_edited_with_a_stop_button_that_goes_away(
    bot: BotHarness,
) -> None:
    bot.llm.enqueue(Stream(words(12), delay=0.4))
    bot.tg.user_message(
        chat_id=GROUP, chat_type="supergroup", text="@test_llm_bot count", user_id=ASKER
    )
    await bot.tg.wait_for(lambda t: bool(t.messages(GROUP)), timeout=10)
    streaming_message = bot.tg.messages(GROUP)[0]
    assert stop_data(streaming_message.reply_markup), "no Stop button while streaming"
    await bot.wait_text(GROUP, "".join(words(12)).strip(), within=20)
    assert bot.tg.messages(GROUP)[0].reply_markup is None, "the Stop button stayed"
    assert not bot.tg.calls_to("sendMessageDraft"), "drafts are private-only"


async def test_stop_in_a_draft_cancels_the_backend_and_keeps_the_partial_answer(
    bot: BotHarness,
) -> None:
    bot.llm.enqueue(Stream(words(100), delay=0.1))
    bot.tg.user_message(chat_id=CHAT, text="Count to 100")
    await wait_draft(bot, CHAT, min_text=10)
    bot.tg.stop_generation(CHAT)
    stopped_at = asyncio.get_running_loop().time()

    await bot.tg.wait_for(lambda t: bool(t.messages(CHAT)), timeout=10)
    await bot.tg.wait_for(lambda t: bot.llm.requests[-1].finished_at is not None, timeout=5)
    assert bot.llm.requests[-1].disconnected, "the backend's connection was not closed"
    assert asyncio.get_running_loop().time() - stopped_at < 2
    await bot.idle()
    [final] = bot.texts(CHAT)
    assert final.startswith("w0 w1 ") and "w99" not in final
    assert final.endswith("⏹ stopped")
    partial = final.removesuffix("⏹ stopped").strip()

    # The partial answer is what the assistant said.
    bot.llm.enqueue(Stream(["OK."]))
    bot.tg.user_message(chat_id=CHAT, text="Go on")
    await bot.wait_messages(CHAT, lambda t: t[-1] == "OK.")
    history = [(role, text.strip()) for role, text in history_of(bot.llm.chat_requests[-1])]
    assert history[1:] == [("user", "Count to 100"), ("assistant", partial), ("user", "Go on")]
    # Its usage is recorded, estimated (the backend never sent figures).
    bot.tg.user_message(chat_id=CHAT, text="/usage")
    usage = await bot.wait_messages(CHAT, lambda t: "Today" in t[-1])
    assert "≈" in usage[-1]


async def test_a_slow_model_can_be_stopped_while_it_is_thinking(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["Too late."], first_delay=30))
    bot.tg.user_message(chat_id=CHAT, text="Think hard")
    await bot.tg.wait_for(lambda t: t.visible_draft(CHAT) is not None, timeout=10)
    placeholder = bot.tg.visible_draft(CHAT)
    assert placeholder is not None and placeholder.text == "" and placeholder.can_stop
    bot.tg.stop_generation(CHAT)
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "Stopped before the answer began" in texts[0]
    await bot.tg.wait_for(lambda t: bot.llm.requests[-1].finished_at is not None, timeout=3)
    assert bot.llm.requests[-1].disconnected


async def long_group_answer(bot: BotHarness) -> tuple[SentMessage, str]:
    """ASKER asks in a group with ADMIN as administrator; the streaming message and its Stop."""
    bot.tg.register_chat(GROUP, chat_type="supergroup", title="Team")
    bot.tg.set_admins(GROUP, [ADMIN])
    group = {"chat_type": "supergroup", "chat_title": "Team"}
    bot.llm.enqueue(Stream(words(100), delay=0.1))
    bot.tg.user_message(chat_id=GROUP, text="@test_llm_bot count", user_id=ASKER, **group)
    await bot.tg.wait_for(lambda t: bool(t.messages(GROUP)), timeout=10)
    message = bot.tg.messages(GROUP)[0]
    data = stop_data(message.reply_markup)
    assert data is not None, "no Stop button while streaming"
    return message, data


async def test_stop_button_in_a_group_obeys_only_the_asker_or_an_admin(
    bot: BotHarness,
) -> None:
    message, data = await long_group_answer(bot)

    refused = bot.tg.callback_query(
        chat_id=GROUP, message_id=message.message_id, data=data, user_id=MEMBER
    )
    assert "Only the person who asked" in (await answer_of(bot, refused))["text"]
    await asyncio.sleep(0.5)
    assert bot.llm.requests[-1].finished_at is None, "a stranger stopped the answer"

    pressed = bot.tg.callback_query(
        chat_id=GROUP, message_id=message.message_id, data=data, user_id=ASKER
    )
    assert (await answer_of(bot, pressed))["text"] == "Stopped."
    await bot.tg.wait_for(lambda t: bot.llm.requests[-1].finished_at is not None, timeout=3)
    assert bot.llm.requests[-1].disconnected
    await bot.idle()
    final = bot.tg.messages(GROUP)[0]
    assert final.text.endswith("⏹ stopped") and "w99" not in final.text
    assert final.reply_markup is None

    # After the answer, a Stop changes nothing.
    late = bot.tg.callback_query(
        chat_id=GROUP, message_id=message.message_id, data=data, user_id=ASKER
    )
    assert (await answer_of(bot, late))["text"] == "This answer has already finished."
    assert bot.tg.messages(GROUP)[0].text == final.text


async def test_an_admin_may_stop_someone_elses_answer(bot: BotHarness) -> None:
    message, data = await long_group_answer(bot)
    pressed = bot.tg.callback_query(
        chat_id=GROUP, message_id=message.message_id, data=data, user_id=ADMIN
    )
    assert (await answer_of(bot, pressed))["text"] == "Stopped."
    await bot.tg.wait_for(lambda t: t.messages(GROUP)[0].text.endswith("⏹ stopped"), timeout=5)


async def test_stop_with_edits_in_a_private_chat(harness: BotHarness) -> None:
    await harness.start(stream_mode="edit")
    harness.llm.enqueue(Stream(words(100), delay=0.1))
    harness.tg.user_message(chat_id=CHAT, text="count")
    await harness.tg.wait_for(lambda t: bool(t.messages(CHAT)), timeout=10)
    message = harness.tg.messages(CHAT)[0]
    data = stop_data(message.reply_markup)
    assert data is not None
    pressed = harness.tg.callback_query(chat_id=CHAT, message_id=message.message_id, data=data)
    assert (await answer_of(harness, pressed))["text"] == "Stopped."
    await harness.tg.wait_for(lambda t: t.messages(CHAT)[0].text.endswith("⏹ stopped"), timeout=5)
    assert not harness.tg.calls_to("sendMessageDraft")
    assert harness.llm.requests[-1].disconnected


async def test_drafts_refused_by_the_server_fall_back_to_edits_and_are_remembered(
    bot: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bot.tg.supports_drafts = False
    bot.llm.enqueue(Stream(words(10), delay=0.3), Stream(words(6), delay=0.3))
    bot.tg.user_message(chat_id=CHAT, text="first")
    await bot.wait_text(CHAT, "".join(words(10)).strip(), within=20)
    assert bot.tg.calls_to("editMessageText", CHAT), "the answer did not go on by edits"
    bot.tg.user_message(chat_id=CHAT, text="second")
    await bot.wait_messages(CHAT, lambda t: t[-1] == "".join(words(6)).strip(), within=20)
    assert len(bot.tg.calls_to("sendMessageDraft")) == 1, "the refusal was not remembered"
    warned = [r for r in caplog.records if "sendMessageDraft" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING]


async def test_the_final_message_after_drafts_survives_a_429(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(words(8), delay=0.2))
    bot.tg.fail_next(
        "sendMessage",
        status=429,
        description="Too Many Requests: retry after 1",
        retry_after=1,
        chat_id=CHAT,
    )
    bot.tg.user_message(chat_id=CHAT, text="count")
    await bot.wait_text(CHAT, "".join(words(8)).strip(), within=20)
    assert [c.status for c in bot.tg.calls_to("sendMessage", CHAT)][:1] == [429]


async def test_retry_replaces_the_last_answer_in_history(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["Blue."]), Stream(["Green."]), Stream(["Noted."]))
    bot.tg.user_message(chat_id=CHAT, text="Pick a colour")
    await bot.wait_text(CHAT, "Blue.")
    bot.tg.user_message(chat_id=CHAT, text="/retry")
    await bot.wait_text(CHAT, "Green.")
    assert history_of(bot.llm.chat_requests[1])[1:] == [("user", "Pick a colour")]
    bot.tg.user_message(chat_id=CHAT, text="Thanks")
    await bot.wait_text(CHAT, "Noted.")
    assert history_of(bot.llm.chat_requests[2])[1:] == [
        ("user", "Pick a colour"),
        ("assistant", "Green."),
        ("user", "Thanks"),
    ]


async def test_a_failed_retry_keeps_the_old_answer(bot: BotHarness) -> None:
    invalid = {"error": {"message": "Invalid request", "type": "invalid_request_error"}}
    refused = Error(400, invalid)
    bot.llm.enqueue(Stream(["Blue."]), refused, Stream(["Noted."]))
    bot.tg.user_message(chat_id=CHAT, text="Pick a colour")
    await bot.wait_text(CHAT, "Blue.")
    bot.tg.user_message(chat_id=CHAT, text="/retry")
    await bot.wait_messages(CHAT, lambda t: len(t) == 2)
    bot.tg.user_message(chat_id=CHAT, text="Thanks")
    await bot.wait_text(CHAT, "Noted.")
    assert history_of(bot.llm.chat_requests[-1])[1:] == [
        ("user", "Pick a colour"),
        ("assistant", "Blue."),
        ("user", "Thanks"),
    ]


async def test_retry_without_a_conversation_says_so(bot: BotHarness) -> None:
    bot.tg.user_message(chat_id=CHAT, text="/retry")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "no answer to regenerate" in texts[0]
    assert not bot.llm.chat_requests


async def test_retry_in_a_group_keeps_the_author_and_answers_the_one_who_retried(
    bot: BotHarness,
) -> None:
    group = {"chat_type": "supergroup", "chat_title": "Team"}
    bot.llm.enqueue(Stream(["Four."]), Stream(["It is four."]))
    bot.tg.user_message(
        chat_id=GROUP, text="@test_llm_bot 2+2?", user_id=ASKER, first_name="Ann", **group
    )
    await bot.wait_text(GROUP, "Four.")
    retried = bot.tg.user_message(
        chat_id=GROUP, text="/retry@test_llm_bot", user_id=MEMBER, first_name="Bob", **group
    )
    message = await bot.wait_text(GROUP, "It is four.")
    assert history_of(bot.llm.chat_requests[1])[-1] == ("user", "Ann: 2+2?")
    assert message.reply_to_message_id == retried["message"]["message_id"]


async def test_retry_is_in_the_command_menu_in_every_language(bot: BotHarness) -> None:
    for language in ("", "ru", "zh"):
        commands = bot.tg.commands_for(language_code=language)
        menu = {c["command"]: c["description"] for c in commands}
        assert menu.get("retry"), f"/retry is missing from the {language or 'default'} menu"
    assert bot.tg.commands_for(language_code="ru") != bot.tg.commands_for()
