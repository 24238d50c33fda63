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
        lengths = self._by_content[key[0]]
        del lengths[key[1]]
        if not lengths:
            del self._by_content[key[0]]

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
            self._volume = 0
