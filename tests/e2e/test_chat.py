"""End-to-end: conversations in private chats and groups through fake Telegram and backend."""

from __future__ import annotations

import asyncio

from bot.app import App
from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Disconnect, Error, Hang, Stream

CHAT = 1001
PARSE_ERROR = 'Bad Request: can\'t parse entities: Unsupported start tag "x" at byte offset 0'
GROUP = -100500


def history_of(body: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"]]


async def test_private_answer_streams_into_one_message_and_ends_formatted(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["Here is ", "**bold** ", "and `code`", " and *italics*."], delay=0.05))
    bot.tg.user_message(chat_id=CHAT, text="Hello!")
    msg = await bot.wait_text(CHAT, "Here is bold and code and italics.")
    # "typing…", or in a private chat's draft "Thinking…" and then the text growing.
    assert bot.tg.calls_to("sendChatAction", CHAT) or bot.tg.drafts(CHAT)
    assert len(bot.tg.messages(CHAT)) == 1
    kinds = {e["type"] for e in msg.entities}
    assert {"bold", "code", "italic"} <= kinds
    body = bot.llm.chat_requests[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {"role": "user", "content": "Hello!"}


async def test_each_chat_remembers_its_conversation_in_order(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["Paris."]), Stream(["About 2.1 million."]))
    bot.tg.user_message(chat_id=CHAT, text="Capital of France?")
    await bot.wait_text(CHAT, "Paris.")
    bot.tg.user_message(chat_id=CHAT, text="Population?")
    await bot.wait_text(CHAT, "About 2.1 million.")
    assert history_of(bot.llm.chat_requests[1])[1:] == [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "Population?"),
    ]
    # another chat does not see this conversation
    bot.tg.user_message(chat_id=CHAT + 1, text="Hi")
    await bot.wait_messages(CHAT + 1, lambda texts: len(texts) == 1 and "You said" in texts[0])
    assert history_of(bot.llm.chat_requests[2])[1:] == [("user", "Hi")]


async def test_history_survives_a_restart_with_the_same_database(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["Noted: your name is Ann."]))
    bot.tg.user_message(chat_id=CHAT, text="My name is Ann.")
    await bot.wait_text(CHAT, "Noted: your name is Ann.")
    await bot.restart()
    bot.llm.enqueue(Stream(["Your name is Ann."]))
    bot.tg.user_message(chat_id=CHAT, text="What is my name?")
    await bot.wait_text(CHAT, "Your name is Ann.")
    assert history_of(bot.llm.chat_requests[-1])[1:] == [
        ("user", "My name is Ann."),
        ("assistant", "Noted: your name is Ann."),
        ("user", "What is my name?"),
    ]
    # the update answered before the restart was confirmed, not answered twice
    assert len(bot.llm.chat_requests) == 2


async def test_reset_starts_a_new_conversation(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["First answer."]))
    bot.tg.user_message(chat_id=CHAT, text="First question")
    await bot.wait_text(CHAT, "First answer.")
    bot.tg.user_message(chat_id=CHAT, text="/reset")
    await bot.wait_messages(CHAT, lambda t: any("new conversation" in x for x in t))
    bot.llm.enqueue(Stream(["Fresh."]))
    bot.tg.user_message(chat_id=CHAT, text="Second question")
    await bot.wait_text(CHAT, "Fresh.")
    assert history_of(bot.llm.chat_requests[-1])[1:] == [("user", "Second question")]
    bot.tg.user_message(chat_id=CHAT, text="/new")
    await bot.wait_messages(CHAT, lambda t: sum("new conversation" in x for x in t) == 2)


async def test_start_help_and_command_menu(bot: BotHarness) -> None:
    commands = {c["command"] for c in bot.tg.commands_for()}
    assert {"start", "help", "reset", "new"} <= commands
    bot.tg.user_message(chat_id=CHAT, text="/start")
    await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    bot.tg.user_message(chat_id=CHAT, text="/help")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 2)
    assert "/reset" in texts[1] and "/help" in texts[1]
    assert bot.llm.chat_requests == []  # commands cost nothing


