"""``/.netmount/stats.json``: what a live mount publishes, and reading it back from a shell.

The daemon side (``StatsBuilder``) runs every time the control file is opened, so it must
stay cheap and must never cause network traffic: tensors are listed only for safetensors
files whose header was parsed already (the prefetcher's, on a program's read) or whose
header bytes the store holds; the header of any other file is not known yet.  The client
side (``read_stats``) is what ``netmount stats`` and ``netmount prefetch`` call;
``wait_idle`` waits (no polling) until the daemon has nothing in flight, so the numbers read
next are settled (``read_stats(mountpoint, settled=True)`` does both).

Keys (all byte counts are integers): ``mountpoint repo revision block_size bytes_served
bytes_fetched requests retries errors cache_hits cache_misses cached_bytes total_bytes
download_rate download_rate_avg serve_rate amplification files[{path size cached_bytes fetched_bytes
served_bytes read_bytes cached_runs cached_ranges}] tensors[{name file nbytes touched_bytes}]``.
``proxy`` is None without ``--cache-proxy``, else ``{url state retry_in last_error requests bytes hits
misses bypass fallbacks skipped}``: ``state`` is the breaker's (closed = in use, open =
backing off for ``retry_in`` more seconds, probing), hits/misses/bypass count the proxy's ``X-Cache-Status``, fallbacks
the requests that went to the origin after a proxy fault, skipped those sent there while
it was backed off.
On a view mount also ``view_files`` (what the mount shows: ``path size cached_bytes
served_bytes read_bytes cached_runs sources``, runs in blocks of the view file) and
``view_bytes``; ``files`` stay the repo's files and ``tensors`` are the view's.
``download_rate`` and ``serve_rate`` are bytes per second fetched and served to programs over the
last 5 s (what the daemon moves now: the link's pace, and the mount's as programs see it).
``amplification`` is bytes fetched / distinct bytes programs read (None before any read);
``cached_runs`` are ``[first, last]`` block index runs (inclusive) of the cached blocks.
``cached_bytes`` count every byte the store holds, pieces of blocks included (what ``du``
shows); ``cached_runs`` only whole blocks; ``cached_ranges`` are the held ``[start, end)``
byte ranges, pieces included (they add up to ``cached_bytes``).
For ``netmount verify``: ``cache_dir`` (the cache directory whose ``store-vN`` holds the
blocks, None on the memory fallback), ``cache_size``, ``verified_files``, and per file
``content_id`` (the listing's LFS sha256, else its git blob sha1), ``lfs`` and ``verified``
(every byte stored and hashed right since any of it last changed: ``cache/index.py``).
From a live daemon also ``read_ahead_kb`` (the mount's kernel readahead the daemon set last,
or None) with ``read_ahead_note`` (why not, or None), ``read_ahead_mode`` (switching, fixed,
kernel), ``read_ahead_switches``, ``read_ahead_large_opens``, ``read_ahead_loading`` (folders
whose files open large now: ``readahead.py``) and ``max_read_bytes`` (the largest FUSE read
request seen: up to 1 MiB with readahead raised, 128 KiB without) and ``fuse_thread_states``
(libfuse worker threads whose Python thread state is kept: ``threadstate.py``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time

from netmount.core import errors
from netmount.core.blocks import coalesce
from netmount.core.ranges import Ranges
from netmount.mounting import mounts
from netmount.read.metadata import NotLocal, TensorMaps

log = logging.getLogger("netmount.stats")

STATS_FILE = os.path.join(".netmount", "stats.json")
# how reads were answered: from the store alone, waiting on bytes already being fetched
# (joined), or fetching (read/reader.py)
TIER_COUNTERS = ("cache_hits", "joined_reads", "cache_misses")
IDLE_FILE = os.path.join(".netmount", "idle")  # its open returns once nothing is in flight


# -- daemon side ----------------------------------------------------------------------------

class RateMeter:
    """Download rate over the last ``window`` seconds, from a counter sampled each ``period``."""

    def __init__(self, value, period: float = 1.0, window: float = 5.0) -> None:
        self._value = value
        self._period = period
        self._samples: collections.deque = collections.deque(maxlen=max(2, int(window / period) + 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netmount-rate", daemon=True)

    def start(self) -> "RateMeter":
        self._samples.append((time.monotonic(), self._value()))
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._samples.append((time.monotonic(), self._value()))

    def rate(self) -> float:
        """Bytes per second between the oldest sample kept and now."""
        if not self._samples:
            return 0.0
        t0, v0 = self._samples[0]
        dt = time.monotonic() - t0
        return (self._value() - v0) / dt if dt > 0.05 else 0.0

    def close(self) -> None:
        self._stop.set()


class HeaderCache:
    """Tensor names of safetensors files for stats.json, from the daemon's one cache of
    layouts (``read/metadata.py``, shared with the prefetcher and views); never fetches: a
    header nobody parsed yet is parsed from the bytes the store holds, and looked for again
    next time when they are not held."""

    def __init__(self, store, maps: TensorMaps | None = None) -> None:
        self.store = store
        self.block_size = store.block_size
        self.maps = maps if maps is not None else TensorMaps()

    def tensors(self, f) -> list[tuple[str, int, int]] | None:
        """``[(name, start, end), ...]`` of ``f``, or None (not safetensors, not local, corrupt)."""
        if not f.path.endswith(".safetensors"):
            return None
        layout = self.maps.layout(f.content_id, f.path, f.size, lambda a, b: self._local(f, a, b), self.block_size)
        return list(layout.names) if layout is not None and layout.names is not None else None

    def forget(self, f) -> None:
        self.maps.forget(f.content_id)

    def _local(self, f, start: int, end: int) -> bytes:
        """The held bytes from ``start`` on, up to ``end`` (read_header takes a short first
        read: a header fetched on its own is held without the rest of its block)."""
        held = Ranges(self.store.held(f.content_id)).intersect(start, end)
        data = None
        if held and held[0][0] == start:
            data = self.store.read(f.content_id, start, held[0][1] - start, f.size)
        if data is None:
            raise NotLocal
        return data


class Meters:
    """What a stats builder keeps between builds: tensor names (the header cache), the download
    and serving rates, and the lock that makes one build at a time."""

    def __init__(self, counters, store, maps: TensorMaps | None = None) -> None:
        self.headers = HeaderCache(store, maps)
        self.rate = RateMeter(lambda: counters.get("bytes_fetched")).start()
        self.served = RateMeter(lambda: counters.get("bytes_served")).start()
        self._lock = threading.Lock()  # one build at a time

    def forget(self, f) -> None:
        """``f``'s cached bytes were dropped (``netmount verify``): parse its header anew."""
        with self._lock:
            self.headers.forget(f)

    def close(self) -> None:
        self.rate.close()
        self.served.close()


