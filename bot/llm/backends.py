"""The configured backends, what each failure means for the next attempt, and each one's health.

`decide` is the one place that turns a failed attempt into an action: try the next backend (or
the same one again, after a short backoff, while the deadline allows), cool the backend down,
take it out of rotation, or stop because the request itself is at fault. `BackendHealth` keeps
what every chat must know about a backend: whether it is cooling down or out, its last error,
and how fast it starts answering.
"""

from __future__ import annotations

import enum
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from bot.llm.errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMNotFoundError,
    LLMRateLimitError,
)

# Seconds a backend rests after a 429 that did not say how long (Retry-After).
DEFAULT_COOLDOWN = 30.0
# The longest rest a Retry-After can impose, so a typo on the backend does not park it for days.
MAX_COOLDOWN = 3600.0
# A backend out of rotation (its key refused) is tried again after this long: the owner may have
# fixed the key on the backend's side meanwhile.
OUT_OF_ROTATION_RETRY = 600.0
# First-token latencies kept per backend for /status.
LATENCY_SAMPLES = 50


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One OpenAI-compatible backend: the primary (LLM_BASE_URL) or an LLM_FALLBACKS entry."""

    name: str  # shown to the owner; never the key
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None  # the model to ask it for; None: the chat's model


def name_backends(specs: Sequence[BackendSpec]) -> list[BackendSpec]:
    """The specs with every empty name set to the URL's host, and repeated names numbered."""
    named: list[BackendSpec] = []
    seen: dict[str, int] = {}
    for spec in specs:
        name = spec.name.strip() or (urlsplit(spec.base_url).netloc or spec.base_url)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} #{seen[name]}"
        named.append(replace(spec, name=name))
    return named


class Action(enum.Enum):
    """What a failed attempt means for the turn and for the backend."""

    NEXT = "next"  # the backend failed (connection, timeout, 5xx, broken answer): try another
    COOL_DOWN = "cool_down"  # 429: rest this backend for Retry-After, try another
    REMOVE = "remove"  # 401/403: out of rotation, the owner is told
    STOP = "stop"  # the request is at fault (4xx): the user sees why; no other backend helps


def decide(exc: LLMError, spec: BackendSpec, *, primary: bool) -> Action:
    """The action after `exc` from `spec` (the primary backend or a fallback)."""
    if isinstance(exc, LLMRateLimitError):
        return Action.COOL_DOWN
    if isinstance(exc, LLMAuthError):
        return Action.REMOVE
    if isinstance(exc, LLMNotFoundError):
        # The chat's model missing on the primary is the user's to change (/model). A fallback
        # that lacks it, or lacks its own configured model, just cannot serve: the next may.
        return Action.STOP if primary and spec.model is None else Action.NEXT
    if isinstance(exc, LLMBadRequestError):  # context length and content policy included
        return Action.STOP
    return Action.NEXT


def cooldown_seconds(exc: LLMRateLimitError) -> float:
    """How long a backend rests after this 429."""
    if exc.retry_after is None or exc.retry_after <= 0:
        return DEFAULT_COOLDOWN
    return min(exc.retry_after, MAX_COOLDOWN)


@dataclass(slots=True)
class BackendHealth:
    """A backend's state as all chats share it; times are `clock()` (monotonic) seconds."""

    spec: BackendSpec
    clock: Callable[[], float] = time.monotonic
    cooling_until: float | None = None
    out_reason: str | None = None  # the backend's own words for refusing the key
    out_since: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None  # wall-clock time.time(), for display
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    owner_told: bool = False  # owners hear of a refused key once per process

    def usable(self) -> bool:
        """True if chats may try it now."""
        return self.state() == "ok"

    def state(self) -> str:
        """ "ok", "cooling" or "out"."""
        now = self.clock()
        if self.out_since is not None and now - self.out_since < OUT_OF_ROTATION_RETRY:
            return "out"
        if self.cooling_until is not None and now < self.cooling_until:
            return "cooling"
        return "ok"

    def cooling_left(self) -> float:
        """Seconds until the cooldown ends (0 when not cooling)."""
        if self.cooling_until is None:
            return 0.0
        return max(0.0, self.cooling_until - self.clock())

    def failed(self, exc: LLMError, action: Action) -> bool:
        """Record a failure; True the first time the backend leaves rotation (tell the owner)."""
        self.last_error = str(exc)
        self.last_error_at = time.time()
        if action is Action.COOL_DOWN:
            assert isinstance(exc, LLMRateLimitError)
            self.cooling_until = self.clock() + cooldown_seconds(exc)
        elif action is Action.REMOVE:
            self.out_reason = getattr(exc, "message", None) or str(exc)
            self.out_since = self.clock()
            tell, self.owner_told = not self.owner_told, True
            return tell
        return False

    def started(self, first_token_seconds: float) -> None:
        """Record an answer that started streaming after `first_token_seconds`."""
        self.latencies.append(first_token_seconds)
        self.cooling_until = None
        self.out_reason = None
        self.out_since = None

    def median_latency(self) -> float | None:
        """The median first-token latency of recent answers, in seconds."""
        return statistics.median(self.latencies) if self.latencies else None
