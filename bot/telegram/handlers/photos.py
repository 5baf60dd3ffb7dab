"""Pictures for a vision model: photos, image files, and questions replying to either."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from aiogram import Bot, Router
from aiogram.filters import BaseFilter
from aiogram.types import Message

from bot.config import Settings
from bot.i18n import _, format_number
from bot.pictures import VISION_MIME_TYPES, picture
from bot.services.chat import ChatService
from bot.telegram.downloads import DownloadFailed, TooLarge, download
from bot.telegram.filters import Addressed, NotFromBot
from bot.telegram.handlers.documents import download_failed
from bot.telegram.replies import Replies
from bot.telegram.requests import chat_request

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclasses.dataclass(frozen=True, slots=True)
class _Source:
    """One downloadable version of a picture (Telegram keeps each photo in several sizes)."""

    file_id: str
    size: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Attached:
    """The picture a message is about: its versions, largest first, and its file's name."""

    sources: Sequence[_Source]
    name: str | None = None


def attached_picture(message: Message) -> _Attached | None:
    """The picture in `message` itself: a photo, or an image sent as a file."""
    if message.photo:
        sizes = sorted(message.photo, key=lambda p: (p.file_size or 0, p.width * p.height))
        return _Attached([_Source(p.file_id, p.file_size) for p in reversed(sizes)])
    document = message.document
    if document is not None and _is_image_file(document.file_name, document.mime_type):
        return _Attached([_Source(document.file_id, document.file_size)], document.file_name)
    return None


def _is_image_file(name: str | None, mime_type: str | None) -> bool:
    if mime_type in VISION_MIME_TYPES:
        return True
    return (mime_type is None or mime_type == "application/octet-stream") and (
        (name or "").lower().endswith(IMAGE_EXTENSIONS)
    )


async def picture_message(
    message: Message,
    prompt: str,
    bot: Bot,
    settings: Settings,
    chat_service: ChatService,
    replies: Replies,
) -> None:
    """A photo or an image file, with its caption as the question."""
    attached = attached_picture(message)
    if attached is not None:
        await _answer(message, attached, prompt, bot, settings, chat_service, replies)


async def reply_to_picture(
    message: Message,
    prompt: str,
    bot: Bot,
    settings: Settings,
    chat_service: ChatService,
    replies: Replies,
) -> None:
    """A question replying to a photo or an image file: the picture is asked about."""
    replied = message.reply_to_message
    attached = attached_picture(replied) if replied is not None else None
    if attached is not None and prompt:
        await _answer(message, attached, prompt, bot, settings, chat_service, replies)


async def _answer(
    message: Message,
    attached: _Attached,
    prompt: str,
    bot: Bot,
    settings: Settings,
    chat_service: ChatService,
    replies: Replies,
) -> None:
    user = message.from_user
    if user is None:
        return
    limit = settings.vision_max_bytes
    fitting = [s for s in attached.sources if s.size is None or s.size <= limit]
    if not fitting:
        await replies.text(message, _too_large(limit))
        return
    # A spent budget is refused before anything is downloaded.
    refusal = await chat_service.budget_refusal(user_id=user.id)
    if refusal is not None:
        await replies.text(message, refusal)
        return
    data = None
    for source in fitting:
        try:
            data = await download(bot, source.file_id, limit=limit, chat_id=message.chat.id)
        except TooLarge:
            continue  # declared smaller than it is: try the next size down
        except DownloadFailed:
            await replies.text(message, download_failed())
            return
        break
    if data is None:
        await replies.text(message, _too_large(limit))
        return
    image = picture(data)
    if image is None:
        await replies.text(
            message, _("I can read JPEG, PNG and WebP pictures, but not this file.")
        )
        return
    request = dataclasses.replace(
        chat_request(message, user, prompt), image=image, image_name=attached.name
    )
    writer = replies.writer(message)
    await chat_service.reply(request=request, sink=writer)
    if writer.moved_to is not None:
        await replies.chat_moved(old_chat_id=message.chat.id, new_chat_id=writer.moved_to)


def _not_a_picture() -> str:
    return _("I can read JPEG, PNG and WebP pictures, but not this file.")


def _too_large(limit: int) -> str:
    megabytes = limit / (1024 * 1024)
    return _("This picture is too large: I read pictures of up to {size} MB.").format(
        size=format_number(round(megabytes, 1) if megabytes < 10 else round(megabytes))
    )


class HasPicture(BaseFilter):
    """Passes messages that carry a picture (a photo, or an image sent as a file)."""

    async def __call__(self, message: Message) -> bool:
        """True if `message` has a picture."""
        return attached_picture(message) is not None


class AsksAboutPicture(BaseFilter):
    """Passes text (not commands) replying to a message that carries a picture."""

    async def __call__(self, message: Message) -> bool:
        """True for a question replying to a picture."""
        replied = message.reply_to_message
        return (
            bool(message.text)
            and not (message.text or "").startswith("/")
            and replied is not None
            and attached_picture(replied) is not None
        )


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    # Coroutine filters: aiogram runs plain callables (magic filters too) in a worker thread.
    router.message.register(picture_message, HasPicture(), Addressed())
    router.message.register(reply_to_picture, AsksAboutPicture(), Addressed())
    return router
