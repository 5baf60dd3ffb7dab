"""Inline keyboards and the callback data their buttons carry."""

from __future__ import annotations

from collections.abc import Iterable

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.i18n import LANGUAGE_NAMES, _
from bot.llm.types import ModelInfo
from bot.services.models import Page, label

MODELS_PER_PAGE = 8
# Telegram shortens long button captions anyway; cutting them here keeps the keyboard readable.
BUTTON_TEXT_LIMIT = 48
CURRENT_MARK = "✅ "


# Callback data must fit in 64 bytes, so buttons name a model by its position in the list and
# the list's short version, never by the model's (possibly long) id.
class ModelPick(CallbackData, prefix="mdl"):
    """Choose the model at position `i` of list version `v`."""

    v: str
    i: int


class ModelPage(CallbackData, prefix="mdp"):
    """Show page `p` of list version `v`."""

    v: str
    p: int


class ModelNoop(CallbackData, prefix="mdn"):
    """The page counter: pressing it does nothing."""


class LanguagePick(CallbackData, prefix="lng"):
    """Speak `code` (en, ru, zh) with user `u`, or follow their Telegram app ("auto")."""

    code: str
    # In a group everyone sees the picker, but it shows (and sets) the language of the member
    # who sent /language; the buttons say whose it is.
    u: int


AUTOMATIC = "auto"
MODEL_PREFIXES = frozenset({ModelPick.__prefix__, ModelPage.__prefix__, ModelNoop.__prefix__})


# What a press is told when it is refused. Telegram shows at most 200 characters of it.
def models_outdated() -> str:
    """A model list button from another version of the list, or not one this bot wrote."""
    return _("This list is outdated, send /model again.")


def languages_outdated() -> str:
    """A language button this version of the bot did not write."""
    return _("These buttons are outdated, send /language again.")


def not_for_you() -> str:
    """A button of someone else's picker or private chat."""
    return _("This button is not for you.")


def stale_notice(data: str | None) -> str:
    """Why a press whose data no handler takes does nothing, told by the data's prefix."""
    prefix = (data or "").partition(":")[0]
    if prefix in MODEL_PREFIXES:
        return models_outdated()
    if prefix == LanguagePick.__prefix__:
        return languages_outdated()
    return _("This button is outdated.")


def _caption(model: ModelInfo, *, current: bool) -> str:
    text = label(model)
    if len(text) > BUTTON_TEXT_LIMIT:
        text = text[: BUTTON_TEXT_LIMIT - 1] + "…"
    return CURRENT_MARK + text if current else text


def model_picker(page: Page, *, version: str, current: str) -> InlineKeyboardMarkup:
    """One button per model of the page (the chat's current one marked), then page arrows."""
    builder = InlineKeyboardBuilder()
    for index, model in page.entries:
        builder.button(
            text=_caption(model, current=model.id == current),
            callback_data=ModelPick(v=version, i=index),
        )
    rows = [1] * len(page.entries)
    if page.count > 1:
        # Arrows wrap around, so both are always there and the row keeps its shape.
        builder.button(
            text="◀", callback_data=ModelPage(v=version, p=(page.number - 1) % page.count)
        )
        builder.button(text=f"{page.number + 1}/{page.count}", callback_data=ModelNoop())
        builder.button(
            text="▶", callback_data=ModelPage(v=version, p=(page.number + 1) % page.count)
        )
        rows.append(3)
    builder.adjust(*rows)
    return builder.as_markup()


def model_suggestions(
    entries: Iterable[tuple[int, ModelInfo]], *, version: str
) -> InlineKeyboardMarkup:
    """One button per suggested model, to choose it with a press."""
    builder = InlineKeyboardBuilder()
    for index, model in entries:
        builder.button(
            text=_caption(model, current=False), callback_data=ModelPick(v=version, i=index)
        )
    builder.adjust(1)
    return builder.as_markup()


def language_picker(*, chosen: str | None, user_id: int) -> InlineKeyboardMarkup:
    """`user_id`'s buttons: each language in its own name, then "automatic"; choice marked."""
    builder = InlineKeyboardBuilder()
    for code, name in LANGUAGE_NAMES.items():
        text = CURRENT_MARK + name if code == chosen else name
        builder.button(text=text, callback_data=LanguagePick(code=code, u=user_id))
    automatic = _("Automatic")
    builder.button(
        text=CURRENT_MARK + automatic if chosen is None else automatic,
        callback_data=LanguagePick(code=AUTOMATIC, u=user_id),
    )
    builder.adjust(len(LANGUAGE_NAMES), 1)
    return builder.as_markup()
