"""Chats and users as the bot last stored them, so a known sender costs no database work."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import ChatRecord, ChatRepository, UserRecord, UserRepository

# About 200 bytes a record: 100,000 chats and as many users take some 40 MB at most.
CAPACITY = 100_000

_K = TypeVar("_K")
_V = TypeVar("_V")


class Directory:
    """Every service that stores chats or users goes through one shared Directory.

    Telegram lets one process at a time poll a bot's updates, so the bot is the only writer of
    its chats and users, and what it committed stays true until it writes again. (Webhook
    replicas each write them, so there the Directory remembers nothing: `capacity=0`.) It is the
    one in-memory copy of them: the users' chosen languages are read through it too. A message
    from a chat and a user it knows, as Telegram still reports them, then costs no statement for
    either. Records are remembered only once their transaction has committed (`remember`):
    a rolled-back insert must not be taken for a stored row. Beyond `capacity` the least
    recently seen are forgotten; `capacity=0` remembers nothing.
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._chats: OrderedDict[int, ChatRecord] = OrderedDict()
        # None: read from the database and found absent (the user never wrote to the bot).
        self._users: OrderedDict[int, UserRecord | None] = OrderedDict()

    def known_chat(self, *, chat_id: int, type: str, title: str | None) -> ChatRecord | None:
        """The chat as stored, if it is stored just as Telegram reports it now; else None."""
        known = _get(self._chats, chat_id)
        if known is not None and (known.type, known.title) == (type, title):
            return known
        return None

    def known_user(
        self, *, user_id: int, username: str | None, full_name: str, language_code: str | None
    ) -> UserRecord | None:
        """The user as stored, if they are stored just as Telegram reports them now; else None."""
        known = _get(self._users, user_id)
        if known is not None and (known.username, known.full_name, known.language_code) == (
            username,
            full_name,
            language_code,
        ):
            return known
        return None

    async def chat(
        self, session: AsyncSession, *, chat_id: int, type: str, title: str | None
    ) -> ChatRecord:
        """The chat as stored, written in `session` first if it is new or has changed."""
        known = self.known_chat(chat_id=chat_id, type=type, title=title)
        if known is not None:
            return known
        return await ChatRepository(session).upsert(chat_id=chat_id, type=type, title=title)

    async def user(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        username: str | None,
        full_name: str,
        language_code: str | None,
    ) -> UserRecord:
        """The user as stored, written in `session` first if they are new or have changed."""
        known = self.known_user(
            user_id=user_id, username=username, full_name=full_name, language_code=language_code
        )
        if known is not None:
            return known
        return await UserRepository(session).upsert(
            user_id=user_id, username=username, full_name=full_name, language_code=language_code
        )

    async def stored_user(
        self, sessions: async_sessionmaker[AsyncSession], *, user_id: int
    ) -> UserRecord | None:
        """The user as stored, or None if never stored: read once (in a session of its own)."""
        if user_id in self._users:
            self._users.move_to_end(user_id)
            return self._users[user_id]
        async with sessions() as session:
            record = await UserRepository(session).get(user_id=user_id)
        # A transaction that stored the user while this read was under way has remembered
        # them already, and knows better.
        if user_id not in self._users:
            _put(self._users, user_id, record, self._capacity)
        return record

    def forget_chat(self, chat_id: int) -> None:
        """Drop the chat's record, whose row has moved or changed behind the Directory's back."""
        self._chats.pop(chat_id, None)

    def remember(self, *records: ChatRecord | UserRecord) -> None:
        """Keep records whose transaction has committed; call it after the commit, never before."""
        for record in records:
            if isinstance(record, ChatRecord):
                _put(self._chats, record.id, record, self._capacity)
            else:
                _put(self._users, record.id, record, self._capacity)


def _get(records: OrderedDict[_K, _V], key: _K) -> _V | None:
    record = records.get(key)
    if record is not None:
        records.move_to_end(key)
    return record


def _put(records: OrderedDict[_K, _V], key: _K, record: _V, capacity: int) -> None:
    if capacity <= 0:
        return
    records[key] = record
    records.move_to_end(key)
    while len(records) > capacity:
        records.popitem(last=False)
