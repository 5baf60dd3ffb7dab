"""Usage reports as plain text for Telegram, split into messages that fit its length limit.

Plain text, not HTML: user names and chat titles are shown as they are, with nothing to escape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bot.db.usage_queries import RankedUsage
from bot.i18n import _, format_moment, format_money, format_number, ngettext
from bot.services.usage import (
    BotReport,
    BudgetUse,
    Figures,
    Period,
    PeriodReport,
    UserReport,
    format_amount,
)
from bot.telegram.render import TELEGRAM_TEXT_LIMIT, utf16_len

NAME_MAX = 40
# Marks figures that contain the bot's own token counts.
ESTIMATED_MARK = "≈"


def _period_title(period: Period) -> str:
    if period == "today":
        return _("Today")
    if period == "month":
        return _("This month")
    return _("All time")


def user_report_text(report: UserReport, *, own: bool, footer: str | None = None) -> list[str]:
    """One user's report (as messages): their own, or another user's as the owner sees it."""
    if own:
        title = _("Your usage")
    else:
        who = _person(report.user_id, report.full_name, report.username)
        title = _("Usage of {user}").format(user=who)
    lines = [title, ""]
    lines += _periods(report.periods, priced=report.priced)
    lines += _budgets(report.budgets)
    lines += _notes(report.periods, priced=report.priced, timezone=report.timezone)
    if footer:
        lines.append(footer)
    return pack(lines)


def bot_report_text(report: BotReport) -> list[str]:
    """The owner's report about the whole bot (as messages)."""
    lines = [_("Usage of the whole bot"), ""]
    lines += _periods(report.periods, priced=report.priced)
    lines += _budgets(report.budgets)
    for title, ranked in (
        (_("Top users this month by tokens:"), report.top_users_by_tokens),
        (_("Top users this month by cost:"), report.top_users_by_cost),
        (_("Top chats this month by tokens:"), report.top_chats_by_tokens),
        (_("Top chats this month by cost:"), report.top_chats_by_cost),
    ):
        if ranked:
            lines += ["", title, *_top(ranked, priced=report.priced)]
    lines += _notes(report.periods, priced=report.priced, timezone=report.timezone)
    return pack(lines)


