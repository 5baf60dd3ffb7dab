"""Usage reports and budgets: what users and the whole bot spent, and when to stop them.

Periods are calendar days and months in the configured time zone: "today" starts at local
midnight and "this month" on the first of the month at local midnight. Costs are derived from
the token and image counts and the seconds of audio transcribed at query time, so changing a
price re-prices the past as well. Token budgets count tokens only; cost budgets count it all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.models import utcnow
from bot.db.repositories import UserRepository
from bot.db.usage_queries import ModelUsage, RankedUsage, UsageQueries, UsageSums
from bot.i18n import (
    _,
    format_duration,
    format_moment,
    format_money,
    format_number,
    ngettext,
    zone_name,
)
from bot.pricing import PriceList

Scope = Literal["user", "bot"]
Window = Literal["daily", "monthly"]
Unit = Literal["tokens", "cost"]
Period = Literal["today", "month", "all"]

TOP_LIMIT = 10


# ---- plain results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figures:
    """Requests, tokens, images, seconds of audio transcribed and cost over some records."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    cost: float = 0.0
    # Some of the tokens were counted by the bot because the backend reported none.
    estimated: bool = False
    audio_seconds: int = 0

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Figures) -> Figures:
        """Both sets of figures together."""
        return Figures(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            images=self.images + other.images,
            cost=self.cost + other.cost,
            estimated=self.estimated or other.estimated,
            audio_seconds=self.audio_seconds + other.audio_seconds,
        )


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """The figures of one model (from one backend, where the records name it)."""

    model: str
    figures: Figures
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class PeriodReport:
    """Usage over one period, in total and per model (busiest first)."""

    period: Period
    total: Figures
    models: tuple[ModelFigures, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    """Daily and monthly budgets in tokens and in cost; None means unlimited."""

    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_cost: float | None = None
    monthly_cost: float | None = None

    def configured(self) -> list[tuple[Window, Unit, float]]:
        """The budgets that are set, as (window, unit, limit)."""
        candidates: list[tuple[Window, Unit, float | None]] = [
            ("daily", "tokens", self.daily_tokens),
            ("daily", "cost", self.daily_cost),
            ("monthly", "tokens", self.monthly_tokens),
            ("monthly", "cost", self.monthly_cost),
        ]
        return [(w, u, float(limit)) for w, u, limit in candidates if limit]


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """One budget, how much of it the current period used, and when it starts afresh."""

    scope: Scope
    window: Window
    unit: Unit
    limit: float
    used: float
    resets_at: datetime  # in the usage time zone
    resets_in: timedelta

    @property
    def reached(self) -> bool:
        """True when no more requests are allowed until the reset."""
        return self.used >= self.limit

    @property
    def message(self) -> str:
        """A plain explanation for the person whose request was refused."""
        if self.scope == "user" and self.window == "daily":
            template = _(
                "You have used up your daily limit of {limit}, so I cannot answer right now. "
                "It resets at {reset} (in {wait})."
            )
        elif self.scope == "user":
            template = _(
                "You have used up your monthly limit of {limit}, so I cannot answer right now. "
                "It resets at {reset} (in {wait})."
            )
        elif self.window == "daily":
            template = _(
                "This bot has used up its daily limit of {limit} for everyone, so I cannot "
                "answer right now. It resets at {reset} (in {wait})."
            )
        else:
            template = _(
                "This bot has used up its monthly limit of {limit} for everyone, so I cannot "
                "answer right now. It resets at {reset} (in {wait})."
            )
        return template.format(
            limit=format_amount(self.unit, self.limit),
            reset=format_moment(self.resets_at),
            wait=format_duration(self.resets_in.total_seconds()),
        )


# The budget that stops a request: `check` returns the one reached.
BudgetBlock = BudgetUse


@dataclass(frozen=True, slots=True)
class UserReport:
    """One user's usage for today, this month and all time, and their budgets."""

    user_id: int
    full_name: str | None
    username: str | None
    periods: tuple[PeriodReport, ...]
    budgets: tuple[BudgetUse, ...]
    priced: bool
    timezone: str


@dataclass(frozen=True, slots=True)
class BotReport:
    """The whole bot's usage, the heaviest users and chats this month, and the bot's budgets."""

    periods: tuple[PeriodReport, ...]
    top_users_by_tokens: tuple[RankedUsage, ...]
    top_users_by_cost: tuple[RankedUsage, ...]
    top_chats_by_tokens: tuple[RankedUsage, ...]
    top_chats_by_cost: tuple[RankedUsage, ...]
    budgets: tuple[BudgetUse, ...]
    priced: bool
    timezone: str


@dataclass(frozen=True, slots=True)
class UsagePolicy:
    """Prices, budgets, who is exempt from them, and the calendar usage is counted in."""

    prices: PriceList = field(default_factory=PriceList)
    timezone: tzinfo = UTC
    user_limits: Limits = field(default_factory=Limits)
    bot_limits: Limits = field(default_factory=Limits)
    exempt_user_ids: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Periods:
    """Where the current day and month began and when the next ones begin."""

    now: datetime
    day_start: datetime
    month_start: datetime
    next_day: datetime
    next_month: datetime

    @classmethod
    def at(cls, now: datetime, tz: tzinfo) -> Periods:
        """The calendar periods containing `now` in the time zone `tz`."""
        local = now.astimezone(tz)
        tomorrow = local.date() + timedelta(days=1)
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        return cls(
            now=now,
            day_start=datetime(local.year, local.month, local.day, tzinfo=tz),
            month_start=datetime(local.year, local.month, 1, tzinfo=tz),
            next_day=datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=tz),
            next_month=datetime(year, month, 1, tzinfo=tz),
        )

    def reset(self, window: Window) -> datetime:
        """When the next day or month begins."""
        return self.next_day if window == "daily" else self.next_month


