"""The reader's tiers below the network: blocks in memory, blocks in the store.

Each tier answers one question for one block (``get(f, i) -> bytes | None``) and counts
its own hits and misses (``counters``: ``memory_hits``/``store_hits``/``store_misses``).
The head and extents tiers (``head.py``, ``extents.py``) answer for byte ranges instead,
because what they hold is not block-shaped.

- ``BlockMemory``: a small LRU.  The kernel asks in 128 KiB pieces, so one 1 MiB block is
  read about eight times in a row; the store would pay its lookup each time.
- ``StoreTier``: the block store (``cache/``), a block served only when of the expected
  length.  It keeps, per file, the set of blocks known to be stored (read once from the
  store, then kept up to date by this daemon's own puts: another daemon's puts or
  evictions cost a refetch or a skipped prefetch, never a wrong byte), and *lifts* stored
  blocks into memory ahead of a reader on a few disk threads of its own, so a warm
  sequential reader finds its next blocks in memory instead of waiting on the disk once per
  block (a warm ``cat`` spent half its time there).  A reader that gets to a block before
  its lift has started reads it itself instead of queueing behind the pool (no hop).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from typing import Iterable

from cache import BlockStore
from netmount.core.blocks import block_span
from netmount.core.counters import Counters
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.reader")

Key = tuple[str, int]  # (content id, block index)


class BlockMemory:
    """Whole blocks in memory, least recently used out first."""

    def __init__(self, max_blocks: int, counters: Counters) -> None:
        self.max_blocks = max(2, max_blocks)
        self.counters = counters
        self._lock = threading.Lock()
        self._blocks: OrderedDict[Key, bytes] = OrderedDict()

    def get(self, key: Key) -> bytes | None:
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
        if data is not None:
            self.counters.add("memory_hits")
        return data

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._blocks

    def put(self, key: Key, data: bytes) -> None:
        with self._lock:
            self._blocks[key] = data
            self._blocks.move_to_end(key)
            while len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._blocks)

    def forget(self, content_id: str) -> None:
        """Drop every block of ``content_id`` (its stored blocks were found wrong)."""
        with self._lock:
            for key in [k for k in self._blocks if k[0] == content_id]:
                del self._blocks[key]


class StoreTier:
    """Blocks in the store, length-checked; which blocks are stored; lifting into memory."""

    def __init__(self, store: BlockStore, memory: BlockMemory, counters: Counters, *,
                 disk_workers: int = 4) -> None:
        self.store = store
        self.block_size = store.block_size
        self.memory = memory
        self.counters = counters
        self.lift_blocks = max(1, memory.max_blocks // 4)  # at most this many ahead in memory
        self._lock = threading.Lock()
        self._known: dict[str, set[int]] = {}  # content id -> blocks known stored
        self._lifting: dict[Key, concurrent.futures.Future] = {}
        self._advised: OrderedDict[Key, None] = OrderedDict()  # will_need sent
        self._pool = concurrent.futures.ThreadPoolExecutor(disk_workers, thread_name_prefix="netmount-disk")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the lifts under way; False on timeout."""
        with self._lock:
            lifting = list(self._lifting.values())
        return not concurrent.futures.wait(lifting, timeout).not_done

    # -- lookups ---------------------------------------------------------------------------
    def get(self, f: RemoteFile, i: int) -> bytes | None:
        """Block ``i`` from the store, read on the caller's thread: a lift of it that no disk
        thread has started yet is taken over (cancelled there), so a warm read never waits
        on the pool's queue; only a lift already reading it is waited for (``lift_waits``)."""
        key = (f.content_id, i)
        with self._lock:
            lifting = self._lifting.get(key)
            if lifting is not None and lifting.cancel():  # not started: ours now
                del self._lifting[key]
                lifting = None
        data = None
        if lifting is not None:
            if not lifting.done():
                self.counters.add("lift_waits")
            try:
                data = lifting.result()
            except concurrent.futures.CancelledError:  # another reader took it over
                data = None
        if data is None:
            data = self._read(f, i)
        self.counters.add("store_hits" if data is not None else "store_misses")
        return data

    def _read(self, f: RemoteFile, i: int) -> bytes | None:
        data = self.store.get(f.content_id, i)
        if data is None:
            return None
        start, end = block_span(i, self.block_size, f.size)
        if len(data) != end - start:
            log.warning("cached block %s:%d has %d bytes, expected %d: refetching",
                        f.content_id[:12], i, len(data), end - start)
            return None
        return data

    def known(self, f: RemoteFile) -> frozenset[int]:
        """Blocks of ``f`` known to be stored (a snapshot)."""
        with self._lock:
            known = self._known.get(f.content_id)
            if known is not None:
                return frozenset(known)
        found = set(self.store.cached_indices(f.content_id))  # outside the lock: a query
        with self._lock:
            known = self._known.setdefault(f.content_id, found)
            return frozenset(known)

    def mark(self, f: RemoteFile, i: int, stored: bool = True) -> None:
        with self._lock:
            known = self._known.get(f.content_id)
            if known is not None:
                (known.add if stored else known.discard)(i)

    def put(self, f: RemoteFile, i: int, data: bytes) -> None:
        self.store.put(f.content_id, i, data)
        self.mark(f, i)

    def forget(self, content_id: str) -> None:
        """Forget which blocks of ``content_id`` are stored (they were dropped): the next
        ``known`` asks the store again."""
        with self._lock:
            self._known.pop(content_id, None)
            for key in [k for k in self._advised if k[0] == content_id]:
                del self._advised[key]

    # -- ahead of the reader -----------------------------------------------------------------
    def lift(self, f: RemoteFile, indices: Iterable[int]) -> None:
        """Stored blocks among ``indices`` (in order) that are not in memory: the first
        ``lift_blocks`` are read into memory in the background, the rest are hinted to the
        page cache (``will_need``).  No network."""
        known = self.known(f)
        cid = f.content_id
        lift: list[tuple[int, concurrent.futures.Future]] = []
        advise: list[int] = []
        with self._lock:
            for n, i in enumerate(indices):
                key = (cid, i)
                if i not in known or key in self.memory or key in self._lifting:
                    continue
                if n < self.lift_blocks:
                    self._lifting[key] = fut = concurrent.futures.Future()
                    lift.append((i, fut))
                elif key not in self._advised:
                    self._advised[key] = None
                    advise.append(i)
            while len(self._advised) > 4 * self.memory.max_blocks:
                self._advised.popitem(last=False)
        submitted = 0
        try:
            if advise:  # on the pool: a WILLNEED may block while the kernel queues the reads
                self._pool.submit(self.store.will_need, cid, advise)
            for i, fut in lift:
                self._pool.submit(self._lift, f, i, fut)
                submitted += 1
        except RuntimeError:  # shutting down
            for i, fut in lift[submitted:]:
                if fut.set_running_or_notify_cancel():
                    self._lifted(f, i, fut, None)

    def _lift(self, f: RemoteFile, i: int, fut: concurrent.futures.Future) -> None:
        if not fut.set_running_or_notify_cancel():  # a reader took it over (``get``)
            return
        data = None
        try:
            data = self._read(f, i)
        except Exception:  # the daemon's store is SafeBlockStore; be safe anyway
            log.exception("reading block %d of %s from the store failed", i, f.path)
        finally:
            self._lifted(f, i, fut, data)

    def _lifted(self, f: RemoteFile, i: int, fut: concurrent.futures.Future, data: bytes | None) -> None:
        if data is not None:
            self.memory.put((f.content_id, i), data)  # in memory before the waiters look again
        else:  # evicted since we looked (or unreadable): fetched like any missing block
            self.mark(f, i, stored=False)
        with self._lock:
            self._lifting.pop((f.content_id, i), None)
        fut.set_result(data)
