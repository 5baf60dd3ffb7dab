"""/image: draw a picture from the command's text, or from the message it replies to."""

from __future__ import annotations

import asyncio
import contextlib

from aiogram import Router
from aiogram.enums import ChatAction
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.i18n import _
from bot.services.images import ImageRefusal, ImageService
from bot.telegram.filters import NotFromBot
from bot.telegram.replies import Replies
from bot.telegram.requests import image_request


async def draw(
    message: Message, command: CommandObject, image_service: ImageService, replies: Replies
) -> None:
    """Generate an image and send it as a photo captioned with its description."""
    prompt = (command.args or "").strip() or _replied_text(message)
    if not prompt or message.from_user is None:
        text = _(
            "Describe the picture after the command, for example:\n"
            "/image a red fox sleeping in the snow, watercolour\n\n"
            "Or reply /image to a message to draw what it says."
        )
        await replies.text(message, text)
        return
    request = image_request(message, message.from_user, prompt)
    # "sending a photo…" is shown from the backend request (once the checks have passed)
    # until the photo is in the chat.
    upload_photo = replies.chat_action(message, ChatAction.UPLOAD_PHOTO)
    async with contextlib.AsyncExitStack() as action:
        try:
            outcome = await image_service.generate(
                request=request, on_start=lambda: action.enter_async_context(upload_photo)
            )
        except asyncio.CancelledError:
            await action.aclose()
            await replies.text(
                message,
                _("⚠️ The image was not finished: the bot was restarted. Please ask again."),
            )
            raise
        if isinstance(outcome, ImageRefusal):
            await action.aclose()
            await replies.text(message, outcome.text)
            return
        sent = await replies.image(
            message,
            data=outcome.data,
            filename=outcome.filename,
            mime_type=outcome.mime_type,
            width=outcome.width,
            height=outcome.height,
            caption=prompt,
        )
    if not sent:
        await replies.text(message, _("The image was drawn, but Telegram did not accept it."))


def _replied_text(message: Message) -> str:
    """The prompt taken from a reply: the quoted part, else the whole text or caption."""
    if message.quote is not None and message.quote.text.strip():
        return message.quote.text.strip()
    replied = message.reply_to_message
    if replied is None:
        return ""
    return (replied.text or replied.caption or "").strip()


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(draw, Command("image"))
    return router
