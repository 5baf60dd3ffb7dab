"""Composition root: builds every long-lived object from the settings and runs the bot."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from aiogram import Bot, Dispatcher
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError, TelegramServerError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot import health, i18n
from bot.config import Settings
from bot.db.engine import create_engine, create_read_engine, create_sessionmaker, migrate
from bot.llm.backends import BackendHealth
from bot.llm.client import LLMClient, LLMTimeouts
from bot.llm.images import ImageClient
from bot.llm.policy import RetryPolicy
from bot.llm.router import Backend, BackendRouter
from bot.llm.transcribe import TranscriptionClient
from bot.llm.transport import backend_http_client
from bot.services.chat import ChatConfig, ChatService
from bot.services.directory import CAPACITY as DIRECTORY_CAPACITY
from bot.services.directory import Directory
from bot.services.images import ImageConfig, ImageService
from bot.services.languages import LanguageService
from bot.services.migration import ChatMigration
from bot.services.models import ModelService
from bot.services.tokens import TokenCounter
from bot.services.usage import BudgetService, Limits, SettledUsage, UsagePolicy, UsageService
from bot.services.voice import VoiceService
from bot.telegram.alerts import OwnerAlerts
from bot.telegram.handlers import (
    callbacks,
    chat,
    common,
    documents,
    errors,
    image,
    language,
    model,
    photos,
    status,
    stop,
    upgrades,
    usage,
    voice,
)
from bot.telegram.inbox import Inbox, InboxRecorder
from bot.telegram.lazy_types import build_hot_models, hot_methods
from bot.telegram.middlewares import (
    AccessMiddleware,
    ChatSequencer,
    InflightTracker,
    LocaleMiddleware,
)
from bot.telegram.pacing import FloodGate
from bot.telegram.replies import Replies
from bot.telegram.session import BotSession
from bot.telegram.stops import Generations

if TYPE_CHECKING:
    from bot.replicas import Shared
    from bot.services.shared_models import SharedModelList
    from bot.telegram.shared_pacing import SharedPace
    from bot.telegram.webhook import UpdateQueue

logger = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "callback_query", "stopped_message_generation"]
# Seconds GET /readyz waits for the database.
READY_TIMEOUT = 2.0


@dataclass
class App:
    """Everything the running bot is made of."""

    settings: Settings
    engine: AsyncEngine
    read_engine: AsyncEngine | None
    http: httpx.AsyncClient
    bot: Bot
    dispatcher: Dispatcher
    tracker: InflightTracker
    inbox: Inbox
    chat_service: ChatService
    # Webhook mode: the stored updates this replica claims and handles.
    updates: UpdateQueue | None = None
    # REDIS_URL: what the replicas share (Telegram's limits, the model list, running answers).
    shared: Shared | None = None
    # The answers being generated (with REDIS_URL, a Stop reaches them from any replica), and
    # the task hearing other replicas' Stops.
    generations: Generations | None = None
    stop_listener: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class Services:
    """The application's services, free of aiogram, handed to handlers by name."""

    backends: BackendRouter
    chat_service: ChatService
    image_service: ImageService
    usage_service: UsageService
    model_service: ModelService
    language_service: LanguageService
    chat_migration: ChatMigration
    voice_service: VoiceService


async def build_app(settings: Settings) -> App:
    """Create the database (migrated), HTTP client, services, bot and dispatcher."""
    # Compiled now, so a broken translation file stops the bot at start, not at a message.
    i18n.catalogues()
    engine = create_engine(settings.database_url)
    await migrate(engine)
    # Reads that write nothing (history of known chats, languages, usage sums) run side by side
    # on read-only connections of a SQLite file, instead of queueing behind the writes.
    read_engine = create_read_engine(settings.database_url)
    # One pooled client for every backend call; streams are long-lived, so allow many at once.
    http = backend_http_client(max_connections=4096, headers={"User-Agent": "llm-telegram-bot"})
    sessions = create_sessionmaker(engine)
    shared = None
    if settings.redis_url:
        # Imported only with REDIS_URL: redis-py adds some 7 MB to a process not sharing.
        from bot.replicas import connect

        shared = connect(settings)
    services = build_services(
        settings,
        sessions=sessions,
        read_sessions=create_sessionmaker(read_engine or engine),
        http=http,
        shared_models=shared.models if shared is not None else None,
    )
    bot = build_bot(settings)
    tracker = InflightTracker()
    inbox = Inbox(sessions=sessions, tracker=tracker)
    # Every fetched batch is stored before aiogram's next getUpdates confirms it to Telegram.
    bot.session.middleware(InboxRecorder(inbox))
    generations = Generations(shared.stops if shared is not None else None)
    dispatcher = build_dispatcher(
        settings,
        services,
        bot=bot,
        tracker=tracker,
        shared=shared.pace if shared is not None else None,
        generations=generations,
    )
    updates = None
    if settings.bot_mode == "webhook":
        # Imported only in webhook mode, with aiohttp's server (a few MB polling does without).
        from bot.telegram.webhook import UpdateQueue

        updates = UpdateQueue(
            sessions=sessions,
            dispatcher=dispatcher,
            bot=bot,
            tracker=tracker,
            lease=settings.webhook_lease_seconds,
        )
    app = App(
        settings=settings,
        engine=engine,
        read_engine=read_engine,
        http=http,
        bot=bot,
        dispatcher=dispatcher,
        tracker=tracker,
        inbox=inbox,
        chat_service=services.chat_service,
        updates=updates,
        shared=shared,
        generations=generations,
    )
    dispatcher["app"] = app
    dispatcher.startup.register(_on_startup)
    # Knowing context sizes early sets the right history budget before anyone runs /model.
    dispatcher.startup.register(services.model_service.warm_up)
    # Before _on_shutdown closes the HTTP client the list may still be loading through.
    dispatcher.shutdown.register(services.model_service.close)
    dispatcher.shutdown.register(_on_shutdown)
    return app


