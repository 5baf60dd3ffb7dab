"""The pure parts of /model: which models are offered, paging, suggestions and the keyboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.llm.dialects import parse_models
from bot.llm.types import ModelInfo
from bot.services.models import build_catalogue, is_chat_model, suggest
from bot.telegram.keyboards import (
    MODELS_PER_PAGE,
    ModelNoop,
    ModelPage,
    ModelPick,
    model_picker,
    model_suggestions,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers"


def ids(models: tuple[ModelInfo, ...] | list[ModelInfo]) -> list[str]:
    return [m.id for m in models]


def listed(name: str) -> Any:
    """A captured `/models` answer, as parsed JSON."""
    return json.loads((FIXTURES / name).read_text())


def offered(document: Any) -> list[str]:
    """The ids /model offers from a `/models` answer, read as the client reads it."""
    return ids(build_catalogue(parse_models(document)).models)


def case(model: ModelInfo) -> str:
    """A test case's name: the model's id, and the kind the backend gave."""
    return f"{model.id}:{model.kind}" if model.kind else model.id


@pytest.mark.parametrize(
    "model",
    [
        ModelInfo(id="dall-e-3"),
        ModelInfo(id="gpt-image-1"),
        ModelInfo(id="AkashGen"),
        ModelInfo(id="black-forest-labs/FLUX.1-schnell"),
        ModelInfo(id="stabilityai/stable-diffusion-xl-base-1.0"),
        ModelInfo(id="sdxl-turbo"),
        ModelInfo(id="whisper-1"),
        ModelInfo(id="tts-1-hd"),
        ModelInfo(id="gpt-4o-mini-tts"),
        ModelInfo(id="text-embedding-3-small"),
        ModelInfo(id="nomic-embed-text"),
        ModelInfo(id="omni-moderation-latest"),
        ModelInfo(id="gpt-4o-transcribe"),
        ModelInfo(id="gpt-4o-mini-transcribe"),
        ModelInfo(id="speech-02-hd"),
        ModelInfo(id="imagen-3.0-generate-002"),
        ModelInfo(id="midjourney-v6"),
        ModelInfo(id="BAAI/bge-reranker-v2-m3"),
        ModelInfo(id="rerank-english-v3.0"),
        ModelInfo(id="BAAI-bge-large-en-v1-5"),  # akashchat's embedding model
        # completion-only: /chat/completions refuses them
        ModelInfo(id="gpt-3.5-turbo-instruct"),
        ModelInfo(id="gpt-3.5-turbo-instruct-0914"),
        ModelInfo(id="openai/gpt-3.5-turbo-instruct"),
        ModelInfo(id="davinci-002"),
        ModelInfo(id="babbage-002"),
        ModelInfo(id="text-davinci-003"),
        ModelInfo(id="img-v2", name="Flux Pro"),  # the name gives it away
        ModelInfo(id="gpt-4o", kind="image"),  # the backend says so, whatever the id
        ModelInfo(id="qwen3", kind="embedding"),
        ModelInfo(id="gpt-4o-mini", kind="completion"),
    ],
    ids=case,
)
def test_non_chat_models_are_recognised(model: ModelInfo) -> None:
    assert not is_chat_model(model)


@pytest.mark.parametrize(
    "model",
    [
        ModelInfo(id="gpt-4o-mini"),
        ModelInfo(id="Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"),
        ModelInfo(id="meta-llama/Llama-3.3-70B-Instruct", name="Llama 3.3 70B"),
        # "-Instruct" marks completion-only models only in OpenAI's gpt-*-instruct family
        ModelInfo(id="Qwen/Qwen2.5-72B-Instruct"),
        ModelInfo(id="mistralai/Mistral-7B-Instruct-v0.3"),
        ModelInfo(id="Meta-Llama-3-3-70B-Instruct"),
        ModelInfo(id="openai-gpt-oss-120b", name="GPT-OSS-120B"),
        ModelInfo(id="deepseek-r1"),
        ModelInfo(id="mattsfluxcapacitor-7b"),  # "flux" inside a word is no image model
        ModelInfo(id="uukuguy/speechless-llama2-13b"),  # nor "speech" inside one
        ModelInfo(id="whisper-1", kind="chat"),  # the backend's word beats the heuristic
        ModelInfo(id="gpt-3.5-turbo-instruct", kind="chat"),
    ],
    ids=case,
)
def test_chat_models_are_kept(model: ModelInfo) -> None:
    assert is_chat_model(model)


def test_mock_ai_api_list_offers_its_chat_models_only() -> None:
    document = listed("mock-ai-api/models.json")
    shown = offered(document)
    assert shown == [
        "gpt-4.1",
        *[f"gpt-4.1:mock-{s}" for s in ("400", "401", "429", "500", "503")],
        *[f"gpt-4.1:mock-{s}" for s in ("bad-tool-json", "delay", "text")],
        *[f"gpt-4.1:mock-{s}" for s in ("tool-call", "tool-stream")],
        "gpt-4o-mini",
    ]
    hidden = {entry["id"] for entry in document["data"]} - set(shown)
    assert hidden == {
        "gpt-3.5-turbo-instruct",  # completion-only
        "text-embedding-3-small",
        "omni-moderation-latest",
        "gpt-image-1",
        "gpt-4o-mini-tts",
        "gpt-4o-transcribe",
        "whisper-1",
    }


def test_litellm_list_hides_what_its_mode_calls_image_generation() -> None:
    assert offered(listed("litellm/models.json")) == [
        "gpt-4o-mini",
        "midstream-error",
        "rate-limited",
        "rpm-limited",
        "server-error",
        "via-mock-ai-api",
        "via-mock-ai-api-429",  # no mode: the id decides
        "via-mock-ai-api-slow",
    ]  # dall-e-3, dall-e-3-upstream and gpt-image-1 are image_generation


def test_litellm_mode_beats_the_id() -> None:
    document = listed("litellm/models.json")
    for entry in document["data"]:
        if entry["id"] == "gpt-image-1":
            entry["mode"] = "chat"  # an alias that is a chat model, whatever its name
        if entry["id"] == "via-mock-ai-api":
            entry["mode"] = "audio_transcription"
    shown = offered(document)
    assert "gpt-image-1" in shown and "via-mock-ai-api" not in shown


def test_akashchat_bare_list_offers_available_text_models() -> None:
    document = listed("akashchat-api-go/models.json")
    catalogue = build_catalogue(parse_models(document))
    assert [(m.id, m.name) for m in catalogue.models] == [
        ("openai-gpt-oss-120b", "GPT-OSS-120B"),
        ("Meta-Llama-3-3-70B-Instruct", "Llama 3.3 70B"),
    ]
    # AkashGen is listed as unavailable; were it available, it would still be an image model
    for entry in document:
        entry["available"] = True
    assert "AkashGen" not in offered(document)
    # and the backend's "unavailable" hides a chat model too
    document[1]["available"] = False
    assert offered(document) == ["openai-gpt-oss-120b"]


def test_plain_lists_of_chat_models_are_offered_whole() -> None:
    assert offered(listed("mockllm/models-nonstandard-path.json")) == [
        "claude-3-haiku-20240307",
        "claude-3-opus-20240229",
        "claude-3-sonnet-20240229",
        "gpt-3.5-turbo",
        "gpt-4",
        "gpt-4-turbo",
    ]
    assert offered(listed("dwmkerr-mock-llm/models.json")) == ["gpt-5.2"]


def test_catalogue_keeps_available_chat_models_sorted_by_name() -> None:
    catalogue = build_catalogue(
        [
            ModelInfo(id="zeta", name="Alpha model"),
            ModelInfo(id="gpt-4o"),
            ModelInfo(id="dall-e-3"),
            ModelInfo(id="AkashGen", available=False),
            ModelInfo(id="down", available=False),
            ModelInfo(id="gpt-4o"),  # listed twice
            ModelInfo(id="beta"),
        ]
    )
    assert ids(catalogue.models) == ["zeta", "beta", "gpt-4o"]


def test_allow_list_restricts_the_choice_but_always_allows_the_default() -> None:
    listed = [ModelInfo(id=i) for i in ("gpt-4o", "gpt-4o-mini", "o3", "dall-e-3")]
    catalogue = build_catalogue(
        listed, allowed=["O3", "dall-e-3", "missing"], default_model="gpt-4o"
    )
    # case does not matter; an allowed image model is still no chat model; missing ones vanish
    assert ids(catalogue.models) == ["gpt-4o", "o3"]


def test_list_version_changes_only_with_the_offered_ids() -> None:
    first = build_catalogue([ModelInfo(id="a"), ModelInfo(id="b")])
    again = build_catalogue(
        [ModelInfo(id="b"), ModelInfo(id="a", name="A"), ModelInfo(id="tts-1")]
    )
    changed = build_catalogue([ModelInfo(id="a"), ModelInfo(id="c")])
    assert first.version == again.version
    assert first.version != changed.version
    assert len(first.version) <= 8


def test_match_by_exact_id_any_case_or_friendly_name() -> None:
    catalogue = build_catalogue(
        [
            ModelInfo(id="gpt-4o"),
            ModelInfo(id="Meta-Llama-3-3-70B-Instruct", name="Llama 3.3 70B"),
        ]
    )
    assert catalogue.match("gpt-4o") == ModelInfo(id="gpt-4o")
    assert catalogue.match(" GPT-4O ") == ModelInfo(id="gpt-4o")
    match = catalogue.match("llama 3.3 70b")
    assert match is not None and match.id == "Meta-Llama-3-3-70B-Instruct"
    assert catalogue.match("gpt-4") is None


def test_paging_covers_every_model_once_and_clamps() -> None:
    catalogue = build_catalogue([ModelInfo(id=f"m{i:02d}") for i in range(19)])
    pages = [catalogue.page(n, size=8) for n in range(3)]
    assert [p.count for p in pages] == [3, 3, 3]
    assert [index for p in pages for index, _ in p.entries] == list(range(19))
    assert [len(p.entries) for p in pages] == [8, 8, 3]
    assert catalogue.page(7, size=8).number == 2
    assert catalogue.page(-1, size=8).number == 0
    assert catalogue.page_of("m17", size=8).number == 2
    assert catalogue.page_of("not-listed", size=8).number == 0
    empty = build_catalogue([])
    assert empty.page(0, size=8).count == 1 and empty.page(0, size=8).entries == ()


def test_suggestions_for_typos_and_fragments() -> None:
    models = build_catalogue(
        [
            ModelInfo(id="gpt-4o"),
            ModelInfo(id="gpt-4o-mini"),
            ModelInfo(id="Meta-Llama-3-3-70B-Instruct", name="Llama 3.3 70B"),
            ModelInfo(id="Meta-Llama-3-1-8B-Instruct", name="Llama 3.1 8B"),
            ModelInfo(id="deepseek-r1"),
        ]
    ).models
    assert ids(suggest("gpt4o-mini", models))[0] == "gpt-4o-mini"
    assert ids(suggest("deepsek-r1", models)) == ["deepseek-r1"]
    assert set(ids(suggest("llama", models))) == {
        "Meta-Llama-3-3-70B-Instruct",
        "Meta-Llama-3-1-8B-Instruct",
    }
    assert suggest("claude-3-opus", models) == ()
    assert suggest("", models) == ()
    assert len(suggest("gpt", models, limit=1)) == 1


def buttons(markup: object) -> list[list[tuple[str, str]]]:
    rows = markup.inline_keyboard  # type: ignore[attr-defined]
    return [[(b.text, b.callback_data) for b in row] for row in rows]


def test_picker_marks_the_current_model_and_pages_with_short_callback_data() -> None:
    long_ids = [
        f"organisation-with-a-long-name/model-family-{i:02d}-instruct-2507-FP8" for i in range(20)
    ]
    catalogue = build_catalogue([ModelInfo(id=i) for i in long_ids])
    current = long_ids[9]
    page = catalogue.page_of(current, size=MODELS_PER_PAGE)
    rows = buttons(model_picker(page, version=catalogue.version, current=current))
    assert len(rows) == MODELS_PER_PAGE + 1
    marked = [text for row in rows for text, _ in row if text.startswith("✅")]
    assert len(marked) == 1 and "model-family-09" in marked[0]
    every = [data for row in rows for _, data in row]
    assert all(len(data.encode()) <= 64 for data in every)
    pick = ModelPick.unpack(rows[1][0][1])
    assert catalogue.at(pick.i) == catalogue.models[9] and pick.v == catalogue.version
    back, counter, forward = rows[-1]
    assert counter[0] == "2/3" and counter[1] == ModelNoop().pack()
    assert ModelPage.unpack(back[1]).p == 0 and ModelPage.unpack(forward[1]).p == 2
    # the arrows wrap around at the ends
    last = buttons(model_picker(catalogue.page(2, size=8), version=catalogue.version, current=""))
    assert ModelPage.unpack(last[-1][2][1]).p == 0


def test_single_page_has_no_arrows_and_suggestions_are_buttons() -> None:
    catalogue = build_catalogue([ModelInfo(id="a"), ModelInfo(id="b", name="Bee")])
    rows = buttons(model_picker(catalogue.page(0, size=8), version="v1", current="b"))
    assert rows == [
        [("a", ModelPick(v="v1", i=0).pack())],
        [("✅ Bee", ModelPick(v="v1", i=1).pack())],
    ]
    rows = buttons(model_suggestions([(1, catalogue.models[1])], version="v1"))
    assert rows == [[("Bee", "mdl:v1:1")]]


@pytest.mark.parametrize("mode", ["completion", "moderation", "rerank"])
def test_litellm_modes_that_cannot_converse_are_hidden(mode: str) -> None:
    document = listed("litellm/models.json")
    for entry in document["data"]:
        if entry["id"] == "via-mock-ai-api":
            entry["mode"] = mode  # an id that says nothing: only the mode tells
    assert "via-mock-ai-api" not in offered(document)
