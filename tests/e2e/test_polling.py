"""Polling Telegram: a getUpdates answered 429 waits as told before asking again."""

from __future__ import annotations

from tests.e2e.conftest import BotHarness

RETRY_AFTER = 3


async def test_get_updates_told_to_wait_waits_before_asking_again(bot: BotHarness) -> None:
    tg = bot.tg
    tg.fail_next(
        "getUpdates",
        status=429,
        description=f"Too Many Requests: retry after {RETRY_AFTER}",
        retry_after=RETRY_AFTER,
    )
    # The bot's current long poll returns on its own (2 s in the harness); the next is refused.
    await tg.wait_for(lambda t: any(c.status == 429 for c in t.calls_to("getUpdates")), timeout=10)
    refused = next(c for c in tg.calls_to("getUpdates") if c.status == 429)
    await tg.wait_for(
        lambda t: any(c.at > refused.at for c in t.calls_to("getUpdates")),
        timeout=RETRY_AFTER + 10,
    )
    following = next(c for c in tg.calls_to("getUpdates") if c.at > refused.at)
    assert following.at - refused.at >= RETRY_AFTER - 0.05
