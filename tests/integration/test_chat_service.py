"""The chat service on a real SQLite file and a fake backend over HTTP, with a recording sink."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db import create_sessionmaker
from bot.db.repositories import ChatRepository, NewTurn, TurnRepository
from bot.llm.backends import BackendHealth, BackendSpec
from bot.llm.client import LLMClient, RetryPolicy
from bot.llm.router import Backend, BackendRouter
from bot.services.chat import ChatConfig, ChatRequest, ChatService
from bot.services.directory import Directory
from bot.services.models import ModelService
from bot.services.tokens import TokenCounter
from tests.fakes.openai import Disconnect, Error, FakeLLM, Stream
from tests.fakes.sink import RecordingSink

SPEC = BackendSpec(name="backend", base_url="http://127.0.0.1/v1")


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key=None) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def sessions(sqlite_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(sqlite_engine)


def make_service(
    sessions: async_sessionmaker[AsyncSession],
    llm: FakeLLM,
    http: httpx.AsyncClient,
    directory: Directory | None = None,
    **config: object,
) -> ChatService:
    values: dict[str, object] = {
        "default_model": "gpt-4o-mini",
        "system_prompt": "You are helpful.",
        "max_tokens": 100,
        "temperature": None,
        "history_token_budget": 10_000,
        "context_window": 32_000,
        **config,
    }
    client = LLMClient(
        http=http, base_url=llm.base_url, api_key=None, retry=RetryPolicy(max_retries=0)
    )
    return ChatService(
        sessions=sessions,
        llm=client,
        tokens=TokenCounter(),
        config=ChatConfig(**values),  # type: ignore[arg-type]
        directory=directory,
    )


def request(text_: str, *, message_id: int = 1, chat_id: int = 10) -> ChatRequest:
    return ChatRequest(
        chat_id=chat_id,
        chat_type="private",
        chat_title=None,
        user_id=7,
        user_full_name="Ann",
        username="ann",
        language_code="en",
        text=text_,
        message_id=message_id,
    )


async def usage_rows(sessions: async_sessionmaker[AsyncSession]) -> list[dict[str, object]]:
    async with sessions() as s:
        rows = await s.execute(
            text(
                "select status, prompt_tokens, completion_tokens, estimated, finish_reason "
                "from usage_records order by id"
            )
        )
        return [dict(r._mapping) for r in rows]


async def test_history_is_trimmed_to_the_budget_newest_first(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http, history_token_budget=300, max_tokens=None)
    counter = TokenCounter()
    async with sessions() as s, s.begin():
        await s.execute(
            text(
                "insert into chats (id, type, created_at, updated_at) values (10, 'private', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        turns = []
        for i in range(60):
            content = f"turn number {i} " + "blah " * 15
            role = "user" if i % 2 == 0 else "assistant"
            turns.append(NewTurn(role=role, content=content, tokens=counter.count(content)))
        await TurnRepository(s).add(chat_id=10, turns=turns)
    llm.enqueue(Stream(["ok"]))
    await service.reply(request=request("newest question"), sink=RecordingSink())
    messages = llm.chat_requests[0]["messages"]
    assert messages[0]["role"] == "system"
    assert messages[1]["role"] == "user"  # history never starts with an assistant turn
    assert messages[-1]["content"] == "newest question"
    assert messages[-2]["content"].startswith("turn number 59 ")
    total = sum(counter.count(m["content"]) + 4 for m in messages) + 3
    assert total <= 300
    assert len(messages) < 30  # the oldest turns were dropped


async def test_message_too_long_for_the_budget_costs_nothing(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http, history_token_budget=100)
    sink = RecordingSink()
    outcome = await service.reply(request=request("word " * 500), sink=sink)
    assert outcome.status == "rejected"
    assert sink.failure is not None and "too long" in sink.failure
    assert llm.chat_requests == []


async def test_usage_is_recorded_once_real_or_estimated(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http)
    llm.enqueue(
        Stream(["Hello ", "there"], usage="separate", prompt_tokens=11, completion_tokens=2),
        Stream(["Zero ", "usage"], usage="zeros"),
        Error.server_error(),
        Disconnect(["Half an "]),
    )
    for i in range(4):
        await service.reply(request=request(f"q{i}", message_id=i + 1), sink=RecordingSink())
    rows = await usage_rows(sessions)
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "interrupted"]
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"], rows[0]["estimated"]) == (
        11,
        2,
        False,
    )
    assert rows[1]["estimated"] and rows[1]["prompt_tokens"] > 0
    assert rows[1]["completion_tokens"] == 2  # "Zero usage"
    assert rows[3]["estimated"] and rows[3]["completion_tokens"] > 0


async def test_redelivered_message_is_not_answered_twice(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http)
    llm.enqueue(Stream(["once"]))
    await service.reply(request=request("hi", message_id=5), sink=RecordingSink())
    outcome = await service.reply(request=request("hi", message_id=5), sink=RecordingSink())
    assert outcome.status == "duplicate"
    assert len(llm.chat_requests) == 1


async def test_context_length_error_tells_the_user_to_reset(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http)
    llm.enqueue(Error.context_length_exceeded(4096, 5000))
    sink = RecordingSink()
    await service.reply(request=request("hi"), sink=sink)
    assert sink.failure == (
        "The conversation is too long for the model. Use /reset to start a new one and try again."
    )


async def test_length_finish_reason_is_flagged(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http)
    llm.enqueue(Stream(["cut"], finish_reason="length"))
    sink = RecordingSink()
    await service.reply(request=request("hi"), sink=sink)
    assert sink.finished and sink.note == (
        "⚠️ The answer was cut off: it reached the maximum answer length (MAX_TOKENS)."
    )


async def test_an_answer_the_database_refuses_to_store_is_delivered_with_a_warning(
    sessions: async_sessionmaker[AsyncSession],
    llm: FakeLLM,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(sessions, llm, http)
    # The file refuses every new turn, as a full disk or a broken file would.
    async with sessions() as s, s.begin():
        await s.execute(
            text(
                "create trigger refuse before insert on turns "
                "begin select raise(abort, 'database or disk is full'); end"
            )
        )
    llm.enqueue(Stream(["The ", "answer"]))
    sink = RecordingSink()
    outcome = await service.reply(request=request("hi"), sink=sink)
    assert outcome.status == "ok"
    assert sink.finished and "".join(sink.pushed) == "The answer"
    assert sink.note is not None and "could not be saved" in sink.note
    assert await usage_rows(sessions) == []  # the transaction was rolled back as a whole
    # The owner's log names the cause and keeps the usage, but not the conversation.
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    logged = record.getMessage()
    assert "database or disk is full" in logged and "prompt_tokens=" in logged
    assert "The answer" not in logged and "INSERT" not in logged


async def test_a_model_chosen_while_a_new_chats_first_answer_streams_is_kept(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    # The new chat's row is written with its first turn, after the answer; a /model choice made
    # meanwhile (as ModelService stores it) must survive that write and the shared directory.
    directory = Directory()
    service = make_service(sessions, llm, http, directory=directory)

    class ChoosesAModel(RecordingSink):
        async def start(self) -> None:
            async with sessions() as session, session.begin():
                chat = await directory.chat(session, chat_id=10, type="private", title=None)
                await ChatRepository(session).set_model(chat_id=10, model="chosen-model")
            directory.remember(dataclasses.replace(chat, model="chosen-model"))

    llm.enqueue(Stream(["first"]), Stream(["second"]))
    await service.reply(request=request("hi", message_id=1), sink=ChoosesAModel())
    await service.reply(request=request("again", message_id=2), sink=RecordingSink())

    assert [r["model"] for r in llm.chat_requests] == ["gpt-4o-mini", "chosen-model"]
    async with sessions() as session:
        stored = await ChatRepository(session).get(chat_id=10)
    assert stored is not None and stored.model == "chosen-model"


async def test_a_model_the_backend_no_longer_has_is_answered_with_the_ones_it_offers(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    llm.models = ["gpt-4o-mini", "gpt-4o", "dall-e-3"]
    client = LLMClient(http=http, base_url=llm.base_url, api_key=None)
    now = [0.0]
    models = ModelService(
        sessions=sessions, llm=client, default_model="gpt-4o-mini", clock=lambda: now[0]
    )
    await models.catalogue()  # cached while the backend still had the model
    llm.models = ["gpt-4o", "dall-e-3"]
    now[0] += 60  # within the cache's five minutes
    llm.enqueue(Error.model_not_found("gpt-4o-mini"))
    service = ChatService(
        sessions=sessions,
        llm=BackendRouter([Backend(SPEC, client, BackendHealth(SPEC))], first_token_timeout=10.0),
        tokens=TokenCounter(),
        config=ChatConfig(
            default_model="gpt-4o-mini",
            system_prompt="",
            max_tokens=None,
            temperature=None,
            history_token_budget=1000,
            context_window=8000,
        ),
        offered_instead=models.offered_instead,
    )
    sink = RecordingSink()

    await service.reply(request=request("hi"), sink=sink)

    assert sink.failure is not None
    assert "“gpt-4o-mini” is not available" in sink.failure
    # The list was loaded again (the cached one still offered the model), without the image
    # model and without the missing one.
    assert sink.failure.endswith("Models on offer: gpt-4o")
    assert llm.models_requests == 2


async def test_a_context_the_backend_finds_too_long_is_sent_again_with_half_the_history(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http, history_token_budget=2000, max_tokens=None)
    llm.enqueue(*(Stream([f"answer {i}"]) for i in range(10)))
    for i in range(10):
        question = f"question {i} " + "word " * 200
        await service.reply(request=request(question, message_id=i + 1), sink=RecordingSink())
    # The backend counts tokens its own way and refuses what the bot thought would fit.
    llm.enqueue(Error.context_length_exceeded(1000, 1400), Stream(["Short enough now."]))
    sink = RecordingSink()

    outcome = await service.reply(request=request("And now?", message_id=50), sink=sink)

    assert outcome.status == "ok"
    assert "".join(sink.pushed) == "Short enough now."
    refused, sent = llm.chat_requests[-2:]
    assert len(sent["messages"]) < len(refused["messages"])
    assert sent["messages"][-1]["content"] == "And now?"


class StoppingSink(RecordingSink):
    """Presses Stop once `after` pieces of the answer have arrived."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def push(self, text: str) -> None:
        super().push(text)
        if len(self.pushed) == self.after:
            self.stop_requested.set()