def pack(lines: Iterable[str], *, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    """Join lines into as few messages as possible, each within Telegram's length limit."""
    messages: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        line = _clip(line, limit)
        cost = utf16_len(line) + (1 if current else 0)
        if current and size + cost > limit:
            messages.append("\n".join(current).strip())
            current, size = [], 0
            cost = utf16_len(line)
        current.append(line)
        size += cost
    if current:
        messages.append("\n".join(current).strip())
    return [m for m in messages if m]


def _periods(periods: Sequence[PeriodReport], *, priced: bool) -> list[str]:
    lines = []
    for report in periods:
        title = _period_title(report.period)
        if not report.total.requests:
            lines.append(_("{period}: nothing yet").format(period=title))
            continue
        figures = _figures(report.total, priced=priced)
        lines.append(_("{period}: {figures}").format(period=title, figures=figures))
        if len(report.models) > 1:
            # Backends are named only where more than one served: the same model may then
            # have come from several.
            several = len({m.backend for m in report.models if m.backend}) > 1
            lines += [
                _("  • {model}: {figures}").format(
                    model=f"{m.model} @ {m.backend}" if several and m.backend else m.model,
                    figures=_figures(m.figures, priced=priced),
                )
                for m in report.models
            ]
    return lines


def _figures(figures: Figures, *, priced: bool) -> str:
    mark = ESTIMATED_MARK if figures.estimated else ""
    parts = [
        ngettext("{count} request", "{count} requests", figures.requests).format(
            count=format_number(figures.requests)
        )
    ]
    # Transcriptions count no tokens: a line of them alone does not say "0 tokens".
    if figures.tokens or not figures.audio_seconds:
        parts.append(
            ngettext(
                "{count} token (prompt {prompt}, completion {completion})",
                "{count} tokens (prompt {prompt}, completion {completion})",
                figures.tokens,
            ).format(
                count=mark + format_number(figures.tokens),
                prompt=mark + format_number(figures.prompt_tokens),
                completion=mark + format_number(figures.completion_tokens),
            )
        )
    if figures.audio_seconds:
        parts.append(_voice(figures.audio_seconds))
    if figures.images:
        parts.append(
            ngettext("{count} image", "{count} images", figures.images).format(
                count=format_number(figures.images)
            )
        )
    if priced:
        parts.append(_cost(mark + format_money(figures.cost)))
    return " · ".join(parts)


def _cost(amount: str) -> str:
    return _("cost {cost}").format(cost=amount)


def _voice(seconds: int) -> str:
    # TRANSLATORS: {duration} is a length of audio such as "3 min 20 s" or "1 h 5 min 12 s".
    return _("🎤 {duration} of voice transcribed").format(duration=_audio_length(seconds))


def _audio_length(total: int) -> str:
    """A length of audio, to the second: 45 s, 3 min 20 s, 1 h 5 min 12 s (units as waits)."""
    minutes, seconds = divmod(max(total, 0), 60)
    hours, minutes = divmod(minutes, 60)
    parts = []
    if hours:
        parts.append(_("{count} h").format(count=format_number(hours)))
    if minutes:
        parts.append(_("{count} min").format(count=format_number(minutes)))
    if seconds or not parts:
        parts.append(_("{count} s").format(count=format_number(seconds)))
    return " ".join(parts)


def _budgets(budgets: Sequence[BudgetUse]) -> list[str]:
    if not budgets:
        return []
    lines = ["", _("Limits:")]
    for use in budgets:
        window = _("Daily") if use.window == "daily" else _("Monthly")
        if use.reached:
            template = _("  • {window}: {used} of {limit}, reached until {reset}")
        else:
            template = _("  • {window}: {used} of {limit}")
        used = format_number(int(use.used)) if use.unit == "tokens" else format_money(use.used)
        lines.append(
            template.format(
                window=window,
                used=used,
                limit=format_amount(use.unit, use.limit),
                reset=format_moment(use.resets_at),
            )
        )
    return lines


def _top(ranked: Sequence[RankedUsage], *, priced: bool) -> list[str]:
    return [
        # TRANSLATORS: {tokens} is e.g. "4,000 tokens", followed by " · 🎤 3 min 20 s of voice
        # transcribed" where there was any; {cost} is empty or " · cost $0.01".
        _("{rank}. {who}: {tokens}{cost}").format(
            rank=rank,
            who=_person(entry.id, entry.name, entry.username),
            tokens=_ranked_amounts(entry),
            cost=" · " + _cost(format_money(entry.cost)) if priced else "",
        )
        for rank, entry in enumerate(ranked, start=1)
    ]


def _ranked_amounts(entry: RankedUsage) -> str:
    tokens = ngettext("{count} token", "{count} tokens", entry.tokens).format(
        count=format_number(entry.tokens)
    )
    if not entry.audio_seconds:
        return tokens
    return f"{tokens} · {_voice(entry.audio_seconds)}"


def _notes(periods: Sequence[PeriodReport], *, priced: bool, timezone: str) -> list[str]:
    lines = [""]
    if any(p.total.estimated for p in periods):
        lines.append(
            _(
                "≈ includes estimates: the AI backend did not report usage for some requests, "
                "so the bot counted their tokens itself."
            )
        )
    if priced:
        lines.append(_("Costs are estimates from the bot's price list."))
    lines.append(_("Days and months are counted in {timezone}.").format(timezone=timezone))
    return lines


def _person(id_: int, name: str | None, username: str | None) -> str:
    if not name:
        return _("id {id}").format(id=id_)
    name = _shorten(" ".join(name.split()), NAME_MAX)
    if username:
        return _("{name} (@{username}, id {id})").format(name=name, username=username, id=id_)
    return _("{name} (id {id})").format(name=name, id=id_)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(line: str, limit: int) -> str:
    """A single line never exceeds a message (a very long model id, say)."""
    while utf16_len(line) > limit:
        line = line[: len(line) - (utf16_len(line) - limit) - 1] + "…"
    return line
