"""The one path from the bot to Telegram: every send, edit and chat action, under one policy.

Every call that produces or changes a message takes a turn at the FloodGate. What follows a
failure depends on the failure and on whether the delivery is final (the user must get it) or
intermediate (a newer text will follow anyway):

=============================================  ==============================================
429 Too Many Requests                          block the chat for ``retry_after``; final:
                                               retry, intermediate: DEFERRED
5xx, network error, a reply that is not JSON   final: back off and retry, intermediate:
(or JSON cut short)                            DEFERRED
"message is not modified"                      DELIVERED (Telegram already shows it)
"can't parse entities", "too long" on HTML     once: the plain text instead
a photo Telegram will not take                 once: the same picture as a file
"message to edit not found", "message can't    GONE: the caller continues in a new message
be edited"
a draft refused as unknown (404, "method not   UNSUPPORTED: the caller continues with messages;
found") or not allowed in the chat (other 400)  remembered for the process or for the chat
the group was upgraded to a supergroup         a send: made again in the supergroup; an edit:
(``migrate_to_chat_id``)                       GONE. Either way `Sent.moved_to` names it
403, 401, 404, "chat not found"                UNREACHABLE: stop trying this chat
anything else, or attempts used up             REFUSED, logged
=============================================  ==============================================

"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiogram import Bot
from aiogram.enums import ChatAction, ParseMode
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    ReplyParameters,
)
from aiogram.utils.chat_action import ChatActionSender

from bot.telegram.media import fits_photo, shorten_caption
from bot.telegram.pacing import FloodGate, Sleep, Turn

logger = logging.getLogger(__name__)

NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
# Telegram shows a chat action for 5 s or until the bot's next message: renew it a bit sooner.
CHAT_ACTION_RENEW_SECONDS = 4.5

# Failures that say nothing about the request itself. A proxy in front of the Bot API may answer
# with an HTML error page (a 502 from nginx, say); aiogram cannot decode it and raises
# ClientDecodeError, which is not a TelegramAPIError.
TRANSIENT_ERRORS = (TelegramServerError, TelegramNetworkError, ClientDecodeError)
UNREACHABLE_ERRORS = (TelegramForbiddenError, TelegramUnauthorizedError, TelegramNotFound)
_GONE_REASONS = ("message to edit not found", "message can't be edited", "message_id_invalid")

# One Bot API call: the chat to make it in (a group's new id once it became a supergroup) and
# whether to send the fallback form. Returns the id of the message sent, or None for an edit.
_Call = Callable[[int, bool], Awaitable[int | None]]


class Outcome(enum.Enum):
    """How a delivery ended."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"  # an intermediate call met a 429 or a transient failure
    GONE = "gone"  # the message to edit no longer exists
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    UNSUPPORTED = "unsupported"  # the Bot API server or the chat does not take drafts


@dataclass(frozen=True, slots=True)
class Sent:
    """The result of one delivery."""

    outcome: Outcome
    message_id: int | None = None  # of a new message; None for edits
    fallback: bool = False  # delivered as plain text, or a photo as a file
    moved_to: int | None = None  # the supergroup the group became, where a message then went
    everywhere: bool = False  # UNSUPPORTED by the Bot API server itself, not only in this chat

    @property
    def ok(self) -> bool:
        """True when Telegram shows what was delivered."""
        return self.outcome is Outcome.DELIVERED


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How many calls a final delivery may make, and the backoff after transient failures."""

    attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the transient failure of attempt number `attempt` (from 0)."""
        return float(min(self.backoff_max, self.backoff_base * 2**attempt))


