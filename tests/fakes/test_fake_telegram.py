"""Tests of the fake Telegram Bot API server itself."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
)
from aiogram.types import (
    BufferedInputFile,
    ChatMemberAdministrator,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberOwner,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Update,
)
from aiohttp import web

from tests.fakes.telegram import (
    CONFLICT_GET_UPDATES,
    CONFLICT_SET_WEBHOOK,
    CONFLICT_WEBHOOK,
    DRAFT_ID_INVALID,
    DRAFT_PEER_INVALID,
    NOT_MODIFIED,
    UPGRADED,
    FakeTelegram,
    FloodControl,
    utf16_len,
)

CHAT = 42
GROUP = -100500


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        fake.register_chat(CHAT)
        # Most tests send faster than Telegram allows; the flood tests build their own fake.
        fake.flood.enabled = False
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(tg.url))
    instance = Bot(tg.token, session=session)
    yield instance
    await instance.session.close()


async def call(
    http: aiohttp.ClientSession, tg: FakeTelegram, method: str, **params: Any
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{tg.url}/bot{tg.token}/{method}", json=params) as response:
        return response.status, await response.json()


async def send(
    http: aiohttp.ClientSession, tg: FakeTelegram, text: str, chat_id: int = CHAT, **params: Any
) -> tuple[int, dict[str, Any]]:
    return await call(http, tg, "sendMessage", chat_id=chat_id, text=text, **params)


# ------------------------------------------------------------------------------ basics


async def test_get_me(tg: FakeTelegram, http: aiohttp.ClientSession, bot: Bot) -> None:
    status, body = await call(http, tg, "getMe")
    assert status == 200
    assert body["ok"] is True
    me = body["result"]
    assert me["is_bot"] is True
    assert me["username"] == "test_llm_bot"
    assert me["can_join_groups"] is True
    assert me["can_read_all_group_messages"] is False
    assert me["supports_inline_queries"] is False
    user = await bot.get_me()
    assert user.id == tg.bot_id


async def test_wrong_token_and_unknown_method(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{tg.url}/bot1:WRONG/getMe") as response:
        assert response.status == 401
        assert await response.json() == {
            "ok": False,
            "error_code": 401,
            "description": "Unauthorized",
        }
    status, body = await call(http, tg, "sendTelepathy")
    assert (status, body["description"], body["error_code"]) == (404, "Not Found", 404)


async def test_method_case_query_string_and_urlencoded_form(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    base = f"{tg.url}/bot{tg.token}"
    async with http.get(f"{base}/GETME") as response:
        assert (await response.json())["ok"] is True
    form = {"chat_id": str(CHAT), "text": "<b>hi</b>", "parse_mode": "html"}
    async with http.post(f"{base}/sendmessage", data=form) as response:
        body = await response.json()
    assert body["result"]["text"] == "hi"
    assert tg.calls_to("sendMessage", chat_id=CHAT)[0].params["text"] == "<b>hi</b>"


# ------------------------------------------------------------------------------ updates


async def test_long_poll_returns_as_soon_as_an_update_arrives(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    poll = asyncio.create_task(call(http, tg, "getUpdates", timeout=5))
    await asyncio.sleep(0.1)
    assert not poll.done()
    started = time.monotonic()
    update = tg.user_message(chat_id=CHAT, text="hello")
    status, body = await asyncio.wait_for(poll, 2)
    assert time.monotonic() - started < 1
    assert status == 200
    assert body["result"] == [update]
    assert update["message"]["text"] == "hello"
    assert update["message"]["chat"] == {
        "id": CHAT,
        "first_name": "Alice",
        "username": "alice",
        "type": "private",
    }


async def test_long_poll_times_out_with_no_updates(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    status, body = await call(http, tg, "getUpdates", timeout=1)
    assert (status, body["result"]) == (200, [])
    assert 0.9 < time.monotonic() - started < 2


async def test_offset_confirms_updates_and_unconfirmed_ones_come_again(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    first = tg.user_message(chat_id=CHAT, text="one")
    second = tg.user_message(chat_id=CHAT, text="two")
    assert second["update_id"] == first["update_id"] + 1
    _, body = await call(http, tg, "getUpdates")
    assert body["result"] == [first, second]
    _, body = await call(http, tg, "getUpdates", limit=1)
    assert body["result"] == [first]
    _, body = await call(http, tg, "getUpdates", offset=second["update_id"])
    assert body["result"] == [second]
    _, body = await call(http, tg, "getUpdates", offset=second["update_id"] + 1)
    assert body["result"] == []
    _, body = await call(http, tg, "getUpdates")
    assert body["result"] == []  # confirmed updates never come back


async def test_negative_offset_keeps_only_the_last_updates(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    updates = [tg.user_message(chat_id=CHAT, text=str(n)) for n in range(3)]
    _, body = await call(http, tg, "getUpdates", offset=-1)
    assert body["result"] == [updates[-1]]
    _, body = await call(http, tg, "getUpdates")
    assert body["result"] == [updates[-1]]


async def test_a_second_poll_terminates_the_first_with_409(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    first = asyncio.create_task(call(http, tg, "getUpdates", timeout=5))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(call(http, tg, "getUpdates", timeout=5))
    status, body = await asyncio.wait_for(first, 2)
    assert status == 409
    assert body == {"ok": False, "error_code": 409, "description": CONFLICT_GET_UPDATES}
    update = tg.user_message(chat_id=CHAT, text="still served")
    status, body = await asyncio.wait_for(second, 2)
    assert (status, body["result"]) == (200, [update])


async def test_allowed_updates_filters_update_types(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    sent = tg.user_message(chat_id=CHAT, text="x")
    _, body = await call(http, tg, "getUpdates", allowed_updates=["callback_query"])
    assert body["result"] == []
    assert sent not in tg.pending_updates()


async def test_user_messages_carry_command_and_mention_entities(tg: FakeTelegram) -> None:
    update = tg.user_message(chat_id=CHAT, text="😀 /ask@test_llm_bot hi @test_llm_bot")
    message = update["message"]
    assert message["entities"] == [
        {"offset": 3, "length": 17, "type": "bot_command"},
        {"offset": 24, "length": 13, "type": "mention"},
    ]
    reply = tg.user_message(chat_id=CHAT, text="re", reply_to_message_id=message["message_id"])
    assert reply["message"]["reply_to_message"]["text"] == message["text"]
    photo = tg.user_message(chat_id=CHAT, photo=[{"file_id": "p"}], caption="look")
    assert "text" not in photo["message"] and photo["message"]["caption"] == "look"
    edited = tg.edited_message(chat_id=CHAT, message_id=message["message_id"], text="/new")
    assert edited["edited_message"]["text"] == "/new"
    assert "edit_date" in edited["edited_message"]


async def test_privacy_mode_withholds_plain_group_messages(tg: FakeTelegram) -> None:
    plain = tg.user_message(chat_id=GROUP, chat_type="group", text="just chatting")
    assert "update_id" not in plain
    assert tg.withheld == [plain]
    assert "update_id" in tg.user_message(chat_id=GROUP, chat_type="group", text="/ask x")
    other = tg.user_message(chat_id=GROUP, chat_type="group", text="/ask@other_bot x")
    assert "update_id" not in other
    mention = tg.user_message(chat_id=GROUP, chat_type="group", text="hey @Test_LLM_Bot")
    assert "update_id" in mention
    tg.privacy_mode = False
    assert "update_id" in tg.user_message(chat_id=GROUP, chat_type="group", text="all")


# ------------------------------------------------------------------------------ formatting


async def test_html_gives_visible_text_and_utf16_entities(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    html = (
        '<b>Bold</b> 😀 <i>it <u>both</u></i> <a href="https://example.com">link</a>\n'
        '<pre><code class="language-python">x = 1 &lt; 2</code></pre>'
        "<tg-spoiler>s</tg-spoiler><blockquote expandable>q</blockquote>"
    )
    status, body = await send(http, tg, html, parse_mode="HTML")
    assert status == 200
    result = body["result"]
    assert result["text"] == "Bold 😀 it both link\nx = 1 < 2sq"
    assert result["from"]["id"] == tg.bot_id
    assert result["entities"] == [
        {"type": "bold", "offset": 0, "length": 4},
        {"type": "italic", "offset": 8, "length": 7},
        {"type": "underline", "offset": 11, "length": 4},
        {"type": "text_link", "offset": 16, "length": 4, "url": "https://example.com/"},
        {"type": "pre", "offset": 21, "length": 9, "language": "python"},
        {"type": "spoiler", "offset": 30, "length": 1},
        {"type": "expandable_blockquote", "offset": 31, "length": 1},
    ]
    [stored] = tg.messages(CHAT)
    assert stored.text == result["text"]
    assert stored.html == html
    assert stored.parse_mode == "HTML"
    assert stored.history == [result["text"]]


@pytest.mark.parametrize(
    ("html", "error"),
    [
        ("<foo>x</foo>", 'Unsupported start tag "foo" at byte offset 0'),
        ("é <br>", 'Unsupported start tag "br" at byte offset 3'),
        ("if a < b", 'Unsupported start tag "" at byte offset 5'),
        ("a <b>bold", 'Can\'t find end tag corresponding to start tag "b"'),
        ("text</b>", "Unexpected end tag at byte offset 4"),
        ("<b>x<i>y</b></i>", 'Unmatched end tag at byte offset 8, expected "</i>", found "</b>"'),
        ("ends with <", "Unclosed start tag at byte offset 10"),
        ('<span class="x">y</span>', 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ('<a href=x"y>t</a>', "Unexpected end of name token at byte offset 8"),
        ("<b>x</b", "Unclosed end tag at byte offset 4"),
        ('<a href="x>t</a>', "Unclosed start tag at byte offset 0"),
        ('<tg-emoji emoji-id="abc">👍</tg-emoji>', "Invalid custom emoji identifier specified"),
    ],
)
async def test_html_errors_match_telegram(
    tg: FakeTelegram, http: aiohttp.ClientSession, html: str, error: str
) -> None:
    status, body = await send(http, tg, html, parse_mode="HTML")
    assert status == 400
    assert body == {
        "ok": False,
        "error_code": 400,
        "description": f"Bad Request: can't parse entities: {error}",
    }
    assert tg.messages(CHAT) == []


async def test_references_and_bare_ampersands(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    _, body = await send(
        http, tg, "AT&T &lt;b&gt; &quot;q&quot; &nbsp; &#128512;&#x41;", parse_mode="HTML"
    )
    assert body["result"]["text"] == 'AT&T <b> "q" &nbsp; 😀A'


async def test_plain_text_and_explicit_entities(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    _, body = await send(http, tg, "<b>raw</b>")
    assert body["result"]["text"] == "<b>raw</b>"
    entities = [
        {"type": "bold", "offset": 0, "length": 3},
        {"type": "url", "offset": 0, "length": 1},
    ]
    _, body = await send(http, tg, "abc def", entities=entities)
    assert body["result"]["entities"] == [{"type": "bold", "offset": 0, "length": 3}]
    status, body = await send(http, tg, "x", parse_mode="Markdown2")
    assert (status, body["description"]) == (400, "Bad Request: unsupported parse_mode")


async def test_length_is_checked_after_parsing_in_utf16(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    status, _ = await send(http, tg, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
    assert status == 200
    status, _ = await send(http, tg, "&amp;" * 4096, parse_mode="HTML")
    assert status == 200
    status, body = await send(http, tg, "a" * 4097)
    assert (status, body["description"]) == (400, "Bad Request: message is too long")
    assert utf16_len("😀" * 2048) == 4096
    status, _ = await send(http, tg, "😀" * 2048)
    assert status == 200
    status, body = await send(http, tg, "😀" * 2049)
    assert (status, body["description"]) == (400, "Bad Request: message is too long")
    tg.length_unit = "codepoints"  # TDLib's own unit
    status, _ = await send(http, tg, "😀" * 2049)
    assert status == 200


async def test_empty_and_blank_texts(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    status, body = await send(http, tg, "")
    assert (status, body["description"]) == (400, "Bad Request: message text is empty")
    status, body = await send(http, tg, "<b> </b>\n", parse_mode="HTML")
    assert (status, body["description"]) == (400, "Bad Request: message must be non-empty")
    _, body = await send(http, tg, "\n  <b>hi</b> \r\n", parse_mode="HTML")
    assert body["result"]["text"] == "hi"
    assert body["result"]["entities"] == [{"type": "bold", "offset": 0, "length": 2}]


# ------------------------------------------------------------------------------ messages


async def test_edits_history_not_modified_and_deleted(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    _, body = await send(http, tg, "Thinking…")
    message_id = body["result"]["message_id"]
    for text in ("Hello", "Hello <b>world</b>"):
        status, body = await call(
            http,
            tg,
            "editMessageText",
            chat_id=CHAT,
            message_id=message_id,
            text=text,
            parse_mode="HTML",
        )
        assert status == 200
    assert body["result"]["text"] == "Hello world"
    assert "edit_date" in body["result"]
    status, body = await call(
        http,
        tg,
        "editMessageText",
        chat_id=CHAT,
        message_id=message_id,
        text="Hello <b>world</b>",
        parse_mode="HTML",
    )
    assert (status, body["description"]) == (400, NOT_MODIFIED)
    # Same visible text but different entities is a modification.
    status, _ = await call(
        http, tg, "editMessageText", chat_id=CHAT, message_id=message_id, text="Hello world"
    )
    assert status == 200
    [message] = tg.messages(CHAT)
    assert (message.text, message.edits) == ("Hello world", 3)
    assert message.history == ["Thinking…", "Hello", "Hello world", "Hello world"]

    tg.delete_message(CHAT, message_id)
    status, body = await call(
        http, tg, "editMessageText", chat_id=CHAT, message_id=message_id, text="again"
    )
    assert (status, body["description"]) == (400, "Bad Request: message to edit not found")
    status, body = await call(
        http, tg, "editMessageText", chat_id=CHAT, message_id=999, text="again"
    )
    assert body["description"] == "Bad Request: message to edit not found"
    user = tg.user_message(chat_id=CHAT, text="mine")["message"]["message_id"]
    status, body = await call(
        http, tg, "editMessageText", chat_id=CHAT, message_id=user, text="theirs"
    )
    assert body["description"] == "Bad Request: message can't be edited"
    assert tg.messages(CHAT)[0].deleted and tg.live_messages(CHAT) == []


async def test_reply_markup_edits_and_delete(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    markup = {"inline_keyboard": [[{"text": "Stop", "callback_data": "stop"}]]}
    _, body = await send(http, tg, "answer", reply_markup=markup)
    message_id = body["result"]["message_id"]
    assert body["result"]["reply_markup"] == markup
    status, body = await call(
        http,
        tg,
        "editMessageReplyMarkup",
        chat_id=CHAT,
        message_id=message_id,
        reply_markup=markup,
    )
    assert (status, body["description"]) == (400, NOT_MODIFIED)
    status, body = await call(
        http, tg, "editMessageReplyMarkup", chat_id=CHAT, message_id=message_id
    )
    assert status == 200 and "reply_markup" not in body["result"]
    status, body = await send(
        http, tg, "x", reply_markup={"inline_keyboard": [[{"text": "no action"}]]}
    )
    assert body["description"] == "Bad Request: text buttons are unallowed in the inline keyboard"
    status, body = await call(http, tg, "deleteMessage", chat_id=CHAT, message_id=message_id)
    assert (status, body["result"]) == (200, True)
    status, body = await call(http, tg, "deleteMessage", chat_id=CHAT, message_id=message_id)
    assert body["description"] == "Bad Request: message to delete not found"
    assert tg.messages(CHAT)[0].deleted_by == "bot"


async def test_replies_and_unknown_chats(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    question = tg.user_message(chat_id=CHAT, text="q")["message"]["message_id"]
    _, body = await send(http, tg, "a", reply_parameters={"message_id": question})
    assert body["result"]["reply_to_message"]["message_id"] == question
    assert tg.messages(CHAT)[0].reply_to_message_id == question
    status, body = await send(http, tg, "a", reply_parameters={"message_id": 777})
    assert (status, body["description"]) == (400, "Bad Request: message to be replied not found")
    status, body = await send(
        http, tg, "a", reply_parameters={"message_id": 777, "allow_sending_without_reply": True}
    )
    assert status == 200 and "reply_to_message" not in body["result"]
    status, body = await send(http, tg, "a", chat_id=31337)
    assert (status, body["description"]) == (400, "Bad Request: chat not found")
    status, body = await call(http, tg, "sendMessage", text="a")
    assert body["description"] == "Bad Request: chat_id is empty"


async def test_chat_action_commands_and_callbacks(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    status, _ = await call(http, tg, "sendChatAction", chat_id=CHAT, action="typing")
    assert status == 200 and tg.chat_actions == [(CHAT, "typing")]
    status, body = await call(http, tg, "sendChatAction", chat_id=CHAT, action="dancing")
    assert body["description"] == "Bad Request: wrong parameter action in request"

    commands = [{"command": "new", "description": "Start over"}]
    await call(http, tg, "setMyCommands", commands=commands)
    scope = {"type": "all_group_chats"}
    await call(http, tg, "setMyCommands", commands=commands * 2, scope=scope, language_code="ru")
    assert tg.commands_for() == commands
    assert tg.commands_for(scope, "ru") == commands * 2
    assert tg.commands_for(scope) == []
    _, body = await call(http, tg, "getMyCommands", scope=scope, language_code="ru")
    assert body["result"] == commands * 2
    status, body = await call(
        http, tg, "setMyCommands", commands=[{"command": "Bad-One", "description": "x"}]
    )
    assert body["description"] == "Bad Request: BOT_COMMAND_INVALID"
    await call(http, tg, "deleteMyCommands")
    assert tg.commands_for() == []

    markup = {"inline_keyboard": [[{"text": "Retry", "callback_data": "retry"}]]}
    _, body = await send(http, tg, "failed", reply_markup=markup)
    update = tg.callback_query(chat_id=CHAT, message_id=body["result"]["message_id"], data="retry")
    query = update["callback_query"]
    assert query["message"]["reply_markup"] == markup
    status, _ = await call(http, tg, "answerCallbackQuery", callback_query_id=query["id"])
    assert status == 200 and query["id"] in tg.callback_answers
    status, body = await call(http, tg, "answerCallbackQuery", callback_query_id="nope")
    assert body["description"].startswith("Bad Request: query is too old")


# ------------------------------------------------------------------------------ flood control


async def test_private_chat_flood_control_and_violations(http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    async with FakeTelegram(clock=clock) as tg:
        tg.register_chat(CHAT)
        for n in range(3):  # the burst allowance
            status, _ = await send(http, tg, f"m{n}")
            assert status == 200
        status, body = await send(http, tg, "too fast")
        assert status == 429
        assert body == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1},
        }
        assert (tg.flood.count_429, tg.flood.violations) == (1, 0)
        clock.now += 0.4
        status, body = await send(http, tg, "ignores retry_after")
        assert (status, body["parameters"]["retry_after"]) == (429, 1)
        assert (tg.flood.count_429, tg.flood.violations) == (2, 1)
        assert tg.flood.violations_by_chat == {CHAT: 1}
        # Chat actions are not limited, even inside the window.
        status, _ = await call(http, tg, "sendChatAction", chat_id=CHAT, action="typing")
        assert status == 200
        clock.now += 0.6
        status, _ = await send(http, tg, "waited")
        assert status == 200
        clock.now += 1.0  # one message per second is sustainable
        status, _ = await send(http, tg, "steady")
        assert status == 200


async def test_group_flood_control_is_twenty_per_minute(http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    async with FakeTelegram(clock=clock) as tg:
        tg.register_chat(GROUP, chat_type="supergroup")
        for n in range(20):
            status, _ = await send(http, tg, f"m{n}", chat_id=GROUP)
            assert status == 200
            clock.now += 1
        status, body = await send(http, tg, "21st", chat_id=GROUP)
        assert (status, body["parameters"]["retry_after"]) == (429, 40)
        clock.now += 39.5
        status, body = await send(http, tg, "early", chat_id=GROUP)
        assert (status, body["description"]) == (429, "Too Many Requests: retry after 1")
        assert tg.flood.violations == 1
        clock.now += 0.5
        status, _ = await send(http, tg, "on time", chat_id=GROUP)
        assert status == 200


async def test_global_flood_control_and_injected_429_window(
    http: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    async with FakeTelegram(clock=clock) as tg:
        for chat_id in range(1, 32):
            tg.register_chat(chat_id)
        for chat_id in range(1, 31):
            status, _ = await send(http, tg, "x", chat_id=chat_id)
            assert status == 200
        status, body = await send(http, tg, "31st", chat_id=31)
        assert (status, body["parameters"]["retry_after"]) == (429, 1)
        status, _ = await send(http, tg, "other chat", chat_id=1)
        assert status == 429 and tg.flood.violations == 1  # the whole bot is blocked
        clock.now += 1
        tg.flood = FloodControl(clock, enabled=False)
        tg.fail_next(
            "editMessageText",
            status=429,
            description="Too Many Requests: retry after 7",
            retry_after=7,
            chat_id=1,
        )
        status, body = await call(http, tg, "editMessageText", chat_id=1, message_id=1, text="y")
        assert (status, body["parameters"]) == (429, {"retry_after": 7})
        clock.now += 6.5
        status, body = await send(http, tg, "still blocked", chat_id=1)
        assert (status, body["parameters"]["retry_after"]) == (429, 1)
        assert tg.flood.violations == 1
        clock.now += 0.5
        status, _ = await send(http, tg, "free", chat_id=1)
        assert status == 200


# ------------------------------------------------------------------------------ via aiogram


async def test_aiogram_multipart_round_trip(tg: FakeTelegram, bot: Bot) -> None:
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Stop", callback_data="stop")]]
    )
    message = await bot.send_message(
        CHAT, "<b>Hi</b> there", parse_mode="HTML", reply_markup=keyboard
    )
    assert message.text == "Hi there"
    assert message.entities is not None and message.entities[0].type == "bold"
    call_params = tg.calls_to("sendMessage")[0].params
    assert call_params["chat_id"] == CHAT
    assert call_params["reply_markup"] == {
        "inline_keyboard": [[{"text": "Stop", "callback_data": "stop"}]]
    }
    edited = await bot.edit_message_text(
        "<i>Hi</i> there", chat_id=CHAT, message_id=message.message_id, parse_mode="HTML"
    )
    assert not isinstance(edited, bool) and edited.reply_markup is None

    with pytest.raises(TelegramBadRequest) as bad:
        await bot.send_message(CHAT, "<x>", parse_mode="HTML")
    assert bad.value.message == (
        'Bad Request: can\'t parse entities: Unsupported start tag "x" at byte offset 0'
    )
    with pytest.raises(TelegramBadRequest) as bad:
        await bot.edit_message_text(
            "<i>Hi</i> there", chat_id=CHAT, message_id=message.message_id, parse_mode="HTML"
        )
    assert bad.value.message == NOT_MODIFIED

    photo = await bot.send_photo(
        CHAT,
        BufferedInputFile(b"\x89PNG fake", filename="chart.png"),
        caption="<b>chart</b>",
        parse_mode="HTML",
    )
    assert photo.caption == "chart" and photo.photo
    stored = tg.messages(CHAT)[-1]
    assert stored.kind == "photo" and stored.file is not None
    assert stored.file.data == b"\x89PNG fake" and stored.file.filename == "chart.png"
    with pytest.raises(TelegramBadRequest) as bad:
        await bot.send_document(CHAT, BufferedInputFile(b"x", "a.txt"), caption="c" * 1025)
    assert bad.value.message == "Bad Request: message caption is too long"
    document = await bot.send_document(CHAT, BufferedInputFile(b"log", "a.txt"))
    assert document.document is not None and document.document.file_name == "a.txt"

    tg.flood = FloodControl(private_burst=1)
    await bot.send_message(CHAT, "one")
    with pytest.raises(TelegramRetryAfter) as flood:
        await bot.send_message(CHAT, "two")
    assert flood.value.retry_after == 1
    assert tg.flood.count_429 == 1


async def test_injected_failures(tg: FakeTelegram, bot: Bot, http: aiohttp.ClientSession) -> None:
    tg.fail_next("sendMessage", status=403, description="Forbidden: bot was blocked by the user")
    with pytest.raises(TelegramForbiddenError) as forbidden:
        await bot.send_message(CHAT, "x")
    assert forbidden.value.message == "Forbidden: bot was blocked by the user"
    await bot.send_message(CHAT, "next one works")

    tg.block_bot(CHAT)
    with pytest.raises(TelegramForbiddenError):
        await bot.send_chat_action(CHAT, "typing")
    tg.block_bot(CHAT, blocked=False)

    tg.disconnect_next("sendMessage")
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(CHAT, "lost")
    assert len(tg.messages(CHAT)) == 1
    tg.disconnect_next("sendMessage", after_processing=True)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await send(http, tg, "delivered, answer lost")
    assert tg.messages(CHAT)[-1].text == "delivered, answer lost"
    assert tg.calls_to("sendMessage")[-1].status == -1


async def test_raw_answers_truncated_json_and_ok_false_with_200(
    tg: FakeTelegram, bot: Bot
) -> None:
    tg.answer_next_raw("sendMessage", '{"ok": true, "result": {"message_id"')
    with pytest.raises(ClientDecodeError):
        await bot.send_message(CHAT, "cut short")
    assert tg.messages(CHAT) == []  # answered before the call took effect
    assert tg.calls_to("sendMessage")[-1].status == 200

    ok_false = {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
    tg.answer_next_raw("sendMessage", json.dumps(ok_false), chat_id=CHAT)
    # aiogram classifies errors by HTTP status alone: a 200 gives the bare TelegramAPIError.
    with pytest.raises(TelegramAPIError) as error:
        await bot.send_message(CHAT, "refused")
    assert type(error.value) is TelegramAPIError
    assert error.value.message == "Bad Request: chat not found"
    assert tg.calls_to("sendMessage")[-1].description == "Bad Request: chat not found"

    tg.answer_next_raw("sendMessage", "{", after_processing=True, times=2)
    for _ in range(2):
        with pytest.raises(ClientDecodeError):
            await bot.send_message(CHAT, "sent, answer garbled")
    assert [m.text for m in tg.messages(CHAT)] == ["sent, answer garbled"] * 2
    assert (await bot.send_message(CHAT, "normal again")).text == "normal again"


async def test_upgraded_group_refuses_its_old_id_and_announces_the_move(
    tg: FakeTelegram, bot: Bot, http: aiohttp.ClientSession
) -> None:
    old, new = -4242, -1009876543210
    tg.register_chat(old, chat_type="group", title="Team")
    await bot.send_message(old, "before")
    with pytest.raises(ValueError, match="basic groups"):
        tg.upgrade_group(CHAT, new_chat_id=new)
    updates = tg.upgrade_group(old, new_chat_id=new, user_id=7)

    with pytest.raises(TelegramMigrateToChat) as moved:
        await bot.send_message(old, "after")
    assert moved.value.migrate_to_chat_id == new
    with pytest.raises(TelegramMigrateToChat):
        await bot.send_chat_action(old, "typing")
    status, body = await send(http, tg, "raw", chat_id=old)
    assert status == 400
    assert body["description"] == UPGRADED
    assert body["parameters"] == {"migrate_to_chat_id": new}

    sent = await bot.send_message(new, "after")
    assert (sent.chat.id, sent.chat.type, sent.chat.title) == (new, "supergroup", "Team")
    # Service messages pass privacy mode: the bot learns of the move from both sides.
    assert [u["update_id"] for u in updates] == [u["update_id"] for u in tg.pending_updates()]
    to, from_ = (u["message"] for u in updates)
    assert (to["chat"]["id"], to["migrate_to_chat_id"], to["from"]["id"]) == (old, new, 7)
    assert (from_["chat"]["id"], from_["migrate_from_chat_id"]) == (new, old)
    with pytest.raises(ValueError, match="upgraded"):
        tg.user_message(chat_id=old, chat_type="group", text="too late")
    with pytest.raises(ValueError, match="already"):
        tg.upgrade_group(old, new_chat_id=-1001)

    tg.register_chat(-4343, chat_type="group")
    assert tg.upgrade_group(-4343, new_chat_id=-1001111, announce=False) == []
    with pytest.raises(TelegramMigrateToChat):
        await bot.send_message(-4343, "quiet move")


async def test_wait_for_reports_recent_calls(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    await send(http, tg, "visible in the dump")
    await tg.wait_for(lambda fake: len(fake.messages(CHAT)) == 1, timeout=1)
    with pytest.raises(AssertionError, match="visible in the dump"):
        await tg.wait_for(lambda fake: len(fake.messages(CHAT)) == 2, timeout=0.05)


async def test_chat_members_and_administrators_via_aiogram(tg: FakeTelegram, bot: Bot) -> None:
    tg.user_message(chat_id=GROUP, chat_type="supergroup", text="hi", user_id=7, first_name="Ann")
    tg.user_message(chat_id=GROUP, chat_type="supergroup", text="yo", user_id=8, first_name="Ben")
    tg.user_message(chat_id=CHAT, text="hello")  # user 42, seen only in private
    tg.set_admins(GROUP, [8], creator=9)

    member = await bot.get_chat_member(GROUP, 7)
    assert isinstance(member, ChatMemberMember) and member.user.first_name == "Ann"
    admin = await bot.get_chat_member(GROUP, 8)
    assert isinstance(admin, ChatMemberAdministrator) and admin.user.first_name == "Ben"
    owner = await bot.get_chat_member(GROUP, 9)
    assert isinstance(owner, ChatMemberOwner)
    assert isinstance(await bot.get_chat_member(GROUP, tg.bot_id), ChatMemberMember)
    assert isinstance(await bot.get_chat_member(GROUP, CHAT), ChatMemberLeft)
    with pytest.raises(TelegramBadRequest) as bad:
        await bot.get_chat_member(GROUP, 555)
    assert bad.value.message == "Bad Request: user not found"
    with pytest.raises(TelegramBadRequest) as bad:
        await bot.get_chat_member(-999, 7)
    assert bad.value.message == "Bad Request: chat not found"

    admins = await bot.get_chat_administrators(GROUP)
    assert [(type(a), a.user.id) for a in admins] == [
        (ChatMemberOwner, 9),
        (ChatMemberAdministrator, 8),
    ]
    with pytest.raises(TelegramBadRequest) as bad:
        await bot.get_chat_administrators(CHAT)
    assert bad.value.message == "Bad Request: there are no administrators in the private chat"

    # Pressing a button in the group makes a user a known member; demoting replaces the list.
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Go", callback_data="go")]]
    )
    sent = await bot.send_message(GROUP, "Press", reply_markup=keyboard)
    tg.callback_query(chat_id=GROUP, message_id=sent.message_id, data="go", user_id=10)
    assert isinstance(await bot.get_chat_member(GROUP, 10), ChatMemberMember)
    tg.set_admins(GROUP, [])
    assert isinstance(await bot.get_chat_member(GROUP, 8), ChatMemberMember)


# ------------------------------------------------------------------------------ message drafts


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def timed(clock: ManualClock) -> AsyncIterator[FakeTelegram]:
    """A fake on a clock the test moves by hand, flood control off."""
    async with FakeTelegram(clock=clock) as fake:
        fake.register_chat(CHAT)
        fake.flood.enabled = False
        yield fake


async def draft(
    http: aiohttp.ClientSession,
    tg: FakeTelegram,
    text: str | None,
    *,
    chat_id: int = CHAT,
    draft_id: int = 1,
    **params: Any,
) -> tuple[int, dict[str, Any]]:
    if text is not None:
        params["text"] = text
    return await call(http, tg, "sendMessageDraft", chat_id=chat_id, draft_id=draft_id, **params)


async def test_draft_is_accepted_and_recorded(
    tg: FakeTelegram, bot: Bot, http: aiohttp.ClientSession
) -> None:
    accepted = await bot.send_message_draft(
        chat_id=CHAT,
        draft_id=7,
        text="<b>Thin</b>king",
        parse_mode="HTML",
        can_stop=True,
        message_thread_id=3,
    )
    assert accepted is True
    [record] = tg.drafts(CHAT)
    assert (record.chat_id, record.draft_id, record.text, record.entities) == (
        CHAT,
        7,
        "Thinking",
        [{"type": "bold", "offset": 0, "length": 4}],
    )
    assert (record.html, record.parse_mode, record.message_thread_id) == (
        "<b>Thin</b>king",
        "HTML",
        3,
    )
    assert (record.can_stop, record.keep_on_stop, record.ignored, record.stopped) == (
        True,
        False,
        False,
        False,
    )
    assert record.at <= time.monotonic()
    assert tg.visible_draft(CHAT) is record
    assert tg.calls_to("sendMessageDraft", chat_id=CHAT)[0].result is True
    assert tg.messages(CHAT) == []  # a draft is not a message

    italic = [{"type": "italic", "offset": 0, "length": 3}]
    status, body = await draft(http, tg, "abc", draft_id=-5, entities=italic, keep_on_stop=True)
    assert (status, body) == (200, {"ok": True, "result": True})
    visible = tg.visible_draft(CHAT)
    assert visible is not None
    assert (visible.draft_id, visible.entities, visible.keep_on_stop) == (-5, italic, True)
    assert visible.can_stop is False
    assert len(tg.drafts(CHAT)) == 2


@pytest.mark.parametrize(
    ("params", "description"),
    [
        ({"draft_id": 0}, DRAFT_ID_INVALID),
        ({"draft_id": None}, DRAFT_ID_INVALID),  # missing: null fields are not sent
        ({"draft_id": "abc"}, DRAFT_ID_INVALID),
        ({"chat_id": GROUP}, DRAFT_PEER_INVALID),
        ({"chat_id": -4242}, DRAFT_PEER_INVALID),
        ({"chat_id": 31337}, "Bad Request: chat not found"),
        (
            {"text": "<b>x", "parse_mode": "HTML"},
            "Bad Request: can't parse entities: "
            'Can\'t find end tag corresponding to start tag "b"',
        ),
        ({"text": "a" * 4097}, "Bad Request: message is too long"),
        (
            {"text": "<i>" + "a" * 4097 + "</i>", "parse_mode": "HTML"},
            "Bad Request: message is too long",
        ),
    ],
)
async def test_draft_refusals(
    tg: FakeTelegram, http: aiohttp.ClientSession, params: dict[str, Any], description: str
) -> None:
    tg.register_chat(GROUP, chat_type="supergroup")
    tg.register_chat(-4242, chat_type="group")
    status, body = await call(
        http, tg, "sendMessageDraft", **{"chat_id": CHAT, "draft_id": 1, "text": "x", **params}
    )
    assert (status, body) == (400, {"ok": False, "error_code": 400, "description": description})
    assert tg.drafts(CHAT) == tg.drafts(GROUP) == tg.drafts(-4242) == []
    assert tg.visible_draft(CHAT) is None


async def test_empty_and_long_draft_texts_and_a_blocked_bot(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    for text, params in ((None, {}), ("", {}), ("<b> </b>\n", {"parse_mode": "HTML"})):
        status, body = await draft(http, tg, text, **params)
        assert (status, body["result"]) == (200, True)  # a "Thinking…" placeholder
    assert [(d.text, d.entities) for d in tg.drafts(CHAT)] == [("", [])] * 3
    status, _ = await draft(http, tg, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
    assert status == 200
    tg.block_bot(CHAT)
    status, body = await draft(http, tg, "x")
    assert (status, body["description"]) == (403, "Forbidden: bot was blocked by the user")
    assert len(tg.drafts(CHAT)) == 4


async def test_without_draft_support_the_method_is_unknown(http: aiohttp.ClientSession) -> None:
    async with FakeTelegram(supports_drafts=False) as tg:
        tg.register_chat(CHAT)
        status, body = await draft(http, tg, "x")
        assert (status, body) == (
            404,
            {"ok": False, "error_code": 404, "description": "Not Found"},
        )
        assert tg.drafts(CHAT) == []
        tg.supports_drafts = True
        status, _ = await draft(http, tg, "x")
        assert status == 200


async def test_drafts_animate_get_replaced_and_disappear(
    timed: FakeTelegram, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    tg = timed
    await draft(http, tg, "Hel")
    clock.now += 1
    await draft(http, tg, "Hello")  # same draft_id: the text is animated
    visible = tg.visible_draft(CHAT)
    assert visible is not None and (visible.draft_id, visible.text, visible.at) == (
        1,
        "Hello",
        1001,
    )
    await draft(http, tg, "Other", draft_id=2)  # another draft_id: the draft is replaced
    visible = tg.visible_draft(CHAT)
    assert visible is not None and (visible.draft_id, visible.text) == (2, "Other")
    await send(http, tg, "the final answer")
    assert tg.visible_draft(CHAT) is None
    assert [d.text for d in tg.drafts(CHAT)] == ["Hel", "Hello", "Other"]

    await draft(http, tg, "again", draft_id=3)
    clock.now += 29.5
    assert tg.visible_draft(CHAT) is not None
    await draft(http, tg, "again and more", draft_id=3)  # an update restarts the 30 s
    clock.now += 29.5
    visible = tg.visible_draft(CHAT)
    assert visible is not None and visible.text == "again and more"
    clock.now += 0.5
    assert tg.visible_draft(CHAT) is None

    await draft(http, tg, "before a photo", draft_id=4)
    photo = tg.add_file(b"png", file_path="photos/file")
    status, _ = await call(http, tg, "sendPhoto", chat_id=CHAT, photo=photo)
    assert status == 200 and tg.visible_draft(CHAT) is None


async def test_stop_generation_is_delivered_and_later_drafts_are_ignored(
    tg: FakeTelegram, bot: Bot, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(AssertionError, match="no visible draft"):
        tg.stop_generation(CHAT)
    await draft(http, tg, "no button")
    with pytest.raises(AssertionError, match="no stop button"):
        tg.stop_generation(CHAT)
    await draft(http, tg, "partial", draft_id=2, can_stop=True, message_thread_id=5)
    with pytest.raises(AssertionError, match="not visible"):
        tg.stop_generation(CHAT, draft_id=1)
    wanted = ["message", "callback_query", "stopped_message_generation"]
    _, body = await call(http, tg, "getUpdates", allowed_updates=wanted)
    assert body["result"] == []

    update = tg.stop_generation(CHAT)
    assert update == {
        "update_id": update["update_id"],
        "stopped_message_generation": {
            "chat": {"id": CHAT, "first_name": "Alice", "username": "alice", "type": "private"},
            "draft_id": 2,
            "message_thread_id": 5,
        },
    }
    [delivered] = await bot.get_updates()
    stopped = delivered.stopped_message_generation
    assert delivered.update_id == update["update_id"] and stopped is not None
    assert (stopped.chat.id, stopped.draft_id, stopped.message_thread_id) == (CHAT, 2, 5)
    assert tg.visible_draft(CHAT) is None and tg.drafts(CHAT)[-1].stopped

    status, body = await draft(http, tg, "partial and more", draft_id=2, can_stop=True)
    assert (status, body["result"]) == (200, True)
    assert tg.drafts(CHAT)[-1].ignored and tg.visible_draft(CHAT) is None

    await draft(http, tg, "kept", draft_id=3, can_stop=True, keep_on_stop=True)
    kept = tg.stop_generation(CHAT, draft_id=3)
    assert "message_thread_id" not in kept["stopped_message_generation"]
    visible = tg.visible_draft(CHAT)
    assert visible is not None and visible.text == "kept"
    await draft(http, tg, "kept and more", draft_id=3, can_stop=True, keep_on_stop=True)
    visible = tg.visible_draft(CHAT)
    assert visible is not None and visible.text == "kept" and tg.drafts(CHAT)[-1].ignored
    with pytest.raises(AssertionError, match="stopped already"):
        tg.stop_generation(CHAT)


async def test_stopped_generation_follows_allowed_updates(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    await call(http, tg, "getUpdates", allowed_updates=["message", "callback_query"])
    await draft(http, tg, "x", can_stop=True)
    excluded = tg.stop_generation(CHAT)
    _, body = await call(http, tg, "getUpdates")  # the previous allowed_updates still apply
    assert body["result"] == []
    assert excluded not in tg.pending_updates()
    assert tg.visible_draft(CHAT) is None  # the stop itself took effect

    await call(http, tg, "getUpdates", allowed_updates=[])  # the default includes it
    await draft(http, tg, "y", draft_id=2, can_stop=True)
    update = tg.stop_generation(CHAT)
    _, body = await call(http, tg, "getUpdates")
    assert body["result"] == [update]


async def test_draft_flood_control_is_per_chat_and_apart_from_messages(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    async with FakeTelegram(clock=clock) as tg:
        tg.register_chat(CHAT)
        tg.register_chat(43)
        for n in range(5):  # draft_rate per second
            status, _ = await draft(http, tg, f"d{n}")
            assert status == 200
            clock.now += 0.125
        status, body = await draft(http, tg, "sixth")
        assert body == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1},
        }
        assert (tg.flood.count_429, tg.flood.violations) == (1, 0)
        assert tg.flood.count_429_by_chat == {CHAT: 1}
        # Messages, and drafts in other chats, are paced on their own.
        status, _ = await send(http, tg, "a message")
        assert status == 200
        status, _ = await draft(http, tg, "other chat", chat_id=43)
        assert status == 200
        clock.now += 0.25
        status, body = await draft(http, tg, "ignores retry_after")
        assert (status, body["parameters"]["retry_after"]) == (429, 1)
        assert tg.flood.violations_by_chat == {CHAT: 1}
        clock.now += 0.75
        status, _ = await draft(http, tg, "waited")
        assert status == 200
        assert len(tg.drafts(CHAT)) == 6

        # An open window on the chat's messages refuses its drafts too.
        for n in range(3):  # the bucket is full again
            await send(http, tg, f"m{n}")
        status, _ = await send(http, tg, "over the burst")
        assert status == 429
        status, _ = await draft(http, tg, "inside the window")
        assert status == 429 and tg.flood.violations == 2

        # Drafts count toward the bot-wide limit.
        clock.now += 10
        tg.flood = FloodControl(clock, global_limit=2)
        for chat_id in (CHAT, 43):
            status, _ = await draft(http, tg, "x", chat_id=chat_id)
            assert status == 200
        status, body = await send(http, tg, "third call this second", chat_id=43)
        assert (status, body["parameters"]["retry_after"]) == (429, 1)

        # An injected 429 with retry_after opens a window on the chat's drafts.
        clock.now += 1
        tg.flood = FloodControl(clock, enabled=False)
        tg.fail_next(
            "sendMessageDraft",
            status=429,
            description="Too Many Requests: retry after 3",
            retry_after=3,
        )
        status, _ = await draft(http, tg, "injected")
        assert status == 429
        clock.now += 2.5
        status, body = await draft(http, tg, "still blocked")
        assert (status, body["parameters"]["retry_after"]) == (429, 1)
        status, _ = await send(http, tg, "messages are not")
        assert status == 200


# ------------------------------------------------------------------------------ webhooks

OTHER = 43
SECRET_HEADER = "x-telegram-bot-api-secret-token"


@dataclass
class Received:
    """One webhook request as the bot's side saw it."""

    update: dict[str, Any]
    headers: dict[str, str]  # names lowered
    at: float  # time.monotonic() on arrival


