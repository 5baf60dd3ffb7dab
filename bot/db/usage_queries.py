"""Aggregate queries over usage records: sums per model and the heaviest users and chats.

Like the repositories, these run inside the caller's session and transaction and return plain
records. Every query but the all-time totals selects a period [since, until) of `created_at`,
alone or after `user_id`, so that it is a range scan of one of the table's indexes. Both bounds
matter on SQLite: without statistics (ANALYZE) its planner takes a one-sided range for a quarter
of the table and prefers scanning the whole `(model, created_at)` or `(user_id, created_at)`
index to avoid sorting for GROUP BY; a two-sided range is estimated small enough to be used.

No sum here needs a cast to stay clear of overflow, because every stored count is within
[0, 10**7] (UsageRepository clamps, migration 0003 repaired older rows; `audio_seconds`, since
0007, has only ever been written through the repository). The columns are
INTEGER: on PostgreSQL the per-row `prompt_tokens + completion_tokens` is int4 arithmetic and
at most 2 * 10**7, well below 2**31, and SUM(int4) is a bigint; on SQLite both are 64-bit and
SUM raises "integer overflow" only past 2**63. Either way a sum overflows only after some
9 * 10**11 rows at the ceiling. Costs are computed in floating point and cannot overflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Select, and_, case, desc, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Chat, UsageRecord, User
from bot.pricing import MILLION, SECONDS_PER_MINUTE, PriceList


@dataclass(frozen=True, slots=True)
class UsageSums:
    """Sums over a set of usage records."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    images: int
    # Records whose tokens were counted by the bot because the backend reported none.
    estimated_requests: int
    # Seconds of audio transcribed.
    audio_seconds: int = 0


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """The sums of one model's records (from one backend, where the records name it)."""

    model: str
    sums: UsageSums
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class RankedUsage:
    """One user or chat in a list of the heaviest, with its name as last seen."""

    id: int
    name: str | None  # a user's full name, a chat's title, or a private chat's user
    username: str | None
    requests: int
    tokens: int
    images: int
    cost: float
    audio_seconds: int = 0


@dataclass(frozen=True, slots=True)
class TopLists:
    """The heaviest users or chats by tokens and by cost, heaviest first."""

    by_tokens: tuple[RankedUsage, ...]
    by_cost: tuple[RankedUsage, ...]


def _price_of(prices: PriceList, attribute: str, scale: float = 1.0) -> ColumnElement[float]:
    """The per-row price for one kind of amount: a CASE over the models priced differently."""
    default = getattr(prices.default, attribute) * scale
    special = {
        model: getattr(price, attribute) * scale
        for model, price in prices.models.items()
        if getattr(price, attribute) * scale != default
    }
    if not special:
        return literal(default, Float)
    return case(
        {model: literal(value, Float) for model, value in special.items()},
        value=UsageRecord.model,
        else_=literal(default, Float),
    )


def _cost_per_million(prices: PriceList) -> ColumnElement[Any]:
    """Cost of a row times one million, so that tiny prices keep their precision in SQL."""
    return (
        UsageRecord.prompt_tokens * _price_of(prices, "prompt_per_million")
        + UsageRecord.completion_tokens * _price_of(prices, "completion_per_million")
        + UsageRecord.images * _price_of(prices, "per_image", MILLION)
        + UsageRecord.audio_seconds
        * _price_of(prices, "per_audio_minute", MILLION / SECONDS_PER_MINUTE)
    )


