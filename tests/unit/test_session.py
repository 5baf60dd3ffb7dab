"""The Bot API session: the response models it keeps."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
from aiogram import Bot
from aiogram.enums import ChatAction
from aiogram.exceptions import TelegramForbiddenError, TelegramServerError
from aiogram.methods import SendChatAction

from bot.telegram.session import BotSession, QuietChatActions


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


def test_the_session_carries_the_chat_action_policy() -> None:
    assert any(isinstance(m, QuietChatActions) for m in BotSession().middleware)


def test_an_error_answered_with_http_200_is_raised_as_the_error_it_names() -> None:
    # Any call, not only those the delivery path makes: a proxy may answer errors with 200.
    session = BotSession()
    bot = Bot("123456:TEST-TOKEN", session=session)
    method = SendChatAction(chat_id=1, action=ChatAction.TYPING)
    body = {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked"}
    with pytest.raises(TelegramForbiddenError):
        session.check_response(bot, method, 200, json.dumps(body))
    body = {"ok": False, "error_code": 502, "description": "Bad Gateway"}
    with pytest.raises(TelegramServerError):
        session.check_response(bot, method, 200, json.dumps(body))
