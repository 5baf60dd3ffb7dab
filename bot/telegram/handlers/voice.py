"""Voice messages and audio files: transcribed, shown back, and answered as if typed."""

from __future__ import annotations

from dataclasses import dataclass

from aiogram import Bot, Router
from aiogram.filters import BaseFilter
from aiogram.types import Message

from bot.i18n import _, format_number
from bot.services.chat import ChatService
from bot.services.voice import Audio, Heard, VoiceService, shown
from bot.telegram.downloads import TELEGRAM_DOWNLOAD_LIMIT, DownloadFailed, TooLarge, download
from bot.telegram.filters import Addressed, NotFromBot
from bot.telegram.handlers.documents import download_failed
from bot.telegram.replies import Replies
from bot.telegram.requests import chat_request


@dataclass(frozen=True, slots=True)
class _Recording:
    """The audio file a message carries."""

    file_id: str
    size: int | None
    filename: str
    content_type: str
    duration: int | None


def recording(message: Message) -> _Recording | None:
    """The voice message, audio file or audio document in `message`, if any."""
    if message.voice is not None:
        voice = message.voice
        mime = voice.mime_type or "audio/ogg"
        return _Recording(voice.file_id, voice.file_size, "voice.ogg", mime, voice.duration)
    if message.audio is not None:
        audio = message.audio
        mime = audio.mime_type or "audio/mpeg"
        name = audio.file_name or "audio.mp3"
        return _Recording(audio.file_id, audio.file_size, name, mime, audio.duration)
    document = message.document
    if document is not None and (document.mime_type or "").startswith("audio/"):
        name = document.file_name or "audio"
        return _Recording(
            document.file_id, document.file_size, name, document.mime_type or "", None
        )
    return None


class HasRecording(BaseFilter):
    """Passes messages carrying a voice message or an audio file."""

    async def __call__(self, message: Message) -> bool:
        """True if `message` has audio to transcribe."""
        return recording(message) is not None


async def voice_message(
    message: Message,
    prompt: str,
    bot: Bot,
    chat_service: ChatService,
    voice_service: VoiceService,
    replies: Replies,
) -> None:
    """Transcribe, show the words, then answer them (with the caption, if any)."""
    heard = recording(message)
    user = message.from_user
    if heard is None or user is None:
        return
    if not voice_service.enabled:
        notice = voice_service.unavailable(message.chat.id).message
        if notice is not None:
            await replies.text(message, notice)
        return
    if heard.size is not None and heard.size > TELEGRAM_DOWNLOAD_LIMIT:
        await replies.text(message, _too_large())
        return
    # A spent budget is refused before anything is downloaded or transcribed.
    refusal = await chat_service.budget_refusal(user_id=user.id)
    if refusal is not None:
        await replies.text(message, refusal)
        return
    try:
        data = await download(
            bot, heard.file_id, limit=TELEGRAM_DOWNLOAD_LIMIT, chat_id=message.chat.id
        )
    except TooLarge:
        await replies.text(message, _too_large())
        return
    except DownloadFailed:
        await replies.text(message, download_failed())
        return
    result = await voice_service.transcribe(
        Audio(
            chat_id=message.chat.id,
            user_id=user.id,
            filename=heard.filename,
            content_type=heard.content_type,
            data=data,
            duration=heard.duration,
        )
    )
    if not isinstance(result, Heard):
        if result.message is not None:
            await replies.text(message, result.message)
        return
    await replies.text(message, shown(result.text))
    text = f"{prompt}\n\n{result.text}" if prompt else result.text
    writer = replies.writer(message)
    await chat_service.reply(request=chat_request(message, user, text), sink=writer)
    if writer.moved_to is not None:
        await replies.chat_moved(old_chat_id=message.chat.id, new_chat_id=writer.moved_to)


def _too_large() -> str:
    return _("This recording is too large: I can download files of up to {size} MB.").format(
        size=format_number(TELEGRAM_DOWNLOAD_LIMIT // (1024 * 1024))
    )


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(voice_message, HasRecording(), Addressed())
    return router
