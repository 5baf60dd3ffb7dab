"""/status, for owners: each backend's state, last error and speed, and the model list's age."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.config import Settings
from bot.i18n import _, format_duration, format_number
from bot.llm.router import Backend, BackendRouter
from bot.services.models import ModelService
from bot.telegram.filters import GROUP_TYPES, NotFromBot
from bot.telegram.replies import Replies

# The backend's last error is shown cut to this many characters.
ERROR_LIMIT = 200


async def status(
    message: Message,
    backends: BackendRouter,
    model_service: ModelService,
    settings: Settings,
    replies: Replies,
) -> None:
    """Show the backends' health to an owner, in private."""
    if message.from_user is None or not settings.is_owner(message.from_user.id):
        await replies.text(message, _("/status is for the bot's owners."))
        return
    if message.chat.type in GROUP_TYPES:
        await replies.text(message, _("The bot's status is shown only in a private chat with me."))
        return
    lines = [_("AI backends, in the order they are tried:")]
    for number, backend in enumerate(backends.backends, start=1):
        lines.append(f"\n{number}. {backend.spec.name}: {_state(backend)}")
        lines.extend(_details(backend))
    age = model_service.list_age()
    lines.append(
        "\n"
        + (
            _("Model list: loaded {age} ago.").format(age=format_duration(age))
            if age is not None
            else _("Model list: not loaded yet.")
        )
    )
    await replies.text(message, "\n".join(lines))


def _state(backend: Backend) -> str:
    health = backend.health
    state = health.state()
    if state == "cooling":
        until = datetime.fromtimestamp(time.time() + health.cooling_left(), tz=UTC)
        return _("cooling down after a 429 until {time} UTC").format(
            time=until.strftime("%H:%M:%S")
        )
    if state == "out":
        return _("out of rotation: the backend refused the API key ({reason})").format(
            reason=(health.out_reason or "")[:ERROR_LIMIT]
        )
    return _("ok")


def _details(backend: Backend) -> list[str]:
    health = backend.health
    details = []
    if backend.spec.model:
        details.append(_("   model asked for: {model}").format(model=backend.spec.model))
    latency = health.median_latency()
    if latency is not None:
        details.append(
            _("   first token after {seconds} s (median of the last {count} answers)").format(
                seconds=format_number(round(latency, 2)),
                count=format_number(len(health.latencies)),
            )
        )
    if health.last_error and health.last_error_at is not None:
        ago = format_duration(max(0.0, time.time() - health.last_error_at))
        details.append(
            _("   last error {ago} ago: {error}").format(
                ago=ago, error=health.last_error[:ERROR_LIMIT]
            )
        )
    return details


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(status, Command("status"))
    return router