class StatsBuilder(Meters):
    """The callable the filesystem runs for each open of the stats file."""

    def __init__(self, config, snap, counters, store, coverage=None, head=None, proxy=None,
                 extra=None, view=None, maps: TensorMaps | None = None) -> None:
        super().__init__(counters, store, maps)
        self.config, self.snap, self.counters, self.store = config, snap, counters, store
        self.view = view  # a viewfs.ViewTree on a view mount: its files get their own entries
        self.extra = extra  # the FUSE face's numbers: readahead, largest request
        self.coverage = coverage
        self.proxy = proxy  # () -> the fetcher's proxy status, or None

    def __call__(self) -> dict:
        with self._lock:
            out = build_stats(self.config, self.snap, self.counters, self.store,
                              coverage=self.coverage, headers=self.headers, rate=self.rate,
                              served=self.served,
                              proxy=self.proxy() if self.proxy is not None else None)
            if self.extra is not None:
                out.update(self.extra())
            if self.view is not None:
                add_view(out, self.view, self.config.block_size)
            return out


def build_stats(config, snap, counters, store, *, coverage=None, headers=None, rate=None,
                served=None, proxy=None, name=None, per_file=None) -> dict:
    """stats.json of one snapshot: a plain or view mount's, or one snapshot of an hf-cache mount
    (``name(f)``: a file's path in the mount, default its repo path; ``per_file``: the fetched
    and served bytes by that path, default the counters')."""
    name = name or (lambda f: f.path)
    per_file = counters.per_file() if per_file is None else per_file
    files = [file_record(f, name(f), store, coverage, per_file.get(name(f), {})) for f in snap.files]
    tensors = [t for f in snap.files for t in tensor_records(f, name(f), headers, coverage)]
    read_total = sum(r["read_bytes"] for r in files)
    return {
        "mountpoint": config.mountpoint,
        "repo": snap.name,
        "revision": snap.sha,
        "requested_revision": snap.revision,
        "endpoint": snap.endpoint,
        **mount_numbers(config, counters, store, read_total, rate=rate, served=served, proxy=proxy),
        "cached_bytes": sum(r["cached_bytes"] for r in files),
        "verified_files": sum(r["verified"] for r in files),
        "total_bytes": sum(f.size for f in snap.files),
        "files": files,
        "tensors": tensors,
    }


