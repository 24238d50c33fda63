"""Blocks on disk, on ``diskcache.Cache`` (SQLite index + one file per block).

Keys are TEXT ``f"{content_id}:{block_size}:{index:012d}"``:
- the block size is part of the key, so a remount with another block size never sees
  blocks cut to a different size (they age out by eviction);
- text keys sort as strings in diskcache's ``Cache(key, raw)`` index, so the blocks of one
  content are one contiguous key range (``content_id`` may not contain ``:``). We add a
  covering index ``(key, size)``, so ``cached_bytes`` and ``cached_indices`` are one
  index-range scan that never touches the table. Measured with 100k blocks in the cache
  (50k of one content, 2.5k each of 20 others, stored in random order): cached_bytes
  2.7 ms for the 50k-block content (25 ms without the covering index), 0.14 ms for a
  2.5k-block one; cached_indices 15 ms / 0.7 ms; about 5 us for a content with nothing
  cached. The SQL goes through ``Cache._sql``, diskcache 5.x's per-thread connection.

Values are stored as raw ``bytes``, each in its own file (``disk_min_file_size=0``), so
the ``size`` column is the block length (a value kept inside the DB records size 0) and
``volume()`` is exact. A block is never readable half-written: diskcache writes the
value file under a fresh random name and closes it *before* the transaction inserting
the row that points to it commits. A process killed mid-``put`` leaves at most an orphan
file that no row refers to (``diskcache.Cache.check(fix=True)`` reclaims those); a put that
fails while writing (ENOSPC) removes its file. Files are not fsync'ed, so after a power
loss a committed row could point at a truncated file: the CRC-32 of every block is kept
in the row's ``tag`` (4 GB/s, about 1 ms per 4 MiB), and a mismatch is a miss and the
entry is deleted.

Eviction is diskcache's ``least-recently-stored`` (FIFO), deliberately not
``least-recently-used``: LRU turns every cache hit into a write transaction (an
``UPDATE access_time`` under SQLite's single writer lock, shared with other processes'
puts), putting disk writes and lock waits on the hot read path. Checkpoint loading reads
blocks in long passes, where store order is close to use order; repeated hot reads are
absorbed by the reader's in-memory LRU and the kernel page cache. The price: a block
stored long ago but still read often (a safetensors header) is evicted first and
refetched once.
The size limit is diskcache's: block files plus the SQLite file, culled ``CULL_LIMIT``
rows at a time after each put, so the stored block bytes stay below ``size_limit`` plus
one block; on disk, for a moment, also the blocks being written by concurrent puts and
the culled files not yet unlinked.

Verified marks (``netmount verify``): one row per content and block size, key
``f"{content_id}:{block_size};verified"`` (outside every content's block range, so the
``cached_*`` scans never see it), value 1 (kept in the row: size 0), tag the content's
*fingerprint* when it was hashed: (block count, newest ``store_time``, newest ``rowid``)
of its rows.  diskcache culls without telling anyone, so an eviction cannot remove the
mark; instead ``is_verified`` compares the fingerprint with the rows as they are now, and
a block evicted (count drops) or stored again (newer ``store_time``) voids the mark.
``drop`` deletes the blocks of every block size and the marks with them.

Several processes may open one directory: SQLite (WAL) serializes writers, each process
and thread has its own connection, and a block deleted by another process between
lookup and read is a miss.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import zlib

import diskcache

from .store import BlockStore, check_block, check_block_size, check_index

# Rows culled per put.  diskcache deletes the culled files only after the transaction
# commits, so for a moment they sit on disk next to the new block: with its default of 10
# a 4 MiB cache of 256 KiB blocks was seen at 6.9 MiB.  One put adds one row, so 2 keeps up.
CULL_LIMIT = 2

_COVERING_INDEX = "CREATE INDEX IF NOT EXISTS netmount_key_size ON Cache(key, size)"


class _BlockDisk(diskcache.Disk):
    """diskcache's Disk, but a value file that fails half-way (ENOSPC, EIO) is removed.

    diskcache leaves it behind: no row points to it, so it is never read, but it is never
    counted or culled either, and on a full disk every failed put would leak more.
    """

    def _write(self, full_path, iterator, mode, encoding=None):
        if isinstance(iterator, io.BytesIO):
            # diskcache wraps a bytes value in BytesIO and writes it line by line: ~4,000
            # writes per 1 MiB block of binary data, 3.7 ms of CPU (with the GIL) instead of 0.8
            iterator = (iterator.getvalue(),)
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except FileExistsError:  # not ours (names are 128-bit random; never seen)
            raise
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise


class _PerOSThread:
    """A ``threading.local`` stand-in keyed by the OS thread.

    diskcache keeps each thread's SQLite connection in a ``threading.local``.  FUSE calls
    into Python on libfuse's own threads, and ctypes gives every such callback a fresh
    Python thread state, so a ``threading.local`` starts empty on *every* call: diskcache
    opened and set up a new connection for each block read (a third of a warm read's
    time, measured with py-spy).  ``threading.get_ident()`` is the OS thread's id and
    stays put across callbacks, and it is what sqlite3's same-thread check compares."""

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


