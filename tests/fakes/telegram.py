"""A fake Telegram Bot API server for end-to-end tests.

`FakeTelegram` is a real HTTP server on 127.0.0.1 that the bot reaches through aiogram with
``TELEGRAM_API_URL=fake.url``. It serves ``{url}/bot{token}/{method}`` (any letter case, as
Telegram does) and ``{url}/file/bot{token}/{path}``, accepts parameters as a query string, a JSON
body, ``application/x-www-form-urlencoded`` or ``multipart/form-data`` (nested objects as JSON
strings, files as parts referenced by ``attach://name``), and answers with Telegram's envelope.

Behaviour copied from the Bot API server and TDLib rather than guessed:

* HTML parse mode is a port of TDLib's ``parse_html``: the same tags, attributes, entity decoding
  (only ``&lt; &gt; &amp; &quot;`` and numeric references; an ``&`` that starts no known
  reference stays a literal ``&``), and the same error texts with UTF-8 byte offsets, e.g.
  ``Bad Request: can't parse entities: Unsupported start tag "foo" at byte offset 0``.
* The parsed text is then cleaned as TDLib's ``fix_formatted_text`` does: control characters
  become spaces, ``\\r`` is dropped, entities made only of blanks are dropped, and leading and
  trailing spaces and newlines are trimmed. A text that ends up blank is refused with
  ``Bad Request: message must be non-empty``; a missing or empty ``text`` parameter with
  ``Bad Request: message text is empty``.
* Length limits (4096 for text, 1024 for captions) are checked on the cleaned text.
  ``length_unit="utf16"`` (default) counts UTF-16 code units; TDLib itself counts code points
  (``utf8_length``), which is never more, so the default is the stricter of the two.
  ``length_unit="codepoints"`` reproduces TDLib exactly.
* Error descriptions follow the Bot API's rule: ``Bad Request: `` + TDLib's message with its first
  letter lowered. 401 ``Unauthorized`` for a wrong token, 404 ``Not Found`` for unknown methods.

Flood control (`FloodControl`) emulates Telegram's documented limits on the methods that produce
or change messages (sendMessage, editMessageText, editMessageCaption, editMessageReplyMarkup,
sendPhoto, sendDocument); sendChatAction, getUpdates, answerCallbackQuery and the rest are free:

* private chats (positive chat id): a token bucket per chat that refills ``private_rate`` tokens
  per second (default 1.0) up to ``private_burst`` tokens (default 3); each call takes one token;
* groups and supergroups (negative chat id): a sliding window of ``group_window`` seconds
  (default 60) holding at most ``group_limit`` calls (default 20);
* all chats together: a sliding window of ``global_window`` seconds (default 1) holding at most
  ``global_limit`` calls (default 30);
* message drafts (sendMessageDraft) are paced per chat apart from messages: a sliding window of
  ``draft_window`` seconds (default 1) holding at most ``draft_rate`` drafts (default 5). They
  take no message tokens, but count toward the global window and are refused while the chat's
  or the bot's window is open. A draft over its limit opens a window for the chat's drafts only.

A call over a limit gets HTTP 429 ``Too Many Requests: retry after N`` with
``parameters.retry_after = N`` (N = whole seconds until the call would have fitted, at least 1)
and opens a window of N seconds on that chat (or, for the global limit, on every chat). Calls to
a blocked chat inside the window get 429 again with the remaining seconds rounded up; each such
call is a *violation* (a bot that honours retry_after makes none). Windows refuse only the
limited methods, unless ``block_all_methods`` is set. Rejected calls do not use up capacity;
every admitted call does, even if it then fails with a 400 (requests, not successes, are what
costs, which is the cautious reading). ``count_429`` and ``violations`` are kept in total and per
chat. Time comes from the injected ``clock``. A 429 injected on a limited method with
`FakeTelegram.fail_next` and ``retry_after`` opens the same kind of window, whether or not the
automatic limits are enabled.

Message drafts (``sendMessageDraft``, streamed while an answer is generated): private chats only
(``Bad Request: TEXTDRAFT_PEER_INVALID`` elsewhere), ``draft_id`` must be a non-zero integer
(``Bad Request: TEXTDRAFT_ID_INVALID``), ``text`` goes through the same parsing, clean-up and
4096 limit as sendMessage but may be empty or missing (a "Thinking…" placeholder). Every
accepted call is recorded (`FakeTelegram.drafts`); `FakeTelegram.visible_draft` is the chat's
newest draft until the bot sends a message there, 30 s of ``clock`` pass without an update of it,
or the user stops it. An update with the same ``draft_id`` animates the text, another id
replaces the draft. `FakeTelegram.stop_generation` presses the stop button of a draft sent with
``can_stop``: it queues a ``stopped_message_generation`` update, hides the draft unless
``keep_on_stop``, and later drafts with that id in that chat still return True but are ignored.
With ``supports_drafts = False`` the method is unknown (404 ``Not Found``), as on an older
server.

Group privacy mode is on by default (``getMe`` says ``can_read_all_group_messages: false``):
in groups, only messages that start with ``/`` (and are not addressed to another bot), mention
the bot by username, or reply to one of its messages are delivered; others are kept in
``withheld``. Service messages (``migrate_to_chat_id`` and the like) are always delivered. Set
``privacy_mode = False`` to deliver everything.

Upgraded groups (`FakeTelegram.upgrade_group`): a basic group becomes a supergroup with a new
id; every call naming the old id then fails with ``400 Bad Request: group chat was upgraded to a
supergroup chat`` and ``parameters.migrate_to_chat_id``, and the service messages announcing it
are queued.

Faults beyond Telegram's own answers: `FakeTelegram.fail_next` (any status and description),
`FakeTelegram.disconnect_next` (the connection dropped, before or after the call took effect)
and `FakeTelegram.answer_next_raw` (bytes as given, e.g. JSON cut short, or HTTP 200 with
``"ok": false`` as a broken proxy may send).

Chat members: ``getChatMember`` answers ``creator`` or ``administrator`` for users named with
`FakeTelegram.set_admins`, ``member`` for the bot and for users seen in the chat (they wrote or
pressed a button there), ``left`` for users seen only in other chats, and ``Bad Request: user not
found`` for users the bot never saw (the Bot API knows only users who interacted with the bot).
``getChatAdministrators`` lists the owner first, then the administrators; in a private chat it
fails with ``Bad Request: there are no administrators in the private chat``.

Webhooks (``setWebhook``, ``deleteWebhook``, ``getWebhookInfo``) follow the Bot API server's
``Client.cpp`` and ``WebhookActor.cpp``:

* ``setWebhook`` stores ``url``, ``secret_token`` (0-256 characters of ``A-Z a-z 0-9 _ -``; an
  empty one means none; otherwise ``Bad Request: secret token is too long`` or ``Bad Request:
  secret token contains unallowed characters``), ``max_connections`` (clamped to 1-100 as the
  server does, without an error; default 40), ``allowed_updates`` (shared with getUpdates; an
  omitted value keeps the previous setting), ``ip_address`` and whether a ``certificate`` was
  uploaded. ``drop_pending_updates`` empties the queue; an empty ``url`` deletes the webhook.
  Setting the same webhook again changes only ``allowed_updates``; setting another one starts
  afresh (no last error, no retry schedule). A waiting getUpdates is answered with 409
  ``Conflict: terminated by setWebhook request``, and while a webhook is set every getUpdates
  gets 409 `CONFLICT_WEBHOOK`.
* Deviation: Telegram accepts only ``https`` URLs on ports 80, 88, 443 and 8443. The fake also
  accepts ``http`` and any port when the host is a loopback one (``127.0.0.1``, ``localhost``,
  ``::1``), as a local Bot API server (``--local``) does; ``http`` to another host gets ``Bad
  Request: bad webhook: An HTTPS URL must be provided for webhook``.
* Delivery: while a webhook is set a background task POSTs every queued update that passes
  ``allowed_updates`` as JSON (``Content-Type: application/json``), with the header
  ``X-Telegram-Bot-Api-Secret-Token`` when a secret was set, with at most ``max_connections``
  requests in flight. An update leaves the queue only after a 2xx answer (redirects are not
  followed). Updates are ordered per queue as the server orders them: messages, edited messages
  and stopped generations per chat, callback queries per user (a queue of their own). A queue's
  next update is not sent while an earlier one is in flight or waiting for a retry; different
  queues go in parallel.
* Retries: a non-2xx answer, a connection error or no answer within
  `FakeTelegram.webhook_timeout` seconds (default 10; Telegram waits about a minute) sends the
  same update again after `FakeTelegram.webhook_retry_delay` seconds (default 0.2), doubling
  with every further failure up to `FakeTelegram.webhook_max_retry_delay` (default 1), or after
  the answer's ``Retry-After`` seconds. (Telegram retries at once, then after 2, 4, 8… s up to a
  minute or two, and gives up after a day.) ``getWebhookInfo`` then reports ``last_error_date``
  and ``last_error_message`` as the server words it: ``Wrong response from the webhook: 401
  Unauthorized``, ``Connection refused``, ``Read timeout expired``, ``Webhook connection
  closed``. ``pending_update_count`` counts the queue, the updates in flight included.
* ``deleteWebhook`` (or setting another webhook) abandons the requests in flight: their updates
  stay queued, for getUpdates or the next webhook, unless ``drop_pending_updates``.
* Every attempt is recorded in `FakeTelegram.webhook_deliveries` (`WebhookDelivery`).
  `FakeTelegram.wait_webhook_idle` waits until the queue is empty and nothing is in flight;
  `FakeTelegram.redeliver` sends an update the bot already acknowledged once more, as Telegram
  does when it did not see the answer in time.
* Not emulated: the limit of one setWebhook per second (429 ``retry after 1``), a method call
  in the webhook's answer (Telegram executes it; the fake only keeps the body in
  `WebhookDelivery.response_body`), the slow opening of connections after a period of errors,
  the webhook being closed after 23 hours of 410 answers, and the ``description`` texts ("Webhook
  was set") of the answers.

Simplified: of TDLib's entity clean-up only the nesting rules that matter for HTML are kept
(nothing inside ``code``/``pre``, no quote inside a quote, no link inside a link). Not emulated:
Markdown parse modes (refused with a 400 that says so), automatic detection of URLs, mentions and
hashtags in the bot's own texts, inline messages, and media other than photos and documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

__all__ = [
    "Call",
    "Draft",
    "EntityParseError",
    "FakeTelegram",
    "FloodControl",
    "SentMessage",
    "UploadedFile",
    "WebhookDelivery",
    "finalize_text",
    "parse_html",
    "utf16_len",
]

CONFLICT_GET_UPDATES = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
CONFLICT_SET_WEBHOOK = "Conflict: terminated by setWebhook request"
WEBHOOK_SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_DEFAULT_MAX_CONNECTIONS = 40
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]*")
_LOOPBACK_HOSTS = frozenset({"localhost"})
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
UPGRADED = "Bad Request: group chat was upgraded to a supergroup chat"
DRAFT_PEER_INVALID = "Bad Request: TEXTDRAFT_PEER_INVALID"
DRAFT_ID_INVALID = "Bad Request: TEXTDRAFT_ID_INVALID"
DRAFT_LIFETIME = 30.0  # seconds a draft stays visible without an update
MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024

# Methods that produce or change a message: the ones flood control limits.
FLOOD_LIMITED_METHODS = frozenset(
    {
        "sendmessage",
        "editmessagetext",
        "editmessagecaption",
        "editmessagereplymarkup",
        "sendphoto",
        "senddocument",
    }
)
# Paced apart from the methods above: see `FloodControl`.
DRAFT_METHOD = "sendmessagedraft"
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# Telegram's default when allowed_updates is empty or was never given.
# Service messages reach a bot whatever its privacy mode (Bot API, "Privacy mode").
SERVICE_MESSAGE_FIELDS = frozenset(
    {
        "new_chat_members",
        "left_chat_member",
        "new_chat_title",
        "group_chat_created",
        "supergroup_chat_created",
        "migrate_to_chat_id",
        "migrate_from_chat_id",
    }
)
DEFAULT_EXCLUDED_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})

_INT_PARAMS = frozenset(
    {
        "chat_id",
        "message_id",
        "offset",
        "limit",
        "timeout",
        "reply_to_message_id",
        "message_thread_id",
        "user_id",
        "cache_time",
        "draft_id",
    }
)
_JSON_PARAMS = frozenset(
    {
        "reply_markup",
        "entities",
        "caption_entities",
        "reply_parameters",
        "link_preview_options",
        "allowed_updates",
        "commands",
        "scope",
    }
)
_BOOL_PARAMS = frozenset(
    {
        "disable_notification",
        "protect_content",
        "allow_sending_without_reply",
        "show_alert",
        "drop_pending_updates",
        "disable_web_page_preview",
        "has_spoiler",
        "show_caption_above_media",
        "disable_content_type_detection",
        "can_stop",
        "keep_on_stop",
    }
)


def utf16_len(text: str) -> int:
    """Length of `text` in UTF-16 code units, the unit of Telegram's entity offsets."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --------------------------------------------------------------------------------------------
# HTML parse mode: a port of TDLib's parse_html, working on UTF-8 bytes so that error offsets
# are byte offsets exactly as Telegram reports them.
# --------------------------------------------------------------------------------------------


