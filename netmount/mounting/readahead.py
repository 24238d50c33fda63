"""The mount's kernel readahead: large for files a loader opens, small for everything else.

How the kernel uses it (Linux ``fs/open.c``, ``mm/readahead.c``, ``mm/filemap.c``): FUSE
caps the mount's backing device (bdi) at 128 KiB at INIT; its sysfs ``read_ahead_kb``
(root only) raises it.  ``do_dentry_open`` copies the bdi's ``ra_pages`` into the new
``struct file`` (``file_ra_state_init``) *after* the filesystem's ``open`` returned, and
every later readahead and mmap read-around of that file uses the copy.  So a change
reaches only files opened afterwards, and a value written while the daemon answers a
FUSE OPEN is the one that open gets: the daemon decides per open.

The decision (``ReadaheadSwitch.opening``): a file opens with ``large_kb`` (1 MiB: libfuse3's
largest request, 8x fewer requests than 128 KiB) when its folder is being loaded, else with
``small_kb`` (32 KiB: a page fault in a 2 KiB tensor must not cost 1 MiB, nor the kernel's
128 KiB either side of it; measured 16/32/64/128 KiB on the partial patterns, BENCHMARKS.md).  A folder is
being loaded once the prefetch policy saw a loader there (``LoaderNews``, told by the
prefetcher's ``on_loader``: the shards a loader opens after that open large), once a program
read ``stream_bytes`` (8 MiB) of one of its files front to back (``reading``: a stream, or a
loader that goes shard by shard, which the policy may take for a stream), or — when
``shards_open`` is set (``SHARDS_OPEN``: 2) — once a shard opens while that many other
shards of its folder are open: transformers 5 opens every shard before it reads any, so the
policy's evidence comes too late for them, and without this rule its shards would keep small
requests.  The price is bounded by issue 11's rule for a shard a loader opens for its header
only: its header fault reads one large read-around, at most 1 MiB.  Where the mount knows
better (``header_only``: the prefetcher's reading of the index and config.json, see
``read/unbuilt.py``), such a shard — DeepSeek-V3's MTP layer — opens small and costs its head.
Shards of which a program has read tensor data (``data_read``) do not count as open: a person
reading one tensor per shard still has the last one mapped (or its release is not sent yet)
when opening the next.  The same opens tell the prefetcher to read the next shards' first
blocks ahead (``on_amid_others``).
Two kinds of file open large for themselves alone (their folder is not made one being
loaded): a file the store holds whole (``held_whole``: its read-around is read from local
disk, never fetched), and a file opened by a program that reads files whole by design
(``opener``, the name of the process opening it: ``cat``, ``cp``, ``rsync``, checksum and
compression tools, ``WHOLE_READERS``).  Either gets 1 MiB requests instead of the 128 KiB
that a small-readahead file's large ``read()`` is cut into (the kernel caps those at the
bdi's ``io_pages``), and the daemon's cost is per request.  Where the rule guesses wrong: a
``dd`` with ``skip``/``count`` reads a part, and pays up to 1 MiB of read-ahead past it.
A folder stays loading while a file opened large there is open, and ``idle`` seconds after
the last such close: a person who inspects one tensor after the load is over gets the small
readahead again.
The first shards of a load open before anything is known and keep the small readahead (the
policy's own prefetch still fetches them in large runs).  Concurrent opens that want
different sizes can race (the bdi holds one value): the loser reads with the other size,
which costs requests or bytes, never correctness.

``--readahead KB`` fixes the value instead (written once at INIT, never switched).  When the
daemon may not write sysfs (not root), it says so once (log, stats) and the kernel's 128 KiB
stays, as without switching (the prefetch policy finds lone tensors at any request size).
FUSE's ``max_read`` is a mount option: with switching it is left at libfuse3's 1 MiB (else no
request could grow); with a small fixed value it caps requests at that value, at least the
kernel's 128 KiB (``max_read``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from typing import Callable

from netmount.core.recent import Recent

log = logging.getLogger("netmount.readahead")

BDI_DIR = "/sys/class/bdi"  # a mount's backing device: its read_ahead_kb is the readahead
KERNEL_KB = 128  # the kernel's own FUSE readahead (and request cap without switching)
SMALL_KB = 32  # while no loader is seen: a fault reads 32 KiB either side (BENCHMARKS.md, "Partial")
LARGE_KB = 1024  # libfuse3's largest read request
STREAM_BYTES = 8 << 20  # read front to back through one handle: a stream (cp, cat, a shard-by-shard loader)
NEAR = 1 << 20  # a read starting this close to where the handle's last one ended continues its run
# other shards of a folder open at once that make the next one a loader's (0: off): two
# keeps a person who reads shard after shard (each open while the last one's mmap lives) small
SHARDS_OPEN = 2
# the same count for the prefetcher's headers ahead (``on_amid_others``), switching or not
AMID = SHARDS_OPEN
# programs that read the files they open whole, front to back (their ``/proc/PID/comm``)
WHOLE_READERS = frozenset({
    "cat", "cp", "dd", "rsync", "tar", "pv", "split", "cksum", "md5sum", "sha1sum", "sha224sum",
    "sha256sum", "sha384sum", "sha512sum", "b2sum", "b3sum", "xxhsum", "gzip", "pigz", "zstd", "xz",
    "bzip2", "lz4"})
IDLE = 30.0  # seconds a loading folder keeps the large readahead after its last open or close
MAX_FOLDERS = 256  # loading folders remembered (--hf-cache sees folders of thousands of repos)


def _mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the mount at ``mountpoint`` (/proc/self/mountinfo; the last one wins).
    Only the parent is resolved: stat of the mount root would be a request to ourselves."""
    mountpoint = os.path.join(os.path.realpath(os.path.dirname(mountpoint)), os.path.basename(mountpoint))
    found = None
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                parts = line.split(" ")
                if len(parts) > 4 and _unescape(parts[4]) == mountpoint:
                    found = parts[2]
    except OSError:
        return None
    return found


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def bdi_path(mountpoint: str) -> tuple[str | None, str | None]:
    """The mount's ``read_ahead_kb`` file: (path, None), or (None, why not)."""
    dev = _mount_device(mountpoint)
    if dev is None:
        return None, f"{mountpoint} not found in /proc/self/mountinfo"
    return os.path.join(BDI_DIR, dev, "read_ahead_kb"), None


