"""Which tensor a read is for: a file's tensor layout, and the kernel's ways of reading it.

Pure (no I/O).  A ``TensorMap`` is the sorted data ranges of one safetensors file's tensors
(or of a parquet file's column chunks: ``columnar``).  The kernel never asks for exactly a
tensor: an mmap fault at page ``P`` reads ``[P - R, P + R)`` for a readahead ``R``, in
requests of at most ``max_read`` (one centred on ``P``, or pieces split *at* ``P``, served
by several threads in any order: traced on libfuse3), and a read(2) reads on in readahead
windows.  ``fault_for`` finds the tensor a read that jumped there is for whatever ``R``
(16 KiB to 1 MiB); ``read_for`` the one a loader's look is for (loader evidence).
Tests: ``tests/test_policy.py``.
"""

from __future__ import annotations

import bisect

from netmount.core.blocks import PAGE
from netmount.core.ranges import aligned_within, overlaps

AROUND = 32 << 10  # the smallest read-around of a fault: the smallest readahead (16 KiB) either side


class TensorMap:
    """Sorted absolute [start, end) data ranges of one safetensors file's tensors (immutable).

    ``columnar``: the ranges are a parquet file's column chunks (and its footer).  A query
    jumps from chunk to chunk of one column across row groups: that is never a loader (no
    lookahead, no folder-wide loading, no next-shard chaining); each jump gets its chunk
    exactly, a sequential run stops at the chunk's end, and a stream (a full scan) still
    reads ahead to the file's end."""

    def __init__(self, ranges: list[tuple[int, int]], columnar: bool = False):
        self.ranges = sorted(r for r in ranges if r[1] > r[0])
        self.starts = [r[0] for r in self.ranges]
        self.columnar = columnar

    @property
    def data(self) -> int:
        """Where tensor data begins (the end of the header); 0 with no tensors."""
        return self.ranges[0][0] if self.ranges else 0

    def slack(self, expected: int, offset: int, block_size: int) -> int:
        """How far a read at ``offset`` may be from where the handle's last read ended
        (``expected``) and still continue its run: a block (the kernel reorders its
        readahead a little), but nothing in a columnar file if a whole chunk lies between —
        a column's chunks in consecutive row groups are a few KB to a few MB apart, and
        with a block's slack a column read would pass for a scan whose readahead window
        fetches the other columns.  Reads concurrent in a column (pyarrow's pre-buffering)
        arrive in order here: each must still be a jump."""
        # (the kernel reads whole pages: a chunk between counts if it is whole to a page)
        a, b = min(expected, offset) - PAGE, max(expected, offset) + PAGE
        j = bisect.bisect_left(self.starts, a)
        if self.columnar and j < len(self.ranges) and self.ranges[j][1] <= b:
            return 0
        return block_size

    def find(self, offset: int) -> int | None:
        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and offset < self.ranges[i][1]:
            return i
        return None

    def whole_blocks(self, i: int, block_size: int, file_size: int) -> tuple[int, int]:
        """The bytes of tensor ``i`` that whole blocks hold (no other tensor's byte in them):
        fetched in blocks, the rest of it exactly."""
        start, end = self.ranges[i]
        lo, hi = aligned_within(start, end, block_size)
        if end == file_size and lo < end:  # (the file's last block is short)
            hi = end
        return lo, hi


def _starting_in(tmap: TensorMap, page: int) -> int | None:
    """The first tensor that starts in the page at ``page``."""
    j = bisect.bisect_left(tmap.starts, page)
    return j if j < len(tmap.starts) and tmap.starts[j] < page + PAGE else None


