"""Which reads the prefetcher hands to the pump's thread, and which of a batch it decides.

Deciding a read (``policy.wants``, the loader's next shards) happens on the pump's thread,
off the FUSE request.  But most reads want nothing new: a stream in 128 KiB requests moves
its window one block in eight, a random 4 KiB read wants no block at all.  Handing those over
only wakes the pump's thread — a context switch and a GIL hand-off per request, the largest
cost of a warm read after the reply itself (BENCHMARKS.md, the profiles) — to want the same
blocks again.  ``Handoff.news`` says whether a read is worth handing over; ``to_decide``
picks, of a batch the pump took at once, the reads whose decisions count.
"""

from __future__ import annotations

import threading

from netmount.core.recent import Recent
from netmount.read.policy import Verdict


class Handoff:
    def __init__(self, max_files: int) -> None:
        self._lock = threading.Lock()
        self._last: Recent = Recent(max_files)  # file -> what its last read handed over wanted

    def news(self, f, verdict: Verdict, window: list[int]) -> bool:
        """Would deciding this read of ``f`` want anything its last handed-over read did not?
        Always for a file's first read (the folder's loader bookkeeping starts there)."""
        plain = verdict.loader is None and verdict.span is None and not verdict.first and not verdict.pieces
        if plain and not window:
            mark = None  # wants no block
        else:
            mark = (window[0] if window else -1, window[-1] if window else -1, verdict.window, verdict.loader,
                    verdict.span, verdict.first, verdict.state.loading, len(verdict.state.extents))
        with self._lock:
            last = self._last.get(f, ())
            if mark is not None or last == ():
                self._last[f] = mark
        return last == () or (mark is not None and (not plain or last != mark))


def to_decide(items: list) -> list:
    """Of reads ``(file, map, verdict, window)`` in order: a file's want replaces its earlier
    one (``Pump.want``), so of its plain reads only the last counts; one that carries more than
    its window (a loader's rest of the file, a chunk, blocks that did not fit) counts too."""
    last = {item[0]: item for item in items}
    return [item for item in items
            if last[item[0]] is item or item[2].loader is not None or item[2].span or item[2].first]
