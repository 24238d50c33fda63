"""Talking to the Hub: metadata (hub) and verified range fetches (fetch: lanes and links, the
fetcher's threads and their blocking connections, with pieces, ranged, resolver and proxy_route)."""