def mount_numbers(config, counters, store, read_total: int, *, rate=None, served=None, proxy=None) -> dict:
    """What every mount publishes about itself: its daemon, traffic, rates and cache."""
    values = counters.snapshot()
    uptime = max(time.time() - counters.started, 1e-9)
    fetched = values.get("bytes_fetched", 0)
    return {
        "block_size": config.block_size,
        "pid": os.getpid(),
        "uptime_s": round(uptime, 3),
        "bytes_served": values.get("bytes_served", 0),
        "bytes_fetched": fetched,
        "bytes_read": read_total,
        "requests": values.get("requests", 0),
        "retries": values.get("retries", 0),
        "errors": values.get("errors", 0),
        "cache_hits": values.get("cache_hits", 0),
        "cache_misses": values.get("cache_misses", 0),
        "prefetch_blocks": values.get("prefetch_blocks", 0),
        # how served reads were answered (read/reader.py)
        "tiers": {name: values.get(name, 0) for name in TIER_COUNTERS},
        "cache_dir": _disk_dir(store),
        "cache_size": getattr(config, "cache_size", None),
        "download_rate": round(rate.rate()) if rate is not None else 0,
        "download_rate_avg": round(fetched / uptime),
        "serve_rate": round(served.rate()) if served is not None else 0,
        "amplification": round(fetched / read_total, 4) if read_total else None,
        "proxy": proxy,
    }


def file_record(f, path: str, store, coverage, counted: dict) -> dict:
    """One file of ``files``: ``path`` as the mount shows it, what the store holds of its
    content, and ``counted`` (its ``bytes_fetched`` and ``bytes_served``)."""
    try:
        cached = min(store.cached_bytes(f.content_id), f.size)
        runs = coalesce(store.cached_indices(f.content_id)) if cached else []
        ranges = store.cached_ranges(f.content_id) if cached else []
    except Exception:
        cached, runs, ranges = 0, [], []
    return {
        "path": path,
        "size": f.size,
        "cached_bytes": cached,
        "fetched_bytes": counted.get("bytes_fetched", 0),
        "served_bytes": counted.get("bytes_served", 0),
        "read_bytes": coverage.covered_bytes(path) if coverage is not None else 0,
        "cached_runs": [list(r) for r in runs],
        "cached_ranges": [list(r) for r in ranges],
        "content_id": f.content_id,
        "lfs": f.lfs,
        "verified": cached == f.size and _is_verified(store, f.content_id),
    }


def tensor_records(f, path: str, headers, coverage) -> list[dict]:
    """The tensors of ``f`` whose header is known (never fetched for this), with the bytes of
    each that programs read."""
    known = headers.tensors(f) if headers is not None else None
    if not known:
        return []
    touched = coverage.touched(path, [(s, e) for _, s, e in known]) if coverage is not None else [0] * len(known)
    return [{"name": name, "file": path, "nbytes": e - s, "touched_bytes": t}
            for (name, s, e), t in zip(known, touched)]


def add_view(out: dict, view, block_size: int) -> None:
    """On a view mount: ``view_files`` are what the mount shows (view files and passthrough
    files, with ``sources`` for view files), ``tensors`` those of the view files; ``files``
    stay the repo's (source) files, which is what the cache holds and ``verify`` checks."""
    files, tensors = view.stats(block_size)
    by_path = {f["path"]: f for f in out["files"]}
    shown = [dict(by_path[f.path], sources=[f.path]) for f in view.passthrough]
    out["view_files"] = shown + files
    out["tensors"] = [t for t in out["tensors"] if t["file"] in {f.path for f in view.passthrough}] + tensors
    out["view_bytes"] = sum(f["size"] for f in out["view_files"])


def _is_verified(store, content_id: str) -> bool:
    try:
        return bool(store.is_verified(content_id))
    except Exception:  # a store without marks
        return False


def _disk_dir(store) -> str | None:
    """The cache directory holding the disk store (``<cache_dir>/store-vN``), or None when
    the daemon runs on its memory fallback (``netmount verify`` opens the store there)."""
    inner = getattr(store, "inner", store)
    directory = getattr(inner, "directory", None)
    return os.path.dirname(os.path.abspath(directory)) if directory is not None else None


# -- client side ----------------------------------------------------------------------------

def _mount_path(mountpoint: str | os.PathLike) -> str:
    """``mountpoint`` made absolute, if it is a live netmount mount; else the one-line error."""
    path = os.path.abspath(os.fspath(mountpoint))
    if mounts.find_mount(path) is None:
        if mounts.is_dead(path):
            raise errors.MountpointError(
                f"{path}: its netmount daemon is gone (run: netmount unmount {path})")
        raise errors.NotAMount(f"{path} is not a netmount mount")
    return path


