"""In-memory twin of the disk store, for tests and as a fallback when the disk cache fails.

Same contract as ``DiskBlockStore`` (whole blocks and pieces, merged the same way by
``pieces.plan``), but its ``Segment``s carry the bytes (``fd == -1``, ``data``), nothing
is checksummed (nothing can rot in memory) and another process never shares it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from . import pieces
from .held import Held, Obj
from .store import BlockStore, Segment, check_block, check_block_size, check_content_id, check_span


class MemoryBlockStore(BlockStore):
    """Objects in memory, least-recently-used evicted once ``volume() > size_limit``.

    Unlike the disk store, a hit here costs nothing to record, so true LRU is free.
    ``size_limit=None`` means unbounded; ``size_limit=0`` keeps nothing.
    """

    def __init__(self, block_size: int, size_limit: int | None = None) -> None:
        self.block_size = check_block_size(block_size)
        self.size_limit = size_limit
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}
        self._lru: OrderedDict[Obj, tuple[str, int]] = OrderedDict()  # object -> (content, index)
        self._volume = 0
        self._changes = 0  # bumped by every change: the fingerprints' clock
        self._changed: dict[str, int] = {}  # content id -> clock at its last change
        self._verified: dict[str, tuple[int, int]] = {}  # content id -> fingerprint marked

    # -- writing -------------------------------------------------------------------------------
    def put(self, content_id: str, index: int, data) -> None:
        data = check_block(self.block_size, content_id, index, data)
        start = index * self.block_size
        with self._lock:
            self._add(content_id, index, Obj(start, len(data), data, True))
            for p in list(self._held[content_id].pieces.get(index, ())):
                self._discard(content_id, index, p)
            self._evict()

    def put_ranges(self, items) -> None:
        groups = pieces.group(items, self.block_size)
        with self._lock:
            for (content_id, index), w in groups.items():
                held = self._held.get(content_id) or Held()
                block = held.blocks.get(index)
                if block is not None and block.length == w.hi - w.lo:
                    continue  # held whole already
                writes, consumed = pieces.plan(w, list(held.pieces.get(index, ())), lambda o: o.ref)
                for start, data, whole in writes:
                    if whole:
                        consumed = list(held.pieces.get(index, ()))
                    self._add(content_id, index, Obj(start, len(data), data, whole))
                for p in consumed:
                    self._discard(content_id, index, p)
            self._evict()

    def _add(self, content_id: str, index: int, obj: Obj) -> None:
        old = self._held.setdefault(content_id, Held()).add(index, obj)
        if old is not None:
            self._lru.pop(old, None)
            self._volume -= old.length
        self._lru[obj] = (content_id, index)
        self._volume += obj.length
        self._touch(content_id)

    def _discard(self, content_id: str, index: int, obj: Obj) -> None:
        held = self._held.get(content_id)
        if held is None or not held.discard(index, obj):
            return
        self._lru.pop(obj, None)
        self._volume -= obj.length
        self._touch(content_id)
        if not held:
            del self._held[content_id]

    def _evict(self) -> None:
        while self.size_limit is not None and self._volume > self.size_limit and self._lru:
            obj, (content_id, index) = next(iter(self._lru.items()))
            self._discard(content_id, index, obj)

    def _touch(self, content_id: str) -> None:
        self._changes += 1
        self._changed[content_id] = self._changes

    # -- reading -------------------------------------------------------------------------------
    def held(self, content_id: str, *, refresh: bool = False) -> list[tuple[int, int]]:
        with self._lock:
            held = self._held.get(content_id)
            return list(held.spans()) if held is not None else []

    def segments(self, content_id: str, offset: int, length: int, size: int) -> list[Segment] | None:
        end = check_span(offset, length, size)
        with self._lock:
            held = self._held.get(content_id)
            if held is None:
                return [] if offset >= end else None
            plan = held.plan(offset, end, size, self.block_size)
            if plan is None:
                return None
            for _, obj, _, _ in plan:
                self._lru.move_to_end(obj)
        return [Segment(-1, a - obj.start, b - a, obj.ref) for _, obj, a, b in plan]

    def get(self, content_id: str, index: int) -> bytes | None:
        with self._lock:
            held = self._held.get(content_id)
            obj = held.blocks.get(index) if held is not None else None
            if obj is None:
                return None
            self._lru.move_to_end(obj)
            return obj.ref

    # -- what is held ------------------------------------------------------------------------------
    def cached_ranges(self, content_id: str) -> list[tuple[int, int]]:
        return self.held(content_id)

    def cached_indices(self, content_id: str) -> list[int]:
        with self._lock:
            held = self._held.get(content_id)
            return sorted(held.blocks) if held is not None else []

    def cached_bytes(self, content_id: str) -> int:
        with self._lock:
            held = self._held.get(content_id)
            return held.nbytes() if held is not None else 0

    def volume(self) -> int:
        with self._lock:
            return self._volume

    def drop(self, content_id: str) -> int:
        check_content_id(content_id)
        with self._lock:
            held = self._held.get(content_id)
            dropped = 0
            for index, obj in list(held.objects()) if held is not None else ():
                dropped += obj.length
                self._discard(content_id, index, obj)
            self._verified.pop(content_id, None)
            return dropped

    def _fingerprint(self, content_id: str) -> tuple[int, int]:
        held = self._held.get(content_id)
        return (len(held) if held is not None else 0, self._changed.get(content_id, 0))

    def fingerprint(self, content_id: str):
        with self._lock:
            return self._fingerprint(content_id)

    def mark_verified(self, content_id: str, fingerprint) -> bool:
        with self._lock:
            now = self._fingerprint(content_id)
            if fingerprint is None or tuple(fingerprint) != now:
                return False
            self._verified[content_id] = now
            return True

    def is_verified(self, content_id: str) -> bool:
        with self._lock:
            return self._verified.get(content_id) == self._fingerprint(content_id)

    def close(self) -> None:
        with self._lock:
            self._held.clear()
            self._lru.clear()
            self._verified.clear()
            self._volume = 0
