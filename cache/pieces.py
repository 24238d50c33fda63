"""Cutting puts into blocks and merging pieces: the write plan both stores share.

A put of any byte range is cut at block edges (``group``).  For each block touched,
``plan`` decides what to write given the pieces already stored: new bytes that fill the
block become the whole block; otherwise new bytes join the stored pieces they overlap or
touch into one larger piece (so a block holds a few disjoint pieces, not a pile of
slivers), and the pieces joined are *consumed* (deleted once the new object is in).
Bytes already held entirely by one piece are not written again.
"""

from __future__ import annotations

from typing import Callable, Iterable

from . import spans
from .held import Obj
from .store import check_range


class BlockWrite:
    """The new bytes of one block: ``parts`` ``[(start, data), ...]`` inside ``[lo, hi)``
    (bytes-like: the caller's buffers, or views of them, never copies)."""

    __slots__ = ("content_id", "index", "lo", "hi", "parts")

    def __init__(self, content_id: str, index: int, lo: int, hi: int) -> None:
        self.content_id, self.index, self.lo, self.hi = content_id, index, lo, hi
        self.parts: list[tuple[int, bytes]] = []

    @property
    def whole(self) -> bool:
        """The new bytes alone fill the block."""
        return spans.covers(spans.merge((s, s + len(d)) for s, d in self.parts), self.lo, self.hi)


def group(items: Iterable, block_size: int) -> dict[tuple[str, int], BlockWrite]:
    """``[(content_id, offset, data, size), ...]`` -> the new bytes of each block touched."""
    out: dict[tuple[str, int], BlockWrite] = {}
    for content_id, offset, data, size in items:
        data = check_range(content_id, offset, data, size)
        end = offset + len(data)
        for index, lo, hi, a, b in spans.block_cuts(offset, end, size, block_size):
            w = out.get((content_id, index))
            if w is None:
                w = out[content_id, index] = BlockWrite(content_id, index, lo, hi)
            elif w.hi != hi:
                raise ValueError(f"{content_id}: two sizes in one put ({w.hi} and {hi} end block {index})")
            w.parts.append((a, data if (a, b) == (offset, end) else memoryview(data)[a - offset : b - offset]))
    return out


class Unreadable(Exception):
    """A stored piece could not be read back right (gone, or a bad CRC)."""

    def __init__(self, obj: Obj) -> None:
        super().__init__(obj)
        self.obj = obj


def plan(w: BlockWrite, existing: list[Obj], read: Callable[[Obj], bytes | None]
         ) -> tuple[list[tuple[int, bytes, bool]], list[Obj]]:
    """What to write for ``w`` given the block's stored pieces ``existing``:
    ``([(start, data, whole), ...], consumed)``.  ``read(piece)`` gives a stored piece's
    bytes, checked, or None; a piece that cannot be read is left out of the merge and
    consumed (its row goes)."""
    bad: list[Obj] = []
    while True:
        usable = [p for p in existing if p not in bad]
        try:
            writes, consumed = _plan(w, usable, read)
        except Unreadable as exc:
            bad.append(exc.obj)
            continue
        return writes, consumed + bad


def _plan(w: BlockWrite, existing: list[Obj], read) -> tuple[list[tuple[int, bytes, bool]], list[Obj]]:
    new = _join(w.parts)
    writes: list[tuple[int, bytes, bool]] = []
    consumed: list[Obj] = []
    held = [(p.start, p.end) for p in existing]
    for a, b in spans.merge(held + [(s, s + len(d)) for s, d in new]):
        runs = [(s, d) for s, d in new if a <= s < b]
        if not runs:
            continue
        inside = [p for p in existing if a <= p.start and p.end <= b]
        if any(p.start <= runs[0][0] and p.end >= runs[-1][0] + len(runs[-1][1]) for p in inside):
            continue  # one stored piece holds all the new bytes already
        if len(runs) == 1 and runs[0][0] == a and len(runs[0][1]) == b - a:
            data = runs[0][1]
        else:
            buf = bytearray(b - a)
            for p in inside:
                got = read(p)
                if got is None or len(got) != p.length:
                    raise Unreadable(p)
                buf[p.start - a : p.end - a] = got
            for s, d in runs:
                buf[s - a : s - a + len(d)] = d
            data = bytes(buf)
        writes.append((a, data, (a, b) == (w.lo, w.hi)))
        consumed.extend(inside)
    return writes, consumed


def _join(parts: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """New parts sorted and joined where they overlap or touch (same content: any copy of a
    byte is right)."""
    out: list[tuple[int, bytes]] = []
    for s, d in sorted(parts, key=lambda p: p[0]):
        if not d:
            continue
        if out and s <= out[-1][0] + len(out[-1][1]):
            s0, d0 = out[-1]
            tail = d[s0 + len(d0) - s :]
            if tail:
                out[-1] = (s0, b"".join((d0, tail)))
        else:
            out.append((s, d))
    return out
