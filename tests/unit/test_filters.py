"""Every handler filter is a coroutine: aiogram runs plain callables in a worker thread."""

from __future__ import annotations

import pytest
from aiogram import Router

from bot.telegram.handlers import (
    callbacks,
    chat,
    common,
    documents,
    errors,
    image,
    language,
    model,
    photos,
    status,
    stop,
    upgrades,
    usage,
    voice,
)

MODULES = (
    callbacks,
    chat,
    common,
    documents,
    errors,
    image,
    language,
    model,
    photos,
    status,
    stop,
    upgrades,
    usage,
    voice,
)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_no_filter_sends_a_message_to_a_worker_thread(module: object) -> None:
    router: Router = module.build_router()  # type: ignore[attr-defined]
    threaded = [
        f"{name}: {handler.callback.__name__} {type(filter_.callback).__name__}"
        for name, observer in router.observers.items()
        for handler in observer.handlers
        for filter_ in handler.filters or []
        if not filter_.awaitable
    ]
    assert threaded == []