class EntityParseError(Exception):
    """The HTML could not be parsed; the message is TDLib's, without the API prefix."""


_ALLOWED_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "s",
        "strike",
        "del",
        "u",
        "ins",
        "tg-spoiler",
        "tg-emoji",
        "tg-time",
        "span",
        "pre",
        "code",
        "blockquote",
    }
)
# TDLib's is_space counts NUL, which is what ends its scans at the end of the C string.
_SPACES = frozenset(b" \t\r\n\v\0")
_LT, _GT, _AMP, _SLASH, _EQ = ord("<"), ord(">"), ord("&"), ord("/"), ord("=")
_DQ, _SQ, _SEMI, _HASH = ord('"'), ord("'"), ord(";"), ord("#")
_NAMED_REFERENCES = {b"lt": ord("<"), b"gt": ord(">"), b"amp": ord("&"), b"quot": ord('"')}
_DATE_FORMAT = re.compile(r"r|w?[dD]?[tT]?")

# TDLib's sort order for entities starting at the same offset with the same length.
_PRIORITY = {
    "blockquote": 0,
    "expandable_blockquote": 0,
    "pre_lang": 10,
    "pre": 11,
    "code": 20,
    "text_link": 49,
    "text_mention": 49,
    "date_time": 49,
    "bold": 90,
    "italic": 91,
    "underline": 92,
    "strikethrough": 93,
    "spoiler": 94,
    "custom_emoji": 99,
}


def _entity_sort_key(entity: dict[str, Any]) -> tuple[int, int, int]:
    kind = entity["type"]
    if kind == "pre" and entity.get("language"):
        kind = "pre_lang"
    return (entity["offset"], -entity["length"], _PRIORITY.get(kind, 50))


def _decode_reference(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a character reference at data[pos] == '&'; (0, pos) if there is none."""

    def at(i: int) -> int:
        return data[i] if i < len(data) else 0

    end = pos + 1
    code = 0
    if at(pos + 1) == _HASH:
        end += 1
        if at(pos + 2) == ord("x"):
            end += 1
            while at(end) and chr(at(end)) in "0123456789abcdefABCDEF":
                code = code * 16 + int(chr(at(end)), 16)
                end += 1
        else:
            while ord("0") <= at(end) <= ord("9"):
                code = code * 10 + at(end) - ord("0")
                end += 1
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return 0, pos
    else:
        while chr(at(end)).isascii() and chr(at(end)).isalpha():
            end += 1
        code = _NAMED_REFERENCES.get(data[pos + 1 : end], 0)
        if not code:
            return 0, pos
    if at(end) == _SEMI:
        end += 1
    return code, end


def _link_user_id(url: str) -> int | None:
    match = re.fullmatch(r"tg://user\?id=(\d+)", url.strip(), flags=re.IGNORECASE)
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _checked_link(url: str) -> str | None:
    """Normalise a link the way Telegram stores text_link URLs; None drops the entity."""
    url = url.strip()
    if not url or any(ch.isspace() for ch in url):
        return None
    scheme_match = re.match(r"([a-zA-Z][a-zA-Z0-9+.\-]*):", url)
    scheme = scheme_match.group(1).lower() if scheme_match else ""
    if scheme in ("tg", "ton", "tonsite"):
        return url
    if scheme and scheme not in ("http", "https"):
        return None
    if not scheme:
        url = "http://" + url
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    path = parts.path or "/"
    rebuilt = f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"
    if parts.query:
        rebuilt += "?" + parts.query
    if parts.fragment:
        rebuilt += "#" + parts.fragment
    return rebuilt


@dataclass
class _OpenTag:
    tag: str
    argument: str
    date: int
    offset: int
    byte_pos: int


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram-HTML into (visible text, entities with UTF-16 offsets) like TDLib."""
    data = text.encode("utf-8", "surrogatepass")
    if b"\0" in data:
        raise EntityParseError("Text must not contain null bytes")
    size = len(data)

    def at(i: int) -> int:
        return data[i] if i < size else 0

    def is_space(c: int) -> bool:
        return c in _SPACES

    def lower(chunk: bytes) -> str:
        return chunk.lower().decode("utf-8", "replace")

    out = bytearray()
    utf16 = 0
    entities: list[dict[str, Any]] = []
    stack: list[_OpenTag] = []
    i = 0
    while i < size:
        c = data[i]
        if c == _AMP:
            code, end = _decode_reference(data, i)
            if code:
                utf16 += 2 if code > 0xFFFF else 1
                out += chr(code).encode("utf-8", "surrogatepass")
                i = end
                continue
        if c != _LT:
            if c & 0xC0 != 0x80:
                utf16 += 2 if c >= 0xF0 else 1
            out.append(c)
            i += 1
            continue

        begin = i
        i += 1
        if at(i) != _SLASH:
            while not is_space(at(i)) and at(i) != _GT:
                i += 1
            if at(i) == 0:
                raise EntityParseError(f"Unclosed start tag at byte offset {begin}")
            tag = lower(data[begin + 1 : i])
            if tag not in _ALLOWED_TAGS:
                raise EntityParseError(f'Unsupported start tag "{tag}" at byte offset {begin}')
            argument = ""
            date = 0
            while at(i) != _GT:
                while at(i) != 0 and is_space(at(i)):
                    i += 1
                if at(i) == _GT:
                    break
                name_begin = i
                while not is_space(at(i)) and at(i) not in (_EQ, _GT, _SLASH, _DQ, _SQ):
                    i += 1
                name = data[name_begin:i]
                if not name:
                    raise EntityParseError(
                        f'Empty attribute name in the tag "{tag}" at byte offset {begin}'
                    )
                while at(i) != 0 and is_space(at(i)):
                    i += 1
                if at(i) != _EQ:
                    if at(i) == 0:
                        raise EntityParseError(
                            f'Unclosed start tag "{tag}" at byte offset {begin}'
                        )
                    if tag == "blockquote" and name == b"expandable":
                        argument = "1"
                    continue
                i += 1
                while at(i) != 0 and is_space(at(i)):
                    i += 1
                if at(i) == 0:
                    raise EntityParseError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                if at(i) not in (_DQ, _SQ):
                    # An unquoted value is an SGML name token: letters, digits, '.' and '-'.
                    token_begin = i
                    while chr(at(i)).isascii() and (chr(at(i)).isalnum() or chr(at(i)) in ".-"):
                        i += 1
                    value = lower(data[token_begin:i])
                    if not is_space(at(i)) and at(i) != _GT:
                        raise EntityParseError(
                            f"Unexpected end of name token at byte offset {token_begin}"
                        )
                else:
                    quote = at(i)
                    i += 1
                    raw = bytearray()
                    while at(i) != quote and at(i) != 0:
                        if at(i) == _AMP:
                            code, end = _decode_reference(data, i)
                            if code:
                                raw += chr(code).encode("utf-8", "surrogatepass")
                                i = end
                                continue
                        raw.append(at(i))
                        i += 1
                    if at(i) == quote:
                        i += 1
                    value = raw.decode("utf-8", "replace")
                if at(i) == 0:
                    raise EntityParseError(f"Unclosed start tag at byte offset {begin}")
                if tag == "a" and name == b"href":
                    argument = value
                elif tag == "code" and name == b"class" and value.startswith("language-"):
                    argument = value[len("language-") :]
                elif tag == "span" and name == b"class" and value.startswith("tg-"):
                    argument = value[len("tg-") :]
                elif (tag == "tg-emoji" and name == b"emoji-id") or (
                    tag == "tg-time" and name == b"format"
                ):
                    argument = value
                elif tag == "blockquote" and name == b"expandable":
                    argument = "1"
                elif tag == "tg-time" and name == b"unix":
                    digits = re.match(r"\s*[-+]?\d+", value)
                    date = int(digits.group(0)) if digits else 0
            if tag == "span" and argument != "spoiler":
                raise EntityParseError(
                    f'Tag "span" must have class "tg-spoiler" at byte offset {begin}'
                )
            stack.append(_OpenTag(tag, argument, date, utf16, len(out)))
        else:
            if not stack:
                raise EntityParseError(f"Unexpected end tag at byte offset {begin}")
            while not is_space(at(i)) and at(i) != _GT:
                i += 1
            end_tag = lower(data[begin + 2 : i])
            while is_space(at(i)) and at(i) != 0:
                i += 1
            if at(i) != _GT:
                raise EntityParseError(f"Unclosed end tag at byte offset {begin}")
            top = stack[-1]
            if end_tag and end_tag != top.tag:
                raise EntityParseError(
                    f'Unmatched end tag at byte offset {begin}, expected "</{top.tag}>", '
                    f'found "</{end_tag}>"'
                )
            if utf16 > top.offset:
                _close_entity(top, utf16 - top.offset, bytes(out[top.byte_pos :]), entities)
            stack.pop()
        i += 1  # past the '>' that ended the tag

    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].tag}"')
    for entity in entities:
        entity.pop("_language", None)
    entities.sort(key=_entity_sort_key)
    try:
        # Numeric references may have produced surrogate halves; only matched pairs are valid.
        visible = (
            bytes(out)
            .decode("utf-8", "surrogatepass")
            .encode("utf-16-le", "surrogatepass")
            .decode("utf-16-le")
        )
    except UnicodeError:
        raise EntityParseError(
            "Text contains invalid Unicode characters after decoding HTML entities, check for "
            "unmatched surrogate code units"
        ) from None
    return visible, entities


def _close_entity(
    top: _OpenTag, length: int, content: bytes, entities: list[dict[str, Any]]
) -> None:
    simple = {
        "i": "italic",
        "em": "italic",
        "b": "bold",
        "strong": "bold",
        "s": "strikethrough",
        "strike": "strikethrough",
        "del": "strikethrough",
        "u": "underline",
        "ins": "underline",
        "tg-spoiler": "spoiler",
        "span": "spoiler",
    }
    base: dict[str, Any] = {"offset": top.offset, "length": length}
    tag = top.tag
    last = entities[-1] if entities else None
    same_range = last is not None and (last["offset"], last["length"]) == (top.offset, length)
    if tag in simple:
        entities.append({"type": simple[tag], **base})
    elif tag == "tg-emoji":
        if not re.fullmatch(r"[-+]?\d+", top.argument) or int(top.argument) == 0:
            raise EntityParseError("Invalid custom emoji identifier specified")
        entities.append({"type": "custom_emoji", **base, "custom_emoji_id": top.argument})
    elif tag == "tg-time":
        if not _DATE_FORMAT.fullmatch(top.argument):
            raise EntityParseError("Invalid date format specified")
        if top.date > 0:
            entity = {"type": "date_time", **base, "unix_time": top.date}
            if top.argument:
                entity["date_time_format"] = top.argument
            entities.append(entity)
    elif tag == "a":
        url = top.argument or content.decode("utf-8", "replace")
        user_id = _link_user_id(url)
        if user_id is not None:
            user = {"id": user_id, "is_bot": False, "first_name": ""}
            entities.append({"type": "text_mention", **base, "user": user})
        elif (checked := _checked_link(url)) is not None:
            entities.append({"type": "text_link", **base, "url": checked})
    elif tag == "pre":
        if last is not None and same_range and last["type"] == "code" and last.get("_language"):
            last["type"] = "pre"
            last["language"] = last.pop("_language")
        else:
            entities.append({"type": "pre", **base})
    elif tag == "code":
        if last is not None and same_range and last["type"] == "pre" and top.argument:
            last["language"] = top.argument
        else:
            entity = {"type": "code", **base}
            if top.argument:
                entity["_language"] = top.argument
            entities.append(entity)
    elif tag == "blockquote":
        kind = "expandable_blockquote" if top.argument else "blockquote"
        entities.append({"type": kind, **base})


# --------------------------------------------------------------------------------------------
# Text clean-up after parsing: TDLib's fix_formatted_text, in code points.
# --------------------------------------------------------------------------------------------


def _is_removed_char(code: int) -> bool:
    # '\r', bidi/line-separator controls U+2028..U+202E and three combining marks TDLib strips.
    return code == 13 or 0x2028 <= code <= 0x202E or code in (0x030A, 0x0333, 0x033F)


