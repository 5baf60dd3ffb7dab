"""The image service: per-user limits, one image from the backend, a usage record per request.

Limits count the `usage_records` of kind "image", per user across all chats; owners are exempt.

* Cooldown (IMAGE_COOLDOWN_SECONDS): measured from the end of the user's previous image
  request, successful or not. Failed requests count too: each one still cost a slow backend call
  and put messages into the chat, so retrying a failing prompt in a loop is paced as well.
* Daily limit (IMAGE_DAILY_LIMIT): successful images in the last 24 hours (a rolling window, so
  the answer can say exactly when the next image is possible). Failures do not use it up.

Requests refused by these limits never reach the backend and are not recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.models import utcnow
from bot.db.repositories import NewUsage, UsageRepository
from bot.i18n import _, format_duration, format_number, ngettext
from bot.llm.errors import (
    ImageLinkRefusedError,
    LLMAuthError,
    LLMBadRequestError,
    LLMContentPolicyError,
    LLMError,
    LLMHTTPError,
    LLMImageDownloadError,
    LLMNotFoundError,
    LLMProtocolError,
    LLMRateLimitError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from bot.llm.images import GeneratedImage, ImageApiSetting, ImageClient, choose_image_api
from bot.services.chat import describe_error
from bot.services.directory import Directory
from bot.services.usage import BudgetService

logger = logging.getLogger(__name__)

DAY = timedelta(hours=24)

RefusalReason = Literal[
    "disabled", "busy", "cooldown", "daily_limit", "content_policy", "timeout", "failed", "budget"
]


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A user's request for an image."""

    chat_id: int
    chat_type: str
    chat_title: str | None
    user_id: int
    user_full_name: str
    username: str | None
    language_code: str | None
    prompt: str


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """Settings the image service needs."""

    model: str  # empty: image generation is off
    api: ImageApiSetting
    size: str
    cooldown_seconds: int  # 0: no cooldown
    daily_limit: int  # 0: no daily limit
    exempt_user_ids: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class ImageReady:
    """A generated image, ready to be sent."""

    data: bytes
    mime_type: str
    filename: str
    width: int | None
    height: int | None
    model: str


@dataclass(frozen=True, slots=True)
class ImageRefusal:
    """Why no image was made, with the explanation for the person who asked."""

    reason: RefusalReason
    text: str
    retry_in: float | None = None  # seconds until a limit lets the user try again


ImageOutcome = ImageReady | ImageRefusal


