"""The router over two fake backends on real HTTP: one deadline, fallback, cooldowns, removal."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from bot.i18n import use_locale
from bot.llm.backends import BackendHealth, BackendSpec
from bot.llm.client import LLMClient, LLMTimeouts
from bot.llm.errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMNoBackendError,
    LLMNotFoundError,
    LLMServerError,
    LLMTimeoutError,
)
from bot.llm.policy import RetryPolicy
from bot.llm.router import Backend, BackendRouter
from bot.llm.types import ChatMessage, StreamEnd, TextDelta
from bot.services.chat import describe_error
from tests.fakes.openai import Error, FakeLLM, Hang, Stream, StreamError

MESSAGES = [ChatMessage("user", "Hello?")]


@pytest.fixture
async def primary() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key="sk-primary") as fake:
        yield fake


@pytest.fixture
async def fallback() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(api_key="sk-fallback") as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def router(
    http: httpx.AsyncClient,
    *backends: tuple[str, str, str | None],
    first_token_timeout: float = 5.0,
    retries: int = 1,
    notices: list[tuple[str, str]] | None = None,
    fallback_model: str | None = None,
) -> BackendRouter:
    routed = []
    for index, (name, url, key) in enumerate(backends):
        spec = BackendSpec(
            name=name, base_url=url, api_key=key, model=fallback_model if index else None
        )
        client = LLMClient(
            http=http,
            base_url=url,
            api_key=key,
            timeouts=LLMTimeouts(connect=2.0, first_token=first_token_timeout),
        )
        routed.append(Backend(spec, client, BackendHealth(spec)))

    async def notice(spec: BackendSpec, reason: str) -> None:
        assert notices is not None
        notices.append((spec.name, reason))

    result = BackendRouter(
        routed,
        first_token_timeout=first_token_timeout,
        retry=RetryPolicy(max_retries=retries, base_delay=0.05, max_delay=0.1),
    )
    if notices is not None:
        result.set_owner_notice(notice)
    return result


async def answer(r: BackendRouter) -> tuple[str, StreamEnd]:
    text: list[str] = []
    end: StreamEnd | None = None
    async for event in r.stream_chat(model="gpt-4o-mini", messages=MESSAGES):
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            end = event
    assert end is not None
    return "".join(text), end


async def failure(r: BackendRouter) -> tuple[str, LLMError]:
    text: list[str] = []
    with pytest.raises(LLMError) as caught:
        async for event in r.stream_chat(model="gpt-4o-mini", messages=MESSAGES):
            if isinstance(event, TextDelta):
                text.append(event.text)
    return "".join(text), caught.value


def both(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM, **kwargs: object
) -> BackendRouter:
    return router(
        http,
        ("primary", primary.base_url, "sk-primary"),
        ("fallback", fallback.base_url, "sk-fallback"),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_a_hanging_primary_is_abandoned_in_time_for_the_fallback(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(Hang())
    fallback.enqueue(Stream(["From ", "the fallback."]))
    r = both(http, primary, fallback, first_token_timeout=2.0)
    started = asyncio.get_running_loop().time()

    text, end = await answer(r)

    # The primary had half of the 2 s; the fallback's answer started within the deadline.
    assert asyncio.get_running_loop().time() - started < 2.0 + 0.5
    assert text == "From the fallback."
    assert (end.backend, end.model) == ("fallback", "gpt-4o-mini")
    assert len(primary.chat_requests) == 1


async def test_two_hanging_backends_fail_within_one_deadline(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(Hang())
    fallback.enqueue(Hang())
    r = both(http, primary, fallback, first_token_timeout=1.5, retries=3)
    started = asyncio.get_running_loop().time()

    _, error = await failure(r)

    assert isinstance(error, LLMTimeoutError)
    assert asyncio.get_running_loop().time() - started < 1.5 + 0.5
    assert error.backend == "primary"  # the user hears of the primary's failure


async def test_a_rate_limited_backend_is_skipped_by_every_chat_until_it_cools_down(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(Error.rate_limited(retry_after=30))
    fallback.enqueue(Stream(["one"]), Stream(["two"]))
    r = both(http, primary, fallback)

    assert (await answer(r))[0] == "one"
    assert (await answer(r))[0] == "two"

    assert len(primary.chat_requests) == 1
    assert r.primary.health.state() == "cooling"
    assert 25 < r.primary.health.cooling_left() <= 30


async def test_a_refused_key_takes_the_backend_out_and_tells_the_owner_once(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    notices: list[tuple[str, str]] = []
    primary.enqueue(Error.invalid_api_key("sk-primary"))
    fallback.enqueue(Stream(["one"]), Stream(["two"]))
    r = both(http, primary, fallback, notices=notices)

    assert (await answer(r))[0] == "one"
    assert (await answer(r))[0] == "two"
    await asyncio.sleep(0)  # the notice runs in a task of its own

    assert len(primary.chat_requests) == 1
    assert [name for name, _ in notices] == ["primary"]
    assert "Incorrect API key provided" in notices[0][1]
    assert "sk-primary" not in notices[0][1]
    assert r.primary.health.state() == "out"


async def test_a_primary_refusing_connections_falls_back_at_once(
    http: httpx.AsyncClient, fallback: FakeLLM
) -> None:
    fallback.enqueue(Stream(["Still here."]))
    r = router(
        http, ("primary", closed_port_url(), None), ("fallback", fallback.base_url, "sk-fallback")
    )

    text, end = await answer(r)

    assert text == "Still here."
    assert end.backend == "fallback"


async def test_a_request_the_backend_rejects_is_not_sent_elsewhere(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(Error.context_length_exceeded(limit=8192, used=9000))
    r = both(http, primary, fallback)

    _, error = await failure(r)

    assert isinstance(error, LLMBadRequestError)
    assert "maximum context length is 8192" in error.message
    assert fallback.chat_requests == []


async def test_the_chats_model_missing_on_the_primary_is_the_users_to_change(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(Error.model_not_found("gpt-4o-mini"))
    r = both(http, primary, fallback)

    _, error = await failure(r)

    assert isinstance(error, LLMNotFoundError)
    assert fallback.chat_requests == []


async def test_text_already_shown_is_never_replaced_by_another_backends(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(StreamError.litellm_upstream_dropped(["Half an "]))
    r = both(http, primary, fallback)

    shown, error = await failure(r)

    assert shown == "Half an "
    assert isinstance(error, LLMServerError)
    assert fallback.chat_requests == []


async def test_a_fallback_with_a_model_of_its_own_is_asked_for_it(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(Error.server_error())
    fallback.enqueue(Stream(["ok"]))
    r = both(http, primary, fallback, fallback_model="other-model", retries=0)

    _, end = await answer(r)

    assert fallback.chat_requests[0]["model"] == "other-model"
    assert (end.backend, end.model) == ("fallback", "other-model")


async def test_one_backend_is_retried_after_a_transient_failure(
    http: httpx.AsyncClient, primary: FakeLLM
) -> None:
    primary.enqueue(Error.server_error(), Stream(["Second time lucky."]))
    r = router(http, ("primary", primary.base_url, "sk-primary"))

    text, _ = await answer(r)

    assert text == "Second time lucky."
    assert len(primary.chat_requests) == 2


async def test_a_lone_backend_that_refused_its_key_is_still_asked(
    http: httpx.AsyncClient, primary: FakeLLM
) -> None:
    # Out of rotation, yet the only one: each chat still asks it, rather than being refused
    # until the retry time, so a key fixed on the backend's side works at once.
    notices: list[tuple[str, str]] = []
    primary.enqueue(Error.invalid_api_key("sk-primary"), Stream(["Fixed."]))
    r = router(http, ("primary", primary.base_url, "sk-primary"), notices=notices)

    _, error = await failure(r)
    text, _ = await answer(r)
    await asyncio.sleep(0)

    assert isinstance(error, LLMAuthError)
    assert text == "Fixed."
    assert len(notices) == 1


async def test_a_fallbacks_lasting_trouble_does_not_end_the_primarys_retries(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(Error.server_error(), Stream(["The primary, second time."]))
    fallback.enqueue(Error.invalid_api_key("sk-fallback"))
    r = both(http, primary, fallback, notices=[])

    text, end = await answer(r)

    assert text == "The primary, second time."
    assert end.backend == "primary"


async def test_the_user_hears_of_the_primarys_failure_not_a_fallbacks_own(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    primary.enqueue(Error.server_error())
    fallback.enqueue(Error.model_not_found("other-model"))
    r = both(http, primary, fallback, fallback_model="other-model", retries=0)

    _, error = await failure(r)

    assert isinstance(error, LLMServerError)
    assert error.backend == "primary"


async def test_a_model_only_a_fallback_lists_goes_to_it_first(
    http: httpx.AsyncClient, primary: FakeLLM, fallback: FakeLLM
) -> None:
    fallback.enqueue(Stream(["From the only backend that has it."]))
    r = both(http, primary, fallback)
    lacking = {"gpt-4o-mini": frozenset({"primary"})}
    r = BackendRouter(
        r.backends,
        first_token_timeout=5.0,
        lacking=lambda model: lacking.get(model, frozenset()),
    )

    text, end = await answer(r)

    assert text == "From the only backend that has it."
    assert end.backend == "fallback"
    assert primary.chat_requests == []  # its list lacks the model: a 404 would end the turn


async def test_every_attempt_is_logged_once_without_text_or_key(
    http: httpx.AsyncClient,
    primary: FakeLLM,
    fallback: FakeLLM,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary.enqueue(Error.server_error())
    fallback.enqueue(Stream(["ok"]))
    r = both(http, primary, fallback, retries=0)

    with caplog.at_level(logging.INFO, logger="bot.llm.router"):
        await answer(r)

    lines = [rec.getMessage() for rec in caplog.records if "backend attempt" in rec.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("backend attempt 1: backend=primary model=gpt-4o-mini")
    assert "outcome=LLMServerError:next" in lines[0]
    assert lines[1].startswith("backend attempt 2: backend=fallback model=gpt-4o-mini")
    assert "outcome=ok" in lines[1]
    assert all("Hello?" not in line and "sk-" not in line for line in lines)


async def test_with_every_backend_resting_the_user_is_told_when_to_come_back(
    http: httpx.AsyncClient, primary: FakeLLM
) -> None:
    primary.enqueue(Error.rate_limited(retry_after=30))
    r = router(http, ("primary", primary.base_url, "sk-primary"), first_token_timeout=2.0)
    await failure(r)  # the 429 that sends the backend to rest

    _, error = await failure(r)  # another chat, within the rest

    assert isinstance(error, LLMNoBackendError)
    assert error.retry_in is not None and 25 < error.retry_in <= 30
    with use_locale("en"):
        text = describe_error(error, model="gpt-4o-mini")
    assert text.startswith("The AI backends are busy (too many requests). Please try again in ")
    assert len(primary.chat_requests) == 1
