"""End-to-end: the bot against a Bot API that answers badly, refuses, or has moved the chat."""

from __future__ import annotations

import json
import logging

import pytest

from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Stream

CHAT = 1001
OLD_GROUP = -4242
SUPERGROUP = -1001234567890
ASKER = 42
TRUNCATED = '{"ok": true, "result": {"message_id"'
PARSE_ERROR = 'Bad Request: can\'t parse entities: Unsupported start tag "b" at byte offset 5'


def ok_false(code: int, description: str) -> str:
    """An error in Telegram's envelope, to be answered with HTTP 200."""
    return json.dumps({"ok": False, "error_code": code, "description": description})


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def history_of(body: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"]]


# ---- HTTP 200 with "ok": false ---------------------------------------------------------------


async def test_an_error_answered_with_http_200_is_the_error_it_describes(
    bot: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # A Bad Request about the formatting: the plain text instead, as after a real 400.
    bot.tg.answer_next_raw("sendMessage", ok_false(400, PARSE_ERROR), chat_id=CHAT)
    bot.llm.enqueue(Stream(["Some **bold** text."]))
    bot.tg.user_message(chat_id=CHAT, text="hi")
    # Plain for good if that was the final text, else formatted again by the final edit.
    shown = {"Some bold text.", "Some **bold** text."}
    await bot.wait_messages(CHAT, lambda texts: bool(texts) and texts[-1] in shown)
    await bot.idle()
    first, fallback = bot.tg.calls_to("sendMessage", CHAT)[:2]
    assert first.status == 200 and not first.ok
    assert fallback.ok and fallback.params.get("parse_mode") is None
    assert errors(caplog) == []


async def test_a_403_answered_with_http_200_stops_the_answer(
    bot: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    blocked = ok_false(403, "Forbidden: bot was blocked by the user")
    bot.tg.answer_next_raw("sendMessage", blocked, chat_id=CHAT, times=100)
    bot.llm.enqueue(Stream([f"w{i} " for i in range(6)], delay=0.1))
    bot.tg.user_message(chat_id=CHAT, text="hi")
    await bot.tg.wait_for(lambda t: bool(t.calls_to("sendMessage", CHAT)))
    await bot.idle()
    assert len(bot.tg.calls_to("sendMessage", CHAT)) == 1
    assert errors(caplog) == []


# ---- JSON cut short --------------------------------------------------------------------------


async def test_a_reply_cut_short_is_retried_and_the_answer_complete(
    edit_bot: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    bot = edit_bot
    caplog.set_level(logging.INFO)
    bot.tg.answer_next_raw("sendMessage", TRUNCATED, chat_id=CHAT)
    # More edits answered so than an answer this short makes: the final one meets them too,
    # and must be retried until it goes through.
    bot.tg.answer_next_raw("editMessageText", TRUNCATED, chat_id=CHAT, times=4)
    words = [f"w{i} " for i in range(8)]
    bot.llm.enqueue(Stream(words, delay=0.3))
    bot.tg.user_message(chat_id=CHAT, text="go")
    await bot.wait_text(CHAT, "".join(words).strip(), within=30)
    await bot.idle()
    assert bot.texts(CHAT) == ["".join(words).strip()]
    cut_short = [c for c in bot.tg.calls if c.chat_id == CHAT and c.status == 200 and not c.ok]
    assert [c.method for c in cut_short] == ["sendMessage"] + ["editMessageText"] * 4
    assert errors(caplog) == []


async def test_a_reply_cut_short_after_the_message_was_sent_loses_no_text(
    bot: BotHarness,
) -> None:
    # The Bot API cannot be asked whether a call took effect: resending may show a message
    # twice, but never loses one.
    bot.tg.answer_next_raw("sendMessage", TRUNCATED, chat_id=CHAT, after_processing=True)
    bot.llm.enqueue(Stream(["The answer."]))
    bot.tg.user_message(chat_id=CHAT, text="go")
    await bot.wait_text(CHAT, "The answer.")
    await bot.idle()
    assert set(bot.texts(CHAT)) == {"The answer."}


# ---- a group upgraded to a supergroup --------------------------------------------------------


async def ask_in_group(bot: BotHarness, chat_id: int, text: str, answer: str) -> None:
    bot.llm.enqueue(Stream([answer]))
    bot.tg.user_message(
        chat_id=chat_id,
        chat_type="group" if chat_id == OLD_GROUP else "supergroup",
        chat_title="Team",
        text=f"@test_llm_bot {text}",
        user_id=ASKER,
        first_name="Bob",
    )
    await bot.wait_text(chat_id, answer)
    await bot.idle()


async def start_group_conversation(bot: BotHarness) -> None:
    """A conversation in a basic group that uses a model of its own."""
    bot.tg.register_chat(OLD_GROUP, chat_type="group", title="Team")
    bot.tg.set_admins(OLD_GROUP, [], creator=ASKER)
    bot.tg.user_message(
        chat_id=OLD_GROUP,
        chat_type="group",
        chat_title="Team",
        text="/model gpt-4o",
        user_id=ASKER,
        first_name="Bob",
    )
    await bot.wait_messages(OLD_GROUP, lambda t: any("gpt-4o" in x for x in t))
    await ask_in_group(bot, OLD_GROUP, "my code is 7", "Noted: 7.")


async def continues_in_the_supergroup(bot: BotHarness, *earlier: tuple[str, str]) -> None:
    """The next question in the supergroup is answered with the group's history and model."""
    await ask_in_group(bot, SUPERGROUP, "what is my code?", "Your code is 7.")
    request = bot.llm.chat_requests[-1]
    assert request["model"] == "gpt-4o"
    assert history_of(request)[1:] == [*earlier, ("user", "Bob: what is my code?")]
    # The owner's report counts the group's requests under the supergroup alone.
    bot.tg.user_message(chat_id=9, user_id=9, text="/usage")
    texts = await bot.wait_messages(9, lambda t: any("Top chats" in x for x in t))
    report = "\n".join(texts)
    chats = report[report.index("Top chats this month by tokens:") :].split("\n\n")[0]
    assert chats.count("Team") == 1, chats
    assert f"id {SUPERGROUP}" in chats, chats


@pytest.mark.parametrize("announced", [False, True], ids=["error-only", "error-and-announcement"])
async def test_an_answer_in_a_group_upgraded_meanwhile_goes_to_the_supergroup(
    harness: BotHarness, caplog: pytest.LogCaptureFixture, announced: bool
) -> None:
    caplog.set_level(logging.INFO)
    await harness.start(owner_ids="9")
    await start_group_conversation(harness)
    # The question is on its way when the group is upgraded: the answer meets the error.
    harness.llm.enqueue(Stream(["Sure, ", "I will ", "remember."], delay=0.2))
    harness.tg.user_message(
        chat_id=OLD_GROUP,
        chat_type="group",
        chat_title="Team",
        text="@test_llm_bot remember it",
        user_id=ASKER,
        first_name="Bob",
    )
    harness.tg.upgrade_group(OLD_GROUP, new_chat_id=SUPERGROUP, user_id=ASKER, announce=announced)
    answer = await harness.wait_text(SUPERGROUP, "Sure, I will remember.")
    await harness.idle()
    # The group's messages have other ids in the supergroup: no reply to a stranger's message.
    assert answer.reply_to_message_id is None
    refused = harness.tg.calls_to("sendMessage", OLD_GROUP)[-1]
    assert refused.response["parameters"] == {"migrate_to_chat_id": SUPERGROUP}
    await continues_in_the_supergroup(
        harness,
        ("user", "Bob: my code is 7"),
        ("assistant", "Noted: 7."),
        ("user", "Bob: remember it"),
        ("assistant", "Sure, I will remember."),
    )
    assert errors(caplog) == []


async def test_the_upgrade_announcement_moves_the_chat(
    harness: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await harness.start(owner_ids="9")
    await start_group_conversation(harness)
    calls = len(harness.tg.calls)
    harness.tg.upgrade_group(OLD_GROUP, new_chat_id=SUPERGROUP, user_id=ASKER)
    await harness.idle()
    # The announcement itself is not answered.
    assert [c for c in harness.tg.calls[calls:] if c.chat_id == OLD_GROUP] == []
    await ask_in_group(harness, SUPERGROUP, "still there?", "Yes.")
    await continues_in_the_supergroup(
        harness,
        ("user", "Bob: my code is 7"),
        ("assistant", "Noted: 7."),
        ("user", "Bob: still there?"),
        ("assistant", "Yes."),
    )
    assert harness.tg.calls_to("sendMessage", OLD_GROUP)[-1].ok  # nothing met the error
    assert errors(caplog) == []


# ---- a message that cannot be edited ---------------------------------------------------------


async def test_an_answer_whose_message_cannot_be_edited_continues_in_a_new_one(
    bot: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bot.tg.fail_next(
        "editMessageText",
        status=400,
        description="Bad Request: message can't be edited",
        chat_id=CHAT,
        times=100,
    )
    words = ["one ", "two ", "three"]
    bot.llm.enqueue(Stream(words, delay=0.4))
    bot.tg.user_message(chat_id=CHAT, text="go")
    await bot.tg.wait_for(lambda t: bool(t.messages(CHAT)))
    await bot.idle()
    texts = bot.texts(CHAT)
    assert texts[-1] == "one two three"
    assert all("one two three".startswith(text) for text in texts)
    assert errors(caplog) == []


# ---- 403: blocked by the user, removed from the group ----------------------------------------


@pytest.mark.parametrize(
    ("chat_id", "chat_type", "text", "reason"),
    [
        (CHAT, "private", "hi", "bot was blocked by the user"),
        (OLD_GROUP, "group", "@test_llm_bot hi", "bot was kicked from the group chat"),
    ],
    ids=["blocked", "kicked"],
)
async def test_a_chat_that_refuses_the_bot_gets_no_further_call(
    bot: BotHarness,
    caplog: pytest.LogCaptureFixture,
    chat_id: int,
    chat_type: str,
    text: str,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO)
    bot.tg.register_chat(chat_id, chat_type=chat_type, title="Team")
    bot.tg.block_bot(chat_id)
    # Longer than the 4.5 s after which "typing…" would be renewed.
    bot.llm.enqueue(Stream([f"w{i} " for i in range(12)], delay=0.5))
    bot.tg.user_message(chat_id=chat_id, chat_type=chat_type, chat_title="Team", text=text)
    # The first text: a draft in a private chat, a message in a group.
    method = "sendMessageDraft" if chat_type == "private" else "sendMessage"
    await bot.tg.wait_for(lambda t: bool(t.calls_to(method, chat_id)))
    refused_at = bot.tg.calls_to(method, chat_id)[0].at
    await bot.idle(within=20)
    assert [c for c in bot.tg.calls if c.chat_id == chat_id and c.at > refused_at] == []
    assert len(bot.llm.chat_requests) == 1
    mentions = [r for r in caplog.records if reason in r.getMessage()]
    assert len(mentions) == 1
    assert logging.INFO <= mentions[0].levelno <= logging.WARNING
    assert errors(caplog) == []
