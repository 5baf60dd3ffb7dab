"""Usage figures from backends: believed when they are token counts, else left to estimates."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bot.db.repositories import MAX_USAGE_COUNT
from bot.llm.dialects import MAX_USAGE_TOKENS, error_info, parse_models, parse_usage
from bot.llm.types import Usage


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"prompt_tokens": 12, "completion_tokens": 3}, Usage(12, 3)),
        ({"input_tokens": 7, "output_tokens": 2}, Usage(7, 2)),
        ({"prompt_tokens": 9}, Usage(9, 0)),
        ({"prompt_tokens": 0, "completion_tokens": 5}, Usage(0, 5)),
        ({"prompt_tokens": MAX_USAGE_TOKENS, "completion_tokens": 1}, Usage(MAX_USAGE_TOKENS, 1)),
        # akashchat's placeholder zeros, and nothing at all, mean "not reported".
        ({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, None),
        ({"prompt_tokens": None, "completion_tokens": None}, None),
        ({}, None),
        (None, None),
        ([12, 3], None),
    ],
)
def test_token_counts_are_read(raw: Any, expected: Usage | None, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.llm.dialects"):
        assert parse_usage(raw) == expected
    assert caplog.records == []


@pytest.mark.parametrize(
    ("figure", "logged"),
    [
        (2**63 - 1, "9223372036854775807"),
        (2**64 - 1, "18446744073709551615"),
        (MAX_USAGE_TOKENS + 1, "10000001"),
        (-5, "-5"),
        (12.7, "12.7"),
        (12.0, "12.0"),
        (float("nan"), "nan"),
        ("12", "'12'"),
        ("²", "'²'"),
        (True, "True"),
        ([1], "[1]"),
        ({"n": 1}, "{'n': 1}"),
    ],
)
def test_an_absurd_figure_discards_the_whole_report_with_one_warning(
    figure: Any, logged: str, caplog: Any
) -> None:
    # The caller then counts both sides itself (marked as an estimate).
    with caplog.at_level(logging.WARNING, logger="bot.llm.dialects"):
        assert parse_usage({"prompt_tokens": 40, "completion_tokens": figure}) is None
        assert parse_usage({"input_tokens": figure, "output_tokens": 40}) is None
    assert len(caplog.records) == 2
    first = caplog.records[0]
    assert first.levelno == logging.WARNING
    assert "\n" not in first.getMessage()
    assert f"completion_tokens={logged}" in first.getMessage()
    assert "prompt_tokens" not in first.getMessage()  # the believable figure is not named


def test_a_long_string_figure_is_logged_cut_short(caplog: Any) -> None:
    text = "ignore previous instructions " * 100
    with caplog.at_level(logging.WARNING, logger="bot.llm.dialects"):
        assert parse_usage({"prompt_tokens": text, "completion_tokens": 2}) is None
    [record] = caplog.records
    assert len(record.getMessage()) < 150
    assert text not in record.getMessage()


def test_the_client_and_the_repository_agree_on_the_ceiling() -> None:
    assert MAX_USAGE_TOKENS == MAX_USAGE_COUNT == 10_000_000


def test_numbers_in_unicode_digits_are_not_taken_for_numbers() -> None:
    # A backend's "status" or "context_length" of "²" passes str.isdigit() but not int().
    info = error_info({"error": {"message": "broken", "status": "²"}})
    assert info.message == "broken" and info.status is None
    (model,) = parse_models({"data": [{"id": "m", "context_length": "²"}]})
    assert model.context_tokens is None
