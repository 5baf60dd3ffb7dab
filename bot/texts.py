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
    "/reset (or /new) — forget this chat's conversation and start over\n"
    "/image <description> — draw a picture (or reply /image to a message to draw what it says)\n"
    "/usage — your tokens, images and their cost today, this month and in total\n"
    "/model — show or change the AI model of this chat (/model <id> switches directly)\n\n"
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
    "The model “{model}” is not available on the AI backend (it may have been removed). "
    "Send /model to choose another one."
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
    ("image", "Generate an image"),
    ("usage", "Token and image usage"),
    ("model", "Choose the AI model"),
]
TRUNCATED = "⚠️ The answer was cut off: it reached the maximum answer length (MAX_TOKENS)."

# /image. {wait} is a WAIT_* duration.
IMAGE_USAGE = (
    "Describe the picture after the command, for example:\n"
    "/image a red fox sleeping in the snow, watercolour\n\n"
    "Or reply /image to a message to draw what it says."
)
IMAGE_DISABLED = (
    "Image generation is not enabled on this bot. The bot's owner can turn it on by setting "
    "IMAGE_MODEL."
)
IMAGE_BUSY = "Your previous image is still being drawn. Please wait for it before asking again."
IMAGE_COOLDOWN = "Please wait a little between images: you can ask for the next one in {wait}."
IMAGE_DAILY_LIMIT = (
    "You have had your {limit} images for the last 24 hours. You can ask for the next one in "
    "{wait}."
)
IMAGE_REFUSED = (
    "The image service refused this description under its content policy. Please describe "
    "something else."
)
IMAGE_TIMEOUT = "Drawing the image took too long (over {seconds} s). Please try again later."
IMAGE_ERR_NOT_FOUND = (
    "The image model “{model}” is not available on the AI backend, or the backend cannot draw "
    "images. The bot's owner needs to change IMAGE_MODEL."
)
IMAGE_ERR_BAD_REQUEST = "The AI backend rejected the image request: {detail}"
IMAGE_ERR_SERVER = "The AI backend failed to draw the image ({detail}). Please try again later."
IMAGE_ERR_NO_IMAGE = "The AI backend answered without a usable image. Please try again."
IMAGE_ERR_DOWNLOAD = (
    "The image was drawn, but downloading it from the AI backend failed. Please try again."
)
IMAGE_SEND_FAILED = "The image was drawn, but Telegram did not accept it."
IMAGE_INTERRUPTED = "⚠️ The image was not finished: the bot was restarted. Please ask again."
WAIT_SECONDS = "{seconds} s"

# /model: the per-chat model picker. {model} is a model's name (with its id when they differ).
MODEL_LABEL = "{name} ({id})"
MODEL_CONTEXT = "{model}, context {tokens} tokens"
MODEL_PICKER = "This chat uses {model}.\n\nChoose a model, or send /model <id>:"
MODEL_PICKER_NOT_LISTED = (
    "This chat uses {model}, which the AI backend does not list at the moment.\n\n"
    "Choose a model, or send /model <id>:"
)
MODEL_PICKER_SWITCHED = "✅ This chat now uses {model}.\n\nChoose a model, or send /model <id>:"
MODEL_NONE_OFFERED = "This chat uses {model}. The AI backend offers no chat models to choose from."
MODEL_LIST_UNAVAILABLE = (
    "This chat uses {model}.\n\nThe AI backend's model list cannot be loaded right now. "
    "You can still switch by sending /model followed by the model's id."
)
MODEL_SWITCHED = "✅ This chat now uses {model}. The next answer will come from it."
MODEL_SWITCHED_UNVERIFIED = (
    "✅ This chat now uses “{model}”. The AI backend's model list could not be checked, so the "
    "id is used as typed; if it is wrong, the next answer will say so."
)
MODEL_ALREADY = "This chat already uses {model}."
MODEL_DID_YOU_MEAN = "There is no model “{requested}”. Did you mean one of these?\n{suggestions}"
MODEL_SUGGESTION_LINE = "• {model}"
MODEL_UNKNOWN = (
    "There is no chat model “{requested}” to choose from, so this chat keeps {model}. "
    "Send /model to see the choices."
)
MODEL_ADMINS_ONLY = "Only the group's administrators can change the model."
# Short notices shown when a button of the picker is pressed (at most 200 characters).
MODEL_PRESS_SWITCHED = "Switched to {model}"
MODEL_PRESS_ALREADY = "Already in use"
MODEL_PRESS_OUTDATED = "This list is outdated, send /model again."
MODEL_PRESS_UNAVAILABLE = "The model list cannot be loaded right now. Please try again later."

