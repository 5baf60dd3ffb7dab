"""Storage: engine and migrations, ORM models, and repositories returning plain records."""

from bot.db.engine import create_engine, create_sessionmaker, migrate
from bot.db.models import Base, Chat, Turn, UsageRecord, User
from bot.db.repositories import (
    ChatRecord,
    ChatRepository,
    NewTurn,
    NewUsage,
    TurnRecord,
    TurnRepository,
    UsageRepository,
    UserRecord,
    UserRepository,
)

__all__ = [
    "Base",
    "Chat",
    "ChatRecord",
    "ChatRepository",
    "NewTurn",
    "NewUsage",
    "Turn",
    "TurnRecord",
    "TurnRepository",
    "UsageRecord",
    "UsageRepository",
    "User",
    "UserRecord",
    "UserRepository",
    "create_engine",
    "create_sessionmaker",
    "migrate",
]
