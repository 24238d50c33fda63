"""Byte ranges of remote files, served from tiers: head, extents, memory, store, network.

``BlockReader.read(file, offset, size, exact=...)`` is the whole read path below the FUSE
face and the prefetch policy, top-down, with no call back up:

1. the range is mapped to fixed-size blocks (``core/blocks.py``);
2. each block is looked up in memory (``tiers.BlockMemory``), then in the store
   (``tiers.StoreTier``, length-checked);
3. a header read of a safetensors file whose block 0 is not local is served by the head
   tier (``head.py``: the first 128 KiB, not the whole first block);
4. a read that misses and that the policy wants *exact* (``ExactRead``: a lone tensor and
   the kernel's reads around it) is fetched as an extent, exactly its pages
   (``extents.py``), less a head and a tail that blocks or extents already hold or are
   fetching (joined, not fetched twice); whole blocks inside an extent also go to the store;
5. everything else that misses goes to the run scheduler (``runs.py``: single-flight,
   coalescing, budget, cross-process locks, write-behind), which asks the fetcher
   (``remote/contract.py``);
6. the reply is cut from the blocks by ``blocks.slice_blocks``, which refuses a missing
   block or one of the wrong length: never a wrong byte.

Prefetch calls down into ``prefetch`` (blocks, within a budget; stored ones are lifted
into memory instead) and ``prefetch_extent`` (a lone tensor, exactly).  News of finished
runs (and of blocks landed: room in the budget) goes up only through ``on_run_done``,
given at construction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable

from cache import BlockStore
from netmount.core.blocks import block_range, block_span, slice_blocks
from netmount.core.counters import Counters
from netmount.core.settings import MAX_REQUEST_BYTES
from netmount.read.extents import Extents
from netmount.read.head import HeadTier
from netmount.read.runs import RunScheduler
from netmount.read.tiers import BlockMemory, StoreTier
from netmount.remote.contract import Fetcher
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.reader")


@dataclass(frozen=True)
class ExactRead:
    """The policy's word on a read that misses: fetch its pages exactly, not their blocks;
    ``extent``, if set, is a lone tensor ``[start, end)`` to fetch exactly first."""

    extent: tuple[int, int] | None = None


class BlockReader:
    def __init__(
        self,
        store: BlockStore,
        fetcher: Fetcher,
        *,
        counters: Counters | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        memory_bytes: int = 64 << 20,
        head_bytes: int = 128 << 10,
        head_memory: int = 16 << 20,
        extent_memory: int = 32 << 20,
        workers: int = 4,
        disk_workers: int = 4,
        on_served: Callable[[RemoteFile, int, int], None] | None = None,
        on_run_done: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.block_size = store.block_size
        self.counters = counters or Counters()
        self.on_served = on_served  # (file, offset, length) of every range handed to a program
        self.memory = BlockMemory(memory_bytes // self.block_size, self.counters)
        self.stored = StoreTier(store, self.memory, self.counters, disk_workers=disk_workers)
        self.head = HeadTier(fetcher, head_bytes if 0 < head_bytes < self.block_size else 0,
                             head_memory, self.counters)
        self.extents = Extents(fetcher, extent_memory, self.counters)
        self.runs = RunScheduler(fetcher, self.stored, self.memory, self.counters,
                                 max_request_bytes=max_request_bytes, on_run_done=on_run_done, workers=workers)

    def close(self) -> None:
        self.runs.close()
        self.stored.close()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every block download has been stored (or has failed) and every lift of
        stored blocks into memory is done; False on timeout."""
        return self.stored.drain(timeout) and self.runs.drain(timeout)

    def forget(self, f: RemoteFile) -> None:
        """Forget every byte of ``f`` held in memory (blocks, head, extents) and which of its
        blocks are stored: called after its stored blocks were dropped (``netmount verify``
        found them wrong), so the next read goes to the store, then the network."""
        for tier in (self.memory, self.stored, self.head, self.extents):
            tier.forget(f.content_id)

    # -- reading -----------------------------------------------------------------------------
    def read(self, f: RemoteFile, offset: int, size: int, *, exact: ExactRead | None = None,
             account: bool = True) -> bytes:
        """Exactly the bytes [offset, offset+size) of ``f`` (short only at end of file).

        ``account=False`` is for netmount's own reads (headers for prefetch): not counted as
        bytes served to programs.  ``exact``: see ``ExactRead`` (None: blocks only)."""
        indices = block_range(offset, size, f.size, self.block_size)
        if not indices:
            return b""
        end = min(offset + size, f.size)
        blocks, missing = self._local_blocks(f, indices)
        if missing == [0] and len(indices) == 1 and self._head_serves(f, offset, end):
            head = self.head.get(f, end)  # a header read: block 0 is not fetched for it
            return self._served(f, offset, head[offset:end], account)
        if account:
            self.counters.add("cache_hits", len(blocks))
            self.counters.add("cache_misses", len(missing))
        if missing and exact is not None:
            got = self._exact(f, offset, end, exact, blocks)
            if got is not None:
                return self._served(f, offset, got, account)
        if missing:
            for i, fut in self.runs.ensure(f, missing).items():
                blocks[i] = fut.result()
        return self._served(f, offset, slice_blocks(blocks, offset, size, f.size, self.block_size), account)

    def _local_blocks(self, f: RemoteFile, indices: range) -> tuple[dict[int, bytes], list[int]]:
        blocks: dict[int, bytes] = {}
        missing: list[int] = []
        for i in indices:
            key = (f.content_id, i)
            data = self.memory.get(key)
            if data is None:
                data = self.stored.get(f, i)
                if data is not None:
                    self.memory.put(key, data)
            if data is None:
                missing.append(i)
            else:
                blocks[i] = data
        return blocks, missing

    def _head_serves(self, f: RemoteFile, offset: int, end: int) -> bool:
        """A safetensors header read while block 0 is neither stored nor downloading."""
        return (self.head.covers(f, offset, end) and 0 not in self.stored.known(f)
                and not self.runs.inflight.has(f, 0))

    def _exact(self, f: RemoteFile, offset: int, end: int, exact: ExactRead,
               blocks: dict[int, bytes]) -> bytes | None:
        """The read's pages fetched exactly, but only those that no block (``blocks``: the
        local ones; or downloading) and no extent (in memory or in flight) holds: the
        kernel's read around a fault often straddles a tensor whose blocks or extent are
        already coming, and those bytes are joined, not fetched twice.  None: the read
        cannot be put together that way (the caller falls back to blocks)."""
        got = self.extents.get(f, offset, end)
        if got is not None:
            return got
        if exact.extent is not None:
            self.prefetch_extent(f, *exact.extent)
            got = self.extents.get(f, offset, end)
            if got is not None:
                return got
        head, lo, hi, tail = self._held_ends(f, offset, end, blocks)
        if lo < hi:
            self.extents.fetch(f, lo, hi, on_done=self._extent_in)
            if not head and not tail:
                return self.extents.get(f, lo, hi)
            head.append((lo, hi, "e"))
        parts = []
        for a, b, kind in head + tail[::-1]:
            if kind == "e":
                piece = self.extents.get(f, a, b)
                if piece is None:  # evicted meanwhile
                    return None
            else:
                i = a // self.block_size
                if i not in blocks:
                    blocks[i] = self.runs.ensure(f, [i])[i].result()
                piece = slice_blocks(blocks, a, b - a, f.size, self.block_size)
            parts.append(piece)
        return b"".join(parts)

    def _held_ends(self, f: RemoteFile, offset: int, end: int, blocks: dict[int, bytes]):
        """Split [offset, end) into a head and a tail already held — pieces (a, b, "b") of a
        block local or downloading, (a, b, "e") of an extent — and the middle [lo, hi) that
        nothing holds."""
        bs = self.block_size

        def block_has(i: int) -> bool:
            return i in blocks or self.runs.inflight.has(f, i)

        head: list[tuple[int, int, str]] = []
        tail: list[tuple[int, int, str]] = []
        lo, hi = offset, end
        while lo < hi:
            i = lo // bs
            if block_has(i):
                nxt, kind = min(hi, (i + 1) * bs), "b"
            else:
                span = self.extents.covering(f, lo)
                if span is None:
                    break
                nxt, kind = min(hi, span[1]), "e"
            head.append((lo, nxt, kind))
            lo = nxt
        while hi > lo:
            i = (hi - 1) // bs
            if block_has(i):
                prev, kind = max(lo, i * bs), "b"
            else:
                span = self.extents.covering(f, hi - 1)
                if span is None:
                    break
                prev, kind = max(lo, span[0]), "e"
            tail.append((prev, hi, kind))
            hi = prev
        return head, lo, hi, tail

    def _served(self, f: RemoteFile, offset: int, out: bytes, account: bool) -> bytes:
        if account:
            self.counters.add("bytes_served", len(out), path=f.path)
            if self.on_served is not None:
                self.on_served(f, offset, len(out))
        return out

    def local_head(self, f: RemoteFile) -> bytes | None:
        """The head of ``f`` if it is in memory (see ``head.py``); never fetches."""
        return self.head.local(f)

    # -- ahead of the reader -------------------------------------------------------------------
    def prefetch(self, f: RemoteFile, indices: Iterable[int], budget: int,
                 max_request_bytes: int | None = None) -> tuple[int, int]:
        """Start fetching ``indices`` (in the order given) that are not stored, in memory or
        downloading, while no more than ``budget`` bytes are in flight in all (demand reads
        included: never held back, they only leave less room).  ``max_request_bytes`` (at
        least a block, at most the reader's cap) cuts the blocks into smaller requests, which
        go out in parallel.  Stored blocks among the first wanted are lifted into memory
        instead (no network, no budget).  Returns (started, left for lack of room): call
        again on the next news (``on_run_done``)."""
        indices = list(dict.fromkeys(indices))
        known = self.stored.known(f)
        self.stored.lift(f, indices)
        run = None
        if max_request_bytes is not None:
            run = max(1, min(self.runs.max_run, max_request_bytes // self.block_size))
        return self.runs.start_within(f, indices, budget, skip=known, max_run=run)

    def prefetch_extent(self, f: RemoteFile, start: int, end: int) -> None:
        """Fetch exactly [start, end) of ``f`` (widened to pages) as an extent, leaving out
        a head and a tail already in blocks (stored, in memory or downloading)."""
        bs = self.block_size
        known = self.stored.known(f)

        def have(i: int) -> bool:
            return i in known or (f.content_id, i) in self.memory or self.runs.inflight.has(f, i)

        while start < end and have(start // bs):
            start = (start // bs + 1) * bs
        while end > start and have((end - 1) // bs):
            end = (end - 1) // bs * bs
        if start < end:
            self.extents.fetch(f, start, end, on_done=self._extent_in, anchor=True)

    # -- the interface the prefetcher uses (thin adapters until the reader's rewrite) ------------
    def fetch_exact(self, f: RemoteFile, start: int, end: int) -> None:
        """Fetch [start, end) of ``f`` exactly (widened to pages) unless held or coming."""
        self.prefetch_extent(f, start, end)

    def covered(self, f: RemoteFile, start: int, end: int) -> bool:
        """Every byte of [start, end) is stored, in memory or being fetched (blocks or extents)."""
        bs, pos = self.block_size, start
        known = self.stored.known(f)
        while pos < end:
            i = pos // bs
            if i in known or (f.content_id, i) in self.memory or self.runs.inflight.has(f, i):
                pos = (i + 1) * bs
                continue
            span = self.extents.covering(f, pos)
            if span is None:
                return False
            pos = span[1]
        return True

    def _extent_in(self, f: RemoteFile, start: int, data: bytes) -> None:
        """Whole blocks inside an extent that just came in go to the store as well."""
        bs = self.block_size
        for i in range(-(-start // bs), (start + len(data)) // bs + 1):
            if i * bs >= f.size:
                break
            lo, hi = block_span(i, bs, f.size)
            if lo >= start and hi <= start + len(data):
                self.runs.store_extra(f, i, data[lo - start : hi - start])
