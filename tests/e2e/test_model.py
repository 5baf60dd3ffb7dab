"""End-to-end: /model, its picker and per-chat models, through fake Telegram and backend."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import BotHarness
from tests.fakes.openai import AKASHCHAT_MODELS
from tests.fakes.telegram import SentMessage

# What the bot says, in English (the fake's users write from English Telegram apps).
SWITCHED = "✅ This chat now uses {model}. The next answer will come from it."
ADMINS_ONLY = "Only the group's administrators can change the model."
OUTDATED = "This list is outdated, send /model again."

CHAT = 1001
GROUP = -100777
ADMIN, CREATOR, MEMBER, OWNER = 50, 51, 52, 99


def captions(message: SentMessage) -> list[str]:
    """Texts of the message's inline buttons, row by row."""
    rows = (message.reply_markup or {}).get("inline_keyboard", [])
    return [button["text"] for row in rows for button in row]


async def wait_keyboard(bot: BotHarness, chat_id: int, count: int = 1) -> SentMessage:
    """Wait for the chat's `count`-th bot message with an inline keyboard and return it."""
    await bot.tg.wait_for(
        lambda t: sum(1 for m in t.live_messages(chat_id) if m.reply_markup) >= count
    )
    return [m for m in bot.tg.live_messages(chat_id) if m.reply_markup][count - 1]


async def press(
    bot: BotHarness, message: SentMessage, caption: str, *, user_id: int | None = None
) -> dict[str, Any]:
    """Press the button whose caption contains `caption`; return the bot's answer to it."""
    rows = (message.reply_markup or {})["inline_keyboard"]
    button = next(b for row in rows for b in row if caption in b["text"])
    update = bot.tg.callback_query(
        chat_id=message.chat_id,
        message_id=message.message_id,
        data=button["callback_data"],
        user_id=user_id,
    )
    query_id = update["callback_query"]["id"]
    await bot.tg.wait_for(lambda t: query_id in t.callback_answers)
    return bot.tg.callback_answers[query_id]


async def ask(bot: BotHarness, chat_id: int, text: str, **kwargs: Any) -> str:
    """Send `text` and return the bot's next new message."""
    before = len(bot.texts(chat_id))
    bot.tg.user_message(chat_id=chat_id, text=text, **kwargs)
    return (await bot.wait_messages(chat_id, lambda t: len(t) > before))[before]


async def test_picker_lists_chat_models_and_a_press_switches(bot: BotHarness) -> None:
    bot.tg.user_message(chat_id=CHAT, text="/model")
    picker = await wait_keyboard(bot, CHAT)
    assert picker.text.startswith("This chat uses gpt-4o-mini.")
    assert captions(picker) == ["gpt-4o", "✅ gpt-4o-mini"]  # dall-e-3 is not a chat model

    answer = await press(bot, picker, "gpt-4o")
    assert answer["text"] == "Switched to gpt-4o"
    await bot.tg.wait_for(lambda t: picker.edits == 1)
    assert picker.text.startswith("✅ This chat now uses gpt-4o.")
    assert captions(picker) == ["✅ gpt-4o", "gpt-4o-mini"]

    reply = await ask(bot, CHAT, "Hello")
    assert reply == "You said: Hello"
    assert bot.llm.chat_requests[-1]["model"] == "gpt-4o"
    # pressing the model in use again changes nothing
    answer = await press(bot, picker, "gpt-4o")
    assert answer["text"] == "Already in use"
    assert picker.edits == 1
    assert bot.tg.flood.violations == 0


async def test_a_switch_applies_to_the_very_next_answer(bot: BotHarness) -> None:
    assert await ask(bot, CHAT, "Hello") == "You said: Hello"
    assert bot.llm.chat_requests[-1]["model"] == "gpt-4o-mini"
    bot.tg.user_message(chat_id=CHAT, text="/model gpt-4o")
    await bot.tg.wait_for(lambda t: any("gpt-4o." in m.text for m in t.messages(CHAT)))
    assert await ask(bot, CHAT, "Again") == "You said: Again"
    assert bot.llm.chat_requests[-1]["model"] == "gpt-4o"
    bot.tg.user_message(chat_id=CHAT, text="/model gpt-4o-mini")
    await bot.tg.wait_for(lambda t: any("gpt-4o-mini." in m.text for m in t.messages(CHAT)))
    assert await ask(bot, CHAT, "Back") == "You said: Back"
    assert bot.llm.chat_requests[-1]["model"] == "gpt-4o-mini"


