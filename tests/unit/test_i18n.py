"""The translation catalogue is complete for every language; numbers, plurals and waits read
the way each language writes them."""

from __future__ import annotations

import ast
import string
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from bot import i18n
from bot.i18n import (
    LOCALES,
    format_duration,
    format_moment,
    format_money,
    format_number,
    ngettext,
    normalize,
    use_locale,
)

BOT_DIR = Path(i18n.__file__).parent
KEYWORDS = frozenset({"_", "ngettext"})

MsgId = str | tuple[str, str]


def used_msgids() -> dict[MsgId, str]:
    """Every msgid the bot's code marks for translation, with where it is used."""
    found: dict[MsgId, str] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        BOT_DIR, method_map=[("**.py", "python")]
    ):
        key = message if isinstance(message, str) else (message[0], message[1])
        found.setdefault(key, f"bot/{filename}:{lineno}")
    return found


def catalogue(locale: str) -> Catalog:
    """A locale's .po file, as Babel reads it."""
    path = i18n.LOCALES_DIR / locale / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"
    with path.open("rb") as source:
        return read_po(source, locale=locale, domain=i18n.DOMAIN)


def placeholders(text: str) -> set[str]:
    """The `{name}` fields of a str.format template (raises on unbalanced braces)."""
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def entries(catalog: Catalog) -> Iterator[tuple[MsgId, tuple[str, ...], bool]]:
    """(msgid, translations, fuzzy) of every message but the header."""
    for message in catalog:
        if not message.id:
            continue
        if isinstance(message.id, str):
            key: MsgId = message.id
            forms: tuple[str, ...] = (str(message.string or ""),)
        else:
            key = (message.id[0], message.id[1])
            forms = tuple(str(form or "") for form in message.string or ())
        yield key, forms, message.fuzzy


# ---- the catalogue ---------------------------------------------------------------------------


def test_the_code_marks_only_literal_strings_for_translation() -> None:
    # Babel's extractor silently skips f-strings and variables; such a text would never be
    # translated, so it must not exist.
    problems = []
    for path in sorted(BOT_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in KEYWORDS
            ):
                continue
            wanted = 1 if node.func.id == "_" else 2
            texts = node.args[:wanted]
            if len(texts) < wanted or not all(
                isinstance(arg, ast.Constant) and isinstance(arg.value, str) for arg in texts
            ):
                problems.append(f"{path.relative_to(BOT_DIR.parent)}:{node.lineno}")
    assert not problems, f"translated texts must be string literals: {problems}"


def test_the_code_has_texts_to_translate() -> None:
    used = used_msgids()
    assert len(used) > 100
    assert "Unknown command. See /help for the list." in used
    assert ("{count} request", "{count} requests") in used


@pytest.mark.parametrize("locale", LOCALES)
def test_every_text_the_code_uses_is_translated(locale: str) -> None:
    catalog = catalogue(locale)
    translated = {key: (forms, fuzzy) for key, forms, fuzzy in entries(catalog)}
    plain = {key if isinstance(key, str) else key[0]: key for key in translated}
    missing = []
    for msgid, where in used_msgids().items():
        singular = msgid if isinstance(msgid, str) else msgid[0]
        if plain.get(singular) != msgid:
            missing.append(f"{where}: {msgid!r}")
    assert not missing, f"{locale}/bot.po lacks (run pybabel update, see README): {missing}"


@pytest.mark.parametrize("locale", LOCALES)
def test_no_translation_is_empty_fuzzy_stale_or_missing_a_plural_form(locale: str) -> None:
    catalog = catalogue(locale)
    used = used_msgids()
    problems = []
    for msgid, forms, fuzzy in entries(catalog):
        if fuzzy:
            problems.append(f"fuzzy (check the translation, then drop the flag): {msgid!r}")
        if not all(form.strip() for form in forms):
            problems.append(f"untranslated: {msgid!r}")
        if not isinstance(msgid, str) and len(forms) != catalog.num_plurals:
            problems.append(f"{len(forms)} plural forms, not {catalog.num_plurals}: {msgid!r}")
        if msgid not in used:
            problems.append(f"no longer used by the code: {msgid!r}")
    assert not catalog.obsolete, f"obsolete entries left in {locale}/bot.po"
    assert not problems, f"{locale}/bot.po: {problems}"


@pytest.mark.parametrize("locale", LOCALES)
def test_translations_keep_the_placeholders_of_their_msgid(locale: str) -> None:
    problems = []
    for msgid, forms, _ in entries(catalogue(locale)):
        expected = placeholders(msgid) if isinstance(msgid, str) else placeholders(msgid[0])
        if not isinstance(msgid, str):
            assert placeholders(msgid[1]) == expected, f"msgid and plural differ: {msgid!r}"
        for form in forms:
            try:
                found = placeholders(form)
            except ValueError as exc:
                problems.append(f"{form!r}: {exc}")
                continue
            if found != expected:
                problems.append(f"{form!r} has {sorted(found)}, needs {sorted(expected)}")
    assert not problems, f"{locale}/bot.po: {problems}"