async def test_group_answers_only_when_addressed_and_replies_to_the_asker(
    bot: BotHarness,
) -> None:
    bot.tg.privacy_mode = False  # the bot itself must ignore what is not for it
    bot.tg.user_message(chat_id=GROUP, chat_type="supergroup", chat_title="Team", text="hi all")
    bot.tg.user_message(
        chat_id=GROUP, chat_type="supergroup", chat_title="Team", text="/help@other_bot"
    )
    bot.tg.user_message(
        chat_id=GROUP,
        chat_type="supergroup",
        text="hello",
        is_bot=True,
        user_id=777,
        first_name="OtherBot",
        username="other_bot",
    )
    bot.llm.enqueue(Stream(["Four."]))
    asked = bot.tg.user_message(
        chat_id=GROUP,
        chat_type="supergroup",
        chat_title="Team",
        text="@test_llm_bot what is 2+2?",
        user_id=42,
        first_name="Bob",
    )
    msg = await bot.wait_text(GROUP, "Four.")
    assert msg.reply_to_message_id == asked["message"]["message_id"]
    await bot.idle()
    assert len(bot.tg.messages(GROUP)) == 1
    body = bot.llm.chat_requests[0]
    assert body["messages"][-1]["content"] == "Bob: what is 2+2?"
    assert "group" in body["messages"][0]["content"]

    # a reply to the bot's message is addressed to it, and the model sees who spoke
    bot.llm.enqueue(Stream(["Eight."]))
    bot.tg.user_message(
        chat_id=GROUP,
        chat_type="supergroup",
        text="and 4+4?",
        user_id=43,
        first_name="Carol",
        reply_to_message_id=msg.message_id,
    )
    await bot.wait_text(GROUP, "Eight.")
    assert history_of(bot.llm.chat_requests[1])[1:] == [
        ("user", "Bob: what is 2+2?"),
        ("assistant", "Four."),
        ("user", "Carol: and 4+4?"),
    ]
    # commands addressed to this bot are answered
    bot.tg.user_message(chat_id=GROUP, chat_type="supergroup", text="/help@test_llm_bot")
    await bot.wait_messages(GROUP, lambda t: len(t) == 3 and "/reset" in t[2])


