"""Which bytes a read that misses fetches: pure arithmetic, table-tested (``tests/test_shape.py``).

- *Exact* (the policy's ``ExactRead``: a lone tensor, the kernel's read around it, a parquet
  footer): the read's pages, and first the extent the policy names.  The kernel reads whole
  pages of a FUSE file, so a page is the smallest useful unit.
- *Head*: a read inside the first ``head_bytes`` of a safetensors file (its header: the first
  read of a ``safe_open``, at the mount's small readahead a few pages) fetches from byte 0 to
  the read's end — not the 1 MiB block; a later read past what is held there (a longer
  header) fetches the rest of ``head_bytes`` at once: one more round trip, not one per
  request of the kernel's.
- Else *blocks*: the whole blocks the read touches (a sequential reader's next reads are
  there; large, aligned requests).

Whatever is chosen, the reader fetches only its parts that the store does not hold and
nothing fetches yet.
"""

from __future__ import annotations

from netmount.core.blocks import PAGE
from netmount.core.ranges import Interval, Ranges


def pages(start: int, end: int, size: int) -> Interval:
    """``[start, end)`` widened to whole pages, clipped to the file."""
    return start // PAGE * PAGE, min(size, -(-end // PAGE) * PAGE)


def wanted(path: str, size: int, offset: int, end: int, block_size: int, *, have: Ranges, exact,
           head_bytes: int) -> list[Interval]:
    """The ranges a read of [offset, end) that misses fetches, in the order to fetch them;
    ``have``: what the store holds or is being fetched (the head grows from it)."""
    if exact is not None:
        out = [pages(*exact.extent, size)] if exact.extent is not None else []
        return [*out, pages(offset, end, size)]
    if head_bytes and end <= head_bytes < size and path.endswith(".safetensors"):
        if not have.intersect(0, head_bytes):
            return [pages(0, end, size)]
        return [(0, head_bytes)]
    first = offset // block_size * block_size
    return [(first, min(size, -(-end // block_size) * block_size))]
