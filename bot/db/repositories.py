"""Repositories: the queries the bot runs, returning plain immutable records.

Every repository works inside the caller's `AsyncSession` and transaction; none of them begins,
commits or rolls back. They run Core statements only, so no ORM objects are loaded into the
session and nothing they return can go stale or trigger lazy loading.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CursorResult,
    Integer,
    Select,
    Table,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from bot.db.models import (
    BACKEND_NAME_MAX_LENGTH,
    ERROR_MAX_LENGTH,
    Chat,
    HandledUpdate,
    InboxUpdate,
    Turn,
    TurnImage,
    UsageRecord,
    User,
    utcnow,
)
from bot.pictures import Picture

CHATS = cast(Table, Chat.__table__)
USERS = cast(Table, User.__table__)
TURNS = cast(Table, Turn.__table__)
TURN_IMAGES = cast(Table, TurnImage.__table__)
USAGE_RECORDS = cast(Table, UsageRecord.__table__)
INBOX = cast(Table, InboxUpdate.__table__)
HANDLED = cast(Table, HandledUpdate.__table__)

TURN_ROLES = frozenset({"user", "assistant"})
USAGE_KINDS = frozenset({"chat", "image", "transcription"})
USAGE_STATUSES = frozenset({"ok", "error", "interrupted"})
# The most tokens (or images, or seconds of audio) one usage record may hold per column; the
# LLM client already refuses larger token figures from backends (bot.llm.dialects.
# MAX_USAGE_TOKENS, the same number).
# Every stored figure within [0, MAX_USAGE_COUNT] keeps the columns (INTEGER, 32-bit on
# PostgreSQL) and every SUM over them far from overflowing: see bot.db.usage_queries.
MAX_USAGE_COUNT = 10_000_000
INBOX_DELETE_SLICE = 500

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChatRecord:
    """A chat and its settings."""

    id: int
    type: str
    title: str | None
    model: str | None


@dataclass(frozen=True, slots=True)
class MovedChat:
    """What moving a chat's rows to a new id changed."""

    chat: ChatRecord | None  # the chat as now stored under the new id; None if never stored
    turns: int
    usage_records: int
    chat_moved: bool  # the old id's chat row was merged into the new id's

    @property
    def changed(self) -> bool:
        """True if anything was stored under the old id."""
        return self.chat_moved or bool(self.turns or self.usage_records)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as last seen, with the language they chose."""

    id: int
    username: str | None
    full_name: str
    language_code: str | None
    language: str | None


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """A stored conversation turn."""

    id: int
    role: str
    content: str
    author_id: int | None
    author_name: str | None
    tokens: int
    interrupted: bool
    image: Picture | None = None  # read only when asked for (VISION_KEEP_IMAGES)


@dataclass(frozen=True, slots=True)
class NewTurn:
    """A conversation turn to be stored."""

    role: str
    content: str
    tokens: int
    author_id: int | None = None
    author_name: str | None = None
    interrupted: bool = False
    telegram_message_id: int | None = None
    # A picture to keep with a user's turn (VISION_KEEP_IMAGES); needs telegram_message_id.
    image: Picture | None = None


@dataclass(frozen=True, slots=True)
class NewUsage:
    """One model request to be recorded for usage statistics.

    Kinds: "chat" and "image" count tokens (and images); "transcription" (speech to text) counts
    the seconds of audio transcribed, with `model` the transcription model and no tokens or
    images, so that it weighs on cost budgets and not on token budgets.
    """

    user_id: int | None
    chat_id: int
    model: str
    kind: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    status: str
    latency_ms: int
    finish_reason: str | None = None
    error: str | None = None
    images: int = 0
    size: str | None = None
    backend: str | None = None  # the backend's name, where several are configured
    audio_seconds: int = 0  # transcriptions: the length of the audio, in whole seconds


# The statements run for every message are built once, with their values bound at execution:
# building a statement and computing its cache key cost more than SQLite takes to run it.
_CHAT_BY_ID = select(CHATS.c.id, CHATS.c.type, CHATS.c.title, CHATS.c.model).where(
    CHATS.c.id == bindparam("chat_id")
)
_USER_BY_ID = select(
    USERS.c.id, USERS.c.username, USERS.c.full_name, USERS.c.language_code, USERS.c.language
).where(USERS.c.id == bindparam("user_id"))
_HAS_MESSAGE = select(
    exists().where(
        TURNS.c.chat_id == bindparam("chat_id"),
        TURNS.c.telegram_message_id == bindparam("message_id"),
    )
)
_ADD_TURNS = insert(TURNS)
# A kept picture goes with its turn, found by the Telegram message it came in.
_ADD_TURN_IMAGE = insert(TURN_IMAGES).from_select(
    ["turn_id", "mime_type", "data"],
    select(
        TURNS.c.id,
        bindparam("mime_type", type_=TURN_IMAGES.c.mime_type.type),
        bindparam("data", type_=TURN_IMAGES.c.data.type),
    ).where(
        TURNS.c.chat_id == bindparam("chat_id"),
        TURNS.c.telegram_message_id == bindparam("message_id"),
    ),
)
_TURN_IMAGES_OF = select(TURN_IMAGES.c.turn_id, TURN_IMAGES.c.mime_type, TURN_IMAGES.c.data).where(
    TURN_IMAGES.c.turn_id.in_(bindparam("turn_ids", expanding=True))
)
_ADD_USAGE = insert(USAGE_RECORDS)
_TURN_COLUMNS = (
    TURNS.c.id,
    TURNS.c.role,
    TURNS.c.content,
    TURNS.c.author_id,
    TURNS.c.author_name,
    TURNS.c.tokens,
    TURNS.c.interrupted,
)


def _recent_turns(*, budgeted: bool, bounded: bool = False) -> Select[Any]:
    """The newest `limit` turns of a chat, newest first; with a budget, only those that fit it.

    `bounded`: only turns older than the one whose id is bound as `before`.
    """
    chat_id = TURNS.c.chat_id == bindparam("chat_id")
    if bounded:
        chat_id = chat_id & (TURNS.c.id < bindparam("before", type_=Integer))
    where = chat_id
    if budgeted:
        # Running total, newest first, over the ids and token counts of the newest `limit`
        # turns (an index range): the oldest turn still within the budget bounds the read.
        newest = (
            select(TURNS.c.id, TURNS.c.tokens)
            .where(chat_id)
            .order_by(TURNS.c.id.desc())
            .limit(bindparam("limit", type_=Integer))
            .subquery()
        )
        running = select(
            newest.c.id,
            func.sum(newest.c.tokens + bindparam("overhead", type_=Integer))
            .over(order_by=newest.c.id.desc())
            .label("running"),
        ).subquery()
        oldest = (
            select(func.min(running.c.id))
            .where(running.c.running <= bindparam("budget", type_=Integer))
            .scalar_subquery()
        )
        where = chat_id & (TURNS.c.id >= oldest)
    return (
        select(*_TURN_COLUMNS)
        .where(where)
        .order_by(TURNS.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


_RECENT = _recent_turns(budgeted=False)
_RECENT_WITHIN_BUDGET = _recent_turns(budgeted=True)
_RECENT_BEFORE_WITHIN_BUDGET = _recent_turns(budgeted=True, bounded=True)


def _upsert_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """Return the dialect's INSERT construct, which supports ON CONFLICT."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"upserts are not implemented for the {dialect!r} database")


