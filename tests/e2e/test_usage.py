"""End-to-end: /usage for users, owners and groups, and budgets that stop requests."""

from __future__ import annotations

from typing import Any

from bot.db import (
    ChatRepository,
    NewUsage,
    UsageRepository,
    UserRepository,
    create_sessionmaker,
)
from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Stream

ANN, BOB, OWNER = 5, 6, 9
GROUP = -100500
# What the bot says, in English (the fake's users write from English Telegram apps).
NOT_YOURS = "You can only see your own usage: send /usage without a number."


def ask(h: BotHarness, user: int, text: str, *, in_group: bool = False) -> dict[str, Any]:
    """A message from one of the test's people, in their private chat or in the group."""
    names = {ANN: ("Ann", "ann"), BOB: ("Bob", None), OWNER: ("Olga", "olga")}
    first_name, username = names[user]
    where: dict[str, Any] = {"chat_id": user}
    if in_group:
        where = {"chat_id": GROUP, "chat_type": "supergroup", "chat_title": "Team"}
    return h.tg.user_message(
        user_id=user, first_name=first_name, username=username, text=text, **where
    )


async def test_user_sees_own_usage_with_tiny_costs(harness: BotHarness) -> None:
    # Gonka's published rate: USD 0.00123 per million tokens, prompt and completion alike.
    await harness.start(price_prompt_per_million=0.00123, price_completion_per_million=0.00123)
    harness.llm.enqueue(Stream(["Hello."], prompt_tokens=1200, completion_tokens=34))
    ask(harness, ANN, "hi")
    await harness.wait_text(ANN, "Hello.")

    ask(harness, ANN, "/usage")
    report = (await harness.wait_messages(ANN, lambda t: len(t) == 2))[1]

    assert report.startswith("Your usage")
    figures = "1 request · 1,234 tokens (prompt 1,200, completion 34) · cost $0.00000152"
    assert f"Today: {figures}" in report
    assert f"This month: {figures}" in report
    assert f"All time: {figures}" in report
    assert "≈" not in report
    assert "UTC" in report
    assert len(harness.llm.chat_requests) == 1  # /usage itself costs nothing


async def test_figures_the_backend_did_not_report_are_marked_as_estimates(
    bot: BotHarness,
) -> None:
    bot.llm.enqueue(Stream(["An answer whose usage is all zeros."], usage="zeros"))
    ask(bot, ANN, "hi")
    await bot.wait_text(ANN, "An answer whose usage is all zeros.")

    ask(bot, ANN, "/usage")
    report = (await bot.wait_messages(ANN, lambda t: len(t) == 2))[1]

    assert "Today: 1 request · ≈" in report
    assert " tokens (prompt ≈" in report
    assert "≈ includes estimates: the AI backend did not report usage" in report
    assert "cost" not in report  # no prices are set, so no costs are shown


async def test_owner_sees_the_whole_bot_and_any_user_but_others_only_themselves(
    harness: BotHarness,
) -> None:
    await harness.start(
        owner_ids=str(OWNER), model_prices='{"gpt-4o-mini": {"prompt": 1, "completion": 2}}'
    )
    harness.llm.enqueue(
        Stream(["For Ann."], prompt_tokens=3000, completion_tokens=1000),
        Stream(["For Bob."], prompt_tokens=100, completion_tokens=50),
    )
    ask(harness, ANN, "question one")
    await harness.wait_text(ANN, "For Ann.")
    ask(harness, BOB, "@test_llm_bot question two", in_group=True)
    await harness.wait_text(GROUP, "For Bob.")

    ask(harness, OWNER, "/usage")
    report = (await harness.wait_messages(OWNER, lambda t: len(t) == 1))[0]
    assert report.startswith("Usage of the whole bot")
    assert "Today: 2 requests · 4,150 tokens (prompt 3,100, completion 1,050) · cost $0.0052" in (
        report
    )
    assert (
        "Top users this month by tokens:\n1. Ann (@ann, id 5): 4,000 tokens · cost $0.005\n"
        in (report)
    )
    assert "2. Bob (id 6): 150 tokens · cost $0.0002" in report
    assert "Top users this month by cost:" in report
    assert "Top chats this month by tokens:\n1. Ann (@ann, id 5): 4,000 tokens" in report
    assert f"2. Team (id {GROUP}): 150 tokens" in report

    ask(harness, OWNER, f"/usage {BOB}")
    one = (await harness.wait_messages(OWNER, lambda t: len(t) == 2))[1]
    assert one.startswith("Usage of Bob (id 6)")
    assert "Today: 1 request · 150 tokens" in one

    ask(harness, ANN, f"/usage {BOB}")
    refused = (await harness.wait_messages(ANN, lambda t: len(t) == 2))[1]
    assert refused == NOT_YOURS
    ask(harness, ANN, "/usage whatever")
    await harness.wait_messages(ANN, lambda t: len(t) == 3 and t[2] == NOT_YOURS)
    ask(harness, OWNER, "/usage whatever")
    await harness.wait_messages(
        OWNER,
        lambda t: t[-1] == "Send /usage for the whole bot, or /usage <user id> for one user.",
    )


