"""The FUSE face of a mount (the only user of the binding, mfusepy on libfuse3): thin
operations over the core.

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
Control folders (``control_dirs``; an hf-cache mount's ``/.netmount/stats/``): any name in one
opens as a control file whose content is made from the name (``{folder}@{sha}.json``: one
snapshot's stats).
What a path is comes from a namespace (``namespace.py``): the repo's files, for a view
mount (``--reshard``/``--only``/``--experts``) the view's (``viewfs.py`` serves them), for
``--hf-cache`` the Hub in huggingface_hub's cache layout (no snapshot: ``snapshot`` is None).
``drop/`` names the repo's files (a view mount's sources: what ``netmount verify`` checks and
what the cache holds), or an hf-cache mount's files by their paths in it.  The readahead
switch is told a file's path in the mount at open: per (repo, commit, path) on an hf-cache mount.

libfuse3, not libfuse2: it negotiates ``max_pages``, so a read request carries up to 1 MiB
where libfuse2 caps every request at 128 KiB (each request costs the daemon ~0.4 ms).  How
large requests get is then up to the kernel's readahead for the mount (daemon.py sets it).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import signal
import stat
import threading
import time
from typing import Callable

from cache import Segment
from netmount.core.blocks import PAGE
from netmount.core.errors import FetchError, FuseUnavailable
from netmount.mounting.libfuse import APT_FUSE, libfuse3_path
from netmount.mounting.namespace import (
    DIR,
    Namespace,
    Node,
    NotAFolder,
    NotFound,
    Unavailable,
    data_node,
    plain_namespace,
    view_namespace,
)
from netmount.mounting.replies import FUSE_CAP_SPLICE_MOVE, FUSE_CAP_SPLICE_WRITE, Replies
from netmount.mounting.threadstate import keep_thread_state
from netmount.read.reader import BlockReader, join
from netmount.remote.hub import RemoteFile, Snapshot

log = logging.getLogger("netmount.fs")


def _bind_libfuse3():
    """Import mfusepy bound to libfuse3.  Left alone it binds libfuse2 whenever both are
    installed (it looks for "fuse" first); ``FUSE_LIBRARY_PATH``, read once at its import,
    points it at libfuse3."""
    path = libfuse3_path()
    before = os.environ.get("FUSE_LIBRARY_PATH")
    os.environ["FUSE_LIBRARY_PATH"] = path
    try:
        import mfusepy
    except (OSError, AttributeError) as exc:  # not loadable, or a version mfusepy refuses
        raise FuseUnavailable(f"cannot load libfuse3 ({path}: {exc}): {APT_FUSE}") from None
    finally:
        if before is None:
            os.environ.pop("FUSE_LIBRARY_PATH", None)
        else:
            os.environ["FUSE_LIBRARY_PATH"] = before
    if mfusepy.fuse_version_major != 3:
        raise FuseUnavailable(f"{path} is libfuse {mfusepy.fuse_version_major}, not 3: {APT_FUSE}")
    return mfusepy


_fuse = _bind_libfuse3()
FUSE, FuseOSError, Operations, _libfuse = _fuse.FUSE, _fuse.FuseOSError, _fuse.Operations, _fuse._libfuse
LIBFUSE_VERSION = (_fuse.fuse_version_major, _fuse.fuse_version_minor)
# libfuse 3.12+ takes max_threads, and keeps idle workers (older ones end them, so a kept
# Python thread state would outlive its thread: threadstate.py)
WORKERS_KEPT = LIBFUSE_VERSION >= (3, 12)

CONTROL_DIR = "/.netmount"
STATS_FILE = CONTROL_DIR + "/stats.json"
IDLE_FILE = CONTROL_DIR + "/idle"  # opening it waits until the daemon has nothing in flight
RAW_DIR = CONTROL_DIR + "/raw"  # the same tree, read without daemon prefetch (``netmount prefetch``)
DROP_DIR = CONTROL_DIR + "/drop"  # opening drop/<path> drops that file's cached bytes (``netmount verify``)
STATS_DIR = CONTROL_DIR + "/stats"  # an hf-cache mount's stats/{folder}@{sha}.json: one snapshot's
# FUSE requests the kernel may have queued in the background (readahead) before it stops
# reading ahead: its defaults (12, 3/4 of it) cut async readahead short; mountpoint-s3
# measured +29% sequential throughput at 64 (REFERENCES.md)
MAX_BACKGROUND, CONGESTION_THRESHOLD = 64, 48


class NetmountFS(Operations):
    use_ns = True

    def __init__(
        self,
        snapshot: Snapshot | None,
        reader: BlockReader,
        controls: dict[str, Callable[[], bytes]],
        on_ready: Callable[[], None] | None = None,
        prefetcher=None,
        on_drop: Callable[[RemoteFile], bytes] | None = None,
        view=None,
        on_open: Callable[[int, str | None], None] | None = None,
        on_release: Callable[[int], None] | None = None,
        on_read: Callable[[int, int, int], None] | None = None,
        replies: Replies | None = None,
        namespace: Namespace | None = None,
        control_dirs: dict[str, Callable[[str], bytes]] | None = None,
    ) -> None:
        self.snapshot, self.reader, self.on_ready = snapshot, reader, on_ready
        self.controls = controls  # hidden control files: path -> what an open of it reads
        self.control_dirs = control_dirs or {}  # hidden control folders: path -> (name -> what it reads)
        self.prefetcher = prefetcher
        self.on_drop = on_drop  # what an open of /.netmount/drop/<path> does (drop.py)
        # on_open(handle, the file's path in the mount or None for the raw mirror), before the OPEN
        # reply: the kernel copies the mount's readahead into the file after it (readahead.py)
        self.on_open, self.on_release = on_open, on_release
        self.on_read = on_read  # on_read(handle, offset, size) of a program's read (not the raw mirror's)
        self.view = view  # a viewfs.ViewTree, or None: the repo as it is
        # what the mount shows: the repo, a view of it, or the namespace given
        self.tree = namespace or (plain_namespace(snapshot) if view is None else view_namespace(view))
        self.sources = plain_namespace(snapshot) if snapshot is not None else self.tree  # drop/ names these
        # read and statfs look a file up by path here (a RemoteFile, or a view's ViewFile); a
        # namespace whose files are not known up front (--hf-cache) has none to give
        self.files: dict = getattr(self.tree, "files", {})
        self.uid, self.gid = os.getuid(), os.getgid()
        self.mtime_ns = time.time_ns()
        self._handles = itertools.count(1)
        self._control: dict[int, bytes] = {}
        self._control_lock = threading.Lock()
        self._max_lock = threading.Lock()
        self.max_read_bytes = 0  # the largest read request the kernel sent (stats.json)
        self.max_read: int | None = None  # the cap on read requests, when below libfuse3's 1 MiB
        self._open: dict[int, tuple[object, bool]] = {}  # handle -> (file, raw) of an open repo/view file
        self.replies = replies if replies is not None and replies.layout else None
        if self.replies is None:
            self.read_buf = None  # mfusepy registers only what is set: libfuse then calls ``read``

    # -- lifecycle -------------------------------------------------------------------------
    def init_with_config(self, conn, config):
        """libfuse3's init: the kernel sent FUSE INIT (the mount is live) and waits for the reply.

        ``on_ready`` may return the readahead it set on the mount (bytes): the reply must carry
        it too, as the kernel keeps the smaller of the mount's readahead and the reply's."""
        readahead = self.on_ready() if self.on_ready else None
        if conn is not None:
            if self.max_read:
                conn.max_read = self.max_read  # libfuse3 wants the mount option repeated here
            if readahead:
                conn.max_readahead = max(conn.max_readahead, readahead)
            conn.max_background, conn.congestion_threshold = MAX_BACKGROUND, CONGESTION_THRESHOLD
            splice = FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE
            if self.replies is not None and conn.capable & splice == splice:
                conn.want |= splice  # fd replies are spliced into /dev/fuse, not copied
            log.info("FUSE init: libfuse %d.%d, requests up to %d bytes, readahead %d bytes, "
                     "replies %s", *LIBFUSE_VERSION, conn.max_write, conn.max_readahead,
                     f"from fds ({self.replies.layout}{', spliced' if conn.want & splice == splice else ''})"
                     if self.replies is not None else "copied")

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
    def _node(self, path: str) -> Node:
        """What ``path`` is: a control file, under ``drop/`` the repo's tree again (its files
        as empty control files), else the namespace's answer (through ``raw/`` too)."""
        target = self._drop_target(path)
        if target is not None:
            kind = _ask(self.sources.lookup, target).kind
            if kind == "data":  # (an hf-cache refs/main: nothing cached to drop)
                raise FuseOSError(errno.ENOENT)
            return DIR if kind == "dir" else _CONTROL
        if path == CONTROL_DIR or path in self.control_dirs:
            return DIR
        if path in self.controls or path.rpartition("/")[0] in self.control_dirs:
            return _CONTROL
        return _ask(self.tree.lookup, self._split(path)[0])

    def getattr(self, path, fh=None):
        node = self._node(path)
        base = {"st_uid": self.uid, "st_gid": self.gid, "st_nlink": 1,
                "st_atime": self.mtime_ns, "st_mtime": self.mtime_ns, "st_ctime": self.mtime_ns}
        if node.kind == "dir":
            return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0}
        if node.kind == "data":
            return {**base, "st_mode": stat.S_IFREG | 0o444, "st_size": node.size}
        f = node.file
        cached = min(self._cached_bytes(f), f.size)
        return {**base, "st_mode": stat.S_IFREG | 0o444, "st_size": f.size,
                "st_blocks": (cached + 511) // 512, "st_blksize": 1 << 20}

    def readdir(self, path, fh):
        path, _raw = self._split(path)
        if path == CONTROL_DIR:
            extra = ["drop", "raw"] if self.on_drop is not None else ["raw"]
            names = [p.rpartition("/")[2] for p in [*self.controls, *self.control_dirs]]
            return [".", "..", *sorted(names), *extra]
        if path in self.control_dirs:
            return [".", ".."]  # any name opens: nothing to list
        return [".", "..", *_ask(self.tree.children, path)]

    def statfs(self, path):
        total = sum(f.size for f in self.files.values())
        return {"f_bsize": PAGE, "f_frsize": PAGE, "f_blocks": -(-total // PAGE),
                "f_bfree": 0, "f_bavail": 0, "f_files": len(self.files), "f_ffree": 0,
                "f_namemax": 255}

    def access(self, path, amode):
        if amode & os.W_OK:
            raise FuseOSError(errno.EROFS)
        self._node(path)
        return 0

    # -- data ------------------------------------------------------------------------------
    def open(self, path, fi):
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise FuseOSError(errno.EROFS)
        node = self._node(path)
        if node.kind == "dir":
            raise FuseOSError(errno.EISDIR)
        fi.fh = next(self._handles)  # the prefetch policy keeps sequential state per handle
        if node.kind == "data":
            self._open_data(path, node, fi)
            return 0
        raw = self._split(path)[1]
        self._open[fi.fh] = (node.file, raw)
        if raw and not isinstance(node.file, RemoteFile):
            fi.direct_io = 1  # a view file's raw reads arrive as asked: a header read spills into no tensor
        else:
            fi.keep_cache = 1
        if self.on_open is not None:  # the file's path in the mount (a plain mount's: its repo path)
            self.on_open(fi.fh, None if raw else path[1:])
        return 0

    def _open_data(self, path: str, node: Node, fi) -> None:
        """A file read whole from memory: a control file, its content made now (``drop/<p>``
        drops ``p``'s cached bytes), or a namespace's synthesized file."""
        if node is _CONTROL:
            target = self._drop_target(path)
            if target is not None:
                content = self.on_drop(self.sources.lookup(target).file)
            elif path in self.controls:
                content = self.controls[path]()
            else:
                parent, _, name = path.rpartition("/")
                content = _ask(self.control_dirs[parent], name)
        else:
            content = node.data
        if node.fresh:
            fi.direct_io = 1  # fresh content at every open
        else:
            fi.keep_cache = 1
        with self._control_lock:
            self._control[fi.fh] = content

    def read(self, path, size, offset, fi):
        """The bytes (libfuse copies them): when fd replies are not usable (``replies.py``)."""
        return join(self._reply(size, offset, fi))

    def read_buf(self, path, bufpp, size, offset, fi):
        """The reply as (fd, offset) buffers of stored files where the store holds the bytes:
        libfuse copies or splices them in C (``replies.py``)."""
        self.replies.fill(bufpp, self._reply(size, offset, fi))
        return 0

    def _reply(self, size: int, offset: int, fi) -> list[Segment]:
        if size > self.max_read_bytes:
            with self._max_lock:
                self.max_read_bytes = max(self.max_read_bytes, size)
        opened = self._open.get(fi.fh)
        if opened is None:
            with self._control_lock:
                content = self._control.get(fi.fh)
            if content is None:
                raise FuseOSError(errno.EBADF)
            piece = content[offset : offset + size]
            return [Segment(-1, 0, len(piece), piece)]
        with self.reader.reading:  # the whole request is a read under way, ``follow`` included: ``idle`` waits
            return self._file_reply(*opened, size, offset, fi)

    def _file_reply(self, f, raw: bool, size: int, offset: int, fi) -> list[Segment]:
        # the daemon's prefetch sees the program's reads, not the raw mirror's (``netmount prefetch``)
        policy = None if raw else self.prefetcher
        try:
            if not isinstance(f, RemoteFile):  # a view's file: cut into pieces (viewfs.py)
                segs = self.view.reply(f, offset, size, fi.fh, prefetch=not raw)
            else:
                exact = policy.plan(fi.fh, f, offset, size) if policy is not None else None
                segs = self.reader.reply(f, offset, size, exact=exact)
                if policy is not None:
                    policy.follow(fi.fh, f, offset, sum(s.length for s in segs))
            if self.on_read is not None and not raw:
                self.on_read(fi.fh, offset, sum(s.length for s in segs))
            return segs
        except FetchError as exc:
            log.error("read %s [%d, +%d) failed: %s", f.path, offset, size, exc)
            raise FuseOSError(errno.EIO)
        except Exception:
            log.exception("read %s [%d, +%d) failed unexpectedly", f.path, offset, size)
            raise FuseOSError(errno.EIO)

    def release(self, path, fi):
        self._open.pop(fi.fh, None)
        with self._control_lock:
            self._control.pop(fi.fh, None)
        if self.prefetcher is not None:
            self.prefetcher.forget(fi.fh)
        if self.view is not None:
            self.view.release(fi.fh)
        if self.on_release is not None:
            self.on_release(fi.fh)
        return 0

    # -- helpers ---------------------------------------------------------------------------
    def _cached_bytes(self, f) -> int:
        try:
            if not isinstance(f, RemoteFile):
                return self.view.cached_bytes(f)
            return self.reader.store.cached_bytes(f.content_id)
        except Exception:
            return 0


_CONTROL = data_node(b"", fresh=True)  # a control file: its content is made at open
_ERRNO = {NotFound: errno.ENOENT, NotAFolder: errno.ENOTDIR, Unavailable: errno.EIO}


def requester() -> str | None:
    """The name (``/proc/PID/comm``) of the process whose FUSE request this thread is
    answering: for the readahead switch, inside an open.  None if it is gone."""
    try:
        with open(f"/proc/{_fuse.fuse_get_context()[2]}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _ask(question, path: str):
    """A namespace's answer to ``question(path)``, its exceptions as the FUSE errors they mean."""
    try:
        return question(path)
    except (NotFound, NotAFolder, Unavailable) as exc:  # (or a subclass: an hf-cache RepoMissing)
        raise FuseOSError(next(code for kind, code in _ERRNO.items() if isinstance(exc, kind))) from None


def serve(ops: NetmountFS, mountpoint: str, *, allow_other: bool = False, debug: bool = False,
          on_stop: Callable[[], None] | None = None, max_read: int | None = None,
          negative_timeout: float = 3600.0) -> None:
    """Run the FUSE loop in this thread until unmounted, or until SIGTERM or SIGHUP.

    On SIGTERM/SIGHUP ``on_stop()`` runs first, on a thread of its own: the daemon fails its
    network requests there, so a read blocked on a stalled server answers EIO now.  Then
    the mount is detached; the loop ends when the last open file is closed, or after
    ``STOP_GRACE`` seconds if programs still hold files.  Why not libfuse's own handlers: they
    only flag the loop to end, which then joins every busy worker (a blocked read keeps
    the daemon alive until it returns), and they wake the loop only when the signal lands
    on its thread.  SIGINT stays libfuse's (mfusepy resets it before starting the loop).

    libfuse3 takes the cache options (``kernel_cache``, the timeouts) as ``-o`` options still
    (into its config); ``max_readahead`` is no mount option any more (the daemon sets the
    mount's readahead in sysfs instead), nor is ``big_writes`` (always on).  ``max_read``
    caps read requests (a mount option the kernel applies to readahead batches too): with a
    small readahead, the kernel's reads around a page fault stay as small as on libfuse2.
    ``negative_timeout``: how long the kernel may answer "no such file" itself (a pinned
    snapshot never gains one; an hf-cache mount's repos appear when created on the Hub).
    """
    label = f"netmount:{ops.snapshot.repo_id}" if ops.snapshot is not None else "netmount:hf-cache"
    options = dict(
        foreground=True, nothreads=False, ro=True, raw_fi=True,
        fsname=label.replace(",", "_"), subtype="netmount",
        kernel_cache=True, attr_timeout=2.0, entry_timeout=3600.0, negative_timeout=negative_timeout,
    )
    if WORKERS_KEPT:
        # libfuse3 serves at most 10 requests at once by default (libfuse2 had no cap): reads
        # wait on the network, so let page faults of many threads wait together
        options["max_threads"] = options["max_idle_threads"] = 64  # workers kept: threadstate.py
    if max_read:
        options["max_read"] = ops.max_read = max_read
    if allow_other:
        options["allow_other"] = True
    if debug:
        options["debug"] = True
    with _Stopper(mountpoint, on_stop) as stopper:
        _FUSE(ops, mountpoint, stopper, **options)


class _FUSE(FUSE):
    """mfusepy's FUSE, keeping libfuse's ``struct fuse *`` — known only inside a request,
    through ``fuse_get_context`` — so that another thread can end the loop."""

    def __init__(self, operations, mountpoint, stopper: "_Stopper", **options):
        self._stopper = stopper
        super().__init__(operations, mountpoint, **options)

    def _wrapper(self, func, *args, **kwargs):  # every callback from libfuse goes through here
        if WORKERS_KEPT:
            keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def init_fuse_3(self, conn, config):  # mfusepy's wrapper of libfuse3's init
        self._stopper.fuse = ctypes.c_void_p(_libfuse.fuse_get_context().contents.fuse)
        return super().init_fuse_3(conn, config)


STOP_GRACE = 3.0  # seconds a stopping daemon still answers programs that hold files open
STOP_WAKE = 60.0  # seconds the FUSE loop's thread is signalled after that, to leave libfuse


class _Stopper:
    """SIGTERM/SIGHUP -> ``on_stop()``, then end the FUSE loop (see ``serve``).

    The handlers are Python's, so libfuse leaves these signals alone (it installs its
    own only over SIG_DFL); Python's C-level handler writes each signal's number to a
    wakeup pipe from whatever thread the signal lands on, and a watcher thread reads it:
    the main thread sits in libfuse and would never run a Python handler.  Signal
    handlers can be set only from the main thread: elsewhere (``mount(foreground=True)``
    from a thread) this does nothing and libfuse's handlers apply."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self, mountpoint: str, on_stop: Callable[[], None] | None) -> None:
        self.mountpoint, self.on_stop = mountpoint, on_stop
        self.fuse: ctypes.c_void_p | None = None  # set at FUSE INIT
        self._old: dict[int, object] = {}
        self._ended = threading.Event()  # the loop's thread has left libfuse
        self._lock = threading.Lock()  # no wake-up signal once it has

    def __enter__(self) -> "_Stopper":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._loop_thread = threading.get_ident()
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, lambda *_: None)
        self._watcher = threading.Thread(target=self._watch, name="netmount-signals", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self._old:
            return
        with self._lock:
            self._ended.set()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(self._old_fd)
        os.write(self._w, b"\0")  # ends the watcher
        self._watcher.join(timeout=30)
        os.close(self._r)
        os.close(self._w)

    def _watch(self) -> None:
        while True:
            got = os.read(self._r, 64)
            if not got or 0 in got:
                return
            stop = [s for s in got if s in self.SIGNALS]
            if stop:
                self._stop(signal.Signals(stop[0]))
                return

    def _stop(self, sig: signal.Signals) -> None:
        log.info("%s: stopping; failing reads in flight, then unmounting %s", sig.name, self.mountpoint)
        if self.on_stop is not None:
            try:
                self.on_stop()
            except Exception as exc:  # still end the loop
                log.warning("stopping: %s: %s", type(exc).__name__, exc)
        # Detach first and let the loop run on: files still open keep being answered (EIO
        # for what must be fetched), so a reader whose read just failed also gets EIO for
        # the kernel's retry of it, not ECONNABORTED; once the last file is closed the
        # kernel ends the connection, and the loop with it.
        from netmount.mounting import mounts

        mounts.force_unmount(self.mountpoint, lazy=True)
        if self._ended.wait(STOP_GRACE) or self.fuse is None:
            return
        log.info("files are still open after %g s: ending the FUSE loop", STOP_GRACE)
        _libfuse.fuse_exit(self.fuse)
        # the loop's thread waits in sem_wait(), which only a signal (or a worker that
        # finishes a request) wakes: send it one until it has left libfuse (bounded)
        for _try in range(int(STOP_WAKE / 0.2)):
            with self._lock:
                if self._ended.is_set():
                    return
                signal.pthread_kill(self._loop_thread, sig)
            if self._ended.wait(0.2):
                return
        log.error("the FUSE loop did not end %g s after it was told to", STOP_WAKE)
