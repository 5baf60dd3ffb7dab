"""Settings from the environment and a `.env` file, validated once at start."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IdList = Annotated[list[int], NoDecode]
StrList = Annotated[list[str], NoDecode]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant in a Telegram chat. Answer concisely and use Markdown "
    "for formatting where it helps."
)


class Settings(BaseSettings):
    """Every setting the bot reads; names are the environment variables' names."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,  # `TEMPERATURE=` in .env means "use the default"
    )

    bot_token: SecretStr
    telegram_api_url: str = "https://api.telegram.org"

    llm_base_url: str = "https://proxy.gonka.gg/v1"
    llm_api_key: SecretStr | None = None
    llm_model: str = "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int | None = Field(default=2048, ge=0)  # 0: let the backend decide
    temperature: float | None = Field(default=None, ge=0, le=2)

    llm_connect_timeout: float = Field(default=10.0, gt=0)
    llm_first_token_timeout: float = Field(default=60.0, gt=0)
    llm_idle_timeout: float = Field(default=60.0, gt=0)
    llm_total_timeout: float = Field(default=600.0, gt=0)
    llm_max_retries: int = Field(default=3, ge=0, le=10)

    # Tokens of history (system prompt included) sent with each request, and the context window
    # assumed for models whose backend does not say.
    history_token_budget: int = Field(default=12000, gt=0)
    context_window: int = Field(default=32768, gt=0)

    database_url: str = "sqlite+aiosqlite:///data/bot.db"

    owner_ids: IdList = []
    allowed_user_ids: IdList = []
    allowed_chat_ids: IdList = []

    edit_interval_private: float = Field(default=1.0, gt=0)
    edit_interval_group: float = Field(default=3.0, gt=0)
    telegram_rate_limit: float = Field(default=30.0, gt=0)
    shutdown_grace: float = Field(default=20.0, ge=0)
    log_level: str = "INFO"

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

    @field_validator("max_tokens")
    @classmethod
    def _zero_is_none(cls, value: int | None) -> int | None:
        return value or None

    @field_validator("telegram_api_url", "llm_base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("bot_token")
    @classmethod
    def _check_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value().strip()
        head, _, tail = token.partition(":")
        if not head.isdigit() or not tail:
            raise ValueError("does not look like a bot token from @BotFather (123456:ABC...)")
        return SecretStr(token)

    @field_validator("llm_api_key")
    @classmethod
    def _blank_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())

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

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> Settings:
        if self.llm_total_timeout < self.llm_first_token_timeout:
            raise ValueError("LLM_TOTAL_TIMEOUT must not be shorter than LLM_FIRST_TOKEN_TIMEOUT")
        return self

    def is_owner(self, user_id: int | None) -> bool:
        """True for the users listed in OWNER_IDS."""
        return user_id is not None and user_id in self.owner_ids


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
