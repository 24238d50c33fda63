"""Talking to the Hub: metadata (hub) and verified range fetches (fetch: client, the only
aiohttp user, with pieces, ranged, resolver and proxy_route)."""