# ---- services -------------------------------------------------------------------------------


class UsageService:
    """Reports of usage and cost for one user or the whole bot."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        policy: UsagePolicy,
        settled: SettledUsage | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self._clock = clock
        # Shared with the other usage service so past days are read once, not once per service.
        self._settled = settled or SettledUsage()

    @property
    def timezone_name(self) -> str:
        """The name of the time zone days and months are counted in."""
        return zone_name(self._policy.timezone)

    async def user_report(self, *, user_id: int) -> UserReport:
        """One user's usage for today, this month and all time, with their budgets."""
        periods = Periods.at(self._clock(), self._policy.timezone)
        async with self._sessions() as session, session.begin():
            user = await UserRepository(session).get(user_id=user_id)
            reports = await self._periods(session, periods, user_id=user_id)
        budgets: list[BudgetUse] = []
        if user_id not in self._policy.exempt_user_ids:
            today, month = reports[0].total, reports[1].total
            budgets = _uses("user", self._policy.user_limits, today, month, periods)
        return UserReport(
            user_id=user_id,
            full_name=user.full_name if user else None,
            username=user.username if user else None,
            periods=tuple(reports),
            budgets=tuple(budgets),
            priced=not self._policy.prices.is_free,
            timezone=self.timezone_name,
        )

    async def bot_report(self, *, top: int = TOP_LIMIT) -> BotReport:
        """The whole bot's usage, the heaviest users and chats this month, and its budgets."""
        periods = Periods.at(self._clock(), self._policy.timezone)
        prices = self._policy.prices
        priced = not prices.is_free
        since, until = periods.month_start, periods.next_month
        async with self._sessions() as session, session.begin():
            reports = await self._periods(session, periods, user_id=None)
            queries = UsageQueries(session)
            users = await queries.top_users(since=since, until=until, prices=prices, limit=top)
            chats = await queries.top_chats(since=since, until=until, prices=prices, limit=top)
        today, month = reports[0].total, reports[1].total
        return BotReport(
            periods=tuple(reports),
            top_users_by_tokens=users.by_tokens,
            # Without prices every cost is 0 and a ranking by cost says nothing.
            top_users_by_cost=users.by_cost if priced else (),
            top_chats_by_tokens=chats.by_tokens,
            top_chats_by_cost=chats.by_cost if priced else (),
            budgets=tuple(_uses("bot", self._policy.bot_limits, today, month, periods)),
            priced=priced,
            timezone=self.timezone_name,
        )

    async def _periods(
        self, session: AsyncSession, periods: Periods, *, user_id: int | None
    ) -> list[PeriodReport]:
        queries = UsageQueries(session)
        today = await queries.by_model(
            since=periods.day_start, until=periods.next_day, user_id=user_id
        )
        if user_id is not None:
            # One user's records are a short range of the (user_id, created_at) index.
            month = await queries.by_model(
                since=periods.month_start, until=periods.next_month, user_id=user_id
            )
            every = await queries.by_model(user_id=user_id)
        else:
            month = _merge(await self._settled.this_month(queries, periods), today)
            every = _merge(await self._settled.before_month(queries, periods), month)
        reports = []
        sets: list[tuple[Period, list[ModelUsage]]] = [
            ("today", today),
            ("month", month),
            ("all", every),
        ]
        for period, rows in sets:
            models = _model_figures(rows, self._policy.prices)
            total = sum((m.figures for m in models), Figures())
            reports.append(PeriodReport(period=period, total=total, models=tuple(models)))
        return reports