def locate(target: str | os.PathLike) -> tuple[str, str]:
    """(the netmount mountpoint, the path inside it: "" for the mountpoint itself) of a path in a
    live mount; ``NotAMount`` (or the dead mount's error) for any other path."""
    path = os.path.abspath(os.fspath(target))
    if mounts.find_mount(path) is not None:
        return path, ""
    for candidate in (path, os.path.realpath(path)):
        under = [e.mountpoint for e in mounts.list_mounts() if candidate.startswith(e.mountpoint.rstrip("/") + "/")]
        if under:
            mp = max(under, key=len)
            return mp, os.path.relpath(candidate, mp)
    return _mount_path(path), ""  # raises: no mount holds it


def read_stats(target: str | os.PathLike, settled: bool = False) -> dict:
    """The stats of the netmount mount at ``target``; ``NotAMount`` if it is not one.  A path
    inside an hf-cache mount's snapshot (``models--org--name/snapshots/{sha}[/...]``) gets that
    snapshot's stats, a plain mount's shape: ``root`` is the snapshot's folder in the mount,
    ``scope`` the path below it named (""), ``mountpoint`` the mount's.

    ``settled=True``: first wait (``wait_idle``) until nothing is fetched, written behind or
    scheduled, so the numbers are final for the reads done so far (counted after a program's
    reads, they agree with the server's byte log); ``MountpointError`` if the daemon is still
    busy when it gives up waiting.  Unsettled (the default, what ``netmount stats`` shows) is a
    live mount mid-work: a read's bytes may be fetched and not yet counted as cached."""
    mountpoint, inside = locate(target)
    if settled and not wait_idle(mountpoint):
        raise errors.MountpointError(f"{mountpoint}: still fetching when its daemon stopped waiting "
                                     f"for it to settle: its stats would not be final")
    if not inside:
        return _read_json(mountpoint, STATS_FILE, "stats")
    parts = inside.split("/")
    hf_cache = os.path.isdir(os.path.join(mountpoint, ".netmount", "stats"))  # (only an hf-cache mount has it)
    if len(parts) < 3 or parts[1] != "snapshots" or not hf_cache:
        raise errors.BadInput(f"{os.path.abspath(target)}: not a mountpoint, nor in a snapshot of an --hf-cache "
                              f"mount (models--org--name/snapshots/<sha>): name the mountpoint {mountpoint}")
    scoped = os.path.join(".netmount", "stats", f"{parts[0]}@{parts[2]}.json")
    out = _read_json(mountpoint, scoped, "snapshot's stats")
    out["scope"] = "/".join(parts[3:])
    return out


def _read_json(mountpoint: str, control: str, what: str) -> dict:
    try:
        with open(os.path.join(mountpoint, control), "rb") as fh:
            return json.loads(fh.read())
    except OSError as exc:
        raise errors.MountpointError(f"{mountpoint}: cannot read its {what}: {exc.strerror or exc}") from None
    except ValueError:
        raise errors.MountpointError(f"{mountpoint}: its {what} file is not valid JSON") from None


def wait_idle(target: str | os.PathLike) -> bool:
    """Block until the daemon serving ``target`` (a mountpoint or a path in one) is settled: no
    read under way, nothing fetched or scheduled (blocks, exact ranges, heads; prefetch decided
    and done), every fetched byte written to the store; True then, False if it was still busy
    when the daemon gave up waiting (``daemon.IDLE_WAIT``).  One open of ``/.netmount/idle``:
    the wait happens in the daemon, on its own events (``BlockReader.drain``, ``Pump.drain``),
    never by polling.  Errors as ``read_stats``."""
    path = locate(target)[0]
    try:
        with open(os.path.join(path, IDLE_FILE), "rb") as fh:
            answer = fh.read()
    except OSError as exc:
        raise errors.MountpointError(f"{path}: cannot read its idle file: {exc.strerror or exc}") from None
    return answer == b"idle\n"


def live_stats(mountpoints=(), on_error=None) -> list[dict]:
    """Stats of the named mounts, or of every live netmount mount when none is named.

    Unnamed mounts that cannot be read (a dead daemon) go to ``on_error(exc)`` and are
    left out: one broken mount must not hide the others.
    """
    if mountpoints:
        return [read_stats(m) for m in mountpoints]
    out = []
    for entry in mounts.list_mounts():
        try:
            out.append(read_stats(entry.mountpoint))
        except errors.NetmountError as exc:
            (on_error or (lambda e: log.warning("%s", e)))(exc)
    return out
