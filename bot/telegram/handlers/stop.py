"""Stop: the draft's native stop button, and the Stop button on an answer streamed by edits."""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.types import CallbackQuery, MessageGenerationStopped

from bot.config import Settings
from bot.i18n import _
from bot.telegram.permissions import manages_chat
from bot.telegram.replies import Replies
from bot.telegram.stops import StopPress

logger = logging.getLogger(__name__)


async def draft_stopped(event: MessageGenerationStopped, replies: Replies) -> None:
    """The user pressed the stop button of a draft: end that answer, if it still runs."""
    generations = replies.generations
    asked = await generations.find(chat_id=event.chat.id, generation_id=event.draft_id)
    if asked is None:
        logger.info("chat %s: stop for draft %s, no longer running", event.chat.id, event.draft_id)
        return
    logger.info("chat %s: answer stopped by the user (draft)", event.chat.id)
    await generations.stop(asked)


async def stop_pressed(
    query: CallbackQuery, callback_data: StopPress, replies: Replies, bot: Bot, settings: Settings
) -> None:
    """The Stop button: the person who asked, or whoever manages the chat, ends the answer."""
    chat = query.message.chat if query.message is not None else None
    generations = replies.generations
    asked = None
    if chat is not None:
        asked = await generations.find(chat_id=chat.id, generation_id=callback_data.g)
    if chat is None or asked is None:
        await query.answer(_("This answer has already finished."))
        return
    user_id = query.from_user.id
    if user_id != asked.asker_id and not await manages_chat(
        bot=bot, settings=settings, chat=chat, user_id=user_id
    ):
        await query.answer(
            _("Only the person who asked, or an administrator, can stop this answer.")
        )
        return
    logger.info("chat %s: answer stopped by user %s", chat.id, user_id)
    await generations.stop(asked)
    await query.answer(_("Stopped."))


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.stopped_message_generation.register(draft_stopped)
    router.callback_query.register(stop_pressed, StopPress.filter())
    return router
