"""The chat service: one user message in, one streamed answer out, history and usage stored."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import (
    ChatRecord,
    ChatRepository,
    NewTurn,
    NewUsage,
    TurnRecord,
    TurnRepository,
    UserRecord,
)
from bot.db.writer import TurnWrite, TurnWriter
from bot.i18n import _, format_number, ngettext
from bot.llm.errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMContextLengthError,
    LLMError,
    LLMHTTPError,
    LLMNoBackendError,
    LLMNotFoundError,
    LLMRateLimitError,
    LLMResponseTooLargeError,
    LLMServerError,
    LLMTimeoutError,
    LLMUnavailableError,
)
from bot.llm.router import BackendRouter
from bot.llm.types import ChatMessage, Role, StreamEnd, TextDelta, Usage
from bot.pictures import IMAGE_TOKENS, Picture, with_placeholder
from bot.services.directory import Directory
from bot.services.documents import TextDocument, trim_to_tokens, wrap
from bot.services.sink import ReplySink
from bot.services.tokens import PER_MESSAGE_OVERHEAD, REPLY_PRIMING, TokenCounter
from bot.services.usage import BudgetService

logger = logging.getLogger(__name__)

GROUP_TYPES = frozenset({"group", "supergroup"})
# How many models a "model not found" answer names.
OFFERED_SHOWN = 8
GROUP_PROMPT = (
    "\n\nYou are in a group chat. Each user message starts with the name of the person who "
    "wrote it, followed by a colon."
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A user's text message addressed to the bot."""

    chat_id: int
    chat_type: str
    chat_title: str | None
    user_id: int
    user_full_name: str
    username: str | None
    language_code: str | None
    text: str
    message_id: int | None = None
    # A picture for a vision model, and the name of the file it came in (None for a photo).
    image: Picture | None = None
    image_name: str | None = None

    @property
    def is_group(self) -> bool:
        """True in groups and supergroups."""
        return self.chat_type in GROUP_TYPES

    @property
    def stored_text(self) -> str:
        """The user's turn as history keeps it: a picture leaves a placeholder in the text."""
        if self.image is None:
            return self.text
        return with_placeholder(self.text, self.image_name)


@dataclass(frozen=True, slots=True)
class ChatConfig:
    """Settings the chat service needs."""

    default_model: str
    system_prompt: str
    max_tokens: int | None
    temperature: float | None
    history_token_budget: int
    context_window: int
    history_max_turns: int = 400
    keep_images: bool = False  # later requests carry earlier pictures again


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    """What happened to one request."""

    status: str  # "ok", "error", "interrupted", "stopped", "rejected", "duplicate"
    model: str
    answer: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    latency_ms: int = 0
    backend: str | None = None  # the backend that answered, or whose failure was shown


@dataclass(slots=True)
class _Streamed:
    """What one backend call produced, and when."""

    started: float
    ended: float = 0.0
    first_token_at: float | None = None
    parts: list[str] = field(default_factory=list)
    end: StreamEnd | None = None
    failure: BaseException | None = None


class AnswerStopped(Exception):
    """The user stopped the answer (the draft's stop button, or the Stop button)."""

    def __str__(self) -> str:
        return "stopped by the user"


@dataclass(frozen=True, slots=True)
class _Loaded:
    """The chat's model and history, and the chat and user rows its turn will write."""

    model: str
    history: list[TurnRecord]
    chat: ChatRecord | None  # to store with the turn: new, or changed since stored
    user: UserRecord | None
    # /retry: the question asked again and the answer the new one replaces.
    question: TurnRecord | None = None
    replaced: TurnRecord | None = None


