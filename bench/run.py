"""Benchmark: what the bot itself adds in delay, CPU, memory and Bot API calls.

The real bot (`python -m bot`) runs as a subprocess, so the CPU time and memory measured on its
pid are its own; FakeTelegram and FakeLLM (from `tests/fakes`) run in this process on 127.0.0.1
and share its monotonic clock, so their timestamps compare directly. Figures:

1. first-token delay: the backend writes its first content chunk -> Telegram receives the
   first call that shows it (a sendMessage, or a sendMessageDraft in draft mode);
2. ingest delay: getUpdates hands the update out -> the backend receives the request, in chats
   holding a short and a long stored history (filled into SQLite before the bot starts);
3. capacity: N private chats each streaming an answer at once, under emulated flood control;
4. smoothness: the largest gap between visible updates of one long answer, private and group.

Capacity answers are 2,000 characters in 20-character chunks over 10 s (about 50 tokens a
second); `--answer-chars`, `--chunk-chars` and `--stream-seconds` change that. It only measures
and prints; it never fails. Usage:

    .venv/bin/python bench/run.py            # full run, about 10 minutes
    .venv/bin/python bench/run.py --quick    # smoke run, about 2 minutes
    .venv/bin/python bench/run.py --only capacity --chats 1000 --repeat 1 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

ROOT = Path(__file__).resolve().parents[1]
# The checkout whose bot is measured: this one unless --bot-root names another.
BOT_ROOT = ROOT
if str(ROOT) not in sys.path:  # run as a script: make `bot` and `tests` importable
    sys.path.insert(0, str(ROOT))

from bot.db.engine import alembic_config, create_engine, create_sessionmaker  # noqa: E402
from bot.db.repositories import ChatRepository, NewTurn, TurnRepository  # noqa: E402
from bot.services.tokens import TokenCounter  # noqa: E402
from tests.fakes.openai import FakeLLM, Recorded, Reply, Stream  # noqa: E402
from tests.fakes.telegram import Call, FakeTelegram  # noqa: E402

TOKEN = "123456:BENCH-TOKEN"
API_KEY = "sk-bench-key"
MODEL = "bench-model"
BOT_USERNAME = "bench_llm_bot"
# Calls that show answer text: a message, its edits, and drafts (STREAM_MODE=draft).
TEXT_METHODS = frozenset({"sendMessage", "editMessageText", "sendMessageDraft"})
# STREAM_MODE of the bot measured (--stream-mode); revisions before drafts ignore it.
STREAM_MODE = "auto"

_SENTENCE = (
    "the answer streams in small pieces while the bot edits one message at a steady pace "
    "so that every reader sees the text grow without flooding the chat or the servers"
)
_VOCABULARY = _SENTENCE.split(" ")


# ---- small helpers ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def plain_text(chars: int, seed: int = 0) -> str:
    """Plain words (no Markdown syntax) in paragraphs, `chars` characters long."""
    words: list[str] = []
    size = 0
    i = seed
    since_break = 0
    while size < chars:
        word = _VOCABULARY[i % len(_VOCABULARY)]
        i += 7
        sep = " "
        if since_break > 400:
            sep, since_break = "\n\n", 0
        words.append(sep + word if words else word)
        size += len(words[-1])
        since_break += len(words[-1])
    return "".join(words)[:chars].rstrip()


def chunked(text: str, size: int) -> list[str]:
    """`text` cut into pieces of `size` characters, as a backend streams it."""
    return [text[i : i + size] for i in range(0, len(text), size)]


async def until(predicate: Callable[[], bool], within: float, interval: float = 0.01) -> bool:
    """Poll `predicate` until it holds (True) or `within` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "python": platform.python_version(),
        "system": platform.platform(terse=True),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def last_user_text(body: Any) -> str:
    """Content of the last user message of a chat completion request."""
    if isinstance(body, dict):
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else ""
    return ""


class Script:
    """The fake backend's replies, chosen by a marker in the user's last message."""

    def __init__(self, default: Stream) -> None:
        self.default = default
        self.by_marker: dict[str, Stream] = {}

    def __call__(self, body: dict[str, Any]) -> Reply:
        text = last_user_text(body)
        for marker, reply in self.by_marker.items():
            if marker in text:
                return reply
        return self.default


