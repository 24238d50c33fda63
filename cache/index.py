"""The disk store's index: diskcache's SQLite table (WAL, shared by processes), one row
per stored object, and FIFO eviction by bytes.

Keys are TEXT (``content_id`` has no ``:`` or ``;``):
- a whole block ``f"{content_id}:{block_size}:{index:012d}"``;
- a piece ``f"{content_id}:{block_size}:{index:012d}:{offset_in_block:012d}"``, so it sorts
  right after its block's key and before the next block's;
- the verified mark ``f"{content_id}:{block_size};verified"``, outside every content's
  object range (``[prefix + ":", prefix + ";")``), so the ``cached_*`` scans never see it.
The block size is in the key, so a store with another block size never sees objects cut
to a different size (they age out).  A covering index ``(key, size)`` makes
``cached_bytes``/``cached_indices``/``cached_ranges`` one index-range scan (measured with
the v1 keys and 100k blocks: 2.7 ms for a 50k-block content, ~5 us for an empty one).

A row's ``size`` is its file's length, ``tag`` the CRC32C of its bytes, ``filename`` a
random never-reused name (``write_file``).  Files are written and closed *before* the
transaction that inserts their rows commits, so no row ever points at a half-written file;
a process killed in between leaves an orphan file no row names.  Files are not fsync'ed:
after a power loss a row may point at a torn file, which the CRC catches on first use.

Rows are written by ``commit`` only: one transaction for a whole batch of objects (no
file I/O inside it: files are written before, removed after), which also evicts.
Eviction is ``least-recently-stored`` (FIFO by ``store_time``), deliberately not LRU: LRU
would turn every hit into a write transaction under SQLite's one writer lock (shared with
other processes' puts).  It runs in the same transaction as the puts and evicts by *bytes*
until object files plus the SQLite file fit ``size_limit``, and it reports what it removed
so the store's in-memory map stays true.

diskcache keeps each thread's SQLite connection in a ``threading.local``; FUSE calls arrive
on libfuse's threads with a fresh Python thread state each time, so that would open a new
connection per call: ``_PerOSThread`` keys them by the OS thread instead.
"""

from __future__ import annotations

import os
import threading
import time
from typing import NamedTuple

import diskcache
from diskcache.core import MODE_BINARY

from . import spans

_COVERING_INDEX = "CREATE INDEX IF NOT EXISTS netmount_key_size ON Cache(key, size)"
_CULL_BATCH = 64  # rows looked at per eviction query


class Row(NamedTuple):
    key: str
    filename: str
    size: int
    crc: int


class _PerOSThread:
    """A ``threading.local`` stand-in keyed by the OS thread.

    ctypes gives every libfuse callback a fresh Python thread state, so a
    ``threading.local`` starts empty on *every* call: diskcache opened and set up a new
    connection for each block read (a third of a warm read's time, measured with py-spy).
    ``threading.get_ident()`` is the OS thread's id and stays put across callbacks, and it
    is what sqlite3's same-thread check compares."""

    def __init__(self) -> None:
        object.__setattr__(self, "_values", {})

    def __getattr__(self, name):
        try:
            return self._values[threading.get_ident(), name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value) -> None:
        self._values[threading.get_ident(), name] = value

    def __delattr__(self, name) -> None:
        try:
            del self._values[threading.get_ident(), name]
        except KeyError:
            raise AttributeError(name) from None


