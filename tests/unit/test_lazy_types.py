"""aiogram's models are built when first used, and every one of them still can be."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_bot_leaves_aiogram_models_unbuilt_until_used() -> None:
    out = run_python(
        """
        import bot.app
        from aiogram.types import Message, Sticker, Update
        print(Message.__pydantic_complete__, Sticker.__pydantic_complete__)
        update = Update.model_validate({
            "update_id": 7,
            "message": {
                "message_id": 1, "date": 0, "text": "hi",
                "chat": {"id": 5, "type": "private"},
                "from": {"id": 5, "is_bot": False, "first_name": "Ann"},
            },
        })
        print(update.message.from_user.first_name, update.message.chat.type)
        """
    )
    assert out.split() == ["False", "False", "Ann", "private"]


def test_every_aiogram_type_and_method_can_still_be_built() -> None:
    out = run_python(
        """
        import bot
        from pydantic import BaseModel
        from aiogram import methods, types

        failed, built = [], 0
        for module in (types, methods):
            for name in module.__all__:
                model = getattr(module, name)
                if isinstance(model, type) and issubclass(model, BaseModel):
                    model.model_rebuild()
                    built += 1
                    if not model.__pydantic_complete__:
                        failed.append(name)
        print(built, failed)
        """
    )
    built, failed = out.split(" ", 1)
    assert int(built) > 400
    assert failed.strip() == "[]"


def test_start_up_builds_the_models_the_bot_uses() -> None:
    out = run_python(
        """
        from bot.telegram.lazy_types import build_hot_models, hot_methods
        from aiogram.types import Update
        build_hot_models()
        print(all(m.__pydantic_complete__ for m in (Update, *hot_methods())))
        """
    )
    assert out.strip() == "True"


def test_the_patch_still_takes_hold_of_aiogram_model_rebuilds() -> None:
    # Fails when a new aiogram or pydantic changes what lazy_types patches: aiogram's rebuild
    # of every model at import, with pydantic's `_types_namespace` argument.
    out = run_python(
        """
        import bot
        from bot.telegram.lazy_types import deferred
        from aiogram.types import Message
        print(deferred(), Message.__pydantic_complete__)
        """
    )
    assert out.split() == ["True", "False"]
