"""End-to-end: every button press gets exactly one answer, and forged ones change nothing.

A modified client can send any callback data for any message it sees, and a stale keyboard
sends data an older version of the bot wrote. Telegram shows a spinner under the button until
the bot answers the press, so each press must be answered, with the reason where it helps.
"""

from __future__ import annotations

import base64
import contextlib
import random
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import BotHarness
from tests.fakes.telegram import SentMessage

# What the bot says, in English (the fake's users write from English Telegram apps).
OUTDATED = "This list is outdated, send /model again."
LANGUAGE_OUTDATED = "These buttons are outdated, send /language again."
STALE = "This button is outdated."
NOT_FOR_YOU = "This button is not for you."
ADMINS_ONLY = "Only the group's administrators can change the model."
REFUSED = "Sorry, this bot is private and you are not on its list of users."
FAILED = "Something went wrong while answering. Please try again."

ALICE = 1001  # her private chat has the same id
BOB = 1002
GROUP = -100555
ADMIN, MEMBER, OUTSIDER, OWNER = 61, 62, 63, 99
STRANGER = 666  # not in ALLOWED_USER_IDS
ALLOWED = [ALICE, BOB, ADMIN, MEMBER, OUTSIDER]
GROUP_CHAT: dict[str, Any] = {"chat_type": "supergroup", "chat_title": "Team"}


@dataclass(frozen=True)
class Forged:
    """One forged press: who presses what data under which message, and the expected answer."""

    kind: str
    message: SentMessage
    data: str
    user_id: int
    expected: str | None  # the answer's text; None: answered, whatever it says
    inaccessible: bool = False


def data_of(message: SentMessage, caption: str) -> str:
    """The callback data of the button whose caption is exactly `caption`."""
    rows = (message.reply_markup or {})["inline_keyboard"]
    return str(next(b for row in rows for b in row if b["text"] == caption)["callback_data"])


async def keyboards(bot: BotHarness, chat_id: int, count: int) -> list[SentMessage]:
    """Wait until the chat shows `count` bot messages with inline keyboards; return them."""
    await bot.tg.wait_for(
        lambda t: sum(1 for m in t.live_messages(chat_id) if m.reply_markup) >= count
    )
    return [m for m in bot.tg.live_messages(chat_id) if m.reply_markup]


def answers_to(bot: BotHarness, query_id: str) -> list[dict[str, Any]]:
    """The parameters of every answerCallbackQuery call for one press."""
    return [
        call.params
        for call in bot.tg.calls_to("answerCallbackQuery")
        if str(call.params.get("callback_query_id")) == query_id
    ]


async def press_all(bot: BotHarness, presses: list[Forged]) -> dict[str, str]:
    """Send every press at once; return each one's query id by kind once the bot is idle."""
    ids = {}
    for press in presses:
        update = bot.tg.callback_query(
            chat_id=press.message.chat_id,
            message_id=press.message.message_id,
            data=press.data,
            user_id=press.user_id,
            inaccessible=press.inaccessible,
        )
        ids[press.kind] = update["callback_query"]["id"]
    # Unanswered presses are the defect under test: wait for them only so long, then report.
    with contextlib.suppress(AssertionError):
        await bot.tg.wait_for(lambda t: all(i in t.callback_answers for i in ids.values()), 5)
    await bot.idle()
    return ids


def problems(bot: BotHarness, presses: list[Forged], ids: dict[str, str]) -> list[str]:
    """What went wrong with each press: no answer, several, or not the expected text."""
    found = []
    for press in presses:
        answers = answers_to(bot, ids[press.kind])
        if len(answers) != 1:
            found.append(f"{press.kind}: {len(answers)} answers")
        elif press.expected is not None and answers[0].get("text") != press.expected:
            found.append(f"{press.kind}: answered {answers[0].get('text')!r}")
        elif len(answers[0].get("text") or "") > 200:
            found.append(f"{press.kind}: answer longer than 200 characters")
    return found