def test_russian_has_three_plural_forms_and_chinese_one() -> None:
    assert catalogue("ru").num_plurals == 3
    assert catalogue("zh").num_plurals == 1
    assert catalogue("en").num_plurals == 2


def test_each_language_speaks_its_own_words() -> None:
    texts = {}
    for locale in LOCALES:
        with use_locale(locale):
            texts[locale] = i18n._("Unknown command. See /help for the list.")
    assert texts == {
        "en": "Unknown command. See /help for the list.",
        "ru": "Неизвестная команда. Список команд — /help.",
        "zh": "未知命令。发送 /help 查看命令列表。",
    }


def test_an_unknown_locale_speaks_english() -> None:
    with use_locale("de"):
        assert i18n.current_locale() == "en"
        assert i18n._("Today") == "Today"


# ---- plurals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "russian"),
    [
        (1, "1 запрос"),
        (2, "2 запроса"),
        (5, "5 запросов"),
        (11, "11 запросов"),
        (21, "21 запрос"),
        (22, "22 запроса"),
        (112, "112 запросов"),
    ],
)
def test_russian_plurals(count: int, russian: str) -> None:
    with use_locale("ru"):
        text = ngettext("{count} request", "{count} requests", count).format(count=count)
    assert text == russian


def test_english_and_chinese_plurals() -> None:
    with use_locale("en"):
        assert ngettext("{count} token", "{count} tokens", 1).format(count=1) == "1 token"
        assert ngettext("{count} token", "{count} tokens", 0).format(count=0) == "0 tokens"
    with use_locale("zh"):
        assert ngettext("{count} image", "{count} images", 3).format(count=3) == "3 张图片"


# ---- numbers, money, dates and waits ---------------------------------------------------------


def test_numbers_follow_the_language() -> None:
    shown = {}
    for locale in LOCALES:
        with use_locale(locale):
            shown[locale] = (format_number(1234567), format_number(0.5))
    # Russian groups thousands with non-breaking spaces and writes a decimal comma.
    assert shown == {
        "en": ("1,234,567", "0.5"),
        "ru": ("1\xa0234\xa0567", "0,5"),
        "zh": ("1,234,567", "0.5"),
    }


@pytest.mark.parametrize(
    ("cost", "english", "russian"),
    [
        (0, "$0.00", "0,00\xa0$"),
        (0.00000152, "$0.00000152", "0,00000152\xa0$"),  # 1,234 tokens at the Gonka rate
        (0.0052, "$0.0052", "0,0052\xa0$"),
        (0.5, "$0.50", "0,50\xa0$"),
        (0.123456, "$0.123", "0,123\xa0$"),
        (1234.5, "$1,234.50", "1\xa0234,50\xa0$"),
    ],
)
def test_costs_keep_enough_decimals_to_show_tiny_amounts(
    cost: float, english: str, russian: str
) -> None:
    with use_locale("en"):
        assert format_money(cost) == english
    with use_locale("ru"):
        assert format_money(cost) == russian


def test_dates_follow_the_language() -> None:
    moment = datetime(2025, 6, 1, 15, 5, tzinfo=UTC)
    shown = {}
    for locale in LOCALES:
        with use_locale(locale):
            shown[locale] = format_moment(moment)
    assert shown == {
        "en": "Jun 1, 2025, 3:05\u202fPM UTC",
        "ru": "1 июн. 2025\u202fг., 15:05 UTC",
        "zh": "2025年6月1日 15:05 UTC",
    }


@pytest.mark.parametrize(
    ("seconds", "english", "russian", "chinese"),
    [
        (0.2, "1 s", "1 с", "1 秒"),
        (45, "45 s", "45 с", "45 秒"),
        (61, "2 min", "2 мин", "2 分钟"),
        (3600, "1 h", "1 ч", "1 小时"),
        (2 * 3600 + 5 * 60, "2 h 5 min", "2 ч 5 мин", "2 小时 5 分钟"),
        (3 * 3600 + 11 * 60 + 1, "3 h 12 min", "3 ч 12 мин", "3 小时 12 分钟"),
        (24 * 3600, "1 d", "1 дн.", "1 天"),
        (12 * 86400 + 4 * 3600, "12 d 4 h", "12 дн. 4 ч", "12 天 4 小时"),
    ],
)
def test_waits_are_rounded_up_and_worded_per_language(
    seconds: float, english: str, russian: str, chinese: str
) -> None:
    shown = []
    for locale in LOCALES:
        with use_locale(locale):
            shown.append(format_duration(seconds))
    assert shown == [english, russian, chinese]


# ---- which language -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "locale"),
    [
        ("en", "en"),
        ("en-GB", "en"),
        ("ru", "ru"),
        ("ru-RU", "ru"),
        ("zh", "zh"),
        ("zh-hans", "zh"),
        ("zh-CN", "zh"),
        ("zh_TW", "zh"),
        (" RU ", "ru"),
        ("uk", None),
        ("pt-br", None),
        ("", None),
        (None, None),
    ],
)
def test_telegram_language_codes_map_to_supported_locales(
    code: str | None, locale: str | None
) -> None:
    assert normalize(code) == locale
