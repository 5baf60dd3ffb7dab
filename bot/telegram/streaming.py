"""The reply writer: shows a streaming answer by sending a message and editing it, paced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiogram import Bot
from aiogram.enums import ChatAction, ParseMode
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import LinkPreviewOptions, ReplyParameters

from bot.telegram.pacing import FloodGate, Sleep, Urgency
from bot.telegram.render import first_piece, render_fitting, render_html

logger = logging.getLogger(__name__)

NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
TYPING_RENEW_SECONDS = 4.5  # Telegram shows a chat action for 5 s or until a message arrives


class DeliveryError(Exception):
    """A message could not be delivered and retrying will not help."""


@dataclass(slots=True)
class _Shown:
    """The bot message currently being edited and what it shows."""

    message_id: int
    content: str  # exactly what was last sent (HTML or plain), to skip no-op edits


@dataclass(frozen=True, slots=True)
class WriterOptions:
    """How hard to try delivering the final text."""

    final_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 10.0


@dataclass(slots=True)
class _State:
    text: str = ""  # the whole answer so far, as the model wrote it (Markdown)
    pending: list[str] = field(default_factory=list)  # pushed, not yet appended to `text`
    pushed: int = 0  # characters pushed so far
    delivered: int = 0  # characters of `text` the last delivery accounted for
    offset: int = 0  # where the current message's part of `text` begins
    carry: str = ""  # prefix re-opening a code block cut at the previous message's end
    current: _Shown | None = None
    sent_ids: list[int] = field(default_factory=list)
    calls: int = 0


class TelegramReplyWriter:
    """Streams one answer into a chat: first message fast, paced edits, exact final text.

    Deltas are appended without waiting; a background task turns them into Bot API calls when
    the chat's pacing allows, always sending the newest text, so a slow Telegram never slows
    reading the backend and a fast backend never floods Telegram. Past 4096 characters the
    message is frozen at a paragraph or line boundary and the answer continues in a new message.
    """

    def __init__(
        self,
        *,
        bot: Bot,
        gate: FloodGate,
        chat_id: int,
        reply_to: int | None = None,
        thread_id: int | None = None,
        options: WriterOptions | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._bot = bot
        self._gate = gate
        self._chat_id = chat_id
        self._reply_to = reply_to
        self._thread_id = thread_id
        self._options = options or WriterOptions()
        self._sleep = sleep
        self._state = _State()
        self._changed = asyncio.Event()
        self._finishing = False
        self._flusher: asyncio.Task[bool] | None = None
        self._typing: asyncio.Task[None] | None = None
        self._dead = False  # the chat is unreachable (bot blocked, chat gone)
        self._holding = False  # a turn is taken and its call not yet answered

    @property
    def shown(self) -> bool:
        """True once any part of the answer is visible."""
        return bool(self._state.sent_ids)

    @property
    def api_calls(self) -> int:
        """Message-producing Bot API calls made so far."""
        return self._state.calls

    @property
    def message_ids(self) -> list[int]:
        """Ids of the messages that carry the answer, in order."""
        return list(self._state.sent_ids)

    async def start(self) -> None:
        """Show "typing…" until the first text is visible."""
        self._typing = asyncio.create_task(self._keep_typing())
        self._flusher = asyncio.create_task(self._flush_loop())

    def push(self, text: str) -> None:
        """Append answer text; delivery happens in the background."""
        if text:
            # Joined only when delivering: appending each delta to one growing string would copy
            # the whole answer per delta.
            self._state.pending.append(text)
            self._state.pushed += len(text)
            self._changed.set()

    async def finish(self, *, note: str | None = None) -> bool:
        """Deliver the complete answer (and `note`, if any) and stop the background work."""
        self._finishing = True
        # An edit still waiting behind other chats' urgent calls now carries the final text.
        self._gate.hurry(self._chat_id)
        self._changed.set()
        try:
            if self._flusher is not None:
                delivered = await self._flusher
            else:
                delivered = await self._deliver(final=True)
        finally:
            await self._stop_typing()
        if note:
            await self.send_text(note, reply_to=self._state.sent_ids[-1] if self.shown else None)
        return delivered

    async def fail(self, message: str) -> None:
        """Tell the user the answer failed; no answer text was pushed."""
        await self.finish()
        await self.send_text(message, reply_to=self._reply_to)

    async def send_text(self, text: str, *, reply_to: int | None = None) -> int | None:
        """Send a short plain-text message of the bot's own (errors, notes) reliably."""
        if self._dead:
            return None

        async def call() -> int:
            msg = await self._bot.send_message(
                chat_id=self._chat_id,
                text=text,
                message_thread_id=self._thread_id,
                reply_parameters=_reply(reply_to),
                link_preview_options=NO_PREVIEW,
            )
            return msg.message_id

        try:
            return await self._with_retries(call)
        except DeliveryError as exc:
            logger.warning("chat %s: could not send a notice: %s", self._chat_id, exc)
            return None

    # ---- background work -------------------------------------------------------------------

    async def _keep_typing(self) -> None:
        while not self.shown and not self._finishing:
            with contextlib.suppress(TelegramAPIError):
                await self._bot.send_chat_action(
                    chat_id=self._chat_id,
                    action=ChatAction.TYPING,
                    message_thread_id=self._thread_id,
                )
            await self._sleep(TYPING_RENEW_SECONDS)

    async def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing

    async def _flush_loop(self) -> bool:
        """Turn pushed text into calls until finishing, then deliver the final text."""
        try:
            return await self._flush()
        finally:
            self._end_turn()  # cancelled while holding a turn

    async def _flush(self) -> bool:
        paced = False
        while not self._finishing:
            await self._changed.wait()
            if self._finishing:
                break
            if self.shown:
                # Edits wait for the chat's pacing and for a bot-wide slot that no first message
                # or final text is waiting for; the wait turns urgent once the answer is complete.
                await self._take_turn(urgent=self._is_finishing)
                paced = True
                if self._finishing:
                    break
            self._changed.clear()
            await self._deliver(final=False, paced=paced)
            paced = False
            if self.shown and self._typing is not None:
                self._typing.cancel()
        return await self._deliver(final=True, paced=paced)

    # ---- rendering and delivery --------------------------------------------------------------

    def _is_finishing(self) -> bool:
        return self._finishing

    async def _take_turn(self, *, urgent: Urgency = True) -> None:
        await self._gate.acquire(self._chat_id, urgent=urgent)
        self._holding = True

    def _end_turn(self) -> None:
        # The gate counts the call against Telegram's limits until its answer is back.
        if self._holding:
            self._holding = False
            self._gate.release(self._chat_id)

    async def _deliver(self, *, final: bool, paced: bool = False) -> bool:
        """Show the newest text: freeze full messages, then update the current one.

        `paced`: a turn is already held for the first call.
        """
        try:
            return await self._deliver_held(final=final, paced=paced)
        finally:
            self._end_turn()  # a turn that ended up without a call

    async def _deliver_held(self, *, final: bool, paced: bool) -> bool:
        st = self._state
        if self._dead:
            return False
        if st.pushed == st.delivered:
            return True  # nothing new since the last delivery
        if not paced:
            # The turn first, the text after it: a long wait for the turn still sends the newest.
            await self._take_turn()
            paced = True
        if st.pending:
            st.text += "".join(st.pending)
            st.pending.clear()
        upto = len(st.text)
        while True:
            body = st.carry + st.text[st.offset :]
            html = render_fitting(body)
            if html is not None:
                break
            piece = first_piece(st.text[st.offset :], carry=st.carry)
            if piece is None:  # cannot happen: the body did not fit
                html = render_html(body)
                break
            # The current message is full: it keeps this piece for good.
            if not await self._show(piece.markdown, final=True, paced=paced):
                return False
            paced = False
            st.current = None
            st.offset += piece.end
            st.carry = piece.carry
        if body.strip() and not await self._show(body, html=html, final=final, paced=paced):
            return False
        st.delivered = upto
        return True

    async def _show(
        self, markdown: str, *, html: str | None = None, final: bool, paced: bool
    ) -> bool:
        """Send or edit the current message to show `markdown` (rendered as `html`, if given)."""
        if self._dead:
            return False
        if html is None:
            html = render_html(markdown)
        if not html.strip():
            return True
        cur = self._state.current
        if cur is not None and cur.content == html:
            return True
        # Intermediate edits get one retry, for the plain-text fallback or a deleted message.
        attempts = self._options.final_attempts if final else 2
        plain = False
        for attempt in range(attempts):
            content = markdown.strip() if plain else html
            if not paced or attempt > 0:
                await self._take_turn()
            try:
                try:
                    await self._send_or_edit(content, html=not plain)
                finally:
                    self._end_turn()
                return True
            except TelegramRetryAfter as exc:
                self._gate.block(self._chat_id, exc.retry_after)
                logger.info(
                    "chat %s: flood control, retry after %ss", self._chat_id, exc.retry_after
                )
                if not final:
                    return False
            except TelegramBadRequest as exc:
                text = exc.message.lower()
                if "not modified" in text:
                    return True
                if "message to edit not found" in text or "message_id_invalid" in text:
                    # The user deleted the message being written: continue in a new one.
                    self._state.current = None
                    continue
                if not plain and ("can't parse entities" in text or "too long" in text):
                    # Telegram refused the formatting: deliver the text itself rather than nothing.
                    logger.warning(
                        "chat %s: HTML rejected (%s), sending plain", self._chat_id, exc
                    )
                    plain = True
                    continue
                logger.error("chat %s: message rejected: %s", self._chat_id, exc.message)
                return False
            except (TelegramForbiddenError, TelegramUnauthorizedError, TelegramNotFound) as exc:
                logger.warning("chat %s: unreachable: %s", self._chat_id, exc.message)
                self._dead = True
                return False
            except (TelegramNetworkError, TelegramServerError) as exc:
                logger.info("chat %s: Telegram call failed (%s), retrying", self._chat_id, exc)
                if not final:
                    return False
                await self._sleep(self._backoff(attempt))
            except TelegramAPIError as exc:
                logger.error("chat %s: unexpected Telegram error: %s", self._chat_id, exc)
                return False
        logger.error("chat %s: gave up delivering after %s attempts", self._chat_id, attempts)
        return False

    async def _send_or_edit(self, content: str, *, html: bool) -> None:
        st = self._state
        parse_mode = ParseMode.HTML if html else None
        st.calls += 1
        if st.current is None:
            msg = await self._bot.send_message(
                chat_id=self._chat_id,
                text=content,
                parse_mode=parse_mode,
                message_thread_id=self._thread_id,
                reply_parameters=_reply(self._reply_to) if not st.sent_ids else None,
                link_preview_options=NO_PREVIEW,
            )
            st.current = _Shown(message_id=msg.message_id, content=content)
            st.sent_ids.append(msg.message_id)
            return
        await self._bot.edit_message_text(
            chat_id=self._chat_id,
            message_id=st.current.message_id,
            text=content,
            parse_mode=parse_mode,
            link_preview_options=NO_PREVIEW,
        )
        st.current.content = content

    async def _with_retries(self, call: Callable[[], Awaitable[int]]) -> int:
        for attempt in range(self._options.final_attempts):
            await self._take_turn()
            try:
                try:
                    return await call()
                finally:
                    self._end_turn()
            except TelegramRetryAfter as exc:
                self._gate.block(self._chat_id, exc.retry_after)
            except (TelegramNetworkError, TelegramServerError):
                await self._sleep(self._backoff(attempt))
            except TelegramAPIError as exc:
                if isinstance(exc, (TelegramForbiddenError, TelegramUnauthorizedError)):
                    self._dead = True
                raise DeliveryError(exc.message) from exc
        raise DeliveryError("retries exhausted")

    def _backoff(self, attempt: int) -> float:
        return float(min(self._options.backoff_max, self._options.backoff_base * 2**attempt))


def _reply(message_id: int | None) -> ReplyParameters | None:
    if message_id is None:
        return None
    # The triggering message may have been deleted meanwhile; answer anyway.
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)
