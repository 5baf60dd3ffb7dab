"""ORM models: the database schema of chats, users, conversation turns and usage records."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Longest error text kept in a usage record; longer messages are cut.
ERROR_MAX_LENGTH = 500
BACKEND_NAME_MAX_LENGTH = 128

# Autoincrementing 64-bit key; on SQLite a plain INTEGER so the column aliases the rowid.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

_NOW = text("CURRENT_TIMESTAMP")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that is always written and read back in UTC.

    SQLite keeps no offset, so values are normalised to UTC before they are stored and naive
    values read back are marked as UTC; PostgreSQL stores them as `timestamptz`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Reject naive datetimes and convert aware ones to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC timestamp column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return stored timestamps as aware UTC datetimes."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base whose metadata names every constraint and index predictably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Chat(Base):
    """A Telegram chat the bot talks in, with its per-chat settings."""

    __tablename__ = "chats"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String)
    title: Mapped[str | None] = mapped_column(String)
    # Model chosen for this chat; NULL means the configured default.
    model: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=_NOW)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=_NOW
    )


class User(Base):
    """A Telegram user the bot has seen."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    username: Mapped[str | None] = mapped_column(String)
    full_name: Mapped[str] = mapped_column(String)
    # Language reported by Telegram, and the language the user picked in the bot.
    language_code: Mapped[str | None] = mapped_column(String)
    language: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=_NOW)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=_NOW
    )


class Turn(Base):
    """One message of a chat's conversation with the model."""

    __tablename__ = "turns"
    __table_args__ = (
        # "Newest N turns of a chat" is a backward range scan of this index.
        Index(None, "chat_id", "id"),
        # A re-delivered Telegram update must not store the same user message twice.
        UniqueConstraint("chat_id", "telegram_message_id"),
        CheckConstraint("role IN ('user', 'assistant')", name="role"),
        CheckConstraint("length(content) > 0", name="content_not_empty"),
        CheckConstraint("tokens >= 0", name="tokens_not_negative"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    chat_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("chats.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String)
    content: Mapped[str] = mapped_column(Text)
    author_id: Mapped[int | None] = mapped_column(BigInteger)
    author_name: Mapped[str | None] = mapped_column(String)
    tokens: Mapped[int] = mapped_column(Integer)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=_NOW)


class TurnImage(Base):
    """The picture a user's turn carried, kept only when VISION_KEEP_IMAGES is on."""

    __tablename__ = "turn_images"

    turn_id: Mapped[int] = mapped_column(
        AutoId, ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    mime_type: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class UsageRecord(Base):
    """One model request, kept for usage statistics; costs are derived from it at query time.

    Kinds: 'chat' (tokens), 'image' (images, and tokens where the backend reports them) and
    'transcription' (seconds of audio; no tokens or images).
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        Index(None, "created_at"),
        Index(None, "user_id", "created_at"),
        Index(None, "chat_id", "created_at"),
        Index(None, "model", "created_at"),
        CheckConstraint("kind IN ('chat', 'image', 'transcription')", name="kind"),
        CheckConstraint("status IN ('ok', 'error', 'interrupted')", name="status"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    # No foreign keys: usage must be kept even when the user or chat row is missing.
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    estimated: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String)
    finish_reason: Mapped[str | None] = mapped_column(String)
    error: Mapped[str | None] = mapped_column(String(ERROR_MAX_LENGTH))
    latency_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=_NOW)
    # Image requests: the size asked for (e.g. "1024x1024"), or the size received from backends
    # that take none; NULL for chat.
    size: Mapped[str | None] = mapped_column(String(32))
    # The backend that answered (or whose failure the user was told of), by its name; NULL in
    # rows from before 0005.
    backend: Mapped[str | None] = mapped_column(String(BACKEND_NAME_MAX_LENGTH))
    # Transcriptions: the seconds of audio transcribed, priced per minute; 0 for other kinds.
    # Only a server default: an INSERT that leaves it out (as one written for the schema before
    # 0007 does) stores 0.
    audio_seconds: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class InboxUpdate(Base):
    """A Telegram update fetched and not yet handled: fed to the bot again at the next start."""

    __tablename__ = "inbox"
    # "The oldest waiting update of this chat" is the first entry of this index's range.
    __table_args__ = (Index(None, "chat_key", "update_id"),)

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # The update as Telegram's JSON, read back with aiogram's Update.model_validate_json.
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, server_default=_NOW)
    # Webhook mode: the chat whose updates are handled one at a time in update_id order (NULL:
    # in no order, such as a Stop press), and the replica handling it until when.
    chat_key: Mapped[int | None] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class HandledUpdate(Base):
    """Webhook mode: an update handled (and gone from the inbox) within the last day.

    Telegram posts an update again when it missed the 200, possibly to another replica and
    after the first one was handled; such a post is recognised here and not handled again.
    """

    __tablename__ = "handled_updates"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    handled_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=_NOW, index=True
    )