async def test_bare_list_names_and_context_size_set_the_history_budget(
    harness: BotHarness,
) -> None:
    harness.llm.models_shape = "bare"
    harness.llm.models = [
        *AKASHCHAT_MODELS,
        {"id": "tiny-model", "name": "Tiny", "tokenLimit": 3000},
    ]
    await harness.start(llm_model="Meta-Llama-3-3-70B-Instruct")
    harness.tg.user_message(chat_id=CHAT, text="/model")
    picker = await wait_keyboard(harness, CHAT)
    assert picker.text.startswith(
        "This chat uses Llama 3.3 70B (Meta-Llama-3-3-70B-Instruct), context 128,000 tokens."
    )
    # AkashGen is listed as unavailable
    assert captions(picker) == ["GPT-OSS-120B", "✅ Llama 3.3 70B", "Tiny"]

    answer = await press(harness, picker, "Tiny")
    assert answer["text"] == "Switched to Tiny"
    # 3000 tokens of context minus MAX_TOKENS (2048) leave 952 for the prompt
    long_text = "word " * 1500
    assert "at most 952 fit" in await ask(harness, CHAT, long_text)
    assert harness.llm.chat_requests == []

    switched = await ask(harness, CHAT, "/model llama 3.3 70b")
    assert switched == SWITCHED.format(model="Llama 3.3 70B (Meta-Llama-3-3-70B-Instruct)")
    assert (await ask(harness, CHAT, long_text)).startswith("You said: word")
    assert harness.llm.chat_requests[-1]["model"] == "Meta-Llama-3-3-70B-Instruct"


async def test_long_lists_are_paged_with_short_button_data(harness: BotHarness) -> None:
    # Ids this long cannot travel in callback data (64 bytes): the fake would refuse them.
    ids = [
        f"organisation-with-a-long-name/chat-model-{i:02d}-instruct-2507-FP8" for i in range(20)
    ]
    harness.llm.models = ids
    harness.tg.flood.enabled = False
    await harness.start(llm_model=ids[12], edit_interval_private=0.05)
    harness.tg.user_message(chat_id=CHAT, text="/model")
    picker = await wait_keyboard(harness, CHAT)
    shown = captions(picker)
    # opened on the page of the current model: eight models, then the arrows
    assert len(shown) == 11 and shown[-3:] == ["◀", "2/3", "▶"]
    assert [c for c in shown if c.startswith("✅")] == ["✅ " + ids[12][:47] + "…"]

    assert (await press(harness, picker, "▶")).get("text") is None
    await harness.tg.wait_for(lambda t: picker.edits == 1)
    assert captions(picker)[:4] == [i[:47] + "…" for i in ids[16:20]]
    assert captions(picker)[-2] == "3/3"
    await press(harness, picker, "▶")  # wraps around to the first page
    await harness.tg.wait_for(lambda t: picker.edits == 2)
    assert captions(picker)[-2] == "1/3"
    await press(harness, picker, "1/3")  # the counter only gets its answer

    answer = await press(harness, picker, "chat-model-03")
    assert answer["text"] == f"Switched to {ids[3]}"
    await harness.tg.wait_for(lambda t: picker.edits == 3)
    await ask(harness, CHAT, "Hi")
    assert harness.llm.chat_requests[-1]["model"] == ids[3]


async def test_switch_by_id_with_suggestions_for_typos(bot: BotHarness) -> None:
    reply = await ask(bot, CHAT, "/model gpt-4o")
    assert reply == SWITCHED.format(model="gpt-4o")

    reply = await ask(bot, CHAT, "/model gpt4o-mini")
    assert reply.startswith("There is no model “gpt4o-mini”. Did you mean")
    assert "• gpt-4o-mini" in reply
    suggestion = await wait_keyboard(bot, CHAT)
    assert captions(suggestion)[0] == "gpt-4o-mini"
    assert (await press(bot, suggestion, "gpt-4o-mini"))["text"] == "Switched to gpt-4o-mini"

    for unknown in ("claude-3-opus", "dall-e-3"):
        reply = await ask(bot, CHAT, f"/model {unknown}")
        assert reply == (
            f"There is no chat model “{unknown}” to choose from, so this chat keeps gpt-4o-mini. "
            "Send /model to see the choices."
        )
    await ask(bot, CHAT, "Which model?")
    assert bot.llm.chat_requests[-1]["model"] == "gpt-4o-mini"


