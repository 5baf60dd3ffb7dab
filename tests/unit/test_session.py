"""The Bot API session: the response models it keeps."""

from __future__ import annotations

import gc
import json
import weakref

from aiogram import Bot
from aiogram.enums import ChatAction
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