def build_services(
    settings: Settings,
    *,
    sessions: async_sessionmaker[AsyncSession],
    read_sessions: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
    shared_models: SharedModelList | None = None,
) -> Services:
    """The services, sharing one Directory of chats and users and one backend client (and,
    with `shared_models`, the model list with the other replicas)."""
    retry = RetryPolicy(max_retries=settings.llm_max_retries)
    timeouts = LLMTimeouts(
        connect=settings.llm_connect_timeout,
        first_token=settings.llm_first_token_timeout,
        idle=settings.llm_idle_timeout,
        total=settings.llm_total_timeout,
    )
    routed = [
        Backend(
            spec=spec,
            client=LLMClient(
                http=http,
                base_url=spec.base_url,
                api_key=spec.api_key,
                timeouts=timeouts,
                retry=retry,
            ),
            health=BackendHealth(spec),
        )
        for spec in settings.backends()
    ]
    primary, fallbacks = routed[0], routed[1:]
    # Polling: this process alone writes chats and users, so what it stored stays true until it
    # writes again. Webhook replicas all write them (/model answered by one, the next message by
    # another): each read comes from the database.
    directory = Directory(capacity=0 if settings.bot_mode == "webhook" else DIRECTORY_CAPACITY)
    # The model list is every backend's that is asked for the chat's model; images come from
    # the primary.
    models = ModelService(
        sessions=sessions,
        directory=directory,
        llm=primary.client,
        fallbacks=[(b.spec.name, b.client) for b in fallbacks if b.spec.model is None],
        primary_name=primary.spec.name,
        default_model=settings.llm_model,
        allowed=settings.llm_models,
        cache_seconds=settings.models_cache_seconds,
        shared=shared_models,
    )
    backends = BackendRouter(
        routed,
        first_token_timeout=settings.llm_first_token_timeout,
        retry=retry,
        lacking=models.lacking,
    )
    policy = _usage_policy(settings)
    settled = SettledUsage()
    budgets = BudgetService(sessions=read_sessions, policy=policy, settled=settled)
    chat_service = ChatService(
        sessions=sessions,
        read_sessions=read_sessions,
        directory=directory,
        llm=backends,
        tokens=TokenCounter(),
        budgets=budgets,
        context_window_for=models.context_window,
        offered_instead=models.offered_instead,
        vision_of=models.vision,
        vision_models=models.vision_models,
        config=ChatConfig(
            default_model=settings.llm_model,
            system_prompt=settings.system_prompt,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            history_token_budget=settings.history_token_budget,
            context_window=settings.context_window,
            keep_images=settings.vision_keep_images,
        ),
    )
    images = ImageClient(
        http=http,
        base_url=settings.llm_base_url,
        api_key=settings.api_key(),
        timeout=settings.image_timeout,
        connect_timeout=settings.llm_connect_timeout,
        retry=retry,
        allow_private=settings.image_fetch_allow_private,
    )
    image_service = ImageService(
        sessions=sessions,
        directory=directory,
        budgets=budgets,
        images=images,
        config=ImageConfig(
            model=settings.image_model,
            api=settings.image_api,
            size=settings.image_size,
            cooldown_seconds=settings.image_cooldown_seconds,
            daily_limit=settings.image_daily_limit,
            exempt_user_ids=frozenset(settings.owner_ids),
        ),
    )
    transcriber = None
    if settings.transcribe_model:
        transcriber = TranscriptionClient(
            http=http,
            base_url=settings.llm_base_url,
            api_key=settings.api_key(),
            model=settings.transcribe_model,
            timeout=settings.llm_total_timeout,
            connect_timeout=settings.llm_connect_timeout,
        )
    return Services(
        backends=backends,
        voice_service=VoiceService(
            sessions=sessions, client=transcriber, model=settings.transcribe_model
        ),
        chat_service=chat_service,
        image_service=image_service,
        usage_service=UsageService(sessions=read_sessions, policy=policy, settled=settled),
        model_service=models,
        chat_migration=ChatMigration(sessions=sessions, directory=directory),
        language_service=LanguageService(
            sessions=sessions,
            read_sessions=read_sessions,
            directory=directory,
            default_language=settings.default_language or None,
        ),
    )


