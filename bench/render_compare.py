"""Benchmark: our Markdown -> Telegram renderer against well-kept libraries, on real answers.

Every library renders every answer of `tests/fixtures/answers/` (whole answers, no splitting
into messages), and each result is reduced to what Telegram would store: a visible text plus
entities. HTML output goes through the port of TDLib's HTML parser in `tests/fakes/telegram.py`
after a strict lexical check (only Telegram's tags and attributes, every <, >, & outside a tag
escaped, no javascript:/data:/vbscript:/file: links); text-plus-entities output is taken as is.
Both are then judged by the same rules (`tests/unit/test_render_corpus.py`):

- valid: Telegram accepts it and keeps every entity (Bot API nesting rules, offsets on
  character boundaries, safe links, non-empty);
- code intact: every fenced code block's content is verbatim inside one `pre` entity
  (percent of the answers that have code blocks);
- nothing lost: every word a CommonMark reader sees (link targets aside) is visible;
- CPU: median over answers of the median of `--repeat` process-time measurements of one render
  (our inline cache is cleared before each one, so every render is cold).

An exception from a library fails all three criteria for that answer. Candidates:

- ours: `bot.telegram.render.render_html` (markdown-it-py tokens -> Telegram HTML);
- chatgpt-md-converter: `telegram_format(markdown)` -> Telegram HTML;
- telegramify-markdown: `convert(markdown)` -> (text, entities), its primary API since 1.0
  (its MarkdownV2 output is made from the same entities by `entities_to_markdownv2`);
- sulguk: markdown-it-py (CommonMark + tables + strikethrough, raw HTML as text) renders
  HTML, `sulguk.transform_html` turns it into (text, entities).

The libraries are not dependencies of the bot: `pip install chatgpt-md-converter
telegramify-markdown sulguk` into the venv first; a missing one is reported, not fatal. Usage:

    .venv/bin/python bench/render_compare.py            # the table
    .venv/bin/python bench/render_compare.py --verbose  # and why each failing answer fails
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bot` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bot.telegram.render import markdown as our_renderer  # noqa: E402
from tests.unit.test_render_corpus import (  # noqa: E402
    Verdict,
    code_blocks,
    judge_entities,
    judge_html,
    load_answers,
)


@dataclass
class Candidate:
    """One library: how to render and judge an answer, and how to time a bare render."""

    name: str
    version: str
    render: Callable[[str], Any]
    judge: Callable[[str, Any], Verdict]
    before_each: Callable[[], None] = lambda: None


@dataclass
class Score:
    """One candidate's results over the corpus."""

    valid: int = 0
    intact: int = 0
    with_code: int = 0
    complete: int = 0
    all_three: int = 0
    errors: int = 0
    micros: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def _ours() -> Candidate:
    return Candidate(
        name="ours (bot.telegram.render)",
        version=f"markdown-it-py {_version('markdown-it-py')}",
        render=our_renderer.render_html,
        judge=judge_html,
        before_each=our_renderer.clear_cache,
    )


def _chatgpt_md_converter() -> Candidate:
    from chatgpt_md_converter import telegram_format  # type: ignore[import-untyped]

    return Candidate(
        name="chatgpt-md-converter",
        version=_version("chatgpt-md-converter"),
        render=telegram_format,
        judge=judge_html,
    )


def _telegramify_markdown() -> Candidate:
    import telegramify_markdown

    def judge(markdown: str, output: Any) -> Verdict:
        text, entities = output
        return judge_entities(markdown, text, [entity.to_dict() for entity in entities])

    return Candidate(
        name="telegramify-markdown",
        version=_version("telegramify-markdown"),
        render=telegramify_markdown.convert,
        judge=judge,
    )


def _sulguk() -> Candidate:
    import sulguk
    from markdown_it import MarkdownIt

    to_html = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])

    def render(markdown: str) -> Any:
        return sulguk.transform_html(to_html.render(markdown))

    def judge(markdown: str, output: Any) -> Verdict:
        return judge_entities(markdown, output.text, list(output.entities))

    return Candidate(
        name="sulguk + markdown-it-py",
        version=f"{_version('sulguk')} + {_version('markdown-it-py')}",
        render=render,
        judge=judge,
    )


def _score(candidate: Candidate, answers: list[tuple[str, str]], repeat: int) -> Score:
    score = Score()
    for name, markdown in answers:
        has_code = bool(code_blocks(markdown))
        score.with_code += has_code
        candidate.before_each()
        try:
            output = candidate.render(markdown)
        except Exception as error:  # a library that raises fails the answer, the bench goes on
            score.errors += 1
            score.failures.append(f"{name}: raised {type(error).__name__}: {error}")
            continue
        verdict = candidate.judge(markdown, output)
        score.valid += not verdict.problems
        score.intact += has_code and not verdict.missing_code
        score.complete += not verdict.lost_words
        score.all_three += verdict.ok
        if not verdict.ok:
            score.failures.append(_explain(name, verdict))
        times = []
        for _ in range(repeat):
            candidate.before_each()
            started = time.process_time_ns()
            candidate.render(markdown)
            times.append(time.process_time_ns() - started)
        score.micros.append(statistics.median(times) / 1000)
    return score


def _explain(name: str, verdict: Verdict) -> str:
    parts = []
    if verdict.problems:
        parts.append(f"invalid {verdict.problems[:3]}")
    if verdict.missing_code:
        parts.append(f"code changed {[code[:40] for code in verdict.missing_code[:2]]}")
    if verdict.lost_words:
        parts.append(f"lost {verdict.lost_words[:8]}")
    return f"{name}: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Render the corpus with every candidate and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed renders per answer")
    parser.add_argument("--verbose", action="store_true", help="list every failing answer")
    args = parser.parse_args(argv)

    answers = load_answers()
    rows: list[tuple[str, ...]] = []
    details: list[tuple[str, list[str]]] = []
    for make in (_ours, _chatgpt_md_converter, _telegramify_markdown, _sulguk):
        try:
            candidate = make()
        except ImportError as error:
            rows.append((make.__name__.strip("_"), "not installed", str(error), "", "", "", ""))
            continue
        score = _score(candidate, answers, args.repeat)
        total = len(answers)
        rows.append(
            (
                candidate.name,
                candidate.version,
                f"{100 * score.valid / total:.0f}",
                f"{100 * score.intact / max(score.with_code, 1):.0f}",
                f"{100 * score.complete / total:.0f}",
                f"{100 * score.all_three / total:.0f}",
                f"{statistics.median(score.micros):.0f}" if score.micros else "-",
                str(score.errors),
            )
        )
        details.append((candidate.name, score.failures))

    with_code = sum(bool(code_blocks(markdown)) for _, markdown in answers)
    print(f"{len(answers)} answers, {with_code} with fenced code; whole answers, no splitting")
    header = (
        "library",
        "version",
        "valid %",
        "code intact %",
        "nothing lost %",
        "all three %",
        "median µs",
        "errors",
    )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)))
    if args.verbose:
        for name, failures in details:
            print(f"\n{name}: {len(failures)} failing answers")
            for failure in failures:
                print(f"  {failure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