async def test_in_groups_only_administrators_and_owners_switch(harness: BotHarness) -> None:
    # Telegram's pacing in groups (one message per 3 s) would make this test slow; the fake
    # still enforces its 20 per minute.
    await harness.start(owner_ids=[OWNER], edit_interval_group=0.2)
    harness.tg.register_chat(GROUP, chat_type="supergroup", title="Team")
    harness.tg.set_admins(GROUP, [ADMIN], creator=CREATOR)
    group: dict[str, Any] = {"chat_type": "supergroup", "chat_title": "Team"}

    refused = await ask(harness, GROUP, "/model gpt-4o", user_id=MEMBER, **group)
    assert refused == ADMINS_ONLY
    # anyone may look at the picker, but a member's press is refused with a notice
    harness.tg.user_message(chat_id=GROUP, text="/model", user_id=MEMBER, **group)
    picker = await wait_keyboard(harness, GROUP)
    answer = await press(harness, picker, "gpt-4o", user_id=MEMBER)
    assert answer["text"] == ADMINS_ONLY
    assert picker.edits == 0

    switched = await ask(harness, GROUP, "/model gpt-4o", user_id=ADMIN, **group)
    assert switched == SWITCHED.format(model="gpt-4o")
    switched = await ask(harness, GROUP, "/model gpt-4o-mini", user_id=OWNER, **group)
    assert switched == SWITCHED.format(model="gpt-4o-mini")
    answer = await press(harness, picker, "gpt-4o", user_id=CREATOR)
    assert answer["text"] == "Switched to gpt-4o"
    await harness.tg.wait_for(lambda t: picker.edits == 1)

    await ask(harness, GROUP, "@test_llm_bot hello", user_id=MEMBER, **group)
    assert harness.llm.chat_requests[-1]["model"] == "gpt-4o"
    assert harness.tg.flood.count_429 == 0


async def test_without_a_model_list_the_id_is_trusted(harness: BotHarness) -> None:
    harness.llm.models_shape = "error"
    await harness.start()
    reply = await ask(harness, CHAT, "/model")
    assert reply == (
        "This chat uses gpt-4o-mini.\n\nThe AI backend's model list cannot be loaded right now. "
        "You can still switch by sending /model followed by the model's id."
    )
    assert all(m.reply_markup is None for m in harness.tg.live_messages(CHAT))

    reply = await ask(harness, CHAT, "/model my-local-model")
    assert reply == (
        "✅ This chat now uses “my-local-model”. The AI backend's model list could not be "
        "checked, so the id is used as typed; if it is wrong, the next answer will say so."
    )
    await ask(harness, CHAT, "Hello")
    assert harness.llm.chat_requests[-1]["model"] == "my-local-model"


async def test_choice_survives_a_restart_and_outdated_keyboards_are_refused(
    harness: BotHarness,
) -> None:
    await harness.start(models_cache_seconds=0)
    harness.tg.user_message(chat_id=CHAT, text="/model")
    old_picker = await wait_keyboard(harness, CHAT)
    await press(harness, old_picker, "gpt-4o")

    await harness.restart(models_cache_seconds=0)
    await ask(harness, CHAT, "Still there?")
    assert harness.llm.chat_requests[-1]["model"] == "gpt-4o"
    harness.tg.user_message(chat_id=CHAT, text="/model")
    picker = await wait_keyboard(harness, CHAT, count=2)
    assert "✅ gpt-4o" in captions(picker)

    harness.llm.models = ["gpt-4o", "gpt-4o-mini", "o3"]  # the backend's list changes
    answer = await press(harness, old_picker, "gpt-4o-mini")
    assert answer["text"] == OUTDATED
    await ask(harness, CHAT, "Which one now?")
    assert harness.llm.chat_requests[-1]["model"] == "gpt-4o"


async def test_a_model_gone_from_the_backend_is_reported_on_the_next_answer(
    harness: BotHarness,
) -> None:
    harness.llm.strict_models = True
    await harness.start(models_cache_seconds=0)
    await ask(harness, CHAT, "/model gpt-4o")
    harness.llm.models = ["gpt-4o-mini"]

    reply = await ask(harness, CHAT, "Hello")
    assert reply == (
        "The model “gpt-4o” is not available on the AI backend (it may have been removed). "
        "Send /model to choose another one.\nModels on offer: gpt-4o-mini"
    )
    assert "/model" in reply
    harness.tg.user_message(chat_id=CHAT, text="/model")
    picker = await wait_keyboard(harness, CHAT)
    assert picker.text.startswith("This chat uses gpt-4o, which the AI backend does not list")
    assert captions(picker) == ["gpt-4o-mini"]


async def test_model_is_in_the_command_menu_and_help(bot: BotHarness) -> None:
    assert "model" in {c["command"] for c in bot.tg.commands_for()}
    assert "/model" in await ask(bot, CHAT, "/help")