def _usage_policy(settings: Settings) -> UsagePolicy:
    return UsagePolicy(
        prices=settings.price_list(),
        timezone=settings.usage_tzinfo(),
        user_limits=Limits(
            daily_tokens=settings.user_daily_tokens,
            monthly_tokens=settings.user_monthly_tokens,
            daily_cost=settings.user_daily_cost,
            monthly_cost=settings.user_monthly_cost,
        ),
        bot_limits=Limits(
            daily_tokens=settings.bot_daily_tokens,
            monthly_tokens=settings.bot_monthly_tokens,
            daily_cost=settings.bot_daily_cost,
            monthly_cost=settings.bot_monthly_cost,
        ),
        exempt_user_ids=frozenset(settings.owner_ids),
    )


def build_bot(settings: Settings) -> Bot:
    """The Bot API client, with the models of the calls it makes built before the first one."""
    api = TelegramAPIServer.from_base(
        settings.telegram_api_url, is_local=settings.telegram_api_local
    )
    session = BotSession(api=api)
    build_hot_models()
    session.pin_response_models(hot_methods())
    return Bot(token=settings.bot_token.get_secret_value(), session=session)


def build_dispatcher(
    settings: Settings,
    services: Services,
    *,
    bot: Bot,
    tracker: InflightTracker,
    shared: SharedPace | None = None,
    generations: Generations | None = None,
) -> Dispatcher:
    """The dispatcher: middlewares in their order, then the routers, the conversation last."""
    gate = FloodGate(
        private_interval=settings.edit_interval_private,
        group_interval=settings.edit_interval_group,
        global_rate=settings.telegram_rate_limit,
        shared=shared,
    )
    replies = Replies(
        bot=bot,
        gate=gate,
        migration=services.chat_migration,
        stream_mode=settings.stream_mode,
        draft_interval=settings.draft_interval,
        generations=generations,
    )
    dispatcher = Dispatcher(
        disable_fsm=True,  # no conversation states: skip the FSM lookups on every update
        replies=replies,
        settings=settings,
        **vars(services),
    )
    services.backends.set_owner_notice(
        OwnerAlerts(
            replies=replies, owner_ids=settings.owner_ids, languages=services.language_service
        ).backend_refused_key
    )
    dispatcher.update.outer_middleware(tracker)
    dispatcher.message.outer_middleware(ChatSequencer())
    # After the sequencer (its first lookup of a user awaits the database, which must not let
    # a chat's later message overtake an earlier one) and before access control, so even the
    # refusal is in the sender's language.
    locale = LocaleMiddleware(services.language_service)
    dispatcher.message.outer_middleware(locale)
    dispatcher.callback_query.outer_middleware(locale)
    access = AccessMiddleware(
        owner_ids=settings.owner_ids,
        allowed_user_ids=settings.allowed_user_ids,
        allowed_chat_ids=settings.allowed_chat_ids,
    )
    # First of the inner ones: once the bot is stopping, a handler not yet begun never begins
    # (its update stays in the inbox for the next start).
    dispatcher.message.middleware(tracker.admit)
    dispatcher.callback_query.middleware(tracker.admit)
    dispatcher.message.middleware(access)
    dispatcher.callback_query.middleware(access)
    dispatcher.include_router(errors.build_router())
    # The conversation router catches every remaining message, so it goes last (before only
    # the catch-all for button presses).
    dispatcher.include_routers(
        common.build_router(),
        model.build_router(),
        usage.build_router(),
        status.build_router(),
        language.build_router(),
        image.build_router(),
        upgrades.build_router(),
        stop.build_router(),
        photos.build_router(),
        voice.build_router(),
        documents.build_router(),
        chat.build_router(),
        # Answers every button press no other router took, so no client spinner is left.
        callbacks.build_router(),
    )
    return dispatcher


