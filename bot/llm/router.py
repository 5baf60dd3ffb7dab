"""One chat answer across several backends: the one retry loop of a chat turn, one deadline.

The turn's first token is due within LLM_FIRST_TOKEN_TIMEOUT of the request, across every
attempt and backend. Each attempt gets a share of the time left (divided by the backends still
to try in this round), so a hanging primary is abandoned in time for a healthy fallback to
answer. What a failure means is decided in one place (`bot.llm.backends.decide`); after a round
of failures the usable backends are tried again after a short backoff, while time is left.
Once text has streamed, nothing is retried: the partial answer stays what the user saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from bot.llm.backends import Action, BackendHealth, BackendSpec, decide
from bot.llm.client import LLMClient
from bot.llm.errors import LLMError, LLMNoBackendError, LLMTimeoutError
from bot.llm.policy import RetryPolicy, chat_retryable
from bot.llm.types import ChatEvent, ChatMessage, StreamEnd, TextDelta

logger = logging.getLogger(__name__)

# Told when a backend leaves rotation because it refused its key: (backend, its own words).
_RETRY = RetryPolicy()

OwnerNotice = Callable[[BackendSpec, str], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Backend:
    """A configured backend: its client and its shared health."""

    spec: BackendSpec
    client: LLMClient
    health: BackendHealth


class BackendRouter:
    """Streams a chat answer from the first backend that starts answering in time."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        first_token_timeout: float,
        retry: RetryPolicy = _RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        notify_owner: OwnerNotice | None = None,
        lacking: Callable[[str], frozenset[str]] | None = None,
    ) -> None:
        """`backends`: the primary first, then the fallbacks in order.

        `lacking(model)`: the names of the backends whose model lists lack `model`; such a
        backend, asked for the chat's model, is skipped.
        """
        self._lacking = lacking
        if not backends:
            raise ValueError("at least one backend is needed")
        self.backends = tuple(backends)
        self._first_token_timeout = first_token_timeout
        self._retry = retry
        self._sleep = sleep
        self._notify_owner = notify_owner
        self._notices: set[asyncio.Task[None]] = set()

    def set_owner_notice(self, notice: OwnerNotice) -> None:
        """Call `notice` (in a task of its own) when a backend leaves rotation over its key."""
        self._notify_owner = notice

    @property
    def primary(self) -> Backend:
        """The backend named by LLM_BASE_URL."""
        return self.backends[0]

    async def stream_chat(
        self,
        *,
        model: str,
        messages: Sequence[ChatMessage],
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """TextDelta pieces, then one StreamEnd naming the backend and model that answered.

        Raises the LLMError that ended the turn, its `backend` set to the backend it came from.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._first_token_timeout
        # The failures of the newest round with any, in the order the backends were tried.
        failures: list[LLMError] = []
        rounds = 0
        attempt = 0
        last_resort = False
        offering = self._offering(model)
        while True:
            candidates = [b for b in offering if b.health.usable()]
            wait = self._usable_in(offering) if not candidates else 0.0
            if not candidates and math.isinf(wait) and not last_resort:
                # Every backend refused its key: ask them anyway rather than refuse every
                # chat until the retry time (the key may be fixed on the backend's side); a
                # refusal again is what the user is told.
                candidates, last_resort = list(offering), True
            elif not candidates:
                # Other chats' failures cooled every backend down: wait for the first, in time.
                if rounds >= self._retry.max_retries or loop.time() + wait >= deadline:
                    raise failures[0] if failures else self._none_usable()
                rounds += 1
                await self._sleep(wait)
                continue
            this_round: list[LLMError] = []
            for index, backend in enumerate(candidates):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if not (last_resort or backend.health.usable()):
                    continue  # another chat's attempt cooled it down meanwhile
                attempt += 1
                share = remaining / (len(candidates) - index)
                asked = backend.spec.model or model
                started = loop.time()
                streamed = False
                try:
                    events = backend.client.stream_chat(
                        model=asked,
                        messages=messages,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        first_token_by=started + share,
                    )
                    async with contextlib.aclosing(events):
                        async for event in events:
                            if isinstance(event, TextDelta):
                                if not streamed:
                                    streamed = True
                                    backend.health.started(loop.time() - started)
                                yield event
                            else:
                                self._log(backend, asked, attempt, "ok", started)
                                yield StreamEnd(
                                    event.finish_reason,
                                    event.usage,
                                    backend=backend.spec.name,
                                    model=asked,
                                )
                    return
                except LLMError as exc:
                    self._failed(backend, exc, asked, attempt, started, streamed=streamed)
                    this_round.append(exc)
            failures = this_round or failures
            rounds += 1
            await self._sleep(self._before_next_round(failures, rounds, deadline, offering))

    def _offering(self, model: str) -> tuple[Backend, ...]:
        """The backends that may have `model`: all but those whose list lacks it (for a backend
        with a model of its own, its list does not matter); all if none would be left."""
        lacking = self._lacking(model) if self._lacking is not None else frozenset()
        if not lacking:
            return self.backends
        offering = tuple(
            b for b in self.backends if b.spec.model is not None or b.spec.name not in lacking
        )
        return offering or self.backends

    def _failed(
        self,
        backend: Backend,
        exc: LLMError,
        asked: str,
        attempt: int,
        started: float,
        *,
        streamed: bool,
    ) -> None:
        """Record and log a failed attempt; raise it when no other attempt may follow."""
        exc.backend = backend.spec.name
        exc.model = asked
        if streamed:
            # The user saw this backend's text: it is never replaced by another's.
            self._log(backend, asked, attempt, type(exc).__name__, started)
            backend.health.failed(exc, Action.NEXT)
            raise exc
        action = decide(exc, backend.spec, primary=backend is self.primary)
        self._log(backend, asked, attempt, f"{type(exc).__name__}:{action.value}", started)
        if backend.health.failed(exc, action):
            self._tell_owner(backend.spec, backend.health.out_reason or str(exc))
        if action is Action.STOP:
            raise exc

    def _before_next_round(
        self,
        failures: list[LLMError],
        rounds: int,
        deadline: float,
        offering: Sequence[Backend],
    ) -> float:
        """Seconds to wait before trying the backends again; raises when that cannot help.

        The user is told the first failure of the round (the primary's, when it was tried):
        a fallback's own trouble (its key, its configured model) says nothing about the
        chat's request. Another round follows only if some failure may heal (not a timeout
        past the first token's share, not a URL that can never work) and time is left.
        """
        if not failures:
            raise LLMTimeoutError("first_token", self._first_token_timeout)
        shown = failures[0]
        healing = [exc for exc in failures if chat_retryable(exc)]
        if not healing:
            raise shown
        delay = self._retry.delay(healing[0], rounds - 1, deadline)
        if delay is None:
            raise shown
        # A backend that was told to cool down is tried again once it has.
        wait = max(delay, self._usable_in(offering))
        if asyncio.get_running_loop().time() + wait >= deadline:
            raise shown
        return wait

    def _usable_in(self, backends: Sequence[Backend]) -> float:
        """Seconds until one of `backends` may be tried (0: now; infinite: all out)."""
        waits = [
            0.0 if b.health.usable() else b.health.cooling_left()
            for b in backends
            if b.health.state() != "out"
        ]
        return min(waits, default=math.inf)

    def _none_usable(self) -> LLMNoBackendError:
        states = ", ".join(f"{b.spec.name}: {b.health.state()}" for b in self.backends)
        cooling = [b.health.cooling_left() for b in self.backends if b.health.state() == "cooling"]
        return LLMNoBackendError(
            f"no backend can answer now ({states})",
            retry_in=min(cooling) if cooling else None,
        )

    def _log(
        self, backend: Backend, model: str, attempt: int, outcome: str, started: float
    ) -> None:
        logger.info(
            "backend attempt %d: backend=%s model=%s outcome=%s latency_ms=%d",
            attempt,
            backend.spec.name,
            model,
            outcome,
            (asyncio.get_running_loop().time() - started) * 1000,
        )

    def _tell_owner(self, spec: BackendSpec, reason: str) -> None:
        logger.error("backend %s refused its API key and left rotation: %s", spec.name, reason)
        if self._notify_owner is None:
            return
        task = asyncio.create_task(self._notify_owner(spec, reason))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)