class DiskBlockStore(BlockStore):
    """A persistent, size-capped block store in ``directory`` (created mode 0700).

    Raises ``OSError``/``sqlite3.Error`` when the directory cannot be opened; wrap the
    store in ``SafeBlockStore`` so that failures *after* opening never fail a read.
    """

    def __init__(self, directory, block_size: int, size_limit: int | None, *, timeout: float = 10.0) -> None:
        """``size_limit=None`` keeps the limit stored in an existing directory (a second
        process that only reads and checks, like ``netmount verify``)."""
        self.block_size = check_block_size(block_size)
        self.directory = os.fspath(directory)
        # Blocks of gated/private repos: only the owner may read them. An existing
        # directory keeps the mode its owner gave it.
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)
        limit = {} if size_limit is None else {"size_limit": int(size_limit)}
        self._cache = diskcache.Cache(
            self.directory,
            timeout=timeout,
            disk=_BlockDisk,
            **limit,
            eviction_policy="least-recently-stored",
            disk_min_file_size=0,  # every block is a file: exact `size`, see module doc
            cull_limit=CULL_LIMIT,
            statistics=0,          # statistics would make every get a write transaction
        )
        self._cache._local = _PerOSThread()  # diskcache 5.x private: see _PerOSThread
        self._cache._sql(_COVERING_INDEX)  # diskcache 5.x private API: per-thread execute
        self._cache.cull(retry=True)  # a reopen with a smaller limit shrinks at once

    def _key(self, content_id: str, index: int) -> str:
        return f"{content_id}:{self.block_size}:{index:012d}"

    def _bounds(self, content_id: str) -> tuple[str, str]:
        # every key of this content and block size sorts in [prefix + ":", prefix + ";")
        prefix = f"{content_id}:{self.block_size}"
        return prefix + ":", prefix + ";"

    def get(self, content_id: str, index: int) -> bytes | None:
        check_index(index)
        key = self._key(content_id, index)
        data, crc = self._cache.get(key, tag=True)
        if data is None:
            return None
        if type(data) is not bytes or crc != zlib.crc32(data):
            self._cache.delete(key)  # torn or foreign value: drop it, refetch upstream
            return None
        return data

    def put(self, content_id: str, index: int, data: bytes) -> None:
        data = check_block(self.block_size, content_id, index, data)
        self._cache.set(self._key(content_id, index), data, tag=zlib.crc32(data))

    def will_need(self, content_id: str, indices) -> None:
        """``POSIX_FADV_WILLNEED`` on the blocks' files: the kernel reads them in the
        background, many at once (a warm reader otherwise waits ~2-3 ms per 1 MiB block
        file on this disk); the pages are the kernel's, not this process's memory."""
        wanted = {self._key(content_id, i) for i in indices}
        if not wanted:
            return
        rows = self._cache._sql(
            "SELECT key, filename FROM Cache WHERE key >= ? AND key <= ? AND filename IS NOT NULL",
            (min(wanted), max(wanted)),
        ).fetchall()
        for key, filename in rows:
            if key not in wanted:
                continue
            try:
                fd = os.open(os.path.join(self.directory, filename), os.O_RDONLY)
            except OSError:  # evicted since: the get will miss and refetch
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def cached_indices(self, content_id: str) -> list[int]:
        rows = self._cache._sql(
            "SELECT CAST(substr(key, -12) AS INTEGER) FROM Cache"
            " WHERE key >= ? AND key < ? ORDER BY key",
            self._bounds(content_id),
        )
        return [index for (index,) in rows]

    def cached_bytes(self, content_id: str) -> int:
        ((total,),) = self._cache._sql(
            "SELECT COALESCE(SUM(size), 0) FROM Cache WHERE key >= ? AND key < ?",
            self._bounds(content_id),
        ).fetchall()
        return total

    def drop(self, content_id: str) -> int:
        """Delete the blocks of ``content_id`` of every block size, and its marks, in one
        transaction; returns the bytes deleted."""
        if not content_id or ":" in content_id:
            raise ValueError(f"bad content id {content_id!r}")
        dropped = 0
        with self._cache.transact(retry=True):
            rows = self._cache._sql(
                "SELECT key, size FROM Cache WHERE key >= ? AND key < ?",
                (content_id + ":", content_id + ";"),
            ).fetchall()
            for key, size in rows:
                if self._cache.delete(key, retry=True):
                    dropped += size
        return dropped

    def _mark_key(self, content_id: str) -> str:
        return f"{content_id}:{self.block_size};verified"

    def fingerprint(self, content_id: str) -> str:
        ((count, newest, last),) = self._cache._sql(
            "SELECT COUNT(*), COALESCE(MAX(store_time), 0), COALESCE(MAX(rowid), 0) FROM Cache"
            " WHERE key >= ? AND key < ?",
            self._bounds(content_id),
        ).fetchall()
        return f"{count}/{newest!r}/{last}"

    def mark_verified(self, content_id: str, fingerprint) -> bool:
        if not fingerprint:
            return False
        with self._cache.transact(retry=True):
            if self.fingerprint(content_id) != fingerprint:
                return False  # a block changed while it was being hashed
            self._cache.set(self._mark_key(content_id), 1, tag=fingerprint, retry=True)
        return True

    def is_verified(self, content_id: str) -> bool:
        value, tag = self._cache.get(self._mark_key(content_id), tag=True)
        return value == 1 and tag == self.fingerprint(content_id)

    def volume(self) -> int:
        """Bytes of stored blocks (kept by diskcache's triggers; the SQLite file is extra)."""
        ((total,),) = self._cache._sql("SELECT value FROM Settings WHERE key = 'size'").fetchall()
        return total

    def close(self) -> None:
        """Close this thread's connection (diskcache keeps one per thread)."""
        self._cache.close()