async def test_long_answer_continues_in_further_messages(bot: BotHarness) -> None:
    paragraphs = [f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 12 for i in range(40)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 3 * 4096
    bot.llm.enqueue(Stream([text[i : i + 500] for i in range(0, len(text), 500)], delay=0.01))
    bot.tg.user_message(chat_id=CHAT, text="Write a lot")
    texts = await bot.wait_messages(
        CHAT,
        lambda t: "Paragraph 39" in "".join(t) and t[-1].rstrip().endswith("amet"),
        within=30,
    )
    await bot.idle()
    texts = bot.texts(CHAT)
    assert len(texts) >= 4
    assert all(len(t) <= 4096 for t in texts)
    # nothing lost or duplicated, each message starts at a paragraph
    assert "\n\n".join(texts).split() == text.split()
    assert all(t.startswith("Paragraph") for t in texts)


async def test_cut_code_block_is_reopened_in_the_next_message(bot: BotHarness) -> None:
    code = "\n".join(f"print('line {i} of a long program')" for i in range(260))
    answer = f"Here you go:\n\n```python\n{code}\n```\n\nDone."
    bot.llm.enqueue(Stream([answer[i : i + 700] for i in range(0, len(answer), 700)]))
    bot.tg.user_message(chat_id=CHAT, text="code please")
    await bot.wait_messages(CHAT, lambda t: bool(t) and t[-1].endswith("Done."), within=30)
    messages = [m for m in bot.tg.messages(CHAT) if not m.deleted]
    assert len(messages) >= 2
    for m in messages:
        pre = [e for e in m.entities if e["type"] == "pre"]
        assert pre and pre[0].get("language") == "python", m.html[:200]
    shown = "\n".join(m.text for m in messages)
    assert shown.count("of a long program") == 260


async def test_broken_markdown_is_still_delivered(bot: BotHarness) -> None:
    answer = "Unclosed **bold and `code and a <tag> & an ampersand\n```py\nx = 1 < 2"
    bot.llm.enqueue(Stream([answer[:20], answer[20:]]))
    bot.tg.user_message(chat_id=CHAT, text="break it")
    await bot.wait_messages(CHAT, lambda t: bool(t) and "x = 1 < 2" in t[-1])
    await bot.idle()
    text = bot.texts(CHAT)[-1]
    assert "<tag> & an ampersand" in text


async def test_rejected_formatting_falls_back_to_plain_text(bot: BotHarness) -> None:
    bot.tg.fail_next(
        "sendMessage",
        status=400,
        description=PARSE_ERROR,
    )
    bot.tg.fail_next("editMessageText", status=400, description=PARSE_ERROR)
    bot.llm.enqueue(Stream(["Some **bold** text."]))
    bot.tg.user_message(chat_id=CHAT, text="hi")
    await bot.wait_text(CHAT, "Some **bold** text.")


async def test_flood_control_retry_after_is_honoured_and_final_text_complete(
    edit_bot: BotHarness,
) -> None:
    bot = edit_bot
    words = [f"word{i} " for i in range(60)]
    bot.llm.enqueue(Stream(words, delay=0.04))
    bot.tg.fail_next(
        "editMessageText",
        status=429,
        description="Too Many Requests: retry after 2",
        retry_after=2,
        chat_id=CHAT,
    )
    bot.tg.user_message(chat_id=CHAT, text="count")
    await bot.wait_text(CHAT, "".join(words).strip(), within=20)
    assert bot.tg.flood.violations == 0
    edits = [c for c in bot.tg.calls_to("editMessageText", CHAT)]
    rejected = [c for c in edits if c.status == 429]
    assert len(rejected) == 1
    after = [c for c in edits if c.at > rejected[0].at]
    assert after and after[0].at - rejected[0].at >= 2.0


async def test_not_modified_is_harmless(bot: BotHarness) -> None:
    bot.tg.fail_next(
        "editMessageText",
        status=400,
        description="Bad Request: message is not modified: specified new message content and "
        "reply markup are exactly the same as a current content and reply markup of the message",
        times=1,
    )
    words = [f"w{i} " for i in range(30)]
    bot.llm.enqueue(Stream(words, delay=0.05))
    bot.tg.user_message(chat_id=CHAT, text="go")
    await bot.wait_text(CHAT, "".join(words).strip(), within=15)


async def test_deleted_message_continues_in_a_new_one(edit_bot: BotHarness) -> None:
    bot = edit_bot
    words = [f"part{i} " for i in range(40)]
    bot.llm.enqueue(Stream(words, delay=0.08))
    bot.tg.user_message(chat_id=CHAT, text="go")
    await bot.tg.wait_for(lambda t: bool(t.messages(CHAT)))
    first = bot.tg.messages(CHAT)[0]
    bot.tg.delete_message(CHAT, first.message_id)
    await bot.tg.wait_for(
        lambda t: any(m.text.endswith("part39") for m in t.messages(CHAT) if not m.deleted),
        timeout=15,
    )
    live = [m for m in bot.tg.messages(CHAT) if not m.deleted]
    assert len(live) == 1
    assert live[0].text == "".join(words).strip()


async def test_backend_errors_are_explained_and_not_remembered(bot: BotHarness) -> None:
    bot.llm.enqueue(Error.server_error(), Error.server_error())
    bot.tg.user_message(chat_id=CHAT, text="one")
    await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "server error" in bot.texts(CHAT)[0]
    assert len(bot.llm.chat_requests) == 2  # retried once (LLM_MAX_RETRIES=1)

    bot.llm.enqueue(Error.invalid_api_key())
    bot.tg.user_message(chat_id=CHAT, text="two")
    await bot.wait_messages(CHAT, lambda t: len(t) == 2)
    assert "API key" in bot.texts(CHAT)[1]
    assert len(bot.llm.chat_requests) == 3  # 401 is not retried

    bot.llm.enqueue(Stream(["ok"]))
    bot.tg.user_message(chat_id=CHAT, text="three")
    await bot.wait_text(CHAT, "ok")
    assert history_of(bot.llm.chat_requests[-1])[1:] == [("user", "three")]


async def test_midstream_disconnect_keeps_partial_text_and_says_so(bot: BotHarness) -> None:
    bot.llm.enqueue(Disconnect(["The answer ", "starts here"], delay=0.05))
    bot.tg.user_message(chat_id=CHAT, text="tell me")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 2)
    assert texts[0] == "The answer starts here"
    assert "interrupted" in texts[1]
    bot.llm.enqueue(Stream(["continuing"]))
    bot.tg.user_message(chat_id=CHAT, text="go on")
    await bot.wait_text(CHAT, "continuing")
    assert history_of(bot.llm.chat_requests[-1])[1:] == [
        ("user", "tell me"),
        ("assistant", "The answer starts here"),
        ("user", "go on"),
    ]


async def test_hanging_backend_times_out_with_a_clear_message(harness: BotHarness) -> None:
    await harness.start(llm_first_token_timeout=1.0, llm_idle_timeout=1.0, llm_max_retries=0)
    harness.llm.enqueue(Hang())
    harness.tg.user_message(chat_id=CHAT, text="anyone?")
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 1, within=10)
    assert "too long" in texts[0]


async def test_usage_and_model_answer_while_the_chat_waits_for_the_backend(
    harness: BotHarness,
) -> None:
    await harness.start(llm_first_token_timeout=20.0, llm_max_retries=0)
    harness.llm.enqueue(Hang())
    harness.tg.user_message(chat_id=CHAT, text="a slow question")
    await harness.llm.wait_for_requests(1)
    harness.tg.user_message(chat_id=CHAT, text="/usage")
    harness.tg.user_message(chat_id=CHAT, text="/model")
    # Both answered while the question still waits for its first token (20 s away).
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 2, within=5)
    assert any(t.startswith("Your usage") for t in texts)
    assert any("gpt-4o-mini" in t for t in texts)
    # The conversation itself stays in order: a new message waits for the slow one.
    harness.tg.user_message(chat_id=CHAT, text="next")
    await asyncio.sleep(0.5)
    assert len(harness.llm.chat_requests) == 1


