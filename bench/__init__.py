"""Benchmark of the bot's own cost and speed against fake Telegram and backend servers."""
