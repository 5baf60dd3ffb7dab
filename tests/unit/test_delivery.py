"""The delivery policy: 429, transient failures, fallbacks and unreachable chats.

Telegram is faked below aiogram, as aiogram's own tests do (a session that answers with scripted
Bot API replies, parsed by aiogram's real `check_response`), or by a real HTTP server where the
shape of the HTTP answer itself matters. Time is a fake clock that moves only when code sleeps.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ChatAction
from aiogram.exceptions import TelegramNetworkError
from aiogram.methods import (
    EditMessageText,
    SendChatAction,
    SendDocument,
    SendMessage,
    SendMessageDraft,
    SendPhoto,
    TelegramMethod,
)
from aiogram.methods.base import TelegramType
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.telegram.delivery import CHAT_ACTION_RENEW_SECONDS, Delivery, DeliveryPolicy, Outcome
from bot.telegram.pacing import FloodGate
from bot.telegram.session import BotSession
from bot.telegram.stops import Generations
from bot.telegram.streaming import TelegramReplyWriter

TOKEN = "42:TEST"
CHAT = 1001
GROUP = -4242
SUPERGROUP = -1001234567890
PARSE_ERROR = 'Bad Request: can\'t parse entities: Unsupported start tag "x" at byte offset 0'


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []  # the gate's waits
        self.backoffs: list[float] = []  # delivery's waits after transient failures

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    async def backoff(self, seconds: float) -> None:
        self.backoffs.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Request:
    at: float
    method: Any  # the TelegramMethod aiogram built, with the call's parameters


class ScriptedSession(BotSession):
    """Answers each call with the next scripted reply (status and body), else with success.

    The bot's own session below its HTTP: it parses answers and carries middlewares as the
    running bot's does.
    """

    def __init__(self, t: FakeTime) -> None:
        super().__init__()
        self.t = t
        self.replies: deque[tuple[int, str] | Exception] = deque()
        self.requests: list[Request] = []
        self._ids = iter(range(100, 10_000))

    def fail(self, status: int, description: str, *, retry_after: int | None = None) -> None:
        """Script a Bot API error reply for the next unscripted call."""
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        self.replies.append((status, json.dumps(body)))

    def migrate(self, new_chat_id: int) -> None:
        """Script the answer to a call naming a group that has become a supergroup."""
        body = {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a supergroup chat",
            "parameters": {"migrate_to_chat_id": new_chat_id},
        }
        self.replies.append((400, json.dumps(body)))

    def drop(self) -> None:
        """Script a lost connection, as aiohttp's session reports it."""
        self.replies.append(TelegramNetworkError(SendMessage(chat_id=0, text="-"), "reset"))

    def sent(self, kind: type[TelegramMethod[Any]]) -> list[Request]:
        return [r for r in self.requests if isinstance(r.method, kind)]

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> TelegramType:
        self.requests.append(Request(self.t.now, method))
        reply = self.replies.popleft() if self.replies else (200, self._success(method))
        if isinstance(reply, Exception):
            raise reply
        status, content = reply
        response = self.check_response(bot, method, status, content)
        return response.result  # type: ignore[return-value]

    def _success(self, method: TelegramMethod[Any]) -> str:
        result: Any = True
        if isinstance(method, SendMessage | SendPhoto | SendDocument):
            result = {
                "message_id": next(self._ids),
                "date": 0,
                "chat": {"id": method.chat_id, "type": "private"},
            }
        return json.dumps({"ok": True, "result": result})

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,  # noqa: ASYNC109 - aiogram's signature
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        yield b""

    async def close(self) -> None:
        pass


@dataclass
class Rig:
    t: FakeTime
    session: ScriptedSession
    gate: FloodGate
    delivery: Delivery


