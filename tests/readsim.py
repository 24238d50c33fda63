"""The kernel's FUSE requests for a program's reads, and what the policy makes them cost: pure.

``Kernel`` turns what a program does (an mmap fault run, a pread) into the read requests the
kernel sends (traced on libfuse3, tests/test_policy.py): a fault at page ``P`` reads ``2R``
around it (``R`` the mount's readahead), one request centred on ``P`` when ``max_read``
holds it, else pieces split at ``P``; a sequential run reads on in windows of ``2R`` (in
``max_read`` pieces), ``spill`` windows past where the program stops (several windows are in
flight: traced, 4 MiB past a tensor at 1 MiB); a pread reads from its first page in
``max_read`` pieces, then on.  Pages the kernel holds are never asked again.

``Sim`` runs the requests through the policy as the prefetcher does (``advance``, ``judge``,
``wants``) and fetches as the reader does (read/shape.py): ``ExactRead`` — its extent first,
then the read's pages; ``None`` — the read's blocks (a header read within ``head``: from
byte 0, then the rest of the head); wanted blocks — each time less what is held or coming.
"""

from __future__ import annotations

from dataclasses import replace

from netmount.core.blocks import PAGE, block_range
from netmount.core.ranges import Ranges
from netmount.read.policy import FileState, PrefetchConfig, Stream, Verdict, advance, judge, wants
from netmount.read.tensormap import TensorMap


def pages(lo: int, hi: int, size: int) -> tuple[int, int]:
    return lo // PAGE * PAGE, min(size, -(-hi // PAGE) * PAGE)


class Kernel:
    """The requests for one file of ``size`` bytes at readahead ``r`` (bytes)."""

    def __init__(self, size: int, r: int, max_read: int = 1 << 20, spill: int = 2) -> None:
        self.size, self.r, self.max_read, self.spill = size, r, max_read, spill
        self.cached = Ranges()
        self.asked = Ranges()  # every byte the kernel asked for

    def _ask(self, lo: int, hi: int, split_at: int | None = None) -> list[tuple[int, int]]:
        lo, hi = pages(max(0, lo), min(self.size, hi), self.size)
        out = []
        for a, b in self.cached.missing(lo, hi):
            cuts = sorted({a, b, *([split_at] if split_at is not None and a < split_at < b else [])})
            for x, y in zip(cuts, cuts[1:]):
                for s in range(x, y, self.max_read):
                    out.append((s, min(y, s + self.max_read)))
        for a, b in out:
            self.cached.add(a, b)
            self.asked.add(a, b)
        return out

    def fault(self, p: int) -> list[tuple[int, int]]:
        """A page fault at byte ``p`` (not cached): the read-around."""
        page = p // PAGE * PAGE
        if self.cached.contains(page, min(self.size, page + PAGE)):
            return []
        split = page if 2 * self.r > self.max_read else None
        return self._ask(page - self.r, page + self.r, split)

    def touch(self, start: int, end: int):
        """A thread touching [start, end) page by page: the read-around of its first fault,
        then the windows the kernel reads on ahead, and on past the end (a generator: one
        list of requests per page touched, so threads can be interleaved)."""
        pos = start
        while pos < end:
            page = pos // PAGE * PAGE
            if not self.cached.contains(page, min(self.size, page + PAGE)):
                yield self.fault(pos) if pos == start else self._ask(page, page + 2 * self.r)
            pos = page + PAGE
        yield self.ahead(end)

    def faults(self, start: int, end: int) -> list[tuple[int, int]]:
        return [r for step in self.touch(start, end) for r in step]

    def get_tensor(self, start: int, end: int) -> list[tuple[int, int]]:
        """``safe_open(...).get_tensor`` and a sum over it: torch's two threads, from the
        tensor's start and from its middle, their requests interleaved."""
        mid = (start + (end - start) // 2) // PAGE * PAGE
        threads = [self.touch(start, mid), self.touch(mid, end)] if end - start > 4 * PAGE else [self.touch(start, end)]
        out: list[tuple[int, int]] = []
        while threads:
            for t in list(threads):
                step = next(t, None)
                if step is None:
                    threads.remove(t)
                else:
                    out += step
        return out

    def ahead(self, end: int) -> list[tuple[int, int]]:
        """The readahead windows the kernel sends on past where a sequential reader stopped."""
        return self._ask(end, end + self.spill * 2 * self.r)

    def pread(self, start: int, end: int) -> list[tuple[int, int]]:
        return self._ask(start // PAGE * PAGE, end) + self.ahead(end)


class Sim:
    """One file through the policy, single-threaded and in order; ``sent`` bytes fetched."""

    def __init__(self, tmap: TensorMap, size: int, cfg: PrefetchConfig, folder_loading: bool = False) -> None:
        self.tmap, self.size, self.cfg, self.folder_loading = tmap, size, cfg, folder_loading
        self.state = FileState()
        self.stream: Stream | None = None  # the file's runs (the prefetcher keeps them per file)
        self.held = Ranges()
        self.sent = 0
        self.fetches: list[tuple[int, int]] = []
        self.verdicts: list[Verdict] = []
        self.head = 0  # how much of the head is held (read/shape.py)

    def _fetch(self, lo: int, hi: int) -> None:
        lo, hi = max(0, lo), min(self.size, hi)
        if lo < hi:
            self.fetches.append((lo, hi))
            self.sent += hi - lo
            self.held.add(lo, hi)

    def _blocks(self, indices) -> None:
        bs = self.cfg.block_size
        for i in indices:
            for a, b in self.held.missing(i * bs, min(self.size, (i + 1) * bs)):
                self._fetch(a, b)

    def _exactly(self, lo: int, hi: int) -> None:
        for a, b in self.held.missing(*pages(lo, hi, self.size)):
            self._fetch(a, b)

    def read(self, handle: int, offset: int, size: int) -> Verdict:
        run, window, streak = advance(self.stream, offset, size, self.size, self.cfg)
        verdict = judge(self.tmap, self.state, run, streak, offset, size, self.size,
                        folder_loading=self.folder_loading, cfg=self.cfg)
        self.state = verdict.state
        self.stream = replace(run, target=verdict.target)
        self.verdicts.append(verdict)
        end = min(offset + size, self.size)
        self._blocks(verdict.first)  # started before the read
        for a, b in verdict.pieces:
            self._exactly(a, b)
        if not self.held.contains(offset, end):  # a miss: the reader
            if verdict.exact is None and end <= self.cfg.head < self.cfg.block_size:  # the head
                self._exactly(self.head, self.cfg.head if self.head else end)
                self.head = max(self.head, pages(0, end, self.size)[1] if not self.head else self.cfg.head)
            elif verdict.exact is None:
                self._blocks(block_range(offset, size, self.size, self.cfg.block_size))
            else:
                if verdict.exact.extent is not None:
                    self._exactly(*verdict.exact.extent)
                self._exactly(offset, end)
        self._blocks(wants(self.tmap, verdict, window, self.size, self.cfg))  # the pump
        return verdict

    def reads(self, requests, handle: int = 1) -> None:
        for lo, hi in requests:
            self.read(handle, lo, hi - lo)
