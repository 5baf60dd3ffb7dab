"""A poison update (one that cannot be parsed, or whose handler raises) is skipped, not fatal."""

from __future__ import annotations

import logging

import pytest

from bot.app import App
from bot.services.chat import ChatRequest, ChatService, ReplyOutcome
from bot.services.sink import ReplySink
from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Stream

CHAT = 1004
SECRET = "my card number is 4111"


async def test_an_update_that_cannot_be_parsed_is_skipped_and_polling_goes_on(
    bot: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bot.llm.enqueue(Stream(["Answered."]))
    # A message whose date is not a date: aiogram cannot build the Update.
    poison = bot.tg.user_message(chat_id=CHAT, text=SECRET, date="yesterday")
    bot.tg.user_message(chat_id=CHAT, text="Still there?")
    await bot.wait_text(CHAT, "Answered.")
    assert [m["messages"][-1]["content"] for m in bot.llm.chat_requests] == ["Still there?"]
    # Polling moved past it: the poison update was not asked for again and again.
    offsets = [c.params.get("offset") for c in bot.tg.calls_to("getUpdates")]
    assert offsets.count(poison["update_id"]) <= 1
    skipped = [r for r in caplog.records if "cannot be parsed" in r.getMessage()]
    assert len(skipped) == 1 and str(poison["update_id"]) in skipped[0].getMessage()
    assert all(SECRET not in r.getMessage() for r in caplog.records)


class ExplodingOnce:
    """The chat service, except that its first answer fails quoting the user's text."""

    def __init__(self, real: ChatService) -> None:
        self.real = real
        self.exploded = False

    async def reply(self, *, request: ChatRequest, sink: ReplySink) -> ReplyOutcome:
        """Fail once the way an unforeseen bug would, quoting its input; then answer."""
        if not self.exploded:
            self.exploded = True
            raise ValueError(f"cannot handle {request.text!r}")
        return await self.real.reply(request=request, sink=sink)


async def test_a_handler_that_raises_is_reported_without_the_message_text(
    harness: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def explode(app: App) -> None:
        app.dispatcher["chat_service"] = ExplodingOnce(app.dispatcher["chat_service"])

    await harness.start(prepare=explode)
    harness.tg.user_message(chat_id=CHAT, text=SECRET)
    await harness.wait_text(CHAT, "Something went wrong while answering. Please try again.")
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures and "ValueError" in failures[0].getMessage()
    assert all(SECRET not in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    # The next update is handled.
    harness.llm.enqueue(Stream(["Back."]))
    harness.tg.user_message(chat_id=CHAT, text="Again?")
    await harness.wait_text(CHAT, "Back.")
