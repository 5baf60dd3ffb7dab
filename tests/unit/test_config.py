"""Settings validation: clear one-line errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings

TOKEN = "123456:ABCDEF"


def load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's directory
    for key in list(Settings.model_fields):
        monkeypatch.delenv(key.upper(), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN)
    assert s.llm_base_url == "https://proxy.gonka.gg/v1"
    assert s.llm_model == "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"
    assert s.telegram_api_url == "https://api.telegram.org"
    assert s.database_url == "sqlite+aiosqlite:///data/bot.db"
    assert s.owner_ids == [] and s.allowed_user_ids == [] and s.allowed_chat_ids == []
    assert s.llm_api_key is None


def test_missing_token_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(monkeypatch, tmp_path)
    assert str(err.value) == "BOT_TOKEN: is required but not set"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"BOT_TOKEN": "not-a-token"}, "BOT_TOKEN"),
        ({"BOT_TOKEN": TOKEN, "OWNER_IDS": "12,abc"}, "OWNER_IDS"),
        ({"BOT_TOKEN": TOKEN, "LLM_BASE_URL": "proxy.gonka.gg/v1"}, "LLM_BASE_URL"),
        ({"BOT_TOKEN": TOKEN, "TEMPERATURE": "3"}, "TEMPERATURE"),
        ({"BOT_TOKEN": TOKEN, "LLM_IDLE_TIMEOUT": "soon"}, "LLM_IDLE_TIMEOUT"),
        ({"BOT_TOKEN": TOKEN, "DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"BOT_TOKEN": TOKEN, "DEFAULT_LANGUAGE": "de"}, "DEFAULT_LANGUAGE"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(monkeypatch, tmp_path, **env)
    message = str(err.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message
    assert TOKEN not in message


def test_lists_urls_and_drivers_are_normalised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = load(
        monkeypatch,
        tmp_path,
        BOT_TOKEN=TOKEN,
        OWNER_IDS=" 1, 2 ,3",
        ALLOWED_CHAT_IDS="-100123",
        LLM_BASE_URL="http://127.0.0.1:8000/v1/",
        DATABASE_URL="postgresql://bot@db/bot",
        LLM_API_KEY="  ",
        TEMPERATURE="",
        MAX_TOKENS="0",
    )
    assert s.owner_ids == [1, 2, 3]
    assert s.allowed_chat_ids == [-100123]
    assert s.llm_base_url == "http://127.0.0.1:8000/v1"
    assert s.database_url == "postgresql+asyncpg://bot@db/bot"
    assert s.llm_api_key is None
    assert s.temperature is None
    assert s.max_tokens is None


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"BOT_TOKEN={TOKEN}\nLLM_MODEL=gpt-4o-mini\n")
    s = load(monkeypatch, tmp_path)
    assert s.llm_model == "gpt-4o-mini"
    assert s.bot_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(s)


def test_default_language_is_checked_and_normalised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN).default_language == ""
    assert (
        load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN, DEFAULT_LANGUAGE=" RU ").default_language
        == "ru"
    )
    with pytest.raises(ConfigError) as err:
        load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN, DEFAULT_LANGUAGE="Russian")
    assert str(err.value) == "DEFAULT_LANGUAGE: must be empty or one of en, ru, zh"


def test_env_example_documents_every_setting() -> None:
    example = (Path(__file__).parents[2] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"{name.upper()}=" in example, f"{name.upper()} is not in .env.example"


def test_model_allow_list_and_cache_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN)
    assert s.llm_models == [] and s.models_cache_seconds == 300
    s = load(
        monkeypatch,
        tmp_path,
        BOT_TOKEN=TOKEN,
        LLM_MODELS=" gpt-4o-mini, Qwen/Qwen3-235B-A22B-Instruct-2507-FP8 ,,",
        MODELS_CACHE_SECONDS="60",
    )
    assert s.llm_models == ["gpt-4o-mini", "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"]
    assert s.models_cache_seconds == 60
    with pytest.raises(ConfigError) as err:
        load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN, MODELS_CACHE_SECONDS="-1")
    assert str(err.value).startswith("MODELS_CACHE_SECONDS: ")


def test_every_setting_is_documented_in_readme_and_env_example() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Usage, costs")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    # One table without blank lines in it, so it renders as one.
    first, last = table.index(rows[0]), table.index(rows[-1])
    assert "\n\n" not in table[first:last]
    env_example = (root / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in "\n".join(rows), f"{name.upper()} missing from README"
        assert f"{name.upper()}=" in env_example, f"{name.upper()} missing from .env.example"


def test_fallback_backends_are_read_and_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fallbacks = (
        '[{"base_url": "https://litellm.example.com/v1/", "api_key": "sk-fallback"},'
        ' {"base_url": "http://127.0.0.1:11434/v1", "model": "qwen2.5", "name": "ollama"},'
        ' {"base_url": "https://litellm.example.com/v1"}]'
    )
    s = load(
        monkeypatch, tmp_path, BOT_TOKEN=TOKEN, LLM_API_KEY="sk-main", LLM_FALLBACKS=fallbacks
    )

    backends = s.backends()

    assert [(b.name, b.base_url, b.model) for b in backends] == [
        ("proxy.gonka.gg", "https://proxy.gonka.gg/v1", None),
        ("litellm.example.com", "https://litellm.example.com/v1", None),
        ("ollama", "http://127.0.0.1:11434/v1", "qwen2.5"),
        ("litellm.example.com #2", "https://litellm.example.com/v1", None),
    ]
    assert [b.api_key for b in backends] == ["sk-main", "sk-fallback", None, None]
    assert "sk-" not in repr(backends)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('[{"base_url": "https://a/v1", "api_key": "sk-secret"', "is not valid JSON (line 1"),
        ('{"base_url": "https://a/v1"}', "must be a JSON list of backends"),
        ('[{"api_key": "sk-secret"}]', "LLM_FALLBACKS.0.BASE_URL: is required but not set"),
        (
            '[{"base_url": "https://a/v1"}, {"base_url": "a/v1", "api_key": "sk-secret"}]',
            "LLM_FALLBACKS.1.BASE_URL: must start with http:// or https://",
        ),
        ('[{"base_url": "https://a/v1", "key": "sk-secret"}]', "LLM_FALLBACKS.0.KEY: "),
    ],
)
def test_a_bad_fallback_entry_is_named_without_its_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN, LLM_FALLBACKS=value)
    message = str(err.value)
    assert expected in message
    assert "sk-secret" not in message


def test_webhook_mode_needs_a_url_and_a_valid_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN, BOT_MODE="webhook")
    assert "WEBHOOK_URL and WEBHOOK_SECRET" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load(
            monkeypatch,
            tmp_path,
            BOT_TOKEN=TOKEN,
            BOT_MODE="webhook",
            WEBHOOK_URL="https://bot.example.com/tg/hook",
            WEBHOOK_SECRET="not allowed!",
        )
    assert str(err.value).startswith("WEBHOOK_SECRET: ")
    assert "not allowed!" not in str(err.value)
    s = load(
        monkeypatch,
        tmp_path,
        BOT_TOKEN=TOKEN,
        BOT_MODE="Webhook",
        WEBHOOK_URL="https://bot.example.com/tg/hook",
        WEBHOOK_SECRET="s3cret_-X",
        WEBHOOK_LISTEN="127.0.0.1:9000",
    )
    assert s.bot_mode == "webhook"
    assert s.webhook_route() == "/tg/hook"  # WEBHOOK_PATH defaults to the URL's path
    assert s.webhook_address() == ("127.0.0.1", 9000)
    with pytest.raises(ConfigError) as err:
        load(monkeypatch, tmp_path, BOT_TOKEN=TOKEN, WEBHOOK_LISTEN="8080")
    assert str(err.value).startswith("WEBHOOK_LISTEN: ")
