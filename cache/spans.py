"""Byte-range arithmetic of the store, pure: ``[start, end)`` pairs, block cuts, covers.

(``cache/`` imports nothing of netmount, so it keeps its own few lines of it.)
"""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator, Sequence


def block_cuts(offset: int, end: int, size: int, block_size: int) -> Iterator[tuple[int, int, int, int, int]]:
    """``(index, lo, hi, a, b)`` for each block that ``[offset, end)`` touches: the block is
    ``[lo, hi)`` (``hi`` clipped to ``size``), the part of the range in it ``[a, b)``."""
    if offset >= end:
        return
    for index in range(offset // block_size, (end - 1) // block_size + 1):
        lo = index * block_size
        hi = min(lo + block_size, size)
        yield index, lo, hi, max(offset, lo), min(end, hi)


def merge(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges; overlapping and touching ones joined, empty ones dropped."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(pairs):
        if a >= b:
            continue
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def add(spans: list[tuple[int, int]], a: int, b: int) -> None:
    """Add ``[a, b)`` to ``spans`` (sorted, merged) in place: a bisect, not a re-sort."""
    if a >= b:
        return
    i = bisect.bisect_left(spans, (a, a))
    if i and spans[i - 1][1] >= a:  # joins the one before
        i -= 1
    j = i
    while j < len(spans) and spans[j][0] <= b:  # swallows the ones it reaches
        a, b = min(a, spans[j][0]), max(b, spans[j][1])
        j += 1
    spans[i:j] = [(a, b)]


def covers(spans: Sequence[tuple[int, int]], a: int, b: int) -> bool:
    """Whether merged ``spans`` hold all of ``[a, b)``."""
    if a >= b:
        return True
    i = bisect.bisect_right(spans, (a, float("inf"))) - 1
    return i >= 0 and spans[i][0] <= a and spans[i][1] >= b


def cover(objects: Iterable, a: int, b: int) -> list[tuple[object, int, int]] | None:
    """``[(object, x, y), ...]`` covering ``[a, b)`` in order, each ``[x, y)`` inside its
    object's ``[start, end)``, or None if some byte is in none.  ``objects`` are sorted by
    start and may overlap; at each point the one reaching furthest is taken."""
    out: list[tuple[object, int, int]] = []
    pos = a
    best = None
    for obj in objects:
        if pos >= b:
            break
        if obj.start > pos:
            if best is None:
                return None
            out.append((best, pos, min(b, best.end)))
            pos = min(b, best.end)
            best = None
            if pos >= b:
                break
            if obj.start > pos:
                return None
        if obj.end > pos and (best is None or obj.end > best.end):
            best = obj
    if pos < b:
        if best is None or best.end < b:
            return None
        out.append((best, pos, b))
    return out
