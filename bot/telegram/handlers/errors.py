"""Last-resort error handler: log the failure and tell the user instead of going silent."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import ErrorEvent

from bot.i18n import _

logger = logging.getLogger(__name__)


async def on_error(event: ErrorEvent) -> bool:
    """Log an unexpected exception from a handler and answer the user briefly."""
    update = event.update
    logger.error(
        "update %s failed: %s", update.update_id, event.exception, exc_info=event.exception
    )
    text = _("Something went wrong while answering. Please try again.")
    message = update.message
    if message is not None:
        try:
            await message.answer(text)
        except TelegramAPIError as exc:
            logger.warning("could not report the failure to chat %s: %s", message.chat.id, exc)
    elif update.callback_query is not None:
        try:
            await update.callback_query.answer(text, show_alert=True)
        except TelegramAPIError as exc:
            logger.warning("could not answer the button press: %s", exc)
    return True


def build_router() -> Router:
    """A fresh router holding the error handler (one per Dispatcher)."""
    router = Router(name=__name__)
    router.errors.register(on_error)
    return router