# ---- the bot process -------------------------------------------------------------------------


@dataclass
class BotProcess:
    """`python -m bot` in a subprocess, with its CPU time and peak memory sampled."""

    proc: asyncio.subprocess.Process
    ps: psutil.Process
    log_path: Path
    peak_rss: int = 0
    _sampler: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        *,
        tg: FakeTelegram,
        llm: FakeLLM,
        workdir: Path,
        db_path: Path,
        extra_env: dict[str, str] | None = None,
        ready_method: str = "getUpdates",
    ) -> BotProcess:
        """Start the bot pointed at the fakes; returns once it makes its first `ready_method`
        call (it polls for updates; a webhook replica registers its webhook)."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("BOT_", "LLM_", "TELEGRAM_", "DATABASE_", "OWNER_"))
        }
        env.update(
            PYTHONPATH=str(BOT_ROOT),
            BOT_TOKEN=TOKEN,
            TELEGRAM_API_URL=tg.url,
            LLM_BASE_URL=llm.base_url,
            LLM_API_KEY=API_KEY,
            LLM_MODEL=MODEL,
            DATABASE_URL=f"sqlite:///{db_path}",
            SHUTDOWN_GRACE="5",
            STREAM_MODE=STREAM_MODE,
        )
        env.update(extra_env or {})
        log_path = workdir / "bot.log"
        with log_path.open("ab") as log:
            # cwd is the scratch directory, so no developer's .env is read.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=log,
            )
        bot = cls(proc=proc, ps=psutil.Process(proc.pid), log_path=log_path)
        bot._sampler = asyncio.create_task(bot._sample())
        polls = len(tg.calls_to(ready_method))
        started = await until(
            lambda: len(tg.calls_to(ready_method)) > polls or proc.returncode is not None, 60
        )
        if not started or proc.returncode is not None:
            await bot.stop()
            raise RuntimeError(f"the bot did not start; its log:\n{bot.log_tail()}")
        return bot

    def cpu_seconds(self) -> float:
        """User plus system CPU time the bot process has used so far."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return int(self.ps.memory_info().rss)

    async def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            while self.proc.returncode is None:
                self.peak_rss = max(self.peak_rss, self.rss())
                await asyncio.sleep(0.02)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the bot's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self) -> int | None:
        """SIGTERM, as `docker stop` does; kill if it does not end."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        return self.proc.returncode


def scratch_dir(path: Path) -> Path:
    """Create a scratch directory for one bot process."""
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def environment(
    workdir: Path, prefill: dict[int, int] | None = None, *, primary_down: bool = False
) -> AsyncIterator[tuple[FakeTelegram, FakeLLM, BotProcess]]:
    """Fresh fakes, a fresh database (optionally with stored history) and a running bot.

    `primary_down`: the bot's primary backend refuses connections and the fake backend is its
    fallback (LLM_FALLBACKS).
    """
    db_path = scratch_dir(workdir) / "bot.db"
    if prefill:
        await prefill_history(db_path, prefill)
    tg = FakeTelegram(token=TOKEN, bot_username=BOT_USERNAME)
    llm = FakeLLM(api_key=API_KEY)
    await tg.start()
    await llm.start()
    bot: BotProcess | None = None
    try:
        extra = None
        if primary_down:
            fallback = {"base_url": llm.base_url, "api_key": API_KEY, "name": "fallback"}
            extra = {"LLM_BASE_URL": refused_url(), "LLM_FALLBACKS": json.dumps([fallback])}
        bot = await BotProcess.start(
            tg=tg, llm=llm, workdir=workdir, db_path=db_path, extra_env=extra
        )
        yield tg, llm, bot
    finally:
        if bot is not None:
            await bot.stop()
        await llm.stop()
        await tg.stop()


def refused_url() -> str:
    """A backend URL on a local port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _upgrade_to_head(connection: Connection, config: Config) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def prefill_history(db_path: Path, turns_by_chat: dict[int, int]) -> None:
    """Store conversations directly through the repositories, before the bot starts."""
    engine = create_engine(f"sqlite+aiosqlite:///{db_path}")
    # The schema of the bot measured (another revision's, with bench/compare.py), so that it
    # starts on a database it knows; the tables written here are the same in every revision.
    config = alembic_config()
    config.set_main_option("script_location", str(BOT_ROOT / "bot" / "db" / "migrations"))
    async with engine.connect() as connection:
        await connection.run_sync(_upgrade_to_head, config)
    sessions = create_sessionmaker(engine)
    counter = TokenCounter()
    question = plain_text(160, seed=1)
    answer = plain_text(700, seed=2)
    q_tokens, a_tokens = counter.count(question), counter.count(answer)
    try:
        for chat_id, count in turns_by_chat.items():
            async with sessions() as session, session.begin():
                await ChatRepository(session).upsert(chat_id=chat_id, type="private", title=None)
                turns = [
                    NewTurn(role="user", content=question, tokens=q_tokens)
                    if k % 2 == 0
                    else NewTurn(role="assistant", content=answer, tokens=a_tokens)
                    for k in range(count)
                ]
                await TurnRepository(session).add(chat_id=chat_id, turns=turns)
    finally:
        await engine.dispose()


