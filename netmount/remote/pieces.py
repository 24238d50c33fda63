"""How one fetch is cut into parallel sub-requests, and where their bodies go: the contract's
pieces, each a buffer read into once.

A range a reader waits for goes out as up to ``SPLIT_MAX`` parallel sub-requests of at least
``SPLIT_PIECE``: where each connection is capped (CDNs, the bench's emulated link) a 1 MiB
miss then costs a round trip and a quarter of its transfer time.  The contract
(``contract.py``) still hands out its own pieces, however the sub-requests cut them.

No copy after the socket: a sub-request reads its body segment by segment (its range cut at
piece edges) straight into the buffer of the segment's piece (``buffer``: a view of a
``bytearray`` of the piece's size, taken when first needed: ``buffers.py``).  A piece goes to ``on_part`` —
that very ``bytearray``, never written again — once its segments are all in (``filled``),
whichever sub-requests filled them.  A try that fails resumes at the first segment not filled
(``first_missing``), so a retry never reads, nor hands out, a piece twice.  Pure: no I/O.
"""

from __future__ import annotations

import threading

from netmount.core.blocks import PAGE  # a split that cannot cut on piece edges cuts on pages
from netmount.remote.contract import OnPart

SPLIT_PIECE, SPLIT_MAX = 256 << 10, 4


def split_cuts(start: int, end: int, part_size: int = 0, prefetch: bool = False) -> list[int]:
    """Where ``[start, end)`` is cut into parallel sub-requests: ``[c0, c1), [c1, c2), ...``.

    A prefetch, or a range under ``2 * SPLIT_PIECE``, is one request.  A range a reader waits
    for goes out as up to ``SPLIT_MAX`` sub-requests of at least ``SPLIT_PIECE``, cut on piece
    edges when there are at least two whole pieces (each piece then streams as it arrives),
    else on pages (the pieces they cut are filled by two sub-requests, then handed out)."""
    length = end - start
    if prefetch or length < 2 * SPLIT_PIECE:
        return [start, end]
    unit = part_size if 0 < part_size and length >= 2 * part_size else PAGE
    units = -(-length // unit)
    n = min(SPLIT_MAX, length // SPLIT_PIECE, units)
    step = -(-units // n) * unit
    return [*range(start, end, step), end]


class Abandoned(Exception):
    """The fetch has failed (another sub-request gave up): nothing more goes out."""


class Pieces:
    """The contract's pieces of one fetch, filled by its sub-requests (see the module
    docstring).  Thread-safe: sub-requests run on several threads.  ``on_part`` is called
    under the lock, so after ``close()`` returns no piece goes out any more."""

    def __init__(self, start: int, end: int, part_size: int, on_part: OnPart, buffers=None) -> None:
        """``buffers``: a ``buffers.Buffers`` to take the pieces' buffers from (None: new ones)."""
        self.start, self.end, self.on_part, self.buffers = start, end, on_part, buffers
        self.size = part_size if 0 < part_size < end - start else end - start
        self._pooled = part_size if buffers is not None else 0  # the one size that comes again
        self._lock = threading.Lock()
        self._bufs: dict[int, bytearray] = {}  # piece start -> its buffer, while it fills
        self._have: dict[int, int] = {}  # piece start -> bytes of it filled
        self._filled: set[int] = set()  # segment starts filled
        self.closed = False

    def piece(self, offset: int) -> tuple[int, int]:
        a = self.start + (offset - self.start) // self.size * self.size
        return a, min(self.end, a + self.size)

    def segments(self, a: int, b: int) -> list[tuple[int, int]]:
        """``[a, b)`` cut at piece edges, in order."""
        out = []
        while a < b:
            hi = min(b, self.piece(a)[1])
            out.append((a, hi))
            a = hi
        return out

    def first_missing(self, a: int, b: int) -> int:
        """Where a (re)try of the sub-request ``[a, b)`` starts: its first segment not filled
        (``b``: all are).  ``Abandoned`` once the fetch has failed."""
        with self._lock:
            if self.closed:
                raise Abandoned
            for lo, _hi in self.segments(a, b):
                if lo not in self._filled:
                    return lo
            return b

    def buffer(self, lo: int, hi: int) -> memoryview:
        """Where the bytes ``[lo, hi)`` of one segment go: a view of its piece's buffer."""
        a, b = self.piece(lo)
        with self._lock:
            if self.closed:
                raise Abandoned
            buf = self._bufs.get(a)
            if buf is None:
                buf = self._bufs[a] = self.buffers.take(b - a) if b - a == self._pooled else bytearray(b - a)
        return memoryview(buf)[lo - a : hi - a]

    def filled(self, lo: int, hi: int) -> None:
        """The segment ``[lo, hi)`` is in its buffer: its piece goes out once all of it is."""
        a, b = self.piece(lo)
        with self._lock:
            if self.closed:
                raise Abandoned
            if lo in self._filled:
                return
            self._filled.add(lo)
            have = self._have[a] = self._have.get(a, 0) + hi - lo
            if have == b - a:
                del self._have[a]
                self.on_part(a, self._bufs.pop(a))

    def close(self) -> None:
        """The fetch failed: no piece goes out from now on, and the buffers are let go."""
        with self._lock:
            self.closed = True
            self._bufs.clear()