@pytest.fixture
def rig() -> Rig:
    t = FakeTime()
    session = ScriptedSession(t)
    gate = FloodGate(global_rate=1000, clock=t.clock, sleep=t.sleep)
    bot = Bot(token=TOKEN, session=session)
    delivery = Delivery(bot=bot, gate=gate, policy=DeliveryPolicy(attempts=4), sleep=t.backoff)
    return Rig(t, session, gate, delivery)


# ---- flood control -------------------------------------------------------------------------


async def test_a_429_blocks_the_chat_for_retry_after_then_the_final_text_goes(rig: Rig) -> None:
    rig.session.fail(429, "Too Many Requests: retry after 7", retry_after=7)
    sent = await rig.delivery.send_text(CHAT, "hello")
    assert sent.ok and sent.message_id is not None
    first, second = rig.session.sent(SendMessage)
    assert second.at - first.at >= 7.0
    assert rig.t.backoffs == []  # the gate's wait is the whole wait


async def test_an_intermediate_edit_that_meets_a_429_is_deferred(rig: Rig) -> None:
    rig.session.fail(429, "Too Many Requests: retry after 5", retry_after=5)
    sent = await rig.delivery.edit_text(CHAT, 7, "partial", final=False)
    assert sent.outcome is Outcome.DEFERRED
    assert len(rig.session.requests) == 1
    assert rig.gate.ready_in(CHAT) >= 5.0  # the next edit waits the window out


# ---- transient failures --------------------------------------------------------------------


async def test_server_and_network_errors_are_retried_with_backoff(rig: Rig) -> None:
    rig.session.fail(500, "Internal Server Error")
    rig.session.drop()
    rig.session.fail(502, "Bad Gateway")
    sent = await rig.delivery.send_text(CHAT, "hello")
    assert sent.ok
    assert len(rig.session.sent(SendMessage)) == 4
    assert rig.t.backoffs == [0.5, 1.0, 2.0]


async def test_an_intermediate_edit_is_not_retried_after_a_transient_failure(rig: Rig) -> None:
    rig.session.drop()
    sent = await rig.delivery.edit_text(CHAT, 7, "partial", final=False)
    assert sent.outcome is Outcome.DEFERRED
    assert len(rig.session.requests) == 1


async def test_attempts_are_bounded(rig: Rig) -> None:
    for _ in range(10):
        rig.session.fail(503, "Service Unavailable")
    sent = await rig.delivery.send_text(CHAT, "hello")
    assert sent.outcome is Outcome.REFUSED
    assert len(rig.session.requests) == 4  # DeliveryPolicy(attempts=4)


async def test_a_proxys_html_error_page_is_transient() -> None:
    # nginx in front of a local Bot API server answers 502 with an HTML page, not JSON: aiogram
    # raises ClientDecodeError (not a TelegramAPIError) for it.
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.match_info["method"])
        if len(calls) == 1:
            page = "<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
            return web.Response(status=502, text=page, content_type="text/html")
        message = {"message_id": 5, "date": 0, "chat": {"id": CHAT, "type": "private"}}
        return web.json_response({"ok": True, "result": message})

    app = web.Application()
    app.router.add_post("/bot{token}/{method}", handle)
    server = TestServer(app)
    await server.start_server()
    t = FakeTime()
    session = BotSession(api=TelegramAPIServer.from_base(str(server.make_url("")).rstrip("/")))
    bot = Bot(token=TOKEN, session=session)
    gate = FloodGate(clock=t.clock, sleep=t.sleep)
    try:
        sent = await Delivery(bot=bot, gate=gate, sleep=t.backoff).send_text(CHAT, "hello")
    finally:
        await session.close()
        await server.close()
    assert sent.ok and sent.message_id == 5
    assert calls == ["sendMessage", "sendMessage"]
    assert t.backoffs == [0.5]  # backed off as after any transient failure


