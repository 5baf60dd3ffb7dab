"""Prices and budgets in the settings, and usage figures as people read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings
from bot.db.usage_queries import RankedUsage
from bot.pricing import Price
from bot.services.usage import (
    BotReport,
    BudgetUse,
    Figures,
    ModelFigures,
    PeriodReport,
)
from bot.telegram.render import TELEGRAM_TEXT_LIMIT, utf16_len
from bot.telegram.usage_view import bot_report_text

TOKEN = "123456:ABCDEF"


def load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's directory
    for key in list(Settings.model_fields):
        monkeypatch.delenv(key.upper(), raising=False)
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_model_prices_fall_back_to_the_default_price(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = load(
        monkeypatch,
        tmp_path,
        PRICE_PROMPT_PER_MILLION="0.00123",
        PRICE_COMPLETION_PER_MILLION="0.00123",
        PRICE_PER_IMAGE="0.04",
        MODEL_PRICES='{"gpt-4o": {"prompt": 2.5, "completion": 10}, "dall-e-3": {"image": 0.08}}',
    )
    prices = s.price_list()
    assert prices.for_model("gpt-4o") == Price(2.5, 10, 0.04)
    assert prices.for_model("dall-e-3") == Price(0.00123, 0.00123, 0.08)
    assert prices.for_model("anything-else") == Price(0.00123, 0.00123, 0.04)
    assert prices.for_model("gpt-4o").cost(
        prompt_tokens=1_000_000, completion_tokens=500_000, images=1
    ) == pytest.approx(2.5 + 5 + 0.04)


def test_transcriptions_are_priced_per_minute_of_audio(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = load(
        monkeypatch,
        tmp_path,
        PRICE_PROMPT_PER_MILLION="1",
        PRICE_PER_AUDIO_MINUTE="0.01",
        MODEL_PRICES='{"whisper-1": {"audio_minute": 0.006}, "gpt-4o": {"prompt": 2.5}}',
    )
    prices = s.price_list()
    assert prices.for_model("whisper-1") == Price(1, 0, 0, 0.006)
    assert prices.for_model("gpt-4o") == Price(2.5, 0, 0, 0.01)  # the default per minute
    assert prices.for_model("other").per_audio_minute == 0.01
    # By the second: 3 min 20 s.
    assert prices.for_model("whisper-1").cost(
        prompt_tokens=0, completion_tokens=0, images=0, audio_seconds=200
    ) == pytest.approx(0.02)
    assert prices.for_model("gpt-4o").cost(
        prompt_tokens=1_000_000, completion_tokens=0, images=0, audio_seconds=30
    ) == pytest.approx(2.5 + 0.005)
    # A price per minute alone makes the bot priced, so costs are shown.
    free = load(monkeypatch, tmp_path)
    assert free.price_list().is_free
    voice_only = load(monkeypatch, tmp_path, MODEL_PRICES='{"whisper-1": {"audio_minute": 0.006}}')
    assert not voice_only.price_list().is_free
    assert not load(monkeypatch, tmp_path, PRICE_PER_AUDIO_MINUTE="0.006").price_list().is_free


def test_budgets_default_to_unlimited_and_zero_means_unlimited(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = load(monkeypatch, tmp_path, USER_DAILY_TOKENS="0", BOT_MONTHLY_COST="12.5")
    assert s.user_daily_tokens is None and s.user_monthly_cost is None
    assert s.bot_monthly_cost == 12.5
    assert s.usage_tzinfo() is UTC
    berlin = load(monkeypatch, tmp_path, USAGE_TIMEZONE="Europe/Berlin")
    assert str(berlin.usage_tzinfo()) == "Europe/Berlin"


@pytest.mark.parametrize(
    ("env", "variable", "hint"),
    [
        ({"MODEL_PRICES": "{gpt-4o: 1}"}, "MODEL_PRICES", "must be JSON"),
        ({"MODEL_PRICES": '{"gpt-4o": {"promt": 1}}'}, "MODEL_PRICES", "unknown field promt"),
        (
            {"MODEL_PRICES": '{"whisper-1": {"minute": 1}}'},
            "MODEL_PRICES",
            "use prompt, completion, image and audio_minute",
        ),
        ({"MODEL_PRICES": '{"whisper-1": {"audio_minute": -1}}'}, "MODEL_PRICES", "0 or more"),
        ({"PRICE_PER_AUDIO_MINUTE": "-0.006"}, "PRICE_PER_AUDIO_MINUTE", ""),
        ({"MODEL_PRICES": '{"gpt-4o": {"prompt": -1}}'}, "MODEL_PRICES", "0 or more"),
        ({"MODEL_PRICES": '{"gpt-4o": 2.5}'}, "MODEL_PRICES", "must be an object"),
        ({"PRICE_PER_IMAGE": "-0.04"}, "PRICE_PER_IMAGE", ""),
        ({"USER_DAILY_TOKENS": "lots"}, "USER_DAILY_TOKENS", ""),
        ({"BOT_MONTHLY_COST": "-1"}, "BOT_MONTHLY_COST", ""),
        ({"USAGE_TIMEZONE": "Mars/Olympus"}, "USAGE_TIMEZONE", "IANA name"),
    ],
)
def test_invalid_prices_budgets_and_time_zone_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], variable: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(monkeypatch, tmp_path, **env)
    message = str(err.value)
    assert message.startswith(f"{variable}: ")
    assert hint in message
    assert "\n" not in message


def test_a_large_owner_report_is_split_into_messages_telegram_accepts() -> None:
    figures = Figures(requests=10**6, prompt_tokens=10**9, completion_tokens=10**8, cost=12.5)
    models = tuple(
        ModelFigures(model=f"vendor/model-{i}-" + "x" * 60, figures=figures) for i in range(30)
    )
    periods = tuple(
        PeriodReport(period=p, total=figures, models=models) for p in ("today", "month", "all")
    )
    ranked = tuple(
        RankedUsage(
            id=10**12 + i,
            name="Имя 🙂 " * 30,  # far longer than any name is shown
            username="someone",
            requests=1,
            tokens=10**9,
            images=0,
            cost=1.0,
        )
        for i in range(10)
    )
    moment = datetime(2025, 6, 1, tzinfo=UTC)
    budget = BudgetUse("bot", "monthly", "cost", 100.0, 150.0, moment, timedelta(days=3))
    report = BotReport(
        periods=periods,
        top_users_by_tokens=ranked,
        top_users_by_cost=ranked,
        top_chats_by_tokens=ranked,
        top_chats_by_cost=ranked,
        budgets=(budget,),
        priced=True,
        timezone="UTC",
    )

    messages = bot_report_text(report)

    assert len(messages) > 1
    assert all(utf16_len(m) <= TELEGRAM_TEXT_LIMIT for m in messages)
    text = "\n".join(messages)
    assert text.count("vendor/model-") == 90  # nothing lost between messages
    assert text.count("(@someone, id 10000000000") == 40
    assert "Monthly: $150.00 of $100.00, reached until Jun 1, 2025, 12:00\u202fAM UTC" in text


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (45, "45 s"),
        (60, "1 min"),
        (200, "3 min 20 s"),
        (3600, "1 h"),
        (3725, "1 h 2 min 5 s"),
        (100 * 3600 + 1, "100 h 1 s"),
    ],
)
def test_voice_transcribed_is_shown_to_the_second(seconds: int, shown: str) -> None:
    voice = Figures(requests=1, audio_seconds=seconds, cost=0.5)
    chat = Figures(requests=2, prompt_tokens=10, completion_tokens=5)
    periods = (
        PeriodReport(
            period="today",
            total=voice + chat,
            models=(ModelFigures("whisper-1", voice), ModelFigures("gpt-4o", chat)),
        ),
        PeriodReport(period="month", total=chat),
    )
    ranked = (
        RankedUsage(
            id=1,
            name="Ann",
            username=None,
            requests=1,
            tokens=0,
            images=0,
            cost=0.5,
            audio_seconds=seconds,
        ),
    )
    report = BotReport(
        periods=periods,
        top_users_by_tokens=ranked,
        top_users_by_cost=(),
        top_chats_by_tokens=(),
        top_chats_by_cost=(),
        budgets=(),
        priced=True,
        timezone="UTC",
    )

    text = "\n".join(bot_report_text(report))

    voice_line = f"🎤 {shown} of voice transcribed"
    assert (
        f"Today: 3 requests · 15 tokens (prompt 10, completion 5) · {voice_line} · cost $0.50"
        in text
    )
    assert f"  • whisper-1: 1 request · {voice_line} · cost $0.50" in text
    assert f"1. Ann (id 1): 0 tokens · {voice_line} · cost $0.50" in text
    assert "This month: 2 requests · 15 tokens (prompt 10, completion 5) · cost $0.00\n" in text
