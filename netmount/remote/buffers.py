"""Piece buffers used again: a ``bytearray`` nobody holds any more is handed out again instead
of a new one.

Why: a new 1 MiB ``bytearray`` costs 100-160 µs with the GIL held (malloc's fresh pages,
faulted in by the memset that zeroes them) — half the fetch threads' Python time in a cold
``cat`` (py-spy).  A buffer handed to ``on_part`` is never written again *while anyone holds
it*; once the store has written it and every reader has let it go, only this pool refers to
it, and nobody can tell it from a new one.  CPython counts every holder (``sys.getrefcount``:
containers, frames, memoryviews and ctypes pointers into it alike), so "only the pool holds
it" is exact, and a buffer taken from here is held by its taker before the lock is let go.

Only buffers of one size (the contract's piece size, the daemon's block) are kept, at most
``keep_bytes`` of them; other sizes, and a pool whose buffers are all in use, get new ones.
"""

from __future__ import annotations

import collections
import sys
import threading

FREE = 3  # getrefcount of a buffer only the pool holds: the deque, ``take``'s local, the call


class Buffers:
    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self._lock = threading.Lock()
        self._size = 0  # the size kept (the first piece size asked for)
        self._pool: collections.deque[bytearray] = collections.deque()

    def take(self, size: int) -> bytearray:
        """A ``bytearray`` of ``size`` bytes nobody else holds (its old bytes still in it)."""
        with self._lock:
            if not self._size:
                self._size = size
            if size != self._size:
                return bytearray(size)
            pool = self._pool
            for _ in range(len(pool)):  # oldest first: the likeliest to be free
                buf = pool[0]
                pool.rotate(-1)
                if sys.getrefcount(buf) == FREE:
                    return buf
            buf = bytearray(size)
            if (len(pool) + 1) * size <= self.keep_bytes:
                pool.append(buf)
            return buf