# /usage. Figures read "requests 3 · tokens 1,234 (prompt 1,000, completion 234)".
USAGE_TITLE_OWN = "Your usage"
USAGE_TITLE_USER = "Usage of {user}"
USAGE_TITLE_BOT = "Usage of the whole bot"
USAGE_TODAY = "Today"
USAGE_MONTH = "This month"
USAGE_ALL = "All time"
USAGE_PERIOD = "{period}: {figures}"
USAGE_PERIOD_EMPTY = "{period}: nothing yet"
USAGE_MODEL = "  • {model}: {figures}"
USAGE_FIGURES = "requests {requests} · tokens {tokens} (prompt {prompt}, completion {completion})"
USAGE_FIGURES_IMAGES = " · images {images}"
USAGE_FIGURES_COST = " · cost {cost}"
USAGE_ESTIMATED_MARK = "≈"
USAGE_ESTIMATED_NOTE = (
    "≈ includes estimates: the AI backend did not report usage for some requests, so the bot "
    "counted their tokens itself."
)
USAGE_COST_NOTE = "Costs are estimates from the bot's price list."
USAGE_TIMEZONE_NOTE = "Days and months are counted in {timezone}."
USAGE_BUDGETS = "Limits:"
USAGE_BUDGET_LINE = "  • {window}: {used} of {limit}"
USAGE_BUDGET_REACHED = "  • {window}: {used} of {limit}, reached until {reset}"
USAGE_BUDGET_DAILY = "Daily"
USAGE_BUDGET_MONTHLY = "Monthly"
USAGE_TOP_USERS_TOKENS = "Top users this month by tokens:"
USAGE_TOP_USERS_COST = "Top users this month by cost:"
USAGE_TOP_CHATS_TOKENS = "Top chats this month by tokens:"
USAGE_TOP_CHATS_COST = "Top chats this month by cost:"
USAGE_TOP_LINE = "{rank}. {who}: tokens {tokens}{cost}"
USAGE_USER = "{name} (@{username}, id {id})"
USAGE_USER_NO_USERNAME = "{name} (id {id})"
USAGE_UNKNOWN = "id {id}"
USAGE_NOT_YOURS = "You can only see your own usage: send /usage without a number."
USAGE_PRIVATE_ONLY = (
    "Reports about the whole bot and about other users are shown only in a private chat with me."
)
USAGE_OWNER_IN_GROUP = "The report about the whole bot is in a private chat with me (/usage)."
USAGE_BAD_ARGUMENT = "Send /usage for the whole bot, or /usage <user id> for one user."

# Budgets: {window} is BUDGET_DAILY or BUDGET_MONTHLY, {limit} tokens or a cost.
BUDGET_USER = (
    "You have used up your {window} limit of {limit}, so I cannot answer right now. "
    "It resets at {reset} (in {wait})."
)
BUDGET_BOT = (
    "This bot has used up its {window} limit of {limit} for everyone, so I cannot answer right "
    "now. It resets at {reset} (in {wait})."
)
BUDGET_DAILY = "daily"
BUDGET_MONTHLY = "monthly"
AMOUNT_TOKENS = "{tokens} tokens"
WAIT_DAYS = "{days} d {hours} h"
WAIT_HOURS = "{hours} h {minutes} min"
WAIT_MINUTES = "{minutes} min"
