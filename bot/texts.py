"""Every user-facing string of the bot."""

from __future__ import annotations

START = (
    "Hi{name}! I am an AI assistant. Write me anything and I will answer, "
    "keeping our conversation in mind.\n\n"
    "In groups, mention me or reply to my message.\n"
    "Use /reset to start a new conversation and /help to see all commands."
)
HELP = (
    "Commands:\n"
    "/start — what this bot does\n"
    "/help — this list\n"
    "/reset (or /new) — forget this chat's conversation and start over\n\n"
    "Just write a message to talk. In groups, mention me (@{username}) or reply to one of my "
    "messages."
)
RESET_DONE = "Started a new conversation. Previous messages are forgotten."
NOT_ALLOWED = "Sorry, this bot is private and you are not on its list of users."
UNSUPPORTED_CONTENT = (
    "I can only read text messages. Stickers, voice messages, files and photos without a caption "
    "are not supported yet — please write your question as text."
)
UNKNOWN_COMMAND = "Unknown command. See /help for the list."
TOO_LONG = (
    "Your message is too long for this model ({tokens} tokens; at most {limit} fit). "
    "Please shorten it or split it into parts."
)
EMPTY_ANSWER = "The model returned an empty answer. Please try rephrasing your message."

# Backend failures, worded for the person chatting, not for the operator.
ERR_AUTH = "The AI backend refused the bot's API key. The bot's owner needs to fix LLM_API_KEY."
ERR_MODEL_NOT_FOUND = (
    "The model “{model}” is not available on the AI backend. "
    "The bot's owner (or /model, where enabled) can choose another one."
)
ERR_CONTEXT = (
    "The conversation is too long for the model. Use /reset to start a new one and try again."
)
ERR_BAD_REQUEST = "The AI backend rejected the request: {detail}"
ERR_RATE_LIMIT = "The AI backend is busy (too many requests). Please try again in a minute."
ERR_UNAVAILABLE = "The AI backend cannot be reached right now. Please try again later."
ERR_SERVER = "The AI backend failed to answer (server error). Please try again later."
ERR_TIMEOUT = "The AI backend took too long to answer. Please try again later."
ERR_GENERIC = "Something went wrong while answering. Please try again."
INTERRUPTED = "⚠️ The answer was interrupted: {reason}"
REASON_CONNECTION = "the connection to the AI backend was lost"
REASON_TIMEOUT = "the AI backend stopped responding"
REASON_SERVER = "the AI backend reported an error"
REASON_SHUTDOWN = "the bot was restarted"
REASON_LENGTH = "it reached the maximum answer length"

COMMANDS: list[tuple[str, str]] = [
    ("start", "What this bot does"),
    ("help", "List of commands"),
    ("reset", "Start a new conversation"),
    ("new", "Start a new conversation"),
]
TRUNCATED = "⚠️ The answer was cut off: it reached the maximum answer length (MAX_TOKENS)."
