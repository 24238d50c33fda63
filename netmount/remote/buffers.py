"""Piece buffers used again: a ``bytearray`` nobody holds any more is handed out again instead
of a new one.

Why: a new 1 MiB ``bytearray`` costs 100-160 µs with the GIL held (malloc's fresh pages,
faulted in by the memset that zeroes them) — half the fetch threads' Python time in a cold
``cat`` (py-spy).  A buffer handed to ``on_part`` is never written again *while anyone holds
it*; once the store has written it and every reader has let it go, only this pool refers to
it, and nobody can tell it from a new one.  CPython counts every holder (``sys.getrefcount``:
containers, frames, memoryviews and ctypes pointers into it alike), so "only the pool holds
it" is exact, and a buffer taken from here is held by its taker before the lock is let go.

Only pieces of the contract's ``part_size`` come from here (``pieces.Pieces``: the daemon's
block size).  A new buffer is made only when every kept one is in use, so the pool never
holds more than were ever in use at once — which the read path's budget bounds (bytes in
flight and landed, not stored yet) — and ``keep_bytes`` is only a safety net.
"""

from __future__ import annotations

import collections
import sys
import threading

FREE = 3  # getrefcount of a buffer only the pool holds: the deque, ``take``'s local, the call


class Buffers:
    def __init__(self, keep_bytes: int = 256 << 20) -> None:
        self.keep_bytes = keep_bytes
        self._lock = threading.Lock()
        self._pools: dict[int, collections.deque[bytearray]] = {}  # size -> its buffers
        self._kept = 0  # bytes in all pools

    def take(self, size: int) -> bytearray:
        """A ``bytearray`` of ``size`` bytes nobody else holds (its old bytes still in it).
        Ask only for sizes that come again (a fetch's whole pieces): each size asked for
        keeps buffers, up to ``keep_bytes`` in all."""
        with self._lock:
            pool = self._pools.setdefault(size, collections.deque())
            for _ in range(len(pool)):  # oldest first: the likeliest to be free
                buf = pool[0]
                pool.rotate(-1)
                if sys.getrefcount(buf) == FREE:
                    return buf
            buf = bytearray(size)
            if self._kept + size <= self.keep_bytes:
                pool.append(buf)
                self._kept += size
            return buf
