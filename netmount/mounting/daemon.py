"""The mount daemon: wires store, fetcher, reader and filesystem, and serves until unmounted.

Runs in-process for ``--foreground``, or as ``python -m netmount.mounting.daemon`` started by
``lifecycle.mount``.  The parent sends the whole configuration (token included) as JSON
on stdin, a planned view's bytes after it (``DaemonConfig.to_bytes``) — nothing secret in
argv or the environment — and waits for one line on stdout:
``ready`` once the kernel has sent FUSE INIT (the mount is live), or ``error: …``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from netmount.core import settings
from netmount.core.units import parse_size
from netmount.remote.hub import Snapshot

log = logging.getLogger("netmount.daemon")
IDLE_WAIT = 60.0  # seconds an open of /.netmount/idle waits for the daemon to settle


@dataclass
class DaemonConfig:
    snapshot: Snapshot
    mountpoint: str
    cache_dir: str
    cache_size: int = parse_size(settings.DEFAULT_CACHE_SIZE)
    block_size: int = settings.DEFAULT_BLOCK_SIZE
    connections: int = settings.DEFAULT_CONNECTIONS
    token: str | None = None
    allow_other: bool = False
    debug: bool = False
    log_file: str = ""
    prefetch: bool = True
    cache_proxy: str | None = None  # netmount cache-proxy URL for file content, or None
    readahead_kb: int | None = None  # None: switched per open (readahead.py); 0: the kernel's; else fixed
    view: bytes | None = None  # a planned view (views.model.view_to_bytes), or None

    def to_bytes(self) -> bytes:
        """One line of JSON, then the view's bytes as they are (they are not JSON)."""
        data = asdict(self)
        data["snapshot"] = json.loads(self.snapshot.to_json())
        view = data.pop("view")
        data["view_bytes"] = None if view is None else len(view)
        return json.dumps(data, separators=(",", ":")).encode() + b"\n" + (view or b"")

    @classmethod
    def from_bytes(cls, raw: bytes) -> "DaemonConfig":
        line, _, view = raw.partition(b"\n")
        data = json.loads(line)
        data["snapshot"] = Snapshot.from_json(json.dumps(data["snapshot"]))
        n = data.pop("view_bytes")
        if (n or 0) != len(view):
            raise ValueError(f"daemon config: {len(view)} view bytes, expected {n or 0}")
        return cls(**data, view=None if n is None else view)