def middle(offset: int, size: int) -> int:
    return offset + min(size // 2, max(0, size - 1))


def read_for(tmap: TensorMap, offset: int, size: int) -> int | None:
    """The tensor a read is for: the one that starts in the page under its middle (an mmap
    fault's read-around is centred on the faulting page, and a reader faults first where its
    tensor starts: a norm that shares that page with the end of a big tensor is what is
    read, not that tensor's tail), else the one under its middle, else the one its start is
    in — or the next one, when the read ends at the page it starts in."""
    mid = middle(offset, size)
    i = _starting_in(tmap, mid // PAGE * PAGE)
    if i is not None and tmap.starts[i] >= offset + size:  # (a read within the tensor before it)
        i = None
    i = tmap.find(mid) if i is None else i
    i = tmap.find(offset) if i is None else i
    # the first half of a read-around the kernel split at the faulting page: it ends
    # exactly at the page where the next tensor starts, and is for that one
    if i is not None and i + 1 < len(tmap.ranges) and offset + size == tmap.ranges[i + 1][0] // PAGE * PAGE:
        i += 1
    return i


def fault_for(tmap: TensorMap, offset: int, size: int, file_size: int, min_split: int) -> tuple[int | None, int]:
    """The tensor a read that jumped was most likely for, and where its fault was.

    Whatever the mount's readahead ``R``, an mmap fault at page ``P`` makes the kernel read
    ``[P - R, P + R)`` (cut at the file's ends), in requests of at most ``max_read`` counted
    from its start: one request centred on ``P`` when ``max_read`` holds it, else pieces,
    one ending at ``P`` and the next starting there.  No ``R`` is assumed.  A reader of a
    tensor faults first at the page the tensor starts in, so the candidates are the tensor
    that starts in the read's middle page (centred), in its first page (the piece from
    ``P``, or a read() of it), in the page right after it (the piece up to ``P``); a read cut
    short by the end of the file began ``R`` before ``P`` and ran on less than ``R`` after
    it, so ``P`` lies in its second half.  A read shorter than ``min_split`` is never a piece
    (``max_read`` is at least that), so the centred reading goes first — where small tensors
    are dense (a routed expert's scales before its weights) its first page always holds some
    tensor's start; a longer one may be a piece, and the pieces' readings go first (wrong,
    they cost a small tensor's extent; the centred reading, wrong, a big neighbour's).  A read
    shorter than the smallest read-around (``AROUND``) is none: it starts where it wants.
    Else the fault was inside a tensor: the one under the middle."""
    end = offset + size
    mid = (offset + size // 2) // PAGE * PAGE

    def first_page() -> int | None:
        return _starting_in(tmap, offset)

    def after_end() -> int | None:
        return _starting_in(tmap, end) if end % PAGE == 0 and end < file_size else None

    def centred() -> int | None:
        if end >= file_size:  # cut at the end of the file: the first tensor from its middle on
            i = bisect.bisect_left(tmap.starts, mid)
            return i if i < len(tmap.starts) else None
        return _starting_in(tmap, mid)

    if size < AROUND:  # not a read-around: a read(2) from the page it wants
        rules = (first_page, centred, after_end)
    else:
        rules = (centred, first_page, after_end) if size < min_split else (first_page, after_end, centred)
    for rule in rules:
        i = rule()
        if i is not None:
            return i, tmap.starts[i]
    return tmap.find(mid), mid


def last_for(tmap: TensorMap, offset: int, size: int, file_size: int, min_split: int) -> int:
    """The last tensor a read that jumped may be for (-1: none but ``fault_for``'s): a read
    that may be a piece of a split read-around (``min_split`` or longer) may be for the tensor
    that starts in its first page, in its middle page, or in the page right after it."""
    end = min(offset + size, file_size)
    if size < min_split:
        return -1
    page = (offset + size // 2) // PAGE * PAGE
    found = [_starting_in(tmap, offset), _starting_in(tmap, page),
             _starting_in(tmap, end) if end % PAGE == 0 and end < file_size else None]
    return max((i for i in found if i is not None), default=-1)


def chunk_for(tmap: TensorMap, offset: int, last: int, near: int) -> int | None:
    """The column chunk a pread that jumped is for: the one that starts in its first page
    (a pread of a chunk), else the one its last byte is in — or the next one, when the read
    ends close before it and well inside this one, or right at its page."""
    i = _starting_in(tmap, offset)
    if i is not None:
        return i
    i = tmap.find(last)
    if i is not None and i + 1 < len(tmap.ranges) and tmap.ranges[i + 1][0] <= last + near and (
            tmap.ranges[i][0] + near < offset or last + 1 == tmap.ranges[i + 1][0] // PAGE * PAGE):
        i += 1
    return i


def near_any(tmap: TensorMap, chosen: frozenset[int], lo: int, hi: int, margin: int) -> bool:
    """Whether [lo, hi) lies within ``margin`` of one of the ``chosen`` ranges (extents
    fetched: the kernel reads around their ends)."""
    j = max(0, bisect.bisect_right(tmap.starts, lo - margin) - 1)
    while j < len(tmap.ranges) and tmap.ranges[j][0] < hi + margin:
        s, e = tmap.ranges[j]
        if j in chosen and overlaps((lo, hi), (s - margin, e + margin)):
            return True
        j += 1
    return False
