"""``prepare`` hints run here: a few threads of the store's own, and a bounded backlog.

A hint is worth doing only soon: when the backlog is full a new hint is dropped (the read
it was for will check its objects itself), so a fast sequential reader cannot queue up
unbounded work behind a slow disk.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Callable

log = logging.getLogger("cache")


class Preparer:
    def __init__(self, workers: int = 4, max_pending: int = 256) -> None:
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="cache-prepare")
        self.dropped = 0

    def submit(self, work: Callable[..., None], *args) -> bool:
        """``work(*args)`` on a prepare thread; False if dropped (backlog full, or closed)."""
        with self._lock:
            if len(self._pending) >= self._max_pending:
                self.dropped += 1
                return False
            try:
                fut = self._pool.submit(self._run, work, args)
            except RuntimeError:  # closed
                return False
            self._pending.add(fut)
        fut.add_done_callback(self._done)
        return True

    def _run(self, work: Callable[..., None], args) -> None:
        try:
            work(*args)
        except Exception:  # a hint: never an error anyone waits for
            log.debug("block store: prepare failed", exc_info=True)

    def _done(self, fut: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def drain(self, timeout: float | None = None) -> bool:
        with self._lock:
            pending = list(self._pending)
        return not concurrent.futures.wait(pending, timeout).not_done

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
