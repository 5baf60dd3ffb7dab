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
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DATABASE_URL=sqlite:////data/bot.db
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 bot && mkdir /data && chown bot:bot /data
USER bot
WORKDIR /home/bot
VOLUME ["/data"]
CMD ["python", "-m", "bot"]