async def _on_startup(app: App) -> None:
    if app.generations is not None and app.shared is not None:
        # Before any answer begins: from now on, other replicas' Stops reach this one's.
        app.stop_listener = asyncio.create_task(app.generations.listen())
    if app.updates is None:
        # Before polling fetches anything newer, so every chat's messages stay in order.
        await app.inbox.replay(app.dispatcher, app.bot)
    me = await app.bot.me()
    logger.info(
        "bot @%s (id %s) starting, backend %s", me.username, me.id, app.settings.llm_base_url
    )
    if app.updates is not None:
        await _register_webhook(app)
    try:
        if app.updates is None:
            await app.bot.delete_webhook(drop_pending_updates=False)
        # Telegram shows each user the menu of their app's language, else the default one
        # (registered without a language code). A fixed DEFAULT_LANGUAGE words them all alike.
        for code in (None, *(c for c in i18n.LOCALES if c != i18n.DEFAULT_LOCALE)):
            with i18n.use_locale(app.settings.default_language or code or i18n.DEFAULT_LOCALE):
                commands = common.command_menu(images=bool(app.settings.image_model))
            await app.bot.set_my_commands(commands, language_code=code)
    except TelegramAPIError as exc:
        logger.warning("could not register the command menu: %s", exc)


async def _register_webhook(app: App) -> None:
    """Tell Telegram where to post updates; every replica may do it (it is idempotent)."""
    settings = app.settings
    secret = settings.webhook_secret
    assert secret is not None  # checked with the settings
    if not settings.webhook_url.startswith("https://"):
        logger.warning("WEBHOOK_URL is not https: Telegram posts only to https URLs")
    if not settings.redis_url:
        logger.warning(
            "webhook mode without REDIS_URL: fine for one replica; several must share "
            "Telegram's rate limits through Redis"
        )
    await app.bot.set_webhook(
        url=settings.webhook_url,
        secret_token=secret.get_secret_value(),
        allowed_updates=ALLOWED_UPDATES,
        max_connections=settings.webhook_max_connections,
        drop_pending_updates=False,
    )
    logger.info(
        "webhook registered; updates are stored and claimed as %s",
        app.updates and app.updates.owner,
    )


async def _on_shutdown(app: App) -> None:
    app.tracker.stop()
    await app.tracker.drain(app.settings.shutdown_grace)
    # An answer cut short by the stop is still written: wait for it before the engine goes.
    await app.chat_service.close()
    if app.stop_listener is not None:
        app.stop_listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app.stop_listener
    if app.updates is not None:
        try:
            await app.updates.close()
        except SQLAlchemyError as exc:
            # Not lost: the leases run out and another replica (or the next start) takes them.
            logger.warning("webhook queue: could not release the leases: %s", exc)
    if app.inbox.last_stored_id is not None:
        # Telegram confirms updates only when the next getUpdates carries a higher offset;
        # without this, the last batch would be fetched again after a restart. Confirming all
        # that was fetched is safe: the inbox holds each update until it is handled.
        with contextlib.suppress(TelegramAPIError, asyncio.TimeoutError):
            await app.bot.get_updates(offset=app.inbox.last_stored_id + 1, limit=1, timeout=0)
    try:
        await app.inbox.flush()
    except SQLAlchemyError as exc:
        # Not lost: those updates are fed again at the next start and recognised as answered.
        logger.warning("inbox: could not delete the handled updates: %s", exc)
    await app.http.aclose()
    if app.shared is not None:
        await app.shared.close()
    await _dispose_engines(app)
    logger.info("stopped cleanly")


async def _dispose_engines(app: App) -> None:
    if app.read_engine is not None:
        await app.read_engine.dispose()
    await app.engine.dispose()


