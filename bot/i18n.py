"""The translation catalogue: the current user's language, their texts, numbers and dates.

Every user-facing string is an English msgid marked with `_()` or `ngettext()` where it is used;
the translations live in `bot/locales/<locale>/LC_MESSAGES/bot.po` and are compiled in memory
on first use (at start), so there are no compiled files to keep in step and no network access.
The locale is held in a context variable: a middleware sets it for each Telegram update, and
services and handlers alike read it without being handed anything, which keeps services free
of aiogram.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from typing import Final

from babel import Locale
from babel.dates import format_date, format_time
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from babel.support import Translations

LOCALES: Final = ("en", "ru", "zh")
DEFAULT_LOCALE: Final = "en"
# Each language by its own name, as the /language buttons show it whatever the current one.
LANGUAGE_NAMES: Final[Mapping[str, str]] = {"en": "English", "ru": "Русский", "zh": "中文"}
LOCALES_DIR: Final = Path(__file__).parent / "locales"
DOMAIN: Final = "bot"
CURRENCY: Final = "USD"

_current: ContextVar[str] = ContextVar("locale", default=DEFAULT_LOCALE)


class CatalogueError(Exception):
    """Raised when a locale's .po file is missing or cannot be read."""


def load_catalogues(directory: Path = LOCALES_DIR) -> dict[str, Translations]:
    """Every locale's translations, compiled from its .po file in memory."""
    loaded: dict[str, Translations] = {}
    for locale in LOCALES:
        path = directory / locale / "LC_MESSAGES" / f"{DOMAIN}.po"
        try:
            with path.open("rb") as source:
                catalog = read_po(source, locale=locale, domain=DOMAIN)
        except (OSError, ValueError) as exc:
            raise CatalogueError(f"cannot read the {locale} translations {path}: {exc}") from exc
        compiled = BytesIO()
        write_mo(compiled, catalog)  # fuzzy entries are left out, as `pybabel compile` does
        compiled.seek(0)
        loaded[locale] = Translations(compiled, domain=DOMAIN)
    return loaded


@functools.cache
def catalogues() -> Mapping[str, Translations]:
    """The translations of every locale, loaded once (the composition root calls this at start)."""
    return load_catalogues()


# ---- the current locale ----------------------------------------------------------------------


def normalize(code: str | None) -> str | None:
    """The supported locale a language tag means ("zh-hans", "ru-RU" -> "zh", "ru"), or None."""
    if not code:
        return None
    primary = code.strip().replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in LOCALES else None


def current_locale() -> str:
    """The locale texts are being produced in."""
    return _current.get()


def set_locale(locale: str) -> None:
    """Produce texts in `locale` from now on, in this task (unknown locales mean English)."""
    _current.set(locale if locale in LOCALES else DEFAULT_LOCALE)


@contextmanager
def use_locale(locale: str) -> Iterator[None]:
    """Produce texts in `locale` inside the block, then return to the previous locale."""
    token = _current.set(locale if locale in LOCALES else DEFAULT_LOCALE)
    try:
        yield
    finally:
        _current.reset(token)


# ---- texts -----------------------------------------------------------------------------------


def _(message: str) -> str:
    """The translation of `message` (an English msgid) in the current locale."""
    return catalogues()[current_locale()].gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The translation whose plural form suits the count `n` in the current locale."""
    return catalogues()[current_locale()].ngettext(singular, plural, n)


# ---- numbers, money, dates and durations -----------------------------------------------------


def format_number(value: float) -> str:
    """A number as the current locale writes it: 1,234,567.5 or 1 234 567,5."""
    return format_decimal(value, locale=current_locale())


def format_money(amount: float) -> str:
    """A cost in dollars with enough decimals to show tiny amounts: $0.0000123, $1,234.50."""
    if 0 < amount < 1:
        # Three significant digits, so amounts at cents per million tokens stay visible.
        value = Decimal(repr(round(amount, min(15, 2 - math.floor(math.log10(amount))))))
    else:
        value = Decimal(repr(round(max(amount, 0.0), 2)))
    return format_currency(
        value,
        CURRENCY,
        locale=current_locale(),
        currency_digits=False,
        decimal_quantization=False,
    )


def format_moment(moment: datetime) -> str:
    """A date and time with its time zone: Jun 1, 2025, 12:00 AM Europe/Berlin."""
    zone = moment.tzinfo or UTC
    locale = Locale.parse(current_locale())
    date = format_date(moment, "medium", locale=locale)
    time = format_time(moment, "short", tzinfo=zone, locale=locale)
    joined = str(locale.datetime_formats["medium"]).replace("{1}", date).replace("{0}", time)
    return f"{joined} {zone_name(zone)}"


def zone_name(zone: tzinfo) -> str:
    """The IANA name of a time zone, as people configure it (UTC, Europe/Berlin)."""
    return str(getattr(zone, "key", None) or zone.tzname(None) or "UTC")


def format_duration(seconds: float) -> str:
    """A wait for people, rounded up: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    if seconds < 60:
        # TRANSLATORS: units of a wait, short, joined by spaces: "2 d 4 h", "3 h 5 min", "45 s".
        return _("{count} s").format(count=format_number(max(1, math.ceil(seconds))))
    minutes = math.ceil(seconds / 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        parts = [_("{count} d").format(count=format_number(days))]
        if hours:
            parts.append(_("{count} h").format(count=format_number(hours)))
    else:
        parts = [_("{count} h").format(count=format_number(hours))] if hours else []
        if minutes or not hours:
            parts.append(_("{count} min").format(count=format_number(minutes)))
    return " ".join(parts)
