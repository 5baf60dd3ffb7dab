"""Last-resort error handler: log the failure and tell the user instead of going silent."""

from __future__ import annotations

import logging
import traceback

from aiogram import Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import ErrorEvent, Update
from aiogram.types.update import UpdateTypeLookupError

from bot.i18n import _

logger = logging.getLogger(__name__)


async def on_error(event: ErrorEvent) -> bool:
    """Log an unexpected exception from a handler and answer the user briefly."""
    update = event.update
    exc = event.exception
    # Where it failed, not what it said: an exception's text may quote the user's message
    # (a validation error's input, say), and message texts stay out of ERROR logs.
    logger.error(
        "update %s (%s) failed: %s at\n%s",
        update.update_id,
        _kind(update),
        type(exc).__name__,
        "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
    )
    logger.debug("update %s failed", update.update_id, exc_info=exc)
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


def _kind(update: Update) -> str:
    try:
        return update.event_type
    except UpdateTypeLookupError:
        return "unknown"


def build_router() -> Router:
    """A fresh router holding the error handler (one per Dispatcher)."""
    router = Router(name=__name__)
    router.errors.register(on_error)
    return router
