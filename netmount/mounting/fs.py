"""The FUSE face of a mount (the only fusepy user): thin operations over the core.

Look up the path, make one call into the reader, map errors to errno.  Files are
immutable at the pinned commit, so the kernel may keep their pages across opens
(``keep_cache``).  ``st_blocks`` reports *cached* bytes (``du`` shows what is local,
``ls -l`` the full size).  Hidden control files under ``/.netmount`` (not in the root's
``readdir``), read with ``direct_io`` so every open sees fresh content: ``stats.json``
(the numbers), ``idle`` (its open waits until nothing is in flight: tests and
``netmount prefetch`` wait on it instead of polling).
``/.netmount/drop/<path>``: opening it makes the daemon forget every cached byte of that
file (``drop.py``; ``netmount verify`` uses it after a digest mismatch).
``/.netmount/raw/<path>`` serves the same files without the daemon's prefetch, so an
explicit ``netmount prefetch`` of some tensors fetches those and nothing more.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
from typing import Callable

from fuse import FUSE, FuseOSError, Operations

from netmount.core.blocks import PAGE
from netmount.core.errors import FetchError
from netmount.read.reader import BlockReader
from netmount.remote.hub import RemoteFile, Snapshot

log = logging.getLogger("netmount.fs")

CONTROL_DIR = "/.netmount"
STATS_FILE = CONTROL_DIR + "/stats.json"
IDLE_FILE = CONTROL_DIR + "/idle"  # opening it waits until the daemon has nothing in flight
RAW_DIR = CONTROL_DIR + "/raw"  # the same tree, read without daemon prefetch (``netmount prefetch``)
DROP_DIR = CONTROL_DIR + "/drop"  # opening drop/<path> drops that file's cached bytes (``netmount verify``)


class NetmountFS(Operations):
    use_ns = True

    def __init__(
        self,
        snapshot: Snapshot,
        reader: BlockReader,
        controls: dict[str, Callable[[], bytes]],
        on_ready: Callable[[], None] | None = None,
        prefetcher=None,
        on_drop: Callable[[RemoteFile], bytes] | None = None,
    ) -> None:
        self.snapshot, self.reader, self.on_ready = snapshot, reader, on_ready
        self.controls = controls  # hidden control files: path -> what an open of it reads
        self.prefetcher = prefetcher
        self.on_drop = on_drop  # what an open of /.netmount/drop/<path> does (drop.py)
        self.files: dict[str, RemoteFile] = {"/" + f.path: f for f in snapshot.files}
        self.dirs: dict[str, set[str]] = {"/": set()}
        for f in snapshot.files:
            parts = f.path.split("/")
            for depth in range(len(parts)):
                parent = "/" + "/".join(parts[:depth])
                self.dirs.setdefault(parent.rstrip("/") or "/", set()).add(parts[depth])
        self.uid, self.gid = os.getuid(), os.getgid()
        self.mtime_ns = time.time_ns()
        self._handles = itertools.count(1)
        self._control: dict[int, bytes] = {}
        self._control_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def init(self, path):
        if self.on_ready:
            self.on_ready()

    def _split(self, path: str) -> tuple[str, bool]:
        """A path under ``/.netmount/raw`` -> (the repo path, True); others -> (path, False)."""
        if path == RAW_DIR:
            return "/", True
        if path.startswith(RAW_DIR + "/"):
            rest = path[len(RAW_DIR):]
            if rest == CONTROL_DIR or rest.startswith(CONTROL_DIR + "/"):
                return "/\0", True  # no control files inside the mirror: a name that never exists
            return rest, True
        return path, False

    def _drop_target(self, path: str) -> str | None:
        """``/.netmount/drop/<p>`` -> ``/<p>`` (a file or folder of the repo), else None."""
        if self.on_drop is None:
            return None
        if path == DROP_DIR:
            return "/"
        if path.startswith(DROP_DIR + "/"):
            return path[len(DROP_DIR):]
        return None

    # -- metadata --------------------------------------------------------------------------
    def getattr(self, path, fh=None):
        target = self._drop_target(path)
        path, _raw = self._split(path)
        base = {"st_uid": self.uid, "st_gid": self.gid, "st_nlink": 1,
                "st_atime": self.mtime_ns, "st_mtime": self.mtime_ns, "st_ctime": self.mtime_ns}
        if target is not None:  # the repo's tree again, its files as empty control files
            if target in self.files:
                return {**base, "st_mode": stat.S_IFREG | 0o444, "st_size": 0}
            if target in self.dirs:
                return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0}
            raise FuseOSError(errno.ENOENT)
        f = self.files.get(path)
        if f is not None:
            cached = min(self._cached_bytes(f), f.size)
            return {**base, "st_mode": stat.S_IFREG | 0o444, "st_size": f.size,
                    "st_blocks": (cached + 511) // 512, "st_blksize": 1 << 20}
        if path in self.dirs or path == CONTROL_DIR:
            return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0}
        if path in self.controls:
            return {**base, "st_mode": stat.S_IFREG | 0o444, "st_size": 0}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        path, _raw = self._split(path)
        children = self.dirs.get(path)
        if children is None:
            if path == CONTROL_DIR:
                extra = ["drop", "raw"] if self.on_drop is not None else ["raw"]
                return [".", "..", *sorted(p.rpartition("/")[2] for p in self.controls), *extra]
            raise FuseOSError(errno.ENOENT)
        return [".", "..", *sorted(children)]

    def statfs(self, path):
        total = sum(f.size for f in self.files.values())
        return {"f_bsize": PAGE, "f_frsize": PAGE, "f_blocks": -(-total // PAGE),
                "f_bfree": 0, "f_bavail": 0, "f_files": len(self.files), "f_ffree": 0,
                "f_namemax": 255}

    def access(self, path, amode):
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        path, _raw = self._split(path)
        self.getattr(path)
        return 0

    # -- data ------------------------------------------------------------------------------
    def open(self, path, fi):
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise FuseOSError(errno.EROFS)
        target = self._drop_target(path)
        if path in self.controls or (target is not None and target in self.files):
            fi.fh = next(self._handles)
            fi.direct_io = 1  # fresh content at every open
            content = self.controls[path]() if target is None else self.on_drop(self.files[target])
            with self._control_lock:
                self._control[fi.fh] = content
            return 0
        path, _raw = self._split(path)
        if path not in self.files:
            raise FuseOSError(errno.EISDIR if path in self.dirs else errno.ENOENT)
        fi.fh = next(self._handles)  # the prefetch policy keeps sequential state per handle
        fi.keep_cache = 1
        return 0

    def read(self, path, size, offset, fi):
        path, raw = self._split(path)
        f = self.files.get(path)
        if f is None:
            with self._control_lock:
                content = self._control.get(fi.fh)
            if content is None:
                raise FuseOSError(errno.EBADF)
            return content[offset : offset + size]
        # the daemon's prefetch sees the program's reads, not the raw mirror's (``netmount prefetch``)
        policy = None if raw else self.prefetcher
        try:
            exact = policy.plan(fi.fh, f, offset, size) if policy is not None else None
            data = self.reader.read(f, offset, size, exact=exact)
            if policy is not None:
                policy.follow(fi.fh, f, offset, len(data))
            return data
        except FetchError as exc:
            log.error("read %s [%d, +%d) failed: %s", path, offset, size, exc)
            raise FuseOSError(errno.EIO)
        except Exception:
            log.exception("read %s [%d, +%d) failed unexpectedly", path, offset, size)
            raise FuseOSError(errno.EIO)

    def release(self, path, fi):
        with self._control_lock:
            self._control.pop(fi.fh, None)
        if self.prefetcher is not None:
            self.prefetcher.forget(fi.fh)
        return 0

    # -- helpers ---------------------------------------------------------------------------
    def _cached_bytes(self, f: RemoteFile) -> int:
        try:
            return self.reader.store.cached_bytes(f.content_id)
        except Exception:
            return 0


def serve(ops: NetmountFS, mountpoint: str, *, allow_other: bool = False, debug: bool = False) -> None:
    """Run the FUSE loop in this thread until unmounted (libfuse handles SIGINT/SIGTERM)."""
    label = f"netmount:{ops.snapshot.repo_id}"
    options = dict(
        foreground=True, nothreads=False, ro=True, raw_fi=True,
        fsname=label.replace(",", "_"), subtype="netmount",
        kernel_cache=True, attr_timeout=2.0, entry_timeout=3600.0, negative_timeout=3600.0,
        max_readahead=128 << 10,  # a page fault reads 128 KiB around it, not 1 MiB: prefetch does the rest
    )
    if allow_other:
        options["allow_other"] = True
    if debug:
        options["debug"] = True
    FUSE(ops, mountpoint, **options)
