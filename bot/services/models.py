"""Which model each chat talks to: the backend's live list, filtered and cached, and the choice."""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.repositories import ChatRepository
from bot.llm.client import LLMClient
from bot.llm.errors import LLMError
from bot.llm.types import ModelInfo
from bot.services.directory import Directory

if TYPE_CHECKING:
    from bot.services.shared_models import SharedModelList

logger = logging.getLogger(__name__)

# Kinds a backend may give (ModelInfo.kind) that are not for conversation; "chat" and unknown
# kinds are decided by the id and name.
NON_CHAT_KINDS = frozenset({"image", "embedding", "audio", "completion", "moderation", "rerank"})
# Models that are not for conversation, recognised by their id or name when the backend does not
# say what kind a model is: image generators, embedders, rerankers, speech and moderation models.
_NON_CHAT_RE = re.compile(
    r"(?<![a-z0-9])(?:dall-e|gpt-image|akashgen|flux|stable-diffusion|sdxl|imagen|midjourney"
    r"|whisper|transcri(?:be|ption)|tts|speech|embed\w*|bge|moderation|rerank\w*)(?![a-z])",
    re.IGNORECASE,
)
# Completion-only models, which /chat/completions refuses: OpenAI's gpt-*-instruct family and
# its legacy base models. Other models named "...-Instruct" (Llama, Qwen, Mistral) are chat
# models, so this is matched against OpenAI's whole ids only.
_COMPLETION_ONLY_RE = re.compile(
    r"(?:openai/)?(?:gpt-[\w.-]+-instruct(?:-\d+)?|(?:text|code)-(?:davinci|curie|babbage|ada)"
    r"-\d+|(?:davinci|curie|babbage|ada)(?:-\d+)?)",
    re.IGNORECASE,
)
# After a failed fetch, ask the backend again no sooner than this (or the cache lifetime, if
# shorter), so that a backend without /models is not asked on every command.
FAILURE_BACKOFF_SECONDS = 30.0
# A model asked for but missing from the list has the list loaded again before it expires, if
# it is at least this old: a model just added on the backend is found at once, while an unknown
# id typed again and again costs at most one /models call per this many seconds.
EARLY_REFRESH_SECONDS = 10.0
SUGGESTION_LIMIT = 3
# Families known to read pictures, for lists that do not say which models do.
_VISION_NAME_RE = re.compile(
    r"vision|[-_.]vl\b|\bvl[-_]|gpt-4o|gpt-4\.1|gpt-5|claude|gemini|gemma-?3|llava|pixtral"
    r"|llama-?4|internvl|minicpm-v|moondream",
    re.IGNORECASE,
)


def is_chat_model(model: ModelInfo) -> bool:
    """True unless the backend or the model's id or name marks it as a non-chat model.

    The backend's word (`kind`) beats the id and name; without it, image, embedding, rerank,
    speech, transcription and moderation models and completion-only ones are not chat models.
    """
    if model.kind == "chat":
        return True
    if model.kind in NON_CHAT_KINDS:
        return False
    if _COMPLETION_ONLY_RE.fullmatch(model.id):
        return False
    return not any(_NON_CHAT_RE.search(text) for text in (model.id, model.name or ""))


def reads_pictures(model: ModelInfo) -> bool:
    """True where the backend says the model reads pictures, or, where it does not say, its
    id names a family that does."""
    if model.vision is not None:
        return model.vision
    return bool(_VISION_NAME_RE.search(model.id))