async def test_forged_presses_are_all_answered_and_change_nothing(harness: BotHarness) -> None:
    # Group pacing would make this test slow; the fake still enforces its per-minute limits.
    await harness.start(owner_ids=[OWNER], allowed_user_ids=ALLOWED, edit_interval_group=0.2)
    tg = harness.tg
    tg.register_chat(GROUP, **{"chat_type": "supergroup", "title": "Team"})
    tg.set_admins(GROUP, [ADMIN])
    tg.user_message(chat_id=ALICE, text="/model")
    [models] = await keyboards(harness, ALICE, 1)
    tg.user_message(chat_id=ALICE, text="/language")
    languages = (await keyboards(harness, ALICE, 2))[1]
    tg.user_message(chat_id=GROUP, text="/model", user_id=MEMBER, **GROUP_CHAT)
    [group_models] = await keyboards(harness, GROUP, 1)
    tg.user_message(chat_id=GROUP, text="/language", user_id=MEMBER, **GROUP_CHAT)
    group_languages = (await keyboards(harness, GROUP, 2))[1]
    await harness.idle()

    gpt4o = data_of(models, "gpt-4o")
    version = gpt4o.split(":")[1]
    russian = data_of(languages, "Русский")
    noise = base64.b64encode(random.Random(25).randbytes(48)).decode()  # 64 bytes, no ":"
    presses = [
        # data no version of the bot ever wrote
        Forged("unknown data", models, "hello", ALICE, STALE),
        Forged("'m:'", models, "m:", ALICE, STALE),
        Forged("'lang:xx'", languages, "lang:xx", ALICE, STALE),
        Forged("64 random bytes", models, noise, ALICE, STALE),
        Forged("group: unknown data", group_models, "x:y:z", MEMBER, STALE),
        # malformed data with the bot's own prefixes
        Forged("'mdl:'", models, "mdl:", ALICE, OUTDATED),
        Forged("model index not a number", models, f"mdl:{version}:x", ALICE, OUTDATED),
        Forged("negative model index", models, f"mdl:{version}:-1", ALICE, OUTDATED),
        Forged("model index out of range", models, f"mdl:{version}:999", ALICE, OUTDATED),
        Forged("page not a number", models, f"mdp:{version}:x", ALICE, OUTDATED),
        Forged("page counter with data", models, "mdn:1", ALICE, OUTDATED),
        Forged("unknown language", languages, f"lng:xx:{ALICE}", ALICE, LANGUAGE_OUTDATED),
        Forged("language for a bad user", languages, "lng:ru:abc", ALICE, LANGUAGE_OUTDATED),
        # stale keyboards: an earlier model list, an earlier bot version, a message too old
        Forged("model list of another version", models, "mdl:0ld:0", ALICE, OUTDATED),
        Forged("page of another version", models, "mdp:0ld:1", ALICE, OUTDATED),
        Forged("language keyboard of an older bot", languages, "lng:ru", ALICE, LANGUAGE_OUTDATED),
        Forged("message too old", models, gpt4o, ALICE, OUTDATED, inaccessible=True),
        # a keyboard of another user, or of another chat
        Forged("another user's model picker", models, gpt4o, BOB, NOT_FOR_YOU),
        Forged("another user's page arrow", models, f"mdp:{version}:0", BOB, NOT_FOR_YOU),
        Forged("another user's language picker", languages, russian, BOB, NOT_FOR_YOU),
        Forged(
            "another chat's language button",
            languages,
            data_of(group_languages, "Русский"),
            ALICE,
            NOT_FOR_YOU,
        ),
        Forged(
            "a member's language picker in the group",
            group_languages,
            data_of(group_languages, "中文"),
            ADMIN,
            NOT_FOR_YOU,
        ),
        # groups: only administrators switch the model
        Forged("group member", group_models, gpt4o, MEMBER, ADMINS_ONLY),
        Forged("not in the group", group_models, gpt4o, OUTSIDER, ADMINS_ONLY),
        Forged("group member, bad index", group_models, f"mdl:{version}:999", MEMBER, ADMINS_ONLY),
        # users not in ALLOWED_USER_IDS
        Forged("stranger, a real button", models, gpt4o, STRANGER, REFUSED),
        Forged("stranger, unknown data", group_models, "hello", STRANGER, REFUSED),
        Forged("stranger, group picker", group_models, gpt4o, STRANGER, REFUSED),
    ]
    sent = {chat: len(tg.messages(chat)) for chat in (ALICE, BOB, GROUP, STRANGER)}

    ids = await press_all(harness, presses)

    found = problems(harness, presses, ids)
    assert found == [], f"{len(found)} of {len(presses)} presses went wrong:\n" + "\n".join(found)
    assert harness.app is not None
    model_service = harness.app.dispatcher["model_service"]
    language_service = harness.app.dispatcher["language_service"]
    assert await model_service.current(chat_id=ALICE) == "gpt-4o-mini"
    assert await model_service.current(chat_id=GROUP) == "gpt-4o-mini"
    for user_id in (ALICE, BOB, ADMIN, MEMBER, STRANGER):
        assert await language_service.chosen(user_id=user_id) is None
    edited = [m.text for c in sent for m in tg.messages(c) if m.edits or m.markup_edits]
    assert edited == []
    assert {chat: len(tg.messages(chat)) for chat in sent} == sent  # alerts, not messages
    assert models.text.startswith("This chat uses gpt-4o-mini.")


async def test_a_press_whose_handler_fails_gets_one_answer(
    bot: BotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.tg.user_message(chat_id=ALICE, text="/model")
    [models] = await keyboards(bot, ALICE, 1)
    assert bot.app is not None
    model_service = bot.app.dispatcher["model_service"]

    async def broken(**kwargs: Any) -> None:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(model_service, "choose", broken)
    press = Forged("failing handler", models, data_of(models, "gpt-4o"), ALICE, FAILED)
    ids = await press_all(bot, [press])

    assert problems(bot, [press], ids) == []
    assert bot.tg.callback_answers[ids[press.kind]]["show_alert"] is True
    assert models.edits == 0
    monkeypatch.undo()
    assert await model_service.current(chat_id=ALICE) == "gpt-4o-mini"
