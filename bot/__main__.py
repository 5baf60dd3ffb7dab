"""Entry point: `python -m bot`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys


def main() -> int:
    """Validate the settings, set up logging and run the bot until stopped."""
    # Before anything slow (imports, settings, migrations): with the default disposition
    # SIGTERM kills the process without clean-up, and PID 1 in a container ignores it until
    # docker stop's SIGKILL. Until the event loop takes over (bot.app.run), SIGTERM ends the
    # start-up as Ctrl+C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _start()
    except KeyboardInterrupt:
        return 0


def _start() -> int:
    from bot.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiogram logs every handled update and httpx every request at INFO; keep our one line per
    # answer readable.
    logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic narrates every start ("Context impl SQLiteImpl", "Will assume transactional
    # DDL"); a migration that fails still says so, at ERROR.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from aiogram.exceptions import TelegramUnauthorizedError
    from sqlalchemy.exc import SQLAlchemyError

    from bot.app import run

    try:
        asyncio.run(run(settings))
    except TelegramUnauthorizedError:
        print("Configuration error: BOT_TOKEN: Telegram rejected the token", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as exc:
        print(f"Cannot open the database (DATABASE_URL): {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
