"""Voice messages and audio files turned into text by the backend, with their usage recorded."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import NewUsage, UsageRepository
from bot.i18n import _
from bot.llm.errors import LLMAuthError, LLMError, LLMNotFoundError, LLMRateLimitError
from bot.llm.transcribe import Transcript, TranscriptionClient, is_missing_endpoint

logger = logging.getLogger(__name__)

# How often a chat is told that voice messages cannot be transcribed here.
NOTICE_EVERY_SECONDS = 3600.0
# How much of a transcript is shown back to the user before the answer.
SHOWN_CHARS = 300


@dataclass(frozen=True, slots=True)
class Heard:
    """The words of a voice message."""

    text: str


@dataclass(frozen=True, slots=True)
class NotHeard:
    """No words: why, for the user, or None when the chat was told within the hour."""

    message: str | None


@dataclass(frozen=True, slots=True)
class Audio:
    """A voice message or audio file to transcribe, and who sent it where."""

    chat_id: int
    user_id: int
    filename: str
    content_type: str
    data: bytes
    duration: int | None  # seconds, as Telegram reports them


class VoiceService:
    """Transcribes audio through LLM_BASE_URL's /audio/transcriptions and records its usage."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        client: TranscriptionClient | None,
        model: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`client` None: transcription is off (TRANSCRIBE_MODEL is empty)."""
        self._sessions = sessions
        self._client = client
        self._model = model
        self._clock = clock
        self._told: dict[int, float] = {}  # chat id → when it was told voice is unavailable

    @property
    def enabled(self) -> bool:
        """Whether voice messages are transcribed at all."""
        return self._client is not None

    def unavailable(self, chat_id: int) -> NotHeard:
        """Voice is not transcribed here: say so, at most once an hour in each chat."""
        now = self._clock()
        told = self._told.get(chat_id)
        if told is not None and now - told < NOTICE_EVERY_SECONDS:
            return NotHeard(None)
        self._told[chat_id] = now
        return NotHeard(
            _(
                "I cannot listen to voice messages here: the AI backend has no speech "
                "recognition. Please type your question."
            )
        )

    async def transcribe(self, audio: Audio) -> Heard | NotHeard:
        """The words of `audio`, or why there are none; the usage is recorded either way."""
        if self._client is None:
            return self.unavailable(audio.chat_id)
        started = self._clock()
        try:
            transcript = await self._client.transcribe(
                filename=audio.filename, data=audio.data, content_type=audio.content_type
            )
        except LLMError as exc:
            if is_missing_endpoint(exc):
                logger.warning("the backend has no /audio/transcriptions: %s", exc)
                return self.unavailable(audio.chat_id)
            await self._record(audio, None, started, exc)
            return NotHeard(_failed(exc, self._model))
        await self._record(audio, transcript, started, None)
        text = transcript.text.strip()
        if not text:
            return NotHeard(_("I could not make out any words in this recording."))
        return Heard(text)

    async def _record(
        self,
        audio: Audio,
        transcript: Transcript | None,
        started: float,
        failure: LLMError | None,
    ) -> None:
        """One usage row for the call: seconds of audio as the backend or Telegram count them."""
        seconds = 0
        if transcript is not None:
            reported = transcript.seconds
            if reported is None:
                reported = float(audio.duration or 0)
            seconds = math.ceil(reported)
        record = NewUsage(
            user_id=audio.user_id,
            chat_id=audio.chat_id,
            model=self._model,
            kind="transcription",
            prompt_tokens=0,
            completion_tokens=0,
            estimated=transcript is None or transcript.seconds is None,
            status="ok" if failure is None else "error",
            latency_ms=int((self._clock() - started) * 1000),
            finish_reason=None,
            error=str(failure)[:300] if failure is not None else None,
            audio_seconds=seconds,
        )
        try:
            async with self._sessions() as session, session.begin():
                await UsageRepository(session).add(record)
        except SQLAlchemyError as exc:
            # The owner can still account for it from the log.
            logger.error(
                "chat %s: could not record transcription usage (%s): user=%s model=%s seconds=%s",
                audio.chat_id,
                type(exc).__name__,
                audio.user_id,
                self._model,
                seconds,
            )


def shown(text: str) -> str:
    """The transcript as shown back to the user: quoted, and short."""
    if len(text) > SHOWN_CHARS:
        text = text[: SHOWN_CHARS - 1].rstrip() + "…"
    return _("🎤 “{text}”").format(text=text)


def _failed(exc: LLMError, model: str) -> str:
    if isinstance(exc, LLMAuthError):
        return _(
            "The AI backend refused the bot's API key. The bot's owner needs to fix LLM_API_KEY."
        )
    if isinstance(exc, LLMNotFoundError):
        return _(
            "The AI backend has no speech model “{model}”. The bot's owner needs to fix "
            "TRANSCRIBE_MODEL."
        ).format(model=model)
    if isinstance(exc, LLMRateLimitError):
        return _("The AI backend is busy. Please send the voice message again in a minute.")
    return _("I could not transcribe this voice message. Please try again or type it.")
