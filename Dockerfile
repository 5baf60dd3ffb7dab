# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
# The locked dependencies first (their own layer, cached while only the bot's code changes),
# each checked against the hashes in the lock; then the bot itself, adding nothing more.
COPY requirements.txt ./
RUN pip install --no-cache-dir --prefix=/install --require-hashes -r requirements.txt
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install --no-cache-dir --prefix=/install --no-deps .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_URL=sqlite:////data/bot.db HEARTBEAT_FILE=/tmp/bot-heartbeat
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 bot && mkdir /data && chown bot:bot /data
USER bot
# The root as working directory: a relative DATABASE_URL from an --env-file made from
# .env.example (sqlite:///data/bot.db) then lands in the /data volume too, not in a directory
# that is lost with the container.
WORKDIR /
VOLUME ["/data"]
# Healthy while the bot polls Telegram and its event loop runs (see bot/health.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot.health"]
# docker stop sends SIGINT: Python handles it from the interpreter's first instant (the bot's
# own handler for SIGTERM and SIGINT is in place once its imports are done), even as PID 1.
STOPSIGNAL SIGINT
CMD ["python", "-m", "bot"]
