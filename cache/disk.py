"""Blocks and pieces on disk: one file per object, a SQLite index (``index.py``), fds for
replies (``fds.py``), and an in-memory map of what is held (``known.py``, ``held.py``).

Reading: ``segments`` looks the range up in the content's map (loaded from the index once
per content, then kept up to date by this process's puts and evictions) and
answers with fds from the ``FdCache``: no SQL, no lock across I/O, no copy.  Each object
is checked once per process, on first use: its file read whole and its CRC32C
(``google_crc32c``, hardware: ~0.05 ms per MiB here, against zlib's CRC-32 at ~0.3)
compared with the row's; an object this process wrote itself counts as checked (its
bytes were in hand when the CRC was taken).  A bad object (torn by a power loss, changed
by hand) or a vanished one (evicted by another process, ``rm``'ed by a user) is forgotten,
its row deleted, and the answer is a miss: the caller fetches again, and the next put
stores it again.

Writing: ``put_ranges`` cuts the ranges at block edges (``pieces.group``), plans each
block (``pieces.plan``: whole block, or pieces merged with the stored pieces they overlap
or touch, read back and checked), writes the files, then commits every row in *one*
transaction, which also evicts.  No file I/O happens inside a transaction, and no lock
across processes is held across I/O.  Two processes storing the same bytes at once is
allowed: either wins, and a piece never replaces its whole block or a longer piece.
Two puts merging pieces of one block at the same moment may leave two overlapping pieces
(right bytes, counted twice by ``cached_bytes`` until the block fills and replaces them).

Several processes may open one directory: SQLite (WAL) serializes writers, each process
and thread has its own connection; what another process stores or evicts is seen by
``held(refresh=True)``, by ``get``, by the ``cached_*`` queries (which read the index), or
as a miss when a file is gone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections import Counter, OrderedDict

import google_crc32c

from . import pieces
from .crc import crc32c
from .direct import DirectReads
from .fds import FdCache
from .held import Obj
from .index import Index, Row, write_file
from .known import Known
from .prepare import Preparer
from .ready import Ready
from .store import (
    FD_GRACE,
    BlockStore,
    Segment,
    check_block,
    check_block_size,
    check_content_id,
    check_index,
    check_span,
)
from .version import ensure_format

log = logging.getLogger("cache")

CHECK_WAIT = 30.0  # seconds a read waits for another thread's check of the same object
ADVISED = 4096  # checked objects remembered as advised to the kernel (each is advised once)
READY_BYTES = 32 << 20  # objects checked ahead of a reader, kept in memory for its reads


class DiskBlockStore(BlockStore):
    """A persistent, size-capped store in ``directory`` (created mode 0700, format-checked:
    ``version.py``).  Raises ``OSError``/``sqlite3.Error`` when the directory cannot be
    opened; wrap it in ``SafeBlockStore`` so that failures *after* opening never fail a read.
    ``size_limit=None`` keeps the limit stored in the directory (``netmount verify``)."""

    def __init__(self, directory, block_size: int, size_limit: int | None, *, timeout: float = 10.0,
                 max_fds: int = 1024, fd_grace: float = FD_GRACE, clock=time.monotonic,
                 max_contents: int = 4096, prepare_workers: int = 4, logger: logging.Logger = log) -> None:
        self.block_size = check_block_size(block_size)
        self.directory = os.fspath(directory)
        self.log = logger
        ensure_format(self.directory, logger)
        if google_crc32c.implementation != "c":
            logger.warning("google-crc32c has no C extension here: checking blocks will be slow")
        self._index = Index(self.directory, block_size, size_limit, timeout=timeout)
        self._fds = FdCache(self.directory, max_fds, grace=fd_grace, clock=clock)
        self._known = Known(self._index, max_contents)
        self._lock = threading.Lock()  # counts
        self._commit_lock = threading.Lock()  # commit + apply, see _write: no file I/O inside
        self.counts: Counter[str] = Counter()  # checked, checked_bytes, bad, gone
        self._checking: dict[str, concurrent.futures.Future] = {}  # file name -> its check under way
        self._advised: OrderedDict[str, None] = OrderedDict()  # checked files advised to the kernel
        self._prepare = Preparer(prepare_workers)
        self._direct = DirectReads(self.block_size)
        self._ready = Ready(READY_BYTES, on_room=lambda hint: self._ahead(hint, released=True))
        self._apply([], self._index.cull())  # a reopen with a smaller limit shrinks at once

    def _apply(self, stored: list[Row], removed: list[tuple[str, str]]) -> None:
        self._known.apply(stored, removed)
        for _, filename in removed:
            self._fds.discard(filename)
            self._ready.discard(filename)
        with self._lock:  # just written: checked (its CRC is of the bytes written) and in the page
            for row in stored:  # cache, so a prepare has nothing to do (a cold stream's pump asks)
                self._advised[row.filename] = None
            while len(self._advised) > ADVISED:
                self._advised.popitem(last=False)

    # -- reading ---------------------------------------------------------------------------------
    def held(self, content_id: str, *, refresh: bool = False) -> list[tuple[int, int]]:
        return self._known.spans(content_id, refresh)

    def segments(self, content_id: str, offset: int, length: int, size: int) -> list[Segment] | None:
        end = check_span(offset, length, size)
        if offset >= end:
            return []
        plan = self._known.plan(content_id, offset, end, size)
        if plan is None:
            return None
        out = []
        for index, obj, a, b in plan:
            seg = self._segment(content_id, index, obj, a, b)
            if seg is None:
                return None
            out.append(seg)
        return out

    def _segment(self, content_id: str, index: int, obj: Obj, a: int, b: int) -> Segment | None:
        """``[a, b)`` of ``obj`` for a reply: from memory if its check read it past the page
        cache (ahead, on a prepare thread; or now, for a read of all of it), else its fd.  A
        read of a part is checked through the page cache, which keeps the rest for the reads
        around it (a random reader's next read of the object is a page-cache hit)."""
        view = self._ready.get(obj.ref, b - obj.start)
        if view is None and not obj.checked:
            how = "direct" if (a, b) == (obj.start, obj.end) else "cached"
            data = self._check(content_id, index, obj, want_bytes=False, how=how)
            if data is None:
                return None
            view = data if isinstance(data, memoryview) else self._ready.get(obj.ref, b - obj.start)
        if view is not None:
            return Segment(-1, a - obj.start, b - a, view)
        fd = self._fds.get(obj.ref)
        if fd is None:
            self._lost(content_id, index, obj, "gone")
            return None
        return Segment(fd, a - obj.start, b - a)

    def read(self, content_id: str, offset: int, length: int, size: int) -> bytes | None:
        end = check_span(offset, length, size)
        if offset >= end:
            return b""
        plan = self._known.plan(content_id, offset, end, size)
        if plan is None:
            return None
        parts = []
        for index, obj, a, b in plan:
            part = self._bytes(content_id, index, obj, a - obj.start, b - obj.start)
            if part is None:
                return None
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def get(self, content_id: str, index: int) -> bytes | None:
        check_index(index)
        obj = self._known.whole(content_id, index)
        if obj is None:  # stored by another process since we looked?
            row = self._index.row(self._index.key(content_id, index))
            if row is None:
                return None
            obj = Obj(index * self.block_size, row.size, row.filename, True, row.crc)
            self._known.add(content_id, index, obj)
        return self._bytes(content_id, index, obj, 0, obj.length)

    def _bytes(self, content_id: str, index: int, obj: Obj, a: int, b: int) -> bytes | None:
        """Bytes ``[a, b)`` of ``obj``'s file, checked."""
        if not obj.checked:
            data = self._check(content_id, index, obj)
            return data if data is None or (a, b) == (0, obj.length) else data[a:b]
        fd = self._fds.get(obj.ref)
        data = os.pread(fd, b - a, a) if fd is not None else b""
        if len(data) != b - a:
            self._lost(content_id, index, obj, "gone" if fd is None else "bad")
            return None
        return data

    def _check(self, content_id: str, index: int, obj: Obj, want_bytes: bool = True,
               how: str = "cached") -> bytes | memoryview | bool | None:
        """Read ``obj`` whole and compare its CRC32C: its bytes (True without ``want_bytes``),
        or None (then forgotten).  ``how``: through the page cache (``cached``), past it into
        memory (``direct``), or past it and kept for the reads to come (``ahead``).
        Once per object however many threads ask at once: a thread that finds another one
        checking it (a ``prepare`` thread ahead of the reader, say) waits for that check
        instead of reading the file a second time."""
        with self._lock:
            running = self._checking.get(obj.ref)
            mine = running is None
            if mine:
                running = self._checking[obj.ref] = concurrent.futures.Future()
        if not mine:
            try:
                ok = running.result(CHECK_WAIT)
            except concurrent.futures.TimeoutError:
                ok = None  # a stuck disk thread: check it here
            if ok is not None:
                if not ok:
                    return None
                return self._bytes(content_id, index, obj, 0, obj.length) if want_bytes else True
        data = None
        try:
            data = self._check_now(content_id, index, obj, how)
        finally:
            if mine:
                with self._lock:
                    self._checking.pop(obj.ref, None)
                running.set_result(data is not None)
        return data

    def _check_now(self, content_id: str, index: int, obj: Obj, how: str) -> bytes | memoryview | None:
        data = None if how == "cached" else self._direct.read(os.path.join(self.directory, obj.ref), obj.length)
        if data is None:  # no O_DIRECT here: through the page cache
            fd = self._fds.get(obj.ref)
            data = os.pread(fd, obj.length + 1, 0) if fd is not None else False  # one more: a longer file is wrong too
        if data is False:
            self._lost(content_id, index, obj, "gone")
            return None
        if len(data) != obj.length or crc32c(data) != obj.crc:
            self._lost(content_id, index, obj, "bad")
            return None
        if how == "ahead" and isinstance(data, memoryview):  # before a waiting reader looks
            self._ready.put(obj.ref, data)
        obj.checked = True
        with self._lock:
            self.counts["checked"] += 1
            self.counts["checked_bytes"] += obj.length
        return data

    def _lost(self, content_id: str, index: int, obj: Obj, why: str) -> None:
        """``obj`` is bad or its file is gone: forget it, delete its row; the caller misses."""
        if why == "bad":
            self.log.warning("block store: %s [%d, %d) failed its CRC32C check; dropped, fetching it again",
                             content_id[:16], obj.start, obj.end)
        with self._lock:
            self.counts[why] += 1
        offset = None if obj.whole else obj.start - index * self.block_size
        # the row first: a refresh of the map between the two would bring the object back
        self._index.delete(self._index.key(content_id, index, offset), obj.ref)
        self._known.forget(content_id, index, obj.ref)
        self._fds.discard(obj.ref)
        self._ready.discard(obj.ref)

    def prepare(self, content_id: str, ranges, size: int | None) -> None:
        """Each object of ``ranges`` not checked yet is checked on a prepare thread, past the
        page cache into the window of checked objects (``ready.py``) while it has room, else
        queued there until a read takes an object out; a checked one is advised to the kernel
        (``POSIX_FADV_WILLNEED``) once.  Only the map is looked at here."""
        for index, obj in self._known.overlapping(content_id, ranges, size):
            with self._lock:
                if obj.ref in self._checking or obj.ref in self._advised:
                    continue
                if obj.checked:
                    self._advised[obj.ref] = None
                    while len(self._advised) > ADVISED:
                        self._advised.popitem(last=False)
            if obj.checked:
                self._prepare.submit(self._advise, obj)
            else:
                self._ahead((content_id, index, obj))

    def _ahead(self, hint: tuple, released: bool = False) -> bool:
        """Check ``hint``'s object on a prepare thread if the window has room (reserved for
        it), else leave it queued in the window (``on_room`` calls this again, ``released``).
        False: nothing to do, its reader got there first."""
        obj = hint[2]
        if obj.checked:
            return False
        if self._ready.reserve(obj.length, hint, released=released) \
                and not self._prepare.submit(self._check_ahead, *hint):
            self._ready.settle(obj.length)  # the prepare backlog is full: its read checks it
        return True

    def _check_ahead(self, content_id: str, index: int, obj: Obj) -> None:
        """On a prepare thread, room reserved in the window: the check, its bytes kept there."""
        try:
            if not obj.checked:
                self._check(content_id, index, obj, want_bytes=False, how="ahead")
        finally:
            self._ready.settle(obj.length)

    def _advise(self, obj: Obj) -> None:
        fd = self._fds.get(obj.ref)
        if fd is not None:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the prepares under way are done (tests, benchmarks); False on timeout."""
        return self._prepare.drain(timeout)

    # -- writing ---------------------------------------------------------------------------------
    def put(self, content_id: str, index: int, data) -> None:
        data = check_block(self.block_size, content_id, index, data)
        start = index * self.block_size
        w = pieces.BlockWrite(content_id, index, start, start + len(data))
        w.parts.append((start, data))
        self._write({(content_id, index): w}, replace=True)

    def put_ranges(self, items) -> None:
        groups = pieces.group(items, self.block_size)
        for chunk in self._commits(groups):
            self._write(chunk, replace=False)

    def _commits(self, groups: dict) -> list[dict]:
        """``groups`` cut into commits of at most a sixteenth of the size limit (one at least):
        a commit's files are on disk before its rows evict older ones, so a small cache
        overshoots its cap by that much per writing thread, not by a whole batch."""
        most = max(self.block_size, self._index.cache.size_limit // 16)
        out: list[dict] = [{}]
        size = 0
        for key, w in groups.items():
            if size and size + (w.hi - w.lo) > most:
                out.append({})
                size = 0
            out[-1][key] = w
            size += w.hi - w.lo
        return out

    def _write(self, groups: dict, replace: bool) -> None:
        rows: list[Row] = []
        consumed: list[tuple[str, str]] = []
        committed = False
        try:
            for (content_id, index), w in groups.items():
                if w.whole:
                    if not replace and self._held_whole(content_id, index, w.hi - w.lo):
                        continue
                    writes, used = pieces.plan(w, [], None)
                else:
                    existing = self._stored_pieces(content_id, index)
                    if existing is None:
                        continue  # held whole
                    writes, used = pieces.plan(w, existing, self._read_piece)
                for start, data, whole in writes:
                    offset = None if whole else start - w.lo
                    rows.append(Row(self._index.key(content_id, index, offset),
                                    write_file(self.directory, data), len(data), crc32c(data)))
                consumed += [(self._index.key(content_id, index, p.start - w.lo), p.ref) for p in used]
            if not rows and not consumed:
                return
            # commits applied to the map in the order they were made (two puts of one block
            # applied the other way round would leave the map naming the file replaced)
            with self._commit_lock:
                stored, removed = self._index.commit(rows, consumed)
                committed = True
                self._apply(stored, removed)
        except BaseException:
            for row in rows if not committed else ():  # no row names them
                _unlink(os.path.join(self.directory, row.filename))
            raise

    def _held_whole(self, content_id: str, index: int, length: int) -> bool:
        """Held whole, its file there: a block whose file vanished unseen (a user's rm, another
        process's eviction) is still in the map until a read finds the gap; its put is the
        refetch, and must land (one stat per put of a block the map names)."""
        obj = self._known.whole(content_id, index)
        return (obj is not None and obj.length == length
                and (obj.ref in self._fds or os.path.exists(os.path.join(self.directory, obj.ref))))

    def _stored_pieces(self, content_id: str, index: int) -> list[Obj] | None:
        """The pieces of a block in the index (None: it is held whole)."""
        out = []
        for row in self._index.block_rows(content_id, index, index):
            _, _, offset = self._index.parse(row.key)
            if offset is None:
                return None
            out.append(Obj(index * self.block_size + offset, row.size, row.filename, False, row.crc))
        return out

    def _read_piece(self, obj: Obj) -> bytes | None:
        """A stored piece's bytes for a merge, checked (None: gone or bad)."""
        try:
            with open(os.path.join(self.directory, obj.ref), "rb") as fh:
                data = fh.read(obj.length + 1)
        except FileNotFoundError:
            return None
        return data if len(data) == obj.length and crc32c(data) == obj.crc else None

    # -- what is held ----------------------------------------------------------------------------
    def cached_indices(self, content_id: str) -> list[int]:
        return self._index.cached_indices(content_id)

    def cached_bytes(self, content_id: str) -> int:
        return self._index.cached_bytes(content_id)

    def cached_ranges(self, content_id: str) -> list[tuple[int, int]]:
        return self._index.cached_ranges(content_id)

    def volume(self) -> int:
        """Bytes of stored object files (the SQLite file is extra)."""
        return self._index.volume()

    def drop(self, content_id: str) -> int:
        """Delete every object of ``content_id`` of every block size, and its marks, in one
        transaction; returns the bytes deleted."""
        check_content_id(content_id)
        with self._commit_lock:
            dropped, removed = self._index.drop(content_id)
            self._known.forget(content_id)
            self._apply([], removed)
        return dropped

    def fingerprint(self, content_id: str) -> str:
        return self._index.fingerprint(content_id)

    def mark_verified(self, content_id: str, fingerprint) -> bool:
        return self._index.mark_verified(content_id, fingerprint)

    def is_verified(self, content_id: str) -> bool:
        return self._index.is_verified(content_id)

    def fd_counts(self) -> dict:
        return self._fds.counts()

    def close(self) -> None:
        """Stop the prepare threads, close every fd and this thread's connection."""
        self._prepare.close()
        self._fds.close()
        self._index.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
