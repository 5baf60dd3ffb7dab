"""End-to-end: webhook mode — Telegram posts updates, each stored before the 200, answered once."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import insert

from bot.app import App
from bot.db.models import InboxUpdate, utcnow
from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Stream

CHAT = 6001
SECRET = "hook-secret_42"
HEADER = "X-Telegram-Bot-Api-Secret-Token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_webhook(harness: BotHarness, **overrides: Any) -> str:
    """Start the bot in webhook mode on a free port; returns its webhook URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/tg/hook"
    await harness.start(
        bot_mode="webhook",
        webhook_url=url,
        webhook_secret=SECRET,
        webhook_listen=f"127.0.0.1:{port}",
        **overrides,
    )
    return url


async def start_webhook_app(harness: BotHarness) -> App:
    await start_webhook(harness)
    assert harness.app is not None
    return harness.app


def handmade_update(update_id: int, text: str, chat_id: int = CHAT) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_700_000_000,
            "chat": {"id": chat_id, "type": "private", "first_name": "Eve"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "Eve"},
            "text": text,
        },
    }


async def test_the_webhook_is_registered_and_posted_updates_are_answered(
    harness: BotHarness,
) -> None:
    url = await start_webhook(harness, webhook_max_connections=7)
    [registered] = harness.tg.calls_to("setWebhook")
    assert registered.params["url"] == url
    assert registered.params["secret_token"] == SECRET
    assert str(registered.params["max_connections"]) == "7"
    assert "stopped_message_generation" in str(registered.params["allowed_updates"])
    assert not harness.tg.calls_to("deleteWebhook")
    harness.llm.enqueue(Stream(["Hello from a webhook."]))
    harness.tg.user_message(chat_id=CHAT, text="Hi")
    await harness.wait_text(CHAT, "Hello from a webhook.")
    await harness.stop()
    # Stopping leaves the webhook in place for the other replicas.
    assert not harness.tg.calls_to("deleteWebhook")
    assert harness.tg.webhook_url == url


async def test_posts_without_the_secret_or_not_updates_are_refused(harness: BotHarness) -> None:
    url = await start_webhook(harness)
    body = handmade_update(900, "should never be answered")
    async with httpx.AsyncClient() as client:
        missing = await client.post(url, json=body)
        wrong = await client.post(url, json=body, headers={HEADER: "guess"})
        garbage = await client.post(url, content=b"{not json", headers={HEADER: SECRET})
        shapeless = await client.post(url, json={"hello": 1}, headers={HEADER: SECRET})
        healthy = await client.get(url.replace("/tg/hook", "/healthz"))
        ready = await client.get(url.replace("/tg/hook", "/readyz"))
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert (garbage.status_code, shapeless.status_code) == (400, 400)
    assert (healthy.status_code, ready.status_code) == (200, 200)
    await asyncio.sleep(1)
    assert not harness.llm.chat_requests
    assert not harness.tg.messages(CHAT)


async def test_an_update_posted_twice_is_answered_once(harness: BotHarness) -> None:
    await start_webhook(harness)
    harness.llm.enqueue(Stream(["Once."]))
    update = harness.tg.user_message(chat_id=CHAT, text="Answer me once")
    await harness.wait_text(CHAT, "Once.")
    # Telegram missed the 200 and posts the same update again.
    harness.tg.redeliver(update["update_id"])
    await harness.tg.wait_webhook_idle(timeout=10)
    await harness.idle()
    assert len(harness.llm.chat_requests) == 1
    assert harness.texts(CHAT) == ["Once."]


async def test_a_command_posted_again_after_it_was_handled_is_not_handled_again(
    harness: BotHarness,
) -> None:
    await start_webhook(harness)
    update = harness.tg.user_message(chat_id=CHAT, text="/help")
    await harness.tg.wait_for(lambda t: len(t.messages(CHAT)) == 1, timeout=10)
    await harness.idle()
    # Telegram missed the 200 and posts the same update again, after it was handled, to a
    # replica that did not handle it (here: the bot after a restart).
    await harness.stop()
    await start_webhook(harness)
    harness.tg.redeliver(update["update_id"])
    await harness.tg.wait_webhook_idle(timeout=10)
    await asyncio.sleep(1.5)  # several claim steps of the queue
    await harness.idle()
    assert len(harness.tg.messages(CHAT)) == 1


async def test_handled_updates_are_not_kept_in_memory(harness: BotHarness) -> None:
    app = await start_webhook_app(harness)
    for chat in range(7100, 7130):
        harness.tg.user_message(chat_id=chat, text="/help")
    for chat in range(7100, 7130):
        await harness.tg.wait_for(lambda t, c=chat: len(t.messages(c)) == 1, timeout=10)
    await harness.idle()
    await asyncio.sleep(1.5)  # the queue's next steps record them as handled
    # The database remembers them (and refuses them if posted again); the process does not.
    assert app.tracker.remembered == 0


async def test_a_chat_s_messages_are_answered_in_order(harness: BotHarness) -> None:
    await start_webhook(harness)
    harness.llm.enqueue(
        Stream(["First ", "answer."], delay=0.3), Stream(["Second."]), Stream(["Third."])
    )
    for text in ("one", "two", "three"):
        harness.tg.user_message(chat_id=CHAT, text=text)
    await harness.wait_text(CHAT, "Third.")
    asked = [r["messages"][-1]["content"] for r in harness.llm.chat_requests]
    assert asked == ["one", "two", "three"]
    # Each was asked after the one before was answered: it is in the history.
    assert harness.llm.chat_requests[1]["messages"][-2]["content"] == "First answer."


async def test_an_update_a_dead_replica_held_is_answered_after_its_lease(
    harness: BotHarness,
) -> None:
    await start_webhook(harness, webhook_lease_seconds=1)
    assert harness.app is not None
    harness.llm.enqueue(Stream(["Hello."]))
    harness.tg.user_message(chat_id=CHAT, text="Hi", first_name="Eve", username=None)
    await harness.wait_text(CHAT, "Hello.")
    # Acknowledged and claimed by a replica that was then killed: its lease runs out.
    held = handmade_update(5000, "Are you there?")
    async with harness.app.engine.begin() as connection:
        await connection.execute(
            insert(InboxUpdate).values(
                update_id=5000,
                payload=json.dumps(held),
                chat_key=CHAT,
                lease_owner="killed-replica",
                lease_until=utcnow() + timedelta(seconds=0.5),
            )
        )
    harness.llm.enqueue(Stream(["Still here."]))
    await harness.wait_text(CHAT, "Still here.")
    await harness.idle()
    async with harness.app.engine.connect() as connection:
        left = (await connection.execute(InboxUpdate.__table__.select())).all()
    assert left == []  # handled and gone
