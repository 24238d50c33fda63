"""The numbers a live mount publishes in ``/.netmount/stats.json``."""

from __future__ import annotations

import time


def build_stats(config, snap, counters, store) -> dict:
    values = counters.snapshot()
    per_file = counters.per_file()
    files = []
    cached_total = 0
    for f in snap.files:
        try:
            cached = min(store.cached_bytes(f.content_id), f.size)
        except Exception:
            cached = 0
        cached_total += cached
        files.append({
            "path": f.path,
            "size": f.size,
            "cached_bytes": cached,
            "fetched_bytes": per_file.get(f.path, {}).get("bytes_fetched", 0),
            "served_bytes": per_file.get(f.path, {}).get("bytes_served", 0),
        })
    uptime = max(time.time() - counters.started, 1e-9)
    return {
        "mountpoint": config.mountpoint,
        "repo": snap.repo_id,
        "revision": snap.sha,
        "requested_revision": snap.revision,
        "endpoint": snap.endpoint,
        "block_size": config.block_size,
        "pid": __import__("os").getpid(),
        "uptime_s": round(uptime, 3),
        "bytes_served": values.get("bytes_served", 0),
        "bytes_fetched": values.get("bytes_fetched", 0),
        "requests": values.get("requests", 0),
        "retries": values.get("retries", 0),
        "errors": values.get("errors", 0),
        "cache_hits": values.get("cache_hits", 0),
        "cache_misses": values.get("cache_misses", 0),
        "cached_bytes": cached_total,
        "total_bytes": sum(f.size for f in snap.files),
        "files": files,
    }
