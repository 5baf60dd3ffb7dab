"""Settings from the environment and a `.env` file, validated once at start."""

from __future__ import annotations

import json
import re
from datetime import UTC, tzinfo
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.i18n import LOCALES
from bot.llm.backends import BackendSpec, name_backends
from bot.pricing import Price, PriceList

IdList = Annotated[list[int], NoDecode]
StrList = Annotated[list[str], NoDecode]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant in a Telegram chat. Answer concisely and use Markdown "
    "for formatting where it helps."
)


class TelegramSettings(BaseModel):
    """Telegram: the bot's token and server, who may use it, and how fast it may write."""

    bot_token: SecretStr
    telegram_api_url: str = "https://api.telegram.org"
    # The Bot API server at TELEGRAM_API_URL runs with --local: getFile answers a path on its
    # disk, which this machine sees at the same path (a shared volume), and files are read there.
    telegram_api_local: bool = False
    owner_ids: IdList = []
    allowed_user_ids: IdList = []
    allowed_chat_ids: IdList = []
    # The language of everyone who has not chosen one with /language (en, ru or zh); empty
    # follows each user's Telegram app.
    default_language: str = ""
    edit_interval_private: float = Field(default=1.0, gt=0)
    edit_interval_group: float = Field(default=3.0, gt=0)
    # auto: answers grow in a draft in private chats and in an edited message in groups (draft
    # does the same: drafts are private-only); edit: always in an edited message.
    stream_mode: Literal["auto", "draft", "edit"] = "auto"
    draft_interval: float = Field(default=0.5, gt=0)
    telegram_rate_limit: float = Field(default=30.0, gt=0)
    # Seconds answers in flight may take after SIGTERM: within docker stop's 10 s.
    shutdown_grace: float = Field(default=8.0, ge=0)
    log_level: str = "INFO"
    # A file the bot touches while its event loop runs, for `python -m bot.health` (empty: off).
    heartbeat_file: str = ""
    # polling: ask Telegram for updates (one process). webhook: Telegram posts them to
    # WEBHOOK_URL, served at WEBHOOK_LISTEN (several replicas behind one URL may share them).
    bot_mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    webhook_secret: SecretStr | None = None
    webhook_listen: str = "0.0.0.0:8080"
    webhook_path: str = ""  # empty: the path of WEBHOOK_URL
    webhook_max_connections: int = Field(default=40, ge=1, le=100)
    # How long an update stays with the replica that claimed it without a renewal: a killed
    # replica's updates are answered by another one after at most this long.
    webhook_lease_seconds: float = Field(default=30.0, ge=1, le=300)

    @field_validator("owner_ids", "allowed_user_ids", "allowed_chat_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace(";", ",").split(",")]
            try:
                return [int(p) for p in parts if p]
            except ValueError:
                raise ValueError("expected comma-separated integers, e.g. 123,456") from None
        if isinstance(value, int):
            return [value]
        return value

    @field_validator("telegram_api_url")
    @classmethod
    def _check_telegram_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("bot_token")
    @classmethod
    def _check_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value().strip()
        head, _, tail = token.partition(":")
        if not head.isdigit() or not tail:
            raise ValueError("does not look like a bot token from @BotFather (123456:ABC...)")
        return SecretStr(token)

    @field_validator("default_language", mode="before")
    @classmethod
    def _check_language(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = value.strip().lower()
        if value and value not in LOCALES:
            raise ValueError(f"must be empty or one of {', '.join(LOCALES)}")
        return value

    @field_validator("stream_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("bot_mode", mode="before")
    @classmethod
    def _bot_mode(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str) -> str:
        return _http_url(value) if value.strip() else ""

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        if not _WEBHOOK_SECRET.fullmatch(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("webhook_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, _, port = value.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 0.0.0.0:8080")
        return value.strip()

    @field_validator("webhook_path")
    @classmethod
    def _check_webhook_path(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @model_validator(mode="after")
    def _webhook_needs(self) -> Self:
        if self.bot_mode == "webhook":
            missing = [
                name
                for name, given in (
                    ("WEBHOOK_URL", self.webhook_url),
                    ("WEBHOOK_SECRET", self.webhook_secret),
                )
                if not given
            ]
            if missing:
                raise ValueError(f"BOT_MODE=webhook needs {' and '.join(missing)}")
        return self

    def webhook_route(self) -> str:
        """The path the webhook server answers Telegram's posts on."""
        return self.webhook_path or (urlsplit(self.webhook_url).path or "/")

    def webhook_address(self) -> tuple[str, int]:
        """The host and port the webhook server listens on."""
        host, _, port = self.webhook_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    def is_owner(self, user_id: int | None) -> bool:
        """True for the users listed in OWNER_IDS."""
        return user_id is not None and user_id in self.owner_ids


class FallbackBackend(BaseModel):
    """One entry of LLM_FALLBACKS: a backend tried after the primary (LLM_BASE_URL)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: SecretStr | None = None
    model: str | None = None  # the model to ask this backend for; None: the chat's model
    name: str | None = None  # shown to the owner; None: the host

    @field_validator("base_url")
    @classmethod
    def _check_fallback_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("model", "name")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("api_key")
    @classmethod
    def _blank_fallback_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())


class LLMSettings(BaseModel):
    """The backend: where it is, which model, what is sent, and how long it may take."""

    llm_base_url: str = "https://proxy.gonka.gg/v1"
    llm_api_key: SecretStr | None = None
    llm_model: str = "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int | None = Field(default=2048, ge=0)  # 0: let the backend decide
    temperature: float | None = Field(default=None, ge=0, le=2)
    # Models chats may choose with /model (empty: every chat model the backend lists), and how
    # long the backend's model list is cached, in seconds.
    llm_models: StrList = []
    models_cache_seconds: float = Field(default=300.0, ge=0)
    llm_connect_timeout: float = Field(default=10.0, gt=0)
    llm_first_token_timeout: float = Field(default=60.0, gt=0)
    llm_idle_timeout: float = Field(default=60.0, gt=0)
    llm_total_timeout: float = Field(default=600.0, gt=0)
    llm_max_retries: int = Field(default=3, ge=0, le=10)
    # Backends tried in order after the primary, as a JSON list of objects with `base_url` and
    # optionally `api_key`, `model` and `name`.
    llm_fallbacks: Annotated[list[FallbackBackend], NoDecode] = []
    # /image: the model that draws (empty: /image is off), how to ask it (auto: chat
    # completions for akashchat's AkashGen, else the images API), the size asked for, and
    # seconds one image may take.
    image_model: str = ""
    image_api: Literal["auto", "images", "chat"] = "auto"
    image_size: str = "1024x1024"
    image_timeout: float = Field(default=180.0, gt=0)
    # Whether image links from the backend may point at private, loopback or link-local
    # addresses. Off, as a backend's answer must not steer the bot into its own network; on
    # for a self-hosted backend that links to another host on the LAN. The backend's own
    # origin (LLM_BASE_URL) is always allowed.
    image_fetch_allow_private: bool = False
    # Voice messages and audio files: the model of LLM_BASE_URL's /audio/transcriptions
    # (empty: voice is not transcribed).
    transcribe_model: str = "whisper-1"

    @field_validator("llm_fallbacks", mode="before")
    @classmethod
    def _parse_fallbacks(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return []
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                # The position only: the text itself may hold API keys.
                raise ValueError(
                    f"is not valid JSON (line {exc.lineno}, column {exc.colno}); expected a list "
                    'like [{"base_url": "https://...", "api_key": "...", "name": "..."}]'
                ) from None
        if not isinstance(value, list):
            raise ValueError("must be a JSON list of backends")
        return value

    @field_validator("llm_models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("image_model", "image_api", "image_size", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("image_api", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("image_size")
    @classmethod
    def _check_size(cls, value: str) -> str:
        if value != "auto" and not re.fullmatch(r"[1-9]\d{1,4}x[1-9]\d{1,4}", value):
            raise ValueError("expected WIDTHxHEIGHT, e.g. 1024x1024 (or auto)")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _zero_is_none(cls, value: int | None) -> int | None:
        return value or None

    @field_validator("llm_base_url")
    @classmethod
    def _check_llm_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("llm_api_key")
    @classmethod
    def _blank_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> Self:
        if self.llm_total_timeout < self.llm_first_token_timeout:
            raise ValueError("LLM_TOTAL_TIMEOUT must not be shorter than LLM_FIRST_TOKEN_TIMEOUT")
        return self

    def api_key(self) -> str | None:
        """The backend's bearer key, if any."""
        return self.llm_api_key.get_secret_value() if self.llm_api_key else None

    def backends(self) -> list[BackendSpec]:
        """The primary backend, then the fallbacks, each with a name of its own."""
        specs = [BackendSpec(name="", base_url=self.llm_base_url, api_key=self.api_key())]
        for entry in self.llm_fallbacks:
            key = entry.api_key.get_secret_value() if entry.api_key else None
            specs.append(
                BackendSpec(
                    name=entry.name or "",
                    base_url=entry.base_url,
                    api_key=key,
                    model=entry.model,
                )
            )
        return name_backends(specs)


class LimitSettings(BaseModel):
    """What one request may use: history tokens, images per user, and token and cost budgets."""

    # Tokens of history (system prompt included) sent with each request, and the context window
    # assumed for models whose backend does not say.
    history_token_budget: int = Field(default=12000, gt=0)
    context_window: int = Field(default=32768, gt=0)
    # Per-user pace of /image (0 turns a limit off; owners are exempt).
    image_cooldown_seconds: int = Field(default=30, ge=0)
    image_daily_limit: int = Field(default=10, ge=0)
    # The largest text file (.txt, .md, .csv, code…) read into a conversation; Telegram lets
    # bots download at most 20 MB.
    document_max_bytes: int = Field(default=512 * 1024, gt=0, le=20 * 1024 * 1024)
    # The largest PDF whose text is read (a PDF's fonts and pictures weigh more than its text).
    pdf_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0, le=20 * 1024 * 1024)
    # The largest photo or image file sent to a vision model, and whether later requests carry
    # earlier images again (off: history keeps a short placeholder in their place).
    vision_max_bytes: int = Field(default=5 * 1024 * 1024, gt=0, le=20 * 1024 * 1024)
    vision_keep_images: bool = False
    # Budgets for each user and for the whole bot; empty or 0 means unlimited. Owners are never
    # stopped. Days and months begin at midnight in USAGE_TIMEZONE (an IANA name).
    user_daily_tokens: int | None = Field(default=None, ge=0)
    user_monthly_tokens: int | None = Field(default=None, ge=0)
    user_daily_cost: float | None = Field(default=None, ge=0)
    user_monthly_cost: float | None = Field(default=None, ge=0)
    bot_daily_tokens: int | None = Field(default=None, ge=0)
    bot_monthly_tokens: int | None = Field(default=None, ge=0)
    bot_daily_cost: float | None = Field(default=None, ge=0)
    bot_monthly_cost: float | None = Field(default=None, ge=0)
    usage_timezone: str = "UTC"

    @field_validator(
        "user_daily_tokens",
        "user_monthly_tokens",
        "user_daily_cost",
        "user_monthly_cost",
        "bot_daily_tokens",
        "bot_monthly_tokens",
        "bot_daily_cost",
        "bot_monthly_cost",
    )
    @classmethod
    def _zero_is_unlimited(cls, value: float | None) -> float | None:
        return value or None

    @field_validator("usage_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        value = value.strip()
        try:
            load_timezone(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                "unknown time zone; use an IANA name such as UTC or Europe/Berlin"
            ) from None
        return value

    def usage_tzinfo(self) -> tzinfo:
        """The time zone whose midnights begin usage days and months."""
        return load_timezone(self.usage_timezone)


class PriceSettings(BaseModel):
    """Prices for the cost estimates, shown as US dollars."""

    # Per million prompt and completion tokens and per image, and models priced differently,
    # as JSON; fields a model leaves out take the defaults.
    price_prompt_per_million: float = Field(default=0.0, ge=0)
    price_completion_per_million: float = Field(default=0.0, ge=0)
    price_per_image: float = Field(default=0.0, ge=0)
    price_per_audio_minute: float = Field(default=0.0, ge=0)
    model_prices: Annotated[dict[str, dict[str, float]], NoDecode] = {}

    @field_validator("model_prices", mode="before")
    @classmethod
    def _parse_model_prices(cls, value: Any) -> Any:
        example = '{"gpt-4o": {"prompt": 2.5, "completion": 10, "image": 0}}'
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"must be JSON such as {example}") from None
        if not isinstance(value, dict):
            raise ValueError(f"must be a JSON object such as {example}")
        for model, price in value.items():
            if not isinstance(price, dict):
                raise ValueError(f"the price of {model!r} must be an object such as {example}")
            unknown = sorted(set(price) - PRICE_FIELDS)
            if unknown:
                raise ValueError(
                    f"{model!r} has unknown field {', '.join(unknown)}; "
                    "use prompt, completion, image and audio_minute"
                )
            for name, amount in price.items():
                if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                    raise ValueError(f"{model!r} {name} must be a number, 0 or more")
        return value

    def price_list(self) -> PriceList:
        """The default price and MODEL_PRICES, with left-out fields taken from the default."""
        default = Price(
            prompt_per_million=self.price_prompt_per_million,
            completion_per_million=self.price_completion_per_million,
            per_image=self.price_per_image,
            per_audio_minute=self.price_per_audio_minute,
        )
        models = {
            model: Price(
                prompt_per_million=price.get("prompt", default.prompt_per_million),
                completion_per_million=price.get("completion", default.completion_per_million),
                per_image=price.get("image", default.per_image),
                per_audio_minute=price.get("audio_minute", default.per_audio_minute),
            )
            for model, price in self.model_prices.items()
        }
        return PriceList(default=default, models=models)


class StorageSettings(BaseModel):
    """Where the conversations, choices and usage are kept."""

    database_url: str = "sqlite+aiosqlite:///data/bot.db"
    # Redis shared by the replicas (required with more than one): Telegram's rate limits, 429
    # cooldowns and the model list, under keys starting with REDIS_PREFIX. Empty: no Redis.
    redis_url: str = ""
    redis_prefix: str = Field(default="llm-bot", min_length=1, max_length=64)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use redis://host:6379/0 (or rediss:// for TLS)")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        value = value.strip()
        for plain, driver in (
            ("sqlite://", "sqlite+aiosqlite://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
        ):
            if value.startswith(plain):
                return driver + value[len(plain) :]
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite:///path/to/file.db or postgresql://user@host/db")
        return value


class Settings(
    BaseSettings, TelegramSettings, LLMSettings, LimitSettings, PriceSettings, StorageSettings
):
    """Every setting the bot reads, grouped by concern; names are the environment variables'.

    The groups are mixed into one flat model, so each variable keeps its plain name
    (LLM_BASE_URL, not LLM__BASE_URL). Validators are looked up by name across the groups:
    each must have a name of its own.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,  # `TEMPERATURE=` in .env means "use the default"
    )


def _http_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


# What Telegram accepts as a webhook's secret_token.
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")

PRICE_FIELDS = frozenset({"prompt", "completion", "image", "audio_minute"})


def load_timezone(name: str) -> tzinfo:
    """The time zone of an IANA name; UTC works even without the system's tz database."""
    if name.upper() in {"UTC", "Z", "ETC/UTC"}:
        return UTC
    return ZoneInfo(name)


class ConfigError(Exception):
    """Raised with one readable line per invalid or missing setting."""


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, turning validation errors into a ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                message = "is required but not set"
            lines.append(f"{name}: {message}")
        raise ConfigError("; ".join(lines)) from None
