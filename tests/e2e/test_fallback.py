"""End-to-end: the primary backend (LLM_BASE_URL) fails and LLM_FALLBACKS answer instead.

Every test runs the real bot against fake Telegram, the `llm` fixture's FakeLLM as the primary
and a second FakeLLM (`fallback` below) as the one fallback, and checks what the person
chatting or the bot's owner would notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.app import App
from tests.e2e.conftest import BotHarness
from tests.fakes.openai import CHAT_PATH, Disconnect, Error, FakeLLM, Hang, Stream, StreamError

CHAT = 1201
OTHER_CHAT = 1202
OWNER = 1209
GROUP = -1001200
PRIMARY_KEY = "sk-primary-0123456789"
FALLBACK_KEY = "sk-fallback-0123456789"
FALLBACK_NAME = "backup"
# First-token deadline of a turn in the timing tests, and the slack allowed on top of it.
FIRST_TOKEN = 3.0
SLACK = 2.0

TIMED_OUT = "The AI backend took too long to answer. Please try again later."
NOT_FOR_YOU = "/status is for the bot's owners."
REFUSAL_TAIL = "Ask your administrator for one."
# Messages to one private chat are spaced this far apart (EDIT_INTERVAL_PRIVATE, 1 s by
# default); shorter here so an owner's alert is not held up behind the /start greeting, and a
# chat's answers do not wait on each other.
PRIVATE_PACE = 0.2
FAST_PRIVATE = {"edit_interval_private": PRIVATE_PACE}


@pytest.fixture
async def fallback(harness: BotHarness) -> AsyncIterator[FakeLLM]:
    """A second backend with a key of its own; the bot is stopped before it goes away."""
    fake = FakeLLM(api_key=FALLBACK_KEY)
    await fake.start()
    yield fake
    await harness.stop()
    await fake.stop()


async def start(
    harness: BotHarness, fallback: FakeLLM, *, entry: dict[str, Any] | None = None, **settings: Any
) -> BotHarness:
    """Start the bot with `fallback` as its one LLM_FALLBACKS entry (named FALLBACK_NAME)."""
    harness.llm.api_key = PRIMARY_KEY
    settings.setdefault("llm_api_key", PRIMARY_KEY)
    backup = {"base_url": fallback.base_url, "api_key": FALLBACK_KEY, "name": FALLBACK_NAME}
    await harness.start(llm_fallbacks=[{**backup, **(entry or {})}], **settings)
    return harness


def primary_name(bot: BotHarness) -> str:
    """The primary's default name: its URL's host:port."""
    return f"127.0.0.1:{bot.llm.port}"


def chat_calls(fake: FakeLLM) -> int:
    return len(fake.requests_to(CHAT_PATH, "POST"))


def user_history(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"][1:]]


def usage_rows(bot: BotHarness) -> list[tuple[Any, ...]]:
    """(chat_id, model, backend, status) of every chat usage row, read from the SQLite file."""
    path = bot.db_url.removeprefix("sqlite+aiosqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        query = (
            "SELECT chat_id, model, backend, status FROM usage_records "
            "WHERE kind = 'chat' ORDER BY id"
        )
        return list(conn.execute(query).fetchall())


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def key_refused(delay: float = 0.0) -> Error:
    """A 401 in the backend's own words, echoing the key in full as some gateways do."""
    words = f"Incorrect API key provided: {PRIMARY_KEY}-xyz. {REFUSAL_TAIL}"
    body = {
        "error": {
            "message": words,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    return Error(401, body, delay=delay)


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (the port was just bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ---- timeouts: one deadline for the whole turn -----------------------------------------------


async def test_hanging_primary_is_abandoned_in_time_for_the_fallback(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    bot = await start(harness, fallback, llm_first_token_timeout=FIRST_TOKEN)
    bot.llm.enqueue(Hang())
    fallback.enqueue(Stream(["Answer from ", "the fallback."]))
    sent = time.monotonic()
    bot.tg.user_message(chat_id=CHAT, text="Are you there?")
    await bot.wait_text(CHAT, "Answer from the fallback.", within=FIRST_TOKEN + SLACK)
    assert time.monotonic() - sent < FIRST_TOKEN + SLACK
    await bot.idle()
    assert bot.texts(CHAT) == ["Answer from the fallback."]  # no error shown on the way
    [asked_first] = bot.llm.requests_to(CHAT_PATH, "POST")
    [asked_then] = fallback.requests_to(CHAT_PATH, "POST")
    assert asked_first.received_at < asked_then.received_at
    # Its first token came within the turn's deadline, counted from the primary's request.
    assert asked_then.first_chunk_at is not None
    assert asked_then.first_chunk_at - asked_first.received_at < FIRST_TOKEN
    # The fallback is asked with its own key, never the primary's.
    assert asked_then.headers["authorization"] == f"Bearer {FALLBACK_KEY}"
    assert asked_then.json["messages"][-1] == {"role": "user", "content": "Are you there?"}
    # The hanging request was given up, not left open beside the answer.
    await wait_until(lambda: asked_first.disconnected)


async def test_every_backend_hanging_gives_one_clear_error_within_the_deadline(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    bot = await start(harness, fallback, llm_first_token_timeout=FIRST_TOKEN)
    bot.llm.enqueue(Hang(), Stream(["Back again."]))
    fallback.enqueue(Hang())
    sent = time.monotonic()
    bot.tg.user_message(chat_id=CHAT, text="Anyone?")
    # The deadline is the turn's, not each backend's: not FIRST_TOKEN per backend.
    await bot.wait_text(CHAT, TIMED_OUT, within=FIRST_TOKEN + SLACK)
    assert time.monotonic() - sent < FIRST_TOKEN + SLACK
    assert chat_calls(bot.llm) == 1 and chat_calls(fallback) == 1
    await bot.idle()
    assert bot.texts(CHAT) == [TIMED_OUT]
    # One usage row for the failed turn, naming the backend whose failure the user was told of:
    # the primary's, as a fallback's trouble says nothing about the chat's request.
    assert usage_rows(bot) == [(CHAT, "gpt-4o-mini", primary_name(bot), "error")]
    # Nothing was stored as answered: the next request carries no broken turn.
    bot.tg.user_message(chat_id=CHAT, text="And now?")
    await bot.wait_text(CHAT, "Back again.")
    assert user_history(bot.llm.chat_requests[-1]) == [("user", "And now?")]


# ---- what each failure of the primary means --------------------------------------------------


async def test_rate_limited_primary_rests_and_other_chats_go_straight_to_the_fallback(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    bot = await start(harness, fallback)
    bot.llm.enqueue(Error.rate_limited(retry_after=30))
    fallback.enqueue(Stream(["Fallback answers the first."]), Stream(["And the second."]))
    bot.tg.user_message(chat_id=CHAT, text="first")
    await bot.wait_text(CHAT, "Fallback answers the first.")
    bot.tg.user_message(chat_id=OTHER_CHAT, text="second", user_id=OTHER_CHAT)
    await bot.wait_text(OTHER_CHAT, "And the second.")
    await bot.idle()
    assert bot.texts(CHAT) == ["Fallback answers the first."]
    assert bot.texts(OTHER_CHAT) == ["And the second."]
    # The primary asked for 30 s of rest and was not asked again meanwhile.
    assert chat_calls(bot.llm) == 1
    assert chat_calls(fallback) == 2


async def test_refused_key_takes_the_primary_out_and_tells_the_owner_once(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    bot = await start(harness, fallback, owner_ids=[OWNER], **FAST_PRIVATE)
    # The owner has a private chat with the bot (an unknown chat cannot be written to).
    bot.tg.user_message(chat_id=OWNER, user_id=OWNER, text="/start")
    await bot.wait_messages(OWNER, lambda t: len(t) == 1)
    bot.llm.enqueue(key_refused())
    bot.tg.user_message(chat_id=CHAT, text="hello")
    await bot.wait_text(CHAT, "You said: hello")
    alerts = await bot.wait_messages(OWNER, lambda t: len(t) == 2)
    alert = alerts[1]
    assert primary_name(bot) in alert
    assert REFUSAL_TAIL in alert
    assert "Incorrect API key provided" in alert
    # Two more messages: answered by the fallback, the primary not asked, the owner not told again.
    bot.tg.user_message(chat_id=CHAT, text="again")
    await bot.wait_text(CHAT, "You said: again")
    bot.tg.user_message(chat_id=OTHER_CHAT, user_id=OTHER_CHAT, text="me too")
    await bot.wait_text(OTHER_CHAT, "You said: me too")
    await bot.idle()
    await asyncio.sleep(PRIVATE_PACE * 3)  # an alert sent late would show up by now
    assert chat_calls(bot.llm) == 1
    assert chat_calls(fallback) == 3
    assert len(bot.texts(OWNER)) == 2
    # The key is in no message the bot sent anyone, the owner's alert included.
    for chat_id in (OWNER, CHAT, OTHER_CHAT):
        for message in bot.tg.messages(chat_id):
            assert PRIMARY_KEY not in message.text
            assert all(PRIMARY_KEY not in h for h in message.html_history)
    assert FALLBACK_KEY not in alert
    # The user never saw the refusal: their answers came from the fallback.
    assert bot.texts(CHAT) == ["You said: hello", "You said: again"]


async def test_key_refused_to_two_chats_at_once_is_told_to_the_owner_once(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    bot = await start(harness, fallback, owner_ids=[OWNER], **FAST_PRIVATE)
    bot.tg.user_message(chat_id=OWNER, user_id=OWNER, text="/start")
    await bot.wait_messages(OWNER, lambda t: len(t) == 1)
    # Both requests are at the primary before its first refusal comes back.
    bot.llm.enqueue(key_refused(delay=0.3), key_refused(delay=0.3))
    bot.tg.user_message(chat_id=CHAT, text="one")
    bot.tg.user_message(chat_id=OTHER_CHAT, user_id=OTHER_CHAT, text="two")
    await bot.wait_text(CHAT, "You said: one")
    await bot.wait_text(OTHER_CHAT, "You said: two")
    assert chat_calls(bot.llm) == 2  # both were refused, so two alerts were possible
    texts = await bot.wait_messages(OWNER, lambda t: len(t) >= 2)
    assert primary_name(bot) in texts[1]
    await bot.idle()
    await asyncio.sleep(PRIVATE_PACE * 3)  # a second alert would have been let through by now
    assert len(bot.texts(OWNER)) == 2, bot.texts(OWNER)


async def test_primary_is_asked_again_once_its_rest_and_its_time_out_are_over(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    # The backends' health runs on a clock the test moves, so no one waits for minutes.
    clock = [time.monotonic()]

    def fake_clock(app: App) -> None:
        for backend in app.dispatcher["backends"].backends:
            backend.health.clock = lambda: clock[0]

    backup = {"base_url": fallback.base_url, "api_key": FALLBACK_KEY, "name": FALLBACK_NAME}
    harness.llm.api_key = PRIMARY_KEY
    await harness.start(
        prepare=fake_clock, llm_api_key=PRIMARY_KEY, llm_fallbacks=[backup], **FAST_PRIVATE
    )
    bot = harness
    bot.llm.enqueue(Error.rate_limited(retry_after=30), Stream(["Rested."]))
    bot.llm.enqueue(key_refused(), Stream(["Key fixed."]))
    bot.tg.user_message(chat_id=CHAT, text="one")
    await bot.wait_text(CHAT, "You said: one")
    clock[0] += 31  # past the Retry-After
    bot.tg.user_message(chat_id=CHAT, text="two")
    await bot.wait_text(CHAT, "Rested.")
    assert chat_calls(bot.llm) == 2 and chat_calls(fallback) == 1
    bot.tg.user_message(chat_id=CHAT, text="three")  # refused: out of rotation
    await bot.wait_text(CHAT, "You said: three")
    clock[0] += 599
    bot.tg.user_message(chat_id=CHAT, text="four")
    await bot.wait_text(CHAT, "You said: four")
    assert chat_calls(bot.llm) == 3  # still out: the owner may not have fixed the key yet
    clock[0] += 2  # ten minutes on, it is tried again
    bot.tg.user_message(chat_id=CHAT, text="five")
    await bot.wait_text(CHAT, "Key fixed.")
    assert chat_calls(bot.llm) == 4 and chat_calls(fallback) == 3


async def test_primary_refusing_connections_is_skipped_for_the_fallback(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    bot = await start(harness, fallback, llm_base_url=closed_port_url(), llm_connect_timeout=2)
    fallback.enqueue(Stream(["Still here."]))
    bot.tg.user_message(chat_id=CHAT, text="hello?")
    await bot.wait_text(CHAT, "Still here.", within=8)
    await bot.idle()
    assert bot.texts(CHAT) == ["Still here."]
    assert chat_calls(fallback) == 1


async def test_request_fault_from_the_primary_is_shown_and_not_sent_elsewhere(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    bot = await start(harness, fallback)
    detail = "Invalid value for 'temperature': 3 is greater than the maximum of 2."
    bot.llm.enqueue(
        Error(
            400,
            {
                "error": {
                    "message": detail,
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": None,
                }
            },
        )
    )
    bot.tg.user_message(chat_id=CHAT, text="hot take please")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    assert texts == [f"The AI backend rejected the request: {detail}"]
    await bot.idle()
    assert chat_calls(bot.llm) == 1
    assert chat_calls(fallback) == 0


@pytest.mark.parametrize(
    "failure",
    [
        StreamError(
            ["The answer ", "starts here"],
            {"message": "upstream died", "type": "server_error", "code": "500"},
            delay=0.05,
        ),
        Disconnect(["The answer ", "starts here"], delay=0.05),
    ],
    ids=["error-event", "disconnect"],
)
async def test_answer_failing_midway_is_kept_and_not_replaced_by_the_fallback(
    harness: BotHarness, fallback: FakeLLM, failure: StreamError | Disconnect
) -> None:
    bot = await start(harness, fallback)
    bot.llm.enqueue(failure)
    fallback.enqueue(Stream(["A different answer."]))
    bot.tg.user_message(chat_id=CHAT, text="tell me")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 2)
    assert texts[0] == "The answer starts here"
    assert texts[1].startswith("⚠️ The answer was interrupted")
    await bot.idle()
    assert chat_calls(fallback) == 0
    assert bot.texts(CHAT) == texts


# ---- what is recorded ------------------------------------------------------------------------


async def test_fallback_with_its_own_model_is_asked_for_it_and_recorded(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    bot = await start(harness, fallback, entry={"model": "other-model"})
    bot.llm.enqueue(Error.server_error(), Stream(["From the primary."]))
    fallback.enqueue(Stream(["From the other model."]))
    bot.tg.user_message(chat_id=CHAT, text="one")
    await bot.wait_text(CHAT, "From the other model.")
    await bot.idle()
    assert fallback.chat_requests[0]["model"] == "other-model"
    assert bot.llm.chat_requests[0]["model"] == "gpt-4o-mini"
    # One row for the turn, naming who answered: no second row for the failed attempt.
    assert usage_rows(bot) == [(CHAT, "other-model", FALLBACK_NAME, "ok")]

    bot.tg.user_message(chat_id=CHAT, text="two")
    await bot.wait_text(CHAT, "From the primary.")
    await bot.idle()
    assert chat_calls(fallback) == 1
    assert bot.llm.chat_requests[-1]["model"] == "gpt-4o-mini"
    assert usage_rows(bot) == [
        (CHAT, "other-model", FALLBACK_NAME, "ok"),
        (CHAT, "gpt-4o-mini", primary_name(bot), "ok"),
    ]


async def test_status_shows_owners_each_backend_and_refuses_everyone_else(
    harness: BotHarness, fallback: FakeLLM
) -> None:
    # No name for the fallback: it is known by its URL's host:port.
    bot = await start(harness, fallback, entry={"name": None}, owner_ids=[OWNER])
    fallback_name = f"127.0.0.1:{fallback.port}"
    # Not the 30 s a backend rests when it does not say: the backend's own Retry-After.
    bot.llm.enqueue(Error.rate_limited(retry_after=120))
    bot.tg.user_message(chat_id=CHAT, text="hi")
    await bot.wait_text(CHAT, "You said: hi")

    bot.tg.user_message(chat_id=OWNER, user_id=OWNER, text="/status")
    [status] = await bot.wait_messages(OWNER, lambda t: len(t) == 1)
    lines = status.splitlines()
    primary_line = next(x for x in lines if x.startswith(f"1. {primary_name(bot)}: "))
    until = re.search(r"cooling down after a 429 until (\d\d):(\d\d):(\d\d) UTC", primary_line)
    assert until is not None, primary_line
    hours, minutes, seconds = map(int, until.groups())
    now = datetime.now(UTC)
    ahead = (
        hours * 3600 + minutes * 60 + seconds - (now.hour * 3600 + now.minute * 60 + now.second)
    )
    assert 110 <= ahead % 86400 <= 125, primary_line
    assert f"2. {fallback_name}: ok" in lines
    assert status.index(primary_name(bot)) < status.index(fallback_name)
    assert "Rate limit reached for requests" in status  # the primary's last error, in its words
    assert PRIMARY_KEY not in status and FALLBACK_KEY not in status

    bot.tg.user_message(chat_id=OTHER_CHAT, user_id=OTHER_CHAT, text="/status")
    assert await bot.wait_messages(OTHER_CHAT, lambda t: len(t) == 1) == [NOT_FOR_YOU]
    # Not in a group either, even for the owner: the group would see the backends' errors.
    bot.tg.user_message(chat_id=GROUP, chat_type="supergroup", user_id=OWNER, text="/status")
    [in_group] = await bot.wait_messages(GROUP, lambda t: len(t) == 1)
    assert in_group == "The bot's status is shown only in a private chat with me."
    await bot.idle()
    assert chat_calls(bot.llm) == 1 and chat_calls(fallback) == 1  # /status asks no backend
