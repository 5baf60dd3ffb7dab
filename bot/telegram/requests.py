"""Telegram messages turned into the services' requests: who asks, where, and what."""

from __future__ import annotations

from aiogram.types import Message, User

from bot.services.chat import ChatRequest
from bot.services.images import ImageRequest


def chat_request(message: Message, user: User, text: str) -> ChatRequest:
    """The chat service's request for `text`, sent by `user` in `message`'s chat."""
    return ChatRequest(
        chat_id=message.chat.id,
        chat_type=message.chat.type,
        chat_title=message.chat.title,
        user_id=user.id,
        user_full_name=user.full_name,
        username=user.username,
        language_code=user.language_code,
        text=text,
        message_id=message.message_id,
    )


def image_request(message: Message, user: User, prompt: str) -> ImageRequest:
    """The image service's request to draw `prompt`, asked by `user` in `message`'s chat."""
    return ImageRequest(
        chat_id=message.chat.id,
        chat_type=message.chat.type,
        chat_title=message.chat.title,
        user_id=user.id,
        user_full_name=user.full_name,
        username=user.username,
        language_code=user.language_code,
        prompt=prompt,
    )