# ---- observing the fakes ---------------------------------------------------------------------


def chat_request(llm: FakeLLM, text: str, start: int = 0) -> Recorded | None:
    """The backend request whose last user message is `text`."""
    for rec in llm.requests[start:]:
        if rec.path.endswith("/chat/completions") and last_user_text(rec.json).endswith(text):
            return rec
    return None


def shows_text(call: Call) -> bool:
    """True for a call that shows answer text (not the empty "Thinking…" draft)."""
    return call.method in TEXT_METHODS and bool(call.params.get("text"))


def text_calls(tg: FakeTelegram, chat_id: int, since: float, start: int = 0) -> list[Call]:
    """Successful calls showing answer text in a chat since `since` (fake clock)."""
    return [
        c
        for c in tg.calls[start:]
        if c.chat_id == chat_id and shows_text(c) and c.ok and c.at >= since
    ]


@dataclass
class Sample:
    """One answer's delays, in seconds."""

    chat_id: int
    history: int  # turns stored in the chat before the bench started
    first_token: float
    ingest: float


async def ask(
    tg: FakeTelegram, llm: FakeLLM, chat_id: int, text: str, expected: str, history: int
) -> Sample | None:
    """Send one message, wait for the complete answer, and measure its delays."""
    before = len(tg.live_messages(chat_id))
    requests_start = len(llm.requests)
    update = tg.user_message(chat_id=chat_id, text=text)

    def answered() -> bool:
        live = tg.live_messages(chat_id)
        return len(live) == before + 1 and live[-1].text == expected

    if not await until(answered, 30):
        print(f"  ! chat {chat_id}: no complete answer within 30 s", file=sys.stderr)
        return None
    rec = chat_request(llm, text, requests_start)
    handed = tg.handed_out.get(update["update_id"])
    if rec is None or rec.first_chunk_at is None or handed is None:
        return None
    first = text_calls(tg, chat_id, rec.received_at)
    if not first:
        return None
    return Sample(
        chat_id=chat_id,
        history=history,
        first_token=first[0].at - rec.first_chunk_at,
        ingest=rec.received_at - handed,
    )


# ---- scenarios -------------------------------------------------------------------------------


@dataclass
class LatencyResult:
    """First-token and ingest delays over many answers."""

    answers: int
    histories: list[int]
    samples: list[Sample] = field(default_factory=list)

    def first_token(self) -> list[float]:
        """First-token delays of every answer."""
        return [s.first_token for s in self.samples]

    def ingest(self, history: int) -> list[float]:
        """Ingest delays of the answers in chats that had `history` turns stored."""
        return [s.ingest for s in self.samples if s.history == history]


# Five chats per history size, so that a chat's next question comes after its pacing interval.
CHATS_PER_HISTORY = 5
# A conversation this long already fills the default history budget (12,000 tokens) with the
# stored turns' sizes: from here on a longer history must not cost more.
BUDGET_FULL_TURNS = 300

LATENCY_ANSWER = plain_text(240, seed=3)