async def test_a_reply_cut_short_is_transient() -> None:
    # A proxy or a network that ends the answer early: JSON that never finishes.
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.match_info["method"])
        if len(calls) == 1:
            cut = '{"ok": true, "result": {"message_id"'
            return web.Response(text=cut, content_type="application/json")
        message = {"message_id": 5, "date": 0, "chat": {"id": CHAT, "type": "private"}}
        return web.json_response({"ok": True, "result": message})

    app = web.Application()
    app.router.add_post("/bot{token}/{method}", handle)
    server = TestServer(app)
    await server.start_server()
    t = FakeTime()
    session = BotSession(api=TelegramAPIServer.from_base(str(server.make_url("")).rstrip("/")))
    bot = Bot(token=TOKEN, session=session)
    gate = FloodGate(clock=t.clock, sleep=t.sleep)
    try:
        sent = await Delivery(bot=bot, gate=gate, sleep=t.backoff).send_text(CHAT, "hello")
    finally:
        await session.close()
        await server.close()
    assert sent.ok and sent.message_id == 5
    assert calls == ["sendMessage", "sendMessage"]
    assert t.backoffs == [0.5]


# ---- HTTP 200 with "ok": false -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "description", "outcome"),
    [
        (400, "Bad Request: message is not modified", Outcome.DELIVERED),
        (400, "Bad Request: message to edit not found", Outcome.GONE),
        (403, "Forbidden: bot was blocked by the user", Outcome.UNREACHABLE),
        (400, "Bad Request: message must be non-empty", Outcome.REFUSED),
    ],
)
async def test_an_error_answered_with_http_200_is_the_error_it_describes(
    rig: Rig, code: int, description: str, outcome: Outcome
) -> None:
    body = {"ok": False, "error_code": code, "description": description}
    rig.session.replies.append((200, json.dumps(body)))
    sent = await rig.delivery.edit_text(CHAT, 7, "text")
    assert sent.outcome is outcome
    assert len(rig.session.requests) == 1


async def test_a_server_error_answered_with_http_200_is_retried(rig: Rig) -> None:
    body = {"ok": False, "error_code": 502, "description": "Bad Gateway"}
    rig.session.replies.append((200, json.dumps(body)))
    sent = await rig.delivery.send_text(CHAT, "hello")
    assert sent.ok
    assert len(rig.session.requests) == 2
    assert rig.t.backoffs == [0.5]


async def test_formatting_refused_with_http_200_falls_back_to_plain_text(rig: Rig) -> None:
    body = {"ok": False, "error_code": 400, "description": PARSE_ERROR}
    rig.session.replies.append((200, json.dumps(body)))
    sent = await rig.delivery.send_text(CHAT, "**bold**", html="<b>bold</b>")
    assert sent.ok and sent.fallback


# ---- Bad Request ---------------------------------------------------------------------------


async def test_not_modified_counts_as_delivered(rig: Rig) -> None:
    rig.session.fail(
        400,
        "Bad Request: message is not modified: specified new message content and reply markup "
        "are exactly the same as a current content and reply markup of the message",
    )
    sent = await rig.delivery.edit_text(CHAT, 7, "same", final=False)
    assert sent.ok
    assert len(rig.session.requests) == 1


@pytest.mark.parametrize(
    "description",
    [PARSE_ERROR, "Bad Request: message is too long", "Bad Request: text is too long"],
)
async def test_refused_html_falls_back_to_plain_text_once(rig: Rig, description: str) -> None:
    rig.session.fail(400, description)
    sent = await rig.delivery.send_text(CHAT, "**bold**", html="<b>bold</b>")
    assert sent.ok and sent.fallback
    html, plain = (r.method for r in rig.session.sent(SendMessage))
    assert (html.text, html.parse_mode) == ("<b>bold</b>", "HTML")
    assert (plain.text, plain.parse_mode) == ("**bold**", None)


async def test_plain_text_is_not_retried_after_a_parse_error(rig: Rig) -> None:
    rig.session.fail(400, PARSE_ERROR)
    rig.session.fail(400, PARSE_ERROR)
    sent = await rig.delivery.send_text(CHAT, "x", html="<x>")
    assert sent.outcome is Outcome.REFUSED
    assert len(rig.session.requests) == 2


