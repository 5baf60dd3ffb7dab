"""Client for OpenAI-compatible backends; every provider quirk lives in this package."""
