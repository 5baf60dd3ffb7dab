"""The Bot API session: aiogram's aiohttp session, keeping the models answers are parsed with."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import ClientDecodeError, TelegramAPIError, TelegramRetryAfter
from aiogram.methods import GetUpdates, SendChatAction
from aiogram.methods.base import Response, TelegramMethod, TelegramType
from aiogram.types import Update
from pydantic import ValidationError

if TYPE_CHECKING:
    from aiogram import Bot

logger = logging.getLogger(__name__)


class BotSession(AiohttpSession):
    """An AiohttpSession that keeps the response models it parses answers with.

    aiogram parses each answer with ``Response[method.__returning__]``, and pydantic keeps such
    parametrized models only in a weak cache: once the last answer of a kind has been freed,
    the next call builds the model again, 3-6 ms of CPU. Unpinned, that happened on nearly
    every call (getUpdates, sendMessage, editMessageText, sendChatAction), a third of the
    bot's CPU time per answer. Only documented hooks are used: the `json_loads` argument,
    `check_response`, which every aiogram session calls to parse an answer, and a request
    middlewares (:class:`QuietChatActions`, :class:`PollingRetryAfter`).
    """

    def __init__(self, **kwargs: Any) -> None:
        """Take AiohttpSession's arguments; answers are parsed with orjson by default."""
        # Several times faster than the standard library on every answer Telegram sends back.
        kwargs.setdefault("json_loads", orjson.loads)
        super().__init__(**kwargs)
        self._response_models: dict[Any, type[Any]] = {}
        self.middleware(QuietChatActions())
        self.middleware(PollingRetryAfter())

    def check_response(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        status_code: int,
        content: str,
    ) -> Response[TelegramType]:
        """Parse an answer as aiogram does, with its response model pinned.

        A getUpdates answer holding an update aiogram cannot parse (a poison update) would fail
        as a whole, and aiogram's polling would ask for the same batch forever. That update is
        replaced by a bare one with its id, logged by id and kind without its content, so
        polling moves past it and every other update of the batch is handled.

        aiogram picks the exception by the HTTP status alone, so an error answered with HTTP
        200 and ``"ok": false`` (a proxy or a self-hosted server may do that) would be a bare
        TelegramAPIError: it is raised as the error its `error_code` names instead.
        """
        self._pin(method.__returning__)
        try:
            return super().check_response(bot, method, status_code, content)
        except TelegramAPIError as exc:
            code = _error_code(self.json_loads(content)) if type(exc) is TelegramAPIError else None
            if code is None or code == status_code:
                raise
            return super().check_response(bot, method, code, content)
        except ClientDecodeError as exc:
            # Only an answer that is JSON can hold a poison update; anything else (JSON cut
            # short, a proxy's HTML page) stays the ClientDecodeError the delivery path retries.
            if not isinstance(exc.original, ValidationError):
                raise
            repaired = _without_poison(method, self.json_loads(content), bot)
            if repaired is None:
                raise
        return super().check_response(bot, method, status_code, self.json_dumps(repaired))

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


class QuietChatActions(BaseRequestMiddleware):
    """A Bot API request middleware: a refused chat action is logged, not raised.

    A chat action is only a courtesy. aiogram's ChatActionSender sends it from a background
    task that nobody awaits, so an error there (the bot was blocked, a 429, a network error)
    would end the task with "Task exception was never retrieved" in the log. Refused, the
    indicator just lapses within five seconds, and the answer's own delivery deals with the
    chat. Every other call passes through untouched.
    """

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Any:  # aiogram's sessions pass the call's result through their middlewares
        """Make the call; for a chat action, answer False instead of raising."""
        try:
            return await make_request(bot, method)
        except (TelegramAPIError, ClientDecodeError) as exc:
            if not isinstance(method, SendChatAction):
                raise
            logger.debug("chat %s: chat action %s refused: %s", method.chat_id, method.action, exc)
            return False


class PollingRetryAfter(BaseRequestMiddleware):
    """A Bot API request middleware: getUpdates answered 429 waits `retry_after`, then asks again.

    aiogram's polling loop meets any failed getUpdates with its own backoff of one to five
    seconds, whatever Telegram asked for, so a bot told to wait a minute would ask a dozen
    times meanwhile. Other calls' 429s are the delivery path's (bot/telegram/delivery.py).
    """

    def __init__(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """`sleep` is injectable for tests."""
        self._sleep = sleep

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Any:  # aiogram's sessions pass the call's result through their middlewares
        """Make the call; for getUpdates, wait out a 429 and try again."""
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                if not isinstance(method, GetUpdates):
                    raise
                logger.warning("getUpdates: flood control, waiting %ss as told", exc.retry_after)
                await self._sleep(exc.retry_after)


def _error_code(answer: Any) -> int | None:
    """The `error_code` of a Bot API error answer, if it names an HTTP error status."""
    code = answer.get("error_code") if isinstance(answer, dict) else None
    return code if isinstance(code, int) and 400 <= code <= 599 else None


def _without_poison(method: TelegramMethod[Any], answer: Any, bot: Bot) -> dict[str, Any] | None:
    """A getUpdates answer with each update that fails to parse cut down to its id.

    None for another method, or when the answer is not a list of updates with ids.
    """
    if not isinstance(method, GetUpdates):
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("result"), list):
        return None
    updates: list[Any] = []
    for raw in answer["result"]:
        update_id = raw.get("update_id") if isinstance(raw, dict) else None
        if not isinstance(update_id, int):
            return None
        try:
            Update.model_validate(raw, context={"bot": bot})
        except ValidationError as exc:
            kinds = sorted(key for key in raw if key != "update_id")
            # The content stays out of the log: it is a user's message.
            logger.error(
                "skipping update %s (%s) that cannot be parsed: %d validation errors",
                update_id,
                ", ".join(kinds) or "empty",
                exc.error_count(),
            )
            raw = {"update_id": update_id}
        updates.append(raw)
    return {**answer, "result": updates}
