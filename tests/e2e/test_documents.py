"""End-to-end: text files sent to the bot, downloaded through getFile and answered."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import BotHarness
from tests.fakes.openai import Stream
from tests.fakes.pdf import encrypt_pdf, make_pdf, text_content

CHAT = 3001
GROUP = -100300


def send_file(
    bot: BotHarness,
    data: bytes,
    *,
    name: str,
    mime: str,
    caption: str | None = None,
    chat_id: int = CHAT,
    declared_size: int | None = None,
    **fields: Any,
) -> None:
    file_id = bot.tg.add_file(data, file_path=f"documents/{name}")
    document = {
        "file_id": file_id,
        "file_unique_id": f"U{file_id}",
        "file_name": name,
        "mime_type": mime,
        "file_size": len(data) if declared_size is None else declared_size,
    }
    extra: dict[str, Any] = {"document": document}
    if caption is not None:
        extra["caption"] = caption
    bot.tg.user_message(chat_id=chat_id, **fields, **extra)


async def test_a_text_file_is_read_and_answered_with_its_caption(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["Two rows."]))
    csv = "name;city\r\nАнна;Москва\r\nBob;Paris\r\n".encode("utf-8-sig")  # as Excel saves
    send_file(bot, csv, name="people.csv", mime="text/csv", caption="How many rows?")
    await bot.wait_text(CHAT, "Two rows.")
    asked = bot.llm.chat_requests[0]["messages"][-1]["content"]
    assert asked.startswith("File: people.csv\n```\nname;city\nАнна;Москва\nBob;Paris\n```")
    assert asked.endswith("How many rows?")
    # The file's text is the user's turn in history.
    bot.llm.enqueue(Stream(["Paris."]))
    bot.tg.user_message(chat_id=CHAT, text="Where does Bob live?")
    await bot.wait_text(CHAT, "Paris.")
    assert "Bob;Paris" in bot.llm.chat_requests[1]["messages"][1]["content"]


async def test_binary_and_oversized_files_are_refused_without_a_backend_call(
    harness: BotHarness,
) -> None:
    await harness.start(document_max_bytes=1024)
    send_file(harness, b"PK\x03\x04" + bytes(200), name="notes.txt", mime="text/plain")
    send_file(harness, b"x" * 2000, name="big.log", mime="text/plain")
    send_file(harness, b"MZ\x90\x00", name="setup.exe", mime="application/octet-stream")
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 3)
    assert "not this file" in texts[0]
    assert "too large" in texts[1] and "1 KB" in texts[1]
    assert "not this file" in texts[2]
    assert not harness.llm.chat_requests
    # The oversized file was refused from its declared size, before any download.
    assert len(harness.tg.calls_to("getFile")) == 1


async def test_a_file_larger_than_declared_is_cut_off_at_the_limit(harness: BotHarness) -> None:
    await harness.start(document_max_bytes=1024)
    # The message claims 10 bytes; the download brings 5,000 and stops at the limit.
    send_file(harness, b"y" * 5000, name="small.txt", mime="text/plain", declared_size=10)
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 1)
    assert "too large" in texts[0]
    assert len(harness.tg.calls_to("getFile")) == 1
    assert not harness.llm.chat_requests


async def test_a_long_file_is_cut_to_the_budget_with_a_note(harness: BotHarness) -> None:
    await harness.start(history_token_budget=2000)
    harness.llm.enqueue(Stream(["Seen."]))
    text = "".join(f"line {i} of a long log\n" for i in range(3000))
    send_file(harness, text.encode(), name="app.log", mime="text/plain")
    await harness.wait_text(CHAT, "Seen.")
    asked = harness.llm.chat_requests[0]["messages"][-1]["content"]
    assert "line 0 of a long log" in asked and "line 2999" not in asked
    assert "trimmed" in asked


async def test_a_file_in_a_group_needs_to_be_addressed(bot: BotHarness) -> None:
    group = {"chat_type": "supergroup", "chat_title": "Team"}
    send_file(bot, b"hello", name="a.txt", mime="text/plain", chat_id=GROUP, **group)
    bot.llm.enqueue(Stream(["It says hello."]))
    send_file(
        bot,
        b"hello",
        name="b.txt",
        mime="text/plain",
        caption="@test_llm_bot what does it say?",
        chat_id=GROUP,
        **group,
    )
    await bot.wait_text(GROUP, "It says hello.")
    await bot.idle()
    assert len(bot.llm.chat_requests) == 1
    assert "File: b.txt" in bot.llm.chat_requests[0]["messages"][-1]["content"]


async def test_a_pdf_is_read_by_its_text_and_a_locked_one_is_refused(bot: BotHarness) -> None:
    bot.llm.enqueue(Stream(["It is a report."]))
    report = make_pdf(text_content("Quarterly report", "Revenue grew"), text_content("Page two"))
    send_file(bot, report, name="report.pdf", mime="application/pdf", caption="Summarise")
    await bot.wait_text(CHAT, "It is a report.")
    asked = bot.llm.chat_requests[0]["messages"][-1]["content"]
    assert asked.startswith("File: report.pdf\n```\nQuarterly report\nRevenue grew\n\nPage two")
    assert asked.endswith("Summarise")
    locked = encrypt_pdf(report, user_password="secret", owner_password="owner")
    send_file(bot, locked, name="locked.pdf", mime="application/pdf")
    texts = await bot.wait_messages(CHAT, lambda t: len(t) == 2)
    assert "password" in texts[1]
    await bot.idle()
    assert len(bot.llm.chat_requests) == 1


async def test_pdfs_have_their_own_size_limit(harness: BotHarness) -> None:
    await harness.start(document_max_bytes=1024, pdf_max_bytes=2048)
    harness.llm.enqueue(Stream(["Read."]))
    report = make_pdf(
        text_content("Short"), text_content("x" * 200)
    )  # over DOCUMENT_MAX_BYTES, within PDF's
    assert 1024 < len(report) < 2048
    send_file(harness, report, name="a.pdf", mime="application/pdf")
    await harness.wait_text(CHAT, "Read.")
    send_file(harness, report + b"%" * 2048, name="b.pdf", mime="application/pdf")
    texts = await harness.wait_messages(CHAT, lambda t: len(t) == 2)
    assert "PDFs of up to 2 KB" in texts[1]
