"""Which bytes of each file programs have read: a page bitmap, allocated lazily.

Feeds the ``amplification`` figure (bytes fetched / distinct bytes read) and each tensor's
``touched_bytes``.  Granularity is the 4 KiB page: the kernel only ever asks FUSE for
whole pages (clipped at end of file), so at this granularity the picture is exact for
what reached the mount.  What a program asked for inside those pages, and pages served
from the kernel page cache without asking us, are invisible here.

Why a bitmap and not an interval set: memory must stay bounded whatever programs do.
One bit per page, in 4 KiB chunks of bitmap (128 MiB of file each) created on first
touch: at most ``size / 32768`` bytes per file — 21 MB if every page of a 688 GB repo is
read, nothing for files never touched.  Random reads cannot make it grow further, where
an interval set could end up with one Python object per page.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from netmount.core.blocks import PAGE

_PAGE_SHIFT = 12
_CHUNK_SHIFT = 15  # pages per bitmap chunk: 32768 pages = 128 MiB of file, 4 KiB of bitmap
_CHUNK_PAGES = 1 << _CHUNK_SHIFT


def _set_bits(bm: bytearray, lo: int, hi: int) -> int:
    """Set bits [lo, hi) of ``bm``; return how many were newly set."""
    b0, b1 = lo >> 3, (hi + 7) >> 3
    before = int.from_bytes(bm[b0:b1], "little").bit_count()
    if b1 - b0 == 1:
        bm[b0] |= ((1 << (hi - lo)) - 1) << (lo & 7)
    else:
        bm[b0] |= (0xFF << (lo & 7)) & 0xFF
        bm[b0 + 1:b1 - 1] = b"\xff" * (b1 - b0 - 2)
        bm[b1 - 1] |= (1 << (hi - ((b1 - 1) << 3))) - 1
    return int.from_bytes(bm[b0:b1], "little").bit_count() - before


def _count_bits(bm: bytearray, lo: int, hi: int) -> int:
    v = int.from_bytes(bm[lo >> 3:(hi + 7) >> 3], "little") >> (lo & 7)
    return (v & ((1 << (hi - lo)) - 1)).bit_count()


class FileCoverage:
    """Pages of one file of ``size`` bytes that were read. Not thread-safe (see Coverage)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages = 0  # distinct pages read
        self._chunks: dict[int, bytearray] = {}

    def add(self, offset: int, length: int) -> None:
        end = min(offset + length, self.size)
        if length <= 0 or offset < 0 or offset >= end:
            return
        p, stop = offset >> _PAGE_SHIFT, ((end - 1) >> _PAGE_SHIFT) + 1
        while p < stop:
            c = p >> _CHUNK_SHIFT
            base = c << _CHUNK_SHIFT
            hi = min(stop - base, _CHUNK_PAGES)
            bm = self._chunks.get(c)
            if bm is None:
                bm = self._chunks[c] = bytearray(_CHUNK_PAGES >> 3)
            self.pages += _set_bits(bm, p - base, hi)
            p = base + hi

    def _pages_in(self, p: int, stop: int) -> int:
        n = 0
        while p < stop:
            c = p >> _CHUNK_SHIFT
            base = c << _CHUNK_SHIFT
            hi = min(stop - base, _CHUNK_PAGES)
            bm = self._chunks.get(c)
            if bm is not None:
                n += _count_bits(bm, p - base, hi)
            p = base + hi
        return n

    def _page_read(self, p: int) -> bool:
        return self._pages_in(p, p + 1) == 1

    def covered_bytes(self, start: int = 0, end: int | None = None) -> int:
        """Bytes of ``[start, end)`` (clipped to the file) that lie in pages read."""
        end = self.size if end is None else min(end, self.size)
        start = max(start, 0)
        if start >= end or not self.pages:
            return 0
        first, last = start >> _PAGE_SHIFT, (end - 1) >> _PAGE_SHIFT
        pages = self._pages_in(first, last + 1)
        if not pages:  # the common case for most tensors of a file: one lookup
            return 0
        n = pages * PAGE
        if self._page_read(first):
            n -= start - (first << _PAGE_SHIFT)
        if self._page_read(last):
            n -= ((last + 1) << _PAGE_SHIFT) - end
        return n

    def memory(self) -> int:
        return len(self._chunks) * (_CHUNK_PAGES >> 3)


class Coverage:
    """Per-file read coverage for a mount; ``record`` is the reader's ``on_served`` hook.

    Files are named by ``name(f)`` (default: the repo path; ``--hf-cache`` names them by their
    path in the mount, so two repos' ``config.json`` are two files).  ``max_files``: keep the
    pages of that many files, the most recently read; an older file's pages are dropped, its
    bytes still counted in ``total_bytes`` (None: every file, as a plain mount's are few)."""

    def __init__(self, name: Callable[[object], str] | None = None, max_files: int | None = None) -> None:
        self._name = name or (lambda f: f.path)
        self.max_files = max_files
        self._lock = threading.Lock()
        self._files: OrderedDict[str, FileCoverage] = OrderedDict()
        self._dropped = 0  # bytes read of files whose pages were dropped

    def record(self, f, offset: int, length: int) -> None:
        """Note that bytes ``[offset, offset+length)`` of ``f`` (path, size) went to a program."""
        key = self._name(f)
        with self._lock:
            fc = self._files.get(key)
            if fc is None:
                fc = self._files[key] = FileCoverage(f.size)
                if self.max_files is not None and len(self._files) > self.max_files:
                    self._dropped += self._files.popitem(last=False)[1].covered_bytes()
            elif self.max_files is not None:
                self._files.move_to_end(key)
            fc.add(offset, length)

    def covered_bytes(self, path: str, start: int = 0, end: int | None = None) -> int:
        with self._lock:
            fc = self._files.get(path)
            return fc.covered_bytes(start, end) if fc is not None else 0

    def touched(self, path: str, ranges) -> list[int]:
        """``covered_bytes`` for many ``(start, end)`` ranges of one file under one lock."""
        with self._lock:
            fc = self._files.get(path)
            if fc is None or not fc.pages:
                return [0] * len(ranges)
            return [fc.covered_bytes(s, e) for s, e in ranges]

    def total_bytes(self) -> int:
        """Distinct bytes read, over all files."""
        with self._lock:
            return self._dropped + sum(fc.covered_bytes() for fc in self._files.values())

    def memory(self) -> int:
        with self._lock:
            return sum(fc.memory() for fc in self._files.values())