def _drop_bad_nesting(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop entities Telegram cannot nest: anything inside code/pre, quotes inside quotes."""
    kept: list[dict[str, Any]] = []
    for entity in entities:
        start, end = entity["offset"], entity["offset"] + entity["length"]
        inside = [
            outer
            for outer in kept
            if outer["offset"] <= start and end <= outer["offset"] + outer["length"]
        ]
        if any(outer["type"] in ("code", "pre") for outer in inside):
            continue
        quotes = ("blockquote", "expandable_blockquote")
        if entity["type"] in quotes and any(outer["type"] in quotes for outer in inside):
            continue
        if entity["type"] == "text_link" and any(o["type"] == "text_link" for o in inside):
            continue
        kept.append(entity)
    return kept


def finalize_text(
    text: str, entities: Iterable[dict[str, Any]], *, allow_empty: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    """Clean a parsed text as Telegram does before storing it; raises ValueError if blank."""
    units = [0]
    for ch in text:
        units.append(units[-1] + (2 if ord(ch) > 0xFFFF else 1))
    index_of_unit = {unit: index for index, unit in enumerate(units)}

    spans: list[tuple[int, int, dict[str, Any]]] = []
    for entity in sorted(entities, key=_entity_sort_key):
        start_unit = entity["offset"]
        end_unit = min(entity["offset"] + entity["length"], units[-1])
        if entity["length"] <= 0 or start_unit < 0 or start_unit >= end_unit:
            continue
        start, end = index_of_unit.get(start_unit), index_of_unit.get(end_unit)
        if start is None or end is None:
            raise ValueError("Entity begins or ends in a middle of a UTF-16 symbol")
        spans.append((start, end, entity))

    out: list[str] = []
    solid: list[bool] = []
    new_index: list[int] = []
    for ch in text:
        new_index.append(len(out))
        code = ord(ch)
        if _is_removed_char(code):
            continue
        if code <= 32 and ch != "\n":
            out.append(" ")
            solid.append(False)
        else:
            out.append(ch)
            solid.append(ch != "\n")
    new_index.append(len(out))

    kept: list[tuple[int, int, dict[str, Any]]] = []
    for start, end, entity in spans:
        new_start, new_end = new_index[start], new_index[end]
        if any(solid[new_start:new_end]):
            kept.append((new_start, new_end, entity))

    if not any(solid):
        if allow_empty:
            return "", []
        raise ValueError("Message must be non-empty")
    last = max(index for index, flag in enumerate(solid) if flag) + 1
    out = out[:last]
    first_entity = min((start for start, _, _ in kept), default=len(out))
    lead = 0
    while lead < first_entity and out[lead] in (" ", "\n"):
        lead += 1
    out = out[lead:]
    result = "".join(out)

    out_units = [0]
    for ch in result:
        out_units.append(out_units[-1] + (2 if ord(ch) > 0xFFFF else 1))
    fixed: list[dict[str, Any]] = []
    for start, end, entity in kept:
        start, end = start - lead, min(end, last) - lead
        if end <= start:
            continue
        offset = out_units[start]
        fixed.append({**entity, "offset": offset, "length": out_units[end] - offset})
    fixed.sort(key=_entity_sort_key)
    return result, _drop_bad_nesting(fixed)


# --------------------------------------------------------------------------------------------
# Entities in users' messages: bot commands and mentions, as Telegram's server finds them.
# --------------------------------------------------------------------------------------------


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _ascii_word(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _user_text_entities(text: str) -> list[dict[str, Any]]:
    """bot_command and mention entities Telegram adds to a user's text."""
    found: list[tuple[int, int, str]] = []
    size = len(text)
    for pos, ch in enumerate(text):
        prev = text[pos - 1] if pos else ""
        if ch == "/" and not (prev and (_is_word_char(prev) or prev in "/<>")):
            end = pos + 1
            while end < size and _ascii_word(text[end]):
                end += 1
            if not 1 <= end - pos - 1 <= 64:
                continue
            if end < size and text[end] == "@":
                mention_end = end + 1
                while mention_end < size and _ascii_word(text[mention_end]):
                    mention_end += 1
                if not 3 <= mention_end - end - 1 <= 32:
                    continue
                end = mention_end
            nxt = text[end] if end < size else ""
            if nxt and (_is_word_char(nxt) or nxt in "/<>"):
                continue
            found.append((pos, end, "bot_command"))
        elif ch == "@" and not (prev and _is_word_char(prev)):
            end = pos + 1
            while end < size and _ascii_word(text[end]):
                end += 1
            nxt = text[end] if end < size else ""
            if 2 <= end - pos - 1 <= 32 and not (nxt and _is_word_char(nxt)):
                found.append((pos, end, "mention"))
    entities = []
    for start, end, kind in found:
        offset = utf16_len(text[:start])
        entities.append({"offset": offset, "length": utf16_len(text[start:end]), "type": kind})
    return entities


# --------------------------------------------------------------------------------------------
# Flood control.
# --------------------------------------------------------------------------------------------


class FloodControl:
    """Emulated Telegram flood control; the algorithm is described in the module docstring."""

    GLOBAL = None  # key of the bot-wide window in `blocked_until`

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        enabled: bool = True,
        private_rate: float = 1.0,
        private_burst: float = 3.0,
        group_limit: int = 20,
        group_window: float = 60.0,
        global_limit: int = 30,
        global_window: float = 1.0,
        draft_rate: int = 5,
        draft_window: float = 1.0,
        block_all_methods: bool = False,
    ) -> None:
        self.clock = clock
        self.enabled = enabled
        self.private_rate = private_rate
        self.private_burst = private_burst
        self.group_limit = group_limit
        self.group_window = group_window
        self.global_limit = global_limit
        self.global_window = global_window
        self.draft_rate = draft_rate
        self.draft_window = draft_window
        # When set, an open window also refuses the free methods (sendChatAction and such).
        self.block_all_methods = block_all_methods
        self.reset()

    def reset(self) -> None:
        """Forget all history, open windows and counters."""
        self._buckets: dict[int, tuple[float, float]] = {}
        self._group_events: dict[int, deque[float]] = {}
        self._global_events: deque[float] = deque()
        self._draft_events: dict[int, deque[float]] = {}
        self.blocked_until: dict[int | None, float] = {}
        # Windows opened by drafts over `draft_rate`: they refuse only the chat's drafts.
        self.drafts_blocked_until: dict[int, float] = {}
        self.count_429 = 0
        self.violations = 0
        self.count_429_by_chat: dict[int, int] = {}
        self.violations_by_chat: dict[int, int] = {}

    def block(self, chat_id: int | None, seconds: float, *, draft: bool = False) -> None:
        """Open a retry_after window of `seconds` on a chat (None: on the whole bot).

        With `draft`, the window refuses only the chat's drafts.
        """
        until = self.clock() + seconds
        if draft and chat_id is not None:
            blocked = self.drafts_blocked_until
            blocked[chat_id] = max(blocked.get(chat_id, until), until)
            return
        self.blocked_until[chat_id] = max(self.blocked_until.get(chat_id, until), until)

    def remaining(self, chat_id: int, *, draft: bool = False) -> float:
        """Seconds left in the window that applies to `chat_id` (0 when none is open).

        With `draft`, the window that applies to a draft: the chat's, the bot's, or the one
        opened on the chat's drafts.
        """
        now = self.clock()
        ends = [self.blocked_until.get(chat_id, now), self.blocked_until.get(None, now)]
        if draft:
            ends.append(self.drafts_blocked_until.get(chat_id, now))
        return max(0.0, max(ends) - now)

    def admit(self, chat_id: int, *, limited: bool = True, draft: bool = False) -> int | None:
        """Account for one call to `chat_id`; None if allowed, else the retry_after to return.

        `draft` marks a sendMessageDraft call: limited, but paced by `draft_rate` per chat
        instead of the chat's message allowance.
        """
        limited = limited or draft
        if not limited and not self.block_all_methods:
            return None
        left = self.remaining(chat_id, draft=draft)
        if left > 0:
            self._count(chat_id, violation=True)
            return _whole_seconds(left)
        if not self.enabled or not limited:
            return None
        now = self.clock()
        while self._global_events and self._global_events[0] <= now - self.global_window:
            self._global_events.popleft()
        if len(self._global_events) >= self.global_limit:
            wait = _whole_seconds(self._global_events[0] + self.global_window - now)
            self.block(None, wait)
            self._count(chat_id, violation=False)
            return wait
        wait_chat = self._draft_wait(chat_id, now) if draft else self._chat_wait(chat_id, now)
        if wait_chat is not None:
            self.block(chat_id, wait_chat, draft=draft)
            self._count(chat_id, violation=False)
            return wait_chat
        self._global_events.append(now)
        if draft:
            self._draft_events[chat_id].append(now)
        else:
            self._consume(chat_id, now)
        return None

    def _chat_wait(self, chat_id: int, now: float) -> int | None:
        if chat_id > 0:
            tokens, last = self._buckets.get(chat_id, (self.private_burst, now))
            tokens = min(self.private_burst, tokens + (now - last) * self.private_rate)
            self._buckets[chat_id] = (tokens, now)
            if tokens >= 1:
                return None
            return _whole_seconds((1 - tokens) / self.private_rate)
        events = self._group_events.setdefault(chat_id, deque())
        return _window_wait(events, self.group_limit, self.group_window, now)

    def _draft_wait(self, chat_id: int, now: float) -> int | None:
        events = self._draft_events.setdefault(chat_id, deque())
        return _window_wait(events, self.draft_rate, self.draft_window, now)

    def _consume(self, chat_id: int, now: float) -> None:
        if chat_id > 0:
            tokens, _ = self._buckets[chat_id]
            self._buckets[chat_id] = (tokens - 1, now)
        else:
            self._group_events[chat_id].append(now)

    def _count(self, chat_id: int, *, violation: bool) -> None:
        self.count_429 += 1
        self.count_429_by_chat[chat_id] = self.count_429_by_chat.get(chat_id, 0) + 1
        if violation:
            self.violations += 1
            self.violations_by_chat[chat_id] = self.violations_by_chat.get(chat_id, 0) + 1


def _whole_seconds(seconds: float) -> int:
    # Float noise must not turn an exact 2.0 into 3.
    return max(1, math.ceil(seconds - 1e-9))


def _window_wait(events: deque[float], limit: int, window: float, now: float) -> int | None:
    """Drop events older than `window`; None if one more fits, else the whole seconds to wait."""
    while events and events[0] <= now - window:
        events.popleft()
    if len(events) < limit:
        return None
    return _whole_seconds(events[0] + window - now)


# --------------------------------------------------------------------------------------------
# Recorded state.
# --------------------------------------------------------------------------------------------


@dataclass
class UploadedFile:
    """A file part received in a multipart request."""

    field_name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Call:
    """One API request as received, with the answer the fake gave."""

    method: str
    params: dict[str, Any]
    at: float
    status: int = 0  # 0 while in flight; 499 if the client went away; -1 if the fake hung up
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def chat_id(self) -> int | None:
        """The chat the call addressed, if any."""
        value = self.params.get("chat_id")
        return value if isinstance(value, int) else None

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return bool(self.response.get("ok"))

    @property
    def description(self) -> str | None:
        """The error description, for failed calls."""
        value = self.response.get("description")
        return value if isinstance(value, str) else None

    @property
    def result(self) -> Any:
        """The result of a successful call."""
        return self.response.get("result")


@dataclass
class SentMessage:
    """Current state of a message the bot sent, with its edit history."""

    message_id: int
    chat_id: int
    kind: str  # "text", "photo" or "document"
    text: str  # visible text (the caption for media), after parsing and clean-up
    html: str  # the text or caption exactly as the bot sent it
    parse_mode: str | None
    entities: list[dict[str, Any]]
    date: int
    reply_to_message_id: int | None = None
    reply_markup: dict[str, Any] | None = None
    link_preview_options: dict[str, Any] | None = None
    message_thread_id: int | None = None
    disable_notification: bool = False
    edits: int = 0  # successful editMessageText / editMessageCaption calls
    markup_edits: int = 0  # successful editMessageReplyMarkup calls
    history: list[str] = field(default_factory=list)  # visible texts, the first one included
    html_history: list[str] = field(default_factory=list)
    deleted: bool = False
    deleted_by: str | None = None  # "bot" or "user"
    edit_date: int | None = None
    file: UploadedFile | None = None
    file_id: str | None = None


@dataclass
class Draft:
    """One sendMessageDraft call the fake accepted."""

    chat_id: int
    draft_id: int
    text: str  # visible text after parsing and clean-up; "" shows a "Thinking…" placeholder
    entities: list[dict[str, Any]]
    can_stop: bool
    keep_on_stop: bool
    at: float  # `clock` time of the call
    html: str = ""  # the text exactly as the bot sent it
    parse_mode: str | None = None
    message_thread_id: int | None = None
    ignored: bool = False  # sent after the user stopped this draft: it changed nothing
    stopped: bool = False  # the user pressed its stop button (see `FakeTelegram.stop_generation`)


@dataclass
class WebhookDelivery:
    """One POST of an update to the webhook, recorded when it is sent and completed when done.

    `status` is the HTTP status of the answer (None without one); `error` is what
    getWebhookInfo reports for a failed attempt (None after a 2xx answer, and while in flight).
    """

    update_id: int
    url: str
    at: float  # `clock` time the request was sent
    status: int | None = None
    error: str | None = None
    done: bool = False  # False while the request is in flight
    elapsed: float = 0.0  # seconds (event loop time) until the answer or the error
    response_body: bytes = b""

    @property
    def ok(self) -> bool:
        """Whether the bot acknowledged the update (a 2xx answer)."""
        return self.done and self.error is None and self.status is not None


@dataclass
class _Chat:
    id: int
    type: str
    title: str | None = None
    first_name: str | None = None
    username: str | None = None
    next_message_id: int = 1
    user_messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    bot_messages: dict[int, SentMessage] = field(default_factory=dict)
    deleted_user_messages: set[int] = field(default_factory=set)
    blocked_bot: bool = False
    # Users seen in the chat (as User objects) and statuses set by tests (creator, administrator).
    members: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    migrated_to: int | None = None  # the supergroup this group was upgraded to
    drafts: list[Draft] = field(default_factory=list)  # every accepted draft, oldest first
    draft: Draft | None = None  # the shown draft's latest state, until something hides it
    stopped_drafts: set[int] = field(default_factory=set)  # draft ids the user stopped

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id}
        if self.type == "private":
            data["first_name"] = self.first_name or ""
            if self.username:
                data["username"] = self.username
        else:
            data["title"] = self.title or ""
        data["type"] = self.type
        return data

    def take_message_id(self) -> int:
        message_id = self.next_message_id
        self.next_message_id += 1
        return message_id