class SettledUsage:
    """The whole bot's sums per model for the days before today, read once a day.

    Summing a month or all time over the whole bot reads every record in it (about 0.45 s for a
    million records on SQLite). Records are only ever added with the current time, so the days
    before today no longer change: their sums are kept, and a month or all time is those plus
    today's. Shortly after midnight a late transaction may still be committing a record of the
    day before, so the sums are only kept once that day is SETTLE_AFTER old.
    """

    SETTLE_AFTER = timedelta(minutes=2)

    def __init__(self) -> None:
        self._this_month: tuple[datetime, list[ModelUsage]] | None = None
        self._before_month: tuple[datetime, list[ModelUsage]] | None = None

    async def this_month(self, queries: UsageQueries, periods: Periods) -> list[ModelUsage]:
        """Sums from the start of this month to the start of today."""
        if self._this_month is not None and self._this_month[0] == periods.day_start:
            return self._this_month[1]
        rows = await queries.by_model(since=periods.month_start, until=periods.day_start)
        if self._settled(periods):
            self._this_month = (periods.day_start, rows)
        return rows

    async def before_month(self, queries: UsageQueries, periods: Periods) -> list[ModelUsage]:
        """Sums of everything before this month."""
        if self._before_month is not None and self._before_month[0] == periods.month_start:
            return self._before_month[1]
        rows = await queries.by_model(until=periods.month_start)
        if self._settled(periods):
            self._before_month = (periods.month_start, rows)
        return rows

    def _settled(self, periods: Periods) -> bool:
        return periods.now - periods.day_start >= self.SETTLE_AFTER


