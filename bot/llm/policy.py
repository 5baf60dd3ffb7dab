"""When a backend call is retried, how long it waits first, and the one deadline of a call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import httpx

from bot.llm.errors import (
    LLMError,
    LLMImageDownloadError,
    LLMRateLimitError,
    LLMServerError,
    LLMTimeoutError,
    LLMUnavailableError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

# A backend asking us to wait longer than this gets its error raised instead of a silent wait.
RETRY_AFTER_CAP = 60.0


def full_jitter(cap: float) -> float:
    """A delay drawn evenly from [0, cap], so clients that failed together retry apart."""
    return random.uniform(0.0, cap)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures are retried: exponential backoff with full jitter."""

    max_retries: int = 3  # retries after the first attempt
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: Callable[[float], float] = full_jitter

    def delay(self, exc: LLMError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before retrying after `exc`, or None if no retry is left in time.

        The caller decides which errors are retryable at all (chat and image calls differ).
        `attempt` counts retries so far; no retry may start at or after `deadline` (loop time).
        """
        if attempt >= self.max_retries:
            return None
        cap = min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 60))
        delay = self.jitter(cap)
        if isinstance(exc, LLMRateLimitError) and exc.retry_after is not None:
            if exc.retry_after > RETRY_AFTER_CAP:
                return None
            delay = max(delay, exc.retry_after)
        if asyncio.get_running_loop().time() + delay >= deadline:
            return None
        return delay


def chat_retryable(exc: LLMError) -> bool:
    """True for failures after which a chat answer or the model list may well succeed."""
    if isinstance(exc, LLMRateLimitError | LLMServerError):
        return True
    if isinstance(exc, LLMTimeoutError):
        return exc.phase == "connect"
    if isinstance(exc, LLMUnavailableError):
        return not isinstance(exc.__cause__, httpx.UnsupportedProtocol | httpx.InvalidURL)
    return False


def image_retryable(exc: LLMError) -> bool:
    """True for failures after which the backend surely did no (billed) image work."""
    if isinstance(exc, LLMRateLimitError):
        return True
    if isinstance(exc, LLMTimeoutError):
        return exc.phase == "connect"
    if isinstance(exc, LLMImageDownloadError):
        # Fetching is idempotent and the image is already paid for; a 4xx will not heal.
        return exc.status is None or exc.status >= 500 or exc.status in (408, 429)
    if isinstance(exc, LLMUnavailableError):
        # Only a refused connection proves the request never reached the backend.
        return isinstance(exc.__cause__, httpx.ConnectError)
    return False


@dataclass(frozen=True, slots=True)
class Retrying:
    """Runs backend calls again after the failures `retryable` accepts, as `policy` says."""

    policy: RetryPolicy
    retryable: Callable[[LLMError], bool]
    sleep: Sleep = asyncio.sleep
    what: str = "backend call"

    async def stream(
        self, attempt: Callable[[], AsyncGenerator[T, None]], deadline: float
    ) -> AsyncGenerator[T, None]:
        """Yield what a fresh `attempt()` yields, starting again after a retryable failure.

        Once an item has been yielded the consumer has acted on it (the user sees text), so a
        failure after that is raised, never retried.
        """
        retries = 0
        while True:
            delivered = False
            try:
                items = attempt()
                async with contextlib.aclosing(items):
                    async for item in items:
                        delivered = True
                        yield item
                return
            except LLMError as exc:
                if delivered:
                    raise
                delay = self.policy.delay(exc, retries, deadline) if self.retryable(exc) else None
                if delay is None:
                    raise
                logger.warning(
                    "%s failed (%s: %s); retry %d of %d in %.2fs",
                    self.what,
                    type(exc).__name__,
                    exc,
                    retries + 1,
                    self.policy.max_retries,
                    delay,
                )
            retries += 1
            await self.sleep(delay)

    async def call(self, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """The result of `call()`, called again after each retryable failure."""

        async def attempt() -> AsyncGenerator[T, None]:
            yield await call()

        results = self.stream(attempt, deadline)
        async with contextlib.aclosing(results):
            async for result in results:
                return result
        raise AssertionError("an attempt that returns yields its result")


class Within:
    """Bound the awaits of an `async with` block by an absolute loop-time deadline.

    Only awaits on the backend are wrapped, never a `yield`: a timeout spanning a yield would
    cancel the consumer's code instead of ours. A class rather than a generator-based context
    manager, as it is entered for every read of a streaming answer.
    """

    __slots__ = ("_phase", "_seconds", "_timeout")

    def __init__(self, when: float, phase: str, seconds: float) -> None:
        """Expire at loop time `when`, raising LLMTimeoutError(`phase`, `seconds`)."""
        self._timeout = asyncio.timeout_at(when)
        self._phase = phase
        self._seconds = seconds

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, traceback)
        except TimeoutError as expired:
            raise LLMTimeoutError(self._phase, self._seconds) from expired
        if isinstance(exc, TimeoutError):
            raise LLMTimeoutError(self._phase, self._seconds) from exc