def label(model: ModelInfo) -> str:
    """The name people should see: the backend's friendly name, else the id; a model only a
    fallback backend offers carries that backend's name."""
    name = model.name.strip() if model.name and model.name.strip() else model.id
    return f"{name} · {model.backend}" if model.backend else name


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a catalogue: its models with their catalogue positions."""

    number: int  # from 0
    count: int  # pages in all (at least 1)
    entries: tuple[tuple[int, ModelInfo], ...]


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The chat models a chat may choose from, sorted by name, with a short list version.

    Keyboards refer to models by position and carry `version`, so a button from a list that has
    since changed is recognised instead of choosing whatever now sits at that position.
    """

    models: tuple[ModelInfo, ...]
    version: str

    def at(self, index: int) -> ModelInfo | None:
        """The model at a position, or None when out of range."""
        return self.models[index] if 0 <= index < len(self.models) else None

    def index_of(self, model_id: str) -> int | None:
        """The position of the model with exactly this id."""
        for index, model in enumerate(self.models):
            if model.id == model_id:
                return index
        return None

    def find(self, model_id: str) -> ModelInfo | None:
        """The model with exactly this id."""
        index = self.index_of(model_id)
        return None if index is None else self.models[index]

    def match(self, text: str) -> ModelInfo | None:
        """The model meant by `text`: its exact id, else its id or name in any letter case."""
        wanted = text.strip()
        exact = self.find(wanted)
        if exact is not None:
            return exact
        folded = wanted.casefold()
        for key in (lambda m: m.id, label):
            found = [m for m in self.models if key(m).casefold() == folded]
            if len(found) == 1:
                return found[0]
        return None

    def page(self, number: int, *, size: int) -> Page:
        """Page `number` (clamped to the pages there are) of `size` models each."""
        count = max(1, -(-len(self.models) // size))
        number = min(max(number, 0), count - 1)
        start = number * size
        entries = tuple(enumerate(self.models[start : start + size], start=start))
        return Page(number=number, count=count, entries=entries)

    def page_of(self, model_id: str, *, size: int) -> Page:
        """The page showing this model, or the first page when it is not listed."""
        index = self.index_of(model_id)
        return self.page(0 if index is None else index // size, size=size)


def build_catalogue(
    models: Iterable[ModelInfo], *, allowed: Sequence[str] = (), default_model: str | None = None
) -> Catalogue:
    """Keep the available chat models (only the allowed ones, if any are), sorted by name.

    The default model counts as allowed, so a chat can always return to it.
    """
    wanted = {m.casefold() for m in allowed}
    if wanted and default_model:
        wanted.add(default_model.casefold())
    seen: set[str] = set()
    kept: list[ModelInfo] = []
    for model in models:
        if model.id in seen or not model.available or not is_chat_model(model):
            continue
        if wanted and model.id.casefold() not in wanted:
            continue
        seen.add(model.id)
        kept.append(model)
    kept.sort(key=lambda m: (label(m).casefold(), m.id))
    digest = hashlib.blake2s("\n".join(m.id for m in kept).encode(), digest_size=4)
    return Catalogue(models=tuple(kept), version=digest.hexdigest())


def suggest(
    text: str, models: Sequence[ModelInfo], *, limit: int = SUGGESTION_LIMIT
) -> tuple[ModelInfo, ...]:
    """Models whose id or name is close to `text` (typos first, then ones containing it)."""
    query = text.strip().casefold()
    if not query:
        return ()
    keys: dict[str, list[ModelInfo]] = {}
    for model in models:
        for key in {model.id.casefold(), label(model).casefold()}:
            keys.setdefault(key, []).append(model)
    found: list[ModelInfo] = []
    for key in difflib.get_close_matches(query, list(keys), n=limit * 2, cutoff=0.6):
        found.extend(keys[key])
    if len(query) >= 3:
        found.extend(m for m in models if query in m.id.casefold() or query in label(m).casefold())
    unique: list[ModelInfo] = []
    for model in found:
        if model not in unique:
            unique.append(model)
    return tuple(unique[:limit])


# ---- results of a choice ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Switched:
    """The chat now uses `model` (`changed` is False if it already did).

    `verified` is False when the backend's list could not be loaded and the id was taken as
    typed; `model` then carries only the id.
    """

    model: ModelInfo
    changed: bool
    verified: bool = True


@dataclass(frozen=True, slots=True)
class Suggested:
    """No model has that id, but some are close; the chat's model is unchanged."""

    requested: str
    suggestions: tuple[ModelInfo, ...]


@dataclass(frozen=True, slots=True)
class Unknown:
    """No chat model on offer has that id, and none is close; the chat's model is unchanged."""

    requested: str


Choice = Switched | Suggested | Unknown


class ModelService:
    """The backend's chat models (cached), each chat's current model, and switching it."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        llm: LLMClient,
        default_model: str,
        allowed: Sequence[str] = (),
        cache_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        directory: Directory | None = None,
        fallbacks: Sequence[tuple[str, LLMClient]] = (),
        primary_name: str = "",
        shared: SharedModelList | None = None,
    ) -> None:
        """`fallbacks`: (name, client) of the fallback backends asked for the chat's model,
        whose models are offered too; `primary_name` names the primary in `lacking`; `shared`:
        the list kept with the other replicas (REDIS_URL)."""
        self._shared = shared
        self._fallbacks = tuple(fallbacks)
        self._primary_name = primary_name
        # Which backends' lists offer each model, and whose lists were loaded at all.
        self._listed_by: dict[str, frozenset[str]] = {}
        self._listing: frozenset[str] = frozenset()
        self._sessions = sessions
        self._directory = directory or Directory(capacity=0)
        self._llm = llm
        self._default = default_model
        self._allowed = tuple(allowed)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._catalogue: Catalogue | None = None
        self._loaded_at = 0.0
        self._fresh_until = 0.0
        self._retry_at = 0.0
        self._contexts: dict[str, int] = {}
        self._vision: dict[str, bool] = {}
        self._lock = asyncio.Lock()
        self._warming: asyncio.Task[Catalogue | None] | None = None

    @property
    def default_model(self) -> str:
        """The model of chats that never chose one (LLM_MODEL)."""
        return self._default

    def list_age(self) -> float | None:
        """Seconds since the model list was loaded, or None if it never was."""
        return self._clock() - self._loaded_at if self._catalogue is not None else None

    async def catalogue(self) -> Catalogue | None:
        """The models on offer, from the cache or the backend; None if they cannot be loaded.

        When a refresh fails, the last list loaded (if any) is served until the backend answers
        again: a passing failure of /models should not take the picker away. A cached list that
        lacks the default model is loaded again early (see `_load`).
        """
        return await self._load(wanted=self._default)

    async def offered_instead(self, missing: str) -> list[str]:
        """The models on offer after the backend said it has no `missing` (loaded again once)."""
        catalogue = await self._load(wanted=missing, listed_is_enough=False)
        if catalogue is None:
            return []
        return [m.id for m in catalogue.models if m.id != missing]

    async def _load(self, *, wanted: str, listed_is_enough: bool = True) -> Catalogue | None:
        """The catalogue, loaded again before it expires if it does not offer `wanted`.

        Such an early load waits until the list is EARLY_REFRESH_SECONDS old and for the failure
        backoff, so one request causes at most one /models call, and ids missing from the list
        (whichever, however often) at most one per EARLY_REFRESH_SECONDS.
        """
        if self._servable(wanted, self._clock(), listed_is_enough=listed_is_enough):
            return self._catalogue
        async with self._lock:
            # Another caller may have refreshed (or failed to) while this one waited.
            now = self._clock()
            servable = self._servable(wanted, now, listed_is_enough=listed_is_enough)
            if servable or now < self._retry_at:
                return self._catalogue
            listed, age = await self._listed(wanted)
            if listed is None:
                self._retry_at = self._clock() + min(self._cache_seconds, FAILURE_BACKOFF_SECONDS)
                return self._catalogue
            self._catalogue = build_catalogue(
                listed, allowed=self._allowed, default_model=self._default
            )
            self._contexts.update({m.id: m.context_tokens for m in listed if m.context_tokens})
            self._vision.update({m.id: m.vision for m in listed if m.vision is not None})
            self._loaded_at = self._clock() - age
            self._fresh_until = self._loaded_at + self._cache_seconds
            logger.info(
                "backend lists %d models, %d offered for chat (list %s)",
                len(listed),
                len(self._catalogue.models),
                self._catalogue.version,
            )
            return self._catalogue

    async def _listed(self, wanted: str) -> tuple[list[ModelInfo] | None, float]:
        """The merged list and its age: another replica's if it is kept and offers `wanted`,
        else fetched from the backends now (and kept for the other replicas)."""
        shared = self._shared
        if shared is not None:
            kept = await shared.get()
            if kept is not None and any(model.id == wanted for model in kept.models):
                self._listed_by, self._listing = kept.listed_by, kept.listing
                return kept.models, kept.age
        listed = await self._list_everywhere()
        if listed is not None and shared is not None:
            await shared.put(listed, self._listed_by, self._listing)
        return listed, 0.0

    async def _list_everywhere(self) -> list[ModelInfo] | None:
        """The primary's models, then those only a fallback lists (marked with its name).

        None if no backend's list could be loaded. Which backends list which model is kept
        for the router (`lacking`).
        """
        sources = [("", self._llm), *self._fallbacks]
        results = await asyncio.gather(
            *(client.list_models() for _, client in sources), return_exceptions=True
        )
        merged: dict[str, ModelInfo] = {}
        where: dict[str, set[str]] = {}
        listing: set[str] = set()
        for (name, _), result in zip(sources, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, LLMError):
                    raise result
                logger.warning(
                    "could not load the model list of %s: %s", name or "the backend", result
                )
                continue
            source = name or self._primary_name
            listing.add(source)
            for model in result:
                where.setdefault(model.id, set()).add(source)
                if model.id not in merged:
                    merged[model.id] = dataclasses.replace(model, backend=name or None)
        if not listing:
            return None
        self._listed_by = {model_id: frozenset(names) for model_id, names in where.items()}
        self._listing = frozenset(listing)
        return list(merged.values())

    def lacking(self, model_id: str) -> frozenset[str]:
        """The names of the backends whose last model list was loaded and lacks `model_id`.

        A backend without a model list (or whose list failed) lacks nothing: it may well have
        the model.
        """
        return self._listing - self._listed_by.get(model_id, frozenset())

    def _servable(self, wanted: str, now: float, *, listed_is_enough: bool = True) -> bool:
        """True if the cached list is fresh and offers `wanted` or is too new to load again.

        With `listed_is_enough=False` the backend has just denied having `wanted`, so a list
        that offers it is stale too.
        """
        catalogue = self._catalogue
        if catalogue is None or now >= self._fresh_until:
            return False
        return (
            not wanted.strip()
            or (listed_is_enough and catalogue.match(wanted) is not None)
            or now < self._loaded_at + EARLY_REFRESH_SECONDS
        )

    async def warm_up(self) -> None:
        """Start loading the list in the background, so context sizes are known early."""
        if self._warming is None or self._warming.done():
            self._warming = asyncio.create_task(self.catalogue(), name="models-warm-up")

    async def close(self) -> None:
        """Stop a background load that is still running."""
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            await asyncio.wait([self._warming])

    def context_window(self, model_id: str) -> int | None:
        """The model's context size as the backend last listed it, or None if unknown.

        Synchronous for the chat service's budget; context sizes rarely change, so a value from
        an expired list is still used.
        """
        return self._contexts.get(model_id)

    def vision(self, model_id: str) -> bool | None:
        """Whether the backend's last list said the model reads pictures; None if it did not."""
        return self._vision.get(model_id)

    async def vision_models(self) -> list[str]:
        """The chat models on offer that read pictures (by the backend's word or their name)."""
        catalogue = await self.catalogue()
        if catalogue is None:
            return []
        return [m.id for m in catalogue.models if reads_pictures(m)]

    async def current(self, *, chat_id: int) -> str:
        """The id of the model the chat uses now."""
        async with self._sessions() as session:
            chat = await ChatRepository(session).get(chat_id=chat_id)
        return (chat.model if chat is not None else None) or self._default

    async def choose(
        self, *, chat_id: int, chat_type: str, chat_title: str | None, model_id: str
    ) -> Choice:
        """Switch the chat to the model meant by `model_id` if one is on offer.

        An id missing from the cached list has the list loaded again first (see `_load`), so a
        model just added on the backend can be chosen at once. When the backend's list cannot be
        loaded, the id is trusted as typed (so a backend without /models stays usable), unless
        the allow-list or the chat-model rules exclude it.
        """
        requested = model_id.strip()
        catalogue = await self._load(wanted=requested)
        if catalogue is None:
            return await self._choose_unverified(
                chat_id=chat_id, chat_type=chat_type, chat_title=chat_title, requested=requested
            )
        model = catalogue.match(requested)
        if model is None:
            suggestions = suggest(requested, catalogue.models)
            return Suggested(requested, suggestions) if suggestions else Unknown(requested)
        changed = await self._store(
            chat_id=chat_id, chat_type=chat_type, chat_title=chat_title, model_id=model.id
        )
        return Switched(model=model, changed=changed)

    async def _choose_unverified(
        self, *, chat_id: int, chat_type: str, chat_title: str | None, requested: str
    ) -> Choice:
        model = ModelInfo(id=requested)
        if self._allowed:
            allowed = [ModelInfo(id=m) for m in dict.fromkeys([*self._allowed, self._default])]
            match = Catalogue(models=tuple(allowed), version="").match(requested)
            if match is None:
                suggestions = suggest(requested, allowed)
                return Suggested(requested, suggestions) if suggestions else Unknown(requested)
            model = match
        if not is_chat_model(model):
            return Unknown(requested)
        changed = await self._store(
            chat_id=chat_id, chat_type=chat_type, chat_title=chat_title, model_id=model.id
        )
        return Switched(model=model, changed=changed, verified=False)

    async def _store(
        self, *, chat_id: int, chat_type: str, chat_title: str | None, model_id: str
    ) -> bool:
        async with self._sessions() as session, session.begin():
            chat = await self._directory.chat(
                session, chat_id=chat_id, type=chat_type, title=chat_title
            )
            if (chat.model or self._default) == model_id:
                return False
            await ChatRepository(session).set_model(chat_id=chat_id, model=model_id)
        self._directory.remember(dataclasses.replace(chat, model=model_id))
        logger.info("chat %s switched to model %s", chat_id, model_id)
        return True