def write_kb(path: str, kb: int) -> tuple[int | None, str | None]:
    """Write ``kb`` to a ``read_ahead_kb`` file: (the value now in effect, None), or (None, why not)."""
    try:
        with open(path, "w") as fh:
            fh.write(f"{kb}\n")
        with open(path) as fh:
            return int(fh.read().strip()), None
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        hint = "" if os.geteuid() == 0 else "; only root may set it"
        return None, f"cannot set {path}: {why}{hint}"


def set_readahead(mountpoint: str, kb: int) -> tuple[int | None, str | None]:
    """Set the mount's kernel readahead to ``kb`` KiB once: (the value in effect, None) or (None, why not)."""
    path, why = bdi_path(mountpoint)
    return (None, why) if path is None else write_kb(path, kb)


def max_read(fixed_kb: int | None) -> int | None:
    """The cap on FUSE read requests (a mount option): none when switching (``None``) or from
    1 MiB (libfuse3's own cap); below, the fixed readahead (at least the kernel's 128 KiB): the
    kernel otherwise merges a fault's read-around with the readahead after it into one
    larger request.  Not root: no switching can happen, so the cap is the kernel's 128 KiB."""
    if fixed_kb is None:
        return None if os.geteuid() == 0 else KERNEL_KB << 10
    kb = max(fixed_kb, KERNEL_KB)
    return None if kb >= LARGE_KB else kb << 10


