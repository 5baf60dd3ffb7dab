"""Dispatcher middlewares: in-flight tracking, the user's language, per-chat ordering, access."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import CallbackQuery, Message, TelegramObject, Update, User

from bot.i18n import _, set_locale
from bot.services.languages import LanguageService
from bot.telegram.keyboards import not_for_you

logger = logging.getLogger(__name__)

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


@dataclass
class InflightTracker:
    """Outer update middleware: the tasks still running and which updates are done with.

    An update is done with once its handler has finished (answered, or failed and told the
    user) or was interrupted at shutdown with a visible note; its id then waits in `handled`
    until the inbox (bot/telegram/inbox.py) deletes it. After `stop()`, a handler that has not
    begun (say, a message queued behind its chat's answer) is not begun at all: its update
    stays in the inbox for the next start.
    """

    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    handled: set[int] = field(default_factory=set)
    stopping: bool = False
    # Updates taken up in this process: a replayed one that polling fetches again is skipped.
    _seen: set[int] = field(default_factory=set)
    _inflight: set[int] = field(default_factory=set)
    _begun: set[int] = field(default_factory=set)
    _deferred: set[int] = field(default_factory=set)

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        """Track the update while its handler runs; skip one already taken up."""
        if not isinstance(event, Update):
            return await handler(event, data)
        update_id = event.update_id
        if update_id in self._seen:
            logger.debug("update %s was already taken up, skipping it", update_id)
            if update_id not in self._inflight:
                # Stored again by the fetch that brought it back: delete it again.
                self.handled.add(update_id)
            return None
        self._seen.add(update_id)
        self._inflight.add(update_id)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        done = True
        try:
            return await handler(event, data)
        except asyncio.CancelledError:
            # Cancelled before its handler began (waiting for its chat's turn): not answered.
            done = update_id in self._begun
            raise
        finally:
            if task is not None:
                self.tasks.discard(task)
            self._inflight.discard(update_id)
            self._begun.discard(update_id)
            if update_id in self._deferred:
                self._deferred.discard(update_id)
                done = False
            if done:
                self.handled.add(update_id)
            else:
                # Taken up again if it is fed again (it stays in the inbox).
                self._seen.discard(update_id)

    async def admit(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        """Inner middleware: begin the handler, unless the bot is stopping."""
        update: Update | None = data.get("event_update")
        if update is None:
            return await handler(event, data)
        if self.stopping:
            self._deferred.add(update.update_id)
            return None
        self._begun.add(update.update_id)
        return await handler(event, data)

    def stop(self) -> None:
        """Begin no more handlers from now on."""
        self.stopping = True

    @property
    def remembered(self) -> int:
        """How many update ids this process keeps so as to skip them if they are fed again."""
        return len(self._seen)

    def forget(self, update_ids: set[int]) -> None:
        """Forget these updates: the database now keeps them from being fed again (webhook
        mode's handled_updates), so the process need not."""
        self._seen -= update_ids

    def forget_below(self, update_id: int) -> None:
        """Forget updates below this id: Telegram confirmed them and never sends them again."""
        self._seen = {seen for seen in self._seen if seen >= update_id}

    def take_handled(self) -> set[int]:
        """The handled update ids, handed over (to be deleted from the inbox)."""
        handled, self.handled = self.handled, set()
        return handled

    async def drain(self, grace: float, *, finish: float = 1.0) -> None:
        """Let running handlers finish for up to `grace` seconds, then cancel the rest.

        Cancelled answers get `finish` seconds to show their note, so that grace plus finish
        stays within docker stop's 10 s.
        """
        current = asyncio.current_task()
        pending = {t for t in self.tasks if t is not current and not t.done()}
        if not pending:
            return
        logger.info("waiting up to %ss for %s answers in progress", grace, len(pending))
        _, still = await asyncio.wait(pending, timeout=grace) if grace > 0 else (set(), pending)
        for task in still:
            task.cancel()
        if still:
            logger.info("interrupting %s answers", len(still))
            await asyncio.wait(still, timeout=finish)


class LocaleMiddleware(BaseMiddleware):
    """Outer message and button middleware: the bot answers in the language of the sender."""

    def __init__(self, languages: LanguageService) -> None:
        self._languages = languages

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        """Resolve the sender's locale and make it current for the rest of the update."""
        user: User | None = data.get("event_from_user")
        locale = await self._languages.locale_for(
            user_id=user.id if user else None, language_code=user.language_code if user else None
        )
        # Set, not reset afterwards: the error handler runs after this middleware has returned
        # (in the same task) and must answer in the same language. Every update is handled in
        # a task of its own and every message and button press passes through here, so no
        # locale leaks to another one.
        set_locale(locale)
        data["locale"] = locale
        return await handler(event, data)


# Commands that show or change settings answer at once, even while the chat waits for an
# answer: they neither read nor write the conversation. (/reset and /image stay in order.)
IMMEDIATE_COMMANDS = frozenset({"start", "help", "usage", "status", "model", "language"})


def _answers_at_once(message: Message) -> bool:
    text = message.text
    if not text or not text.startswith("/"):
        return False
    command = text[1:].split(maxsplit=1)[0].split("@", 1)[0] if len(text) > 1 else ""
    return command.lower() in IMMEDIATE_COMMANDS


def ordered_chat(update: Update) -> int | None:
    """The chat whose messages this update must wait its turn in, or None if it need not wait.

    As ChatSequencer orders them: a message, in its chat, unless it is a command that answers
    at once; button presses and Stop are never held behind an answer they may be about.
    """
    message = update.message
    if message is None or _answers_at_once(message):
        return None
    return message.chat.id


class ChatSequencer(BaseMiddleware):
    """Outer message middleware: one message at a time per chat, in arrival order.

    aiogram handles every update as its own task. asyncio.Lock wakes waiters in FIFO order, and
    updates reach this middleware in the order polling received them, so a chat's second message
    is answered after the first while other chats proceed concurrently. Commands in
    IMMEDIATE_COMMANDS skip the queue: /usage or /model answer at once while the chat waits for
    a slow backend.
    """

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}
        self._users: dict[int, int] = {}

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        """Run the handler while holding the chat's lock (commands that answer at once, not)."""
        if not isinstance(event, Message) or _answers_at_once(event):
            return await handler(event, data)
        chat_id = event.chat.id
        lock = self._locks.setdefault(chat_id, asyncio.Lock())
        self._users[chat_id] = self._users.get(chat_id, 0) + 1
        try:
            async with lock:
                return await handler(event, data)
        finally:
            self._users[chat_id] -= 1
            if not self._users[chat_id]:
                # Nobody else waits on this chat: drop its lock so memory does not grow.
                del self._users[chat_id]
                del self._locks[chat_id]


class AccessMiddleware(BaseMiddleware):
    """Inner middleware: only allowed users and chats reach handlers; others get a refusal.

    A button in a private chat answers only that chat's user: only a forged press comes from
    anyone else, and it must not act on (or edit) the chat it names.
    """

    def __init__(
        self, *, owner_ids: list[int], allowed_user_ids: list[int], allowed_chat_ids: list[int]
    ) -> None:
        self._owners = frozenset(owner_ids)
        self._users = frozenset(allowed_user_ids)
        self._chats = frozenset(allowed_chat_ids)

    def allows(self, *, user_id: int | None, chat_id: int | None) -> bool:
        """True when the user (or chat) may use the bot."""
        if user_id is not None and user_id in self._owners:
            return True
        if not self._users and not self._chats:
            return True
        if user_id is not None and user_id in self._users:
            return True
        return chat_id is not None and chat_id in self._chats

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        """Refuse events from users and chats that are not allowed."""
        user = getattr(event, "from_user", None)
        chat_id: int | None = None
        if isinstance(event, Message):
            chat_id = event.chat.id
        elif isinstance(event, CallbackQuery) and event.message is not None:
            chat_id = event.message.chat.id
        if self.allows(user_id=user.id if user else None, chat_id=chat_id):
            if isinstance(event, CallbackQuery) and _foreign(event):
                logger.info("refused user %s a button of chat %s", event.from_user.id, chat_id)
                await event.answer(not_for_you())
                return None
            return await handler(event, data)
        logger.info("refused user %s in chat %s", user.id if user else None, chat_id)
        refusal = _("Sorry, this bot is private and you are not on its list of users.")
        if isinstance(event, Message):
            if chat_id and chat_id < 0:
                await event.reply(refusal)
            else:
                await event.answer(refusal)
        elif isinstance(event, CallbackQuery):
            await event.answer(refusal, show_alert=True)
        return None


def _foreign(query: CallbackQuery) -> bool:
    """True for a press on a button of someone else's private chat."""
    chat = query.message.chat if query.message is not None else None
    return chat is not None and chat.type == "private" and chat.id != query.from_user.id