async def _reach_telegram(app: App, stop: asyncio.Event) -> bool:
    """Wait until Telegram answers getMe; False if asked to stop first.

    Start even if Telegram is briefly unreachable (a network blip, a restarting self-hosted Bot
    API server) instead of crashing into a restart loop, yet stay stoppable meanwhile.
    """
    delay = 1.0
    while not stop.is_set():
        try:
            await app.bot.me()
            return True
        except (TelegramNetworkError, TelegramServerError) as exc:
            logger.warning("Telegram unreachable (%s), retrying in %.0fs", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 30.0)
    return False


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` while inside; the previous handlers come back after.

    One handler for the whole run: aiogram's own (installed only once polling starts and
    removed before shutdown) would leave gaps with the default disposition, which kills the
    process mid-way, or ignores the signal altogether when it runs as PID 1 in a container.
    """
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            logger.info("received %s, stopping", sig.name)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])


async def serve(
    app: App,
    *,
    handle_signals: bool = True,
    polling_timeout: int = 30,
    stop: asyncio.Event | None = None,
) -> None:
    """Poll Telegram and answer until stopped (`stop`, SIGTERM/SIGINT or `stop_polling()`)."""
    stop = stop if stop is not None else asyncio.Event()
    with stop_on_signals(stop) if handle_signals else contextlib.nullcontext():
        await _serve(app, stop=stop, polling_timeout=polling_timeout)


async def _serve(app: App, *, stop: asyncio.Event, polling_timeout: int) -> None:
    if not await _reach_telegram(app, stop):
        await _close_unstarted(app)
        logger.info("stopped before Telegram could be reached")
        return
    beat = None
    if app.settings.heartbeat_file:
        beat = asyncio.create_task(health.heartbeat(Path(app.settings.heartbeat_file)))
    if app.updates is not None:
        try:
            await _serve_webhook(app, app.updates, stop=stop)
        finally:
            if beat is not None:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
        return
    polling = asyncio.create_task(
        app.dispatcher.start_polling(
            app.bot,
            allowed_updates=ALLOWED_UPDATES,
            handle_signals=False,  # stop_on_signals: handled from the first instant
            close_bot_session=True,
            polling_timeout=polling_timeout,
        )
    )
    stopper = asyncio.create_task(_stop_polling_when(stop, app, polling))
    try:
        await polling
    finally:
        for task in (stopper, beat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _serve_webhook(app: App, updates: UpdateQueue, *, stop: asyncio.Event) -> None:
    """Serve Telegram's posts and handle stored updates until `stop`."""
    from aiohttp import web

    from bot.telegram.webhook import WebhookServer

    settings = app.settings
    secret = settings.webhook_secret
    assert secret is not None  # checked with the settings
    server = WebhookServer(
        path=settings.webhook_route(),
        secret=secret.get_secret_value(),
        queue=updates,
        ready=lambda: _unready(app),
    )
    runner = web.AppRunner(server.application(), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = settings.webhook_address()
    workflow = app.dispatcher.workflow_data
    started = False
    worker = None
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.info("webhook server listening on %s:%s%s", host, port, settings.webhook_route())
        await app.dispatcher.emit_startup(bot=app.bot, **workflow)
        started = True
        worker = asyncio.create_task(updates.run())
        await stop.wait()
    finally:
        # Telegram's posts go elsewhere (or wait) from now on; no new handler begins.
        app.tracker.stop()
        updates.stop()
        if worker is not None:
            await worker
        await runner.cleanup()
        if started:
            await app.dispatcher.emit_shutdown(bot=app.bot, **workflow)
        else:
            await _close_unstarted(app)
        await app.bot.session.close()


async def _unready(app: App) -> str | None:
    """What the bot cannot reach now (None when all is well): for GET /readyz."""
    try:
        async with asyncio.timeout(READY_TIMEOUT), app.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return f"database: {type(exc).__name__}"
    if app.shared is not None:
        return await app.shared.ping()
    return None


async def _stop_polling_when(stop: asyncio.Event, app: App, polling: asyncio.Task[None]) -> None:
    await stop.wait()
    # At once, not when the shutdown hooks run: no handler begins after the signal.
    app.tracker.stop()
    while not polling.done():
        try:
            await app.dispatcher.stop_polling()
            return
        except RuntimeError:  # "Polling is not started" yet: it is about to
            await asyncio.sleep(0.01)


async def _close_unstarted(app: App) -> None:
    await app.http.aclose()
    await _dispose_engines(app)
    await app.bot.session.close()


GC_THRESHOLDS = (50_000, 20, 20)


async def run(settings: Settings) -> None:
    """Build the app and poll Telegram until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    # From the first instant, migrations included: see stop_on_signals.
    with stop_on_signals(stop):
        app = await build_app(settings)
        if stop.is_set():
            await _close_unstarted(app)
            logger.info("stopped during start-up")
            return
        # What start-up built (modules, aiogram's and pydantic's type machinery: some 250,000
        # objects) lives as long as the process, yet every full garbage collection walked it
        # all, about 0.2 s of CPU each time. Frozen, collections only look at what answers
        # create.
        gc.collect()
        gc.freeze()
        # With a thousand answers in flight, the default thresholds ran a collection every 700
        # allocations and a full one (~0.15 s each) every few seconds: 7% of the bot's CPU.
        # Rarer collections cost a few MB of cyclic garbage living a little longer.
        gc.set_threshold(*GC_THRESHOLDS)
        await serve(app, handle_signals=False, stop=stop)
