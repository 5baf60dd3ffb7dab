"""Usage reports as plain text for Telegram, split into messages that fit its length limit.

Plain text, not HTML: user names and chat titles are shown as they are, with nothing to escape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bot import texts
from bot.db.usage_queries import RankedUsage
from bot.services.usage import (
    BotReport,
    BudgetUse,
    Figures,
    PeriodReport,
    UserReport,
    format_amount,
    format_cost,
    format_moment,
    format_tokens,
)
from bot.telegram.render import TELEGRAM_TEXT_LIMIT, utf16_len

NAME_MAX = 40
PERIOD_TITLES = {"today": texts.USAGE_TODAY, "month": texts.USAGE_MONTH, "all": texts.USAGE_ALL}


def user_report_text(report: UserReport, *, own: bool, footer: str | None = None) -> list[str]:
    """One user's report (as messages): their own, or another user's as the owner sees it."""
    if own:
        title = texts.USAGE_TITLE_OWN
    else:
        who = _person(report.user_id, report.full_name, report.username)
        title = texts.USAGE_TITLE_USER.format(user=who)
    lines = [title, ""]
    lines += _periods(report.periods, priced=report.priced)
    lines += _budgets(report.budgets)
    lines += _notes(report.periods, priced=report.priced, timezone=report.timezone)
    if footer:
        lines.append(footer)
    return pack(lines)


def bot_report_text(report: BotReport) -> list[str]:
    """The owner's report about the whole bot (as messages)."""
    lines = [texts.USAGE_TITLE_BOT, ""]
    lines += _periods(report.periods, priced=report.priced)
    lines += _budgets(report.budgets)
    for title, ranked in (
        (texts.USAGE_TOP_USERS_TOKENS, report.top_users_by_tokens),
        (texts.USAGE_TOP_USERS_COST, report.top_users_by_cost),
        (texts.USAGE_TOP_CHATS_TOKENS, report.top_chats_by_tokens),
        (texts.USAGE_TOP_CHATS_COST, report.top_chats_by_cost),
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
        title = PERIOD_TITLES[report.period]
        if not report.total.requests:
            lines.append(texts.USAGE_PERIOD_EMPTY.format(period=title))
            continue
        figures = _figures(report.total, priced=priced)
        lines.append(texts.USAGE_PERIOD.format(period=title, figures=figures))
        if len(report.models) > 1:
            lines += [
                texts.USAGE_MODEL.format(model=m.model, figures=_figures(m.figures, priced=priced))
                for m in report.models
            ]
    return lines


def _figures(figures: Figures, *, priced: bool) -> str:
    mark = texts.USAGE_ESTIMATED_MARK if figures.estimated else ""
    text = texts.USAGE_FIGURES.format(
        requests=format_tokens(figures.requests),
        tokens=mark + format_tokens(figures.tokens),
        prompt=mark + format_tokens(figures.prompt_tokens),
        completion=mark + format_tokens(figures.completion_tokens),
    )
    if figures.images:
        text += texts.USAGE_FIGURES_IMAGES.format(images=format_tokens(figures.images))
    if priced:
        text += texts.USAGE_FIGURES_COST.format(cost=mark + format_cost(figures.cost))
    return text


def _budgets(budgets: Sequence[BudgetUse]) -> list[str]:
    if not budgets:
        return []
    lines = ["", texts.USAGE_BUDGETS]
    for use in budgets:
        window = texts.USAGE_BUDGET_DAILY if use.window == "daily" else texts.USAGE_BUDGET_MONTHLY
        template = texts.USAGE_BUDGET_REACHED if use.reached else texts.USAGE_BUDGET_LINE
        used = format_tokens(use.used) if use.unit == "tokens" else format_cost(use.used)
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
        texts.USAGE_TOP_LINE.format(
            rank=rank,
            who=_person(entry.id, entry.name, entry.username),
            tokens=format_tokens(entry.tokens),
            cost=texts.USAGE_FIGURES_COST.format(cost=format_cost(entry.cost)) if priced else "",
        )
        for rank, entry in enumerate(ranked, start=1)
    ]


def _notes(periods: Sequence[PeriodReport], *, priced: bool, timezone: str) -> list[str]:
    lines = [""]
    if any(p.total.estimated for p in periods):
        lines.append(texts.USAGE_ESTIMATED_NOTE)
    if priced:
        lines.append(texts.USAGE_COST_NOTE)
    lines.append(texts.USAGE_TIMEZONE_NOTE.format(timezone=timezone))
    return lines


def _person(id_: int, name: str | None, username: str | None) -> str:
    if not name:
        return texts.USAGE_UNKNOWN.format(id=id_)
    name = _shorten(" ".join(name.split()), NAME_MAX)
    if username:
        return texts.USAGE_USER.format(name=name, username=username, id=id_)
    return texts.USAGE_USER_NO_USERNAME.format(name=name, id=id_)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(line: str, limit: int) -> str:
    """A single line never exceeds a message (a very long model id, say)."""
    while utf16_len(line) > limit:
        line = line[: len(line) - (utf16_len(line) - limit) - 1] + "…"
    return line
