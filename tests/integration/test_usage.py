"""Usage reports and budgets on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import ChatRepository, NewUsage, UsageRecord, UsageRepository, UserRepository
from bot.db.repositories import MAX_USAGE_COUNT
from bot.i18n import use_locale
from bot.llm.client import LLMClient, RetryPolicy
from bot.pricing import Price, PriceList
from bot.services.chat import ChatConfig, ChatRequest, ChatService
from bot.services.tokens import TokenCounter
from bot.services.usage import (
    BudgetService,
    Limits,
    PeriodReport,
    UsagePolicy,
    UsageService,
)
from bot.telegram.usage_view import bot_report_text, user_report_text
from tests.fakes.openai import Error, FakeLLM, Stream
from tests.fakes.sink import RecordingSink

Sessionmaker = async_sessionmaker[AsyncSession]

NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)
PRICES = PriceList(
    default=Price(prompt_per_million=1.0, completion_per_million=2.0),
    models={"big": Price(prompt_per_million=100.0, completion_per_million=400.0, per_image=0.04)},
)


async def add_usage(
    sessions: Sessionmaker,
    *,
    at: datetime,
    user_id: int = 1,
    chat_id: int = 1,
    model: str = "small",
    prompt: int = 0,
    completion: int = 0,
    images: int = 0,
    estimated: bool = False,
    kind: str = "chat",
    status: str = "ok",
    backend: str | None = None,
    audio_seconds: int = 0,
) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            insert(UsageRecord).values(
                backend=backend,
                audio_seconds=audio_seconds,
                user_id=user_id,
                chat_id=chat_id,
                model=model,
                kind=kind,
                prompt_tokens=prompt,
                completion_tokens=completion,
                images=images,
                estimated=estimated,
                status=status,
                latency_ms=100,
                created_at=at,
            )
        )


async def add_people(sessions: Sessionmaker) -> None:
    async with sessions() as session, session.begin():
        users = UserRepository(session)
        await users.upsert(user_id=1, username="ann", full_name="Ann Lee", language_code="en")
        await users.upsert(user_id=2, username=None, full_name="Bob", language_code=None)
        chats = ChatRepository(session)
        await chats.upsert(chat_id=1, type="private", title=None)
        await chats.upsert(chat_id=-100, type="supergroup", title="Team <b>&")


def policy(**overrides: Any) -> UsagePolicy:
    values: dict[str, Any] = {"prices": PRICES, "timezone": UTC, **overrides}
    return UsagePolicy(**values)


def by_period(periods: tuple[PeriodReport, ...]) -> dict[str, PeriodReport]:
    return {p.period: p for p in periods}


async def test_user_report_sums_today_month_and_all_time_per_model_with_costs(
    sessionmaker: Sessionmaker,
) -> None:
    await add_people(sessionmaker)
    await add_usage(sessionmaker, at=NOW - timedelta(hours=1), prompt=1000, completion=500)
    await add_usage(
        sessionmaker, at=NOW - timedelta(hours=2), model="big", prompt=10, completion=20, images=2
    )
    await add_usage(sessionmaker, at=NOW - timedelta(days=3), prompt=100, completion=50)
    await add_usage(sessionmaker, at=NOW - timedelta(days=40), prompt=7, completion=3)
    await add_usage(sessionmaker, at=NOW - timedelta(hours=1), user_id=2, prompt=999)  # not hers
    service = UsageService(sessions=sessionmaker, policy=policy(), clock=lambda: NOW)

    report = await service.user_report(user_id=1)

    assert (report.full_name, report.username) == ("Ann Lee", "ann")
    periods = by_period(report.periods)
    today = periods["today"].total
    assert (today.requests, today.prompt_tokens, today.completion_tokens, today.images) == (
        2,
        1010,
        520,
        2,
    )
    # small: 1000*1 + 500*2 per million; big: 10*100 + 20*400 per million + 2 images at 0.04
    assert today.cost == pytest.approx(0.002 + 0.009 + 0.08)
    assert [m.model for m in periods["today"].models] == ["big", "small"]  # dearest first
    assert periods["month"].total.tokens == 1530 + 150
    assert periods["all"].total.tokens == 1530 + 150 + 10
    assert periods["all"].total.requests == 4
    assert not today.estimated
    assert report.priced


async def test_where_several_backends_served_the_report_names_them(
    sessionmaker: Sessionmaker,
) -> None:
    await add_usage(sessionmaker, at=NOW, prompt=100, backend="primary")
    await add_usage(sessionmaker, at=NOW, prompt=50, backend="fallback")
    await add_usage(sessionmaker, at=NOW, model="big", prompt=5, backend="primary")
    service = UsageService(sessions=sessionmaker, policy=policy(), clock=lambda: NOW)

    with use_locale("en"):
        text = "\n".join(bot_report_text(await service.bot_report()))

    assert "small @ primary: " in text
    assert "small @ fallback: " in text
    assert "big @ primary: " in text


async def test_one_backend_is_not_named_in_the_report(sessionmaker: Sessionmaker) -> None:
    await add_usage(sessionmaker, at=NOW, prompt=100, backend="primary")
    await add_usage(sessionmaker, at=NOW, model="big", prompt=5, backend="primary")
    service = UsageService(sessions=sessionmaker, policy=policy(), clock=lambda: NOW)

    with use_locale("en"):
        text = "\n".join(bot_report_text(await service.bot_report()))

    assert "• small: " in text
    assert "@" not in text


async def test_estimated_figures_are_marked_as_such(sessionmaker: Sessionmaker) -> None:
    await add_usage(sessionmaker, at=NOW, prompt=10, completion=5)
    await add_usage(sessionmaker, at=NOW - timedelta(days=1), prompt=10, estimated=True)
    # A failed call with nothing counted is not an estimate of anything.
    await add_usage(sessionmaker, at=NOW, estimated=True, status="error")
    service = UsageService(sessions=sessionmaker, policy=policy(), clock=lambda: NOW)

    periods = by_period((await service.user_report(user_id=1)).periods)

    assert not periods["today"].total.estimated
    assert periods["month"].total.estimated


async def test_days_and_months_begin_at_midnight_in_the_usage_time_zone(
    sessionmaker: Sessionmaker,
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2025, 3, 31, 23, 30, tzinfo=UTC)  # already 1 April, 01:30, in Berlin
    await add_usage(sessionmaker, at=datetime(2025, 3, 31, 21, 59, tzinfo=UTC), prompt=1)
    await add_usage(sessionmaker, at=datetime(2025, 3, 31, 22, 0, tzinfo=UTC), prompt=10)
    limits = Limits(daily_tokens=5)
    in_berlin = policy(timezone=berlin, user_limits=limits)
    in_utc = policy(user_limits=limits)

    berlin_periods = by_period(
        (
            await UsageService(
                sessions=sessionmaker, policy=in_berlin, clock=lambda: now
            ).user_report(user_id=1)
        ).periods
    )
    utc_periods = by_period(
        (
            await UsageService(
                sessions=sessionmaker, policy=in_utc, clock=lambda: now
            ).user_report(user_id=1)
        ).periods
    )

    assert berlin_periods["today"].total.tokens == 10
    assert berlin_periods["month"].total.tokens == 10  # 23:59 on 31 March was last month
    assert utc_periods["today"].total.tokens == 11
    block = await BudgetService(sessions=sessionmaker, policy=in_berlin, clock=lambda: now).check(
        user_id=1
    )
    assert block is not None
    assert block.resets_at == datetime(2025, 4, 2, tzinfo=berlin)
    assert block.resets_in == timedelta(hours=22, minutes=30)
    resets = "It resets at Apr 2, 2025, 12:00\u202fAM Europe/Berlin (in 22 h 30 min)."
    assert resets in block.message
    with use_locale("ru"):
        russian = block.message
    # Russian dates and durations: day before month, 24-hour clock, short units.
    assert "Лимит обновится 2 апр. 2025\u202fг., 00:00 Europe/Berlin (через 22 ч 30 мин)." in (
        russian
    )


async def test_bot_report_ranks_users_and_chats_by_tokens_and_by_cost(
    sessionmaker: Sessionmaker,
) -> None:
    await add_people(sessionmaker)
    # Ann: many cheap tokens in her private chat; Bob: few dear ones in the group.
    await add_usage(sessionmaker, at=NOW, user_id=1, chat_id=1, prompt=50_000)
    await add_usage(sessionmaker, at=NOW, user_id=2, chat_id=-100, model="big", prompt=1_000)
    # A heavy user of last month is not in this month's lists; an unknown one has no name.
    await add_usage(sessionmaker, at=NOW - timedelta(days=30), user_id=3, prompt=10**7)
    await add_usage(sessionmaker, at=NOW, user_id=4, chat_id=4, prompt=10)
    service = UsageService(sessions=sessionmaker, policy=policy(), clock=lambda: NOW)

    report = await service.bot_report(top=3)

    assert [u.id for u in report.top_users_by_tokens] == [1, 2, 4]
    assert [u.id for u in report.top_users_by_cost] == [2, 1, 4]
    ann = report.top_users_by_tokens[0]
    assert (ann.name, ann.username, ann.tokens, ann.requests) == ("Ann Lee", "ann", 50_000, 1)
    assert ann.cost == pytest.approx(0.05)
    assert report.top_users_by_tokens[2].name is None
    assert [(c.id, c.name) for c in report.top_chats_by_cost] == [
        (-100, "Team <b>&"),
        (1, "Ann Lee"),  # a private chat is named after its user
        (4, None),
    ]
    periods = by_period(report.periods)
    assert periods["today"].total.tokens == 51_010
    assert periods["all"].total.tokens == 51_010 + 10**7


async def test_month_and_all_time_stay_right_as_days_and_months_pass(
    sessionmaker: Sessionmaker,
) -> None:
    now = [datetime(2025, 3, 15, 12, 0, tzinfo=UTC)]
    service = UsageService(sessions=sessionmaker, policy=policy(), clock=lambda: now[0])
    budgets = BudgetService(
        sessions=sessionmaker,
        policy=policy(bot_limits=Limits(monthly_tokens=1_000)),
        clock=lambda: now[0],
    )

    async def tokens() -> tuple[int, int, int]:
        p = by_period((await service.bot_report()).periods)
        return p["today"].total.tokens, p["month"].total.tokens, p["all"].total.tokens

    await add_usage(sessionmaker, at=datetime(2025, 2, 10, tzinfo=UTC), prompt=100)
    await add_usage(sessionmaker, at=datetime(2025, 3, 10, tzinfo=UTC), prompt=10)
    assert await tokens() == (0, 10, 110)
    await add_usage(sessionmaker, at=now[0], prompt=1)
    assert await tokens() == (1, 11, 111)

    # Just after midnight an answer of the day before may still be being stored.
    now[0] = datetime(2025, 3, 16, 0, 1, tzinfo=UTC)
    assert await tokens() == (0, 11, 111)
    await add_usage(sessionmaker, at=datetime(2025, 3, 15, 23, 59, 59, tzinfo=UTC), prompt=1)
    assert await tokens() == (0, 12, 112)
    now[0] = datetime(2025, 3, 16, 9, 0, tzinfo=UTC)
    await add_usage(sessionmaker, at=now[0], prompt=1)
    assert await tokens() == (1, 13, 113)
    assert await budgets.check(user_id=1) is None

    now[0] = datetime(2025, 4, 2, 12, 0, tzinfo=UTC)
    await add_usage(sessionmaker, at=datetime(2025, 4, 1, 8, 0, tzinfo=UTC), prompt=1_000)
    assert await tokens() == (0, 1_000, 1_113)
    block = await budgets.check(user_id=1)
    assert block is not None and block.resets_at == datetime(2025, 5, 1, tzinfo=UTC)


async def test_free_bot_has_no_cost_rankings(sessionmaker: Sessionmaker) -> None:
    await add_usage(sessionmaker, at=NOW, prompt=5)
    service = UsageService(
        sessions=sessionmaker, policy=policy(prices=PriceList()), clock=lambda: NOW
    )
    report = await service.bot_report()
    assert not report.priced
    assert report.top_users_by_cost == () and len(report.top_users_by_tokens) == 1


async def test_user_budget_stops_only_that_user_until_local_midnight(
    sessionmaker: Sessionmaker,
) -> None:
    await add_usage(sessionmaker, at=NOW - timedelta(days=1), user_id=1, prompt=5_000)
    budgets = BudgetService(
        sessions=sessionmaker,
        policy=policy(user_limits=Limits(daily_tokens=1_000), exempt_user_ids=frozenset({9})),
        clock=lambda: NOW,
    )
    assert await budgets.check(user_id=1) is None  # yesterday's usage does not count today

    await add_usage(sessionmaker, at=NOW, user_id=1, prompt=600, completion=400)
    block = await budgets.check(user_id=1)
    assert block is not None
    assert (block.scope, block.window, block.unit, block.limit) == (
        "user",
        "daily",
        "tokens",
        1000,
    )
    assert block.resets_at == datetime(2025, 3, 16, tzinfo=UTC)
    assert "daily limit of 1,000 tokens" in block.message
    assert "(in 12 h)" in block.message
    assert await budgets.check(user_id=2) is None

    await add_usage(sessionmaker, at=NOW, user_id=9, prompt=10**6)
    assert await budgets.check(user_id=9) is None  # the owner is never stopped


async def test_the_budget_that_resets_last_is_reported(sessionmaker: Sessionmaker) -> None:
    await add_usage(sessionmaker, at=NOW - timedelta(days=5), model="big", prompt=10_000)
    await add_usage(sessionmaker, at=NOW, prompt=2_000)
    budgets = BudgetService(
        sessions=sessionmaker,
        policy=policy(user_limits=Limits(daily_tokens=1_000, monthly_cost=1.0)),
        clock=lambda: NOW,
    )
    block = await budgets.check(user_id=1)
    # Both are spent (10,000 tokens of "big" cost $1.00); the monthly one lasts longer.
    assert block is not None
    assert (block.window, block.unit) == ("monthly", "cost")
    assert block.resets_at == datetime(2025, 4, 1, tzinfo=UTC)
    assert "monthly limit of $1.00" in block.message


async def test_bot_budget_stops_everyone_but_the_owner(sessionmaker: Sessionmaker) -> None:
    for user in range(1, 6):
        await add_usage(sessionmaker, at=NOW - timedelta(hours=user), user_id=user, prompt=300)
    budgets = BudgetService(
        sessions=sessionmaker,
        policy=policy(bot_limits=Limits(daily_tokens=1_500), exempt_user_ids=frozenset({9})),
        clock=lambda: NOW,
    )
    block = await budgets.check(user_id=42)  # has used nothing
    assert block is not None and block.scope == "bot"
    assert "for everyone" in block.message
    assert await budgets.check(user_id=9) is None


async def test_report_shows_budgets_with_what_is_used(sessionmaker: Sessionmaker) -> None:
    await add_usage(sessionmaker, at=NOW, prompt=250)
    limits = Limits(daily_tokens=1_000, monthly_cost=2.0)
    service = UsageService(
        sessions=sessionmaker,
        policy=policy(user_limits=limits, exempt_user_ids=frozenset({9})),
        clock=lambda: NOW,
    )
    report = await service.user_report(user_id=1)
    assert [(b.window, b.unit, b.used, b.limit, b.reached) for b in report.budgets] == [
        ("daily", "tokens", 250, 1000, False),
        ("monthly", "cost", pytest.approx(0.00025), 2.0, False),
    ]
    assert (await service.user_report(user_id=9)).budgets == ()  # owners have none


# ---- transcriptions: seconds of audio, priced per minute -------------------------------------

# Speech to text at $0.006 a minute; the chat models as in PRICES.
VOICE_PRICES = PriceList(
    default=PRICES.default,
    models={**PRICES.models, "whisper-1": Price(per_audio_minute=0.006)},
)


def transcription(*, user_id: int = 1, chat_id: int = 1, seconds: int = 200) -> NewUsage:
    return NewUsage(
        user_id=user_id,
        chat_id=chat_id,
        model="whisper-1",
        kind="transcription",
        prompt_tokens=0,
        completion_tokens=0,
        estimated=False,
        status="ok",
        latency_ms=900,
        audio_seconds=seconds,
    )


async def add_voice(
    sessions: Sessionmaker, *, seconds: int, user_id: int = 1, chat_id: int = 1
) -> None:
    """A transcription of `seconds` of audio, a minute before NOW."""
    await add_usage(
        sessions,
        at=NOW - timedelta(minutes=1),
        user_id=user_id,
        chat_id=chat_id,
        model="whisper-1",
        kind="transcription",
        audio_seconds=seconds,
    )


async def test_the_repository_stores_transcriptions_with_their_seconds_of_audio(
    sessionmaker: Sessionmaker,
) -> None:
    async with sessionmaker() as session, session.begin():
        await UsageRepository(session).add(
            transcription(seconds=200), transcription(seconds=-3), transcription(seconds=2**40)
        )
    record = UsageRecord
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    record.kind,
                    record.model,
                    record.prompt_tokens,
                    record.completion_tokens,
                    record.images,
                    record.audio_seconds,
                ).order_by(record.id)
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("transcription", "whisper-1", 0, 0, 0, 200),
        ("transcription", "whisper-1", 0, 0, 0, 0),  # counts are clamped like the others
        ("transcription", "whisper-1", 0, 0, 0, MAX_USAGE_COUNT),
    ]


async def test_transcriptions_cost_by_the_minute_in_reports_and_rankings(
    sessionmaker: Sessionmaker,
) -> None:
    await add_people(sessionmaker)
    # Ann: 3 min 20 s, then 100 s; Bob: 10 min of voice and a chat answer.
    await add_voice(sessionmaker, seconds=200)
    await add_voice(sessionmaker, seconds=100)
    await add_voice(sessionmaker, user_id=2, chat_id=-100, seconds=600)
    await add_usage(
        sessionmaker, at=NOW - timedelta(minutes=1), user_id=2, chat_id=-100, prompt=1000
    )
    service = UsageService(
        sessions=sessionmaker, policy=policy(prices=VOICE_PRICES), clock=lambda: NOW
    )

    ann = by_period((await service.user_report(user_id=1)).periods)["today"]
    assert (ann.total.requests, ann.total.tokens, ann.total.audio_seconds) == (2, 0, 300)
    assert ann.total.cost == pytest.approx(5 * 0.006)
    report = await service.bot_report()
    today = by_period(report.periods)["today"]
    assert today.total.audio_seconds == 900
    assert today.total.cost == pytest.approx(15 * 0.006 + 0.001)
    voice = next(m for m in today.models if m.model == "whisper-1")
    assert (voice.figures.audio_seconds, voice.figures.tokens) == (900, 0)
    # The rankings are summed in SQL: the same prices there.
    assert [(u.id, u.audio_seconds) for u in report.top_users_by_cost] == [(2, 600), (1, 300)]
    assert [u.cost for u in report.top_users_by_cost] == [
        pytest.approx(10 * 0.006 + 0.001),
        pytest.approx(5 * 0.006),
    ]
    assert report.top_chats_by_cost[0].id == -100
    assert report.top_chats_by_cost[0].cost == pytest.approx(10 * 0.006 + 0.001)


async def test_the_default_price_per_minute_prices_any_transcription_model(
    sessionmaker: Sessionmaker,
) -> None:
    await add_voice(sessionmaker, seconds=90)
    prices = PriceList(default=Price(per_audio_minute=0.01))
    service = UsageService(sessions=sessionmaker, policy=policy(prices=prices), clock=lambda: NOW)

    report = await service.bot_report()

    assert report.priced
    assert by_period(report.periods)["today"].total.cost == pytest.approx(0.015)
    assert report.top_users_by_cost[0].cost == pytest.approx(0.015)


async def test_transcription_cost_alone_reaches_a_cost_budget_but_not_a_token_budget(
    sessionmaker: Sessionmaker,
) -> None:
    await add_voice(sessionmaker, seconds=3000)  # 50 min at $0.006: $0.30
    tokens_only = BudgetService(
        sessions=sessionmaker,
        policy=policy(
            prices=VOICE_PRICES,
            user_limits=Limits(daily_tokens=1),
            bot_limits=Limits(monthly_tokens=1),
        ),
        clock=lambda: NOW,
    )
    assert await tokens_only.check(user_id=1) is None

    user_cost = BudgetService(
        sessions=sessionmaker,
        policy=policy(prices=VOICE_PRICES, user_limits=Limits(daily_cost=0.3)),
        clock=lambda: NOW,
    )
    block = await user_cost.check(user_id=1)
    assert block is not None
    assert (block.scope, block.window, block.unit) == ("user", "daily", "cost")
    assert block.used == pytest.approx(0.3)
    assert await user_cost.check(user_id=2) is None

    bot_cost = BudgetService(
        sessions=sessionmaker,
        policy=policy(prices=VOICE_PRICES, bot_limits=Limits(monthly_cost=0.25)),
        clock=lambda: NOW,
    )
    block = await bot_cost.check(user_id=2)
    assert block is not None and (block.scope, block.window) == ("bot", "monthly")


async def test_usage_reports_show_the_voice_transcribed(sessionmaker: Sessionmaker) -> None:
    await add_people(sessionmaker)
    await add_voice(sessionmaker, seconds=200)
    await add_usage(sessionmaker, at=NOW - timedelta(days=3), prompt=1000, completion=500)
    await add_usage(sessionmaker, at=NOW - timedelta(days=3), user_id=2, prompt=10)
    service = UsageService(
        sessions=sessionmaker, policy=policy(prices=VOICE_PRICES), clock=lambda: NOW
    )

    with use_locale("en"):
        own = "\n".join(user_report_text(await service.user_report(user_id=1), own=True))
        bob = "\n".join(user_report_text(await service.user_report(user_id=2), own=False))
        whole = "\n".join(bot_report_text(await service.bot_report()))

    voice = "🎤 3 min 20 s of voice transcribed"
    # Today only the voice: no "0 tokens" beside it.
    assert f"Today: 1 request · {voice} · cost $0.02\n" in own
    assert (
        "This month: 2 requests · 1,500 tokens (prompt 1,000, completion 500) · "
        f"{voice} · cost $0.022"
    ) in own
    assert f"  • whisper-1: 1 request · {voice} · cost $0.02" in own
    assert "  • small: 1 request · 1,500 tokens (prompt 1,000, completion 500) · cost $0.002" in (
        own
    )
    assert "🎤" not in bob  # none of his
    assert f"Today: 1 request · {voice} · cost $0.02\n" in whole
    assert f"  • whisper-1: 1 request · {voice} · cost $0.02" in whole
    assert f"1. Ann Lee (@ann, id 1): 1,500 tokens · {voice} · cost $0.022" in whole
    assert "Bob (id 2): 10 tokens · cost $0.00001" in whole


# ---- the chat service records every call once and honours budgets --------------------------


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=None) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def chat_service(
    sessions: Sessionmaker, llm: FakeLLM, http: httpx.AsyncClient, limits: Limits
) -> ChatService:
    return ChatService(
        sessions=sessions,
        llm=LLMClient(
            http=http, base_url=llm.base_url, api_key=None, retry=RetryPolicy(max_retries=0)
        ),
        tokens=TokenCounter(),
        config=ChatConfig(
            default_model="small",
            system_prompt="Be brief.",
            max_tokens=100,
            temperature=None,
            history_token_budget=10_000,
            context_window=32_000,
        ),
        budgets=BudgetService(
            sessions=sessions,
            policy=policy(user_limits=limits, exempt_user_ids=frozenset({9})),
        ),
    )


def ask(text: str, *, message_id: int, user_id: int = 7) -> ChatRequest:
    return ChatRequest(
        chat_id=user_id,
        chat_type="private",
        chat_title=None,
        user_id=user_id,
        user_full_name="Ann",
        username="ann",
        language_code="en",
        text=text,
        message_id=message_id,
    )


async def records(sessions: Sessionmaker) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(UsageRecord)) or 0)


async def test_spent_budget_refuses_without_calling_the_backend(
    sessionmaker: Sessionmaker, llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = chat_service(sessionmaker, llm, http, Limits(daily_tokens=100))
    llm.enqueue(Stream(["Fine."], prompt_tokens=90, completion_tokens=20))
    first = await service.reply(request=ask("hi", message_id=1), sink=RecordingSink())
    assert first.status == "ok"

    sink = RecordingSink()
    second = await service.reply(request=ask("again", message_id=2), sink=sink)

    assert second.status == "rejected"
    assert sink.failure is not None and "daily limit of 100 tokens" in sink.failure
    assert len(llm.chat_requests) == 1
    assert await records(sessionmaker) == 1  # a refusal costs nothing and records nothing
    llm.enqueue(Stream(["Yes, boss."], prompt_tokens=500, completion_tokens=500))
    owner = await service.reply(request=ask("me", message_id=3, user_id=9), sink=RecordingSink())
    assert owner.status == "ok"


async def test_every_backend_call_is_recorded_once_and_redelivery_adds_nothing(
    sessionmaker: Sessionmaker, llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = chat_service(sessionmaker, llm, http, Limits())
    llm.enqueue(Stream(["One."]), Error.server_error(), Stream(["Two."]))
    await service.reply(request=ask("q1", message_id=1), sink=RecordingSink())
    # Telegram delivers the same update again (the bot stopped before confirming it).
    again = await service.reply(request=ask("q1", message_id=1), sink=RecordingSink())
    assert again.status == "duplicate"
    # A failed call stores no turn, so its re-sent message is a new call, recorded again.
    await service.reply(request=ask("q2", message_id=2), sink=RecordingSink())
    await service.reply(request=ask("q2", message_id=2), sink=RecordingSink())

    assert len(llm.chat_requests) == 3
    assert await records(sessionmaker) == 3
