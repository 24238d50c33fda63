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
    always serve the bytes again, so the read goes on without the cache. The first
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

    def get(self, content_id: str, index: int) -> bytes | None:
        try:
            return self.inner.get(content_id, index)
        except Exception as exc:
            self._failed("get", exc)
            return None

    def put(self, content_id: str, index: int, data: bytes) -> None:
        try:
            self.inner.put(content_id, index, data)
        except Exception as exc:
            self._failed("put", exc)

    def cached_indices(self, content_id: str) -> list[int]:
        try:
            return self.inner.cached_indices(content_id)
        except Exception as exc:
            self._failed("cached_indices", exc)
            return []

    def cached_bytes(self, content_id: str) -> int:
        try:
            return self.inner.cached_bytes(content_id)
        except Exception as exc:
            self._failed("cached_bytes", exc)
            return 0

    def volume(self) -> int:
        try:
            return self.inner.volume()
        except Exception as exc:
            self._failed("volume", exc)
            return 0

    def will_need(self, content_id: str, indices) -> None:
        try:
            self.inner.will_need(content_id, indices)
        except Exception as exc:
            self._failed("will_need", exc)

    def drop(self, content_id: str) -> int:
        try:
            return self.inner.drop(content_id)
        except Exception as exc:
            self._failed("drop", exc)
            return 0

    def fingerprint(self, content_id: str):
        try:
            return self.inner.fingerprint(content_id)
        except Exception as exc:
            self._failed("fingerprint", exc)
            return None

    def mark_verified(self, content_id: str, fingerprint) -> bool:
        try:
            return self.inner.mark_verified(content_id, fingerprint)
        except Exception as exc:
            self._failed("mark_verified", exc)
            return False

    def is_verified(self, content_id: str) -> bool:
        try:
            return self.inner.is_verified(content_id)
        except Exception as exc:
            self._failed("is_verified", exc)
            return False

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception as exc:
            self._failed("close", exc)
