"""A cache failure must never fail a read: errors become misses and no-ops, logged once."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Callable

from .store import BlockStore


class SafeBlockStore(BlockStore):
    """Wraps any store: an exception in a call is logged and turned into a miss / no-op / 0.

    Disk full, an unwritable or vanished directory, a corrupted database: the origin can
    always serve the bytes again, so the read goes on without the cache.  The first
    failure of each kind (operation, exception type) is a warning with its traceback,
    the rest are debug lines, so a dead disk does not flood the log; ``failures``
    counts them all for stats.
    """

    def __init__(self, inner: BlockStore, logger: logging.Logger) -> None:
        self.inner = inner
        self.block_size = inner.block_size
        self.log = logger
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, factory: Callable[[], BlockStore], logger: logging.Logger,
             fallback: Callable[[], BlockStore]) -> "SafeBlockStore":
        """``factory()`` wrapped, or ``fallback()`` when opening fails (one warning)."""
        try:
            inner = factory()
        except Exception as exc:
            logger.warning("block cache unavailable (%s: %s); using a fallback store",
                           type(exc).__name__, exc)
            inner = fallback()
        return cls(inner, logger)

    def _try(self, op: str, default, *args, **kwargs):
        try:
            return getattr(self.inner, op)(*args, **kwargs)
        except Exception as exc:
            self._failed(op, exc)
            return default

    def _failed(self, op: str, exc: Exception) -> None:
        kind = f"{op}:{type(exc).__name__}"
        with self._lock:
            self.failures[kind] += 1
            first = self.failures[kind] == 1
        if first:
            self.log.warning("block cache %s failed, continuing without the cache: %s: %s"
                             " (further %s errors of this kind are logged at debug level)",
                             op, type(exc).__name__, exc, kind, exc_info=exc)
        else:
            self.log.debug("block cache %s failed: %s: %s", op, type(exc).__name__, exc)

    # writing: no-ops on failure
    def put(self, content_id, index, data) -> None:
        self._try("put", None, content_id, index, data)

    def put_range(self, content_id, offset, data, size) -> None:
        self._try("put_range", None, content_id, offset, data, size)

    def put_ranges(self, items) -> None:
        self._try("put_ranges", None, items)

    def prepare(self, content_id, ranges, size) -> None:
        self._try("prepare", None, content_id, ranges, size)

    def will_need(self, content_id, indices) -> None:
        self._try("will_need", None, content_id, indices)

    # reading: misses on failure
    def held(self, content_id, *, refresh=False) -> list[tuple[int, int]]:
        return self._try("held", [], content_id, refresh=refresh)

    def segments(self, content_id, offset, length, size):
        return self._try("segments", None, content_id, offset, length, size)

    def read(self, content_id, offset, length, size) -> bytes | None:
        return self._try("read", None, content_id, offset, length, size)

    def get(self, content_id, index) -> bytes | None:
        return self._try("get", None, content_id, index)

    # what is held: nothing on failure
    def cached_indices(self, content_id) -> list[int]:
        return self._try("cached_indices", [], content_id)

    def cached_bytes(self, content_id) -> int:
        return self._try("cached_bytes", 0, content_id)

    def cached_ranges(self, content_id) -> list[tuple[int, int]]:
        return self._try("cached_ranges", [], content_id)

    def volume(self) -> int:
        return self._try("volume", 0)

    def drop(self, content_id) -> int:
        return self._try("drop", 0, content_id)

    def fingerprint(self, content_id):
        return self._try("fingerprint", None, content_id)

    def mark_verified(self, content_id, fingerprint) -> bool:
        return self._try("mark_verified", False, content_id, fingerprint)

    def is_verified(self, content_id) -> bool:
        return self._try("is_verified", False, content_id)

    def close(self) -> None:
        self._try("close", None)