class UsageQueries:
    """Read-only statistics over usage records."""

    def __init__(self, session: AsyncSession) -> None:
        """Work inside `session`."""
        self._session = session

    async def by_model(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: int | None = None,
    ) -> list[ModelUsage]:
        """Sums per model and backend of the records created in [since, until) (all time when
        None)."""
        record = UsageRecord
        estimated = case(
            (and_(record.estimated, record.prompt_tokens + record.completion_tokens > 0), 1),
            else_=0,
        )
        stmt = select(
            record.model,
            record.backend,
            func.count().label("requests"),
            func.coalesce(func.sum(record.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(record.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(record.images), 0).label("images"),
            func.coalesce(func.sum(estimated), 0).label("estimated"),
            func.coalesce(func.sum(record.audio_seconds), 0).label("audio_seconds"),
        ).group_by(record.model, record.backend)
        if user_id is not None:
            stmt = stmt.where(record.user_id == user_id)
        stmt = _within(stmt, since, until)
        rows = (await self._session.execute(stmt.order_by(record.model, record.backend))).all()
        return [
            ModelUsage(
                model=row.model,
                backend=row.backend,
                sums=UsageSums(
                    requests=int(row.requests),
                    # PostgreSQL returns SUM of integers as NUMERIC (Decimal).
                    prompt_tokens=int(row.prompt_tokens),
                    completion_tokens=int(row.completion_tokens),
                    images=int(row.images),
                    estimated_requests=int(row.estimated),
                    audio_seconds=int(row.audio_seconds),
                ),
            )
            for row in rows
        ]

    async def top_users(
        self, *, since: datetime | None, until: datetime | None, prices: PriceList, limit: int
    ) -> TopLists:
        """The `limit` users with the most tokens and with the highest cost in [since, until)."""
        return await self._top(
            UsageRecord.user_id,
            names=(User.full_name, User.username),
            joins=(User,),
            since=since,
            until=until,
            prices=prices,
            limit=limit,
        )

    async def top_chats(
        self, *, since: datetime | None, until: datetime | None, prices: PriceList, limit: int
    ) -> TopLists:
        """The `limit` chats with the most tokens and with the highest cost in [since, until)."""
        # A private chat has no title, but its id is the user's id, so it is named after them.
        return await self._top(
            UsageRecord.chat_id,
            names=(func.coalesce(Chat.title, User.full_name), User.username),
            joins=(Chat, User),
            since=since,
            until=until,
            prices=prices,
            limit=limit,
        )

    async def _top(
        self,
        key: Any,
        *,
        names: tuple[Any, Any],
        joins: tuple[type[User] | type[Chat], ...],
        since: datetime | None,
        until: datetime | None,
        prices: PriceList,
        limit: int,
    ) -> TopLists:
        """Both rankings from one pass over the period: per-`key` sums, numbered twice."""
        record = UsageRecord
        grouped = _within(
            select(
                key.label("id"),
                func.count().label("requests"),
                func.sum(record.prompt_tokens + record.completion_tokens).label("tokens"),
                func.sum(record.images).label("images"),
                func.sum(record.audio_seconds).label("audio_seconds"),
                func.sum(_cost_per_million(prices)).label("cost"),
            )
            .where(key.is_not(None))
            .group_by(key),
            since,
            until,
        ).subquery()
        # Ties are broken by the other measure, then by id, so that lists are stable.
        g = grouped.c
        numbered = select(
            grouped,
            func.row_number()
            .over(order_by=(desc(g.tokens), desc(g.cost), g.id))
            .label("rank_tokens"),
            func.row_number()
            .over(order_by=(desc(g.cost), desc(g.tokens), g.id))
            .label("rank_cost"),
        ).subquery()
        n = numbered.c
        stmt = select(numbered, names[0].label("name"), names[1].label("username")).where(
            (n.rank_tokens <= limit) | (n.rank_cost <= limit)
        )
        for table in joins:
            stmt = stmt.outerjoin(table, table.id == n.id)
        rows = (await self._session.execute(stmt)).all()
        by_tokens = sorted(
            (r for r in rows if r.rank_tokens <= limit), key=lambda r: r.rank_tokens
        )
        by_cost = sorted((r for r in rows if r.rank_cost <= limit), key=lambda r: r.rank_cost)
        return TopLists(
            by_tokens=tuple(_ranked_usage(row) for row in by_tokens),
            by_cost=tuple(_ranked_usage(row) for row in by_cost),
        )


def _within(stmt: Select[Any], since: datetime | None, until: datetime | None) -> Select[Any]:
    if since is not None:
        stmt = stmt.where(UsageRecord.created_at >= since)
    if until is not None:
        stmt = stmt.where(UsageRecord.created_at < until)
    return stmt


def _ranked_usage(row: Any) -> RankedUsage:
    return RankedUsage(
        id=int(row.id),
        name=row.name,
        username=row.username,
        requests=int(row.requests),
        tokens=int(row.tokens or 0),
        images=int(row.images or 0),
        cost=float(row.cost or 0) / MILLION,
        audio_seconds=int(row.audio_seconds or 0),
    )