async def test_a_stopped_answer_is_kept_marked_and_its_usage_estimated(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http)
    llm.enqueue(Stream([f"w{i} " for i in range(50)], delay=0.05), Stream(["ok"]))
    sink = StoppingSink(after=3)
    outcome = await service.reply(request=request("count", message_id=1), sink=sink)
    assert outcome.status == "stopped"
    assert sink.mark is not None and "stopped" in sink.mark
    assert outcome.answer == "w0 w1 w2 "
    await asyncio.sleep(0.2)
    assert llm.requests[0].disconnected  # the provider was told to stop
    [row] = await usage_rows(sessions)
    assert row["status"] == "interrupted" and row["estimated"]
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    await service.reply(request=request("next", message_id=2), sink=RecordingSink())
    history = [(m["role"], m["content"]) for m in llm.chat_requests[1]["messages"][1:]]
    assert history == [("user", "count"), ("assistant", "w0 w1 w2 "), ("user", "next")]


async def test_a_stop_before_the_first_token_stores_no_turn(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http)
    llm.enqueue(Stream(["late"], first_delay=5))
    sink = RecordingSink()
    sink.stop_requested.set()
    outcome = await service.reply(request=request("count"), sink=sink)
    assert outcome.status == "stopped"
    assert sink.failure is not None and "Stopped" in sink.failure
    async with sessions() as s:
        assert (await s.scalar(text("select count(*) from turns"))) == 0


async def test_retry_replaces_only_the_last_answer(
    sessions: async_sessionmaker[AsyncSession], llm: FakeLLM, http: httpx.AsyncClient
) -> None:
    service = make_service(sessions, llm, http)
    llm.enqueue(Stream(["A1"]), Stream(["A2"]), Stream(["A2 again"]))
    await service.reply(request=request("Q1", message_id=1), sink=RecordingSink())
    await service.reply(request=request("Q2", message_id=2), sink=RecordingSink())
    outcome = await service.retry(request=request("", message_id=3), sink=RecordingSink())
    assert outcome.status == "ok"
    retried = [(m["role"], m["content"]) for m in llm.chat_requests[2]["messages"][1:]]
    assert retried == [("user", "Q1"), ("assistant", "A1"), ("user", "Q2")]
    async with sessions() as s:
        turns = await TurnRepository(s).recent(chat_id=10, limit=10)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "Q1"),
        ("assistant", "A1"),
        ("user", "Q2"),
        ("assistant", "A2 again"),
    ]
    assert len(await usage_rows(sessions)) == 3
