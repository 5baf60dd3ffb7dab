"""End-to-end: the bot speaks each user's language (Telegram's, the owner's or their choice)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Error, Stream
from tests.fakes.telegram import SentMessage

CHAT = 4242
GROUP = -100900
IVAN, MEI = 31, 32

RUSSIAN = {
    "start": (
        "Привет, Alice! Я ИИ-ассистент. Напишите мне что угодно — я отвечу с учётом нашего "
        "разговора.\n\nВ группах упомяните меня или ответьте на моё сообщение.\n"
        "/reset — начать новый разговор, /help — все команды."
    ),
    "help": "Команды:\n/start — что умеет этот бот\n/help — этот список\n",
    "language line": "/language — выбрать язык, на котором я с вами говорю",
    "bad key": ("Сервис ИИ не принял API-ключ бота. Владельцу бота нужно исправить LLM_API_KEY."),
    "menu start": "Что умеет этот бот",
    "menu language": "Выбрать язык",
}
CHINESE = {
    "start": (
        "你好，Alice！我是 AI 助手。给我发任何消息，我都会结合之前的对话来回答。\n\n"
        "在群组里，请提及我或回复我的消息。\n发送 /reset 开始新对话，发送 /help 查看所有命令。"
    ),
    "help": "命令：\n/start — 机器人能做什么\n/help — 本列表\n",
    "language line": "/language — 选择我和你交流的语言",
    "bad key": "AI 服务拒绝了机器人的 API 密钥，需要机器人所有者修正 LLM_API_KEY。",
    "menu start": "机器人能做什么",
    "menu language": "选择语言",
}
ENGLISH_START = "Hi, Alice! I am an AI assistant."


def captions(message: SentMessage) -> list[str]:
    """Texts of the message's inline buttons, row by row."""
    rows = (message.reply_markup or {}).get("inline_keyboard", [])
    return [button["text"] for row in rows for button in row]


async def ask(bot: BotHarness, text: str, **kwargs: Any) -> str:
    """Send `text` to the private chat and return the bot's next new message."""
    before = len(bot.texts(CHAT))
    bot.tg.user_message(chat_id=CHAT, user_id=CHAT, text=text, **kwargs)
    return (await bot.wait_messages(CHAT, lambda t: len(t) > before))[before]


async def press(
    bot: BotHarness, message: SentMessage, caption: str, **kwargs: Any
) -> dict[str, Any]:
    """Press the button whose caption is `caption`; return the bot's answer to the press."""
    rows = (message.reply_markup or {})["inline_keyboard"]
    button = next(b for row in rows for b in row if b["text"] == caption)
    update = bot.tg.callback_query(
        chat_id=message.chat_id,
        message_id=message.message_id,
        data=button["callback_data"],
        user_id=CHAT,
        **kwargs,
    )
    query_id = update["callback_query"]["id"]
    await bot.tg.wait_for(lambda t: query_id in t.callback_answers)
    return bot.tg.callback_answers[query_id]


def menu(bot: BotHarness, language_code: str = "") -> dict[str, str]:
    """The command menu registered for a language (the default one for "")."""
    return {c["command"]: c["description"] for c in bot.tg.commands_for(None, language_code)}


@pytest.mark.parametrize(
    ("language_code", "expected", "menu_code"),
    [("ru-RU", RUSSIAN, "ru"), ("zh-hans", CHINESE, "zh")],
    ids=["russian", "chinese"],
)
async def test_users_are_answered_in_their_telegram_language(
    bot: BotHarness, language_code: str, expected: dict[str, str], menu_code: str
) -> None:
    assert await ask(bot, "/start", language_code=language_code) == expected["start"]
    help_text = await ask(bot, "/help", language_code=language_code)
    assert help_text.startswith(expected["help"])
    assert expected["language line"] in help_text
    assert "@test_llm_bot" in help_text

    bot.llm.enqueue(Error.invalid_api_key())
    assert await ask(bot, "hello", language_code=language_code) == expected["bad key"]

    # Telegram shows each app the menu of its language.
    commands = menu(bot, menu_code)
    assert commands["start"] == expected["menu start"]
    assert commands["language"] == expected["menu language"]
    assert menu(bot)["start"] == "What this bot does"
    assert menu(bot)["language"] == "Choose the language"
    assert list(commands) == list(menu(bot))  # the same commands in every language