@dataclass
class _Injection:
    method: str
    remaining: int
    chat_id: int | None = None
    status: int = 0
    description: str = ""
    retry_after: int | None = None
    after_processing: bool = False
    raw: bytes | None = None  # answer these bytes as they are (with `status`)
    content_type: str = "application/json"


class _ApiError(Exception):
    def __init__(
        self, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


def _api_message(message: str) -> str:
    """TDLib message -> Bot API description tail: first letter lowered unless it is a code."""
    if len(message) >= 2 and (message[1] == "_" or message[1].isupper()):
        return message
    return message[:1].lower() + message[1:]


@dataclass
class _Context:
    request: web.Request
    params: dict[str, Any]
    files: dict[str, UploadedFile]
    call: Call


Handler = Callable[[_Context], Awaitable[Any]]


# --------------------------------------------------------------------------------------------
# The server.
# --------------------------------------------------------------------------------------------


class FakeTelegram:
    """A Telegram Bot API stand-in served over real HTTP; see the module docstring."""

    def __init__(
        self,
        *,
        token: str = "123456:TEST-TOKEN",
        bot_username: str = "test_llm_bot",
        bot_id: int = 123456,
        clock: Callable[[], float] = time.monotonic,
        bot_first_name: str = "Test LLM Bot",
        length_unit: str = "utf16",
        supports_drafts: bool = True,
        webhook_timeout: float = 10.0,
        webhook_retry_delay: float = 0.2,
        webhook_max_retry_delay: float = 1.0,
    ) -> None:
        if length_unit not in ("utf16", "codepoints"):
            raise ValueError("length_unit must be 'utf16' or 'codepoints'")
        self.token = token
        self.bot_username = bot_username
        self.bot_id = bot_id
        self.bot_first_name = bot_first_name
        self.clock = clock
        self.length_unit = length_unit
        # False: sendMessageDraft is an unknown method (404), as on a server older than it.
        self.supports_drafts = supports_drafts
        self.flood = FloodControl(clock)
        self.privacy_mode = True
        self.url = ""
        self.calls: list[Call] = []
        self.withheld: list[dict[str, Any]] = []  # updates privacy mode kept from the bot
        self.my_commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        self.callback_answers: dict[str, dict[str, Any]] = {}
        self.chat_actions: list[tuple[int, str]] = []
        # update_id -> `clock` time at which getUpdates first handed the update out
        self.handed_out: dict[int, float] = {}
        # Webhook (see the module docstring): what setWebhook stored, how deliveries behave.
        self.webhook_url = ""
        self.webhook_secret_token = ""  # "" when none was set
        self.webhook_max_connections = 0  # 0 while no webhook is set
        self.webhook_ip_address = ""
        self.webhook_has_certificate = False
        self.webhook_timeout = webhook_timeout
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_max_retry_delay = webhook_max_retry_delay
        self.webhook_deliveries: list[WebhookDelivery] = []
        self.webhook_last_error_date = 0  # unix time of the last failed delivery; 0 if none
        self.webhook_last_error_message = ""
        self._webhook_task: asyncio.Task[None] | None = None
        self._webhook_wakeup = asyncio.Event()
        self._webhook_in_flight: dict[int, asyncio.Task[None]] = {}
        self._webhook_retry_at: dict[int, float] = {}  # update_id -> event loop time
        self._webhook_failures: dict[int, int] = {}  # update_id -> failed attempts in a row
        self._queue_keys: dict[int, tuple[str, int]] = {}  # update_id -> delivery queue
        self._acknowledged: dict[int, dict[str, Any]] = {}  # updates the bot confirmed
        self._chats: dict[int, _Chat] = {}
        self._updates: deque[dict[str, Any]] = deque()
        self._update_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._pending_callbacks: dict[str, dict[str, Any]] = {}
        self._known_users: dict[int, dict[str, Any]] = {}  # everyone who ever wrote or pressed
        self._files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, data)
        # A local Bot API server (--local) answers getFile with an absolute path on its disk,
        # which the bot reads directly; set a directory to act as one.
        self.local_files_dir: Path | None = None
        self._allowed_updates: list[str] = []
        self._injections: list[_Injection] = []
        self._poll_generation = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self._methods: dict[str, tuple[str, Handler]] = {}
        for name, handler in (
            ("getMe", self._get_me),
            ("getUpdates", self._get_updates),
            ("setWebhook", self._set_webhook),
            ("deleteWebhook", self._delete_webhook),
            ("getWebhookInfo", self._get_webhook_info),
            ("logOut", self._true),
            ("close", self._true),
            ("getChat", self._get_chat),
            ("sendMessage", self._send_message),
            ("sendMessageDraft", self._send_message_draft),
            ("editMessageText", self._edit_message_text),
            ("editMessageCaption", self._edit_message_caption),
            ("editMessageReplyMarkup", self._edit_message_reply_markup),
            ("deleteMessage", self._delete_message),
            ("sendChatAction", self._send_chat_action),
            ("sendPhoto", self._send_photo),
            ("sendDocument", self._send_document),
            ("getFile", self._get_file),
            ("setMyCommands", self._set_my_commands),
            ("getMyCommands", self._get_my_commands),
            ("deleteMyCommands", self._delete_my_commands),
            ("answerCallbackQuery", self._answer_callback_query),
            ("getChatMember", self._get_chat_member),
            ("getChatAdministrators", self._get_chat_administrators),
        ):
            self._methods[name.lower()] = (name, handler)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start serving on a free port of 127.0.0.1 and set `url`."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("GET", "/file/bot{token}/{path:.*}", self._handle_file)
        # Cancelling handlers when the client goes away ends abandoned long polls at once.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._stopping = False
        if self.webhook_url:
            self._start_webhook()

    async def stop(self) -> None:
        """Stop serving; pending long polls are answered with no updates.

        Webhook delivery stops too (requests in flight are abandoned, their updates stay
        queued); the webhook stays set, and delivery resumes on `start`.
        """
        self._stopping = True
        self._wake()
        await self._stop_webhook()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- driving the bot

    @property
    def bot_user(self) -> dict[str, Any]:
        """The bot as a User object."""
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }

    def register_chat(
        self,
        chat_id: int,
        *,
        chat_type: str = "private",
        title: str | None = None,
        first_name: str = "Alice",
        username: str | None = "alice",
    ) -> None:
        """Make a chat known to the fake (as if it had written to the bot) without a message."""
        self._ensure_chat(chat_id, chat_type, title, first_name, username)

    def user_message(
        self,
        *,
        chat_id: int,
        text: str | None = None,
        user_id: int | None = None,
        first_name: str = "Alice",
        username: str | None = "alice",
        chat_type: str = "private",
        chat_title: str | None = None,
        language_code: str | None = "en",
        reply_to_message_id: int | None = None,
        entities: list[dict[str, Any]] | None = None,
        is_bot: bool = False,
        **extra_message_fields: Any,
    ) -> dict[str, Any]:
        """Queue a message from a user; returns the Update (no update_id if privacy-withheld)."""
        upgraded = self._chats.get(chat_id)
        if upgraded is not None and upgraded.migrated_to is not None:
            raise ValueError(f"group {chat_id} was upgraded to {upgraded.migrated_to}")
        chat = self._ensure_chat(chat_id, chat_type, chat_title, first_name, username)
        user = self._user_json(chat, user_id, first_name, username, language_code, is_bot=is_bot)
        self._remember(chat, user)
        message: dict[str, Any] = {
            "message_id": chat.take_message_id(),
            "from": user,
            "chat": chat.json(),
            "date": int(time.time()),
        }
        if reply_to_message_id is not None:
            replied = self._any_message_json(chat, reply_to_message_id)
            if replied is not None:
                message["reply_to_message"] = replied
        if text is not None:
            message["text"] = text
            found = entities if entities is not None else _user_text_entities(text)
            if found:
                message["entities"] = found
        message.update(extra_message_fields)
        caption = extra_message_fields.get("caption")
        if isinstance(caption, str) and "caption_entities" not in extra_message_fields:
            found = _user_text_entities(caption)
            if found:
                message["caption_entities"] = found
        chat.user_messages[message["message_id"]] = message
        return self._queue_update("message", message, chat)

    def edited_message(
        self,
        *,
        chat_id: int,
        message_id: int,
        text: str,
        entities: list[dict[str, Any]] | None = None,
        **extra_message_fields: Any,
    ) -> dict[str, Any]:
        """The user edits one of their messages; returns the edited_message Update."""
        chat = self._chats[chat_id]
        original = chat.user_messages.get(message_id)
        if original is None:
            raise KeyError(f"no user message {message_id} in chat {chat_id}")
        message = dict(original)
        message["text"] = text
        message.pop("entities", None)
        found = entities if entities is not None else _user_text_entities(text)
        if found:
            message["entities"] = found
        message["edit_date"] = int(time.time())
        message.update(extra_message_fields)
        chat.user_messages[message_id] = message
        return self._queue_update("edited_message", message, chat)

    def callback_query(
        self,
        *,
        chat_id: int,
        message_id: int,
        data: str,
        user_id: int | None = None,
        first_name: str = "Alice",
        username: str | None = "alice",
        language_code: str | None = "en",
        inaccessible: bool = False,
    ) -> dict[str, Any]:
        """The user presses an inline button under a bot message; returns the Update.

        `data` is sent as given, so tests can forge what a modified client could send. With
        `inaccessible`, the message comes as the Bot API sends one the bot can no longer see
        (an InaccessibleMessage: chat, id and a date of 0), deleted ones included.
        """
        chat = self._chats[chat_id]
        sent = chat.bot_messages.get(message_id)
        if sent is None or (sent.deleted and not inaccessible):
            raise KeyError(f"no live bot message {message_id} in chat {chat_id}")
        user = self._user_json(chat, user_id, first_name, username, language_code)
        self._remember(chat, user)
        query_id = str(next(self._callback_ids) * 1_000_003)
        message: dict[str, Any] = (
            {"chat": chat.json(), "message_id": message_id, "date": 0}
            if inaccessible
            else self._bot_message_json(sent)
        )
        query = {
            "id": query_id,
            "from": user,
            "message": message,
            "chat_instance": str(abs(hash((self.bot_id, chat_id))) % 10**18),
            "data": data,
        }
        self._pending_callbacks[query_id] = query
        return self._queue_update("callback_query", query, chat)

    def delete_message(self, chat_id: int, message_id: int) -> None:
        """The user deletes a message (a bot message, or one of their own)."""
        chat = self._chats[chat_id]
        sent = chat.bot_messages.get(message_id)
        if sent is not None:
            sent.deleted = True
            sent.deleted_by = "user"
        elif message_id in chat.user_messages:
            chat.deleted_user_messages.add(message_id)
        else:
            raise KeyError(f"no message {message_id} in chat {chat_id}")

    def set_admins(
        self, chat_id: int, admin_ids: Iterable[int], *, creator: int | None = None
    ) -> None:
        """Make these users the group's administrators (and `creator` its owner), replacing any
        set before; everyone else seen in the group is a plain member."""
        chat = self._chats[chat_id]
        if chat.type not in ("group", "supergroup", "channel"):
            raise ValueError("only groups and channels have administrators")
        chat.statuses = {user_id: "administrator" for user_id in admin_ids}
        if creator is not None:
            chat.statuses[creator] = "creator"

    def upgrade_group(
        self,
        chat_id: int,
        *,
        new_chat_id: int,
        user_id: int | None = None,
        first_name: str = "Alice",
        username: str | None = "alice",
        language_code: str | None = "en",
        announce: bool = True,
    ) -> list[dict[str, Any]]:
        """A basic group is upgraded to a supergroup with id `new_chat_id` (``-100…``).

        The supergroup keeps the title and members. Every later call naming the old id fails
        with ``400 Bad Request: group chat was upgraded to a supergroup chat`` and
        ``parameters.migrate_to_chat_id``, as the Bot API answers. With `announce`, the service
        messages are queued: ``migrate_to_chat_id`` in the old group, then
        ``migrate_from_chat_id`` in the supergroup, sent by the user who upgraded it. Returns
        the queued updates.
        """
        old = self._chats[chat_id]
        if old.type != "group":
            raise ValueError("only basic groups are upgraded to supergroups")
        if old.migrated_to is not None:
            raise ValueError(f"group {chat_id} was upgraded already")
        if new_chat_id in self._chats or not str(new_chat_id).startswith("-100"):
            raise ValueError("a supergroup needs a new id of the form -100…")
        new = _Chat(
            new_chat_id,
            "supergroup",
            title=old.title,
            members=dict(old.members),
            statuses=dict(old.statuses),
        )
        self._chats[new_chat_id] = new
        old.migrated_to = new_chat_id
        if not announce:
            return []
        user = self._user_json(old, user_id, first_name, username, language_code)
        date = int(time.time())
        moved_to: dict[str, Any] = {
            "message_id": old.take_message_id(),
            "from": user,
            "chat": old.json(),
            "date": date,
            "migrate_to_chat_id": new_chat_id,
        }
        moved_from: dict[str, Any] = {
            "message_id": new.take_message_id(),
            "from": user,
            "chat": new.json(),
            "date": date,
            "migrate_from_chat_id": chat_id,
        }
        old.user_messages[moved_to["message_id"]] = moved_to
        new.user_messages[moved_from["message_id"]] = moved_from
        return [
            self._queue_update("message", moved_to, old),
            self._queue_update("message", moved_from, new),
        ]

    def stop_generation(self, chat_id: int, draft_id: int | None = None) -> dict[str, Any]:
        """The user presses the stop button of the visible draft; returns the queued Update.

        `draft_id` defaults to the visible draft's. The draft must be visible and sent with
        can_stop. The update is ``stopped_message_generation``; the draft disappears unless it
        was sent with keep_on_stop, and later drafts with this id in this chat are ignored.
        """
        visible = self.visible_draft(chat_id)
        if visible is None:
            raise AssertionError(f"no visible draft in chat {chat_id} to stop")
        if draft_id is not None and draft_id != visible.draft_id:
            raise AssertionError(
                f"draft {draft_id} is not visible in chat {chat_id} "
                f"(the visible one is {visible.draft_id})"
            )
        if not visible.can_stop:
            raise AssertionError(
                f"draft {visible.draft_id} in chat {chat_id} has no stop button (no can_stop)"
            )
        if visible.stopped:
            raise AssertionError(f"draft {visible.draft_id} in chat {chat_id} is stopped already")
        chat = self._chats[chat_id]
        visible.stopped = True
        chat.stopped_drafts.add(visible.draft_id)
        if not visible.keep_on_stop:
            chat.draft = None
        stopped: dict[str, Any] = {"chat": chat.json(), "draft_id": visible.draft_id}
        if visible.message_thread_id is not None:
            stopped["message_thread_id"] = visible.message_thread_id
        return self._queue_update("stopped_message_generation", stopped, chat)

    def block_bot(self, chat_id: int, blocked: bool = True) -> None:
        """The user blocks (or unblocks) the bot: every call to the chat gets 403."""
        self._chats[chat_id].blocked_bot = blocked

    def add_file(self, data: bytes, *, file_path: str = "documents/file") -> str:
        """Store bytes downloadable through getFile; returns their file_id."""
        number = next(self._file_ids)
        file_id = f"FAKEFILE{number:06d}"
        self._files[file_id] = (f"{file_path}_{number}", data)
        return file_id

    # ---------------------------------------------------------------- observing

    def calls_to(self, method: str, chat_id: int | None = None) -> list[Call]:
        """Calls of one method (any letter case), optionally only those to one chat."""
        wanted = method.lower()
        return [
            call
            for call in self.calls
            if call.method.lower() == wanted and (chat_id is None or call.chat_id == chat_id)
        ]

    def messages(self, chat_id: int) -> list[SentMessage]:
        """Every message the bot sent to the chat, deleted ones included, oldest first."""
        chat = self._chats.get(chat_id)
        if chat is None:
            return []
        return [chat.bot_messages[key] for key in sorted(chat.bot_messages)]

    def live_messages(self, chat_id: int) -> list[SentMessage]:
        """The bot's messages in the chat that are not deleted, oldest first."""
        return [message for message in self.messages(chat_id) if not message.deleted]

    def drafts(self, chat_id: int) -> list[Draft]:
        """Every sendMessageDraft call the fake accepted for the chat, ignored ones included."""
        chat = self._chats.get(chat_id)
        return list(chat.drafts) if chat is not None else []

    def visible_draft(self, chat_id: int) -> Draft | None:
        """The draft the user sees in the chat now (its latest update), or None.

        A draft is gone once the bot sent a message to the chat after it, after
        `DRAFT_LIFETIME` seconds of `clock` without an update, or when the user stopped it
        (unless it was sent with keep_on_stop).
        """
        chat = self._chats.get(chat_id)
        draft = chat.draft if chat is not None else None
        if draft is None or self.clock() - draft.at >= DRAFT_LIFETIME:
            return None
        return draft

    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed by the bot."""
        return list(self._updates)

    def commands_for(
        self,
        scope: dict[str, Any] | None = None,
        language_code: str = "",
    ) -> list[dict[str, str]]:
        """Commands stored by setMyCommands for a scope (default scope if None) and language."""
        key = self._scope_key(scope or {"type": "default"})
        return list(self.my_commands.get((key, language_code), []))

    def dump_calls(self, last: int = 25) -> str:
        """A readable summary of the most recent calls, for assertion messages."""
        lines = []
        for call in self.calls[-last:]:
            params = {
                key: value
                for key, value in call.params.items()
                if not isinstance(value, UploadedFile)
            }
            shown = json.dumps(params, ensure_ascii=False, default=str)
            if len(shown) > 300:
                shown = shown[:300] + "…"
            outcome = "ok" if call.ok else (call.description or "no answer")
            lines.append(f"  {call.at:.3f} {call.method} {shown} -> {call.status} {outcome}")
        return "\n".join(lines) if lines else "  (no calls)"

    async def wait_for(
        self,
        predicate: Callable[[FakeTelegram], bool],
        timeout: float = 10,  # noqa: ASYNC109 - the tests' API names it so
    ) -> None:
        """Poll until `predicate(self)` holds; AssertionError with recent calls on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            if loop.time() >= deadline:
                raise AssertionError(
                    f"condition not met within {timeout} s; recent calls:\n{self.dump_calls()}"
                )
            await asyncio.sleep(0.01)

    # ---------------------------------------------------------------- webhook helpers

    def webhook_in_flight(self) -> list[int]:
        """The update_ids whose webhook request is waiting for an answer now."""
        return sorted(self._webhook_in_flight)

    def webhook_attempts(self, update_id: int) -> list[WebhookDelivery]:
        """Every webhook delivery attempt of one update, oldest first."""
        return [entry for entry in self.webhook_deliveries if entry.update_id == update_id]

    async def wait_webhook_idle(
        self,
        timeout: float = 10,  # noqa: ASYNC109 - the tests' API names it so
    ) -> None:
        """Wait until no update is queued and no webhook request is in flight.

        Updates that `allowed_updates` excludes do not count (Telegram never creates them).
        AssertionError with the recent deliveries if that does not happen within `timeout`
        seconds, e.g. because the bot keeps failing an update or no webhook is set.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._drop_unwanted()
            if not self._updates and not self._webhook_in_flight:
                return
            if loop.time() >= deadline:
                pending = [update["update_id"] for update in self._updates]
                raise AssertionError(
                    f"webhook not idle within {timeout} s (url {self.webhook_url!r}); queued "
                    f"{pending}, in flight {self.webhook_in_flight()}; recent deliveries:\n"
                    f"{self.dump_webhook_deliveries()}"
                )
            await asyncio.sleep(0.01)

    def redeliver(self, update_id: int) -> dict[str, Any]:
        """Queue an update the bot already acknowledged once more; returns it.

        Telegram does this when it did not see the bot's answer in time. The update keeps its
        update_id and goes back into the queue in update_id order, so it is delivered before
        the later updates of its chat that are still queued. Meant for webhook mode; with
        getUpdates it comes again until the bot's next offset confirms it.
        """
        if any(update["update_id"] == update_id for update in self._updates):
            raise ValueError(f"update {update_id} is still queued")
        update = self._acknowledged.get(update_id)
        if update is None:
            raise KeyError(f"update {update_id} was never acknowledged")
        index = next(
            (i for i, queued in enumerate(self._updates) if queued["update_id"] > update_id),
            len(self._updates),
        )
        self._updates.insert(index, update)
        self._webhook_failures.pop(update_id, None)
        self._webhook_retry_at.pop(update_id, None)
        self._wake()
        return update

    def dump_webhook_deliveries(self, last: int = 25) -> str:
        """A readable summary of the most recent webhook deliveries, for assertion messages."""
        lines = []
        for entry in self.webhook_deliveries[-last:]:
            if not entry.done:
                outcome = "in flight"
            else:
                outcome = f"{entry.status} " if entry.status is not None else ""
                outcome += entry.error or "ok"
            lines.append(
                f"  {entry.at:.3f} update {entry.update_id} -> {outcome} ({entry.elapsed:.3f} s)"
            )
        return "\n".join(lines) if lines else "  (no deliveries)"

    # ---------------------------------------------------------------- injecting failures

    def fail_next(
        self,
        method: str,
        *,
        status: int,
        description: str,
        retry_after: int | None = None,
        times: int = 1,
        chat_id: int | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` (to `chat_id`, if given) with this error."""
        self._injections.append(
            _Injection(
                method.lower(),
                times,
                chat_id=chat_id,
                status=status,
                description=description,
                retry_after=retry_after,
            )
        )

    def disconnect_next(
        self, method: str, times: int = 1, *, after_processing: bool = False
    ) -> None:
        """Drop the connection of the next `times` calls of `method` without answering.

        With `after_processing` the call takes effect first (the message is sent, say) and only
        the answer is lost, as when a network fails on the way back.
        """
        self._injections.append(
            _Injection(method.lower(), times, after_processing=after_processing)
        )

    def answer_next_raw(
        self,
        method: str,
        body: str | bytes,
        *,
        status: int = 200,
        times: int = 1,
        chat_id: int | None = None,
        content_type: str = "application/json",
        after_processing: bool = False,
    ) -> None:
        """Answer the next `times` calls of `method` (to `chat_id`, if given) with `body` as is.

        The connection is closed after it. For what Telegram itself never sends but a broken
        proxy or server may: JSON cut short (``{"ok": true, "result": {"message_id"``), or
        HTTP 200 with ``"ok": false``. With `after_processing` the call takes effect first.
        """
        raw = body.encode("utf-8") if isinstance(body, str) else body
        self._injections.append(
            _Injection(
                method.lower(),
                times,
                chat_id=chat_id,
                status=status,
                after_processing=after_processing,
                raw=raw,
                content_type=content_type,
            )
        )

    # ---------------------------------------------------------------- HTTP plumbing

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            body = {"ok": False, "error_code": 401, "description": "Unauthorized"}
            return self._json_response(401, body)
        path = request.match_info["path"]
        for file_path, data in self._files.values():
            if file_path == path:
                return web.Response(body=data, content_type="application/octet-stream")
        body = {"ok": False, "error_code": 404, "description": "Not Found"}
        return self._json_response(404, body)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at = self.clock()
        params, files = await self._read_params(request)
        raw_method = request.match_info["method"]
        known = self._methods.get(raw_method.lower())
        if raw_method.lower() == DRAFT_METHOD and not self.supports_drafts:
            known = None
        call = Call(known[0] if known else raw_method, params, at)
        self.calls.append(call)
        ctx = _Context(request, params, files, call)
        try:
            return await self._dispatch(ctx, known)
        except asyncio.CancelledError:
            if call.status == 0:
                call.status = 499  # the client closed the connection first
            raise

    async def _dispatch(
        self, ctx: _Context, known: tuple[str, Handler] | None
    ) -> web.StreamResponse:
        call = ctx.call
        if ctx.request.match_info["token"] != self.token:
            return self._error(call, _ApiError(401, "Unauthorized"))
        if known is None:
            return self._error(call, _ApiError(404, "Not Found"))
        method = known[0].lower()
        chat_id = call.chat_id

        injection = self._take_injection(method, chat_id)
        if injection is not None and injection.raw is not None:
            if not injection.after_processing:
                return self._raw(ctx, injection)
        elif injection is not None and injection.status == 0 and not injection.after_processing:
            return self._hang_up(ctx)
        elif injection is not None and injection.status:
            parameters = None
            if injection.retry_after is not None:
                parameters = {"retry_after": injection.retry_after}
                if chat_id is not None and method == DRAFT_METHOD:
                    self.flood.block(chat_id, injection.retry_after, draft=True)
                elif chat_id is not None and (
                    method in FLOOD_LIMITED_METHODS or self.flood.block_all_methods
                ):
                    self.flood.block(chat_id, injection.retry_after)
            return self._error(
                call, _ApiError(injection.status, injection.description, parameters)
            )

        chat = self._chats.get(chat_id) if chat_id is not None else None
        if chat is not None and chat.migrated_to is not None:
            parameters = {"migrate_to_chat_id": chat.migrated_to}
            return self._error(call, _ApiError(400, UPGRADED, parameters))
        if chat is not None and chat.blocked_bot:
            reason = (
                "bot was blocked by the user"
                if chat.type == "private"
                else "bot was kicked from the group chat"
            )
            return self._error(call, _ApiError(403, f"Forbidden: {reason}"))
        if chat is not None:
            retry_after = self.flood.admit(
                chat.id, limited=method in FLOOD_LIMITED_METHODS, draft=method == DRAFT_METHOD
            )
            if retry_after is not None:
                return self._error(
                    call,
                    _ApiError(
                        429,
                        f"Too Many Requests: retry after {retry_after}",
                        {"retry_after": retry_after},
                    ),
                )

        try:
            result = await known[1](ctx)
        except _ApiError as error:
            response = self._error(call, error)
        else:
            response = self._success(call, result)
        if injection is not None and injection.after_processing:
            return self._raw(ctx, injection) if injection.raw is not None else self._hang_up(ctx)
        return response

    def _take_injection(self, method: str, chat_id: int | None) -> _Injection | None:
        for injection in self._injections:
            if injection.method != method:
                continue
            if injection.chat_id is not None and injection.chat_id != chat_id:
                continue
            injection.remaining -= 1
            if injection.remaining <= 0:
                self._injections.remove(injection)
            return injection
        return None

    def _hang_up(self, ctx: _Context) -> web.StreamResponse:
        ctx.call.status = -1
        ctx.call.response = {}
        transport = ctx.request.transport
        if transport is not None:
            transport.abort()
        return web.Response()

    def _raw(self, ctx: _Context, injection: _Injection) -> web.StreamResponse:
        raw = injection.raw or b""
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        ctx.call.status = injection.status
        ctx.call.response = parsed if isinstance(parsed, dict) else {}
        response = web.Response(
            status=injection.status, body=raw, content_type=injection.content_type
        )
        response.force_close()
        return response

    def _success(self, call: Call, result: Any) -> web.StreamResponse:
        body = {"ok": True, "result": result}
        call.status, call.response = 200, body
        return self._json_response(200, body)

    def _error(self, call: Call, error: _ApiError) -> web.StreamResponse:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": error.status,
            "description": error.description,
        }
        if error.parameters:
            body["parameters"] = error.parameters
        call.status, call.response = error.status, body
        return self._json_response(error.status, body)

    @staticmethod
    def _json_response(status: int, body: dict[str, Any]) -> web.Response:
        return web.Response(
            status=status,
            text=json.dumps(body, ensure_ascii=False),
            content_type="application/json",
        )

    async def _read_params(
        self, request: web.Request
    ) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
        raw: dict[str, Any] = dict(request.query)
        files: dict[str, UploadedFile] = {}
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                with contextlib.suppress(ValueError):
                    body = await request.json()
                    if isinstance(body, dict):
                        raw.update(
                            (key, _json_scalar_as_text(value))
                            for key, value in body.items()
                            if value is not None
                        )
            else:
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        upload = UploadedFile(
                            key, value.filename, value.content_type, value.file.read()
                        )
                        files[key] = upload
                        raw[key] = upload
                    else:
                        raw[key] = value
        return {key: _decode_param(key, value) for key, value in raw.items()}, files

    # ---------------------------------------------------------------- shared helpers

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)
        self._webhook_wakeup.set()

    def _ensure_chat(
        self,
        chat_id: int,
        chat_type: str,
        title: str | None,
        first_name: str,
        username: str | None,
    ) -> _Chat:
        if chat_type not in ("private", "group", "supergroup", "channel"):
            raise ValueError(f"unknown chat type {chat_type!r}")
        if (chat_type == "private") != (chat_id > 0):
            raise ValueError("private chats have positive ids, groups negative ones")
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = _Chat(chat_id, chat_type)
            self._chats[chat_id] = chat
        if chat_type == "private":
            chat.first_name, chat.username = first_name, username
        else:
            chat.title = title or chat.title or "Test group"
        return chat

    @staticmethod
    def _user_json(
        chat: _Chat,
        user_id: int | None,
        first_name: str,
        username: str | None,
        language_code: str | None,
        *,
        is_bot: bool = False,
    ) -> dict[str, Any]:
        if user_id is None:
            user_id = chat.id if chat.type == "private" else 1001
        user: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        return user

    def _queue_update(self, kind: str, payload: dict[str, Any], chat: _Chat) -> dict[str, Any]:
        update: dict[str, Any] = {kind: payload}
        if kind in ("message", "edited_message") and not self._privacy_allows(payload, chat):
            self.withheld.append(update)
            return update
        update = {"update_id": next(self._update_ids), kind: payload}
        # The Bot API server's webhook queues: a chat's messages in order, a user's callback
        # queries in order (apart from the messages), different queues in parallel.
        if kind == "callback_query":
            self._queue_keys[update["update_id"]] = ("user", payload["from"]["id"])
        else:
            self._queue_keys[update["update_id"]] = ("chat", chat.id)
        self._updates.append(update)
        self._wake()
        return update

    def _privacy_allows(self, message: dict[str, Any], chat: _Chat) -> bool:
        if not self.privacy_mode or chat.type in ("private", "channel"):
            return True
        if SERVICE_MESSAGE_FIELDS.intersection(message):
            return True
        replied = message.get("reply_to_message")
        if replied and replied.get("from", {}).get("id") == self.bot_id:
            return True
        text = message.get("text") or message.get("caption") or ""
        if text.startswith("/"):
            first = text.split(maxsplit=1)[0]
            target = first.partition("@")[2]
            return not target or target.lower() == self.bot_username.lower()
        return f"@{self.bot_username.lower()}" in text.lower()

    def _any_message_json(self, chat: _Chat, message_id: int) -> dict[str, Any] | None:
        sent = chat.bot_messages.get(message_id)
        if sent is not None:
            return None if sent.deleted else self._bot_message_json(sent, with_reply=False)
        if message_id in chat.user_messages:
            if message_id in chat.deleted_user_messages:
                return None
            message = dict(chat.user_messages[message_id])
            message.pop("reply_to_message", None)
            return message
        raise KeyError(f"no message {message_id} in chat {chat.id}")

    def _message_exists(self, chat: _Chat, message_id: int) -> bool:
        sent = chat.bot_messages.get(message_id)
        if sent is not None:
            return not sent.deleted
        return message_id in chat.user_messages and message_id not in chat.deleted_user_messages

    def _bot_message_json(self, sent: SentMessage, *, with_reply: bool = True) -> dict[str, Any]:
        chat = self._chats[sent.chat_id]
        data: dict[str, Any] = {
            "message_id": sent.message_id,
            "from": self.bot_user,
            "chat": chat.json(),
            "date": sent.date,
        }
        if sent.edit_date is not None:
            data["edit_date"] = sent.edit_date
        if with_reply and sent.reply_to_message_id is not None:
            replied = self._any_message_json(chat, sent.reply_to_message_id)
            if replied is not None:
                data["reply_to_message"] = replied
        if sent.kind == "text":
            data["text"] = sent.text
            if sent.entities:
                data["entities"] = sent.entities
            if sent.link_preview_options:
                data["link_preview_options"] = sent.link_preview_options
        else:
            size = len(sent.file.data) if sent.file else 0
            unique = f"U{sent.file_id}"
            if sent.kind == "photo":
                data["photo"] = [
                    {
                        "file_id": sent.file_id,
                        "file_unique_id": unique,
                        "width": 90,
                        "height": 90,
                        "file_size": size,
                    }
                ]
            else:
                document: dict[str, Any] = {
                    "file_id": sent.file_id,
                    "file_unique_id": unique,
                    "file_size": size,
                }
                if sent.file and sent.file.filename:
                    document["file_name"] = sent.file.filename
                if sent.file and sent.file.content_type:
                    document["mime_type"] = sent.file.content_type
                data["document"] = document
            if sent.text:
                data["caption"] = sent.text
                if sent.entities:
                    data["caption_entities"] = sent.entities
        if sent.reply_markup:
            data["reply_markup"] = sent.reply_markup
        return data

    def _text_length(self, text: str) -> int:
        return utf16_len(text) if self.length_unit == "utf16" else len(text)

    def _chat_of(self, ctx: _Context) -> _Chat:
        value = ctx.params.get("chat_id")
        if value is None or value == "":
            raise _bad("chat_id is empty")
        chat = self._chats.get(value) if isinstance(value, int) else None
        if chat is None:
            raise _bad("chat not found")
        return chat

    @staticmethod
    def _json_param(ctx: _Context, name: str, what: str) -> Any:
        value = ctx.params.get(name)
        if isinstance(value, str):
            if value == "":
                return None
            raise _bad(f"can't parse {what} JSON object")
        return value

    def _reply_markup(self, ctx: _Context) -> dict[str, Any] | None:
        markup = self._json_param(ctx, "reply_markup", "reply keyboard markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise _bad("object expected as reply markup")
        rows = markup.get("inline_keyboard")
        if rows is None:
            # Reply keyboards and their removal are accepted but not part of the message.
            return None
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise _bad(
                'can\'t parse inline keyboard button: field "inline_keyboard" must be '
                "an Array of Arrays"
            )
        actions = (
            "url",
            "callback_data",
            "web_app",
            "login_url",
            "switch_inline_query",
            "switch_inline_query_current_chat",
            "switch_inline_query_chosen_chat",
            "copy_text",
            "callback_game",
            "pay",
        )
        for row in rows:
            for button in row:
                if not isinstance(button, dict) or not isinstance(button.get("text"), str):
                    raise _bad(
                        'can\'t parse inline keyboard button: Field "text" must be of type String'
                    )
                if not any(key in button for key in actions):
                    raise _bad("text buttons are unallowed in the inline keyboard")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode("utf-8")) <= 64:
                    raise _bad("BUTTON_DATA_INVALID")
        return {"inline_keyboard": rows}

    def _format(
        self, text: str, parse_mode: Any, entities: Any, *, allow_empty: bool
    ) -> tuple[str, list[dict[str, Any]]]:
        if len(text.encode("utf-8", "surrogatepass")) > 1 << 15:
            raise _bad("text is too long")
        mode = str(parse_mode or "").lower()
        parsed_entities: list[dict[str, Any]] = []
        if text and mode and mode != "none":
            if mode == "html":
                try:
                    text, parsed_entities = parse_html(text)
                except EntityParseError as error:
                    raise _bad(f"can't parse entities: {error}") from None
            elif mode in ("markdown", "markdownv2"):
                raise _bad(f"the fake Telegram server does not emulate parse_mode {parse_mode}")
            else:
                raise _bad("unsupported parse_mode")
        elif isinstance(entities, list):
            parsed_entities = _explicit_entities(entities)
        try:
            return finalize_text(text, parsed_entities, allow_empty=allow_empty)
        except ValueError as error:
            raise _bad(_api_message(str(error))) from None

    def _reply_target(self, ctx: _Context, chat: _Chat) -> int | None:
        reply = self._json_param(ctx, "reply_parameters", "reply parameters")
        message_id: Any = ctx.params.get("reply_to_message_id")
        allow_without = bool(ctx.params.get("allow_sending_without_reply"))
        if isinstance(reply, dict):
            message_id = reply.get("message_id")
            allow_without = bool(reply.get("allow_sending_without_reply", allow_without))
        if not isinstance(message_id, int) or message_id <= 0:
            return None
        if self._message_exists(chat, message_id):
            return message_id
        if allow_without:
            return None
        raise _bad("message to be replied not found")

    def _link_preview(self, ctx: _Context) -> dict[str, Any] | None:
        options = self._json_param(ctx, "link_preview_options", "link preview options")
        if options is None and ctx.params.get("disable_web_page_preview"):
            return {"is_disabled": True}
        if options is not None and not isinstance(options, dict):
            raise _bad("object expected as link preview options")
        return options

    def _new_message(
        self,
        ctx: _Context,
        chat: _Chat,
        *,
        kind: str,
        visible: str,
        raw: str,
        entities: list[dict[str, Any]],
        reply_to: int | None,
        markup: dict[str, Any] | None,
    ) -> SentMessage:
        thread = ctx.params.get("message_thread_id")
        sent = SentMessage(
            message_id=chat.take_message_id(),
            chat_id=chat.id,
            kind=kind,
            text=visible,
            html=raw,
            parse_mode=ctx.params.get("parse_mode") or None,
            entities=entities,
            date=int(time.time()),
            reply_to_message_id=reply_to,
            reply_markup=markup,
            message_thread_id=thread if isinstance(thread, int) else None,
            disable_notification=bool(ctx.params.get("disable_notification")),
            history=[visible],
            html_history=[raw],
        )
        chat.bot_messages[sent.message_id] = sent
        chat.draft = None  # any message from the bot ends the draft shown in the chat
        return sent

    def _message_to_edit(self, ctx: _Context, chat: _Chat) -> SentMessage:
        message_id = ctx.params.get("message_id")
        if not isinstance(message_id, int) or message_id <= 0:
            raise _bad("message identifier is not specified")
        sent = chat.bot_messages.get(message_id)
        if sent is None or sent.deleted:
            if self._message_exists(chat, message_id):
                raise _bad("message can't be edited")
            raise _bad("message to edit not found")
        return sent

    @staticmethod
    def _scope_key(scope: dict[str, Any]) -> str:
        normalized = {"type": scope.get("type", "default")}
        for key in ("chat_id", "user_id"):
            if key in scope:
                value = scope[key]
                with contextlib.suppress(TypeError, ValueError):
                    value = int(value)
                normalized[key] = value
        return json.dumps(normalized, sort_keys=True)

    def _command_scope(self, ctx: _Context) -> str:
        scope = ctx.params.get("scope")
        if scope is None or scope == "":
            return self._scope_key({"type": "default"})
        if isinstance(scope, str):
            raise _bad("can't parse BotCommandScope JSON object")
        if not isinstance(scope, dict) or not isinstance(scope.get("type"), str):
            raise _bad('can\'t parse BotCommandScope: Field "type" must be of type String')
        kind = scope["type"]
        simple = ("default", "all_private_chats", "all_group_chats", "all_chat_administrators")
        if kind not in simple and kind not in ("chat", "chat_administrators", "chat_member"):
            raise _bad("can't parse BotCommandScope: Unsupported type specified")
        if kind not in simple:
            chat_id = scope.get("chat_id")
            if chat_id in (None, ""):
                raise _bad("can't parse BotCommandScope: Empty chat_id specified")
            if not isinstance(chat_id, int) and not str(chat_id).lstrip("-").isdigit():
                raise _bad("chat not found")
            if int(chat_id) not in self._chats:
                raise _bad("chat not found")
        return self._scope_key(scope)

    # ---------------------------------------------------------------- methods

    async def _true(self, ctx: _Context) -> Any:
        return True

    async def _get_me(self, ctx: _Context) -> Any:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_chat(self, ctx: _Context) -> Any:
        chat = self._chat_of(ctx)
        return {**chat.json(), "accent_color_id": 0, "max_reaction_count": 11}

    async def _set_webhook(self, ctx: _Context) -> Any:
        params = ctx.params
        raw_url = params.get("url")
        url = raw_url.strip() if isinstance(raw_url, str) else ""
        if not url:
            return await self._delete_webhook(ctx)  # an empty url removes the webhook
        url = _checked_webhook_url(url)
        raw_secret = params.get("secret_token")
        secret = raw_secret if isinstance(raw_secret, str) else ""
        if len(secret) > 256:
            raise _bad("secret token is too long")
        if not _WEBHOOK_SECRET.fullmatch(secret):
            raise _bad("secret token contains unallowed characters")
        max_connections = _clamped_int(
            params.get("max_connections"), WEBHOOK_DEFAULT_MAX_CONNECTIONS, 1, 100
        )
        raw_ip = params.get("ip_address")
        ip_address = raw_ip.strip() if isinstance(raw_ip, str) else ""
        certificate = params.get("certificate")
        if isinstance(certificate, str) and certificate.startswith("attach://"):
            certificate = ctx.files.get(certificate.removeprefix("attach://"))
        has_certificate = isinstance(certificate, UploadedFile)
        drop = bool(params.get("drop_pending_updates"))
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = [str(kind) for kind in allowed]

        unchanged = (url, secret, max_connections, ip_address) == (
            self.webhook_url,
            self.webhook_secret_token,
            self.webhook_max_connections,
            self.webhook_ip_address,
        )
        if unchanged and not has_certificate and not self.webhook_has_certificate and not drop:
            self._wake()  # allowed_updates may have changed
            return True  # "Webhook is already set": delivery goes on as it was

        self.webhook_url = url  # first, so that a waiting getUpdates sees the conflict
        self._wake()
        await self._stop_webhook()
        if drop:
            self._drop_pending()
        self.webhook_url = url
        self.webhook_secret_token = secret
        self.webhook_max_connections = max_connections
        self.webhook_ip_address = ip_address
        self.webhook_has_certificate = has_certificate
        self.webhook_last_error_date, self.webhook_last_error_message = 0, ""
        if self._runner is not None and not self._stopping:
            self._start_webhook()
        return True

    async def _delete_webhook(self, ctx: _Context) -> Any:
        await self._stop_webhook()
        if ctx.params.get("drop_pending_updates"):
            self._drop_pending()
        self.webhook_url = ""
        self.webhook_secret_token = ""
        self.webhook_max_connections = 0
        self.webhook_ip_address = ""
        self.webhook_has_certificate = False
        self.webhook_last_error_date, self.webhook_last_error_message = 0, ""
        return True

    async def _get_webhook_info(self, ctx: _Context) -> Any:
        self._drop_unwanted()
        info: dict[str, Any] = {
            "url": self.webhook_url,
            "has_custom_certificate": self.webhook_has_certificate,
            "pending_update_count": len(self._updates),
        }
        if self.webhook_last_error_date:
            info["last_error_date"] = self.webhook_last_error_date
            info["last_error_message"] = self.webhook_last_error_message
        if self.webhook_url:
            info["max_connections"] = self.webhook_max_connections
            info["ip_address"] = self.webhook_ip_address or _webhook_ip(self.webhook_url)
        if self._allowed_updates:
            info["allowed_updates"] = list(self._allowed_updates)
        return info

    async def _get_updates(self, ctx: _Context) -> Any:
        if self.webhook_url:
            raise _ApiError(409, CONFLICT_WEBHOOK)
        params = ctx.params
        offset = _int_param(params, "offset", 0)
        limit = min(max(_int_param(params, "limit", 100), 1), 100)
        timeout = max(_int_param(params, "timeout", 0), 0)
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self._allowed_updates = [str(kind) for kind in allowed]
        self._confirm(offset)

        # A newer getUpdates terminates the one still waiting, as Telegram does.
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ready = self._deliverable(limit)
            if ready or self._stopping:
                now = self.clock()
                for update in ready:
                    self.handed_out.setdefault(update["update_id"], now)
                return ready
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, remaining)
            finally:
                self._waiters.discard(waiter)
            if self.webhook_url:
                raise _ApiError(409, CONFLICT_SET_WEBHOOK)
            if generation != self._poll_generation:
                raise _ApiError(409, CONFLICT_GET_UPDATES)

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            while self._updates and self._updates[0]["update_id"] < offset:
                self._acknowledge(self._updates.popleft())
        elif offset < 0:
            while len(self._updates) > -offset:
                self._acknowledge(self._updates.popleft())

    def _wanted(self, update: dict[str, Any]) -> bool:
        kind = next(key for key in update if key != "update_id")
        if self._allowed_updates:
            return kind in self._allowed_updates
        return kind not in DEFAULT_EXCLUDED_UPDATES

    def _drop_unwanted(self) -> None:
        # Telegram never creates updates of types the bot did not subscribe to.
        for update in [update for update in self._updates if not self._wanted(update)]:
            if update["update_id"] not in self._webhook_in_flight:
                self._updates.remove(update)

    def _deliverable(self, limit: int) -> list[dict[str, Any]]:
        self._drop_unwanted()
        return list(itertools.islice(self._updates, limit))

    def _acknowledge(self, update: dict[str, Any]) -> None:
        update_id = update["update_id"]
        self._acknowledged[update_id] = update
        self._webhook_failures.pop(update_id, None)
        self._webhook_retry_at.pop(update_id, None)

    def _drop_pending(self) -> None:
        self._updates.clear()
        self._webhook_failures.clear()
        self._webhook_retry_at.clear()

    # ---------------------------------------------------------------- webhook delivery

    def _start_webhook(self) -> None:
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_wakeup = asyncio.Event()  # bound to the event loop running now
            self._webhook_wakeup.set()
            self._webhook_task = asyncio.get_running_loop().create_task(self._webhook_loop())

    async def _stop_webhook(self) -> None:
        """Stop delivering: requests in flight are abandoned, their updates stay queued."""
        task, self._webhook_task = self._webhook_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        self._webhook_failures.clear()
        self._webhook_retry_at.clear()

    async def _webhook_loop(self) -> None:
        loop = asyncio.get_running_loop()
        session = aiohttp.ClientSession()
        try:
            while True:
                self._webhook_wakeup.clear()
                wake_at = self._start_deliveries(session)
                delay = None if wake_at is None else max(wake_at - loop.time(), 0.0)
                # Not asyncio.wait_for: on 3.11 it swallows a cancel that comes just as the
                # event is set (setWebhook wakes and then cancels this task).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._webhook_wakeup.wait()
        finally:
            tasks = list(self._webhook_in_flight.values())
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            self._webhook_in_flight.clear()
            await session.close()

    def _start_deliveries(self, session: aiohttp.ClientSession) -> float | None:
        """Send what may go now; the event loop time of the next retry that is due, if any."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._drop_unwanted()
        blocked = {self._queue_key(update_id) for update_id in self._webhook_in_flight}
        wake_at: float | None = None
        for update in list(self._updates):
            update_id = update["update_id"]
            key = self._queue_key(update_id)
            if key in blocked:
                continue  # an earlier update of this queue is in flight or waits for a retry
            blocked.add(key)
            retry_at = self._webhook_retry_at.get(update_id, 0.0)
            if retry_at > now:
                wake_at = retry_at if wake_at is None else min(wake_at, retry_at)
                continue
            if len(self._webhook_in_flight) >= self.webhook_max_connections:
                break  # a request that ends wakes the loop
            self._webhook_in_flight[update_id] = loop.create_task(self._deliver(session, update))
        return wake_at

    def _queue_key(self, update_id: int) -> tuple[str, int]:
        return self._queue_keys.get(update_id, ("update", update_id))

    async def _deliver(self, session: aiohttp.ClientSession, update: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        update_id = update["update_id"]
        entry = WebhookDelivery(update_id, self.webhook_url, self.clock())
        self.webhook_deliveries.append(entry)
        headers = {"Content-Type": "application/json"}
        if self.webhook_secret_token:
            headers[WEBHOOK_SECRET_HEADER] = self.webhook_secret_token
        body = json.dumps(update, ensure_ascii=False).encode("utf-8")
        started = loop.time()
        retry_after = 0
        try:
            async with session.post(
                entry.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.webhook_timeout),
                allow_redirects=False,
            ) as response:
                entry.status = response.status
                entry.response_body = await response.read()
                if not 200 <= response.status <= 299:
                    entry.error = (
                        f"Wrong response from the webhook: {response.status} {response.reason}"
                    )
                    retry_after = _retry_after(response.headers.get("Retry-After"))
        except asyncio.CancelledError:
            entry.error = "canceled: the webhook was deleted or changed"
            raise
        except aiohttp.ConnectionTimeoutError:
            entry.error = "Connection timed out"
        except TimeoutError:
            entry.error = "Read timeout expired"
        except aiohttp.ClientConnectorError as error:
            entry.error = _connect_error(error)
        except (aiohttp.ClientError, OSError):
            entry.error = "Webhook connection closed"
        finally:
            entry.elapsed = loop.time() - started
            entry.done = True
            self._webhook_in_flight.pop(update_id, None)
            self._webhook_wakeup.set()
        if entry.error is None:
            with contextlib.suppress(ValueError):
                self._updates.remove(update)
            self._acknowledge(update)
            return
        failures = self._webhook_failures.get(update_id, 0) + 1
        self._webhook_failures[update_id] = failures
        if retry_after > 0:
            delay = float(retry_after)
        else:
            cap = max(self.webhook_max_retry_delay, self.webhook_retry_delay)
            delay = min(self.webhook_retry_delay * 2 ** min(failures - 1, 30), cap)
        self._webhook_retry_at[update_id] = loop.time() + delay
        self.webhook_last_error_date = int(time.time())
        self.webhook_last_error_message = entry.error

    async def _send_message(self, ctx: _Context) -> Any:
        markup = self._reply_markup(ctx)
        preview = self._link_preview(ctx)
        text = ctx.params.get("text")
        if not isinstance(text, str) or text == "":
            raise _bad("message text is empty")
        visible, entities = self._format(
            text, ctx.params.get("parse_mode"), ctx.params.get("entities"), allow_empty=False
        )
        chat = self._chat_of(ctx)
        reply_to = self._reply_target(ctx, chat)
        if self._text_length(visible) > MAX_TEXT_LENGTH:
            raise _bad("message is too long")
        sent = self._new_message(
            ctx,
            chat,
            kind="text",
            visible=visible,
            raw=text,
            entities=entities,
            reply_to=reply_to,
            markup=markup,
        )
        sent.link_preview_options = preview
        return self._bot_message_json(sent)

    async def _send_message_draft(self, ctx: _Context) -> Any:
        text = ctx.params.get("text")
        text = text if isinstance(text, str) else ""
        parse_mode = ctx.params.get("parse_mode")
        visible, entities = self._format(
            text, parse_mode, ctx.params.get("entities"), allow_empty=True
        )
        chat = self._chat_of(ctx)
        if chat.type != "private":
            raise _ApiError(400, DRAFT_PEER_INVALID)
        draft_id = ctx.params.get("draft_id")
        if not isinstance(draft_id, int) or isinstance(draft_id, bool) or draft_id == 0:
            raise _ApiError(400, DRAFT_ID_INVALID)
        if self._text_length(visible) > MAX_TEXT_LENGTH:
            raise _bad("message is too long")
        thread = ctx.params.get("message_thread_id")
        draft = Draft(
            chat_id=chat.id,
            draft_id=draft_id,
            text=visible,
            entities=entities,
            can_stop=bool(ctx.params.get("can_stop")),
            keep_on_stop=bool(ctx.params.get("keep_on_stop")),
            at=self.clock(),
            html=text,
            parse_mode=parse_mode or None,
            message_thread_id=thread if isinstance(thread, int) else None,
            ignored=draft_id in chat.stopped_drafts,
        )
        chat.drafts.append(draft)
        if not draft.ignored:
            chat.draft = draft  # same id: the text is animated; another id: replaced
        return True

    async def _edit_message_text(self, ctx: _Context) -> Any:
        markup = self._reply_markup(ctx)
        preview = self._link_preview(ctx)
        text = ctx.params.get("text")
        if not isinstance(text, str) or text == "":
            raise _bad("message text is empty")
        visible, entities = self._format(
            text, ctx.params.get("parse_mode"), ctx.params.get("entities"), allow_empty=False
        )
        chat = self._chat_of(ctx)
        sent = self._message_to_edit(ctx, chat)
        if sent.kind != "text":
            raise _bad("there is no text in the message to edit")
        if self._text_length(visible) > MAX_TEXT_LENGTH:
            raise _bad("message is too long")
        if (visible, entities, markup) == (sent.text, sent.entities, sent.reply_markup):
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        sent.text, sent.html, sent.entities, sent.reply_markup = visible, text, entities, markup
        sent.parse_mode = ctx.params.get("parse_mode") or None
        sent.link_preview_options = preview
        sent.edits += 1
        sent.history.append(visible)
        sent.html_history.append(text)
        sent.edit_date = int(time.time())
        return self._bot_message_json(sent)

    async def _edit_message_caption(self, ctx: _Context) -> Any:
        markup = self._reply_markup(ctx)
        raw = ctx.params.get("caption")
        raw = raw if isinstance(raw, str) else ""
        visible, entities = self._format(
            raw,
            ctx.params.get("parse_mode"),
            ctx.params.get("caption_entities"),
            allow_empty=True,
        )
        chat = self._chat_of(ctx)
        sent = self._message_to_edit(ctx, chat)
        if sent.kind == "text":
            raise _bad("there is no caption in the message to edit")
        if self._text_length(visible) > MAX_CAPTION_LENGTH:
            raise _bad("message caption is too long")
        if (visible, entities, markup) == (sent.text, sent.entities, sent.reply_markup):
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        sent.text, sent.html, sent.entities, sent.reply_markup = visible, raw, entities, markup
        sent.edits += 1
        sent.history.append(visible)
        sent.html_history.append(raw)
        sent.edit_date = int(time.time())
        return self._bot_message_json(sent)

    async def _edit_message_reply_markup(self, ctx: _Context) -> Any:
        markup = self._reply_markup(ctx)
        chat = self._chat_of(ctx)
        sent = self._message_to_edit(ctx, chat)
        if markup == sent.reply_markup:
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        sent.reply_markup = markup
        sent.markup_edits += 1
        sent.edit_date = int(time.time())
        return self._bot_message_json(sent)

    async def _delete_message(self, ctx: _Context) -> Any:
        chat = self._chat_of(ctx)
        message_id = ctx.params.get("message_id")
        if not isinstance(message_id, int) or message_id <= 0:
            raise _bad("message identifier is not specified")
        if not self._message_exists(chat, message_id):
            raise _bad("message to delete not found")
        sent = chat.bot_messages.get(message_id)
        if sent is not None:
            sent.deleted = True
            sent.deleted_by = "bot"
            return True
        if chat.type != "private":
            # In groups deleting others' messages needs admin rights, which the fake never has.
            raise _bad("message can't be deleted")
        chat.deleted_user_messages.add(message_id)
        return True

    async def _send_chat_action(self, ctx: _Context) -> Any:
        chat = self._chat_of(ctx)
        action = ctx.params.get("action")
        if action not in CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self.chat_actions.append((chat.id, str(action)))
        return True

    async def _send_photo(self, ctx: _Context) -> Any:
        return self._send_media(ctx, "photo")

    async def _send_document(self, ctx: _Context) -> Any:
        return self._send_media(ctx, "document")

    def _send_media(self, ctx: _Context, kind: str) -> Any:
        markup = self._reply_markup(ctx)
        value = ctx.params.get(kind)
        upload: UploadedFile | None = None
        file_id: str | None = None
        if isinstance(value, UploadedFile):
            upload = value
        elif isinstance(value, str) and value.startswith("attach://"):
            upload = ctx.files.get(value.removeprefix("attach://"))
        elif isinstance(value, str) and value:
            file_id = value
        if upload is None and file_id is None:
            raise _bad(f"there is no {kind} in the request")
        raw = ctx.params.get("caption")
        raw = raw if isinstance(raw, str) else ""
        visible, entities = self._format(
            raw,
            ctx.params.get("parse_mode"),
            ctx.params.get("caption_entities"),
            allow_empty=True,
        )
        chat = self._chat_of(ctx)
        reply_to = self._reply_target(ctx, chat)
        if self._text_length(visible) > MAX_CAPTION_LENGTH:
            raise _bad("message caption is too long")
        if upload is not None:
            file_id = self.add_file(upload.data, file_path=f"{kind}s/file")
        sent = self._new_message(
            ctx,
            chat,
            kind=kind,
            visible=visible,
            raw=raw,
            entities=entities,
            reply_to=reply_to,
            markup=markup,
        )
        sent.file, sent.file_id = upload, file_id
        return self._bot_message_json(sent)

    async def _get_file(self, ctx: _Context) -> Any:
        file_id = ctx.params.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise _bad("file_id is empty")
        stored = self._files.get(file_id)
        if stored is None:
            raise _bad("invalid file_id")
        path, data = stored
        if self.local_files_dir is not None:
            local = self.local_files_dir / file_id
            local.write_bytes(data)
            path = str(local.resolve())
        return {
            "file_id": file_id,
            "file_unique_id": f"U{file_id}",
            "file_size": len(data),
            "file_path": path,
        }

    async def _set_my_commands(self, ctx: _Context) -> Any:
        commands = ctx.params.get("commands")
        if commands is None or commands == "":
            commands = []
        if isinstance(commands, str):
            raise _bad("can't parse commands JSON object")
        if not isinstance(commands, list):
            raise _bad("expected an Array of BotCommand")
        parsed: list[dict[str, str]] = []
        for item in commands:
            if not isinstance(item, dict):
                raise _bad("can't parse BotCommand: expected an Object")
            for key in ("command", "description"):
                if not isinstance(item.get(key), str):
                    raise _bad(f'can\'t parse BotCommand: Field "{key}" must be of type String')
            parsed.append({"command": item["command"], "description": item["description"]})
        scope = self._command_scope(ctx)
        if len(parsed) > 100:
            raise _bad("BOT_COMMANDS_TOO_MUCH")
        for item in parsed:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", item["command"]):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(item["description"]) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
        language = str(ctx.params.get("language_code") or "")
        if parsed:
            self.my_commands[(scope, language)] = parsed
        else:
            self.my_commands.pop((scope, language), None)
        return True

    async def _get_my_commands(self, ctx: _Context) -> Any:
        scope = self._command_scope(ctx)
        language = str(ctx.params.get("language_code") or "")
        return list(self.my_commands.get((scope, language), []))

    async def _delete_my_commands(self, ctx: _Context) -> Any:
        scope = self._command_scope(ctx)
        language = str(ctx.params.get("language_code") or "")
        self.my_commands.pop((scope, language), None)
        return True

    async def _answer_callback_query(self, ctx: _Context) -> Any:
        query_id = ctx.params.get("callback_query_id")
        query_id = str(query_id) if query_id not in (None, "") else ""
        if query_id not in self._pending_callbacks:
            raise _ApiError(400, QUERY_TOO_OLD)
        text = ctx.params.get("text")
        if isinstance(text, str) and len(text) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        self.callback_answers[query_id] = {
            "text": text if isinstance(text, str) else None,
            "show_alert": bool(ctx.params.get("show_alert")),
            "url": ctx.params.get("url"),
        }
        return True

    async def _get_chat_member(self, ctx: _Context) -> Any:
        chat = self._chat_of(ctx)
        user_id = ctx.params.get("user_id")
        if not isinstance(user_id, int) or user_id <= 0:
            raise _bad("invalid user_id specified")
        status = chat.statuses.get(user_id)
        if status is None:
            if user_id == self.bot_id or user_id in chat.members:
                status = "member"
            elif user_id in self._known_users:
                status = "left"  # known to the bot, but never seen in this chat
            else:
                # The Bot API knows only users who talked to the bot or were seen with it.
                raise _bad("user not found")
        return self._chat_member_json(chat, user_id, status)

    async def _get_chat_administrators(self, ctx: _Context) -> Any:
        chat = self._chat_of(ctx)
        if chat.type == "private":
            raise _bad("there are no administrators in the private chat")
        ranked = sorted(chat.statuses.items(), key=lambda item: item[1] != "creator")
        return [
            self._chat_member_json(chat, user_id, status)
            for user_id, status in ranked
            if status in ("creator", "administrator")
        ]

    def _remember(self, chat: _Chat, user: dict[str, Any]) -> None:
        chat.members[user["id"]] = user
        self._known_users[user["id"]] = user

    def _chat_member_json(self, chat: _Chat, user_id: int, status: str) -> dict[str, Any]:
        """A ChatMember object with the fields the Bot API sends for the status."""
        if user_id == self.bot_id:
            user: dict[str, Any] = self.bot_user
        else:
            user = (
                chat.members.get(user_id)
                or self._known_users.get(user_id)
                or {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}
            )
        member: dict[str, Any] = {"status": status, "user": user}
        if status == "creator":
            member["is_anonymous"] = False
        elif status == "administrator":
            member.update(
                can_be_edited=False,
                is_anonymous=False,
                can_manage_chat=True,
                can_delete_messages=True,
                can_manage_video_chats=True,
                can_restrict_members=True,
                can_promote_members=False,
                can_change_info=True,
                can_invite_users=True,
                can_post_stories=False,
                can_edit_stories=False,
                can_delete_stories=False,
                can_send_welcome_messages=False,
                can_pin_messages=True,
            )
            if chat.type == "supergroup":
                member["can_manage_topics"] = False
        return member


def _json_scalar_as_text(value: Any) -> Any:
    """The Bot API reads every top-level JSON field as text; numbers and booleans included."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _clamped_int(value: Any, default: int, low: int, high: int) -> int:
    """An integer parameter read as the Bot API server does: missing -> default, junk -> 0."""
    if value is None or value == "":
        number = default
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            number = 0
    return min(max(number, low), high)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_webhook_url(url: str) -> str:
    """The webhook URL if Telegram (or, for loopback hosts, a local server) would take it."""
    if "://" not in url:
        url = "https://" + url  # the server parses URLs with https as the default scheme
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _bad("invalid webhook URL specified") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise _bad("invalid webhook URL specified")
    if _is_loopback(parts.hostname):
        return url  # the fake's deviation: any scheme of the two and any port, for tests
    if scheme == "http":
        raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
    if (port or 443) not in (80, 88, 443, 8443):
        raise _bad("bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")
    return url


