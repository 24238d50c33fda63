"""In-memory twin of the disk store, for tests and as a fallback when the disk cache fails."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .store import BlockStore, check_block, check_block_size


class MemoryBlockStore(BlockStore):
    """Blocks in a dict, least-recently-used evicted once ``volume() > size_limit``.

    Unlike the disk store, a hit here costs nothing to record, so true LRU is free.
    ``size_limit=None`` means unbounded; ``size_limit=0`` caches nothing.
    """

    def __init__(self, block_size: int, size_limit: int | None = None) -> None:
        self.block_size = check_block_size(block_size)
        self.size_limit = size_limit
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._by_content: dict[str, dict[int, int]] = {}  # content id -> {index: length}
        self._volume = 0
        self._changes = 0  # bumped by every put and discard: the fingerprints' clock
        self._changed: dict[str, int] = {}  # content id -> clock at its last change
        self._verified: dict[str, tuple[int, int]] = {}  # content id -> fingerprint marked

    def get(self, content_id: str, index: int) -> bytes | None:
        key = (content_id, index)
        with self._lock:
            data = self._blocks.get(key)
            if data is not None:
                self._blocks.move_to_end(key)
            return data

    def put(self, content_id: str, index: int, data: bytes) -> None:
        data = check_block(self.block_size, content_id, index, data)
        with self._lock:
            self._discard((content_id, index))
            self._touch(content_id)
            self._blocks[(content_id, index)] = data
            self._by_content.setdefault(content_id, {})[index] = len(data)
            self._volume += len(data)
            while self.size_limit is not None and self._volume > self.size_limit:
                self._discard(next(iter(self._blocks)))

    def _discard(self, key: tuple[str, int]) -> None:
        data = self._blocks.pop(key, None)
        if data is None:
            return
        self._volume -= len(data)
        self._touch(key[0])
        lengths = self._by_content[key[0]]
        del lengths[key[1]]
        if not lengths:
            del self._by_content[key[0]]

    def _touch(self, content_id: str) -> None:
        self._changes += 1
        self._changed[content_id] = self._changes

    def drop(self, content_id: str) -> int:
        with self._lock:
            dropped = 0
            for i in list(self._by_content.get(content_id, ())):
                dropped += len(self._blocks[(content_id, i)])
                self._discard((content_id, i))
            self._verified.pop(content_id, None)
            return dropped

    def fingerprint(self, content_id: str):
        with self._lock:
            return (len(self._by_content.get(content_id, ())), self._changed.get(content_id, 0))

    def mark_verified(self, content_id: str, fingerprint) -> bool:
        with self._lock:
            now = (len(self._by_content.get(content_id, ())), self._changed.get(content_id, 0))
            if fingerprint is None or tuple(fingerprint) != now:
                return False
            self._verified[content_id] = now
            return True

    def is_verified(self, content_id: str) -> bool:
        with self._lock:
            now = (len(self._by_content.get(content_id, ())), self._changed.get(content_id, 0))
            return self._verified.get(content_id) == now

    def cached_indices(self, content_id: str) -> list[int]:
        with self._lock:
            return sorted(self._by_content.get(content_id, ()))

    def cached_bytes(self, content_id: str) -> int:
        with self._lock:
            return sum(self._by_content.get(content_id, {}).values())

    def volume(self) -> int:
        with self._lock:
            return self._volume

    def close(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._by_content.clear()
            self._verified.clear()
            self._volume = 0
