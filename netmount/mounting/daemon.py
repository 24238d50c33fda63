"""The mount daemon's program: its configuration, its protocol with the parent, its logging.

``run`` serves until unmounted; ``owner.Daemon`` builds and closes the parts.

Runs in-process for ``--foreground``, or as ``python -m netmount.mounting.daemon`` started by
``lifecycle.mount``.  The parent sends the whole configuration (token included) as JSON
on stdin, a planned view's bytes after it (``DaemonConfig.to_bytes``) — nothing secret in
argv or the environment — and waits for one line on stdout:
``ready`` once the kernel has sent FUSE INIT (the mount is live), or ``error: …``.
An ``--hf-cache`` mount has no snapshot: ``hf_cache`` holds its endpoint, refs TTL and the
repos pinned (``hfcache/options.daemon_spec``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field

from netmount.core import settings
from netmount.core.units import parse_size
from netmount.remote.hub import Snapshot

log = logging.getLogger("netmount.daemon")


@dataclass
class DaemonConfig:
    snapshot: Snapshot | None  # None: an --hf-cache mount (``hf_cache``)
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
    # bytes the parent fetched for the view (headers, index, config) as (path, offset, bytes):
    # the daemon stores them, as it stores whatever it fetches itself
    seed: list[tuple[str, int, bytes]] = field(default_factory=list)
    hf_cache: dict | None = None  # --hf-cache: hfcache.options.daemon_spec, else None

    def to_bytes(self) -> bytes:
        """One line of JSON, then the view's bytes and the seed's as they are (not JSON)."""
        data = asdict(self)
        data["snapshot"] = json.loads(self.snapshot.to_json()) if self.snapshot is not None else None
        view = data.pop("view")
        seed = data.pop("seed")
        data["view_bytes"] = None if view is None else len(view)
        data["seed_ranges"] = [(path, offset, len(chunk)) for path, offset, chunk in seed]
        return b"".join([json.dumps(data, separators=(",", ":")).encode(), b"\n", view or b"",
                         *(bytes(chunk) for _, _, chunk in seed)])

    @classmethod
    def from_bytes(cls, raw: bytes) -> "DaemonConfig":
        line, _, rest = raw.partition(b"\n")
        data = json.loads(line)
        if data["snapshot"] is not None:
            data["snapshot"] = Snapshot.from_json(json.dumps(data["snapshot"]))
        n = data.pop("view_bytes")
        ranges = data.pop("seed_ranges", [])
        if (n or 0) + sum(length for _, _, length in ranges) != len(rest):
            raise ValueError(f"daemon config: {len(rest)} bytes after the line, expected "
                             f"{(n or 0) + sum(length for _, _, length in ranges)}")
        view, pos, seed = rest[: n or 0], n or 0, []
        for path, offset, length in ranges:
            seed.append((path, offset, rest[pos : pos + length]))
            pos += length
        return cls(**data, view=None if n is None else view, seed=seed)


def setup_logging(log_file: str, debug: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def run(config: DaemonConfig, on_ready=None) -> None:
    """Serve the mount in this thread until it is unmounted: ``owner.Daemon`` builds every
    part, and closes them in a fixed order, each wait bounded, however serving ends."""
    # imported here, not at the top: ``netmount mount`` imports this module for DaemonConfig,
    # and the daemon's parts cost it start-up time
    from netmount.mounting.owner import Daemon

    with Daemon(config, on_ready) as daemon:
        daemon.serve()


def _preload() -> None:
    """Import everything ``run`` imports (libfuse3's binding, the cache, the reader, the
    fetcher: http.client, no aiohttp) before the configuration arrives.  A failure here is
    ``run``'s to report.

    Cyclic GC is off meanwhile (imports make few garbage cycles; its ~70 collections cost
    ~0.06 s), and what they made is frozen: later collections never walk it again."""
    import gc

    gc.disable()
    try:
        import netmount.mounting.owner  # noqa: F401  (the cache, fs, reader, prefetch, fetcher)
        import netmount.mounting.viewfs  # noqa: F401
        import netmount.mounting.viewsetup  # noqa: F401
    except Exception:  # run() imports them again, and reports
        pass
    finally:
        gc.freeze()
        gc.enable()


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