class LoaderNews:
    """The prefetch policy's news "a loader reads folder F", kept for the readahead switch.

    Built before both: the switch asks the prefetcher (``header_only``, ``data_read``) and
    tells it (``on_amid_others``), so the prefetcher is built first, and its listener
    ``on_loader`` is this object's ``loader``, not the switch's.  Its lock is a leaf: the
    switch reads it before taking its own."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._seen = Recent(MAX_FOLDERS)  # folder -> when a loader was last seen there

    def loader(self, folder: str) -> None:
        with self._lock:
            self._seen[folder] = self.clock()

    def seen(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seen)


class ReadaheadSwitch:
    """Per-open readahead for one mount (see the module docstring).  ``fixed_kb``: None
    switches between ``small_kb`` and ``large_kb``; 0 leaves the kernel's; else that value.

    What it asks and tells, given at construction: ``news`` (loaders seen by the policy),
    ``header_only(path)`` (a loader opens this shard for its header only: it may read the
    index and config.json, so it is called with no lock held), ``data_read(path)`` (a program
    read tensor data of this shard) and ``on_amid_others(path)`` (a shard opened amid
    others: the prefetcher reads the next headers ahead), ``held_whole(path)`` (the store
    holds every byte of it: no read-around can cost the network) and ``opener()`` (the name
    of the process whose open is being answered).  Its own lock guards only its own
    state and the sysfs write; nothing else is called under it."""

    def __init__(self, mountpoint: str, fixed_kb: int | None = None, *, news: LoaderNews | None = None,
                 header_only: Callable[[str], bool] | None = None, data_read: Callable[[str], bool] | None = None,
                 on_amid_others: Callable[[str], None] | None = None,
                 held_whole: Callable[[str], bool] | None = None, opener: Callable[[], str | None] | None = None,
                 small_kb: int = SMALL_KB,
                 large_kb: int = LARGE_KB, idle: float = IDLE, shards_open: int = SHARDS_OPEN,
                 stream_bytes: int = STREAM_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.mountpoint, self.fixed_kb = mountpoint, fixed_kb
        self.small_kb, self.large_kb, self.idle, self.clock = small_kb, large_kb, idle, clock
        self.shards_open, self.stream_bytes = shards_open, stream_bytes
        self.news = news if news is not None else LoaderNews(clock)
        self.header_only, self.data_read, self.on_amid_others = header_only, data_read, on_amid_others
        self.held_whole, self.opener = held_whole, opener
        self._lock = threading.Lock()
        self._path: str | None = None  # the bdi's read_ahead_kb, once known to be writable
        self.kb: int | None = None  # in effect now (None: not set by us)
        self.note: str | None = "not mounted yet"
        self.switches = 0  # writes after the first
        self.large_opens = 0
        self.alone_opens: Counter[str] = Counter()  # opened large alone: "held", "reader"
        self._loading: dict[str, float] = {}  # folder -> when it was last active (clock)
        self._open: dict[int, tuple[str, str, bool]] = {}  # handle -> (folder, path, opened large)
        self._runs: dict[int, tuple[int, int]] = {}  # handle -> (where its last read ended, run bytes)

    @property
    def switching(self) -> bool:
        return self.fixed_kb is None

    def start(self) -> int | None:
        """At FUSE INIT (the mount is live, its reply not sent): write the first value.
        Returns the readahead for the INIT reply in bytes (the kernel keeps the smaller of the
        bdi's and the reply's, so switching replies with the large one), or None."""
        if self.fixed_kb == 0:
            self.note = "--readahead 0: the kernel's default kept"
            log.warning("readahead of %s not set (%s): sequential reads arrive in requests of "
                        "the kernel's default size", self.mountpoint, self.note)
            return None
        path, why = bdi_path(self.mountpoint)
        kb, why = (None, why) if path is None else write_kb(path, self.fixed_kb or self.small_kb)
        with self._lock:
            self.kb, self.note = kb, why
            self._path = path if kb is not None else None
        if kb is None:
            log.warning("readahead of %s not set (%s): sequential reads arrive in requests of "
                        "the kernel's default size%s", self.mountpoint, why,
                        "; no switching for loaders" if self.switching else "")
            return None
        if self.switching:
            log.info("readahead of %s: %d KiB, %d KiB for files of folders being loaded",
                     self.mountpoint, kb, self.large_kb)
            return self.large_kb << 10
        log.info("readahead of %s: %d KiB", self.mountpoint, kb)
        return kb << 10

    def opening(self, handle: int, path: str | None) -> None:
        """A FUSE OPEN of the file at ``path`` in the mount (no leading slash: a plain mount's
        repo path, an hf-cache ``models--org--name/snapshots/{sha}/{path}``; None: read without
        prefetch, the raw mirror), before its reply: set the readahead this open will copy.

        Decided in steps, with what others know asked between them and no lock held
        (``header_only`` may read over the network): a concurrent open may decide on state a
        moment old, which costs requests or bytes, never correctness (the bdi holds one value
        anyway)."""
        told = self.news.seen()
        together = self._shards_open(path) if path is not None else 0
        with self._lock:
            large = self._wants_large(path, self.clock(), told, together)
        alone = None if large or path is None else self._alone(path)
        if large and self.header_only is not None and self.header_only(path):
            large = False  # a shard a loader opens for its header only (the MTP layer's)
        self._set(handle, path, large, alone)
        if path is not None and path.endswith(".safetensors") and together >= AMID:
            self._tell_amid(path)

    def _shards_open(self, path: str) -> int:
        """How many other shards of ``path``'s folder are open of which no tensor data was read:
        a loader opens every shard before it reads any; a person who read a tensor still has its
        shard mapped (or its release not yet sent: FUSE releases arrive late) when opening the
        next.  ``data_read`` is asked outside the lock (it takes the prefetcher's)."""
        if not path.endswith(".safetensors"):
            return 0
        folder = path.rpartition("/")[0]
        with self._lock:
            others = {p for fo, p, _ in self._open.values()
                      if fo == folder and p != path and p.endswith(".safetensors")}
        if self.data_read is not None:
            others = {p for p in others if not self.data_read(p)}
        return len(others)

    def _wants_large(self, path: str | None, now: float, told: dict[str, float], together: int) -> bool:
        """A file of a folder being loaded; or a shard opened while ``shards_open`` other
        shards of its folder are open (transformers opens every shard before it reads any)."""
        if not self.switching or self._path is None or path is None:
            return False
        folder = path.rpartition("/")[0]
        if folder in told:
            self._loading[folder] = max(self._loading.get(folder, told[folder]), told[folder])
        if self._active(folder, now):
            return True
        return 0 < self.shards_open <= together and path.endswith(".safetensors")

    def _alone(self, path: str) -> str | None:
        """Why ``path`` alone opens large, if it does: "held" (the store holds it whole) or
        "reader" (its opener reads files whole).  Asked with no lock held; a failure is "no"."""
        with self._lock:
            if not (self.switching and self._path is not None):
                return None
        asks = (("held", lambda: self.held_whole is not None and self.held_whole(path)),
                ("reader", lambda: self.opener is not None and self.opener() in WHOLE_READERS))
        for why, ask in asks:
            try:
                if ask():
                    return why
            except Exception:
                log.exception("readahead: asking whether %s opens large (%s) failed", path, why)
        return None

    def _set(self, handle: int, path: str | None, large: bool, alone: str | None = None) -> None:
        """Record the open, and write the value it wants (under the lock: two opens never
        interleave their writes; sysfs, not the network).  ``alone``: large for this file
        only (``_alone``), its folder not made one being loaded."""
        with self._lock:
            if path is not None:
                folder = path.rpartition("/")[0]
                self._open[handle] = (folder, path, large)
                if large:
                    self._loading[folder] = self.clock()
                    self.large_opens += 1
                    self._forget_idle()
                if alone:
                    self.alone_opens[alone] += 1
            want = self.large_kb if large or alone else self.small_kb
            if not (self.switching and self._path is not None) or want == self.kb:
                return
            kb, why = write_kb(self._path, want)
            if kb is None:
                log.warning("readahead of %s: %s; switching stops", self.mountpoint, why)
                self._path, self.note = None, why
            else:
                self.kb = kb
                self.switches += 1
                log.debug("readahead of %s: %d KiB (open of %s)", self.mountpoint, kb, path)

    def _tell_amid(self, path: str) -> None:
        if self.on_amid_others is not None:
            try:
                self.on_amid_others(path)
            except Exception:
                log.exception("on_amid_others failed")

    def reading(self, handle: int, offset: int, size: int) -> None:
        """A program's read through ``handle``: ``stream_bytes`` read front to back make its
        folder one being loaded (the files it opens next open large)."""
        if not self.switching or self._path is None:
            return
        with self._lock:
            end, run = self._runs.get(handle, (-1, 0))
            run = run + size if end - NEAR <= offset <= end + NEAR else size
            self._runs[handle] = (offset + size, run)
            if run >= self.stream_bytes and handle in self._open:
                folder = self._open[handle][0]
                if folder not in self._loading:
                    log.debug("readahead of %s: a stream in %r", self.mountpoint, folder)
                self._loading[folder] = self.clock()

    def released(self, handle: int) -> None:
        with self._lock:
            self._runs.pop(handle, None)
            folder, _path, large = self._open.pop(handle, ("", "", False))
            if large:
                self._loading[folder] = self.clock()

    def _forget_idle(self) -> None:
        """Past ``MAX_FOLDERS`` loading folders, forget those no longer active (under the lock)."""
        if len(self._loading) > MAX_FOLDERS:
            now = self.clock()
            self._loading = {f: t for f, t in self._loading.items() if self._active(f, now)}

    def _active(self, folder: str, now: float) -> bool:
        """Loading: seen by the policy or by opens, within ``idle`` or with a large file open."""
        last = self._loading.get(folder)
        if last is None:
            return False
        return now - last <= self.idle or any(fo == folder and large for fo, _, large in self._open.values())

    def state(self) -> dict:
        """For stats.json."""
        told = self.news.seen()
        with self._lock:
            now = self.clock()
            for folder, when in told.items():
                self._loading[folder] = max(self._loading.get(folder, when), when)
            loading = sorted(f for f in self._loading if self._active(f, now))
            return {"read_ahead_kb": self.kb, "read_ahead_note": self.note,
                    "read_ahead_mode": ("switching" if self.switching and self._path is not None
                                        else "fixed" if self.kb is not None else "kernel"),
                    "read_ahead_switches": self.switches, "read_ahead_large_opens": self.large_opens,
                    "read_ahead_held_opens": self.alone_opens["held"],
                    "read_ahead_reader_opens": self.alone_opens["reader"],
                    "read_ahead_loading": loading}
