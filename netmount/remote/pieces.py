"""How one fetch is cut into parallel sub-requests, and put back into the contract's pieces.

A range a reader waits for goes out as up to ``SPLIT_MAX`` parallel sub-requests of at least
``SPLIT_PIECE``: where each connection is capped (CDNs, the bench's emulated link) a 1 MiB
miss then costs a round trip and a quarter of its transfer time.  The contract
(``contract.py``) still hands out its own pieces, however the sub-requests cut them.
Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from netmount.core.blocks import PAGE  # a split that cannot cut on piece edges cuts on pages
from netmount.remote.contract import OnPart

SPLIT_PIECE, SPLIT_MAX = 256 << 10, 4


def split_cuts(start: int, end: int, part_size: int = 0, prefetch: bool = False) -> list[int]:
    """Where ``[start, end)`` is cut into parallel sub-requests: ``[c0, c1), [c1, c2), ...``.

    A prefetch, or a range under ``2 * SPLIT_PIECE``, is one request.  A range a reader waits
    for goes out as up to ``SPLIT_MAX`` sub-requests of at least ``SPLIT_PIECE``, cut on piece
    edges when there are at least two whole pieces (each piece then streams as it arrives),
    else on pages (the pieces they cut are assembled before they are handed out)."""
    length = end - start
    if prefetch or length < 2 * SPLIT_PIECE:
        return [start, end]
    unit = part_size if 0 < part_size and length >= 2 * part_size else PAGE
    units = -(-length // unit)
    n = min(SPLIT_MAX, length // SPLIT_PIECE, units)
    step = -(-units // n) * unit
    return [*range(start, end, step), end]


class Pieces:
    """The contract's pieces of one fetch, from sub-requests that may cut them.

    A sub-request reads its body in ``segments`` (its range cut at piece edges); a segment
    that is a whole piece goes to ``on_part`` as it is, the segments of a piece cut across
    sub-requests are copied together and the piece goes out, once, when it is complete.  A
    retried sub-request puts its segments again: whole pieces go out again (the contract
    allows it), an assembled piece already out is not sent twice.  Loop thread only."""

    def __init__(self, start: int, end: int, part_size: int, on_part: OnPart) -> None:
        self.start, self.end, self.on_part = start, end, on_part
        self.size = part_size if 0 < part_size < end - start else end - start
        self._open: dict[int, tuple[bytearray, dict[int, int]]] = {}  # piece -> (bytes, segments)
        self._sent: set[int] = set()  # assembled pieces already handed out

    def piece(self, offset: int) -> tuple[int, int]:
        a = self.start + (offset - self.start) // self.size * self.size
        return a, min(self.end, a + self.size)

    def segments(self, a: int, b: int) -> list[tuple[int, int]]:
        out = []
        while a < b:
            hi = min(b, self.piece(a)[1])
            out.append((a, hi))
            a = hi
        return out

    def put(self, lo: int, data: bytes) -> None:
        a, b = self.piece(lo)
        if lo == a and len(data) == b - a:
            self.on_part(a, data)
            return
        if a in self._sent:
            return
        buf, have = self._open.setdefault(a, (bytearray(b - a), {}))
        buf[lo - a : lo - a + len(data)] = data
        have[lo] = len(data)
        if sum(have.values()) == b - a:
            del self._open[a]
            self._sent.add(a)
            self.on_part(a, bytes(buf))
