"""End-to-end: voice messages and audio files are transcribed by the backend and answered."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Error, Stream, Transcription

CHAT = 5001
GROUP = -100500
GROUP_FIELDS: dict[str, Any] = {"chat_type": "supergroup", "chat_title": "Team"}
OGG = b"OggS\x00\x02" + bytes(range(256)) * 8  # what a voice message's file starts with


def send_voice(
    bot: BotHarness, data: bytes = OGG, *, chat_id: int = CHAT, duration: int = 3, **fields: Any
) -> None:
    file_id = bot.tg.add_file(data, file_path="voice/file")
    voice = {
        "file_id": file_id,
        "file_unique_id": f"U{file_id}",
        "duration": duration,
        "mime_type": "audio/ogg",
        "file_size": len(data),
    }
    bot.tg.user_message(chat_id=chat_id, voice=voice, **fields)


async def test_a_voice_message_is_transcribed_shown_and_answered(bot: BotHarness) -> None:
    bot.llm.enqueue_transcription(Transcription(text="What is the capital of France?", seconds=4))
    bot.llm.enqueue(Stream(["Paris."]))
    send_voice(bot)
    await bot.wait_text(CHAT, "Paris.")
    texts = bot.texts(CHAT)
    assert texts[0] == "🎤 “What is the capital of France?”"
    # The request as OpenAI documents it: multipart with the file and the model.
    [sent] = bot.llm.transcription_requests()
    assert sent.model == "whisper-1"
    assert sent.filename == "voice.ogg" and sent.content_type == "audio/ogg"
    assert sent.data == OGG
    assert bot.llm.chat_requests[0]["messages"][-1]["content"] == "What is the capital of France?"
    # History keeps the words.
    bot.llm.enqueue(Stream(["About 2 million."]))
    bot.tg.user_message(chat_id=CHAT, text="And its population?")
    await bot.wait_text(CHAT, "About 2 million.")
    history = bot.llm.chat_requests[1]["messages"]
    assert history[1] == {"role": "user", "content": "What is the capital of France?"}


async def test_a_long_transcript_is_shown_short_but_answered_whole(bot: BotHarness) -> None:
    words = "word " * 200
    bot.llm.enqueue_transcription(words.strip())
    bot.llm.enqueue(Stream(["Many words."]))
    send_voice(bot)
    await bot.wait_text(CHAT, "Many words.")
    shown = bot.texts(CHAT)[0]
    assert len(shown) < 320 and shown.endswith("…”")
    assert bot.llm.chat_requests[0]["messages"][-1]["content"] == words.strip()


async def test_a_backend_without_transcription_is_named_once_an_hour(
    harness: BotHarness,
) -> None:
    harness.llm.transcriptions = False  # answers 404, like Ollama or a proxy without audio
    await harness.start()
    send_voice(harness)
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "no speech recognition" in texts[0]
    send_voice(harness)
    await harness.idle()
    await harness.tg.wait_for(lambda t: len(harness.llm.transcription_requests()) == 0)
    assert len(harness.texts(CHAT)) == 1  # told once, not again within the hour
    assert not harness.llm.chat_requests


async def test_transcription_off_is_said_without_downloading(harness: BotHarness) -> None:
    await harness.start(transcribe_model="")
    send_voice(harness)
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "no speech recognition" in texts[0]
    assert not harness.tg.calls_to("getFile")


async def test_a_failed_transcription_is_explained_and_nothing_is_answered(
    bot: BotHarness,
) -> None:
    bot.llm.enqueue_transcription(Error.server_error(), Error.server_error())
    send_voice(bot)
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "could not transcribe" in texts[0]
    await bot.idle()
    assert not bot.llm.chat_requests


async def test_in_a_group_a_voice_message_must_reply_to_the_bot(bot: BotHarness) -> None:
    send_voice(bot, chat_id=GROUP, **GROUP_FIELDS)  # not addressed: left alone
    bot.llm.enqueue(Stream(["Hi all."]))
    bot.tg.user_message(chat_id=GROUP, text="@test_llm_bot hello", **GROUP_FIELDS)
    answer = await bot.wait_text(GROUP, "Hi all.")
    bot.llm.enqueue_transcription("Tell a joke")
    bot.llm.enqueue(Stream(["A joke."]))
    send_voice(bot, chat_id=GROUP, reply_to_message_id=answer.message_id, **GROUP_FIELDS)
    await bot.wait_text(GROUP, "A joke.")
    assert len(bot.llm.transcription_requests()) == 1
    assert bot.llm.chat_requests[-1]["messages"][-1]["content"] == "Alice: Tell a joke"


async def test_transcription_costs_count_against_the_budget(harness: BotHarness) -> None:
    # 60 s of audio at $1 a minute spends the whole daily budget of $1.
    await harness.start(price_per_audio_minute=1.0, user_daily_cost=1.0)
    harness.llm.enqueue_transcription(Transcription(text="Hello", seconds=60))
    send_voice(harness, duration=60)
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 2)
    assert texts[0] == "🎤 “Hello”"
    assert "daily limit of $1.00" in texts[1]  # the words were heard, the answer is over budget
    send_voice(harness)
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 3)
    assert "daily limit of $1.00" in texts[2]
    # Refused before the download and before the backend.
    assert len(harness.tg.calls_to("getFile")) == 1
    assert len(harness.llm.transcription_requests()) == 1
    assert not harness.llm.chat_requests
