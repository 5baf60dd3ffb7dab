"""Benchmark: the bot's CPU per streamed answer with each HTTP transport to the backend.

A local aiohttp server streams OpenAI-style chat completion chunks from a subprocess, so its CPU
is not counted. This process runs N answers at once through `LLMClient.stream_chat` over one
shared `httpx.AsyncClient` per transport, and reports its own CPU time (`time.process_time`)
per answer: the median of a few repeats, with the transports' order alternating between repeats.

Transports: `httpx` (httpx's default, httpcore), `httpx-aiohttp` (the httpx-aiohttp package's
`HttpxAiohttpClient`), and for reference `legacy`, the custom aiohttp transport the bot used
before (read from git, `--legacy-rev`; unpaced) and `legacy-paced` (paced reads; only where
`LLMClient` still takes `read_interval`). Options that cannot be loaded are skipped.

    .venv/bin/python bench/transport.py --quick      # N=200, 3 repeats, about a minute
    .venv/bin/python bench/transport.py              # N=200 and 1000, 5 repeats
    .venv/bin/python bench/transport.py --streams 500 --only httpx httpx-aiohttp
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bot` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bot.llm.client import LLMClient, RetryPolicy  # noqa: E402
from bot.llm.types import ChatMessage, StreamEnd, TextDelta  # noqa: E402

# The last commit holding the custom aiohttp transport (bot/llm/transport.py with PacedStream).
LEGACY_REV = "226909f"
WORD = "otters "  # 20 characters an event, about what a model sends per token or two
PIECE = (WORD * 3)[:20]
MESSAGES = [ChatMessage("user", "hi")]

HttpFactory = Callable[[int], httpx.AsyncClient]


# -- the backend (runs in a subprocess) ----------------------------------------------------------


def serve(events: int, seconds: float) -> None:
    """Run the SSE backend on a free port of 127.0.0.1 and print the port; runs until killed."""
    from aiohttp import web

    interval = seconds / events
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "model": "bench",
        "choices": [{"index": 0, "delta": {"content": PIECE}, "finish_reason": None}],
    }
    event = f"data: {json.dumps(chunk)}\n\n".encode()
    last = {
        **chunk,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": events},
    }
    tail = f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode()

    async def completions(request: web.Request) -> web.StreamResponse:
        # A warm-up request opens connections and loads code; its answer is a single event.
        count = 1 if (await request.json())["model"] == "warmup" else events
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            # Absolute times, so a busy server does not stretch the answer.
            await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
            await response.write(event)
        await response.write(tail)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def backend(events: int, seconds: float) -> Any:
    """The backend subprocess; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--events", str(events), "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(10)


# -- transports -----------------------------------------------------------------------------------


def _limits(streams: int) -> httpx.Limits:
    return httpx.Limits(max_connections=streams + 16, max_keepalive_connections=streams + 16)


def plain_httpx(streams: int) -> httpx.AsyncClient:
    """httpx's default transport (httpcore, h11, anyio)."""
    return httpx.AsyncClient(limits=_limits(streams))


def httpx_aiohttp(streams: int) -> httpx.AsyncClient:
    """The httpx-aiohttp package: httpx's API, aiohttp's connections and parser."""
    from httpx_aiohttp import HttpxAiohttpClient

    return HttpxAiohttpClient(limits=_limits(streams))


def _legacy_module(rev: str) -> ModuleType | None:
    """The custom transport as of `rev`, loaded from git; None where git does not have it."""
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:bot/llm/transport.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if "PacedStream" not in source:
        return None
    path = Path(tempfile.gettempdir()) / f"bench_legacy_transport_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("bench_legacy_transport", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass-free, but `from __future__` types need it
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Option:
    """One transport to measure."""

    name: str
    http: HttpFactory
    client_kwargs: dict[str, Any]