async def test_in_groups_everyone_sees_only_their_own_usage(harness: BotHarness) -> None:
    await harness.start(owner_ids=str(OWNER), edit_interval_group=0.5)
    harness.llm.enqueue(
        Stream(["For Ann."], prompt_tokens=3000, completion_tokens=1000),
        Stream(["For Bob."], prompt_tokens=100, completion_tokens=50),
    )
    ask(harness, ANN, "@test_llm_bot one", in_group=True)
    await harness.wait_text(GROUP, "For Ann.")
    ask(harness, BOB, "@test_llm_bot two", in_group=True)
    await harness.wait_text(GROUP, "For Bob.")

    command = ask(harness, BOB, "/usage@test_llm_bot", in_group=True)
    texts_ = await harness.wait_messages(GROUP, lambda t: len(t) == 3)
    mine = texts_[2]
    assert mine.startswith("Your usage")
    assert "150 tokens " in mine and "4,000" not in mine and "Ann" not in mine
    assert harness.tg.messages(GROUP)[2].reply_to_message_id == command["message"]["message_id"]

    ask(harness, OWNER, "/usage", in_group=True)
    texts_ = await harness.wait_messages(GROUP, lambda t: len(t) == 4)
    assert texts_[3].startswith("Your usage")
    assert "Today: nothing yet" in texts_[3]
    assert texts_[3].endswith(
        "The report about the whole bot is in a private chat with me (/usage)."
    )
    assert "Top users" not in texts_[3]

    ask(harness, OWNER, f"/usage {ANN}", in_group=True)
    texts_ = await harness.wait_messages(GROUP, lambda t: len(t) == 5)
    assert texts_[4] == (
        "Reports about the whole bot and about other users are shown only in a private chat "
        "with me."
    )


async def test_spent_budget_stops_requests_without_calling_the_backend(
    harness: BotHarness,
) -> None:
    await harness.start(user_daily_tokens=100, owner_ids=str(OWNER))
    harness.llm.enqueue(Stream(["First answer."], prompt_tokens=90, completion_tokens=20))
    ask(harness, ANN, "first")
    await harness.wait_text(ANN, "First answer.")

    ask(harness, ANN, "second")
    texts_ = await harness.wait_messages(ANN, lambda t: len(t) == 2)

    assert "daily limit of 100 tokens" in texts_[1]
    assert "It resets at" in texts_[1] and "UTC" in texts_[1]
    assert len(harness.llm.chat_requests) == 1
    ask(harness, ANN, "/usage")
    report = (await harness.wait_messages(ANN, lambda t: len(t) == 3))[2]
    assert "Limits:\n  • Daily: 110 of 100 tokens, reached until " in report

    harness.llm.enqueue(Stream(["At your service."], prompt_tokens=500, completion_tokens=500))
    ask(harness, OWNER, "the owner is never stopped")
    await harness.wait_text(OWNER, "At your service.")
    assert len(harness.llm.chat_requests) == 2


async def test_usage_is_in_the_command_menu_and_help(bot: BotHarness) -> None:
    assert "usage" in {c["command"] for c in bot.tg.commands_for()}
    ask(bot, ANN, "/help")
    help_text = (await bot.wait_messages(ANN, lambda t: len(t) == 1))[0]
    assert "/usage" in help_text