Responder = Callable[[dict[str, Any]], Awaitable[web.StreamResponse]]


class BotSide:
    """A tiny HTTP server on 127.0.0.1 playing the bot's webhook endpoint.

    `respond` decides each answer (an empty JSON object with 200 by default); `active` counts
    the requests being answered now and `max_active` the most there ever were at once.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.respond: Responder = self.ok
        self.active = 0
        self.max_active = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    @staticmethod
    async def ok(update: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({})

    def ids(self) -> list[int]:
        return [item.update["update_id"] for item in self.received]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        # A held request must not hold the teardown for aiohttp's default minute.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        update = await request.json()
        headers = {key.lower(): value for key, value in request.headers.items()}
        self.received.append(Received(update, headers, time.monotonic()))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self.respond(update)
        finally:
            self.active -= 1


@pytest.fixture
async def bot_side() -> AsyncIterator[BotSide]:
    side = BotSide()
    await side.start()
    yield side
    await side.stop()


async def set_webhook(
    http: aiohttp.ClientSession, tg: FakeTelegram, url: str, **params: Any
) -> tuple[int, dict[str, Any]]:
    return await call(http, tg, "setWebhook", url=url, **params)


async def webhook_info(http: aiohttp.ClientSession, tg: FakeTelegram) -> dict[str, Any]:
    status, body = await call(http, tg, "getWebhookInfo")
    assert status == 200
    info: dict[str, Any] = body["result"]
    return info


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_webhook_posts_json_with_the_secret_header(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    status, body = await set_webhook(http, tg, bot_side.url, secret_token="s3cr3t_-TOKEN")
    assert (status, body) == (200, {"ok": True, "result": True})
    update = tg.user_message(chat_id=CHAT, text="héllo 😀")
    await tg.wait_webhook_idle(timeout=5)

    [received] = bot_side.received
    assert received.update == update
    assert received.headers[SECRET_HEADER] == "s3cr3t_-TOKEN"
    assert received.headers["content-type"] == "application/json"
    assert tg.pending_updates() == []
    [delivery] = tg.webhook_deliveries
    assert (delivery.update_id, delivery.status, delivery.error) == (
        update["update_id"],
        200,
        None,
    )
    assert delivery.ok and delivery.url == bot_side.url
    assert await webhook_info(http, tg) == {
        "url": bot_side.url,
        "has_custom_certificate": False,
        "pending_update_count": 0,
        "max_connections": 40,
        "ip_address": "127.0.0.1",
    }

    # Without a secret there is no header; the new webhook takes over at once.
    status, _ = await set_webhook(http, tg, bot_side.url)
    assert status == 200
    tg.user_message(chat_id=CHAT, text="no secret")
    await tg.wait_webhook_idle(timeout=5)
    assert SECRET_HEADER not in bot_side.received[-1].headers


async def test_aiogram_sets_and_reads_the_webhook(
    tg: FakeTelegram, bot: Bot, bot_side: BotSide
) -> None:
    tg.user_message(chat_id=CHAT, text="old, dropped")
    assert await bot.set_webhook(
        bot_side.url,
        secret_token="tok",
        max_connections=3,
        allowed_updates=["message", "callback_query"],
        drop_pending_updates=True,
    )
    info = await bot.get_webhook_info()
    assert info.url == bot_side.url
    assert (info.max_connections, info.pending_update_count) == (3, 0)
    assert info.allowed_updates == ["message", "callback_query"]
    assert info.has_custom_certificate is False and info.last_error_date is None
    update = tg.user_message(chat_id=CHAT, text="new")
    await tg.wait_webhook_idle(timeout=5)
    [received] = bot_side.received
    assert received.headers[SECRET_HEADER] == "tok"
    parsed = Update.model_validate(received.update)
    assert parsed.update_id == update["update_id"]
    assert parsed.message is not None and parsed.message.text == "new"
    assert await bot.delete_webhook()
    assert (await bot.get_webhook_info()).url == ""


async def test_get_updates_conflicts_with_a_webhook(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    poll = asyncio.create_task(call(http, tg, "getUpdates", timeout=5))
    await asyncio.sleep(0.1)
    await set_webhook(http, tg, bot_side.url)
    status, body = await asyncio.wait_for(poll, 2)
    assert (status, body["description"]) == (409, CONFLICT_SET_WEBHOOK)
    status, body = await call(http, tg, "getUpdates")
    assert body == {"ok": False, "error_code": 409, "description": CONFLICT_WEBHOOK}
    status, _ = await call(http, tg, "deleteWebhook")
    assert status == 200
    update = tg.user_message(chat_id=CHAT, text="polled again")
    _, body = await call(http, tg, "getUpdates")
    assert body["result"] == [update]
    assert bot_side.received == []


async def test_webhook_orders_updates_per_chat_and_chats_go_in_parallel(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    tg.register_chat(OTHER, first_name="Bob", username="bob")
    a1 = tg.user_message(chat_id=CHAT, text="a1")
    a2 = tg.user_message(chat_id=CHAT, text="a2")
    b1 = tg.user_message(chat_id=OTHER, text="b1")
    release = asyncio.Event()
    released_at = 0.0

    async def respond(update: dict[str, Any]) -> web.StreamResponse:
        nonlocal released_at
        if update["update_id"] == a1["update_id"]:
            await release.wait()  # the bot is slow with chat A's first update
            released_at = time.monotonic()
        return web.json_response({})

    bot_side.respond = respond
    await set_webhook(http, tg, bot_side.url)
    # Chat B's update is not held behind chat A's slow one...
    await tg.wait_for(lambda t: any(d.ok for d in t.webhook_attempts(b1["update_id"])), 5)
    await asyncio.sleep(0.2)
    # ... but chat A's second one is.
    assert tg.webhook_in_flight() == [a1["update_id"]]
    assert a2["update_id"] not in bot_side.ids()
    assert [u["update_id"] for u in tg.pending_updates()] == [a1["update_id"], a2["update_id"]]
    release.set()
    await tg.wait_webhook_idle(timeout=5)
    ids = bot_side.ids()
    assert sorted(ids) == [a1["update_id"], a2["update_id"], b1["update_id"]]
    assert ids.index(a1["update_id"]) < ids.index(a2["update_id"])
    assert bot_side.received[ids.index(a2["update_id"])].at >= released_at
    assert bot_side.max_active == 2


async def test_callback_queries_are_queued_apart_from_the_chats_messages(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    _, sent = await send(http, tg, "pick one")
    message = tg.user_message(chat_id=CHAT, text="slow")
    press = tg.callback_query(chat_id=CHAT, message_id=sent["result"]["message_id"], data="x")
    release = asyncio.Event()

    async def respond(update: dict[str, Any]) -> web.StreamResponse:
        if "message" in update:
            await release.wait()
        return web.json_response({})

    bot_side.respond = respond
    await set_webhook(http, tg, bot_side.url)
    # The Bot API server queues callback queries per user, apart from the chat's messages.
    await tg.wait_for(lambda t: any(d.ok for d in t.webhook_attempts(press["update_id"])), 5)
    assert tg.webhook_in_flight() == [message["update_id"]]
    release.set()
    await tg.wait_webhook_idle(timeout=5)


async def test_webhook_retries_the_same_update_after_a_500_and_reports_the_error(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    first = tg.user_message(chat_id=CHAT, text="first")
    second = tg.user_message(chat_id=CHAT, text="second")
    failing = True

    async def respond(update: dict[str, Any]) -> web.StreamResponse:
        if failing:
            return web.Response(status=500, text="boom")
        return web.json_response({})

    bot_side.respond = respond
    before = int(time.time())
    await set_webhook(http, tg, bot_side.url)
    await tg.wait_for(lambda t: len(t.webhook_attempts(first["update_id"])) >= 2, 5)
    info = await webhook_info(http, tg)
    assert info["pending_update_count"] == 2
    assert (
        info["last_error_message"] == "Wrong response from the webhook: 500 Internal Server Error"
    )
    assert before <= info["last_error_date"] <= int(time.time())
    # A failed update holds the later ones of its chat.
    assert set(bot_side.ids()) == {first["update_id"]}
    failing = False
    await tg.wait_webhook_idle(timeout=5)

    attempts = tg.webhook_attempts(first["update_id"])
    assert [a.status for a in attempts[-1:]] == [200]
    assert all(a.status == 500 and not a.ok for a in attempts[:-1])
    assert attempts[0].error == "Wrong response from the webhook: 500 Internal Server Error"
    assert attempts[0].response_body == b"boom"
    # The retries carry the same update, update_id included, after the backoff.
    assert all(r.update == first for r in bot_side.received[: len(attempts)])
    assert attempts[1].at - attempts[0].at >= tg.webhook_retry_delay * 0.9
    assert bot_side.ids()[-1] == second["update_id"]
    assert tg.pending_updates() == []
    # The last error stays reported after a success, as Telegram does.
    info = await webhook_info(http, tg)
    assert info["pending_update_count"] == 0
    assert info["last_error_message"].startswith("Wrong response from the webhook: 500")


async def test_webhook_answers_401_for_a_wrong_secret_until_it_is_set_right(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    async def respond(update: dict[str, Any]) -> web.StreamResponse:
        if bot_side.received[-1].headers.get(SECRET_HEADER) != "right":
            return web.Response(status=401)
        return web.json_response({})

    bot_side.respond = respond
    update = tg.user_message(chat_id=CHAT, text="x")
    await set_webhook(http, tg, bot_side.url, secret_token="wrong")
    await tg.wait_for(lambda t: bool(t.webhook_deliveries) and t.webhook_deliveries[0].done, 5)
    info = await webhook_info(http, tg)
    assert info["last_error_message"] == "Wrong response from the webhook: 401 Unauthorized"
    # Another webhook starts afresh: no last error, and the update goes out at once.
    await set_webhook(http, tg, bot_side.url, secret_token="right")
    assert "last_error_message" not in await webhook_info(http, tg)
    await tg.wait_webhook_idle(timeout=5)
    assert tg.webhook_deliveries[-1].ok
    assert bot_side.received[-1].update == update


async def test_webhook_connection_refused_timeout_and_retry_after(
    http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    async with FakeTelegram(webhook_timeout=0.3) as tg:
        tg.register_chat(CHAT)
        update = tg.user_message(chat_id=CHAT, text="x")
        await set_webhook(http, tg, f"http://127.0.0.1:{free_port()}/hook")
        await tg.wait_for(lambda t: bool(t.webhook_deliveries) and t.webhook_deliveries[0].done)
        info = await webhook_info(http, tg)
        assert (info["last_error_message"], info["pending_update_count"]) == (
            "Connection refused",
            1,
        )
        assert tg.webhook_deliveries[0].status is None

        # No answer within webhook_timeout: the same update comes again.
        answers = 0

        async def respond(update: dict[str, Any]) -> web.StreamResponse:
            nonlocal answers
            answers += 1
            if answers == 1:
                await asyncio.sleep(2)
            elif answers == 2:
                return web.Response(status=429, headers={"Retry-After": "1"})
            return web.json_response({})

        bot_side.respond = respond
        await set_webhook(http, tg, bot_side.url)
        await tg.wait_webhook_idle(timeout=5)
        attempts = tg.webhook_attempts(update["update_id"])[-3:]
        assert [(a.status, a.error) for a in attempts] == [
            (None, "Read timeout expired"),
            (429, "Wrong response from the webhook: 429 Too Many Requests"),
            (200, None),
        ]
        assert 0.25 <= attempts[0].elapsed < 1
        assert attempts[2].at - attempts[1].at >= 0.9  # Retry-After is honoured
        assert bot_side.ids() == [update["update_id"]] * 3


async def test_webhook_honours_max_connections(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    updates = []
    for n in range(5):
        tg.register_chat(100 + n, first_name=f"User {n}", username=None)
        updates.append(tg.user_message(chat_id=100 + n, text=str(n)))
    release = asyncio.Event()

    async def respond(update: dict[str, Any]) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})

    bot_side.respond = respond
    await set_webhook(http, tg, bot_side.url, max_connections=2)
    await tg.wait_for(lambda t: bot_side.active == 2, 5)
    await asyncio.sleep(0.2)
    assert bot_side.active == 2 and len(tg.webhook_in_flight()) == 2
    assert (await webhook_info(http, tg))["pending_update_count"] == 5
    release.set()
    await tg.wait_webhook_idle(timeout=5)
    assert bot_side.max_active == 2
    assert sorted(bot_side.ids()) == [u["update_id"] for u in updates]

    # Out-of-range values are clamped, as the Bot API server does.
    await set_webhook(http, tg, bot_side.url, max_connections=0)
    assert (await webhook_info(http, tg))["max_connections"] == 1
    await set_webhook(http, tg, bot_side.url, max_connections=1000)
    assert (await webhook_info(http, tg))["max_connections"] == 100


async def test_delete_webhook_stops_delivery_and_keeps_the_queue(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    hold = asyncio.Event()

    async def respond(update: dict[str, Any]) -> web.StreamResponse:
        await hold.wait()
        return web.json_response({})

    bot_side.respond = respond
    first = tg.user_message(chat_id=CHAT, text="first")
    await set_webhook(http, tg, bot_side.url)
    await tg.wait_for(lambda t: t.webhook_in_flight() == [first["update_id"]], 5)
    status, _ = await call(http, tg, "deleteWebhook")
    assert status == 200
    # The request in flight is abandoned; its update stays queued.
    assert tg.webhook_in_flight() == []
    assert tg.webhook_deliveries[-1].done and not tg.webhook_deliveries[-1].ok
    second = tg.user_message(chat_id=CHAT, text="second")
    await asyncio.sleep(0.3)
    assert len(bot_side.received) == 1 and len(tg.webhook_deliveries) == 1
    assert await webhook_info(http, tg) == {
        "url": "",
        "has_custom_certificate": False,
        "pending_update_count": 2,
    }
    _, body = await call(http, tg, "getUpdates")
    assert body["result"] == [first, second]
    await call(http, tg, "deleteWebhook", drop_pending_updates=True)
    assert tg.pending_updates() == []


async def test_webhook_secret_token_and_url_validation(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    for bad in ("has space", "a+b", "a/b=", "пароль", "a.b"):
        status, body = await set_webhook(http, tg, bot_side.url, secret_token=bad)
        assert (status, body["description"]) == (
            400,
            "Bad Request: secret token contains unallowed characters",
        ), bad
    status, body = await set_webhook(http, tg, bot_side.url, secret_token="a" * 257)
    assert (status, body["description"]) == (400, "Bad Request: secret token is too long")
    for url, description in (
        ("http://example.com/hook", "bad webhook: An HTTPS URL must be provided for webhook"),
        (
            "https://example.com:1234/hook",
            "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
        ),
        ("ftp://example.com/hook", "invalid webhook URL specified"),
    ):
        status, body = await set_webhook(http, tg, url)
        assert (status, body["description"]) == (400, f"Bad Request: {description}"), url
    assert (await webhook_info(http, tg))["url"] == ""
    assert tg.webhook_url == ""

    longest = "Az09_-" * 42 + "abcd"
    assert len(longest) == 256
    status, _ = await set_webhook(http, tg, bot_side.url, secret_token=longest)
    assert status == 200
    assert tg.webhook_secret_token == longest
    tg.user_message(chat_id=CHAT, text="x")
    await tg.wait_webhook_idle(timeout=5)
    assert bot_side.received[0].headers[SECRET_HEADER] == longest


async def test_webhook_allowed_updates_persist_until_changed(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    _, sent = await send(http, tg, "pick one")
    await set_webhook(http, tg, bot_side.url, allowed_updates=["callback_query"])
    assert (await webhook_info(http, tg))["allowed_updates"] == ["callback_query"]
    skipped = tg.user_message(chat_id=CHAT, text="not wanted")
    press = tg.callback_query(chat_id=CHAT, message_id=sent["result"]["message_id"], data="x")
    await tg.wait_webhook_idle(timeout=5)
    assert bot_side.ids() == [press["update_id"]]
    assert skipped not in tg.pending_updates()
    # Setting the same webhook without allowed_updates keeps the previous setting.
    await set_webhook(http, tg, bot_side.url)
    assert (await webhook_info(http, tg))["allowed_updates"] == ["callback_query"]
    # An empty list is Telegram's default again.
    await set_webhook(http, tg, bot_side.url, allowed_updates=[])
    assert "allowed_updates" not in await webhook_info(http, tg)
    message = tg.user_message(chat_id=CHAT, text="wanted again")
    await tg.wait_webhook_idle(timeout=5)
    assert bot_side.ids()[-1] == message["update_id"]


async def test_redeliver_sends_an_acknowledged_update_again(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    update = tg.user_message(chat_id=CHAT, text="once")
    await set_webhook(http, tg, bot_side.url)
    await tg.wait_webhook_idle(timeout=5)
    assert tg.redeliver(update["update_id"]) == update
    await tg.wait_webhook_idle(timeout=5)
    assert [r.update for r in bot_side.received] == [update, update]
    assert [a.ok for a in tg.webhook_attempts(update["update_id"])] == [True, True]
    with pytest.raises(KeyError):
        tg.redeliver(999)
    hold = asyncio.Event()

    async def respond(update: dict[str, Any]) -> web.StreamResponse:
        await hold.wait()
        return web.json_response({})

    bot_side.respond = respond
    pending = tg.user_message(chat_id=CHAT, text="in flight")
    await tg.wait_for(lambda t: t.webhook_in_flight() == [pending["update_id"]], 5)
    with pytest.raises(ValueError, match="still queued"):
        tg.redeliver(pending["update_id"])
    hold.set()
    await tg.wait_webhook_idle(timeout=5)


async def test_wait_webhook_idle_reports_what_is_stuck(
    tg: FakeTelegram, http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    async def respond(update: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=502)

    bot_side.respond = respond
    update = tg.user_message(chat_id=CHAT, text="x")
    await set_webhook(http, tg, bot_side.url)
    with pytest.raises(AssertionError, match=f"queued \\[{update['update_id']}\\]") as error:
        await tg.wait_webhook_idle(timeout=0.5)
    assert "Wrong response from the webhook: 502 Bad Gateway" in str(error.value)


async def test_stop_ends_delivery_and_start_resumes_it(
    http: aiohttp.ClientSession, bot_side: BotSide
) -> None:
    tg = FakeTelegram()
    await tg.start()
    try:
        tg.register_chat(CHAT)
        hold = asyncio.Event()

        async def respond(update: dict[str, Any]) -> web.StreamResponse:
            await hold.wait()
            return web.json_response({})

        bot_side.respond = respond
        update = tg.user_message(chat_id=CHAT, text="x")
        await set_webhook(http, tg, bot_side.url)
        await tg.wait_for(lambda t: t.webhook_in_flight() == [update["update_id"]], 5)
        started = time.monotonic()
        await tg.stop()
        assert time.monotonic() - started < 1
        assert tg.webhook_in_flight() == [] and tg.pending_updates() == [update]
        hold.set()
        await tg.start()  # the webhook is still set: delivery resumes
        await tg.wait_webhook_idle(timeout=5)
        assert tg.webhook_deliveries[-1].ok
    finally:
        await tg.stop()