def options(legacy_rev: str) -> dict[str, Option]:
    """Every transport that can be loaded here, by name."""
    found = {
        "httpx": Option("httpx", plain_httpx, {}),
    }
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        found["httpx-aiohttp"] = Option("httpx-aiohttp", httpx_aiohttp, {})
    legacy = _legacy_module(legacy_rev)
    if legacy is not None:
        transport = legacy.AiohttpTransport

        def legacy_http(streams: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=transport(max_connections=streams + 16))

        found["legacy"] = Option("legacy", legacy_http, {})
        if "read_interval" in inspect.signature(LLMClient).parameters:
            found["legacy-paced"] = Option("legacy-paced", legacy_http, {"read_interval": 1.0})
    return found


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One batch of N streams through one transport."""

    option: str
    streams: int
    cpu_ms_per_stream: float
    wall_seconds: float


async def _answer(client: LLMClient, expected: int, model: str = "bench") -> None:
    text: list[str] = []
    end: StreamEnd | None = None
    async with contextlib.aclosing(client.stream_chat(model=model, messages=MESSAGES)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                text.append(event.text)
            else:
                end = event
    if len("".join(text)) != expected or end is None:
        raise RuntimeError(f"incomplete answer: {len(''.join(text))} of {expected} characters")


@contextlib.asynccontextmanager
async def _llm(option: Option, base_url: str, streams: int) -> AsyncIterator[LLMClient]:
    async with option.http(streams) as http:
        yield LLMClient(
            http=http,
            base_url=base_url,
            api_key=None,
            retry=RetryPolicy(max_retries=0),
            **option.client_kwargs,
        )


async def measure(option: Option, base_url: str, streams: int, expected: int) -> Run:
    """CPU time of this process while `streams` answers stream at once, per answer."""
    async with _llm(option, base_url, streams) as client:
        await asyncio.gather(*(_answer(client, len(PIECE), "warmup") for _ in range(4)))
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(_answer(client, expected) for _ in range(streams)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Run(option.name, streams, cpu * 1000.0 / streams, wall)


def _table(runs: Sequence[Run], names: Sequence[str], sizes: Sequence[int], repeats: int) -> str:
    lines = [
        f"CPU ms of the client process per stream (median of {repeats}; wall s in brackets)",
        f"{'transport':<15}" + "".join(f"{f'N={n}':>20}" for n in sizes),
    ]
    for name in names:
        row = f"{name:<15}"
        for n in sizes:
            mine = [r for r in runs if r.option == name and r.streams == n]
            if not mine:
                row += f"{'-':>20}"
                continue
            cpu = statistics.median(r.cpu_ms_per_stream for r in mine)
            wall = statistics.median(r.wall_seconds for r in mine)
            row += f"{f'{cpu:.2f} ({wall:.1f})':>20}"
        lines.append(row)
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> None:
    """Run every chosen transport at every size, interleaved, and print the table."""
    available = options(args.legacy_rev)
    names = [n for n in args.only or available if n in available]
    skipped = [n for n in args.only or [] if n not in available]
    if skipped:
        print(f"skipped (not available here): {', '.join(skipped)}")
    expected = args.events * len(PIECE)
    runs: list[Run] = []
    with backend(args.events, args.seconds) as base_url:
        for streams in args.streams:
            for repeat in range(args.repeats):
                order = names if repeat % 2 == 0 else names[::-1]
                for name in order:
                    run = await measure(available[name], base_url, streams, expected)
                    runs.append(run)
                    print(
                        f"  N={streams} repeat {repeat + 1}: {name:<14} "
                        f"{run.cpu_ms_per_stream:7.2f} ms/stream  {run.wall_seconds:5.1f} s",
                        flush=True,
                    )
    print()
    print(
        f"{args.events} events of {len(PIECE)} characters over {args.seconds:g} s per stream; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(_table(runs, names, args.streams, args.repeats))


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the benchmark (or, with --serve, the backend)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=200, 3 repeats (~1 minute)")
    parser.add_argument("--streams", type=int, nargs="+", help="N, answers at once (200 1000)")
    parser.add_argument("--repeats", type=int, help="runs of each transport at each N (5)")
    parser.add_argument("--events", type=int, default=100, help="events per answer (100)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of an answer (3)")
    parser.add_argument("--only", nargs="+", help="transports to measure (default: all)")
    parser.add_argument("--legacy-rev", default=LEGACY_REV, help="git rev of the legacy transport")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.events, args.seconds)
        return
    args.streams = args.streams or ([200] if args.quick else [200, 1000])
    args.repeats = args.repeats or (3 if args.quick else 5)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