class Index:
    """Rows of one directory, seen with one block size."""

    def __init__(self, directory: str, block_size: int, size_limit: int | None, *, timeout: float) -> None:
        self.directory = directory
        self.block_size = block_size
        limit = {} if size_limit is None else {"size_limit": int(size_limit)}
        self.cache = diskcache.Cache(
            directory, timeout=timeout, **limit,
            eviction_policy="least-recently-stored",
            disk_min_file_size=0,  # a mark's int stays in its row; objects are files we write
            cull_limit=0,          # diskcache never culls on its own: ``commit`` evicts by bytes
            statistics=0,          # statistics would make every get a write transaction
        )
        self.cache._local = _PerOSThread()  # diskcache 5.x private: see _PerOSThread
        self.cache._sql(_COVERING_INDEX)    # diskcache 5.x private: this thread's execute

    @property
    def _sql(self):
        return self.cache._sql

    # -- keys --------------------------------------------------------------------------------
    def key(self, content_id: str, index: int, offset_in_block: int | None = None) -> str:
        base = f"{content_id}:{self.block_size}:{index:012d}"
        return base if offset_in_block is None else f"{base}:{offset_in_block:012d}"

    def bounds(self, content_id: str) -> tuple[str, str]:
        prefix = f"{content_id}:{self.block_size}"
        return prefix + ":", prefix + ";"

    def parse(self, key: str) -> tuple[str, int, int | None] | None:
        """``(content_id, index, offset_in_block or None)`` of an object key of this block
        size; None for a mark or another block size."""
        content_id, _, rest = key.partition(":")
        bs, _, tail = rest.partition(":")
        if bs != str(self.block_size) or len(tail) not in (12, 25):
            return None
        return content_id, int(tail[:12]), int(tail[13:]) if len(tail) == 25 else None

    # -- reading rows ------------------------------------------------------------------------
    def rows(self, content_id: str) -> list[Row]:
        """Every object row of ``content_id`` (this block size)."""
        cur = self._sql("SELECT key, filename, size, tag FROM Cache WHERE key >= ? AND key < ?"
                        " AND filename IS NOT NULL", self.bounds(content_id))
        return [Row(*r) for r in cur]

    def block_rows(self, content_id: str, first: int, last: int) -> list[Row]:
        """Rows of blocks ``first..last`` of ``content_id``, whole and pieces."""
        cur = self._sql("SELECT key, filename, size, tag FROM Cache WHERE key >= ? AND key < ?"
                        " AND filename IS NOT NULL",
                        (self.key(content_id, first), self.key(content_id, last) + ";"))
        return [Row(*r) for r in cur]

    def row(self, key: str) -> Row | None:
        found = self._sql("SELECT key, filename, size, tag FROM Cache WHERE key = ? AND raw = 1"
                          " AND filename IS NOT NULL", (key,)).fetchone()
        return Row(*found) if found else None

    def cached_indices(self, content_id: str) -> list[int]:
        lo, hi = self.bounds(content_id)
        rows = self._sql("SELECT CAST(substr(key, -12) AS INTEGER) FROM Cache"
                         " WHERE key >= ? AND key < ? AND length(key) = ? ORDER BY key",
                         (lo, hi, len(lo) + 12))
        return [index for (index,) in rows]

    def cached_bytes(self, content_id: str) -> int:
        ((total,),) = self._sql("SELECT COALESCE(SUM(size), 0) FROM Cache WHERE key >= ? AND key < ?",
                                self.bounds(content_id)).fetchall()
        return total

    def cached_ranges(self, content_id: str) -> list[tuple[int, int]]:
        lo, hi = self.bounds(content_id)
        out = []
        for key, size in self._sql("SELECT key, size FROM Cache WHERE key >= ? AND key < ?", (lo, hi)):
            parsed = self.parse(key)
            if parsed is not None:
                start = parsed[1] * self.block_size + (parsed[2] or 0)
                out.append((start, start + size))
        return spans.merge(out)

    def volume(self) -> int:
        ((total,),) = self._sql("SELECT value FROM Settings WHERE key = 'size'").fetchall()
        return total

    def fingerprint(self, content_id: str) -> str:
        ((count, newest, last),) = self._sql(
            "SELECT COUNT(*), COALESCE(MAX(store_time), 0), COALESCE(MAX(rowid), 0) FROM Cache"
            " WHERE key >= ? AND key < ?", self.bounds(content_id)).fetchall()
        return f"{count}/{newest!r}/{last}"

    # -- writing rows ------------------------------------------------------------------------
    def commit(self, writes: list[Row], consumed: list[tuple[str, str]]) -> tuple[list[Row], list[tuple[str, str]]]:
        """In one transaction: insert or replace ``writes`` (files already written), delete
        the ``consumed`` ``(key, filename)`` rows still naming those files, evict.  A piece
        is not stored over its whole block or a longer piece at its start; a whole block
        takes the place of every piece of its block.  Returns ``(stored, removed)``; files
        of removed rows, and of writes not stored, are deleted after the commit."""
        stored: list[Row] = []
        removed: list[tuple[str, str]] = []
        now = time.time()
        with self.cache._transact(retry=False) as (sql, cleanup):
            for w in writes:
                if self._put_row(sql, cleanup, w, now, removed):
                    stored.append(w)
                else:
                    cleanup(w.filename)
            for key, filename in consumed:
                if sql("DELETE FROM Cache WHERE key = ? AND filename = ?", (key, filename)).rowcount:
                    cleanup(filename)
                    removed.append((key, filename))
            removed += self._cull(sql, cleanup)
        return stored, removed

    def _put_row(self, sql, cleanup, w: Row, now: float, removed: list) -> bool:
        content_id, index, offset_in_block = self.parse(w.key)
        piece = offset_in_block is not None
        block_key = self.key(content_id, index)
        if piece and sql("SELECT 1 FROM Cache WHERE key = ?", (block_key,)).fetchone():
            return False  # held whole
        old = sql("SELECT rowid, filename, size FROM Cache WHERE key = ?", (w.key,)).fetchone()
        if piece and old is not None and old[2] >= w.size:
            return False  # a piece as long or longer at the same start
        if not piece:  # the whole block replaces its pieces
            for rowid, key, filename in sql("SELECT rowid, key, filename FROM Cache WHERE key > ? AND key < ?",
                                            (block_key + ":", block_key + ";")).fetchall():
                sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                cleanup(filename)
                removed.append((key, filename))
        if old is not None:
            sql("UPDATE Cache SET store_time = ?, expire_time = NULL, access_time = ?, access_count = 0,"
                " tag = ?, size = ?, mode = ?, filename = ?, value = NULL WHERE rowid = ?",
                (now, now, w.crc, w.size, MODE_BINARY, w.filename, old[0]))
            cleanup(old[1])
            removed.append((w.key, old[1]))
        else:
            sql("INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
                " tag, size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, ?, ?, ?, ?, NULL)",
                (w.key, now, now, w.crc, w.size, MODE_BINARY, w.filename))
        return True

    def _cull(self, sql, cleanup) -> list[tuple[str, str]]:
        """Delete the oldest rows until object files plus the SQLite file fit the limit."""
        removed = []
        limit = self.cache.size_limit
        ((page_size,),) = sql("PRAGMA page_size").fetchall()
        while True:
            ((size,),) = sql("SELECT value FROM Settings WHERE key = 'size'").fetchall()
            ((pages,),) = sql("PRAGMA page_count").fetchall()
            excess = size + pages * page_size - limit
            if excess <= 0:
                return removed
            rows = sql("SELECT rowid, key, filename, size FROM Cache ORDER BY store_time LIMIT ?",
                       (_CULL_BATCH,)).fetchall()
            if not rows:
                return removed
            for rowid, key, filename, nbytes in rows:
                sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                if filename is not None:
                    cleanup(filename)
                    removed.append((key, filename))
                excess -= nbytes
                if excess <= 0:
                    break

    def cull(self) -> list[tuple[str, str]]:
        """Evict now (a reopen with a smaller limit shrinks at once)."""
        return self.commit([], [])[1]

    def delete(self, key: str, filename: str) -> bool:
        """Delete the row ``key`` if it still names ``filename`` (a bad or vanished file);
        its file goes too.  Called on a read that missed: it waits for SQLite's writer lock
        at most ``timeout`` seconds once, then leaves the row (it is found bad again later)."""
        try:
            with self.cache._transact(retry=False) as (sql, cleanup):
                gone = sql("DELETE FROM Cache WHERE key = ? AND filename = ?", (key, filename)).rowcount
                cleanup(filename)
        except diskcache.Timeout:
            return False
        return bool(gone)

    def drop(self, content_id: str) -> tuple[int, list[tuple[str, str]]]:
        """Delete every row of ``content_id``, any block size, marks included."""
        dropped = 0
        removed = []
        with self.cache._transact(retry=True) as (sql, cleanup):
            rows = sql("SELECT rowid, key, filename, size FROM Cache WHERE key >= ? AND key < ?",
                       (content_id + ":", content_id + ";")).fetchall()
            for rowid, key, filename, size in rows:
                sql("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                dropped += size
                if filename is not None:
                    cleanup(filename)
                    removed.append((key, filename))
        return dropped, removed

    # -- verified marks ------------------------------------------------------------------------
    def _mark_key(self, content_id: str) -> str:
        return f"{content_id}:{self.block_size};verified"

    def mark_verified(self, content_id: str, fingerprint) -> bool:
        if not fingerprint:
            return False
        with self.cache.transact(retry=True):
            if self.fingerprint(content_id) != fingerprint:
                return False  # an object changed while it was being hashed
            self.cache.set(self._mark_key(content_id), 1, tag=fingerprint, retry=True)
        return True

    def is_verified(self, content_id: str) -> bool:
        value, tag = self.cache.get(self._mark_key(content_id), tag=True)
        return value == 1 and tag == self.fingerprint(content_id)

    def close(self) -> None:
        self.cache.close()


def write_file(directory: str, data: bytes) -> str:
    """Write ``data`` to a new file under a fresh random name (diskcache's layout:
    ``ab/cd/<28 hex>.val``); returns the name.  A write that fails removes its file."""
    hex_name = os.urandom(16).hex()
    name = os.path.join(hex_name[:2], hex_name[2:4], hex_name[4:] + ".val")
    path = os.path.join(directory, name)
    for attempt in range(10):
        try:  # a delete of a folder's last file removes the folder (diskcache's remove): retry
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            break
        except FileNotFoundError:
            if attempt == 9:
                raise
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return name


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
