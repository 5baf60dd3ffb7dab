"""The model service on a real SQLite file and a fake backend over HTTP, with a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.db import create_sessionmaker
from bot.llm.client import LLMClient, RetryPolicy
from bot.services.models import (
    EARLY_REFRESH_SECONDS,
    ModelService,
    Suggested,
    Switched,
    Unknown,
    label,
)
from bot.services.shared_models import SharedModelList
from tests.conftest import REDIS_URL
from tests.fakes.openai import AKASHCHAT_MODELS, FakeLLM

CHAT = 1001


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    engine: AsyncEngine
    llm: FakeLLM
    llm_client: LLMClient
    clock: ManualClock

    def service(self, **kwargs: object) -> ModelService:
        options: dict[str, object] = {"default_model": "gpt-4o-mini", "cache_seconds": 300.0}
        options.update(kwargs)
        return ModelService(
            sessions=create_sessionmaker(self.engine),
            llm=self.llm_client,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
async def setup(sqlite_engine: AsyncEngine) -> AsyncIterator[Setup]:
    async with FakeLLM(api_key=None) as llm, httpx.AsyncClient() as http:
        client = LLMClient(
            http=http, base_url=llm.base_url, api_key=None, retry=RetryPolicy(max_retries=0)
        )
        yield Setup(sqlite_engine, llm, client, ManualClock())


async def choose(service: ModelService, model_id: str) -> Switched | Suggested | Unknown:
    return await service.choose(
        chat_id=CHAT, chat_type="private", chat_title=None, model_id=model_id
    )


async def test_list_is_cached_for_the_configured_time(setup: Setup) -> None:
    service = setup.service(cache_seconds=300.0)
    first = await service.catalogue()
    assert first is not None and [m.id for m in first.models] == ["gpt-4o", "gpt-4o-mini"]
    setup.llm.models = ["gpt-4o", "o3"]
    setup.clock.now += 299
    assert await service.catalogue() is first
    assert setup.llm.models_requests == 1
    setup.clock.now += 2
    fresh = await service.catalogue()
    assert fresh is not None and [m.id for m in fresh.models] == ["gpt-4o", "o3"]
    assert fresh.version != first.version
    assert setup.llm.models_requests == 2


async def test_choice_is_stored_per_chat_and_new_chats_use_the_default(setup: Setup) -> None:
    service = setup.service()
    assert await service.current(chat_id=CHAT) == "gpt-4o-mini"
    result = await choose(service, "GPT-4o")
    assert result == Switched(model=result.model, changed=True) and result.model.id == "gpt-4o"
    again = await choose(service, "gpt-4o")
    assert isinstance(again, Switched) and not again.changed
    # a new service (as after a restart) reads the stored choice
    assert await setup.service().current(chat_id=CHAT) == "gpt-4o"
    assert await setup.service().current(chat_id=CHAT + 1) == "gpt-4o-mini"


async def test_typos_get_suggestions_and_unknown_ids_change_nothing(setup: Setup) -> None:
    service = setup.service()
    suggested = await choose(service, "gpt-4o-mni")
    assert isinstance(suggested, Suggested)
    assert suggested.suggestions[0].id == "gpt-4o-mini"
    assert await choose(service, "claude-3-opus") == Unknown("claude-3-opus")
    # listed, but an image model: not on offer for chat
    assert await choose(service, "dall-e-3") == Unknown("dall-e-3")
    assert await service.current(chat_id=CHAT) == "gpt-4o-mini"


async def test_bare_list_gives_names_context_sizes_and_skips_unavailable(setup: Setup) -> None:
    setup.llm.models_shape = "bare"
    setup.llm.models = AKASHCHAT_MODELS
    service = setup.service(default_model="Meta-Llama-3-3-70B-Instruct")
    assert service.context_window("openai-gpt-oss-120b") is None  # nothing loaded yet
    catalogue = await service.catalogue()
    assert catalogue is not None
    assert [(m.id, m.name) for m in catalogue.models] == [
        ("openai-gpt-oss-120b", "GPT-OSS-120B"),
        ("Meta-Llama-3-3-70B-Instruct", "Llama 3.3 70B"),
    ]
    assert service.context_window("openai-gpt-oss-120b") == 128000
    suggested = await choose(service, "gpt-oss-12b")
    assert isinstance(suggested, Suggested)
    assert [m.id for m in suggested.suggestions] == ["openai-gpt-oss-120b"]
    # the friendly name, in any case, is as good as the id
    result = await choose(service, "gpt-oss-120b")
    assert isinstance(result, Switched) and result.model.id == "openai-gpt-oss-120b"


async def test_without_a_list_ids_are_trusted_as_typed(setup: Setup) -> None:
    setup.llm.models_shape = "error"
    service = setup.service()
    assert await service.catalogue() is None
    result = await choose(service, "my-local-model")
    assert isinstance(result, Switched) and not result.verified
    assert result.model.id == "my-local-model"
    assert await service.current(chat_id=CHAT) == "my-local-model"
    # obvious non-chat models are still refused
    assert await choose(service, "whisper-1") == Unknown("whisper-1")
    # a failed list is not asked for again on every command
    assert setup.llm.models_requests == 1
    setup.clock.now += 31
    setup.llm.models_shape = "openai"
    assert await service.catalogue() is not None
    assert setup.llm.models_requests == 2


async def test_allow_list_applies_even_when_the_list_is_unavailable(setup: Setup) -> None:
    service = setup.service(allowed=["gpt-4o", "o3-mini"])
    catalogue = await service.catalogue()
    assert catalogue is not None
    assert [m.id for m in catalogue.models] == ["gpt-4o", "gpt-4o-mini"]  # default included
    setup.llm.models_shape = "error"
    setup.clock.now += 301
    unverified = setup.service(allowed=["gpt-4o", "o3-mini"])
    suggested = await choose(unverified, "o3-mni")
    assert isinstance(suggested, Suggested) and suggested.suggestions[0].id == "o3-mini"
    assert await choose(unverified, "llama-3") == Unknown("llama-3")
    result = await choose(unverified, "O3-MINI")
    assert isinstance(result, Switched) and result.model.id == "o3-mini"


async def test_a_failed_refresh_keeps_the_last_list(setup: Setup) -> None:
    service = setup.service()
    first = await service.catalogue()
    setup.llm.models_shape = "error"
    setup.clock.now += 301
    assert await service.catalogue() is first
    result = await choose(service, "gpt-4o")
    assert isinstance(result, Switched) and result.verified


async def test_a_model_added_on_the_backend_can_be_chosen_before_the_cache_expires(
    setup: Setup,
) -> None:
    service = setup.service(cache_seconds=300.0)
    assert await service.catalogue() is not None
    setup.llm.models = ["gpt-4o-mini", "gpt-4o", "o3"]
    setup.clock.now += 60
    result = await choose(service, "o3")
    assert isinstance(result, Switched) and result.verified and result.model.id == "o3"
    assert setup.llm.models_requests == 2  # one reload, for the missing id
    assert await service.current(chat_id=CHAT) == "o3"
    # the reloaded list is the one the picker shows now
    catalogue = await service.catalogue()
    assert catalogue is not None and catalogue.find("o3") is not None
    assert setup.llm.models_requests == 2


async def test_an_unknown_id_typed_again_and_again_reloads_the_list_rarely(setup: Setup) -> None:
    service = setup.service(cache_seconds=300.0)
    assert await service.catalogue() is not None
    setup.clock.now += 60
    assert await choose(service, "claude-3-opus") == Unknown("claude-3-opus")
    assert setup.llm.models_requests == 2
    for typed in ("claude-3-opus", "claude-3-opus", "mistral-large", "claude-3-opus"):
        setup.clock.now += 2
        assert await choose(service, typed) == Unknown(typed)
    assert setup.llm.models_requests == 2  # whichever id, at most one reload per interval
    setup.clock.now += EARLY_REFRESH_SECONDS
    assert await choose(service, "claude-3-opus") == Unknown("claude-3-opus")
    assert setup.llm.models_requests == 3
    # an expired list is loaded once for a request, not again because the id is missing
    setup.clock.now += 301
    assert await choose(service, "claude-3-opus") == Unknown("claude-3-opus")
    assert setup.llm.models_requests == 4


async def test_a_default_model_added_later_is_listed_before_the_cache_expires(
    setup: Setup,
) -> None:
    setup.llm.models = ["gpt-4o"]
    service = setup.service(default_model="gpt-4o-mini", cache_seconds=300.0)
    first = await service.catalogue()
    assert first is not None and first.find("gpt-4o-mini") is None
    setup.llm.models = ["gpt-4o", "gpt-4o-mini"]
    setup.clock.now += EARLY_REFRESH_SECONDS - 1
    assert await service.catalogue() is first  # just loaded: not asked again yet
    setup.clock.now += 1
    fresh = await service.catalogue()
    assert fresh is not None and fresh.find("gpt-4o-mini") is not None
    setup.clock.now += 60
    assert await service.catalogue() is fresh
    assert setup.llm.models_requests == 2


async def test_reloads_for_missing_ids_wait_out_a_failed_list(setup: Setup) -> None:
    service = setup.service(cache_seconds=300.0)
    first = await service.catalogue()
    setup.llm.models_shape = "error"
    setup.clock.now += 60
    assert await choose(service, "o3") == Unknown("o3")  # checked against the last list
    assert setup.llm.models_requests == 2
    setup.clock.now += 20  # past the reload interval, but within the failure backoff
    assert await choose(service, "o3") == Unknown("o3")
    assert await service.catalogue() is first
    assert setup.llm.models_requests == 2
    setup.llm.models_shape = "openai"
    setup.llm.models = ["gpt-4o-mini", "gpt-4o", "o3"]
    setup.clock.now += 11
    result = await choose(service, "o3")
    assert isinstance(result, Switched) and result.model.id == "o3"
    assert setup.llm.models_requests == 3


async def test_models_only_a_fallback_offers_are_listed_under_its_name(setup: Setup) -> None:
    async with (
        FakeLLM(api_key=None, models=["gpt-4o-mini", "llama-3.3-70b"]) as other,
        httpx.AsyncClient() as http,
    ):
        fallback = LLMClient(http=http, base_url=other.base_url, api_key=None)
        service = setup.service(fallbacks=[("ollama", fallback)], primary_name="main")

        catalogue = await service.catalogue()

        assert catalogue is not None
        shown = {m.id: label(m) for m in catalogue.models}
        # The primary's models as they are; the fallback's own marked with its name; a model
        # both offer is listed once.
        assert shown == {
            "gpt-4o": "gpt-4o",
            "gpt-4o-mini": "gpt-4o-mini",
            "llama-3.3-70b": "llama-3.3-70b · ollama",
        }
        assert service.lacking("gpt-4o-mini") == set()
        assert service.lacking("llama-3.3-70b") == {"main"}
        assert service.lacking("gpt-4o") == {"ollama"}
        result = await choose(service, "llama-3.3-70b")
        assert isinstance(result, Switched) and result.model.id == "llama-3.3-70b"


async def test_a_fallback_without_a_model_list_leaves_the_primarys(setup: Setup) -> None:
    async with httpx.AsyncClient() as http:
        gone = LLMClient(
            http=http,
            base_url="http://127.0.0.1:9/v1",
            api_key=None,
            retry=RetryPolicy(max_retries=0),
        )
        service = setup.service(fallbacks=[("gone", gone)], primary_name="main")

        catalogue = await service.catalogue()

    assert catalogue is not None
    assert [m.id for m in catalogue.models] == ["gpt-4o", "gpt-4o-mini"]
    # Without a list of its own, the fallback is not taken to lack any model.
    assert service.lacking("some-model") == {"main"}


async def test_replicas_share_one_fetched_list_through_redis(
    setup: Setup, redis_prefix: str
) -> None:
    redis = Redis.from_url(REDIS_URL)
    key = f"{redis_prefix}:models"
    try:
        first = setup.service(shared=SharedModelList(redis, key=key, ttl=300))
        second = setup.service(shared=SharedModelList(redis, key=key, ttl=300))
        listed = await first.catalogue()
        assert listed is not None
        assert setup.llm.models_requests == 1
        # Another replica serves the same list without asking the backend.
        kept = await second.catalogue()
        assert kept is not None
        assert [m.id for m in kept.models] == [m.id for m in listed.models]
        assert setup.llm.models_requests == 1
        # A model missing from the kept list is looked for at the backend.
        setup.llm.models = ["gpt-4o", "gpt-4o-mini", "o3"]
        setup.clock.now += EARLY_REFRESH_SECONDS + 1
        result = await choose(second, "o3")
        assert isinstance(result, Switched) and result.model.id == "o3" and result.verified
        assert setup.llm.models_requests == 2
        # ... and the list fetched then is what the first replica sees next.
        setup.clock.now += 301
        renewed = await first.catalogue()
        assert renewed is not None and "o3" in [m.id for m in renewed.models]
        assert setup.llm.models_requests == 2
    finally:
        await redis.aclose()
