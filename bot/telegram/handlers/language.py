"""/language: the language the bot speaks with each user, whatever chat they write in."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot.i18n import LANGUAGE_NAMES, _, normalize, set_locale
from bot.services.languages import LanguageService
from bot.telegram.filters import NotFromBot
from bot.telegram.keyboards import (
    AUTOMATIC,
    LanguagePick,
    language_picker,
    languages_outdated,
    not_for_you,
)
from bot.telegram.replies import Replies


def _status(locale: str, chosen: str | None, *, switched: bool = False) -> str:
    """The line saying which language is in use, and whether it is automatic."""
    if chosen is None:
        if switched:
            text = _("✅ Language: automatic ({language}).")
        else:
            text = _("Language: {language} (automatic).")
    else:
        text = _("✅ Language: {language}.") if switched else _("Language: {language}.")
    return text.format(language=LANGUAGE_NAMES[locale])


def _picker_text(status: str) -> str:
    return status + "\n\n" + _("Choose the language I use to reply to you:")


async def language_command(
    message: Message, language_service: LanguageService, replies: Replies, locale: str
) -> None:
    """Show the language in use and the buttons to choose another."""
    if message.from_user is None:
        return
    user_id = message.from_user.id
    chosen = await language_service.chosen(user_id=user_id)
    text = _picker_text(_status(locale, chosen))
    await replies.keyboard(message, text, language_picker(chosen=chosen, user_id=user_id))


async def pick(
    query: CallbackQuery,
    callback_data: LanguagePick,
    language_service: LanguageService,
    replies: Replies,
) -> None:
    """A language button: store the presser's choice and confirm it in that language."""
    user = query.from_user
    if callback_data.u != user.id:
        await query.answer(not_for_you())
        return
    chosen = normalize(callback_data.code)
    if chosen is None and callback_data.code != AUTOMATIC:
        await query.answer(languages_outdated())  # a language this version does not offer
        return
    locale = await language_service.choose(
        user_id=user.id,
        username=user.username,
        full_name=user.full_name,
        language_code=user.language_code,
        language=chosen,
    )
    # The rest of this update, the confirmation included, is in the language just chosen.
    set_locale(locale)
    status = _status(locale, chosen, switched=True)
    await query.answer(status)
    if isinstance(query.message, Message):
        markup = language_picker(chosen=chosen, user_id=user.id)
        await replies.edit(query.message, _picker_text(status), markup)


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(language_command, Command("language"))
    router.callback_query.register(pick, LanguagePick.filter())
    return router