async def test_absurd_usage_from_the_backend_leaves_usage_and_budgets_working(
    harness: BotHarness,
) -> None:
    # A backend claimed a prompt of 2**63 - 1 tokens: stored as is, every later SUM overflowed,
    # and /usage and the budget check failed for good.
    await harness.start(user_daily_tokens=100_000)
    harness.llm.enqueue(
        Stream(["Huge."], prompt_tokens=2**63 - 1, completion_tokens=3),
        Stream(["Odd."], prompt_tokens=-5, completion_tokens=12.7),
        Stream(["Still here."], prompt_tokens=40, completion_tokens=2),
    )
    ask(harness, ANN, "first")
    await harness.wait_text(ANN, "Huge.")
    ask(harness, ANN, "second")
    await harness.wait_text(ANN, "Odd.")

    ask(harness, ANN, "/usage")
    report = (await harness.wait_messages(ANN, lambda t: len(t) == 3))[2]
    assert report.startswith("Your usage"), report
    # Neither figure was believed: the bot's own counts stand in, marked as estimates.
    today = next(line for line in report.splitlines() if line.startswith("Today:"))
    assert today.startswith("Today: 2 requests · ≈"), today
    tokens = int(today.split("≈", 1)[1].split(" tokens", 1)[0].replace(",", ""))
    assert 0 < tokens < 1_000, today
    assert f"Daily: {tokens} of 100,000 tokens" in report

    ask(harness, ANN, "third")
    await harness.wait_text(ANN, "Still here.")
    assert len(harness.llm.chat_requests) == 3


async def test_usage_figures_past_64_bits_neither_break_the_write_nor_the_sums(
    bot: BotHarness,
) -> None:
    # 2**64 - 1 does not fit SQLite's INTEGER (the write failed); two of 2**63 - 1 overflow SUM.
    bot.llm.enqueue(
        Stream(["One."], prompt_tokens=2**64 - 1, completion_tokens=2),
        Stream(["Two."], prompt_tokens=2**63 - 1, completion_tokens=2**63 - 1),
        Stream(["Three."], prompt_tokens=2**63 - 1, completion_tokens=1),
    )
    for n, answer in enumerate(("One.", "Two.", "Three."), start=1):
        ask(bot, ANN, f"message {n}")
        await bot.wait_text(ANN, answer)

    ask(bot, ANN, "/usage")
    texts_ = await bot.wait_messages(ANN, lambda t: t[-1].startswith("Your usage"))
    assert len(texts_) == 4, texts_  # three answers and the report, no error message
    report = texts_[3]
    assert "Today: 3 requests · ≈" in report
    assert "922" not in report and "184" not in report  # no trace of the absurd figures


async def test_voice_transcribed_is_in_usage_and_its_cost_in_budgets(
    harness: BotHarness,
) -> None:
    # Transcriptions are recorded by the voice handler; here one is written as it writes it,
    # with who asked where.
    app = await harness.start(
        owner_ids=str(OWNER),
        price_per_audio_minute=0.01,
        model_prices='{"whisper-1": {"audio_minute": 0.006}}',
        user_daily_cost=0.02,
    )
    async with create_sessionmaker(app.engine).begin() as session:
        await ChatRepository(session).upsert(chat_id=ANN, type="private", title=None)
        await UserRepository(session).upsert(
            user_id=ANN, username="ann", full_name="Ann", language_code="en"
        )
        await UsageRepository(session).add(
            NewUsage(
                user_id=ANN,
                chat_id=ANN,
                model="whisper-1",
                kind="transcription",
                prompt_tokens=0,
                completion_tokens=0,
                estimated=False,
                status="ok",
                latency_ms=1200,
                audio_seconds=200,
            )
        )

    ask(harness, ANN, "/usage")
    report = (await harness.wait_messages(ANN, lambda t: len(t) == 1))[0]
    voice = "1 request · 🎤 3 min 20 s of voice transcribed · cost $0.02"
    assert f"Today: {voice}" in report
    assert "Daily: $0.02 of $0.02, reached until " in report

    # 3 min 20 s at $0.006 a minute spent Ann's daily $0.02: no answer until tomorrow.
    ask(harness, ANN, "hi")
    refused = (await harness.wait_messages(ANN, lambda t: len(t) == 2))[1]
    assert "daily limit of $0.02" in refused
    assert harness.llm.chat_requests == []

    ask(harness, OWNER, "/usage")
    whole = (await harness.wait_messages(OWNER, lambda t: len(t) == 1))[0]
    assert f"Today: {voice}" in whole
    assert f"1. Ann (@ann, id {ANN}): 0 tokens · 🎤 3 min 20 s of voice transcribed" in whole
    ask(harness, OWNER, f"/usage {ANN}")
    one = (await harness.wait_messages(OWNER, lambda t: len(t) == 2))[1]
    assert one.startswith(f"Usage of Ann (@ann, id {ANN})")
    assert f"Today: {voice}" in one
