"""Open fds of stored files: a bounded LRU, and a graveyard that keeps them open a while.

An fd handed out in a ``Segment`` is read by libfuse in C after our callback returns.  If
it were closed at once when it left the LRU, the number could be reused by another open
before libfuse reads it, and a program would get another file's bytes.  So an fd that
leaves (LRU overflow, its file evicted or found bad) goes to the graveyard and is closed
only once it has been there ``grace`` seconds (``store.FD_GRACE``).  Files are never
rewritten under a name and names are never reused (random 128-bit), so an fd cached by
name always reads the bytes that name was written with.

The graveyard is bounded by the process's fd limit (raised to the hard limit at start if
it is low): past ``max_total`` open fds, graveyard fds older than ``MIN_GRACE`` are closed
early, with one warning.  libfuse reads an fd within milliseconds of the reply, so that
margin is still wide; reaching it takes thousands of distinct files a second.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections import OrderedDict, deque
from typing import Callable

from .store import FD_GRACE

MIN_GRACE = 1.0
log = logging.getLogger(__name__)


def raise_nofile(wanted: int) -> int:
    """Raise ``RLIMIT_NOFILE``'s soft limit towards ``wanted`` (at most the hard limit);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class FdCache:
    """fds of files under ``directory`` by relative name; thread-safe; no I/O under the lock
    (opens and closes happen outside it)."""

    def __init__(self, directory: str, max_open: int = 1024, *, grace: float = FD_GRACE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.grace = grace
        self.clock = clock
        limit = raise_nofile(8 * max_open)
        self.max_open = max(2, min(max_open, limit // 4))
        self.max_total = max(2 * self.max_open, limit // 2)
        self._lock = threading.Lock()
        self._open: OrderedDict[str, int] = OrderedDict()
        self._grave: deque[tuple[float, int]] = deque()  # (time it left, fd), oldest first
        self._warned = False
        self.opened = 0  # counters, for benchmarks and tests
        self.closed_early = 0

    def get(self, name: str) -> int | None:
        """An open fd of the file ``name``, or None if there is no such file (gone)."""
        with self._lock:
            fd = self._open.get(name)
            if fd is not None:
                self._open.move_to_end(name)
                return fd
        try:
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with self._lock:
            mine = self._open.setdefault(name, fd)
            self.opened += mine == fd
            self._open.move_to_end(name)
            while len(self._open) > self.max_open:
                self._grave.append((self.clock(), self._open.popitem(last=False)[1]))
            closing = self._sweep()
        if mine != fd:  # another thread opened it meanwhile: ours was never handed out
            closing.append(fd)
        _close_all(closing)
        return mine

    def __contains__(self, name: str) -> bool:
        """An fd of ``name`` is open (its bytes readable, even if the file was removed since)."""
        with self._lock:
            return name in self._open

    def discard(self, name: str) -> None:
        """The file ``name`` is gone or bad: stop handing out its fd (it stays open for the
        grace, as it may be in a reply under way)."""
        with self._lock:
            fd = self._open.pop(name, None)
            if fd is not None:
                self._grave.append((self.clock(), fd))
            closing = self._sweep()
        _close_all(closing)

    def _sweep(self) -> list[int]:
        """fds to close now (called under the lock; closed by the caller outside it)."""
        now = self.clock()
        out = []
        while self._grave and now - self._grave[0][0] >= self.grace:
            out.append(self._grave.popleft()[1])
        while self._grave and len(self._open) + len(self._grave) > self.max_total \
                and now - self._grave[0][0] >= MIN_GRACE:
            out.append(self._grave.popleft()[1])
            self.closed_early += 1
            if not self._warned:
                self._warned = True
                log.warning("block store: more than %d fds open; closing unused ones after %.0f s"
                            " instead of %.0f s", self.max_total, MIN_GRACE, self.grace)
        return out

    def counts(self) -> dict:
        with self._lock:
            return {"open": len(self._open), "grave": len(self._grave), "opened": self.opened,
                    "closed_early": self.closed_early}

    def is_open(self, fd: int) -> bool:
        """Whether ``fd`` is one of ours, still open (tests)."""
        with self._lock:
            return fd in self._open.values() or any(f == fd for _, f in self._grave)

    def close(self) -> None:
        """Close every fd now (the store is closing: no reply is under way any more)."""
        with self._lock:
            fds = list(self._open.values()) + [fd for _, fd in self._grave]
            self._open.clear()
            self._grave.clear()
        _close_all(fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
