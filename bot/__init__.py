"""A Telegram bot for OpenAI-compatible LLM backends."""

from bot.telegram.lazy_types import defer_aiogram_builds

# Before anything imports aiogram: its ~300 models are then built when first used (140 MB less).
defer_aiogram_builds()
