"""Talking to the Hub: metadata (hub) and verified range fetches (fetch, the only aiohttp user)."""