async def test_numbers_and_plurals_in_russian_usage(harness: BotHarness) -> None:
    await harness.start(price_prompt_per_million=0.00123, price_completion_per_million=0.00123)
    harness.llm.enqueue(Stream(["Привет."], prompt_tokens=1200, completion_tokens=34))
    await ask(harness, "привет", language_code="ru")

    report = await ask(harness, "/usage", language_code="ru")

    assert report.startswith("Ваш расход\n\n")
    assert (
        "Сегодня: 1 запрос · 1\xa0234 токена (ввод 1\xa0200, вывод 34) · стоимость 0,00000152\xa0$"
        in report
    )
    assert "Дни и месяцы считаются по часовому поясу UTC." in report


async def test_a_chosen_language_is_used_everywhere_and_survives_a_restart(
    bot: BotHarness,
) -> None:
    picker_text = await ask(bot, "/language")
    assert picker_text == (
        "Language: English (automatic).\n\nChoose the language I use to reply to you:"
    )
    [picker] = [m for m in bot.tg.live_messages(CHAT) if m.reply_markup]
    assert captions(picker) == ["English", "Русский", "中文", "✅ Automatic"]

    answer = await press(bot, picker, "Русский")
    assert answer["text"] == "✅ Язык: Русский."
    await bot.tg.wait_for(lambda t: picker.edits == 1)
    assert picker.text == ("✅ Язык: Русский.\n\nВыберите язык, на котором я буду вам отвечать:")
    assert captions(picker) == ["English", "✅ Русский", "中文", "Автоматически"]
    # The app still says English; the choice wins.
    assert (await ask(bot, "/start")).startswith("Привет, Alice! Я ИИ-ассистент.")

    await bot.restart()
    assert (await ask(bot, "/start")).startswith("Привет, Alice! Я ИИ-ассистент.")

    assert await ask(bot, "/language") == (
        "Язык: Русский.\n\nВыберите язык, на котором я буду вам отвечать:"
    )
    picker = [m for m in bot.tg.live_messages(CHAT) if m.reply_markup][-1]
    answer = await press(bot, picker, "Автоматически")
    assert answer["text"] == "✅ Language: automatic (English)."
    assert (await ask(bot, "/start")).startswith(ENGLISH_START)


async def test_default_language_speaks_to_everyone_until_they_choose(
    harness: BotHarness,
) -> None:
    await harness.start(default_language="ru")
    assert (await ask(harness, "/start", language_code="en")).startswith("Привет, Alice!")
    # Every menu is in the owner's language, whatever the app's.
    assert menu(harness)["start"] == "Что умеет этот бот"
    assert menu(harness, "zh")["start"] == "Что умеет этот бот"

    await ask(harness, "/language", language_code="en")
    picker = [m for m in harness.tg.live_messages(CHAT) if m.reply_markup][-1]
    assert picker.text.startswith("Язык: Русский (автоматически).")
    answer = await press(harness, picker, "English", language_code="en")
    assert answer["text"] == "✅ Language: English."
    assert (await ask(harness, "/start", language_code="en")).startswith(ENGLISH_START)


async def test_in_groups_each_member_is_answered_in_their_language(
    harness: BotHarness,
) -> None:
    await harness.start(allowed_chat_ids=str(GROUP))
    where: dict[str, Any] = {"chat_id": GROUP, "chat_type": "supergroup", "chat_title": "Team"}
    harness.tg.user_message(
        user_id=IVAN, first_name="Ivan", text="/reset@test_llm_bot", language_code="ru", **where
    )
    await harness.wait_text(GROUP, "Начинаем новый разговор. Предыдущие сообщения забыты.")
    harness.tg.user_message(
        user_id=MEI, first_name="Mei", text="/reset@test_llm_bot", language_code="zh-CN", **where
    )
    await harness.wait_text(GROUP, "已开始新对话，之前的消息都已清除。")
    harness.tg.user_message(user_id=33, text="/reset@test_llm_bot", language_code="en", **where)
    await harness.wait_text(GROUP, "Started a new conversation. Previous messages are forgotten.")

    # Someone outside the allowed chats is refused in their own language.
    harness.tg.user_message(chat_id=MEI, user_id=MEI, text="你好", language_code="zh-TW")
    await harness.wait_text(MEI, "抱歉，这是一个私人机器人，你不在它的用户名单中。")
    assert harness.llm.chat_requests == []
