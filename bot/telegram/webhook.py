"""Webhook mode: Telegram posts each update; it is stored before the 200, then handled once.

aiogram's stock webhook handler acknowledges an update before handling it, so a crash loses
it. Here the HTTP handler only checks the secret header, validates the body and stores the
update in the `inbox` table (a duplicate update_id is stored once), and answers 200 only after
that commit. Every replica then claims stored updates with a lease (`UpdateQueue`):

- an update is handled by the one replica that claimed it; it leaves the table when handled;
- of each chat only the oldest update is claimable, and only while nobody holds a live lease on
  it, so a chat's messages are answered one at a time, in update_id order, across replicas;
  commands that answer at once and button presses wait for nothing (`ordered_chat`);
- an update handled is remembered for a day (`handled_updates`): posted again, because
  Telegram missed the 200, it is not handled again, whichever replica gets it;
- a replica renews its leases while it works; if it dies, its updates are claimed again by
  another replica once their lease (LEASE_SECONDS) runs out. A user's message answered but not
  yet deleted when a replica died is recognised by the chat service and not answered twice.

The same server answers GET /healthz (the process is up) and GET /readyz (the database
answers; 503 naming the failing part otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from aiogram.types import Update
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.models import utcnow
from bot.db.repositories import InboxEntry, InboxRepository
from bot.telegram.middlewares import InflightTracker, ordered_chat

if TYPE_CHECKING:
    from aiogram import Bot, Dispatcher

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# How long a claimed update stays this replica's without a renewal (WEBHOOK_LEASE_SECONDS);
# it is renewed three times within that.
LEASE_SECONDS = 30.0
# How often stored updates are looked for when nothing wakes the queue (another replica stored
# them, or a lease ran out).
POLL_SECONDS = 0.5
# At most this many updates handled at once by one replica: the rest wait for other replicas.
CAPACITY = 256
# Updates claimed per step: a burst is shared among the replicas rather than taken by the one
# that woke first; a full batch is followed by the next step at once.
CLAIM_BATCH = 8
# Handled updates are remembered this long (Telegram keeps an update for at most a day), so one
# posted again, to any replica, is not handled again; the older ones are forgotten this often.
HANDLED_KEEP = timedelta(days=1)
FORGET_EVERY = 600.0
# Telegram's updates are a few kilobytes; a body past this is not an update.
MAX_BODY_BYTES = 1024 * 1024


def replica_name() -> str:
    """A name for this process among the replicas: host, pid and a random part."""
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class UpdateQueue:
    """Stored updates, claimed by this replica and fed to the dispatcher one task each."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        bot: Bot,
        tracker: InflightTracker,
        owner: str | None = None,
        lease: float = LEASE_SECONDS,
        poll: float = POLL_SECONDS,
        capacity: int = CAPACITY,
    ) -> None:
        """`tracker` tells which fed updates were handled (and may leave the table)."""
        self._sessions = sessions
        self._dispatcher = dispatcher
        self._bot = bot
        self._tracker = tracker
        self.owner = owner or replica_name()
        self._lease = lease
        self._poll = poll
        self._capacity = capacity
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._forget_at = 0.0  # when the handled updates older than a day are next forgotten

    async def store(self, update_id: int, payload: str, chat_key: int | None) -> None:
        """Store an update posted by Telegram (once, however often it is posted)."""
        entry = InboxEntry(update_id=update_id, payload=payload, chat_key=chat_key)
        async with self._sessions.begin() as session:
            await InboxRepository(session).add(entries=[entry], unless_handled=True)
        self._wake.set()

    async def run(self) -> None:
        """Claim and feed stored updates until `stop()`; database failures are retried."""
        renewing = asyncio.create_task(self._renew())
        try:
            while not self._stopping:
                try:
                    if await self._step() == CLAIM_BATCH:
                        await asyncio.sleep(0)  # let the batch begin, then claim more
                        continue
                except SQLAlchemyError as exc:
                    logger.warning("webhook queue: database failed (%s), retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                self._wake.clear()
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    def stop(self) -> None:
        """Claim nothing more."""
        self._stopping = True
        self._wake.set()

    async def close(self) -> None:
        """Delete what was handled and give up the leases of the rest (at shutdown)."""
        handled = self._tracker.take_handled()
        async with self._sessions.begin() as session:
            repository = InboxRepository(session)
            await repository.finish(update_ids=handled)
            await repository.release(owner=self.owner)

    async def _step(self) -> int:
        """Delete the updates handled since the last step, then claim what may go next; how
        many were claimed."""
        handled = self._tracker.take_handled()
        room = min(CLAIM_BATCH, self._capacity - len(self._inflight))
        try:
            async with self._sessions.begin() as session:
                repository = InboxRepository(session)
                await repository.finish(update_ids=handled)
                if time.monotonic() >= self._forget_at:
                    await repository.forget_handled(before=utcnow() - HANDLED_KEEP)
                    self._forget_at = time.monotonic() + FORGET_EVERY
                claimed = (
                    await repository.claim(owner=self.owner, limit=room, lease=self._lease)
                    if room > 0
                    else []
                )
        except BaseException:
            self._tracker.handled |= handled  # deleted at the next step
            raise
        # Recorded as handled in the database, which now refuses them: memory stays flat.
        self._tracker.forget(handled)
        for entry in claimed:
            self._start(entry)
        return len(claimed)

    def _start(self, entry: InboxEntry) -> None:
        try:
            update = Update.model_validate_json(entry.payload, context={"bot": self._bot})
        except ValidationError:
            logger.error("webhook queue: update %s cannot be read, dropping it", entry.update_id)
            self._tracker.handled.add(entry.update_id)
            return
        task = asyncio.create_task(self._feed(update))
        self._inflight[entry.update_id] = task

    async def _feed(self, update: Update) -> None:
        # As aiogram's polling does for each update: a failure is logged, the others go on.
        try:
            await self._dispatcher.feed_update(self._bot, update)
        except Exception:
            logger.exception("webhook queue: update %s failed", update.update_id)
        finally:
            self._inflight.pop(update.update_id, None)
            self._wake.set()  # delete it, and claim its chat's next update

    async def _renew(self) -> None:
        """Keep the leases of the updates in hand alive while their answers run."""
        while True:
            await asyncio.sleep(self._lease / 3)
            if not self._inflight:
                continue
            try:
                async with self._sessions.begin() as session:
                    await InboxRepository(session).renew(
                        owner=self.owner, update_ids=list(self._inflight), lease=self._lease
                    )
            except SQLAlchemyError as exc:
                logger.warning("webhook queue: could not renew leases: %s", exc)


class WebhookServer:
    """The HTTP side: Telegram's posts, checked and stored; health and readiness."""

    def __init__(
        self,
        *,
        path: str,
        secret: str,
        queue: UpdateQueue,
        ready: Callable[[], Awaitable[str | None]],
    ) -> None:
        """`ready()` names what is not reachable (None when all is)."""
        self._path = path
        self._secret = secret.encode()
        self._queue = queue
        self._ready = ready

    def application(self) -> web.Application:
        """The aiohttp application serving the webhook and the health checks."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(self._path, self._receive)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            logger.warning("webhook: refused a post without the right secret token")
            return web.Response(status=401, text="unauthorized")
        try:
            body = await request.read()
            update = Update.model_validate_json(body)
        except (ValidationError, web.HTTPRequestEntityTooLarge, UnicodeDecodeError):
            return web.Response(status=400, text="not a Telegram update")
        try:
            await self._queue.store(update.update_id, body.decode(), ordered_chat(update))
        except SQLAlchemyError as exc:
            # Not acknowledged: Telegram posts it again later.
            logger.error("webhook: could not store update %s: %s", update.update_id, exc)
            return web.Response(status=503, text="storage unavailable")
        return web.Response(text="ok")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        problem = await self._ready()
        if problem is not None:
            return web.Response(status=503, text=problem)
        return web.Response(text="ready")