class ChatService:
    """Answers chat messages: reads history, streams the backend's answer, records the turn."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        llm: BackendRouter,
        tokens: TokenCounter,
        config: ChatConfig,
        context_window_for: Callable[[str], int | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        budgets: BudgetService | None = None,
        directory: Directory | None = None,
        read_sessions: async_sessionmaker[AsyncSession] | None = None,
        offered_instead: Callable[[str], Awaitable[list[str]]] | None = None,
        vision_of: Callable[[str], bool | None] | None = None,
        vision_models: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        """`read_sessions`: read-only sessions for reads that write nothing (else `sessions`).

        `offered_instead(model)`: the models on offer once the backend said it has no `model`.
        `vision_of(model)`: whether the backend's list says the model reads pictures (None:
        it does not say); `vision_models()`: the models on offer that do.
        """
        self._offered_instead = offered_instead
        self._vision_of = vision_of
        self._vision_models = vision_models
        self._sessions = sessions
        self._read_sessions = read_sessions or sessions
        # Every finished answer's rows go through it, committed together with other chats'.
        self._writer = TurnWriter(sessions)
        self._budgets = budgets
        # Shared with the other services that store chats and users; without one, none is kept.
        self._directory = directory or Directory(capacity=0)
        self._llm = llm
        self._tokens = tokens
        self._config = config
        self._context_window_for = context_window_for
        self._clock = clock

    async def close(self) -> None:
        """Wait until every finished answer's rows are written (at shutdown)."""
        await self._writer.close()

    async def budget_refusal(self, *, user_id: int) -> str | None:
        """Why the user may not ask now (a spent budget), checked before any download."""
        if self._budgets is None:
            return None
        block = await self._budgets.check(user_id=user_id)
        return block.message if block is not None else None

    def document_turn(self, document: TextDocument, question: str) -> str:
        """The user's turn for a text file and its caption: the file trimmed to half the
        history budget (with a visible note when cut), then the question."""
        budget = self._config.history_token_budget // 2
        trimmed = trim_to_tokens(document.text, budget, self._tokens.count)
        wrapped = wrap(
            document, trimmed.text, trimmed=trimmed.trimmed, total_chars=trimmed.total_chars
        )
        return f"{wrapped}\n\n{question}" if question else wrapped

    async def reset(self, *, chat_id: int) -> int:
        """Forget a chat's conversation; returns the number of turns removed."""
        async with self._sessions() as session, session.begin():
            return await TurnRepository(session).clear(chat_id=chat_id)

    async def reply(self, *, request: ChatRequest, sink: ReplySink) -> ReplyOutcome:
        """Answer one message through `sink`; history and usage are stored once, at the end."""
        loaded = await self._load(request)
        if loaded is None:
            logger.info(
                "chat %s: message %s already answered", request.chat_id, request.message_id
            )
            return ReplyOutcome(status="duplicate", model=self._config.default_model)
        return await self._answer(request, loaded, sink)

    async def retry(self, *, request: ChatRequest, sink: ReplySink) -> ReplyOutcome:
        """Answer the chat's last question again (`request` is the /retry message).

        The new answer replaces the last one in history once it is stored; a failed attempt
        leaves the old one. The person retrying is the one whose usage and budget count.
        """
        loaded = await self._load(request, retry=True)
        if loaded is None or loaded.question is None:
            await sink.fail(_("There is no answer to regenerate yet. Ask me something first."))
            return ReplyOutcome(status="rejected", model=self._config.default_model)
        return await self._answer(request, loaded, sink)

    async def _answer(
        self, request: ChatRequest, loaded: _Loaded, sink: ReplySink
    ) -> ReplyOutcome:
        model = loaded.model
        images = self._user_images(request, loaded)
        if images and self._vision_of is not None and self._vision_of(model) is False:
            # The backend's own list says so: no call is made, nothing is stored.
            await sink.fail(await self._no_vision(model))
            return ReplyOutcome(status="rejected", model=model)
        prompt = await self._prompt_or_refuse(request, loaded, sink)
        if prompt is None:
            return ReplyOutcome(status="rejected", model=model)
        await sink.start()
        streamed = await self._stream(model, prompt, sink)
        if isinstance(streamed.failure, LLMContextLengthError) and not streamed.parts:
            # The backend counts tokens its own way: try once more with half the history.
            shorter = self._build_prompt(
                model=model,
                history=loaded.history,
                user_content=self._user_content(request, loaded),
                user_images=images,
                is_group=request.is_group,
                budget=self._budget(model) // 2,
            )
            if isinstance(shorter, list) and len(shorter) < len(prompt):
                logger.info(
                    "chat %s: context too long for the backend, retrying with %d of %d messages",
                    request.chat_id,
                    len(shorter),
                    len(prompt),
                )
                prompt = shorter
                streamed = await self._stream(model, prompt, sink)
        outcome = self._outcome(model, prompt, streamed)
        saved = await self._save(request, loaded, outcome, streamed.failure)
        self._log(request, outcome, streamed)
        await self._show_end(sink, outcome, streamed.failure, saved=saved, images=bool(images))
        if isinstance(streamed.failure, asyncio.CancelledError):
            raise streamed.failure
        return outcome

    # ---- steps -------------------------------------------------------------------------------

    async def _prompt_or_refuse(
        self, request: ChatRequest, loaded: _Loaded, sink: ReplySink
    ) -> list[ChatMessage] | None:
        """The prompt to send, or None once the user was told why nothing is sent."""
        refusal = await self.budget_refusal(user_id=request.user_id)
        if refusal is not None:
            # A spent budget costs nothing: the backend is never called.
            await sink.fail(refusal)
            return None
        prompt = self._build_prompt(
            model=loaded.model,
            history=loaded.history,
            user_content=self._user_content(request, loaded),
            user_images=self._user_images(request, loaded),
            is_group=request.is_group,
        )
        if isinstance(prompt, int):
            await sink.fail(_too_long(tokens=prompt, limit=self._budget(loaded.model)))
            return None
        return prompt

    async def _stream(self, model: str, prompt: list[ChatMessage], sink: ReplySink) -> _Streamed:
        """Stream the backend's answer into `sink` until it ends or the user stops it.

        Failures are kept, not raised. A Stop cancels the reading, which closes the backend's
        connection, so the provider stops generating (and charging for) the answer.
        """
        streamed = _Streamed(started=self._clock())
        reading = asyncio.ensure_future(self._read(model, prompt, sink, streamed))
        stop = asyncio.ensure_future(sink.stop_requested.wait())
        try:
            await asyncio.wait((reading, stop), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError as exc:
            # Shutdown: keep what was shown, tell the user, record it, then stop.
            streamed.failure = exc
        finally:
            stop.cancel()
        if not reading.done():
            reading.cancel()
            await asyncio.wait((reading,))
            if streamed.failure is None:
                streamed.failure = AnswerStopped()
        streamed.ended = self._clock()
        return streamed

    async def _read(
        self, model: str, prompt: list[ChatMessage], sink: ReplySink, streamed: _Streamed
    ) -> None:
        """Read the backend's answer into `streamed` and `sink`; a backend failure is kept."""
        try:
            async for event in self._llm.stream_chat(
                model=model,
                messages=prompt,
                max_tokens=self._config.max_tokens,
                temperature=self._config.temperature,
            ):
                if isinstance(event, TextDelta):
                    if streamed.first_token_at is None:
                        streamed.first_token_at = self._clock()
                    streamed.parts.append(event.text)
                    sink.push(event.text)
                else:
                    streamed.end = event
        except LLMError as exc:
            streamed.failure = exc

    def _outcome(
        self, model: str, prompt: Sequence[ChatMessage], streamed: _Streamed
    ) -> ReplyOutcome:
        answer = "".join(streamed.parts)
        if streamed.failure is None:
            status = "ok"
        elif isinstance(streamed.failure, AnswerStopped):
            status = "stopped"
        elif answer.strip():
            status = "interrupted"
        else:
            status = "error"
        end = streamed.end
        if end is not None and end.model:
            model = end.model  # a fallback configured with a model of its own answered
        backend = end.backend if end is not None else getattr(streamed.failure, "backend", None)
        return ReplyOutcome(
            status=status,
            model=model,
            backend=backend,
            answer=answer,
            usage=self._usage(end.usage if end else None, prompt, answer, status),
            finish_reason=end.finish_reason if end else None,
            latency_ms=int((streamed.ended - streamed.started) * 1000),
        )

    async def _save(
        self,
        request: ChatRequest,
        loaded: _Loaded,
        outcome: ReplyOutcome,
        failure: BaseException | None,
    ) -> bool:
        """Store the turn and its usage; False (logged) if the database refused."""
        try:
            await self._writer.write(self._turn_write(request, loaded, outcome, failure))
        except SQLAlchemyError as exc:
            # The user still gets the answer, and is told it was not kept. The usage goes to the
            # log, so the owner can still account for it; the database's own reason names the
            # cause, while SQLAlchemy's text would quote the statement's parameters: the
            # conversation itself.
            usage = outcome.usage
            assert usage is not None
            logger.error(
                "chat %s: could not store the turn and its usage (%s): user=%s model=%s "
                "prompt_tokens=%s completion_tokens=%s estimated=%s status=%s",
                request.chat_id,
                _database_reason(exc),
                request.user_id,
                outcome.model,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.estimated,
                outcome.status,
            )
            return False
        self._remember(loaded)
        return True

    def _log(self, request: ChatRequest, outcome: ReplyOutcome, streamed: _Streamed) -> None:
        usage = outcome.usage
        assert usage is not None
        first_token = streamed.first_token_at
        failure = streamed.failure
        logger.info(
            "answer chat=%s model=%s prompt_tokens=%s completion_tokens=%s estimated=%s "
            "latency_ms=%s first_token_ms=%s finish=%s status=%s",
            request.chat_id,
            outcome.model,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.estimated,
            outcome.latency_ms,
            int((first_token - streamed.started) * 1000) if first_token is not None else None,
            outcome.finish_reason,
            outcome.status if failure is None else f"{outcome.status}:{type(failure).__name__}",
        )

    async def _show_end(
        self,
        sink: ReplySink,
        outcome: ReplyOutcome,
        failure: BaseException | None,
        *,
        saved: bool,
        images: bool = False,
    ) -> None:
        """Deliver the final text, with a note when it was cut, interrupted or not kept."""
        if outcome.status == "error" or not outcome.answer.strip():
            if outcome.status == "stopped":
                await sink.fail(_("⏹ Stopped before the answer began."))
                return
            if outcome.status == "ok":
                message = _(
                    "The model returned an empty answer. Please try rephrasing your message."
                )
            else:
                message = await self._describe(failure, model=outcome.model, images=images)
            await sink.fail(message)
            return
        notes: list[str] = []
        if outcome.status == "interrupted":
            notes.append(_interrupted(_interruption_reason(failure)))
        elif outcome.finish_reason == "length":
            notes.append(_truncated())
        if not saved:
            notes.append(_not_saved())
        # TRANSLATORS: closes an answer the user stopped, in italics.
        mark = _("⏹ stopped") if outcome.status == "stopped" else None
        await sink.finish(note="\n".join(notes) or None, mark=mark)

    async def _describe(
        self, failure: BaseException | None, *, model: str, images: bool = False
    ) -> str:
        """What went wrong, for the user; a missing model comes with the ones on offer, a
        picture the model cannot read with the models that can."""
        if images and refuses_pictures(failure):
            return await self._no_vision(model)
        message = describe_error(failure, model=model)
        if isinstance(failure, LLMNotFoundError) and self._offered_instead is not None:
            offered = await self._offered_instead(model)
            if offered:
                shown = ", ".join(offered[:OFFERED_SHOWN])
                if len(offered) > OFFERED_SHOWN:
                    shown += ", …"
                message += "\n" + _("Models on offer: {models}").format(models=shown)
        return message

    async def _no_vision(self, model: str) -> str:
        """The model cannot read pictures: say so, naming models on offer that can."""
        message = _(
            "The model “{model}” cannot read pictures, so I did not send yours. Send /model to "
            "choose one that can."
        ).format(model=model)
        offered = await self._vision_models() if self._vision_models is not None else []
        offered = [m for m in offered if m != model]
        if offered:
            shown = ", ".join(offered[:OFFERED_SHOWN])
            if len(offered) > OFFERED_SHOWN:
                shown += ", …"
            message += "\n" + _("Models that read pictures: {models}").format(models=shown)
        return message

    async def _load(self, request: ChatRequest, *, retry: bool = False) -> _Loaded | None:
        """The chat's model and the history that fits, or None if the message was answered.

        `retry`: the history before the chat's last question, with that question and its
        answer; None when the chat has none.

        Only reads, on a read-only connection side by side with other chats' reads. A chat or
        user that is new, or that Telegram now reports differently, is written later, with the
        turn (see `_save`): a new chat's first message costs one write transaction, shared.
        """
        directory = self._directory
        chat = directory.known_chat(
            chat_id=request.chat_id, type=request.chat_type, title=request.chat_title
        )
        user = directory.known_user(
            user_id=request.user_id,
            username=request.username,
            full_name=request.user_full_name,
            language_code=request.language_code,
        )
        user_write = None
        if user is None:
            # Read (once) for the user's language before the handler ran, so usually cached.
            stored_user = await directory.stored_user(self._read_sessions, user_id=request.user_id)
            user_write = _reported_user(request, stored_user)
        question = replaced = None
        async with self._read_sessions() as session, session.begin():
            stored = chat
            if stored is None:
                stored = await ChatRepository(session).get(chat_id=request.chat_id)
            model = (stored.model if stored else None) or self._config.default_model
            # A chat never stored has no history to read.
            if not stored:
                history: list[TurnRecord] | None = None if retry else []
            elif retry:
                last = await TurnRepository(session).recent(chat_id=request.chat_id, limit=2)
                history = None
                if [turn.role for turn in last] == ["user", "assistant"]:
                    question, replaced = last
                    history = await self._history(session, request, model, before=question.id)
            else:
                history = await self._history(session, request, model)
        if history is None:
            return None
        chat_write = None
        if chat is None:
            reported = ChatRecord(
                id=request.chat_id,
                type=request.chat_type,
                title=request.chat_title,
                model=stored.model if stored else None,
            )
            if reported == stored:
                directory.remember(reported)
            else:
                chat_write = reported
        return _Loaded(
            model=model,
            history=history,
            chat=chat_write,
            user=user_write,
            question=question,
            replaced=replaced,
        )

    async def _history(
        self, session: AsyncSession, request: ChatRequest, model: str, *, before: int | None = None
    ) -> list[TurnRecord] | None:
        """The turns that can fit the prompt (older than `before`, if given); None if the
        message was answered already."""
        turns = TurnRepository(session)
        duplicate = (
            before is None
            and request.message_id is not None
            and await turns.has_message(
                chat_id=request.chat_id, telegram_message_id=request.message_id
            )
        )
        if duplicate:
            return None
        # Only turns that can fit the prompt are read, so a long conversation costs no more to
        # answer than one that just fills the budget.
        return await turns.recent(
            chat_id=request.chat_id,
            limit=self._config.history_max_turns,
            token_budget=self._budget(model),
            overhead=PER_MESSAGE_OVERHEAD,
            before=before,
            images=self._config.keep_images,
        )

    def _remember(self, loaded: _Loaded) -> None:
        """Keep the chat and user just written, unless a newer record was kept meanwhile.

        A /model or /language choice made while the answer streamed stored its own record
        (matching what Telegram reports), which knows the chosen model or language better.
        """
        directory = self._directory
        chat, user = loaded.chat, loaded.user
        if (
            chat is not None
            and directory.known_chat(chat_id=chat.id, type=chat.type, title=chat.title) is None
        ):
            directory.remember(chat)
        if (
            user is not None
            and directory.known_user(
                user_id=user.id,
                username=user.username,
                full_name=user.full_name,
                language_code=user.language_code,
            )
            is None
        ):
            directory.remember(user)

    def _budget(self, model: str) -> int:
        window = self._config.context_window
        if self._context_window_for is not None:
            window = self._context_window_for(model) or window
        reserve = self._config.max_tokens or 0
        return max(0, min(self._config.history_token_budget, window - reserve))

    def _system_prompt(self, is_group: bool) -> str:
        return self._config.system_prompt + (GROUP_PROMPT if is_group else "")

    def _user_images(self, request: ChatRequest, loaded: _Loaded) -> tuple[Picture, ...]:
        """The pictures of the message answered: the request's, or the retried question's."""
        if loaded.question is not None:
            return (loaded.question.image,) if loaded.question.image is not None else ()
        return (request.image,) if request.image is not None else ()

    def _user_content(self, request: ChatRequest, loaded: _Loaded) -> str:
        if loaded.question is not None:
            return self._turn_content(loaded.question)
        if request.is_group:
            return f"{request.user_full_name}: {request.text}"
        return request.text

    def _build_prompt(
        self,
        *,
        model: str,
        history: Sequence[TurnRecord],
        user_content: str,
        is_group: bool,
        user_images: tuple[Picture, ...] = (),
        budget: int | None = None,
    ) -> list[ChatMessage] | int:
        """System prompt, then the newest turns that fit the budget, then the new message.

        Returns the token count of the new message instead when even that alone cannot fit.
        `budget` defaults to the model's history budget.
        """
        budget = self._budget(model) if budget is None else budget
        system = self._system_prompt(is_group)
        used = self._tokens.count_message(system) + REPLY_PRIMING
        new_cost = self._tokens.count_message(user_content) + IMAGE_TOKENS * len(user_images)
        if used + new_cost > budget:
            return new_cost
        used += new_cost
        kept: list[ChatMessage] = []
        for turn in reversed(history):
            content = self._turn_content(turn)
            # `tokens` counts the stored text; the author prefix and framing come on top.
            cost = turn.tokens + PER_MESSAGE_OVERHEAD
            if content is not turn.content:
                cost += self._tokens.count(content[: len(content) - len(turn.content)])
            if used + cost > budget:
                break
            used += cost
            role: Role = "user" if turn.role == "user" else "assistant"
            # A kept picture's tokens are part of its turn's stored count.
            images = (turn.image,) if turn.image is not None else ()
            kept.append(ChatMessage(role=role, content=content, images=images))
        kept.reverse()
        # Many backends require the conversation to start with a user turn.
        while kept and kept[0].role != "user":
            kept.pop(0)
        return [
            ChatMessage(role="system", content=system),
            *kept,
            ChatMessage(role="user", content=user_content, images=user_images),
        ]

    def _turn_content(self, turn: TurnRecord) -> str:
        if turn.role == "user" and turn.author_name:
            return f"{turn.author_name}: {turn.content}"
        return turn.content

    def _usage(
        self, reported: Usage | None, prompt: Sequence[ChatMessage], answer: str, status: str
    ) -> Usage:
        if reported is not None and (reported.prompt_tokens or reported.completion_tokens):
            return reported
        if status == "error":
            return Usage(prompt_tokens=0, completion_tokens=0, estimated=True)
        # Answered, or cut short: the backend read the prompt and wrote the text received.
        return Usage(
            prompt_tokens=self._tokens.count_prompt(prompt),
            completion_tokens=self._tokens.count(answer),
            estimated=True,
        )

    def _turn_write(
        self,
        request: ChatRequest,
        loaded: _Loaded,
        outcome: ReplyOutcome,
        failure: BaseException | None,
    ) -> TurnWrite:
        """The call's usage record and, when there is an answer, both turns."""
        usage = outcome.usage
        assert usage is not None
        answer = outcome.answer if outcome.answer.strip() else ""
        turns = []
        if answer and loaded.question is None:
            content = request.stored_text
            kept = request.image if self._config.keep_images else None
            if request.message_id is None:
                kept = None  # a kept picture is found by its message
            turns.append(
                NewTurn(
                    role="user",
                    content=content,
                    tokens=self._tokens.count(content) + (IMAGE_TOKENS if kept else 0),
                    author_id=request.user_id,
                    author_name=request.user_full_name if request.is_group else None,
                    telegram_message_id=request.message_id,
                    image=kept,
                )
            )
        if answer:
            # After a /retry, the question stays and the new answer takes the old one's place.
            turns.append(
                NewTurn(
                    role="assistant",
                    content=answer,
                    tokens=self._tokens.count(answer),
                    interrupted=outcome.status in ("interrupted", "stopped"),
                )
            )
        replaced = loaded.replaced
        return TurnWrite(
            turns=turns,
            replaces=(replaced.id,) if answer and replaced is not None else (),
            usage=NewUsage(
                user_id=request.user_id,
                chat_id=request.chat_id,
                model=outcome.model,
                kind="chat",
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                estimated=usage.estimated,
                # A stopped answer is recorded as interrupted, with the reason as its error.
                status="interrupted" if outcome.status == "stopped" else outcome.status,
                latency_ms=outcome.latency_ms,
                finish_reason=outcome.finish_reason,
                error=_short_error(failure),
                backend=outcome.backend,
            ),
            chat=loaded.chat,
            user=loaded.user,
        )


def _reported_user(request: ChatRequest, stored: UserRecord | None) -> UserRecord | None:
    """The user as Telegram reports them (language kept), or None if stored just so."""
    reported = UserRecord(
        id=request.user_id,
        username=request.username,
        full_name=request.user_full_name,
        language_code=request.language_code,
        language=stored.language if stored else None,
    )
    return None if reported == stored else reported


def _database_reason(exc: SQLAlchemyError) -> str:
    """What the database said (e.g. "database or disk is full"), without the statement."""
    original = getattr(exc, "orig", None)
    return f"{type(original or exc).__name__}: {original}" if original else type(exc).__name__


def _short_error(failure: BaseException | None) -> str | None:
    if failure is None:
        return None
    if isinstance(failure, asyncio.CancelledError):
        return "cancelled"
    return str(failure)[:300] or type(failure).__name__


def _too_long(*, tokens: int, limit: int) -> str:
    return ngettext(
        "Your message is too long for this model ({count} token; at most {limit} fit). "
        "Please shorten it or split it into parts.",
        "Your message is too long for this model ({count} tokens; at most {limit} fit). "
        "Please shorten it or split it into parts.",
        tokens,
    ).format(count=format_number(tokens), limit=format_number(limit))


def _truncated() -> str:
    return _("⚠️ The answer was cut off: it reached the maximum answer length (MAX_TOKENS).")


def _not_saved() -> str:
    return _(
        "⚠️ This answer could not be saved to the conversation, so the bot will not remember "
        "it. Please try again later if you need to continue from it."
    )


def _interrupted(reason: str) -> str:
    return _("⚠️ The answer was interrupted: {reason}").format(reason=reason)


def _interruption_reason(failure: BaseException | None) -> str:
    if isinstance(failure, asyncio.CancelledError):
        # TRANSLATORS: each reason completes "⚠️ The answer was interrupted: {reason}".
        return _("the bot was restarted")
    if isinstance(failure, LLMTimeoutError):
        return _("the AI backend stopped responding")
    if isinstance(failure, LLMUnavailableError):
        return _("the connection to the AI backend was lost")
    if isinstance(failure, LLMResponseTooLargeError):
        return _("the AI backend sent more than the bot can take")
    return _("the AI backend reported an error")


# How backends word a refusal of pictures: OpenAI ("image_url is only supported by certain
# models"), vLLM ("is not a multimodal model", "At most 0 image(s)"), Ollama and LiteLLM
# ("does not support images", "vision").
_PICTURE_REFUSAL = re.compile(r"image|vision|multi-?modal", re.IGNORECASE)


def refuses_pictures(failure: BaseException | None) -> bool:
    """True if the backend's error says the model does not take pictures."""
    if not isinstance(failure, LLMHTTPError) or isinstance(
        failure, (LLMAuthError, LLMRateLimitError, LLMContextLengthError)
    ):
        return False
    return failure.status < 500 and bool(_PICTURE_REFUSAL.search(failure.message))


def describe_error(failure: BaseException | None, *, model: str) -> str:
    """A plain explanation of a backend failure for the person chatting."""
    if isinstance(failure, LLMAuthError):
        return _(
            "The AI backend refused the bot's API key. The bot's owner needs to fix LLM_API_KEY."
        )
    if isinstance(failure, LLMNotFoundError):
        return _(
            "The model “{model}” is not available on the AI backend (it may have been removed). "
            "Send /model to choose another one."
        ).format(model=model)
    if isinstance(failure, LLMContextLengthError):
        return _(
            "The conversation is too long for the model. Use /reset to start a new one and try "
            "again."
        )
    if isinstance(failure, LLMBadRequestError):
        return _("The AI backend rejected the request: {detail}").format(
            detail=failure.message[:200]
        )
    if isinstance(failure, LLMNoBackendError):
        if failure.retry_in:
            return _(
                "The AI backends are busy (too many requests). Please try again in {seconds} s."
            ).format(seconds=format_number(max(1, round(failure.retry_in))))
        return _(
            "No AI backend can answer right now. The bot's owner has been told; please try "
            "again later."
        )
    if isinstance(failure, LLMRateLimitError):
        return _("The AI backend is busy (too many requests). Please try again in a minute.")
    if isinstance(failure, LLMTimeoutError):
        return _("The AI backend took too long to answer. Please try again later.")
    if isinstance(failure, LLMUnavailableError):
        return _("The AI backend cannot be reached right now. Please try again later.")
    if isinstance(failure, (LLMServerError, LLMHTTPError)):
        return _("The AI backend failed to answer (server error). Please try again later.")
    if isinstance(failure, LLMResponseTooLargeError):
        return _(
            "The AI backend sent a broken answer, larger than the bot can take (a line or an "
            "answer past its limit). Please try again; if it keeps happening, tell the bot's "
            "owner."
        )
    if isinstance(failure, asyncio.CancelledError):
        return _interrupted(_("the bot was restarted"))
    return _("Something went wrong while answering. Please try again.")
