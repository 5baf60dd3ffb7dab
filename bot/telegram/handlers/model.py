"""/model: show the chat's model and switch it, with a paged picker or by id."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from bot.config import Settings
from bot.i18n import _, format_number, ngettext
from bot.llm.types import ModelInfo
from bot.services.models import Catalogue, ModelService, Suggested, Switched, label
from bot.telegram.filters import NotFromBot
from bot.telegram.keyboards import (
    MODELS_PER_PAGE,
    ModelNoop,
    ModelPage,
    ModelPick,
    model_picker,
    model_suggestions,
    models_outdated,
)
from bot.telegram.permissions import manages_chat
from bot.telegram.replies import Replies

NOTICE_LIMIT = 200  # Telegram's limit for the text of a callback query answer


def describe(model: ModelInfo) -> str:
    """A model as shown in messages: its name and, when that differs, its id."""
    name = label(model)
    return name if name == model.id else f"{name} ({model.id})"


def _notice(text: str) -> str:
    return text if len(text) <= NOTICE_LIMIT else text[: NOTICE_LIMIT - 1] + "…"


# Texts said in several places; they double as notices under a pressed button, so they stay
# within Telegram's 200 characters for those.
def _admins_only() -> str:
    return _("Only the group's administrators can change the model.")


def _list_unavailable() -> str:
    return _("The model list cannot be loaded right now. Please try again later.")


def _current_info(catalogue: Catalogue | None, current: str, service: ModelService) -> str:
    model = (catalogue.find(current) if catalogue else None) or ModelInfo(id=current)
    shown = describe(model)
    tokens = model.context_tokens or service.context_window(current)
    if not tokens:
        return shown
    context = ngettext("{model}, context {count} token", "{model}, context {count} tokens", tokens)
    return context.format(model=shown, count=format_number(tokens))


def picker_view(
    catalogue: Catalogue | None,
    current: str,
    service: ModelService,
    *,
    page: int | None = None,
    switched: bool = False,
) -> tuple[str, InlineKeyboardMarkup | None]:
    """The picker's text and keyboard, opened on `page` or on the current model's page."""
    shown = _current_info(catalogue, current, service)
    if catalogue is None:
        text = _(
            "This chat uses {model}.\n\nThe AI backend's model list cannot be loaded right now. "
            "You can still switch by sending /model followed by the model's id."
        )
        return text.format(model=shown), None
    if not catalogue.models:
        text = _("This chat uses {model}. The AI backend offers no chat models to choose from.")
        return text.format(model=shown), None
    if page is None:
        chosen = catalogue.page_of(current, size=MODELS_PER_PAGE)
    else:
        chosen = catalogue.page(page, size=MODELS_PER_PAGE)
    if switched:
        template = _("✅ This chat now uses {model}.\n\nChoose a model, or send /model <id>:")
    elif catalogue.find(current) is None:
        template = _(
            "This chat uses {model}, which the AI backend does not list at the moment.\n\n"
            "Choose a model, or send /model <id>:"
        )
    else:
        template = _("This chat uses {model}.\n\nChoose a model, or send /model <id>:")
    markup = model_picker(chosen, version=catalogue.version, current=current)
    return template.format(model=shown), markup


async def model_command(
    message: Message,
    command: CommandObject,
    model_service: ModelService,
    replies: Replies,
    settings: Settings,
    bot: Bot,
) -> None:
    """`/model` shows the picker; `/model <id>` switches directly."""
    requested = (command.args or "").strip()
    chat = message.chat
    if not requested:
        current = await model_service.current(chat_id=chat.id)
        text, markup = picker_view(await model_service.catalogue(), current, model_service)
        if markup is None:
            await replies.text(message, text)
        else:
            await replies.keyboard(message, text, markup)
        return
    if message.from_user is None:
        return
    if not await manages_chat(bot=bot, settings=settings, chat=chat, user_id=message.from_user.id):
        await replies.text(message, _admins_only())
        return
    result = await model_service.choose(
        chat_id=chat.id, chat_type=chat.type, chat_title=chat.title, model_id=requested
    )
    if isinstance(result, Switched):
        if not result.changed:
            template = _("This chat already uses {model}.")
        elif result.verified:
            template = _("✅ This chat now uses {model}. The next answer will come from it.")
        else:
            template = _(
                "✅ This chat now uses “{model}”. The AI backend's model list could not be "
                "checked, so the id is used as typed; if it is wrong, the next answer will say so."
            )
        await replies.text(message, template.format(model=describe(result.model)))
        return
    if isinstance(result, Suggested):
        await _suggest(message, result, model_service, replies)
        return
    current = await model_service.current(chat_id=chat.id)
    shown = describe((await _catalogue_entry(model_service, current)) or ModelInfo(id=current))
    text = _(
        "There is no chat model “{requested}” to choose from, so this chat keeps {model}. "
        "Send /model to see the choices."
    )
    await replies.text(message, text.format(requested=requested, model=shown))


async def _catalogue_entry(service: ModelService, model_id: str) -> ModelInfo | None:
    catalogue = await service.catalogue()
    return catalogue.find(model_id) if catalogue else None


async def _suggest(
    message: Message, result: Suggested, service: ModelService, replies: Replies
) -> None:
    lines = "\n".join(f"• {describe(m)}" for m in result.suggestions)
    text = _("There is no model “{requested}”. Did you mean one of these?\n{suggestions}").format(
        requested=result.requested, suggestions=lines
    )
    catalogue = await service.catalogue()
    listed = [
        (index, model)
        for model in result.suggestions
        if catalogue is not None and (index := catalogue.index_of(model.id)) is not None
    ]
    if catalogue is None or not listed:
        # Suggestions from the allow-list while the backend's list is unavailable: no buttons.
        await replies.text(message, text)
        return
    await replies.keyboard(message, text, model_suggestions(listed, version=catalogue.version))


async def pick(
    query: CallbackQuery,
    callback_data: ModelPick,
    model_service: ModelService,
    replies: Replies,
    settings: Settings,
    bot: Bot,
) -> None:
    """A model's button: switch to it, say so, and redraw the picker."""
    message = query.message
    if not isinstance(message, Message):
        # Messages older than 48 hours come without content and can no longer be edited.
        await query.answer(models_outdated())
        return
    chat = message.chat
    if not await manages_chat(bot=bot, settings=settings, chat=chat, user_id=query.from_user.id):
        await query.answer(_admins_only())
        return
    catalogue = await model_service.catalogue()
    if catalogue is None:
        await query.answer(_list_unavailable())
        return
    model = catalogue.at(callback_data.i) if catalogue.version == callback_data.v else None
    if model is None:
        await query.answer(models_outdated())
        return
    result = await model_service.choose(
        chat_id=chat.id, chat_type=chat.type, chat_title=chat.title, model_id=model.id
    )
    if not isinstance(result, Switched):
        await query.answer(models_outdated())  # the list changed meanwhile
        return
    if not result.changed:
        await query.answer(_("Already in use"))
        return
    # Answer first, so the client's spinner stops before the (paced) edit.
    await query.answer(_notice(_("Switched to {model}").format(model=label(result.model))))
    text, markup = picker_view(catalogue, result.model.id, model_service, switched=True)
    await replies.edit(message, text, markup)


async def turn_page(
    query: CallbackQuery,
    callback_data: ModelPage,
    model_service: ModelService,
    replies: Replies,
) -> None:
    """An arrow under the picker: show another page of the same list."""
    message = query.message
    if not isinstance(message, Message):
        await query.answer(models_outdated())
        return
    catalogue = await model_service.catalogue()
    if catalogue is None:
        await query.answer(_list_unavailable())
        return
    if catalogue.version != callback_data.v:
        await query.answer(models_outdated())
        return
    current = await model_service.current(chat_id=message.chat.id)
    await query.answer()
    text, markup = picker_view(catalogue, current, model_service, page=callback_data.p)
    await replies.edit(message, text, markup)


async def page_counter(query: CallbackQuery) -> None:
    """The page counter does nothing, but the press still gets its answer."""
    await query.answer()


def build_router() -> Router:
    """A fresh router with this module's handlers (one per Dispatcher)."""
    router = Router(name=__name__)
    router.message.filter(NotFromBot())
    router.message.register(model_command, Command("model"))
    router.callback_query.register(pick, ModelPick.filter())
    router.callback_query.register(turn_page, ModelPage.filter())
    router.callback_query.register(page_counter, ModelNoop.filter())
    return router
