"""A backend that sends more than any answer can hold gets a clear message, not a bigger bot."""

from __future__ import annotations

from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Raw, Stream

CHAT = 1003


async def test_an_endless_line_before_the_first_token_is_refused_clearly(bot: BotHarness) -> None:
    # 2 MiB without a line break: past the 1 MiB a line may have, the read stops.
    bot.llm.enqueue(Raw.sse(b"data: " + b"x" * (2 * 1024 * 1024)), Stream(["Fine again."]))
    bot.tg.user_message(chat_id=CHAT, text="Hello?")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 1, within=20)
    assert texts[0].startswith("The AI backend sent a broken answer, larger than the bot can take")
    # Nothing was stored as answered: the next message is answered, with no broken turn in
    # the history sent along.
    bot.tg.user_message(chat_id=CHAT, text="And now?")
    await bot.wait_text(CHAT, "Fine again.")
    history = [m["content"] for m in bot.llm.chat_requests[-1]["messages"][1:]]
    assert history == ["And now?"]
