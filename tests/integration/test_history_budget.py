"""Reading history within a token budget: only turns that can fit a prompt are read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, event, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import ChatRepository, NewTurn, TurnRepository
from bot.db.repositories import TURNS

Sessionmaker = async_sessionmaker[AsyncSession]


async def fill(sessionmaker: Sessionmaker, chat_id: int, tokens: list[int]) -> None:
    async with sessionmaker() as session, session.begin():
        await ChatRepository(session).upsert(chat_id=chat_id, type="private", title=None)
        await TurnRepository(session).add(
            chat_id=chat_id,
            turns=[
                NewTurn(role="user" if i % 2 == 0 else "assistant", content=f"t{i}", tokens=n)
                for i, n in enumerate(tokens)
            ],
        )


async def test_only_the_newest_turns_within_the_budget_are_read(
    sessionmaker: Sessionmaker,
) -> None:
    tokens = [30, 10, 50, 20, 40, 100, 5, 60]
    await fill(sessionmaker, 1, tokens)
    async with sessionmaker() as session, session.begin():
        repo = TurnRepository(session)
        # Newest first with 4 per turn: 64, 9, 104 -> 177 fits 180; adding 44 does not.
        within = await repo.recent(chat_id=1, limit=400, token_budget=180, overhead=4)
        assert [t.content for t in within] == ["t5", "t6", "t7"]
        # Exactly on the budget still fits; the limit still applies.
        assert len(await repo.recent(chat_id=1, limit=400, token_budget=177, overhead=4)) == 3
        assert len(await repo.recent(chat_id=1, limit=2, token_budget=10_000, overhead=4)) == 2
        everything = await repo.recent(chat_id=1, limit=400, token_budget=10_000, overhead=4)
        assert [t.content for t in everything] == [f"t{i}" for i in range(len(tokens))]


async def test_nothing_is_read_when_even_the_newest_turn_is_over_budget(
    sessionmaker: Sessionmaker,
) -> None:
    await fill(sessionmaker, 2, [10, 500])
    async with sessionmaker() as session, session.begin():
        repo = TurnRepository(session)
        assert await repo.recent(chat_id=2, limit=400, token_budget=100) == []
        assert await repo.recent(chat_id=2, limit=400, token_budget=0) == []


async def test_the_budgeted_read_stays_on_the_chat_index(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker() as session, session.begin():
        for chat_id in (1, 2):
            await ChatRepository(session).upsert(chat_id=chat_id, type="private", title=None)
        rows: list[dict[str, Any]] = [
            {"chat_id": chat_id, "role": "user", "content": f"{chat_id}:{i}", "tokens": 10}
            for chat_id, n in ((1, 5000), (2, 50))
            for i in range(n)
        ]
        await session.execute(insert(TURNS), rows)

    async with sessionmaker() as session, session.begin():
        recent = await TurnRepository(session).recent(
            chat_id=1, limit=400, token_budget=1000, overhead=4
        )
        assert [t.content for t in recent] == [f"1:{i}" for i in range(4929, 5000)]
        if session.get_bind().dialect.name != "sqlite":
            return
        seen: list[tuple[str, Any]] = []

        def capture(conn: Connection, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            seen.append((statement, params))

        sync_engine = session.get_bind()
        event.listen(sync_engine, "before_cursor_execute", capture)
        try:
            await TurnRepository(session).recent(
                chat_id=1, limit=400, token_budget=1000, overhead=4
            )
        finally:
            event.remove(sync_engine, "before_cursor_execute", capture)
        statement, params = seen[-1]
        connection = await session.connection()
        plan = "\n".join(
            str(row[-1])
            for row in await connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
        )
        assert "ix_turns_chat_id_id" in plan, plan
        assert "SCAN turns" not in plan, plan  # no pass over the whole table