class BudgetService:
    """Decides, before a backend call, whether a user's or the bot's budget is spent."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        policy: UsagePolicy,
        settled: SettledUsage | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self._clock = clock
        # Shared with the other usage service so past days are read once, not once per service.
        self._settled = settled or SettledUsage()

    @property
    def enabled(self) -> bool:
        """True when any budget is set."""
        return bool(self._policy.user_limits.configured() or self._policy.bot_limits.configured())

    async def check(self, *, user_id: int) -> BudgetBlock | None:
        """The budget that stops this user's next request, or None when they may go ahead.

        Owners (exempt users) are never stopped. When several budgets are spent, the one that
        resets last is reported, since that is how long the user has to wait.
        """
        if user_id in self._policy.exempt_user_ids or not self.enabled:
            return None
        periods = Periods.at(self._clock(), self._policy.timezone)
        uses: list[BudgetUse] = []
        scopes: list[tuple[Scope, Limits, int | None]] = [
            ("user", self._policy.user_limits, user_id),
            ("bot", self._policy.bot_limits, None),
        ]
        async with self._sessions() as session, session.begin():
            queries = UsageQueries(session)
            for scope, limits, who in scopes:
                configured = limits.configured()
                if not configured:
                    continue
                today = await queries.by_model(
                    since=periods.day_start, until=periods.next_day, user_id=who
                )
                month: list[ModelUsage] = []
                if any(window == "monthly" for window, _, _ in configured):
                    if who is None:
                        month = _merge(await self._settled.this_month(queries, periods), today)
                    else:
                        month = await queries.by_model(
                            since=periods.month_start, until=periods.next_month, user_id=who
                        )
                uses += _uses(scope, limits, self._total(today), self._total(month), periods)
        reached = [use for use in uses if use.reached]
        if not reached:
            return None
        return max(reached, key=lambda use: use.resets_at)

    def _total(self, rows: Sequence[ModelUsage]) -> Figures:
        return sum((m.figures for m in _model_figures(rows, self._policy.prices)), Figures())


# ---- helpers --------------------------------------------------------------------------------


def _merge(*groups: Sequence[ModelUsage]) -> list[ModelUsage]:
    """Per-model (and backend) sums of several sets of records together."""
    merged: dict[tuple[str, str], tuple[str | None, UsageSums]] = {}
    for rows in groups:
        for row in rows:
            key = (row.model, row.backend or "")
            old = merged.get(key)
            merged[key] = (
                row.backend,
                row.sums
                if old is None
                else UsageSums(
                    requests=old[1].requests + row.sums.requests,
                    prompt_tokens=old[1].prompt_tokens + row.sums.prompt_tokens,
                    completion_tokens=old[1].completion_tokens + row.sums.completion_tokens,
                    images=old[1].images + row.sums.images,
                    estimated_requests=old[1].estimated_requests + row.sums.estimated_requests,
                    audio_seconds=old[1].audio_seconds + row.sums.audio_seconds,
                ),
            )
    return [
        ModelUsage(model=model, sums=sums, backend=backend)
        for (model, _), (backend, sums) in sorted(merged.items())
    ]


def _model_figures(rows: Sequence[ModelUsage], prices: PriceList) -> list[ModelFigures]:
    models = [
        ModelFigures(
            model=row.model,
            backend=row.backend,
            figures=Figures(
                requests=row.sums.requests,
                prompt_tokens=row.sums.prompt_tokens,
                completion_tokens=row.sums.completion_tokens,
                images=row.sums.images,
                cost=prices.for_model(row.model).cost(
                    prompt_tokens=row.sums.prompt_tokens,
                    completion_tokens=row.sums.completion_tokens,
                    images=row.sums.images,
                    audio_seconds=row.sums.audio_seconds,
                ),
                estimated=row.sums.estimated_requests > 0,
                audio_seconds=row.sums.audio_seconds,
            ),
        )
        for row in rows
    ]
    models.sort(key=lambda m: (-m.figures.cost, -m.figures.tokens, m.model))
    return models


def _uses(
    scope: Scope, limits: Limits, today: Figures, month: Figures, periods: Periods
) -> list[BudgetUse]:
    uses = []
    for window, unit, limit in limits.configured():
        spent = today if window == "daily" else month
        resets_at = periods.reset(window)
        uses.append(
            BudgetUse(
                scope=scope,
                window=window,
                unit=unit,
                limit=limit,
                used=float(spent.tokens) if unit == "tokens" else spent.cost,
                resets_at=resets_at,
                # Subtract in UTC: differences of two times in one ZoneInfo ignore DST changes.
                resets_in=resets_at.astimezone(UTC) - periods.now.astimezone(UTC),
            )
        )
    return uses


# ---- formatting for people ------------------------------------------------------------------


def format_amount(unit: Unit, value: float) -> str:
    """A budget amount in the current locale: 1,000 tokens, or dollars."""
    if unit == "tokens":
        return ngettext("{count} token", "{count} tokens", int(value)).format(
            count=format_number(int(value))
        )
    return format_money(value)