class Delivery:
    """Sends and edits messages, pictures and chat actions for the whole bot, paced."""

    def __init__(
        self,
        *,
        bot: Bot,
        gate: FloodGate,
        policy: DeliveryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._bot = bot
        self._gate = gate
        self._policy = policy or DeliveryPolicy()
        self._sleep = sleep
        # Where sendMessageDraft was refused: everywhere (an older Bot API server), or in chats.
        self._drafts_refused = False
        self._draftless_chats: set[int] = set()

    def turn(self, chat_id: int, *, spacing: float | None = None) -> Turn:
        """A turn at the FloodGate for `chat_id`, to take before knowing what to send."""
        return Turn(self._gate, chat_id, spacing=spacing)

    def drafts_allowed(self, chat_id: int) -> bool:
        """False once Telegram refused a draft on this server, or in this chat."""
        return not self._drafts_refused and chat_id not in self._draftless_chats

    def chat_action(
        self, chat_id: int, action: ChatAction, *, thread_id: int | None = None
    ) -> ChatActionSender:
        """aiogram's sender of `action`, shown and renewed while its `async with` block runs."""
        return ChatActionSender(
            bot=self._bot,
            chat_id=chat_id,
            action=action,
            message_thread_id=thread_id,
            interval=CHAT_ACTION_RENEW_SECONDS,
        )

    async def send_text(
        self,
        chat_id: int,
        text: str,
        *,
        html: str | None = None,
        markup: InlineKeyboardMarkup | None = None,
        thread_id: int | None = None,
        reply_to: int | None = None,
        final: bool = True,
        turn: Turn | None = None,
    ) -> Sent:
        """Send a message: `html` formatted if given, `text` if there is none or it is refused."""

        async def call(target: int, plain: bool) -> int | None:
            content, parse_mode = _formatted(text, html, plain=plain)
            message = await self._bot.send_message(
                chat_id=target,
                text=content,
                parse_mode=parse_mode,
                reply_markup=markup,
                message_thread_id=thread_id,
                reply_parameters=_reply(reply_to, same_chat=target == chat_id),
                link_preview_options=NO_PREVIEW,
            )
            return message.message_id

        return await self._deliver(
            chat_id,
            call,
            fallback=None if html is None else _formatting_refused,
            final=final,
            turn=turn,
            what="message",
        )

    async def edit_text(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        *,
        html: str | None = None,
        markup: InlineKeyboardMarkup | None = None,
        final: bool = True,
        turn: Turn | None = None,
    ) -> Sent:
        """Replace a message's text (and keyboard), formatted and with fallback as `send_text`."""

        async def call(target: int, plain: bool) -> int | None:
            content, parse_mode = _formatted(text, html, plain=plain)
            await self._bot.edit_message_text(
                chat_id=target,
                message_id=message_id,
                text=content,
                parse_mode=parse_mode,
                reply_markup=markup,
                link_preview_options=NO_PREVIEW,
            )
            return None

        return await self._deliver(
            chat_id,
            call,
            fallback=None if html is None else _formatting_refused,
            final=final,
            turn=turn,
            what="edit",
            movable=False,
        )

    async def send_draft(
        self,
        chat_id: int,
        draft_id: int,
        text: str,
        *,
        html: str | None = None,
        thread_id: int | None = None,
        turn: Turn | None = None,
    ) -> Sent:
        """Show `text` as the chat's draft `draft_id`, with a stop button; never retried.

        A draft is a preview that a newer one replaces, so a 429 or a transient failure only
        defers it. UNSUPPORTED when the server does not know the method or the chat takes no
        drafts: the refusal is remembered (see `drafts_allowed`) and logged once.
        """

        async def call(target: int, plain: bool) -> int | None:
            content, parse_mode = _formatted(text, html, plain=plain)
            await self._bot.send_message_draft(
                chat_id=target,
                draft_id=draft_id,
                text=content,
                parse_mode=parse_mode,
                message_thread_id=thread_id,
                can_stop=True,
                # Pressed, the stop button leaves the partial text in view until the final
                # message replaces it.
                keep_on_stop=True,
            )
            return None

        sent = await self._deliver(
            chat_id,
            call,
            fallback=None if html is None else _formatting_refused,
            final=False,
            turn=turn,
            what="draft",
            movable=False,
            unsupported=True,
        )
        if sent.outcome is Outcome.UNSUPPORTED:
            self._refuse_drafts(chat_id, sent)
        return sent

    def _refuse_drafts(self, chat_id: int, sent: Sent) -> None:
        if sent.everywhere:
            if not self._drafts_refused:
                logger.warning(
                    "the Bot API server does not know sendMessageDraft: answers stream by "
                    "editing messages from now on"
                )
            self._drafts_refused = True
        elif chat_id not in self._draftless_chats:
            logger.warning("chat %s takes no drafts: its answers stream by edits", chat_id)
            self._draftless_chats.add(chat_id)

    async def send_picture(
        self,
        chat_id: int,
        *,
        data: bytes,
        filename: str,
        mime_type: str,
        width: int | None,
        height: int | None,
        caption: str,
        thread_id: int | None = None,
        reply_to: int | None = None,
    ) -> Sent:
        """Send a picture as a photo when Telegram takes it as one, else (or then) as a file."""
        as_photo = fits_photo(size=len(data), mime_type=mime_type, width=width, height=height)
        caption = shorten_caption(caption)

        async def call(target: int, as_file: bool) -> int | None:
            upload = BufferedInputFile(data, filename=filename)
            reply = _reply(reply_to, same_chat=target == chat_id)
            if as_photo and not as_file:
                message = await self._bot.send_photo(
                    chat_id=target,
                    photo=upload,
                    caption=caption or None,
                    message_thread_id=thread_id,
                    reply_parameters=reply,
                )
            else:
                message = await self._bot.send_document(
                    chat_id=target,
                    document=upload,
                    caption=caption or None,
                    message_thread_id=thread_id,
                    reply_parameters=reply,
                )
            return message.message_id

        # Telegram has limits of its own on photos (dimensions it cannot process, say): the
        # file itself is still worth delivering.
        return await self._deliver(
            chat_id,
            call,
            fallback=(lambda _reason: True) if as_photo else None,
            final=True,
            turn=None,
            what="picture",
        )

    async def _deliver(
        self,
        chat_id: int,
        call: _Call,
        *,
        fallback: Callable[[str], bool] | None,
        final: bool,
        turn: Turn | None,
        what: str,
        movable: bool = True,
        unsupported: bool = False,
    ) -> Sent:
        """Make `call` in the chat's turns until it succeeds or the policy gives up.

        `fallback(reason)` says whether a 400 with this (lower-cased) description is worth one
        more try in the fallback form; `turn`, if held already, is used for the first call;
        `movable` says whether the call may be made again in the supergroup a group became;
        `unsupported`: a 404, or a 400 not about the text, means the method is not available
        (UNSUPPORTED) rather than the chat unreachable or the call refused.
        """
        turn = turn or self.turn(chat_id)
        target = chat_id
        moved_to: int | None = None
        as_fallback = False
        for attempt in range(self._policy.attempts):
            await turn.take()
            try:
                try:
                    message_id = await call(target, as_fallback)
                finally:
                    turn.end()
            except TelegramRetryAfter as exc:
                self._gate.block(target, exc.retry_after)
                logger.info(
                    "chat %s: flood control (%s), retry after %ss",
                    target,
                    what,
                    exc.retry_after,
                )
                if not final:
                    return Sent(Outcome.DEFERRED, moved_to=moved_to)
            except TelegramMigrateToChat as exc:
                new_id = exc.migrate_to_chat_id
                if not movable or moved_to is not None:
                    # The group's messages live on in the supergroup under other ids (and a
                    # supergroup is never upgraded again): nothing to edit there.
                    logger.info("chat %s: became supergroup %s (%s)", target, new_id, what)
                    return Sent(Outcome.GONE, moved_to=new_id)
                logger.info(
                    "chat %s: became supergroup %s, sending the %s there", target, new_id, what
                )
                target = moved_to = new_id
                turn = self.turn(target)
            except TRANSIENT_ERRORS as exc:
                logger.info("chat %s: %s failed: %s", target, what, _brief(exc))
                if not final:
                    return Sent(Outcome.DEFERRED, moved_to=moved_to)
                await self._sleep(self._policy.backoff(attempt))
            except TelegramBadRequest as exc:
                reason = exc.message.lower()
                if "not modified" in reason:
                    # A repeated edit (a double press, a resent final text) shows it already.
                    return Sent(Outcome.DELIVERED, fallback=as_fallback, moved_to=moved_to)
                if any(gone in reason for gone in _GONE_REASONS):
                    # Deleted by the user, or no longer editable: the text must go elsewhere.
                    return Sent(Outcome.GONE, moved_to=moved_to)
                if "chat not found" in reason:
                    logger.warning("chat %s: unreachable: %s", target, exc.message)
                    return Sent(Outcome.UNREACHABLE, moved_to=moved_to)
                if fallback is not None and not as_fallback and fallback(reason):
                    logger.warning(
                        "chat %s: %s refused (%s), trying its fallback", target, what, exc.message
                    )
                    as_fallback = True
                    continue
                if unsupported:
                    everywhere = "method not found" in reason or "not implemented" in reason
                    return Sent(Outcome.UNSUPPORTED, everywhere=everywhere)
                logger.error("chat %s: %s refused: %s", target, what, exc.message)
                return Sent(Outcome.REFUSED, moved_to=moved_to)
            except TelegramNotFound as exc:
                if unsupported:
                    # What a Bot API server answers for a method it does not have.
                    return Sent(Outcome.UNSUPPORTED, everywhere=True)
                logger.warning("chat %s: unreachable: %s", target, exc.message)
                return Sent(Outcome.UNREACHABLE, moved_to=moved_to)
            except UNREACHABLE_ERRORS as exc:
                logger.warning("chat %s: unreachable: %s", target, exc.message)
                return Sent(Outcome.UNREACHABLE, moved_to=moved_to)
            except TelegramAPIError as exc:
                logger.error("chat %s: unexpected Telegram error (%s): %s", target, what, exc)
                return Sent(Outcome.REFUSED, moved_to=moved_to)
            else:
                return Sent(
                    Outcome.DELIVERED,
                    message_id=message_id,
                    fallback=as_fallback,
                    moved_to=moved_to,
                )
        logger.error("chat %s: %s given up after %s attempts", target, what, self._policy.attempts)
        return Sent(Outcome.REFUSED, moved_to=moved_to)


def _formatted(text: str, html: str | None, *, plain: bool) -> tuple[str, ParseMode | None]:
    """The HTML form, unless there is none or the plain fallback is wanted."""
    return (text, None) if plain or html is None else (html, ParseMode.HTML)


def _formatting_refused(reason: str) -> bool:
    return "can't parse entities" in reason or "too long" in reason


def _brief(exc: Exception) -> str:
    # ClientDecodeError's text includes the whole undecodable body (an HTML page).
    if isinstance(exc, ClientDecodeError):
        return f"{exc.message}: {type(exc.original).__name__}"
    return str(exc)


def _reply(message_id: int | None, *, same_chat: bool = True) -> ReplyParameters | None:
    if message_id is None or not same_chat:
        # A group's messages have other ids in the supergroup it became.
        return None
    # The triggering message may have been deleted meanwhile; answer anyway.
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)
