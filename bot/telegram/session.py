"""The Bot API session: aiogram's aiohttp session, keeping the models answers are parsed with."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.methods.base import Response, TelegramMethod, TelegramType

if TYPE_CHECKING:
    from aiogram import Bot


class BotSession(AiohttpSession):
    """An AiohttpSession that keeps the response models it parses answers with.

    aiogram parses each answer with ``Response[method.__returning__]``, and pydantic keeps such
    parametrized models only in a weak cache: once the last answer of a kind has been freed,
    the next call builds the model again, 3-6 ms of CPU. Unpinned, that happened on nearly
    every call (getUpdates, sendMessage, editMessageText, sendChatAction), a third of the
    bot's CPU time per answer. Only documented hooks are used: the `json_loads` argument and
    `check_response`, which every aiogram session calls to parse an answer.
    """

    def __init__(self, **kwargs: Any) -> None:
        """Take AiohttpSession's arguments; answers are parsed with orjson by default."""
        # Several times faster than the standard library on every answer Telegram sends back.
        kwargs.setdefault("json_loads", orjson.loads)
        super().__init__(**kwargs)
        self._response_models: dict[Any, type[Any]] = {}

    def check_response(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        status_code: int,
        content: str,
    ) -> Response[TelegramType]:
        """Parse an answer as aiogram does, with its response model pinned."""
        self._pin(method.__returning__)
        return super().check_response(bot, method, status_code, content)

    def pin_response_models(self, methods: Iterable[type[TelegramMethod[Any]]]) -> None:
        """Build and keep the response models of these methods now, before the first call."""
        for method in methods:
            self._pin(method.__returning__)

    def _pin(self, returning: Any) -> None:
        try:
            if returning not in self._response_models:
                self._response_models[returning] = Response[returning]
        except TypeError:  # an unhashable return annotation: nothing to pin it by
            pass
