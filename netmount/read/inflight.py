"""The blocks being downloaded: one future each (single-flight), their bytes counted (the
budget), and a way to wait until there are none (``drain``).

A block is *in flight* from the moment a reader or prefetch claims it until it is stored
(or has failed) — not merely until its bytes arrive: a block whose waiters have been woken
but that is not yet on disk must neither be fetched again nor be missed by a prefetch that
looks in the store meanwhile.  Blocks that came inside an extent and wait to be written
count as *writing* (no bytes of budget, but ``drain`` waits for them too).
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Iterable

from netmount.core.blocks import block_span
from netmount.read.tiers import BlockMemory
from netmount.remote.hub import RemoteFile

Futures = dict[int, concurrent.futures.Future]


class InFlight:
    def __init__(self, memory: BlockMemory, block_size: int) -> None:
        self.memory = memory
        self.block_size = block_size
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._blocks: dict[tuple[str, int], concurrent.futures.Future] = {}
        self._bytes = 0  # on the network
        self._landed: set[tuple[str, int]] = set()  # arrived, not stored yet
        self._landed_bytes = 0
        self._writing = 0
        self.max_bytes = 0  # the most ever in flight at once (stats, tests)

    def has(self, f: RemoteFile, i: int) -> bool:
        with self._lock:
            return (f.content_id, i) in self._blocks

    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def claim(self, f: RemoteFile, indices: Iterable[int]) -> tuple[Futures, list[int]]:
        """Futures for blocks of ``f`` — joined if in flight, done if in memory, else new — and
        the blocks newly claimed, which the caller must start."""
        futures: Futures = {}
        owned: list[int] = []
        with self._lock:
            for i in sorted(set(indices)):
                fut = self._claim(f, i)
                if fut is None:
                    fut = self._blocks[(f.content_id, i)]
                    owned.append(i)
                futures[i] = fut
        return futures, owned

    def claim_within(self, f: RemoteFile, indices: Iterable[int], budget: int,
                     skip: frozenset[int]) -> tuple[Futures, int]:
        """Claim those of ``indices`` (in order) not in ``skip``, not in memory and not in
        flight while all bytes in flight stay within ``budget``; returns the new futures and
        how many blocks were wanted in all.  A block over the whole budget is claimed alone
        when nothing else is in flight (it could never start otherwise)."""
        futures: Futures = {}
        with self._lock:
            todo = [i for i in dict.fromkeys(indices) if i not in skip
                    and (f.content_id, i) not in self._blocks and (f.content_id, i) not in self.memory]
            room = budget - self._bytes - max(0, self._landed_bytes - budget)
            for i in todo:  # in order: stop at the first that does not fit
                lo, hi = block_span(i, self.block_size, f.size)
                if hi - lo > room and (futures or self._bytes or self._landed_bytes):
                    break
                room -= hi - lo
                self._claim(f, i)
                futures[i] = self._blocks[(f.content_id, i)]
        return futures, len(todo)

    def _claim(self, f: RemoteFile, i: int) -> concurrent.futures.Future | None:
        key = (f.content_id, i)
        fut = self._blocks.get(key)
        if fut is not None:
            return fut
        data = self.memory.get(key)  # delivered blocks are in memory before they leave here
        if data is not None:
            fut = concurrent.futures.Future()
            fut.set_result(data)
            return fut
        self._blocks[key] = concurrent.futures.Future()
        lo, hi = block_span(i, self.block_size, f.size)
        self._bytes += hi - lo
        self.max_bytes = max(self.max_bytes, self._bytes)
        return None

    def landed(self, f: RemoteFile, i: int) -> None:
        """Block ``i``'s bytes arrived (they are in memory): off the network's budget."""
        key = (f.content_id, i)
        with self._changed:
            if key in self._blocks and key not in self._landed:
                lo, hi = block_span(i, self.block_size, f.size)
                self._landed.add(key)
                self._bytes -= hi - lo
                self._landed_bytes += hi - lo
                self._changed.notify_all()

    def release(self, f: RemoteFile, indices: Iterable[int]) -> None:
        """These blocks are stored, or failed: no longer in flight."""
        with self._changed:
            for i in indices:
                key = (f.content_id, i)
                if self._blocks.pop(key, None) is not None:
                    lo, hi = block_span(i, self.block_size, f.size)
                    if key in self._landed:
                        self._landed.discard(key)
                        self._landed_bytes -= hi - lo
                    else:
                        self._bytes -= hi - lo
            self._changed.notify_all()

    def writing(self, n: int) -> None:
        """``n`` more (or, negative, fewer) blocks from extents wait to be written."""
        with self._changed:
            self._writing += n
            self._changed.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight or waiting to be written; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._blocks and not self._writing, timeout)