@functools.cache
def _reported_upsert(
    dialect: str, table: Table, reported: tuple[str, ...], returning: tuple[str, ...]
) -> ReturningInsert[Any]:
    """Insert a row, or update the columns Telegram reports when any of them changed.

    Executed with the column values as parameters. Returns the row when it was written; an
    unchanged row is not rewritten, and nothing is returned for it.
    """
    return _reported_store(dialect, table, reported).returning(
        *(table.c[name] for name in returning)
    )


@functools.cache
def _reported_store(
    dialect: str, table: Table, reported: tuple[str, ...]
) -> postgresql.Insert | sqlite.Insert:
    """`_reported_upsert` returning nothing, so that it runs for many rows in one executemany."""
    new = _upsert_insert(dialect, table)
    return new.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={name: new.excluded[name] for name in (*reported, "updated_at")},
        where=or_(*(table.c[name].is_distinct_from(new.excluded[name]) for name in reported)),
    )


_CHAT_REPORTED = ("type", "title")
_CHAT_FIELDS = ("id", "type", "title", "model")
_USER_REPORTED = ("username", "full_name", "language_code")
_USER_FIELDS = ("id", "username", "full_name", "language_code", "language")


class ChatRepository:
    """Chats and their per-chat settings."""

    def __init__(self, session: AsyncSession) -> None:
        """Work inside `session`."""
        self._session = session

    async def upsert(self, *, chat_id: int, type: str, title: str | None) -> ChatRecord:
        """Insert the chat or update its type and title; the chosen model is kept.

        One statement for a new or changed chat; an unchanged one is left as it is (no write)
        and read. Callers that know the stored chat skip the call (see `Directory`).
        """
        now = utcnow()
        dialect = self._session.get_bind().dialect.name
        stmt = _reported_upsert(dialect, CHATS, _CHAT_REPORTED, _CHAT_FIELDS)
        params = {
            "id": chat_id,
            "type": type,
            "title": title,
            "created_at": now,
            "updated_at": now,
        }
        row = (await self._session.execute(stmt, params)).one_or_none()
        if row is None:
            # Nothing changed: the conflicting row was left as it is, so read it.
            record = await self.get(chat_id=chat_id)
            if record is None:
                raise RuntimeError(f"chat {chat_id} vanished during its upsert")
            return record
        return ChatRecord(id=row.id, type=row.type, title=row.title, model=row.model)

    async def store(self, chats: Sequence[ChatRecord]) -> None:
        """Insert each chat or update its type and title (models are kept), in one statement."""
        if not chats:
            return
        now = utcnow()
        dialect = self._session.get_bind().dialect.name
        rows = [
            {"id": c.id, "type": c.type, "title": c.title, "created_at": now, "updated_at": now}
            for c in chats
        ]
        await self._session.execute(_reported_store(dialect, CHATS, _CHAT_REPORTED), rows)

    async def get(self, *, chat_id: int) -> ChatRecord | None:
        """Return the chat, or None if it was never stored."""
        row = (await self._session.execute(_CHAT_BY_ID, {"chat_id": chat_id})).one_or_none()
        if row is None:
            return None
        return ChatRecord(id=row.id, type=row.type, title=row.title, model=row.model)

    async def set_model(self, *, chat_id: int, model: str | None) -> None:
        """Choose the chat's model; None returns it to the default. Unknown chats are ignored."""
        stmt = (
            update(Chat)
            .where(Chat.id == chat_id)
            .values(model=model, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        await self._session.execute(stmt)

    async def move(self, *, old_chat_id: int, new_chat_id: int) -> MovedChat:
        """Move the chat's row, turns and usage records from `old_chat_id` to `new_chat_id`.

        A chat already stored under the new id is kept, and takes the old one's model if it has
        none. Moved turns lose their Telegram message ids: those count per chat, and the old
        group's would stand for other messages in the new chat (and mark them answered). With
        nothing stored under the old id nothing changes, so moving again is harmless.
        """
        session = self._session
        old = await self.get(chat_id=old_chat_id)
        new = await self.get(chat_id=new_chat_id)
        now = utcnow()
        if old is not None and new is None:
            # Copied, not renamed: the turns' foreign key must find a chat under either id.
            copy = select(
                literal(new_chat_id, BigInteger()),
                CHATS.c.type,
                CHATS.c.title,
                CHATS.c.model,
                CHATS.c.created_at,
                literal(now, CHATS.c.updated_at.type),
            ).where(CHATS.c.id == old_chat_id)
            columns = ["id", "type", "title", "model", "created_at", "updated_at"]
            await session.execute(insert(CHATS).from_select(columns, copy))
        elif old is not None and new is not None and new.model is None and old.model:
            await self.set_model(chat_id=new_chat_id, model=old.model)
        turns = await session.execute(
            update(TURNS)
            .where(TURNS.c.chat_id == old_chat_id)
            .values(chat_id=new_chat_id, telegram_message_id=None)
        )
        usage = await session.execute(
            update(USAGE_RECORDS)
            .where(USAGE_RECORDS.c.chat_id == old_chat_id)
            .values(chat_id=new_chat_id)
        )
        if old is not None:
            await session.execute(delete(CHATS).where(CHATS.c.id == old_chat_id))
        return MovedChat(
            chat=await self.get(chat_id=new_chat_id),
            turns=cast(CursorResult[Any], turns).rowcount,
            usage_records=cast(CursorResult[Any], usage).rowcount,
            chat_moved=old is not None,
        )


class UserRepository:
    """Telegram users and their preferences."""

    def __init__(self, session: AsyncSession) -> None:
        """Work inside `session`."""
        self._session = session

    async def upsert(
        self,
        *,
        user_id: int,
        username: str | None,
        full_name: str,
        language_code: str | None,
    ) -> UserRecord:
        """Insert the user or update what Telegram reports; the chosen language is kept.

        One statement for a new or changed user; an unchanged one is left as it is and read.
        """
        now = utcnow()
        params = {
            "id": user_id,
            "username": username,
            "full_name": full_name,
            "language_code": language_code,
            "created_at": now,
            "updated_at": now,
        }
        dialect = self._session.get_bind().dialect.name
        stmt = _reported_upsert(dialect, USERS, _USER_REPORTED, _USER_FIELDS)
        row = (await self._session.execute(stmt, params)).one_or_none()
        if row is None:
            # Nothing changed: the conflicting row was left as it is, so read it.
            record = await self.get(user_id=user_id)
            if record is None:
                raise RuntimeError(f"user {user_id} vanished during its upsert")
            return record
        return _user_record(row)

    async def store(self, users: Sequence[UserRecord]) -> None:
        """Insert each user or update what Telegram reports (languages are kept), at once."""
        if not users:
            return
        now = utcnow()
        dialect = self._session.get_bind().dialect.name
        rows = [
            {
                "id": u.id,
                "username": u.username,
                "full_name": u.full_name,
                "language_code": u.language_code,
                "created_at": now,
                "updated_at": now,
            }
            for u in users
        ]
        await self._session.execute(_reported_store(dialect, USERS, _USER_REPORTED), rows)

    async def get(self, *, user_id: int) -> UserRecord | None:
        """Return the user, or None if they were never stored."""
        row = (await self._session.execute(_USER_BY_ID, {"user_id": user_id})).one_or_none()
        return None if row is None else _user_record(row)

    async def set_language(self, *, user_id: int, language: str | None) -> None:
        """Set the user's chosen language; None clears it. Unknown users are ignored."""
        stmt = (
            update(User)
            .where(User.id == user_id)
            .values(language=language, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        await self._session.execute(stmt)


def _user_record(row: Any) -> UserRecord:
    return UserRecord(
        id=row.id,
        username=row.username,
        full_name=row.full_name,
        language_code=row.language_code,
        language=row.language,
    )


class TurnRepository:
    """The conversation history of each chat."""

    def __init__(self, session: AsyncSession) -> None:
        """Work inside `session`."""
        self._session = session

    async def add(self, *, chat_id: int, turns: Sequence[NewTurn]) -> None:
        """Append turns to the chat's history, in the given order.

        Raises ValueError for an invalid turn, and IntegrityError if a user turn's Telegram
        message id is already stored for this chat or the chat does not exist.
        """
        await self.add_to_chats([(chat_id, turns)])

    async def add_to_chats(self, histories: Sequence[tuple[int, Sequence[NewTurn]]]) -> None:
        """Append each (chat id, turns) pair's turns to that chat, in one statement for all."""
        now = utcnow()
        rows = []
        images = []
        for chat_id, turns in histories:
            for turn in turns:
                _check_turn(turn)
                if turn.image is not None:
                    images.append(
                        {
                            "chat_id": chat_id,
                            "message_id": turn.telegram_message_id,
                            "mime_type": turn.image.mime_type,
                            "data": turn.image.data,
                        }
                    )
                rows.append(
                    {
                        "chat_id": chat_id,
                        "role": turn.role,
                        "content": turn.content,
                        "author_id": turn.author_id,
                        "author_name": turn.author_name,
                        "tokens": turn.tokens,
                        "interrupted": turn.interrupted,
                        "telegram_message_id": turn.telegram_message_id,
                        "created_at": now,
                    }
                )
        if rows:
            # A plain executemany inserts the rows one after another, so ids follow list order.
            await self._session.execute(_ADD_TURNS, rows)
        for image in images:
            await self._session.execute(_ADD_TURN_IMAGE, image)

    async def recent(
        self,
        *,
        chat_id: int,
        limit: int,
        token_budget: int | None = None,
        overhead: int = 0,
        before: int | None = None,
        images: bool = False,
    ) -> list[TurnRecord]:
        """Return the chat's newest `limit` turns, oldest first (with their kept pictures, if
        `images`).

        With `token_budget`, only the newest of them whose `tokens + overhead` add up to at most
        the budget: older turns cannot fit a prompt that size, so their text is not even read.
        With `before` (only with a budget), only turns older than the turn with that id.
        """
        if limit <= 0 or (token_budget is not None and token_budget <= 0):
            return []
        params = {"chat_id": chat_id, "limit": limit}
        stmt = _RECENT
        if token_budget is not None:
            params |= {"budget": token_budget, "overhead": overhead}
            stmt = _RECENT_WITHIN_BUDGET
            if before is not None:
                params["before"] = before
                stmt = _RECENT_BEFORE_WITHIN_BUDGET
        elif before is not None:
            raise ValueError("`before` needs a token budget")
        rows = (await self._session.execute(stmt, params)).all()
        pictures: dict[int, Picture] = {}
        asked = [row.id for row in rows if row.role == "user"] if images else []
        if asked:
            found = await self._session.execute(_TURN_IMAGES_OF, {"turn_ids": asked})
            pictures = {
                row.turn_id: Picture(mime_type=row.mime_type, data=row.data) for row in found
            }
        return [
            TurnRecord(
                id=row.id,
                role=row.role,
                content=row.content,
                author_id=row.author_id,
                author_name=row.author_name,
                tokens=row.tokens,
                interrupted=row.interrupted,
                image=pictures.get(row.id),
            )
            for row in reversed(rows)
        ]

    async def remove(self, *, turn_ids: Sequence[int]) -> None:
        """Delete these turns (an answer replaced by a new one)."""
        if turn_ids:
            stmt = (
                delete(Turn)
                .where(Turn.id.in_(turn_ids))
                .execution_options(synchronize_session=False)
            )
            await self._session.execute(stmt)

    async def clear(self, *, chat_id: int) -> int:
        """Delete the chat's history and return how many turns were deleted."""
        stmt = (
            delete(Turn)
            .where(Turn.chat_id == chat_id)
            .execution_options(synchronize_session=False)
        )
        result = cast(CursorResult[Any], await self._session.execute(stmt))
        return result.rowcount

    async def has_message(self, *, chat_id: int, telegram_message_id: int) -> bool:
        """Tell whether a user turn from this Telegram message is already stored."""
        params = {"chat_id": chat_id, "message_id": telegram_message_id}
        return bool(await self._session.scalar(_HAS_MESSAGE, params))


def _usage_row(record: NewUsage, now: datetime) -> dict[str, Any]:
    if record.kind not in USAGE_KINDS:
        raise ValueError(f"usage kind must be one of {sorted(USAGE_KINDS)}")
    if record.status not in USAGE_STATUSES:
        raise ValueError(f"usage status must be one of {sorted(USAGE_STATUSES)}")
    error = record.error
    if error is not None and len(error) > ERROR_MAX_LENGTH:
        error = error[: ERROR_MAX_LENGTH - 1] + "…"
    return {
        "user_id": record.user_id,
        "chat_id": record.chat_id,
        "model": record.model,
        "kind": record.kind,
        "prompt_tokens": _bounded_count("prompt_tokens", record.prompt_tokens),
        "completion_tokens": _bounded_count("completion_tokens", record.completion_tokens),
        "images": _bounded_count("images", record.images),
        "estimated": record.estimated,
        "status": record.status,
        "finish_reason": record.finish_reason,
        "error": error,
        "latency_ms": record.latency_ms,
        "size": record.size,
        "backend": record.backend[:BACKEND_NAME_MAX_LENGTH] if record.backend else None,
        "audio_seconds": _bounded_count("audio_seconds", record.audio_seconds),
        "created_at": now,
    }


def _check_turn(turn: NewTurn) -> None:
    if turn.role not in TURN_ROLES:
        raise ValueError(f"turn role must be one of {sorted(TURN_ROLES)}, got {turn.role!r}")
    if not turn.content:
        raise ValueError("turn content must not be empty")
    if turn.tokens < 0:
        raise ValueError(f"turn tokens must not be negative, got {turn.tokens}")
    if turn.image is not None and turn.telegram_message_id is None:
        raise ValueError("a turn's picture needs the Telegram message it came in")


class UsageRepository:
    """Usage records of model requests."""

    def __init__(self, session: AsyncSession) -> None:
        """Work inside `session`."""
        self._session = session

    async def add(self, *records: NewUsage) -> None:
        """Store usage records, in one statement; an overlong error text is cut to fit.

        Counts outside [0, MAX_USAGE_COUNT] are clamped (with a warning), so that no caller can
        store a figure that overflows the column or the sums over it.
        """
        now = utcnow()
        rows = [_usage_row(record, now) for record in records]
        if rows:
            await self._session.execute(_ADD_USAGE, rows)

    # Both image queries are range scans of the (user_id, created_at) index.

    async def last_image_at(self, *, user_id: int, since: datetime) -> datetime | None:
        """When the user's newest image request since `since` ended, successful or not."""
        stmt = select(func.max(UsageRecord.created_at)).where(
            UsageRecord.user_id == user_id,
            UsageRecord.created_at >= since,
            UsageRecord.kind == "image",
        )
        return await self._session.scalar(stmt)

    async def image_times(self, *, user_id: int, since: datetime, limit: int) -> list[datetime]:
        """When the user's successful images since `since` were made: newest first, at most
        `limit`."""
        stmt = (
            select(UsageRecord.created_at)
            .where(
                UsageRecord.user_id == user_id,
                UsageRecord.created_at >= since,
                UsageRecord.kind == "image",
                UsageRecord.status == "ok",
            )
            .order_by(UsageRecord.created_at.desc())
            .limit(limit)
        )
        return list((await self._session.scalars(stmt)).all())


def _bounded_count(name: str, value: int) -> int:
    """`value` clamped to [0, MAX_USAGE_COUNT]; a clamp is logged, as it means a caller's bug."""
    bounded = min(max(int(value), 0), MAX_USAGE_COUNT)
    if bounded != value:
        logger.warning(
            "usage %s=%s outside [0, %d], stored as %d", name, value, MAX_USAGE_COUNT, bounded
        )
    return bounded


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """An update waiting in the inbox, as Telegram's JSON.

    `chat_key`: the chat whose updates are handled one at a time, in update_id order (webhook
    mode); None for an update handled in no particular order.
    """

    update_id: int
    payload: str
    chat_key: int | None = None


class InboxRepository:
    """Updates fetched from Telegram and not yet handled."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, *, entries: Sequence[InboxEntry], unless_handled: bool = False) -> None:
        """Store updates; one already stored (fetched again) is left as it is, and with
        `unless_handled` so is one recorded as handled (`finish`)."""
        if unless_handled and entries:
            ids = [entry.update_id for entry in entries]
            handled = set(
                (
                    await self._session.execute(
                        select(HANDLED.c.update_id).where(HANDLED.c.update_id.in_(ids))
                    )
                ).scalars()
            )
            entries = [entry for entry in entries if entry.update_id not in handled]
        if not entries:
            return
        dialect = self._session.get_bind().dialect.name
        stmt = _upsert_insert(dialect, INBOX).on_conflict_do_nothing(
            index_elements=[INBOX.c.update_id]
        )
        now = utcnow()
        await self._session.execute(
            stmt,
            [
                {
                    "update_id": entry.update_id,
                    "payload": entry.payload,
                    "chat_key": entry.chat_key,
                    "received_at": now,
                }
                for entry in entries
            ],
        )

    async def claim(self, *, owner: str, limit: int, lease: float) -> list[InboxEntry]:
        """Lease up to `limit` waiting updates to `owner` for `lease` seconds, oldest first.

        Of each chat only its oldest update is taken, and only while no replica holds a live
        lease on it: a chat's updates are handled one at a time, in order, by whichever replica
        claims them. An update whose holder died is taken again once its lease ran out. On
        PostgreSQL, replicas claiming at once skip each other's rows (FOR UPDATE SKIP LOCKED).
        """
        now = utcnow()
        candidate = INBOX.alias("candidate")
        earlier = INBOX.alias("earlier")
        first_of_chat = or_(
            candidate.c.chat_key.is_(None),
            ~exists().where(
                earlier.c.chat_key == candidate.c.chat_key,
                earlier.c.update_id < candidate.c.update_id,
            ),
        )
        picked = (
            select(candidate.c.update_id)
            .where(
                or_(candidate.c.lease_until.is_(None), candidate.c.lease_until < now),
                first_of_chat,
            )
            .order_by(candidate.c.update_id)
            .limit(limit)
        )
        if self._session.get_bind().dialect.name == "postgresql":
            picked = picked.with_for_update(skip_locked=True, of=candidate)
        stmt = (
            update(INBOX)
            .where(INBOX.c.update_id.in_(picked))
            .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease))
            .returning(INBOX.c.update_id, INBOX.c.payload, INBOX.c.chat_key)
        )
        rows = (await self._session.execute(stmt)).all()
        entries = [
            InboxEntry(update_id=r.update_id, payload=r.payload, chat_key=r.chat_key) for r in rows
        ]
        return sorted(entries, key=lambda entry: entry.update_id)

    async def renew(self, *, owner: str, update_ids: Sequence[int], lease: float) -> None:
        """Extend `owner`'s leases on these updates by `lease` seconds from now."""
        until = utcnow() + timedelta(seconds=lease)
        ids = list(update_ids)
        for start in range(0, len(ids), INBOX_DELETE_SLICE):
            chunk = ids[start : start + INBOX_DELETE_SLICE]
            await self._session.execute(
                update(INBOX)
                .where(INBOX.c.update_id.in_(chunk), INBOX.c.lease_owner == owner)
                .values(lease_until=until)
            )

    async def release(self, *, owner: str) -> None:
        """Give up `owner`'s leases: another replica may take those updates at once."""
        await self._session.execute(
            update(INBOX)
            .where(INBOX.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )

    async def remove(self, *, update_ids: Sequence[int]) -> None:
        """Delete handled updates."""
        ids = list(update_ids)
        # In slices: each id is a bound parameter, and SQLite caps their number per statement.
        for start in range(0, len(ids), INBOX_DELETE_SLICE):
            chunk = ids[start : start + INBOX_DELETE_SLICE]
            await self._session.execute(delete(INBOX).where(INBOX.c.update_id.in_(chunk)))

    async def finish(self, *, update_ids: Iterable[int]) -> None:
        """Delete handled updates and record them as handled (webhook mode, see `add`)."""
        ids = sorted(set(update_ids))
        if not ids:
            return
        await self.remove(update_ids=ids)
        dialect = self._session.get_bind().dialect.name
        now = utcnow()
        for start in range(0, len(ids), INBOX_DELETE_SLICE):
            chunk = ids[start : start + INBOX_DELETE_SLICE]
            stmt = _upsert_insert(dialect, HANDLED).on_conflict_do_nothing(
                index_elements=[HANDLED.c.update_id]
            )
            await self._session.execute(
                stmt, [{"update_id": update_id, "handled_at": now} for update_id in chunk]
            )

    async def forget_handled(self, *, before: datetime) -> None:
        """Forget updates handled before `before`: Telegram no longer posts them."""
        await self._session.execute(delete(HANDLED).where(HANDLED.c.handled_at < before))

    async def waiting(self) -> list[InboxEntry]:
        """Every update still in the inbox, oldest first."""
        rows = await self._session.execute(
            select(INBOX.c.update_id, INBOX.c.payload).order_by(INBOX.c.update_id)
        )
        return [InboxEntry(update_id=row.update_id, payload=row.payload) for row in rows]