def _webhook_ip(url: str) -> str:
    """What getWebhookInfo shows as ip_address: the host's address, as far as the fake knows."""
    host = urlsplit(url).hostname or ""
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return "<unknown>"


def _retry_after(value: str | None) -> int:
    """Seconds from a webhook answer's Retry-After header (the server caps it at an hour)."""
    try:
        seconds = int((value or "").strip())
    except ValueError:
        return 0
    return min(max(seconds, 0), 3600)


def _connect_error(error: aiohttp.ClientConnectorError) -> str:
    """A connection failure worded as getWebhookInfo words it."""
    # With several addresses (localhost: ::1 and 127.0.0.1) aiohttp joins the errors in one.
    if error.os_error.errno == errno.ECONNREFUSED or (
        f"[Errno {errno.ECONNREFUSED}]" in str(error.os_error)
    ):
        return "Connection refused"
    if isinstance(error.os_error, TimeoutError):
        return "Connection timed out"
    return error.os_error.strerror or "Can't connect to the webhook"


def _int_param(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _decode_param(key: str, value: Any) -> Any:
    """Turn a transport value into what the parameter means (ints, bools, JSON objects)."""
    if not isinstance(value, str):
        return value
    if key in _INT_PARAMS:
        with contextlib.suppress(ValueError):
            return int(value.strip())
        return value
    if key in _BOOL_PARAMS:
        return value.strip().lower() in ("true", "1")
    if key in _JSON_PARAMS and value:
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


_ENTITY_TYPES = frozenset(
    {
        "bold",
        "italic",
        "underline",
        "strikethrough",
        "spoiler",
        "code",
        "pre",
        "text_link",
        "text_mention",
        "custom_emoji",
        "blockquote",
        "expandable_blockquote",
        "date_time",
    }
)
_DETECTED_TYPES = frozenset(
    {
        "mention",
        "hashtag",
        "cashtag",
        "bot_command",
        "url",
        "email",
        "phone_number",
        "bank_card_number",
    }
)


def _explicit_entities(items: list[Any]) -> list[dict[str, Any]]:
    """Validate entities given instead of a parse mode, like the Bot API does."""
    result: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise _bad("can't parse MessageEntity: expected an Object")
        for key in ("offset", "length"):
            if not isinstance(item.get(key), int):
                raise _bad(f'can\'t parse MessageEntity: Field "{key}" must be a valid Number')
        kind = item.get("type")
        if not isinstance(kind, str) or not kind:
            raise _bad("can't parse MessageEntity: Type is not specified")
        if kind in _DETECTED_TYPES:
            continue  # Telegram finds these itself and ignores the ones given
        if kind not in _ENTITY_TYPES:
            raise _bad("can't parse MessageEntity: Unsupported type specified")
        entity = {key: value for key, value in item.items() if value is not None}
        if kind == "pre" and not entity.get("language"):
            entity.pop("language", None)
        result.append(entity)
    return result
