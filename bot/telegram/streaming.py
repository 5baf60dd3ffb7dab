"""The reply writer: shows a streaming answer by sending a message and editing it, paced."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from aiogram.enums import ChatAction

from bot.telegram.delivery import Delivery, Outcome, Sent
from bot.telegram.render import first_piece, render_fitting, render_html


@dataclass(slots=True)
class _Shown:
    """The bot message currently being edited and what it shows."""

    message_id: int
    content: str  # exactly what was last sent (HTML or plain), to skip no-op edits


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


class TelegramReplyWriter:
    """Streams one answer into a chat: first message fast, paced edits, exact final text.

    Deltas are appended without waiting; a background task turns them into Bot API calls when
    the chat's pacing allows, always sending the newest text, so a slow Telegram never slows
    reading the backend and a fast backend never floods Telegram. Past 4096 characters the
    message is frozen at a paragraph or line boundary and the answer continues in a new message.
    How each call reaches Telegram (pacing, retries, fallbacks) is up to `Delivery`. A chat
    that turns out unreachable (the bot blocked or removed) gets no further call for the answer;
    a group that turns out upgraded to a supergroup gets the rest of the answer there.
    """

    def __init__(
        self,
        *,
        delivery: Delivery,
        chat_id: int,
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> None:
        self._delivery = delivery
        self._chat_id = chat_id
        self._reply_to = reply_to
        self._thread_id = thread_id
        self._state = _State()
        self._changed = asyncio.Event()
        self._finishing = False
        self._flusher: asyncio.Task[bool] | None = None
        self._typing = contextlib.AsyncExitStack()
        self._turn = delivery.turn(chat_id)
        self._dead = False  # the chat is unreachable (bot blocked, chat gone)
        self._moved_to: int | None = None

    @property
    def shown(self) -> bool:
        """True once any part of the answer is visible."""
        return bool(self._state.sent_ids)

    @property
    def message_ids(self) -> list[int]:
        """Ids of the messages that carry the answer, in order."""
        return list(self._state.sent_ids)

    @property
    def moved_to(self) -> int | None:
        """The supergroup the group became while answering, if Telegram said so."""
        return self._moved_to

    async def start(self) -> None:
        """Show "typing…" until the first text is visible."""
        typing = self._delivery.chat_action(
            self._chat_id, ChatAction.TYPING, thread_id=self._thread_id
        )
        await self._typing.enter_async_context(typing)
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
        self._turn.hurry()
        self._changed.set()
        try:
            if self._flusher is not None:
                delivered = await self._flusher
            else:
                delivered = await self._deliver(final=True)
        finally:
            await self._typing.aclose()
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
        sent = await self._delivery.send_text(
            self._chat_id, text, thread_id=self._thread_id, reply_to=reply_to
        )
        self._follow(sent)
        if sent.outcome is Outcome.UNREACHABLE:
            self._dead = True
        return sent.message_id

    # ---- background work -------------------------------------------------------------------

    async def _flush_loop(self) -> bool:
        """Turn pushed text into calls until finishing, then deliver the final text."""
        try:
            return await self._flush()
        finally:
            self._turn.end()  # cancelled while holding a turn

    async def _flush(self) -> bool:
        while not self._finishing:
            await self._changed.wait()
            if self._finishing:
                break
            if self.shown:
                # Edits wait for the chat's pacing and for a bot-wide slot that no first message
                # or final text is waiting for; the wait turns urgent once the answer is complete.
                await self._turn.take(urgent=self._is_finishing)
                if self._finishing:
                    break
            self._changed.clear()
            await self._deliver(final=False)
            if self.shown or self._dead:
                # Renewing "typing…" in a chat that cannot be written to is a call for nothing.
                await self._typing.aclose()
        return await self._deliver(final=True)

    # ---- rendering -------------------------------------------------------------------------

    def _is_finishing(self) -> bool:
        return self._finishing

    async def _deliver(self, *, final: bool) -> bool:
        """Show the newest text: freeze full messages, then update the current one."""
        try:
            return await self._deliver_in_turn(final=final)
        finally:
            self._turn.end()  # a turn that ended up without a call

    async def _deliver_in_turn(self, *, final: bool) -> bool:
        st = self._state
        if self._dead:
            return False
        if st.pushed == st.delivered:
            return True  # nothing new since the last delivery
        # The turn first, the text after it: a long wait for the turn still sends the newest.
        await self._turn.take()
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
            if not await self._show(piece.markdown, final=True):
                return False
            st.current = None
            st.offset += piece.end
            st.carry = piece.carry
        if body.strip() and not await self._show(body, html=html, final=final):
            return False
        st.delivered = upto
        return True

    async def _show(self, markdown: str, *, html: str | None = None, final: bool) -> bool:
        """Send or edit the current message to show `markdown` (rendered as `html`, if given)."""
        if self._dead:
            return False
        if html is None:
            html = render_html(markdown)
        if not html.strip():
            return True
        st = self._state
        if st.current is not None and st.current.content == html:
            return True
        plain = markdown.strip()
        while True:
            if st.current is None:
                sent = await self._delivery.send_text(
                    self._chat_id,
                    plain,
                    html=html,
                    thread_id=self._thread_id,
                    reply_to=self._reply_to if not st.sent_ids else None,
                    final=final,
                    turn=self._turn,
                )
                self._follow(sent)
                if sent.ok and sent.message_id is not None:
                    st.current = _Shown(sent.message_id, plain if sent.fallback else html)
                    st.sent_ids.append(sent.message_id)
                    return True
            else:
                sent = await self._delivery.edit_text(
                    self._chat_id,
                    st.current.message_id,
                    plain,
                    html=html,
                    final=final,
                    turn=self._turn,
                )
                self._follow(sent)
                if sent.ok:
                    st.current.content = plain if sent.fallback else html
                    return True
                if sent.outcome is Outcome.GONE:
                    # Deleted by the user, no longer editable, or left behind in a group that
                    # became a supergroup: continue in a new message.
                    st.current = None
                    continue
            if sent.outcome is Outcome.UNREACHABLE:
                self._dead = True
            return False

    def _follow(self, sent: Sent) -> None:
        """Write to the supergroup from now on if the group has become one."""
        if sent.moved_to is None or sent.moved_to == self._chat_id:
            return
        self._moved_to = self._chat_id = sent.moved_to
        # The group's messages have other ids in the supergroup: nothing there to reply to.
        self._reply_to = None
        self._turn.end()
        self._turn = self._delivery.turn(sent.moved_to)