@pytest.mark.parametrize(
    "description",
    ["Bad Request: message to edit not found", "Bad Request: message can't be edited"],
)
async def test_an_edit_of_a_deleted_or_frozen_message_is_gone(rig: Rig, description: str) -> None:
    rig.session.fail(400, description)
    sent = await rig.delivery.edit_text(CHAT, 7, "more", html="more")
    assert sent.outcome is Outcome.GONE
    assert len(rig.session.requests) == 1


async def test_other_bad_requests_are_refused_at_once(rig: Rig) -> None:
    rig.session.fail(400, "Bad Request: message must be non-empty")
    sent = await rig.delivery.send_text(CHAT, " ")
    assert sent.outcome is Outcome.REFUSED
    assert len(rig.session.requests) == 1


async def test_a_photo_telegram_refuses_is_sent_as_a_file(rig: Rig) -> None:
    rig.session.fail(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
    sent = await rig.delivery.send_picture(
        CHAT,
        data=b"\x89PNG",
        filename="fox.png",
        mime_type="image/png",
        width=1024,
        height=1024,
        caption="a fox",
    )
    assert sent.ok and sent.fallback
    assert [type(r.method) for r in rig.session.requests] == [SendPhoto, SendDocument]


# ---- unreachable chats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "description"),
    [
        (403, "Forbidden: bot was blocked by the user"),
        (403, "Forbidden: bot was kicked from the group chat"),
        (400, "Bad Request: chat not found"),
    ],
)
async def test_an_unreachable_chat_is_not_retried(rig: Rig, status: int, description: str) -> None:
    rig.session.fail(status, description)
    sent = await rig.delivery.send_text(CHAT, "hello")
    assert sent.outcome is Outcome.UNREACHABLE
    assert len(rig.session.requests) == 1


async def test_the_writer_stops_writing_to_an_unreachable_chat(rig: Rig) -> None:
    rig.session.fail(403, "Forbidden: bot was blocked by the user")
    writer = TelegramReplyWriter(delivery=rig.delivery, chat_id=CHAT)
    writer.push("Hello")
    assert await writer.finish(note="a note") is False
    await writer.fail("and an error")
    assert len(rig.session.sent(SendMessage)) == 1


@pytest.mark.parametrize(
    "description",
    ["Bad Request: message to edit not found", "Bad Request: message can't be edited"],
)
async def test_the_writer_continues_in_a_new_message_when_its_message_is_gone(
    rig: Rig, description: str
) -> None:
    writer = TelegramReplyWriter(delivery=rig.delivery, chat_id=CHAT)
    writer.push("Hello")
    assert await writer.finish()
    rig.session.fail(400, description)
    writer.push(", world")
    assert await writer.finish()
    kinds = [type(r.method) for r in rig.session.requests]
    assert kinds == [SendMessage, EditMessageText, SendMessage]
    assert rig.session.requests[-1].method.text == "Hello, world"
    assert len(writer.message_ids) == 2


# ---- drafts ----------------------------------------------------------------------------------


async def test_a_draft_goes_formatted_with_its_stop_button(rig: Rig) -> None:
    sent = await rig.delivery.send_draft(CHAT, 77, "Hi *there*", html="Hi <b>there</b>")
    assert sent.ok
    [request] = rig.session.sent(SendMessageDraft)
    assert (request.method.draft_id, request.method.text) == (77, "Hi <b>there</b>")
    assert request.method.parse_mode == "HTML" and request.method.can_stop is True


async def test_a_server_without_drafts_turns_them_off_everywhere(rig: Rig) -> None:
    rig.session.fail(404, "Not Found")
    sent = await rig.delivery.send_draft(CHAT, 77, "Hi")
    assert sent.outcome is Outcome.UNSUPPORTED
    assert not rig.delivery.drafts_allowed(CHAT)
    assert not rig.delivery.drafts_allowed(CHAT + 1)


