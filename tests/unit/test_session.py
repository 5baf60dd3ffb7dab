"""The Bot API session: the forms it sends and the response models it keeps."""

from __future__ import annotations

import gc
import json
import weakref
from urllib.parse import parse_qs

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.enums import ChatAction
from aiogram.methods import SendChatAction, SendMessage, SendPhoto
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    ReplyParameters,
)
from aiohttp import FormData
from aiohttp.payload import BytesPayload

from bot.telegram.session import BotSession


def test_a_response_model_outlives_the_responses_parsed_with_it() -> None:
    session = BotSession()
    bot = Bot("123456:TEST-TOKEN", session=session)
    method = SendChatAction(chat_id=1, action=ChatAction.TYPING)
    response = session.check_response(bot, method, 200, json.dumps({"ok": True, "result": True}))
    assert response.result is True
    model = weakref.ref(type(response))
    del response
    gc.collect()
    # pydantic caches it only weakly: without the session's reference the next call would
    # spend milliseconds building it again.
    assert model() is not None


def form_fields(payload: object) -> dict[str, list[str]]:
    assert isinstance(payload, BytesPayload)
    assert payload.content_type == "application/x-www-form-urlencoded"
    return parse_qs(payload.decode(), keep_blank_values=True, strict_parsing=True)


def test_forms_carry_the_fields_aiogram_would_send() -> None:
    session = BotSession()
    bot = Bot("123456:TEST-TOKEN", session=session)
    text = "Привет, <b>мир</b> & 1+1=2 % 🦦\nlast line"
    method = SendMessage(
        chat_id=-100123,
        text=text,
        parse_mode="HTML",
        reply_markup=InlineKeyboardMarkup(
            inline_keyboard=[[InlineKeyboardButton(text="gpt-4o ✅", callback_data="m:1")]]
        ),
        reply_parameters=ReplyParameters(message_id=7),
    )
    ours = form_fields(session.build_form_data(bot, method))
    theirs = form_fields(AiohttpSession().build_form_data(bot, method)())
    assert ours == theirs
    assert ours["text"] == [text]
    assert json.loads(ours["reply_markup"][0])["inline_keyboard"][0][0]["text"] == "gpt-4o ✅"


def test_uploads_still_go_as_multipart() -> None:
    session = BotSession()
    bot = Bot("123456:TEST-TOKEN", session=session)
    method = SendPhoto(chat_id=1, photo=BufferedInputFile(b"\x89PNG", filename="otter.png"))
    form = session.build_form_data(bot, method)
    assert isinstance(form, FormData)
    assert form().content_type.startswith("multipart/form-data")
