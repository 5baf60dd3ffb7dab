"""Button presses no other handler takes: answered all the same, with the reason."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.types import CallbackQuery

from bot.telegram.keyboards import stale_notice

logger = logging.getLogger(__name__)


async def unmatched(query: CallbackQuery) -> None:
    """Data no keyboard of this version has (stale or forged): say so, change nothing."""
    logger.debug("button data %r from user %s matched no handler", query.data, query.from_user.id)
    # aiogram drops a press nobody handles, and the presser's app would spin until it times out.
    await query.answer(stale_notice(query.data))


def build_router() -> Router:
    """A fresh router answering every press; include it after all other routers."""
    router = Router(name=__name__)
    router.callback_query.register(unmatched)
    return router