async def test_a_chat_that_takes_no_drafts_turns_them_off_there_only(rig: Rig) -> None:
    rig.session.fail(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
    sent = await rig.delivery.send_draft(CHAT, 77, "Hi")
    assert sent.outcome is Outcome.UNSUPPORTED
    assert not rig.delivery.drafts_allowed(CHAT)
    assert rig.delivery.drafts_allowed(CHAT + 1)


async def test_a_draft_with_refused_formatting_goes_as_plain_text(rig: Rig) -> None:
    rig.session.fail(400, PARSE_ERROR)
    sent = await rig.delivery.send_draft(CHAT, 77, "Hi *there*", html="Hi <x>there")
    assert sent.ok and sent.fallback
    assert [r.method.text for r in rig.session.sent(SendMessageDraft)] == [
        "Hi <x>there",
        "Hi *there*",
    ]
    assert rig.delivery.drafts_allowed(CHAT)


async def test_a_draft_that_meets_a_429_is_deferred_not_retried(rig: Rig) -> None:
    rig.session.fail(429, "Too Many Requests: retry after 3", retry_after=3)
    sent = await rig.delivery.send_draft(CHAT, 77, "Hi")
    assert sent.outcome is Outcome.DEFERRED
    assert len(rig.session.sent(SendMessageDraft)) == 1
    assert rig.gate.ready_in(CHAT) >= 3.0
    assert rig.delivery.drafts_allowed(CHAT)


async def test_a_draft_answer_shows_thinking_first_when_a_slot_is_free(rig: Rig) -> None:
    writer = TelegramReplyWriter(
        delivery=rig.delivery,
        chat_id=CHAT,
        generations=Generations(),
        drafts=True,
        draft_interval=0.5,
    )
    await writer.start()
    for _ in range(5):
        await asyncio.sleep(0)
    writer.push("Hello, ")
    for _ in range(5):
        await asyncio.sleep(0)
    writer.push("world")
    assert await writer.finish()
    drafts = rig.session.sent(SendMessageDraft)
    assert [d.method.text for d in drafts][:2] == ["", "Hello,"]
    assert not rig.session.sent(SendChatAction)
    # The first text follows "Thinking…" at once; later drafts keep the draft interval.
    assert drafts[1].at == drafts[0].at
    assert all(b.at - a.at >= 0.5 for a, b in itertools.pairwise(drafts[1:]))
    assert [r.method.text for r in rig.session.sent(SendMessage)] == ["Hello, world"]


async def test_a_placeholder_waiting_for_a_slot_gives_it_to_the_first_text(rig: Rig) -> None:
    gate = FloodGate(global_rate=1, clock=rig.t.clock, sleep=rig.t.sleep)
    delivery = Delivery(bot=Bot(token=TOKEN, session=rig.session), gate=gate, sleep=rig.t.backoff)
    await gate.acquire(CHAT + 1)  # another chat's call holds the only bot-wide slot
    writer = TelegramReplyWriter(
        delivery=delivery, chat_id=CHAT, generations=Generations(), drafts=True
    )
    await writer.start()
    for _ in range(5):
        await asyncio.sleep(0)
    writer.push("Hello")
    gate.release(CHAT + 1)
    assert await writer.finish()
    assert "" not in [r.method.text for r in rig.session.sent(SendMessageDraft)]
    assert rig.session.sent(SendChatAction), "nothing showed the answer was coming"


# ---- a group upgraded to a supergroup ------------------------------------------------------


async def test_a_message_for_an_upgraded_group_goes_to_the_supergroup(rig: Rig) -> None:
    rig.session.migrate(SUPERGROUP)
    sent = await rig.delivery.send_text(GROUP, "hello", reply_to=5)
    assert sent.ok and sent.moved_to == SUPERGROUP
    first, second = (r.method for r in rig.session.sent(SendMessage))
    assert (first.chat_id, first.reply_parameters.message_id) == (GROUP, 5)
    # Message 5 of the group is another message, or none, in the supergroup.
    assert (second.chat_id, second.reply_parameters) == (SUPERGROUP, None)
    assert rig.t.backoffs == []


async def test_a_picture_for_an_upgraded_group_goes_to_the_supergroup(rig: Rig) -> None:
    rig.session.migrate(SUPERGROUP)
    sent = await rig.delivery.send_picture(
        GROUP,
        data=b"\x89PNG",
        filename="fox.png",
        mime_type="image/png",
        width=512,
        height=512,
        caption="a fox",
    )
    assert sent.ok and not sent.fallback and sent.moved_to == SUPERGROUP
    assert [r.method.chat_id for r in rig.session.sent(SendPhoto)] == [GROUP, SUPERGROUP]


async def test_an_edit_in_an_upgraded_group_is_gone_and_names_the_supergroup(rig: Rig) -> None:
    rig.session.migrate(SUPERGROUP)
    sent = await rig.delivery.edit_text(GROUP, 7, "more")
    assert sent.outcome is Outcome.GONE and sent.moved_to == SUPERGROUP
    assert len(rig.session.requests) == 1


async def test_the_writer_follows_a_group_to_its_supergroup(rig: Rig) -> None:
    writer = TelegramReplyWriter(delivery=rig.delivery, chat_id=GROUP, reply_to=5)
    writer.push("Hello")
    assert await writer.finish()
    assert writer.moved_to is None
    rig.session.migrate(SUPERGROUP)  # upgraded while the answer is being written
    writer.push(", world")
    assert await writer.finish(note="a note")
    assert writer.moved_to == SUPERGROUP
    calls = [(type(r.method).__name__, r.method.chat_id) for r in rig.session.requests]
    assert calls == [
        ("SendMessage", GROUP),
        ("EditMessageText", GROUP),
        ("SendMessage", SUPERGROUP),
        ("SendMessage", SUPERGROUP),
    ]
    answer, note = (r.method for r in rig.session.sent(SendMessage)[1:])
    assert answer.text == "Hello, world" and answer.reply_parameters is None
    assert note.reply_parameters.message_id == writer.message_ids[-1]


# ---- pacing --------------------------------------------------------------------------------


async def test_every_call_takes_a_turn_at_the_gate(rig: Rig) -> None:
    await rig.delivery.send_text(CHAT, "one")
    await rig.delivery.edit_text(CHAT, 7, "two")
    first, second = rig.session.requests
    assert second.at - first.at >= rig.gate.interval_for(CHAT)


async def test_a_turn_taken_ahead_is_used_for_the_call(rig: Rig) -> None:
    turn = rig.delivery.turn(CHAT)
    await turn.take()
    start = rig.t.now
    await rig.delivery.send_text(CHAT, "one", turn=turn)
    assert rig.t.now == start  # no second wait for the same slot
    assert not turn.held  # ended with the call's answer


# ---- chat actions --------------------------------------------------------------------------


async def test_a_chat_action_is_shown_at_once_and_renewed_in_time(rig: Rig) -> None:
    action = rig.delivery.chat_action(CHAT, ChatAction.TYPING, thread_id=3)
    # Telegram shows an action for 5 s: renewing later would let it flicker off.
    assert 4.0 <= action.interval == CHAT_ACTION_RENEW_SECONDS < 5.0
    async with action:
        for _ in range(10):
            await asyncio.sleep(0)
    (request,) = rig.session.sent(SendChatAction)
    assert (request.method.chat_id, request.method.action) == (CHAT, "typing")
    assert request.method.message_thread_id == 3


async def test_a_refused_chat_action_ends_quietly(rig: Rig) -> None:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    rig.session.fail(403, "Forbidden: bot was blocked by the user")
    async with rig.delivery.chat_action(CHAT, ChatAction.UPLOAD_PHOTO):
        for _ in range(10):
            await asyncio.sleep(0)
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert len(rig.session.sent(SendChatAction)) == 1
    assert errors == []