async def test_concurrent_chats_are_served_at_the_same_time(bot: BotHarness) -> None:
    bot.llm.set_default(lambda body: Stream([f"chunk{i} " for i in range(10)], delay=0.1))
    chats = [CHAT + i for i in range(8)]
    for chat in chats:
        bot.tg.user_message(chat_id=chat, text="hi")
    expected = "".join(f"chunk{i} " for i in range(10)).strip()
    for chat in chats:
        await bot.wait_text(chat, expected, within=20)
    # every chat's request reached the backend before the first answer had finished streaming
    streams = bot.llm.requests_to("/v1/chat/completions")
    assert len(streams) == len(chats)
    first_done = min(r.finished_at for r in streams if r.finished_at is not None)
    assert all(r.received_at < first_done for r in streams)
    assert bot.tg.flood.violations == 0


async def test_second_message_waits_for_the_first_answer(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["first ", "answer"], delay=0.3), Stream(["second answer"]))
    bot.tg.user_message(chat_id=CHAT, text="q1")
    bot.tg.user_message(chat_id=CHAT, text="q2")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 2 and t[1] == "second answer")
    assert texts[0] == "first answer"
    assert history_of(bot.llm.chat_requests[1])[1:] == [
        ("user", "q1"),
        ("assistant", "first answer"),
        ("user", "q2"),
    ]


async def test_access_is_restricted_to_allowed_users_and_owners(harness: BotHarness) -> None:
    await harness.start(allowed_user_ids="5", owner_ids="9")
    harness.tg.user_message(chat_id=7, user_id=7, text="let me in")
    texts = await harness.wait_messages(7, lambda t: len(t) == 1)
    assert "private" in texts[0]
    harness.tg.user_message(chat_id=5, user_id=5, text="hi")
    await harness.wait_messages(5, lambda t: len(t) == 1 and "You said" in t[0])
    harness.tg.user_message(chat_id=9, user_id=9, text="owner here")
    await harness.wait_messages(9, lambda t: len(t) == 1 and "You said" in t[0])
    assert len(harness.llm.chat_requests) == 2  # the refused user cost nothing


async def test_non_text_messages_get_a_note_and_edits_are_not_answered(bot: BotHarness) -> None:
    bot.tg.user_message(
        chat_id=CHAT,
        sticker={
            "file_id": "x",
            "file_unique_id": "y",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
        },
    )
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "text" in texts[0]
    bot.llm.enqueue(Stream(["answer"]))
    sent = bot.tg.user_message(chat_id=CHAT, text="question")
    await bot.wait_text(CHAT, "answer")
    bot.tg.edited_message(
        chat_id=CHAT, message_id=sent["message"]["message_id"], text="question, edited"
    )
    bot.tg.user_message(chat_id=CHAT, text="   ")
    await bot.idle()
    await asyncio.sleep(0.3)
    assert len(bot.llm.chat_requests) == 1
    assert len(bot.texts(CHAT)) == 2


async def test_unexpected_failure_is_reported_not_silent(harness: BotHarness) -> None:
    class BrokenService:
        async def reply(self, **_: object) -> None:
            raise RuntimeError("boom")

    def break_chat(app: App) -> None:
        app.dispatcher["chat_service"] = BrokenService()

    await harness.start(prepare=break_chat)
    harness.tg.user_message(chat_id=CHAT, text="hello")
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "went wrong" in texts[0]


async def test_bot_waits_for_telegram_to_come_back_at_start(harness: BotHarness) -> None:
    harness.tg.fail_next("getMe", status=502, description="Bad Gateway", times=2)
    await harness.start()
    harness.llm.enqueue(Stream(["up"]))
    harness.tg.user_message(chat_id=CHAT, text="hi")
    await harness.wait_text(CHAT, "up")


async def test_network_errors_towards_telegram_are_retried(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["alpha ", "beta ", "gamma"], delay=0.3))
    bot.tg.disconnect_next("sendMessage", times=1)
    bot.tg.disconnect_next("editMessageText", times=3)
    bot.tg.user_message(chat_id=CHAT, text="go")
    await bot.wait_text(CHAT, "alpha beta gamma", within=20)
    await bot.idle()
    assert bot.texts(CHAT) == ["alpha beta gamma"]