def history_chats(histories: Sequence[int]) -> dict[int, list[int]]:
    """Chat ids for each history size."""
    return {
        turns: [1000 * (k + 1) + n for n in range(CHATS_PER_HISTORY)]
        for k, turns in enumerate(histories)
    }


async def latency(
    tg: FakeTelegram, llm: FakeLLM, script: Script, answers: int, histories: Sequence[int]
) -> LatencyResult:
    """Answers one at a time, taking turns between chats with the given stored histories."""
    answer = LATENCY_ANSWER
    llm.set_default(script)
    result = LatencyResult(answers=answers, histories=list(histories))
    for i, chat_id in enumerate((901, 902, 903)):  # warm-up: imports, connections, caches
        await ask(tg, llm, chat_id, f"warm-up {i}", answer, 0)
    chats_by_history = history_chats(histories)
    last_done: dict[int, float] = {}
    for i in range(answers):
        history = histories[i % len(histories)]
        chats = chats_by_history[history]
        chat_id = chats[(i // len(histories)) % len(chats)]
        # A chat's next message comes after its pacing interval, like a person typing.
        wait = last_done.get(chat_id, 0.0) + 1.2 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        sample = await ask(tg, llm, chat_id, f"question number {i}", answer, history)
        last_done[chat_id] = time.monotonic()
        if sample is not None:
            result.samples.append(sample)
    return result


@dataclass
class FallbackResult:
    """Delays to the backend request with a healthy primary, and with one refusing connections.

    Ingest (getUpdates -> the request reaching the backend that answers) holds the fallback's
    cost: the refused attempt on the primary comes first. The first visible text after the
    first token does not depend on which backend answered.
    """

    healthy: list[Sample] = field(default_factory=list)
    fallback: list[Sample] = field(default_factory=list)


async def fallback_delays(root: Path, answers: int) -> FallbackResult:
    """The same short answers, first through a healthy primary, then through the fallback."""
    result = FallbackResult()
    for primary_down, samples in ((False, result.healthy), (True, result.fallback)):
        kind = "down" if primary_down else "healthy"
        async with environment(root / f"fallback-{kind}", primary_down=primary_down) as (
            tg,
            llm,
            _,
        ):
            llm.set_default(Script(Stream(chunked(LATENCY_ANSWER, 12), delay=0.01)))
            for i, chat_id in enumerate((951, 952, 953)):  # warm-up
                await ask(tg, llm, chat_id, f"warm-up {i}", LATENCY_ANSWER, 0)
            for i in range(answers):
                sample = await ask(tg, llm, 6000 + i, f"question {i}", LATENCY_ANSWER, 0)
                if sample is not None:
                    samples.append(sample)
    return result


@dataclass
class SmoothResult:
    """How steadily one long answer became visible."""

    kind: str
    seconds: float
    characters: int
    complete: bool
    largest_gap: float
    edits: int
    calls: int
    busiest_minute: int
    count_429: int


def smoothness_of(
    tg: FakeTelegram, chat_id: int, rec: Recorded | None, expected: str, kind: str, seconds: float
) -> SmoothResult:
    """Gaps between visible updates while the backend was streaming, and the calls made."""
    live = tg.live_messages(chat_id)
    complete = len(live) == 1 and live[0].text == expected
    if rec is None or rec.first_chunk_at is None or rec.finished_at is None:
        return SmoothResult(kind, seconds, len(expected), False, math.nan, 0, 0, 0, 0)
    calls = [c for c in tg.calls if c.chat_id == chat_id and c.method in TEXT_METHODS]
    shown = sorted(c.at for c in calls if c.ok and shows_text(c) and c.at >= rec.received_at)
    flowing = [rec.first_chunk_at, *(t for t in shown if t <= rec.finished_at), rec.finished_at]
    gaps = [b - a for a, b in itertools.pairwise(flowing)]
    stamps = sorted(c.at for c in calls if c.status != 429)
    busiest = max(
        (sum(1 for t in stamps if s <= t < s + 60.0) for s in stamps),
        default=0,
    )
    return SmoothResult(
        kind=kind,
        seconds=seconds,
        characters=len(expected),
        complete=complete,
        largest_gap=max(gaps) if gaps else math.nan,
        edits=sum(1 for c in calls if c.method != "sendMessage" and c.ok),
        calls=len(calls),
        busiest_minute=busiest,
        count_429=sum(1 for c in calls if c.status == 429),
    )


async def smoothness(
    tg: FakeTelegram, llm: FakeLLM, script: Script, private_seconds: float, group_seconds: float
) -> list[SmoothResult]:
    """A long answer in a private chat and one in a group, streamed at the same time."""
    plans = {
        "private": (777, "private", private_seconds, plain_text(2000, seed=5)),
        "group": (-777, "group", group_seconds, plain_text(3000, seed=6)),
    }
    for kind, (_, _, seconds, text) in plans.items():
        pieces = chunked(text, max(1, round(len(text) / (seconds * 20))))  # 20 chunks a second
        script.by_marker[f"smooth-{kind}"] = Stream(pieces, delay=seconds / len(pieces))
    llm.set_default(script)
    start = len(llm.requests)
    for kind, (chat_id, chat_type, _, _) in plans.items():
        tg.user_message(
            chat_id=chat_id,
            chat_type=chat_type,
            chat_title="Bench group" if chat_type == "group" else None,
            user_id=4242,
            text=f"@{BOT_USERNAME} smooth-{kind} please",
        )
    longest = max(private_seconds, group_seconds)

    def done() -> bool:
        return all(
            (rec := chat_request(llm, f"smooth-{kind} please", start)) is not None
            and rec.finished_at is not None
            for kind in plans
        )

    await until(done, longest + 60, interval=0.1)
    await asyncio.sleep(4.0)  # the final edit follows the chat's pacing interval
    return [
        smoothness_of(
            tg,
            chat_id,
            chat_request(llm, f"smooth-{kind} please", start),
            text,
            kind,
            seconds,
        )
        for kind, (chat_id, _, seconds, text) in plans.items()
    ]


@dataclass
class CapacityResult:
    """N chats streaming at once under flood control."""

    chats: int
    answer_chars: int
    stream_seconds: float
    complete: int
    wall: float
    bot_cpu: float
    peak_rss_mb: float
    text_calls: int
    all_calls: int
    count_429: int
    violations: int
    rejected: dict[str, int]
    # Bot API calls about the chats, by method (the worst run's, with repeats).
    methods: dict[str, int]
    first_visible_p50: float
    first_visible_max: float
    bench_cpu_percent: float
    runs: int = 1

    @property
    def cpu_ms_per_answer(self) -> float:
        """Bot CPU milliseconds per answer."""
        return 1000.0 * self.bot_cpu / self.chats

    @property
    def cpu_ms_per_streamed_second(self) -> float:
        """Bot CPU milliseconds per second of streamed answer."""
        return 1000.0 * self.bot_cpu / (self.chats * self.stream_seconds)


async def capacity(
    workdir: Path, chats: int, answer_chars: int, stream_seconds: float, chunk_chars: int
) -> CapacityResult:
    """All chats ask at once; wait until every answer is complete (or a generous timeout)."""
    answer = plain_text(answer_chars, seed=4)
    pieces = chunked(answer, chunk_chars)
    reply = Stream(pieces, delay=stream_seconds / max(1, len(pieces) - 1))
    async with environment(workdir) as (tg, llm, bot):
        script = Script(reply)
        script.by_marker["warm-up"] = Stream(chunked(LATENCY_ANSWER, 12), delay=0.01)
        llm.set_default(script)
        for i, chat_id in enumerate((91, 92, 93)):  # warm-up
            await ask(tg, llm, chat_id, f"warm-up {i}", LATENCY_ANSWER, 0)
        ids = [100_000 + i for i in range(chats)]
        for chat_id in ids:
            tg.register_chat(chat_id)
        me = psutil.Process()
        calls_start = len(tg.calls)
        flood_start = (tg.flood.count_429, tg.flood.violations)
        cpu_start, bench_start = bot.cpu_seconds(), me.cpu_times()
        t0 = tg.clock()
        for chat_id in ids:
            tg.user_message(chat_id=chat_id, text=f"capacity question for {chat_id}")
        pending = set(ids)
        deadline = time.monotonic() + 120 + chats * 0.3
        while pending and time.monotonic() < deadline and bot.proc.returncode is None:
            await asyncio.sleep(0.25)
            for chat_id in list(pending):
                live = tg.live_messages(chat_id)
                if len(live) == 1 and live[0].text == answer:
                    pending.discard(chat_id)
        await asyncio.sleep(0.5)  # let the last turns be stored
        bot_cpu = bot.cpu_seconds() - cpu_start
        bench_end = me.cpu_times()
        first_at: dict[int, float] = {}
        last_at: dict[int, float] = {}
        wanted = set(ids)
        text_count = all_count = 0
        rejected: dict[str, int] = {}
        methods: dict[str, int] = {}
        for call in tg.calls[calls_start:]:
            if call.chat_id not in wanted:
                continue
            all_count += 1
            methods[call.method] = methods.get(call.method, 0) + 1
            if call.status == 429:
                rejected[call.method] = rejected.get(call.method, 0) + 1
            if call.method in TEXT_METHODS:
                text_count += 1
                if call.ok and shows_text(call):
                    first_at.setdefault(call.chat_id, call.at)
                    last_at[call.chat_id] = call.at
        complete = chats - len(pending)
        wall = (max(last_at.values()) - t0) if last_at and not pending else math.nan
        first_visible = [at - t0 for at in first_at.values()]
        bench_cpu = (bench_end.user + bench_end.system) - (bench_start.user + bench_start.system)
        return CapacityResult(
            chats=chats,
            answer_chars=len(answer),
            stream_seconds=stream_seconds,
            complete=complete,
            wall=wall,
            bot_cpu=bot_cpu,
            peak_rss_mb=bot.peak_rss / 2**20,
            text_calls=text_count,
            all_calls=all_count,
            count_429=tg.flood.count_429 - flood_start[0],
            violations=tg.flood.violations - flood_start[1],
            rejected=rejected,
            methods=methods,
            first_visible_p50=percentile(first_visible, 50),
            first_visible_max=max(first_visible, default=math.nan),
            bench_cpu_percent=100.0 * bench_cpu / max(tg.clock() - t0, 1e-9),
        )


def combine(runs: Sequence[CapacityResult]) -> CapacityResult:
    """Medians over repeated runs; the worst run for completeness, 429s and peak memory."""

    def median(name: str) -> float:
        return percentile([float(getattr(r, name)) for r in runs], 50)

    rejected: dict[str, int] = {}
    for r in runs:
        for method, count in r.rejected.items():
            rejected[method] = max(rejected.get(method, 0), count)
    first = runs[0]
    busiest = max(runs, key=lambda r: r.all_calls)
    return CapacityResult(
        chats=first.chats,
        answer_chars=first.answer_chars,
        stream_seconds=first.stream_seconds,
        complete=min(r.complete for r in runs),
        wall=median("wall"),
        bot_cpu=median("bot_cpu"),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        text_calls=round(median("text_calls")),
        all_calls=round(median("all_calls")),
        count_429=max(r.count_429 for r in runs),
        violations=max(r.violations for r in runs),
        rejected=rejected,
        methods=busiest.methods,
        first_visible_p50=median("first_visible_p50"),
        first_visible_max=median("first_visible_max"),
        bench_cpu_percent=median("bench_cpu_percent"),
        runs=len(runs),
    )


# ---- report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    """Seconds as whole milliseconds."""
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def report(
    info: dict[str, Any],
    lat: LatencyResult | None,
    smooth: list[SmoothResult],
    cap: list[CapacityResult],
    fb: FallbackResult | None = None,
) -> str:
    """The results as Markdown tables."""
    out = [
        f"STREAM_MODE={STREAM_MODE}. "
        f"Machine: {info['cpu']}, {info['logical_cores']} logical cores "
        f"({info['physical_cores']} physical), Python {info['python']}, {info['system']}; "
        f"load average {' '.join(map(str, info['load_average_start']))} at the start, "
        f"{' '.join(map(str, info['load_average_end']))} at the end.",
        "",
    ]
    if lat is not None:
        ft = lat.first_token()
        out += [
            "| delay | answers | p50 ms | p95 ms | max ms | target |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
            f"| first token (backend chunk -> first text shown) | {len(ft)} | "
            f"{ms(percentile(ft, 50))} | {ms(percentile(ft, 95))} | "
            f"{ms(max(ft, default=math.nan))} | p50 ≤ 30, p95 ≤ 80 |",
        ]
        for k, turns in enumerate(lat.histories):
            values = lat.ingest(turns)
            what = "ingest (getUpdates -> backend request), " if k == 0 else "ingest, "
            target = "p50 ≤ 20" if k == 0 else f"same as at {lat.histories[0]:,}"
            out.append(
                f"| {what}{turns:,} stored turns | {len(values)} | "
                f"{ms(percentile(values, 50))} | {ms(percentile(values, 95))} | "
                f"{ms(max(values, default=math.nan))} | {target} |"
            )
        out += [
            "",
            f"{BUDGET_FULL_TURNS} stored turns already fill the default 12,000-token history "
            "budget, so from there on the prompt sent stays the same size.",
            "",
        ]
    if fb is not None:
        rows = []
        for what, samples in (
            ("healthy primary", fb.healthy),
            ("primary refusing connections, fallback answers", fb.fallback),
        ):
            ingest = [x.ingest for x in samples]
            first = [x.first_token for x in samples]
            rows.append(
                f"| {what} | {len(samples)} | {ms(percentile(ingest, 50))} | "
                f"{ms(percentile(ingest, 95))} | {ms(percentile(first, 50))} |"
            )
        extra = percentile([x.ingest for x in fb.fallback], 50) - percentile(
            [x.ingest for x in fb.healthy], 50
        )
        out += [
            "| backend | answers | ingest p50 ms | ingest p95 ms | first token -> text p50 ms |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"The fallback adds {ms(extra)} ms (p50) before the answer is requested.",
            "",
        ]
    if cap:
        out += [
            "| chats (runs) | complete | wall s | bot CPU ms/answer | bot CPU ms per streamed s "
            "| peak RSS MB | text calls/answer | all calls/answer | 429s (in open window) "
            "| first text p50 / max s "
            "| bench process CPU % |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in cap:
            out.append(
                f"| {c.chats:,} ({c.runs}) | {c.complete:,}/{c.chats:,} | {c.wall:.1f} | "
                f"{c.cpu_ms_per_answer:.1f} | {c.cpu_ms_per_streamed_second:.2f} | "
                f"{c.peak_rss_mb:.0f} | {c.text_calls / c.chats:.2f} | "
                f"{c.all_calls / c.chats:.2f} | {c.count_429} ({c.violations}) | "
                f"{c.first_visible_p50:.1f} / {c.first_visible_max:.1f} | "
                f"{c.bench_cpu_percent:.0f} |"
            )
        first = cap[0]
        out += [
            "",
            f"Each answer: {first.answer_chars:,} characters streamed over "
            f"{first.stream_seconds:g} s. Medians over the runs; complete, 429s and RSS from "
            "the worst run. Targets: no lost text, no 429, ≤ 2 ms bot CPU per streamed second, "
            "< 300 MB RSS.",
            "",
        ]
        for c in cap:
            by_method = ", ".join(
                f"{method} {count / c.chats:.2f}"
                for method, count in sorted(c.methods.items(), key=lambda item: -item[1])
            )
            out.append(f"Calls per answer at {c.chats:,} chats, by method: {by_method}.")
        out.append("")
    if smooth:
        out += [
            "| chat | answer s | characters | complete | largest gap s | edits or drafts | calls "
            "| busiest 60 s | 429s |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for s in smooth:
            out.append(
                f"| {s.kind} | {s.seconds:g} | {s.characters:,} | {'yes' if s.complete else 'NO'}"
                f" | {s.largest_gap:.2f} | {s.edits} | {s.calls} | {s.busiest_minute} | "
                f"{s.count_429} |"
            )
        out += [
            "",
            "Targets: private ≤ 1.5 s between visible updates; groups ≤ 20 calls in any 60 s.",
        ]
    return "\n".join(out)


# ---- main ------------------------------------------------------------------------------------


_STARTED = time.monotonic()


def progress(what: str) -> None:
    """Say on stderr what runs now and how long the run has taken so far."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {what}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; --quick shrinks every scenario."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run")
    parser.add_argument("--answers", type=int, help="answers for the delay figures (≥ 50)")
    parser.add_argument("--chats", help="comma-separated chat counts for the capacity figure")
    parser.add_argument("--answer-chars", type=int, default=2000)
    parser.add_argument("--stream-seconds", type=float, default=10.0)
    parser.add_argument("--chunk-chars", type=int, default=20, help="characters per SSE chunk")
    parser.add_argument("--repeat", type=int, help="runs per chat count (medians are shown)")
    parser.add_argument(
        "--only",
        default="latency,fallback,capacity,smooth",
        help="scenarios to run, comma-separated",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--stream-mode",
        choices=("auto", "draft", "edit"),
        default="auto",
        help="the bot's STREAM_MODE: drafts in private chats (auto, draft) or edits (edit)",
    )
    parser.add_argument(
        "--bot-root",
        type=Path,
        default=ROOT,
        help="run the bot from this checkout (default: this one); see bench/compare.py",
    )
    args = parser.parse_args(argv)
    if args.answers is None:
        args.answers = 21 if args.quick else 150
    if args.chats is None:
        args.chats = "20,50" if args.quick else "100,300,1000"
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    args.chat_counts = [int(n) for n in args.chats.split(",") if n.strip()]
    args.scenarios = {s.strip() for s in args.only.split(",")}
    args.private_seconds = 5.0 if args.quick else 20.0
    args.group_seconds = 10.0 if args.quick else 65.0
    args.long_turns = 1000 if args.quick else 5000
    args.fallback_answers = 20 if args.quick else 60
    return args


async def main(args: argparse.Namespace) -> None:
    """Run the chosen scenarios and print the tables."""
    info = machine()
    lat: LatencyResult | None = None
    fb: FallbackResult | None = None
    smooth: list[SmoothResult] = []
    cap: list[CapacityResult] = []
    with tempfile.TemporaryDirectory(prefix="bot-bench-") as scratch:
        root = Path(scratch)
        if args.scenarios & {"latency", "smooth"}:
            histories = [10, BUDGET_FULL_TURNS, args.long_turns]
            prefill = {
                chat_id: turns
                for turns, chats in history_chats(histories).items()
                for chat_id in chats
            }
            progress("delays and smoothness")
            script = Script(Stream(chunked(LATENCY_ANSWER, 12), delay=0.01))
            async with environment(root / "latency", prefill) as (tg, llm, _):
                llm.set_default(script)
                if "latency" in args.scenarios:
                    lat = await latency(tg, llm, script, args.answers, histories)
                if "smooth" in args.scenarios:
                    progress("smoothness")
                    smooth = await smoothness(
                        tg, llm, script, args.private_seconds, args.group_seconds
                    )
        if "fallback" in args.scenarios:
            progress("fallback: primary refusing connections")
            fb = await fallback_delays(root, args.fallback_answers)
        if "capacity" in args.scenarios:
            for n in args.chat_counts:
                runs = []
                for run in range(args.repeat):
                    progress(f"capacity with {n} chats, run {run + 1} of {args.repeat}")
                    runs.append(
                        await capacity(
                            root / f"capacity-{n}-{run}",
                            n,
                            args.answer_chars,
                            args.stream_seconds,
                            args.chunk_chars,
                        )
                    )
                cap.append(combine(runs))
    progress("done")
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(report(info, lat, smooth, cap, fb))
    if args.json:
        raw = {
            "machine": info,
            "latency": asdict(lat) if lat else None,
            "fallback": asdict(fb) if fb else None,
            "smoothness": [asdict(s) for s in smooth],
            "capacity": [asdict(c) for c in cap],
        }
        args.json.write_text(json.dumps(raw, indent=2, default=str))


if __name__ == "__main__":
    arguments = parse_args()
    BOT_ROOT = arguments.bot_root.resolve()
    STREAM_MODE = arguments.stream_mode
    asyncio.run(main(arguments))
