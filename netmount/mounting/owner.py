"""The daemon's one owner: builds every part with its collaborators, serves, closes them.

Each part is built once, in this order, given at construction what it calls and a listener
for any news that travels up (never an attribute set on it afterwards):

    store -> fetcher -> coverage, loader news -> reader (news up: a run finished), layouts
      -> prefetcher (news up: a loader seen, to the loader news) -> view
      -> readahead switch (asks the prefetcher or the view; reads the loader news)
      -> stats -> the FUSE operations (their control files call this owner back)

The readahead switch and the prefetcher need each other's news: the prefetcher is built
first, and tells what it sees to ``LoaderNews``, which the switch reads (readahead.py).
``close`` follows ``closing.py``: stop taking work, abort fetches, stop the prefetcher,
drain, close pools, with a bound on every wait.  ``<mount>/.netmount/idle`` stays the one
"settled" answer: the prefetcher's ``drain`` (or the reader's, without prefetch).

An ``--hf-cache`` daemon (``config.hf_cache``) has no snapshot: its namespace (``HubParts``:
the Hub in huggingface_hub's cache layout, repos resolved on lookup) names the files, and it
counts per file by path in the mount (the fetcher it gives the reader counts what it
delivers); one store, one fetcher and one reader serve every repo.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading

from cache import open_store
from netmount.core import settings
from netmount.core.counters import Counters
from netmount.mounting.closing import close_parts
from netmount.mounting.drop import make_drop
from netmount.mounting.fs import IDLE_FILE, STATS_DIR, STATS_FILE, NetmountFS, requester, serve
from netmount.mounting.libfuse import libfuse3_path
from netmount.mounting.readahead import LoaderNews, ReadaheadSwitch, max_read
from netmount.mounting.replies import Replies
from netmount.mounting.stats import StatsBuilder
from netmount.mounting.threadstate import kept_states
from netmount.read.coverage import Coverage
from netmount.read.listing import FixedListing
from netmount.read.metadata import TensorMaps
from netmount.read.prefetch import Prefetcher
from netmount.read.reader import BlockReader
from netmount.remote.fetch import RangeFetcher

log = logging.getLogger("netmount.daemon")

IDLE_WAIT = 60.0  # seconds an open of /.netmount/idle waits for the daemon to settle
FALLBACK_MEMORY = 256 << 20  # the memory cache that stands in for an unusable cache dir


class Daemon:
    """One mount's parts.  ``with Daemon(config, on_ready) as d: d.serve()``; ``on_ready()``
    runs at FUSE INIT (the mount is live)."""

    def __init__(self, config, on_ready=None) -> None:
        self.config, self.snap, self.on_ready = config, config.snapshot, on_ready
        self.fetcher = self.prefetcher = self.reader = self.stats = self.store = self.hub = None
        self._closed = False
        try:
            self._build()
        except BaseException:
            self.close()  # what was built: its threads must not outlive a failed start
            raise

    def _build(self) -> None:
        config = self.config
        self.counters = Counters()
        if config.hf_cache is not None:
            from netmount.mounting.hfcache.parts import HubParts

            self.hub = HubParts(config.hf_cache, config.token)
        listing = self.hub.listing if self.hub else FixedListing(self.snap.files)
        # An unusable cache dir (full, read-only, corrupt) degrades to a small memory cache:
        # reads keep working from the network.
        self.store = open_store(config.cache_dir, config.block_size, config.cache_size,
                                logging.getLogger("netmount.cache"), fallback_bytes=FALLBACK_MEMORY)
        self._seed()
        self.fetcher = RangeFetcher(self.hub.endpoint if self.hub else self.snap.endpoint, token=config.token,
                                    connections=config.connections, counters=self.counters,
                                    proxy=config.cache_proxy).start()
        # which bytes programs read: amplification, per-tensor touched bytes
        self.coverage = Coverage(listing.name, max_files=self.hub.MAX_FILES if self.hub else None)
        self.news = LoaderNews()  # the prefetcher's "a loader reads folder F", for the readahead switch
        run_done = threading.Event()  # the reader's news to the prefetch pump: a run has finished
        self.maps = TensorMaps()  # every file's tensor layout, parsed once: for prefetch, stats and views
        fetch, served = self.hub.counting(self.fetcher, self.coverage) if self.hub else (self.fetcher,
                                                                                          self.coverage.record)
        self.reader = BlockReader(self.store, fetch, counters=self.counters, on_served=served,
                                  max_request_bytes=settings.MAX_REQUEST_BYTES, on_run_done=run_done.set)
        self.prefetcher = self._prefetcher(run_done, listing) if config.prefetch else None
        self.view = self._view() if config.view is not None else None
        self.readahead = self._readahead(listing)
        self.stats = self._stats()
        drop = make_drop(self.store, self.reader, lambda: self.reader.drain(IDLE_WAIT), self.stats.forget)
        ra = self.readahead
        self.ops = NetmountFS(self.snap, self.reader, {STATS_FILE: self._stats_json, IDLE_FILE: self._idle},
                              self._mounted, self.prefetcher, on_drop=drop, view=self.view,
                              on_open=ra.opening, on_release=ra.released, on_read=ra.reading,
                              replies=self._replies(), namespace=self.hub.namespace if self.hub else None,
                              control_dirs={STATS_DIR: self._snapshot_json} if self.hub else None)

    def _seed(self) -> None:
        """Store what the parent fetched for a view (headers, index, config): every byte that
        crossed the network lands in the store, whoever fetched it."""
        if not self.config.seed:
            return
        by_path = {f.path: f for f in self.snap.files}
        items = [(by_path[p].content_id, offset, data, by_path[p].size)
                 for p, offset, data in self.config.seed if p in by_path and data]
        if items:
            self.store.put_ranges(items)

    def _prefetcher(self, run_done: threading.Event, listing) -> Prefetcher:
        """Prefetch spreads what it wants over the connections it may use, and keeps as many
        bytes in flight as those carry at once: more would only queue (and sit in memory)."""
        connections = self.fetcher.prefetch_connections
        return Prefetcher(self.reader, run_done, connections=connections,
                          budget=connections * settings.MAX_REQUEST_BYTES, listing=listing,
                          resolve=self.fetcher.resolve_ahead, on_loader=self.news.loader, maps=self.maps)

    def _stats(self):
        if self.hub is not None:
            return self.hub.stats(self.config, self.counters, self.store, self.coverage, maps=self.maps,
                                  proxy=self.fetcher.status, extra=self._fuse_numbers)
        return StatsBuilder(self.config, self.snap, self.counters, self.store, self.coverage,
                            proxy=self.fetcher.status, extra=self._fuse_numbers, view=self.view, maps=self.maps)

    @staticmethod
    def _replies() -> Replies | None:
        """FUSE replies from stored files' fds, unless ``NETMOUNT_FD_REPLIES=0`` (a diagnostic:
        the copying path, which a libfuse whose structs do not match gets anyway)."""
        return Replies(libfuse3_path()) if os.environ.get("NETMOUNT_FD_REPLIES", "1") != "0" else None

    def _view(self):
        from netmount.mounting.viewfs import ViewTree
        from netmount.mounting.viewsetup import check_view
        from netmount.views.model import view_from_bytes

        gc.disable()  # tens of thousands of pieces, acyclic (see views/plan.py)
        try:
            planned = view_from_bytes(self.config.view)
            check_view(planned, self.snap)
            view = ViewTree(planned, self.snap, self.reader, self.prefetcher, maps=self.maps)
            gc.freeze()  # and kept for the mount's life: no collection walks them again
            return view
        finally:
            gc.enable()

    def _readahead(self, listing) -> ReadaheadSwitch:
        """A view's files have their own index: it says which open for their header only."""
        p = self.prefetcher
        header_only = self.view.header_only if self.view is not None else p.header_only if p else None

        def held_whole(name: str) -> bool:
            f = listing.file(name)
            return f is not None and any(a <= 0 and b >= f.size for a, b in self.store.held(f.content_id))

        return ReadaheadSwitch(self.config.mountpoint, self.config.readahead_kb, news=self.news,
                               header_only=header_only, data_read=p.data_read if p else None,
                               on_amid_others=p.opened_amid_others if p else None,
                               held_whole=held_whole if self.view is None else None,  # a view's names are its own
                               opener=requester)

    # -- what the FUSE face calls back -----------------------------------------------------
    def _mounted(self) -> int | None:
        """At FUSE INIT (the mount is live): set its readahead, say ready; the readahead goes
        into the INIT reply too (fs.py)."""
        reply = self.readahead.start()
        if self.on_ready:
            self.on_ready()
        return reply

    def _idle(self) -> bytes:
        """For tests and ``netmount prefetch``: nothing fetched, written or scheduled."""
        settled = self.prefetcher.drain(IDLE_WAIT) if self.prefetcher else self.reader.drain(IDLE_WAIT)
        return b"idle\n" if settled else b"busy\n"

    def _stats_json(self) -> bytes:
        return _json(self.stats())

    def _snapshot_json(self, leaf: str) -> bytes:
        """``/.netmount/stats/{folder}@{sha}.json`` of an hf-cache mount: one commit's stats."""
        return _json(self.stats.snapshot(leaf))

    def _fuse_numbers(self) -> dict:
        return {**self.readahead.state(), "max_read_bytes": self.ops.max_read_bytes,
                "fuse_thread_states": kept_states()}

    # -- lifetime ------------------------------------------------------------------------------
    def serve(self) -> None:
        """Serve the mount in this thread until it is unmounted (or SIGTERM/SIGHUP: then
        the fetches in flight fail first, so a read blocked on a stalled server gets EIO)."""
        snap, view = self.snap, self.view
        if self.hub is not None:
            log.info("mounting %s as a Hugging Face cache (%s) on %s", self.hub.endpoint, self.hub.describe(),
                     self.config.mountpoint)
        else:
            log.info("mounting %s@%s (%d files%s) on %s", snap.name, snap.sha, len(snap.files),
                     f", a view of {len(view.files) + len(view.passthrough)}" if view else "", self.config.mountpoint)
        # an hf-cache mount's "no such repo" lasts as long in the kernel as in the namespace
        kernel = {"negative_timeout": self.hub.NEGATIVE_TTL} if self.hub else {}
        serve(self.ops, self.config.mountpoint, allow_other=self.config.allow_other, on_stop=self.fetcher.abort,
              max_read=max_read(self.config.readahead_kb), **kernel)
        log.info("unmounted %s; closing", self.config.mountpoint)

    def close(self) -> None:
        """Close every part in the fixed order of ``closing.py`` (bounded).  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        close_parts(self)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json(record: dict) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()
