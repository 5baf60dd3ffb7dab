"""aiogram's Bot API models, built when first used instead of all at import.

aiogram declares its ~300 types with pydantic's ``defer_build`` and then, at the end of
``aiogram/types/__init__.py``, calls ``model_rebuild`` on every one of them to resolve their
forward references, which builds each model's validator with a private copy of every model it
reaches. That import took 140 MB and 4 s; the bot validates a dozen of those models.

:func:`defer_aiogram_builds` (run by ``bot/__init__.py``, before anything imports aiogram) lets
that loop only record the namespace it passes, and gives aiogram's base classes a
``model_rebuild`` that always resolves forward references in that namespace. pydantic then
builds a model the first time it validates one, as ``defer_build`` intends;
:func:`build_hot_models` builds the ones the bot uses at start-up, so no answer pays for it.

This is the one place where the bot patches another library's internals, for 140 MB and 4 s
measured. It relies on two things the lock (uv.lock) pins: aiogram rebuilding its models with
``model_rebuild(_types_namespace=...)`` at import, and pydantic's private ``_types_namespace``
argument. tests/unit/test_lazy_types.py fails when either changes (:func:`deferred` turns
False, or a model can no longer be built); with the patch inert the bot still works, only
bigger and slower to start, and says so in its log.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from aiogram.methods.base import TelegramMethod

logger = logging.getLogger(__name__)

_namespace: dict[str, Any] = {}


def defer_aiogram_builds() -> bool:
    """Import aiogram with its models' builds deferred; False if aiogram was already imported."""
    if "aiogram" in sys.modules:
        return False
    original = BaseModel.__dict__["model_rebuild"]

    def record(cls: type[BaseModel], /, **kwargs: Any) -> bool | None:
        namespace = kwargs.get("_types_namespace")
        if namespace is None or not cls.__module__.startswith("aiogram."):
            return original.__func__(cls, **kwargs)  # type: ignore[no-any-return]
        _namespace.update(namespace)
        return None

    def rebuild(cls: type[BaseModel], /, **kwargs: Any) -> bool | None:
        if kwargs.get("_types_namespace") is None and _namespace:
            kwargs["_types_namespace"] = _namespace
        return original.__func__(cls, **kwargs)  # type: ignore[no-any-return]

    BaseModel.model_rebuild = classmethod(record)  # type: ignore[method-assign,assignment]
    try:
        import aiogram  # noqa: F401
        from aiogram.methods.base import Response, TelegramMethod
        from aiogram.types import TelegramObject
    finally:
        BaseModel.model_rebuild = original  # type: ignore[method-assign]
    if not _namespace:
        # aiogram no longer rebuilds its models at import the way this patch expects.
        logger.warning("aiogram's models were built at import: lazy_types is inert")
        return False
    for base in (TelegramObject, TelegramMethod, Response):
        base.model_rebuild = classmethod(rebuild)  # type: ignore[method-assign,assignment]
    return True


def deferred() -> bool:
    """True when aiogram was imported with its models' builds deferred by this module."""
    return bool(_namespace)


def hot_methods() -> tuple[type[TelegramMethod[Any]], ...]:
    """The Bot API methods the bot calls."""
    from aiogram import methods

    return (
        methods.GetMe,
        methods.DeleteWebhook,
        methods.GetUpdates,
        methods.SetMyCommands,
        methods.SendMessage,
        methods.EditMessageText,
        methods.SendMessageDraft,
        methods.SendChatAction,
        methods.SendPhoto,
        methods.SendDocument,
        methods.GetChatMember,
        methods.AnswerCallbackQuery,
    )


def build_hot_models() -> None:
    """Build the incoming Update and the methods the bot calls, so no answer waits for it."""
    from aiogram.types import Update

    models: tuple[type[BaseModel], ...] = (Update, *hot_methods())
    for model in models:
        model.model_rebuild()
        if not model.__pydantic_complete__:
            raise RuntimeError(f"aiogram's {model.__name__} could not be built")
