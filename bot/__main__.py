"""Entry point: `python -m bot`."""

from __future__ import annotations

import asyncio
import logging
import sys

from bot.config import ConfigError, load_settings


def main() -> int:
    """Validate the settings, set up logging and run the bot until stopped."""
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
    from aiogram.exceptions import TelegramUnauthorizedError
    from sqlalchemy.exc import SQLAlchemyError

    from bot.app import run

    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    except TelegramUnauthorizedError:
        print("Configuration error: BOT_TOKEN: Telegram rejected the token", file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as exc:
        print(f"Cannot open the database (DATABASE_URL): {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
