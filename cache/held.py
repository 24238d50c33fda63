"""What one process knows to be stored of one content: its objects, in memory.

Both stores keep a ``Held`` per content: the disk store loads it from the index once and
keeps it up to date with its own puts and evictions (another process's show up on
``refresh``); the memory store keeps its bytes in it.  Lookups (``plan``, ``spans``) are
dict and list work only, for the read path's hot loop.  Not thread-safe: the stores call
it under their own lock.
"""

from __future__ import annotations

from typing import Iterator

from . import spans


class Obj:
    """A stored object: ``length`` bytes at absolute ``start`` of the content, a ``whole``
    block or a piece of one.  ``ref`` names where the bytes are (a file name on disk, the
    bytes themselves in memory); ``crc`` is their CRC32C; ``checked`` is set once this
    process has verified them."""

    __slots__ = ("start", "length", "ref", "whole", "crc", "checked")

    def __init__(self, start: int, length: int, ref, whole: bool, crc: int | None = None,
                 checked: bool = False) -> None:
        self.start, self.length, self.ref, self.whole = start, length, ref, whole
        self.crc, self.checked = crc, checked

    @property
    def end(self) -> int:
        return self.start + self.length

    def __repr__(self) -> str:
        return f"Obj([{self.start}, {self.end}), {self.ref!r:.40})"


class Held:
    """Whole blocks by index, pieces by index (sorted by start), and their merged spans."""

    __slots__ = ("blocks", "pieces", "_spans")

    def __init__(self) -> None:
        self.blocks: dict[int, Obj] = {}
        self.pieces: dict[int, list[Obj]] = {}
        self._spans: list[tuple[int, int]] | None = []

    def add(self, index: int, obj: Obj) -> Obj | None:
        """Add ``obj`` (replacing a whole block, or a piece at the same start); returns the
        object replaced, if any."""
        old = None
        if obj.whole:
            old = self.blocks.get(index)
            self.blocks[index] = obj
        else:
            pieces = self.pieces.setdefault(index, [])
            for n, p in enumerate(pieces):
                if p.start == obj.start:
                    old, pieces[n] = p, obj
                    break
            else:
                pieces.append(obj)
                pieces.sort(key=lambda p: p.start)
        if old is not None and old.length > obj.length:
            self._spans = None  # shrank: recomputed when next asked
        elif self._spans is not None:
            spans.add(self._spans, obj.start, obj.end)
        return old

    def remove(self, index: int, ref) -> Obj | None:
        """Forget the object of block ``index`` stored as ``ref`` (a file name); returns it
        (None: unknown)."""
        return self._drop(index, lambda o: o.ref == ref)

    def discard(self, index: int, obj: Obj) -> bool:
        """Forget ``obj`` itself (the memory store: its refs are bytes, equal ones may differ)."""
        return self._drop(index, lambda o: o is obj) is not None

    def _drop(self, index: int, match) -> Obj | None:
        obj = self.blocks.get(index)
        if obj is not None and match(obj):
            del self.blocks[index]
            self._spans = None
            return obj
        pieces = self.pieces.get(index, ())
        for n, p in enumerate(pieces):
            if match(p):
                del pieces[n]
                if not pieces:
                    del self.pieces[index]
                self._spans = None
                return p
        return None

    def objects(self) -> Iterator[tuple[int, Obj]]:
        yield from self.blocks.items()
        for index, pieces in self.pieces.items():
            for p in pieces:
                yield index, p

    def __len__(self) -> int:
        return len(self.blocks) + sum(len(p) for p in self.pieces.values())

    def nbytes(self) -> int:
        return sum(obj.length for _, obj in self.objects())

    def spans(self) -> list[tuple[int, int]]:
        """Merged ``[start, end)`` ranges held (the list itself: do not change it)."""
        if self._spans is None:
            self._spans = spans.merge((o.start, o.end) for _, o in self.objects())
        return self._spans

    def plan(self, offset: int, end: int, size: int, block_size: int) -> list[tuple[int, Obj, int, int]] | None:
        """``[(index, obj, a, b), ...]`` covering ``[offset, end)`` in order, or None if a
        byte is not held.  A whole block is used only if it has the length ``size`` gives
        it (a wrong one is not served: the caller refetches, and the refetch replaces it)."""
        if offset >= end:
            return []
        first = offset // block_size
        if (end - 1) // block_size == first:  # the common case: inside one whole block
            obj = self.blocks.get(first)
            if obj is not None and obj.length == min(block_size, size - first * block_size):
                return [(first, obj, offset, end)]
        out = []
        for index, lo, hi, a, b in spans.block_cuts(offset, end, size, block_size):
            obj = self.blocks.get(index)
            if obj is not None and obj.length == hi - lo:
                out.append((index, obj, a, b))
                continue
            cover = spans.cover(self.pieces.get(index, ()), a, b)
            if cover is None:
                return None
            out.extend((index, p, x, y) for p, x, y in cover)
        return out

    def overlapping(self, a: int, b: int, block_size: int) -> Iterator[tuple[int, Obj]]:
        """Objects with a byte in ``[a, b)`` (for ``prepare``)."""
        if a >= b:
            return
        for index in range(a // block_size, (b - 1) // block_size + 1):
            obj = self.blocks.get(index)
            if obj is not None:
                yield index, obj
            for p in self.pieces.get(index, ()):
                if p.start < b and p.end > a:
                    yield index, p
