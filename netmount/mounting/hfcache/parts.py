"""What an ``--hf-cache`` daemon has that a plain mount's has not (``owner.py`` builds both).

- the namespace (``HfCacheNamespace``) over the Hub at the mount's endpoint, with the mount's
  token (``hub_resolver``), each ``--repo`` pinned as the parent resolved it;
- the listing that names files by their path in the mount (``listing.py``) for the prefetcher,
  the readahead switch and the read coverage;
- the per-file tally (``tally.py``): the reader's fetcher counts what it delivers per file,
  its ``on_served`` what it serves, so stats group by repo (``hubstats.py``).

``NEGATIVE_TTL``: how long a missing repo (or one this token may not read) is remembered —
in the namespace and, as ``negative_timeout``, in the kernel: a longer kernel timeout would
hide a repo created on the Hub meanwhile.
"""

from __future__ import annotations

from netmount.mounting.hfcache.hubstats import HubStatsBuilder
from netmount.mounting.hfcache.listing import HubListing, name_of
from netmount.mounting.hfcache.namespace import HfCacheNamespace
from netmount.mounting.hfcache.options import pinned_snapshots
from netmount.mounting.hfcache.resolution import hub_resolver
from netmount.mounting.hfcache.tally import FileTally


class HubParts:
    NEGATIVE_TTL = 60.0  # seconds
    MAX_FILES = 4096  # files whose read coverage is kept (the most recently read)

    def __init__(self, spec: dict, token: str | None) -> None:
        """``spec``: ``options.daemon_spec``'s (endpoint, refs_ttl, pinned repos)."""
        self.endpoint = spec["endpoint"]
        self.namespace = HfCacheNamespace(hub_resolver(self.endpoint, token), refs_ttl=spec["refs_ttl"],
                                          negative_ttl=self.NEGATIVE_TTL)
        self.pinned = pinned_snapshots(spec)
        for key, revision, snap in self.pinned:
            self.namespace.pin(key, revision, snap)
        self.listing = HubListing(self.namespace.catalog)
        self.tally = FileTally(name_of)

    def counting(self, fetcher, coverage):
        """(the fetcher the reader gets, the reader's ``on_served``): both count per file here."""
        tally = self.tally

        def served(f, offset: int, length: int) -> None:
            coverage.record(f, offset, length)
            tally.served(f, offset, length)

        return tally.counting(fetcher), served

    def stats(self, config, counters, store, coverage, **options) -> HubStatsBuilder:
        return HubStatsBuilder(config, self.endpoint, counters, store, coverage, self.tally, self.namespace,
                               **options)

    def describe(self) -> str:
        pinned = ", ".join(f"{snap.name}@{snap.sha[:12]}" for _key, _rev, snap in self.pinned)
        return f"pinned: {pinned}" if pinned else "no repo pinned"

    def close(self) -> None:
        """Lookups waiting on the Hub get EIO now; the resolver's threads end after their call."""
        self.namespace.close()