class ImageService:
    """Generates images on request, within each user's cooldown and daily limit."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        images: ImageClient,
        config: ImageConfig,
        budgets: BudgetService | None = None,
        now: Callable[[], datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
        directory: Directory | None = None,
    ) -> None:
        self._sessions = sessions
        self._directory = directory or Directory(capacity=0)
        self._images = images
        self._config = config
        self._budgets = budgets
        self._now = now
        self._clock = clock
        # Users with an image in progress: limits are counted from finished requests, so without
        # this one user could start several at once from different chats.
        self._running: set[int] = set()

    @property
    def enabled(self) -> bool:
        """True when an image model is configured."""
        return bool(self._config.model)

    async def generate(
        self,
        *,
        request: ImageRequest,
        on_start: Callable[[], Awaitable[object]] | None = None,
    ) -> ImageOutcome:
        """Make one image for `request`, or say why not; every backend request is recorded.

        `on_start` is awaited once the checks have passed, just before the backend is asked
        (the handler shows "sending a photo…" from then on).
        """
        exempt = request.user_id in self._config.exempt_user_ids
        if self.enabled and not exempt and request.user_id in self._running:
            text = _(
                "Your previous image is still being drawn. Please wait for it before asking again."
            )
            return ImageRefusal("busy", text)
        if not exempt:
            self._running.add(request.user_id)
        try:
            refusal = await self.check(request=request)
            if refusal is not None:
                return refusal
            if on_start is not None:
                await on_start()
            return await self._generate(request)
        finally:
            if not exempt:
                self._running.discard(request.user_id)

    async def check(self, *, request: ImageRequest) -> ImageRefusal | None:
        """Decide whether `request` may generate an image now; None if it may.

        This is the one place for checks made before generating (budgets belong here too).
        """
        if not self.enabled:
            text = _(
                "Image generation is not enabled on this bot. The bot's owner can turn it on by "
                "setting IMAGE_MODEL."
            )
            return ImageRefusal("disabled", text)
        if request.user_id in self._config.exempt_user_ids:
            return None
        if self._budgets is not None:
            block = await self._budgets.check(user_id=request.user_id)
            if block is not None:
                return ImageRefusal("budget", block.message, block.resets_in.total_seconds())
        cooldown = timedelta(seconds=self._config.cooldown_seconds)
        limit = self._config.daily_limit
        if not cooldown and not limit:
            return None
        now = self._now()
        async with self._sessions() as session:
            usage = UsageRepository(session)
            if cooldown:
                last = await usage.last_image_at(user_id=request.user_id, since=now - cooldown)
                if last is not None:
                    wait = (last + cooldown - now).total_seconds()
                    text = _(
                        "Please wait a little between images: you can ask for the next one in "
                        "{wait}."
                    ).format(wait=format_duration(wait))
                    return ImageRefusal("cooldown", text, wait)
            if limit:
                made = await usage.image_times(
                    user_id=request.user_id, since=now - DAY, limit=limit
                )
                if len(made) >= limit:
                    # The oldest of the last `limit` images leaves the window first.
                    wait = (made[-1] + DAY - now).total_seconds()
                    text = ngettext(
                        "You have had your {count} image for the last 24 hours. You can ask for "
                        "the next one in {wait}.",
                        "You have had your {count} images for the last 24 hours. You can ask for "
                        "the next one in {wait}.",
                        limit,
                    ).format(count=format_number(limit), wait=format_duration(wait))
                    return ImageRefusal("daily_limit", text, wait)
        return None

    # ---- steps -------------------------------------------------------------------------------

    async def _generate(self, request: ImageRequest) -> ImageOutcome:
        config = self._config
        api = choose_image_api(config.api, config.model)
        started = self._clock()
        image: GeneratedImage | None = None
        failure: BaseException | None = None
        try:
            image = await self._images.generate(
                model=config.model, prompt=request.prompt, size=config.size, api=api
            )
        except LLMError as exc:
            failure = exc
        except asyncio.CancelledError as exc:
            # Shutdown: record the attempt, then stop.
            failure = exc
        latency_ms = int((self._clock() - started) * 1000)
        # The images API is priced by the size asked for; chat-style models take no size, so
        # the size received is kept instead.
        size: str | None = config.size if api == "images" else None
        if api == "chat" and image is not None and image.width and image.height:
            size = f"{image.width}x{image.height}"
        await self._record(
            request=request, image=image, size=size, latency_ms=latency_ms, failure=failure
        )
        logger.info(
            "image chat=%s user=%s model=%s api=%s size=%s bytes=%s latency_ms=%s status=%s",
            request.chat_id,
            request.user_id,
            config.model,
            api,
            size,
            len(image.data) if image else 0,
            latency_ms,
            "ok" if failure is None else f"error:{type(failure).__name__}",
        )
        if isinstance(failure, asyncio.CancelledError):
            raise failure
        if image is None:
            return describe_image_error(failure, model=config.model)
        return ImageReady(
            data=image.data,
            mime_type=image.mime_type,
            filename=f"image.{image.extension}",
            width=image.width,
            height=image.height,
            model=config.model,
        )

    async def _record(
        self,
        *,
        request: ImageRequest,
        image: GeneratedImage | None,
        size: str | None,
        latency_ms: int,
        failure: BaseException | None,
    ) -> None:
        """Record the request's usage (and who asked where) in one short transaction."""
        usage = image.usage if image is not None else None
        directory = self._directory
        async with self._sessions() as session, session.begin():
            chat = await directory.chat(
                session, chat_id=request.chat_id, type=request.chat_type, title=request.chat_title
            )
            user = await directory.user(
                session,
                user_id=request.user_id,
                username=request.username,
                full_name=request.user_full_name,
                language_code=request.language_code,
            )
            await UsageRepository(session).add(
                NewUsage(
                    user_id=request.user_id,
                    chat_id=request.chat_id,
                    model=self._config.model,
                    kind="image",
                    # Images are priced per image unless the backend reports tokens (gpt-image-1).
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                    estimated=False,
                    status="ok" if image is not None else "error",
                    latency_ms=latency_ms,
                    images=1 if image is not None else 0,
                    size=size,
                    error=_short_error(failure),
                )
            )
        directory.remember(chat, user)


def describe_image_error(failure: BaseException | None, *, model: str) -> ImageRefusal:
    """Why an image could not be made, for the person who asked."""
    if isinstance(failure, LLMContentPolicyError):
        text = _(
            "The image service refused this description under its content policy. Please "
            "describe something else."
        )
        return ImageRefusal("content_policy", text)
    if isinstance(failure, LLMTimeoutError) and failure.phase != "connect":
        text = _("Drawing the image took too long (over {seconds} s). Please try again later.")
        return ImageRefusal("timeout", text.format(seconds=format_number(failure.seconds)))
    if isinstance(failure, LLMAuthError | LLMRateLimitError):
        # Worded once, by the chat service: they read the same for answers and images.
        text = describe_error(failure, model=model)
    elif isinstance(failure, LLMNotFoundError):
        text = _(
            "The image model “{model}” is not available on the AI backend, or the backend cannot "
            "draw images. The bot's owner needs to change IMAGE_MODEL."
        ).format(model=model)
    elif isinstance(failure, LLMBadRequestError):
        text = _("The AI backend rejected the image request: {detail}").format(
            detail=failure.message[:200]
        )
    elif isinstance(failure, ImageLinkRefusedError):
        text = _(
            "The image was drawn, but the bot does not download it from the link the AI backend "
            "gave (a private or local address, or an unsafe link). The bot's owner finds the "
            "reason in the log."
        )
    elif isinstance(failure, LLMImageDownloadError):
        text = _(
            "The image was drawn, but downloading it from the AI backend failed. Please try again."
        )
    elif isinstance(failure, LLMUnavailableError | LLMTimeoutError):
        # A timeout here is a connect timeout: the backend was never reached.
        text = _("The AI backend cannot be reached right now. Please try again later.")
    elif isinstance(failure, LLMHTTPError):
        text = _("The AI backend failed to draw the image ({detail}). Please try again later.")
        text = text.format(detail=failure.message[:200])
    elif isinstance(failure, LLMProtocolError):
        text = _("The AI backend answered without a usable image. Please try again.")
    else:
        text = describe_error(failure, model=model)
    return ImageRefusal("failed", text)


def _short_error(failure: BaseException | None) -> str | None:
    if failure is None:
        return None
    if isinstance(failure, asyncio.CancelledError):
        return "cancelled"
    return str(failure)[:300] or type(failure).__name__