def setup_logging(log_file: str, debug: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def run(config: DaemonConfig, on_ready=None) -> None:
    """Serve the mount in this thread until it is unmounted."""
    # imported here, not at the top: ``netmount mount`` imports this module for DaemonConfig,
    # and aiohttp alone costs it ~0.2 s of start-up
    from cache import DiskBlockStore, MemoryBlockStore, SafeBlockStore
    from netmount.core.counters import Counters
    from netmount.mounting.fs import IDLE_FILE, STATS_FILE, NetmountFS, serve
    from netmount.mounting.readahead import ReadaheadSwitch, max_read
    from netmount.mounting.stats import StatsBuilder
    from netmount.read.coverage import Coverage
    from netmount.read.metadata import TensorMaps
    from netmount.read.prefetch import Prefetcher
    from netmount.read.reader import BlockReader
    from netmount.remote.fetch import RangeFetcher

    snap = config.snapshot
    counters = Counters()
    # An unusable cache dir (full, read-only, corrupt) degrades to a small memory cache:
    # reads keep working from the network.
    store = SafeBlockStore.open(
        lambda: DiskBlockStore(Path(config.cache_dir) / "blocks", config.block_size, config.cache_size),
        logging.getLogger("netmount.cache"),
        lambda: MemoryBlockStore(config.block_size, 256 << 20),
    )
    fetcher = RangeFetcher(snap.endpoint, snap.repo_id, snap.sha, config.token,
                           connections=config.connections, counters=counters,
                           proxy=config.cache_proxy, repo_type=snap.repo_type).start()
    coverage = Coverage()  # which bytes programs read: amplification, per-tensor touched bytes
    readahead = ReadaheadSwitch(config.mountpoint, config.readahead_kb)
    run_done = threading.Event()  # the reader's news to the prefetch pump: a run has finished
    maps = TensorMaps()  # every file's tensor layout, parsed once: for prefetch, stats and views
    reader = BlockReader(store, fetcher, counters=counters, on_served=coverage.record,
                         max_request_bytes=settings.MAX_REQUEST_BYTES, on_run_done=run_done.set)
    # prefetch spreads what it wants over the connections it may use, and keeps as many bytes
    # in flight as those carry at once: more would only queue (and sit in memory)
    prefetcher = Prefetcher(reader, run_done, connections=fetcher.prefetch_connections,
                            budget=fetcher.prefetch_connections * settings.MAX_REQUEST_BYTES,
                            files=snap.files, resolve=fetcher.resolve_ahead,
                            on_loader=readahead.loader, maps=maps) if config.prefetch else None
    if prefetcher is not None:
        readahead.header_only = prefetcher.header_only
        readahead.on_amid_others = prefetcher.opened_amid_others
        readahead.data_read = prefetcher.data_read
    view = None
    if config.view is not None:
        import gc

        from netmount.mounting.viewfs import ViewTree
        from netmount.mounting.viewsetup import check_view
        from netmount.views.model import view_from_bytes

        gc.disable()  # tens of thousands of pieces, acyclic (see views/plan.py)
        planned = view_from_bytes(config.view)
        check_view(planned, snap)
        view = ViewTree(planned, snap, reader, prefetcher, maps=maps)
        readahead.header_only = view.header_only  # its files, its index: not the source's
        gc.freeze()  # and kept for the mount's life: no collection walks them again
        gc.enable()
    stats = StatsBuilder(config, snap, counters, store, coverage, head=reader.local_head,
                         proxy=fetcher.status,
                         extra=lambda: {**readahead.state(), "max_read_bytes": ops.max_read_bytes}, view=view,
                         maps=maps)
    def idle() -> bytes:  # for tests and ``netmount prefetch``: no polling of stats
        drained = prefetcher.drain(IDLE_WAIT) if prefetcher is not None else reader.drain(IDLE_WAIT)
        return b"idle\n" if drained else b"busy\n"

    def stats_json() -> bytes:
        return (json.dumps(stats(), separators=(",", ":")) + "\n").encode()

    def mounted() -> int | None:
        """At FUSE INIT (the mount is live): set its readahead, say ready; the readahead goes
        into the INIT reply too (fs.py)."""
        reply = readahead.start()
        if on_ready:
            on_ready()
        return reply

    from netmount.mounting.drop import make_drop

    drop = make_drop(store, reader, lambda: reader.drain(IDLE_WAIT), stats.forget)  # /.netmount/drop/<path>
    ops = NetmountFS(snap, reader, {STATS_FILE: stats_json, IDLE_FILE: idle}, mounted, prefetcher,
                     on_drop=drop, view=view, on_open=readahead.opening,
                     on_release=readahead.released, on_read=readahead.reading)
    log.info("mounting %s@%s (%d files%s) on %s", snap.name, snap.sha, len(snap.files),
             f", a view of {len(view.files) + len(view.passthrough)}" if view else "", config.mountpoint)
    try:
        # SIGTERM/SIGHUP: fail the requests in flight, and any later one, first (a read
        # blocked on a stalled server gets EIO now and frees its FUSE worker), then the
        # FUSE loop ends; fetcher.close() below stops its loop once nothing reads any more
        serve(ops, config.mountpoint, allow_other=config.allow_other, on_stop=fetcher.abort,
              max_read=max_read(config.readahead_kb))
    finally:
        log.info("unmounted %s; closing", config.mountpoint)
        if prefetcher is not None:
            prefetcher.close()
        stats.close()
        reader.close()
        fetcher.close()
        store.close()


def _preload() -> None:
    """Import everything ``run`` imports (libfuse3's binding, the cache, the reader) before the
    configuration arrives; aiohttp (~0.3 s of CPU) on a thread of its own meanwhile, which
    the way to a live mount does not wait for: RangeFetcher opens its session on its loop
    thread, importing aiohttp there (remote/fetch.py), and the kernel mount goes on beside
    it.  A failure here is ``run``'s (or the fetcher's) to report.

    Cyclic GC is off meanwhile (imports make few garbage cycles; its ~70 collections cost
    ~0.06 s), and what they made is frozen: later collections never walk it again."""
    import gc

    gc.disable()
    try:
        import cache  # noqa: F401
        import netmount.mounting.drop  # noqa: F401
        import netmount.mounting.fs  # noqa: F401
        import netmount.mounting.readahead  # noqa: F401
        import netmount.mounting.stats  # noqa: F401
        import netmount.mounting.viewfs  # noqa: F401
        import netmount.mounting.viewsetup  # noqa: F401
        import netmount.read.prefetch  # noqa: F401
        import netmount.remote.fetch  # noqa: F401
    except Exception:  # run() imports them again, and reports
        pass

    def http_client() -> None:
        try:
            from netmount.remote.fetch import import_client

            import_client()
        except Exception:  # the fetcher imports it again, and logs
            pass
        finally:
            gc.freeze()
            gc.enable()

    threading.Thread(target=http_client, name="netmount-preload", daemon=True).start()


def _stderr_to(log_file: str) -> None:
    """Point fd 2 at the log file: the parent starts the daemon before it knows which file
    (lifecycle.start_daemon), with stderr on /dev/null."""
    if not log_file:
        return
    try:
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:  # setup_logging, on the same file, reports it
        return
    os.dup2(fd, 2)
    os.close(fd)


def main() -> int:
    """Entry point of the background daemon (see module docstring for the protocol)."""
    _preload()  # while the parent checks its input and asks the Hub (lifecycle.mount)
    config = DaemonConfig.from_bytes(sys.stdin.buffer.read())
    _stderr_to(config.log_file)  # libfuse's own messages ("fuse: ...") land in the log too
    setup_logging(config.log_file, config.debug)
    ready_out = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # libfuse and stray prints must not write into the parent's pipe

    def ready() -> None:
        ready_out.write("ready\n")
        ready_out.flush()
        ready_out.close()

    try:
        run(config, on_ready=ready)
    except BaseException as exc:  # report to the waiting parent, then to the log
        log.exception("daemon failed")
        if not ready_out.closed:
            ready_out.write(f"error: {type(exc).__name__}: {exc}\n")
            ready_out.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
