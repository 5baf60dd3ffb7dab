"""Before and after in one run: bench/run.py on an earlier revision and on this checkout, in turn.

The machines this runs on are shared and noisy, so the two bots are measured alternately
(before, after, after, before, ...) with the same fakes and the same scenarios, and the table
gives each figure's median over the rounds and the ratio after / before.

    .venv/bin/python bench/compare.py --before 226909f                  # capacity at 1,000 chats
    .venv/bin/python bench/compare.py --before 226909f --rounds 3 -- --only latency,capacity

The earlier revision is checked out with `git worktree` into a scratch directory and run with
this checkout's virtualenv (so its dependencies must be installed here too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_ARGS = ["--only", "latency,capacity", "--chats", "1000", "--repeat", "1"]

Metric = tuple[str, Callable[[dict[str, Any]], float | None]]


def _capacity(field: str, chats: int) -> Callable[[dict[str, Any]], float | None]:
    def read(raw: dict[str, Any]) -> float | None:
        for row in raw.get("capacity") or []:
            if row["chats"] == chats:
                value = row[field]
                if field == "bot_cpu":  # seconds in all -> ms per answer
                    return float(value) * 1000 / row["chats"]
                return float(value)
        return None

    return read


def _first_token_p50(raw: dict[str, Any]) -> float | None:
    latency = raw.get("latency")
    if not latency or not latency["samples"]:
        return None
    return statistics.median(s["first_token"] for s in latency["samples"]) * 1000


def _ingest_p50(raw: dict[str, Any]) -> float | None:
    latency = raw.get("latency")
    if not latency or not latency["samples"]:
        return None
    return statistics.median(s["ingest"] for s in latency["samples"]) * 1000


def metrics(raw: dict[str, Any]) -> list[Metric]:
    """The figures compared: per chat count measured, then the delays."""
    found: list[Metric] = []
    for row in raw.get("capacity") or []:
        n = row["chats"]
        found.append((f"CPU ms per answer, {n:,} chats", _capacity("bot_cpu", n)))
        found.append((f"peak RSS MB, {n:,} chats", _capacity("peak_rss_mb", n)))
        found.append((f"first text p50 s, {n:,} chats", _capacity("first_visible_p50", n)))
        found.append((f"complete answers, {n:,} chats", _capacity("complete", n)))
        found.append((f"429s, {n:,} chats", _capacity("count_429", n)))
    if raw.get("latency"):
        found.append(("first token -> visible text p50 ms", _first_token_p50))
        found.append(("ingest p50 ms (all histories)", _ingest_p50))
    return found


def run_once(root: Path, run_args: Sequence[str], out: Path) -> dict[str, Any]:
    """One bench/run.py with the bot taken from `root`; its raw JSON results."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        *run_args,
        "--bot-root",
        str(root),
        "--json",
        str(out),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median of the values measured, None if there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def table(before: list[dict[str, Any]], after: list[dict[str, Any]], revision: str) -> str:
    """Medians over the rounds and the ratio after / before, as a Markdown table."""
    lines = [
        f"| figure (median of {len(after)} rounds) | before ({revision}) | after "
        "| after / before |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, read in metrics(after[0]):
        b = median_or_none([read(r) for r in before])
        a = median_or_none([read(r) for r in after])
        ratio = f"{a / b:.2f}" if a is not None and b else "–"
        lines.append(f"| {name} | {_fmt(b)} | {_fmt(a)} | {ratio} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"


def worktree(revision: str, scratch: Path) -> Path:
    """A checkout of `revision` in `scratch`."""
    path = scratch / "before"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Measure both revisions alternately and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the earlier git revision")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument(
        "run_args",
        nargs="*",
        help="arguments for bench/run.py (after --); default: " + " ".join(DEFAULT_RUN_ARGS),
    )
    args = parser.parse_args(argv)
    run_args = args.run_args or DEFAULT_RUN_ARGS
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bot-compare-") as scratch_name:
        scratch = Path(scratch_name)
        old = worktree(args.before, scratch)
        try:
            for round_ in range(args.rounds):
                order = [("before", old, before), ("after", ROOT, after)]
                if round_ % 2:
                    order.reverse()
                for label, root, results in order:
                    print(f"round {round_ + 1}: {label}", file=sys.stderr, flush=True)
                    out = scratch / f"{label}-{round_}.json"
                    results.append(run_once(root, run_args, out))
                    print(f"  {_cpu_figures(results[-1])}", file=sys.stderr, flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                check=False,
            )
    print(table(before, after, args.before))
    print()
    print(spread(before, after))


def _cpu_metrics(raw: dict[str, Any]) -> list[Metric]:
    return [(name, read) for name, read in metrics(raw) if name.startswith("CPU")]


def _cpu_figures(raw: dict[str, Any]) -> str:
    return ", ".join(f"{name}: {_fmt(read(raw))}" for name, read in _cpu_metrics(raw))


def spread(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Each round's CPU per answer, so the table's medians can be read with their noise."""
    lines = []
    for name, read in _cpu_metrics(after[0]):
        for label, runs in (("before", before), ("after", after)):
            values = " ".join(_fmt(read(r)) for r in runs)
            lines.append(f"{name}, each round {label}: {values}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
