"""Pictures for vision models: recognised by their bytes; which models read them."""

from __future__ import annotations

import base64

import pytest

from bot.llm.dialects import parse_models
from bot.llm.errors import LLMBadRequestError, LLMContextLengthError, LLMServerError
from bot.llm.types import ModelInfo
from bot.pictures import picture, sniff, with_placeholder
from bot.services.chat import refuses_pictures
from bot.services.models import reads_pictures
from tests.fakes.openai import make_png

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(32)


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (make_png(), "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (b"GIF89a" + bytes(10), None),  # not taken by every vision backend
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),  # a RIFF file that is audio
        (b"", None),
    ],
)
def test_a_picture_is_known_by_its_bytes(data: bytes, mime: str | None) -> None:
    assert sniff(data) == mime


def test_a_picture_travels_as_a_base64_data_url() -> None:
    png = make_png()
    found = picture(png)
    assert found is not None
    assert found.data_url() == "data:image/png;base64," + base64.b64encode(png).decode()
    assert picture(b"plain text") is None


def test_the_placeholder_names_the_file_a_picture_came_in() -> None:
    assert with_placeholder("What is it?") == "[image] What is it?"
    assert with_placeholder("", "chart.png") == "[image: chart.png]"


def test_model_lists_say_which_models_read_pictures() -> None:
    listed = parse_models(
        {
            "data": [
                {"id": "litellm-vision", "supports_vision": True},
                {"id": "litellm-text", "model_info": {"supports_vision": False}},
                {"id": "openrouter", "architecture": {"input_modalities": ["text", "image"]}},
                {"id": "openrouter-text", "architecture": {"input_modalities": ["text"]}},
                {"id": "ollama", "capabilities": ["completion", "vision"]},
                {"id": "silent", "architecture": "Transformer"},  # akashchat: a plain string
            ]
        }
    )
    assert [m.vision for m in listed] == [True, False, True, False, True, None]


def test_where_the_list_is_silent_the_family_name_decides() -> None:
    assert reads_pictures(ModelInfo(id="gpt-4o-mini"))
    assert reads_pictures(ModelInfo(id="Qwen/Qwen2.5-VL-72B-Instruct"))
    assert not reads_pictures(ModelInfo(id="Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"))
    assert not reads_pictures(ModelInfo(id="gpt-4o", vision=False))  # the backend's word wins


def test_backend_errors_about_pictures_are_told_apart() -> None:
    openai = LLMBadRequestError(
        400, "Invalid content type. image_url is only supported by certain models."
    )
    vllm = LLMBadRequestError(400, "Qwen/Qwen3-8B is not a multimodal model")
    assert refuses_pictures(openai) and refuses_pictures(vllm)
    assert not refuses_pictures(LLMBadRequestError(400, "temperature must be at most 2"))
    assert not refuses_pictures(LLMContextLengthError(400, "too many image tokens"))
    assert not refuses_pictures(LLMServerError(500, "image decoder crashed"))
