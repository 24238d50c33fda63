"""Sets of integers as sorted, merged, half-open intervals ``[start, end)``: the job rclone's
``lib/ranges`` does.  Pure; tested against a plain set-of-integers model (``tests/test_ranges.py``).

The unit is the caller's: bytes of a file, or block indices (``warm`` plans block runs,
``statsview`` counts cached blocks per bar cell).  Intervals touching or overlapping are
merged, empty ones are dropped, so two ``Ranges`` holding the same integers are equal.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator

Interval = tuple[int, int]  # [start, end)


class Ranges:
    """A mutable set of integers kept as sorted, disjoint, non-adjacent ``[start, end)`` intervals."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(intervals):
            self.add(start, end)

    @classmethod
    def from_runs(cls, runs: Iterable[tuple[int, int]]) -> "Ranges":
        """From inclusive ``(first, last)`` runs, as ``blocks.coalesce`` and stats.json give them."""
        return cls((first, last + 1) for first, last in runs)

    def runs(self) -> list[tuple[int, int]]:
        """Inclusive ``(first, last)`` runs: the inverse of ``from_runs``."""
        return [(s, e - 1) for s, e in self]

    def add(self, start: int, end: int) -> None:
        """Insert ``[start, end)``, merging with every interval it overlaps or touches."""
        if start >= end:
            return
        lo = bisect.bisect_left(self._ends, start)  # first interval ending at or after start
        hi = bisect.bisect_right(self._starts, end)  # intervals from hi on start after end
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def missing(self, start: int, end: int) -> list[Interval]:
        """The gaps: sub-intervals of ``[start, end)`` not in the set, in order."""
        out, pos = [], start
        for s, e in self._overlapping(start, end):
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
        if pos < end:
            out.append((pos, end))
        return out

    def intersect(self, start: int, end: int) -> list[Interval]:
        """The parts of ``[start, end)`` that are in the set, in order."""
        return [(max(s, start), min(e, end)) for s, e in self._overlapping(start, end)]

    def covered(self, start: int, end: int) -> int:
        """How many integers of ``[start, end)`` are in the set."""
        return sum(e - s for s, e in self.intersect(start, end))

    def contains(self, start: int, end: int) -> bool:
        """True if all of ``[start, end)`` is in the set (an empty interval always is)."""
        if start >= end:
            return True
        k = bisect.bisect_right(self._starts, start) - 1
        return k >= 0 and self._ends[k] >= end

    @property
    def total(self) -> int:
        """How many integers the set holds (bytes, when the unit is bytes)."""
        return sum(e - s for s, e in self)

    def _overlapping(self, start: int, end: int) -> Iterator[Interval]:
        if start >= end:
            return
        k = bisect.bisect_right(self._ends, start)  # first interval ending after start
        while k < len(self._starts) and self._starts[k] < end:
            yield self._starts[k], self._ends[k]
            k += 1

    def __iter__(self) -> Iterator[Interval]:
        return iter(zip(self._starts, self._ends))

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ranges) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Ranges({list(self)!r})"


def aligned_within(start: int, end: int, unit: int) -> Interval:
    """The largest ``[a, b)`` inside ``[start, end)`` whose ends are multiples of ``unit``
    (the whole blocks of a byte range); empty (``a >= b``) when none fits."""
    a, b = -(-start // unit) * unit, end // unit * unit
    return (a, b) if a < b else (a, a)


def overlaps(a: Interval, b: Interval) -> bool:
    """Whether two half-open intervals share an integer."""
    return a[0] < b[1] and b[0] < a[1]
