"""The reply writer: shows a streaming answer as a draft or as an edited message, paced."""

from __future__ import annotations

import asyncio
import contextlib
import html as html_lib
from dataclasses import dataclass, field

from aiogram.enums import ChatAction
from aiogram.types import InlineKeyboardMarkup

from bot.telegram.delivery import Delivery, Outcome, Sent
from bot.telegram.render import (
    TELEGRAM_TEXT_LIMIT,
    first_piece,
    render_fitting,
    render_html,
    utf16_len,
)
from bot.telegram.stops import Generation, Generations

# A draft is a 30-second preview: during a long pause it is shown again before it fades.
DRAFT_REFRESH_SECONDS = 20.0


@dataclass(slots=True)
class _Shown:
    """The bot message currently being edited and what it shows."""

    message_id: int
    content: str  # exactly what was last sent (HTML or plain), to skip no-op edits
    stop_button: bool = False  # the message carries the Stop button


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
    """Streams one answer into a chat: first text fast, paced updates, exact final text.

    Deltas are appended without waiting; a background task turns them into Bot API calls when
    the chat's pacing allows, always sending the newest text, so a slow Telegram never slows
    reading the backend and a fast backend never floods Telegram.

    The text grows either in a draft (`sendMessageDraft`, private chats: an animated preview
    with a native stop button, persisted by a message at the end) or in a message that is
    edited, carrying an inline Stop button until the final text. Where Telegram refuses drafts,
    the answer goes on by edits without losing text. Past 4096 characters the text is frozen at
    a paragraph or line boundary as a message of its own and the answer continues after it.
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
        generations: Generations | None = None,
        asker_id: int | None = None,
        drafts: bool = False,
        draft_interval: float | None = None,
    ) -> None:
        """`generations`: where the answer is registered so that a Stop can find it (else no
        Stop); `drafts`: stream as drafts, each at least `draft_interval` s after the last call.
        """
        self._delivery = delivery
        self._chat_id = chat_id
        self._reply_to = reply_to
        self._thread_id = thread_id
        self._state = _State()
        self._changed = asyncio.Event()
        self._finishing = False
        self._flusher: asyncio.Task[bool] | None = None
        self._typing = contextlib.AsyncExitStack()
        self._dead = False  # the chat is unreachable (bot blocked, chat gone)
        self._moved_to: int | None = None
        self._mark: str | None = None  # appended to the final text, e.g. "stopped"
        self._generations = generations
        self._asker_id = asker_id
        self._generation: Generation | None = None  # registered from `start` to `finish`
        self._stop_markup: InlineKeyboardMarkup | None = None
        self._never_stopped = asyncio.Event()
        self._drafts = drafts
        self._draft_interval = draft_interval
        # The draft the answer grows in while drafts are used, and what it shows (None: none
        # shown since the last message, which made Telegram drop it).
        self._draft_id: int | None = None
        self._draft_content: str | None = None
        self._refresh = False
        self._placeholder_waits = False
        self._typing_shown = False
        self._turn = delivery.turn(chat_id)

    @property
    def shown(self) -> bool:
        """True once any part of the answer is visible (not only "Thinking…")."""
        return bool(self._state.sent_ids) or bool(self._draft_content)

    @property
    def stop_requested(self) -> asyncio.Event:
        """Set when the user presses Stop (the draft's or the message's) during the answer."""
        if self._generation is None:
            return self._never_stopped
        return self._generation.stopped

    @property
    def message_ids(self) -> list[int]:
        """Ids of the messages that carry the answer, in order."""
        return list(self._state.sent_ids)

    @property
    def moved_to(self) -> int | None:
        """The supergroup the group became while answering, if Telegram said so."""
        return self._moved_to

    async def start(self) -> None:
        """Register the answer for a Stop, and show that it is coming until its first text.

        A draft shows Telegram's "Thinking…" placeholder, with the stop button, so a slow (say,
        reasoning) model can be stopped before it writes; it only uses Bot API calls the bot
        can spare (see `_show_placeholder`), with "typing…" meanwhile. Otherwise "typing…".
        """
        if self._generations is not None:
            self._generation = await self._generations.open(
                chat_id=self._chat_id, asker_id=self._asker_id
            )
            self._stop_markup = self._generation.stop_button()
            if self._drafts and self._delivery.drafts_allowed(self._chat_id):
                self._draft_id = self._generation.id
                self._turn.spacing = self._draft_interval
        if self._draft_id is None:
            await self._show_typing()
        self._flusher = asyncio.create_task(self._flush_loop())

    async def _show_typing(self) -> None:
        if self._typing_shown:
            return
        self._typing_shown = True
        typing = self._delivery.chat_action(
            self._chat_id, ChatAction.TYPING, thread_id=self._thread_id
        )
        await self._typing.enter_async_context(typing)

    def push(self, text: str) -> None:
        """Append answer text; delivery happens in the background."""
        if text:
            # Joined only when delivering: appending each delta to one growing string would copy
            # the whole answer per delta.
            self._state.pending.append(text)
            self._state.pushed += len(text)
            self._changed.set()
            if self._placeholder_waits:
                self._turn.hurry()  # the slot waited for goes to the first text instead

    async def finish(self, *, note: str | None = None, mark: str | None = None) -> bool:
        """Deliver the complete answer and stop the background work.

        `mark` ends the answer's last message (in italics, e.g. "stopped"); `note` follows as a
        message of its own.
        """
        self._mark = mark
        self._finishing = True
        await self._close_generation()
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
            replied = self._state.sent_ids[-1] if self._state.sent_ids else None
            await self.send_text(note, reply_to=replied)
        return delivered

    async def _close_generation(self) -> None:
        if self._generation is not None and self._generations is not None:
            await self._generations.close(self._generation)

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
        if self._draft_id is not None:
            await self._show_placeholder()
        while not self._finishing:
            await self._wait_for_text()
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

    async def _show_placeholder(self) -> None:
        """The empty draft ("Thinking…") before the first text, in a slot the bot can spare.

        It waits for a bot-wide slot no urgent call wants, so when many answers start at once
        it never delays their first texts; a first text arriving meanwhile takes the slot.
        """
        turn = self._turn
        if not turn.free_now():
            await self._show_typing()  # while the placeholder waits for a slot
        turn.spacing = 0.0  # the first text may follow "Thinking…" at once
        self._placeholder_waits = True
        try:
            await turn.take(urgent=lambda: bool(self._state.pushed))
        finally:
            self._placeholder_waits = False
        if not (self._state.pushed or self._finishing):
            if await self._show_draft("", ""):
                await self._typing.aclose()
            elif not self._dead:
                await self._show_typing()  # refused or deferred: "typing…" instead
        # Else the first text is here (it goes in this turn) or the answer is over. Either way
        # drafts are spaced again from the next call on.
        if self._draft_id is not None:
            turn.spacing = self._draft_interval

    async def _wait_for_text(self) -> None:
        """Until new text is pushed; a shown draft is refreshed before it fades meanwhile."""
        if self._draft_content is None or self._draft_id is None:
            await self._changed.wait()
            return
        try:
            async with asyncio.timeout(DRAFT_REFRESH_SECONDS):
                await self._changed.wait()
        except TimeoutError:
            self._refresh = True

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
        if self._up_to_date(final=final):
            return True
        # The turn first, the text after it: a long wait for the turn still sends the newest.
        await self._turn.take()
        if st.pending:
            st.text += "".join(st.pending)
            st.pending.clear()
        upto = len(st.text)
        mark = self._mark if final else None
        # The mark's room is kept in the last message: "\n\n" and the mark itself.
        limit = TELEGRAM_TEXT_LIMIT - (utf16_len(mark) + 2 if mark else 0)
        while True:
            body = st.carry + st.text[st.offset :]
            html = render_fitting(body, limit=limit)
            if html is not None:
                break
            piece = first_piece(st.text[st.offset :], carry=st.carry, limit=limit)
            if piece is None:  # cannot happen: the body did not fit
                html = render_html(body)
                break
            # The current message is full: it keeps this piece for good.
            if not await self._show(piece.markdown, final=True):
                return False
            st.current = None
            st.offset += piece.end
            st.carry = piece.carry
        if body.strip():
            if not await self._show(body, html=html, final=final, mark=mark):
                return False
        elif self._refresh and not final and self._draft_id is not None:
            await self._show_draft("", "")  # "Thinking…" again before it fades
        st.delivered = upto
        return True

    def _up_to_date(self, *, final: bool) -> bool:
        """True when the chat shows everything pushed, as it should at this stage."""
        st = self._state
        if st.pushed != st.delivered:
            return False
        if not final:
            return not self._refresh
        # The final text stands in messages, with its mark and without the Stop button.
        if self._draft_content is not None or self._mark:
            return False
        return st.current is None or not st.current.stop_button

    async def _show(
        self, markdown: str, *, html: str | None = None, final: bool, mark: str | None = None
    ) -> bool:
        """Show `markdown` (rendered as `html`, if given; `mark` after it): in the draft while
        not final, else by sending or editing the current message.
        """
        if self._dead:
            return False
        if html is None:
            html = render_html(markdown)
        if not html.strip():
            return True
        plain = markdown.strip()
        if mark:
            html += f"\n\n<i>{html_lib.escape(mark, quote=False)}</i>"
            plain += f"\n\n{mark}"
        if not final and self._draft_id is not None:
            drafted = await self._show_draft(plain, html)
            if drafted is not None:
                return drafted
            # Telegram takes no drafts here: the answer goes on in a message.
        st = self._state
        # The Stop button rides on the message while the answer streams into it.
        markup = None if final else self._stop_markup
        button = markup is not None
        current = st.current
        if current is not None and current.content == html and current.stop_button == button:
            return True
        while True:
            if st.current is None:
                sent = await self._delivery.send_text(
                    self._chat_id,
                    plain,
                    html=html,
                    markup=markup,
                    thread_id=self._thread_id,
                    reply_to=self._reply_to if not st.sent_ids else None,
                    final=final,
                    turn=self._turn,
                )
                self._follow(sent)
                if sent.ok and sent.message_id is not None:
                    self._draft_content = None  # a message makes Telegram drop the draft
                    content = plain if sent.fallback else html
                    st.current = _Shown(sent.message_id, content, stop_button=button)
                    st.sent_ids.append(sent.message_id)
                    return True
            else:
                sent = await self._delivery.edit_text(
                    self._chat_id,
                    st.current.message_id,
                    plain,
                    html=html,
                    markup=markup,
                    final=final,
                    turn=self._turn,
                )
                self._follow(sent)
                if sent.ok:
                    st.current.content = plain if sent.fallback else html
                    st.current.stop_button = button
                    return True
                if sent.outcome is Outcome.GONE:
                    # Deleted by the user, no longer editable, or left behind in a group that
                    # became a supergroup: continue in a new message.
                    st.current = None
                    continue
            if sent.outcome is Outcome.UNREACHABLE:
                self._dead = True
            return False

    async def _show_draft(self, plain: str, html: str) -> bool | None:
        """Show the text in the answer's draft; None once drafts turn out refused here."""
        assert self._draft_id is not None
        if html == self._draft_content and not self._refresh:
            return True
        sent = await self._delivery.send_draft(
            self._chat_id,
            self._draft_id,
            plain,
            html=html or None,
            thread_id=self._thread_id,
            turn=self._turn,
        )
        if sent.outcome is Outcome.UNSUPPORTED:
            self._draft_id = None
            self._draft_content = None
            self._turn.spacing = None
            return None
        if sent.ok:
            self._draft_content = plain if sent.fallback else html
            self._refresh = False
            return True
        if sent.outcome is Outcome.UNREACHABLE:
            self._dead = True
        return False

    def _follow(self, sent: Sent) -> None:
        """Write to the supergroup from now on if the group has become one."""
        if sent.moved_to is None or sent.moved_to == self._chat_id:
            return
        if self._generation is not None:
            self._generation.chat_id = sent.moved_to
        self._moved_to = self._chat_id = sent.moved_to
        # The group's messages have other ids in the supergroup: nothing there to reply to.
        self._reply_to = None
        self._turn.end()
        self._turn = self._delivery.turn(sent.moved_to)
