"""The prefetch policy: pure decisions over explicit state, no I/O, no threads, no locks.

Per read of a program, ``judge`` answers (before the read, on its thread) how a miss is
fetched — its pages exactly (``ExactRead``), a tensor exactly first, or whole blocks — and
where the file's sequential window may fetch blocks; ``wants`` (after it, on the pump's
thread) lists the blocks to fetch ahead.  A file is read in one of three ways:

- **Partial** (the default): reads are bounded by tensors.  A read that jumps somewhere is
  for one tensor (``tensormap.fault_for``: the kernel reads around a fault, at any
  readahead from 16 KiB to 1 MiB), and starts a *run* for it (``Stream.target``; where
  small tensors are dense the run may be for any that starts in the read-around, up to
  the last: ``tensormap.last_for``).  A tensor of at most ``max_extent`` is fetched exactly,
  at once; a bigger one as its run(s) go on (one per torch copy thread), its whole blocks
  in the run's growing window, its two end blocks (which hold other tensors' bytes) only as
  the pages read — a read that straddles into its whole blocks starts them first
  (``Verdict.first``) and joins them.  Every read outside the run's tensors — the kernel's
  read-around before them, its readahead after them (up to ``spill`` of the run's requests
  past the end, several windows in flight: traced, 4 MiB past a 14.7 MB expert at 1 MiB)
  — is fetched as exactly the pages asked, never a block, a window or a neighbouring
  tensor.  So one DeepSeek-V3 expert costs its bytes and the pages the kernel asked around
  it, at any readahead.  Issue 20 measured 32.6 and 46.3 MB for a 14.7 MB expert: traced,
  the first half of a 1 MiB read-around (starting 1 MiB inside the tensor before) wanted
  that whole tensor in blocks, and the kernel's readahead past the end wanted the next one
  (the old rules also judged each read against the handle's runs as they were before the
  reads still in flight: a window of the kernel's readahead looked like a jump).  A run
  that goes on past ``spill`` is the program's: it is then for the tensor it is in.
- **Stream**: a run from byte 0 through ``stream_bytes`` of data (``cat``, ``cp``, a loader
  iterating in file order), or a run that went ``spill`` past its tensor and through 3
  whole tensors: blocks, with the window up to the file's end.
- **Loader** (``loader.py``): once a file is being loaded, blocks, and the rest of the file
  wanted from each new tensor read (``loader_blocks``).  A jump into tensor data of a shard
  of a folder being loaded makes that shard loading too.

Near the start (``_early``): reads within ``head`` are the head's (read/shape.py); past
it, a header read or the kernel reading on after one (``spill`` of its requests) is fetched
as its pages, or in blocks when its requests are ``min_split`` or longer (cat's, a large
readahead's: cat cannot be told from the kernel reading on there); in a folder a loader
reads, blocks and a speculative window.  A run from byte 0 that goes on is cat's: blocks, a
stream after ``stream_bytes``.  A parquet file (``TensorMap.columnar``) keeps its own rules
(``_columnar``): each jump gets its chunk exactly, reads around chunks fetched exactly are
fetched exactly, a scan is a stream, and a column read is never a loader.

**Readahead** (issue 11; the mechanism is mounting/readahead.py's): the mount's kernel
readahead is small (32 KiB) until a loader is seen, large (1 MiB) in a loading folder: the
prefetcher calls ``on_loader(folder)`` where the policy first says ``loading``.

Every threshold is in ``PrefetchConfig``, whose defaults are the production values.
Tests: ``tests/test_policy.py`` (tables), ``tests/test_prefetch.py`` (the pump).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from netmount.core.blocks import PAGE, block_range
from netmount.core.ranges import aligned_within
from netmount.core.settings import DEFAULT_BLOCK_SIZE
from netmount.read.loader import loader_blocks, loader_seen
from netmount.read.reader import ExactRead
from netmount.read.tensormap import TensorMap, chunk_for, fault_for, last_for, middle, near_any, read_for

__all__ = ["FileState", "PrefetchConfig", "Stream", "TensorMap", "Verdict", "advance", "judge", "wants"]


@dataclass(frozen=True)
class PrefetchConfig:
    block_size: int = DEFAULT_BLOCK_SIZE
    window_max: int = 64 << 20  # the largest sequential readahead window
    lookahead: int = 64 << 20  # a loader's tensors wanted first past (and half before) the one read
    load_tails: int = 3  # jumps into the tails of this many big tensors of a file: a loader
    load_run: int = 8  # jumps into this many tensors next to each other in a file: a loader
    load_sweep: int = 4  # first looks at this many tensors in file order, in a row: a loader
    sweep_gap: int = 3  # ... each at most this many tensors past the one before
    speculative: int = 1 << 20  # what a shard with no tensor data read yet gets past its header
    ahead_files: int = 4  # shards wanted ahead of the furthest one a loader has read
    ahead_headers: int = 8  # headers read ahead of a shard opened amid others (a loader opening them all)
    guard: int = 512 << 10  # a first jump this close to a big tensor's end is a look at its tail
    stream_bytes: int = 2 << 20  # this much tensor data read in one run from byte 0: a stream
    runs: int = 4  # sequential runs kept per file (threads reading one mmap at once)
    min_split: int = 128 << 10  # max_read's floor (readahead.max_read): shorter reads are never pieces
    head: int = 128 << 10  # reads within a file's first bytes this far fetch its head (read/shape.py)
    max_extent: int = 16 << 20  # a tensor up to this size is fetched exactly at its first read
    near: int = 512 << 10  # (parquet) reads this close to a chunk fetched exactly: the kernel reading around it
    spill: int = 8  # the kernel reads on at most this many of a run's requests past its tensor


# -- sequential runs, per file ------------------------------------------------------------------

@dataclass(frozen=True)
class Stream:
    expected: int = -1  # where the next read of a sequential run would start
    window: int = 0  # readahead window, bytes
    streak: int = 0  # where the current sequential run began
    # the file's other recent runs, most recent first: threads that fault one mmap (torch's
    # two on a get_tensor) each read on sequentially, their requests interleaved
    others: tuple[Stream, ...] = ()
    target: int = -1  # the tensor the run is for (``judge``); -1: none
    reach: int = 0  # the run's largest request: the kernel's readahead windows are that big

    def gap(self, size: int, block_size: int) -> int:
        """How far from where the run's last read ended a read of ``size`` still continues
        it: the kernel has a few of the run's requests in flight and may serve them out of
        order — two of them; four when they are half a block or more (a large readahead:
        cat's, doubled by its ``fadvise``, keeps three or four in flight, and a read planned
        three ahead was a jump, four of which in a row made cat a loader); at most four blocks."""
        n = max(self.reach, size)
        return min(4 * block_size, (4 if 2 * n >= block_size else 2) * n)

    def continued_by(self, offset: int, gap: int, inside: bool = True) -> bool:
        """Whether a read at ``offset`` continues this run: it starts within ``gap`` of where
        the run's last read ended, or (``inside``) within the span the run has read (a
        window served before the one before it)."""
        return self.expected >= 0 and (abs(offset - self.expected) <= gap
                                       or (inside and self.streak - gap <= offset < self.expected))

    def run_at(self, offset: int, size: int, block_size: int) -> Stream:
        """The run a read at ``offset`` continues: the one whose next read it is, this one
        first, else the nearest; else one whose span it falls in; else this one."""
        runs = (self, *self.others)
        near = [r for r in runs if r.continued_by(offset, r.gap(size, block_size), inside=False)]
        if self.expected < 0 or self in near:
            return self
        if near:
            return min(near, key=lambda r: abs(offset - r.expected))
        return next((r for r in runs if r.continued_by(offset, r.gap(size, block_size))), self)


def advance(stream: Stream | None, offset: int, size: int, file_size: int,
            cfg: PrefetchConfig, slack: int | None = None) -> tuple[Stream, list[int], int | None]:
    """The file's runs after a read of [offset, offset + size), the readahead window's
    blocks, and where the sequential run this read continues began (None: a jump).
    ``slack``: how far from where the last read ended a read still continues the run
    (default ``Stream.gap``; see ``TensorMap.slack`` for a columnar file).  A read that
    continues one of the file's ``runs`` most recent runs continues that one (another
    thread's)."""
    end = offset + size
    s = stream or Stream(streak=offset)
    if slack is None:  # (a columnar file's slack is for its last run only)
        run = s.run_at(offset, size, cfg.block_size)
        if run is not s:
            s = replace(run, others=(replace(s, others=()), *(r for r in s.others if r is not run)))
    if s.continued_by(offset, s.gap(size, cfg.block_size) if slack is None else slack, inside=slack is None):
        window = min(max(s.window * 2, 2 * cfg.block_size), cfg.window_max)
        # a read before where the run began (the kernel's requests served out of order: cat's
        # first two, at 1 MiB and then 0) moves its start back: else a run from byte 0 is taken
        # for one from mid-file, and never becomes a stream
        streak: int | None = min(s.streak, offset)
        new = replace(s, expected=max(end, s.expected), window=window, reach=max(s.reach, size), streak=streak)
    else:
        kept = (replace(s, others=()), *s.others)[: cfg.runs - 1] if s.expected >= 0 else ()
        new = Stream(end, 0, offset, kept, reach=size)
        streak = None
    if new.window == 0 or end >= file_size:
        return new, [], streak
    return new, list(block_range(end, new.window, file_size, cfg.block_size)), streak


# -- one file of tensors ------------------------------------------------------------------------

@dataclass(frozen=True)
class FileState:
    """What reads of one safetensors file (all handles) have shown so far."""

    touched: frozenset[int] = frozenset()  # tensors a jump was for
    wanted: frozenset[int] = frozenset()  # tensors a loader's wants started from (parquet: chunks wanted)
    loading: bool = False  # a loader is reading this file tensor after tensor
    tails: frozenset[int] = frozenset()  # big tensors a jump landed in the tail of
    data_read: bool = False  # the program jumped into tensor data (not only the header)
    order: tuple[int, ...] = ()  # the last tensors first jumped into, oldest first
    extents: frozenset[int] = frozenset()  # tensors fetched exactly (whole, or the rest from a read)


@dataclass(frozen=True)
class Verdict:
    """The policy's word on one read."""

    exact: ExactRead | None = None  # how a miss is fetched (None: in blocks)
    target: int = -1  # the tensor the read's run is for (-1: none)
    window: tuple[int, int] = (0, 0)  # the sequential window fetches blocks starting in here
    loader: int | None = None  # a loader read this tensor: the rest of the file, from it
    span: tuple[int, int] | None = None  # (parquet) a chunk jumped into: its blocks
    first: tuple[int, ...] = ()  # blocks to start before the read (which joins them)
    pieces: tuple[tuple[int, int], ...] = ()  # ranges to fetch exactly, now (a tensor's tail)
    state: FileState = FileState()


def judge(tmap: TensorMap, state: FileState, run: Stream, streak: int | None, offset: int, size: int,
          file_size: int, *, folder_loading: bool, cfg: PrefetchConfig) -> Verdict:
    """The verdict on a read of [offset, offset + size) of a mapped file.  ``run``: the
    file's run after ``advance`` (its ``target``: the run's, for a read that continues
    it); ``streak``: where that run began (None: this read jumped).  ``folder_loading``: a
    loader is reading another shard of this folder."""
    state = _evidence(tmap, state, offset, size, streak is None, folder_loading, cfg)
    if tmap.columnar:
        return _columnar(tmap, state, streak, offset, size, file_size, cfg)
    if not tmap.ranges:
        return Verdict(window=(0, offset + cfg.block_size), state=state)
    if state.loading:
        i = tmap.find(offset)
        if i is not None and i not in state.wanted:
            return Verdict(window=(0, file_size), loader=i, state=replace(state, wanted=state.wanted | {i}))
        return Verdict(window=(0, file_size), state=state)
    if offset < tmap.data and folder_loading:  # a header read where a loader is: the first blocks
        return Verdict(window=(0, max(offset + cfg.block_size, tmap.data + cfg.speculative)), state=state)
    if offset < tmap.data:  # a header read: the head, else as the kernel reading on past it
        return Verdict(_early(offset, size, run, cfg), state=state)
    if streak == 0:  # a run from byte 0 into the data: the kernel reading on past a header, or cat
        return _from_zero(tmap, state, run, offset, size, file_size, folder_loading, cfg)
    if streak is None:
        return _jump(tmap, state, offset, size, file_size, cfg)
    return _run(tmap, state, run, streak, offset, size, file_size, cfg)


def _fetched_exactly(state: FileState, i: int) -> FileState:
    return replace(state, extents=state.extents | {i})


def _evidence(tmap: TensorMap, state: FileState, offset: int, size: int, jump: bool, folder_loading: bool,
              cfg: PrefetchConfig) -> FileState:
    """The file's state after a read: only jumps into tensor data count as evidence of a
    loader (a sequential run — the kernel's readahead after a header read, say — crosses
    many small tensors without meaning them)."""
    i = tmap.find(offset)
    if i is None:
        return state
    touched, tails, order = state.touched, state.tails, state.order
    if jump:
        k = read_for(tmap, offset, size)
        k = i if k is None else k
        ks, ke = tmap.ranges[k]
        # the *first* look at a big tensor at its tail: a reader of the whole tensor comes
        # there too, but after its start
        if k not in touched and ke - ks > 2 * cfg.guard and middle(offset, size) >= ke - cfg.guard:
            tails = tails | {k}
        if k not in touched:
            order = (*order, k)[-2 * cfg.load_sweep:]
        touched = touched | {k}
    loading = not tmap.columnar and (
        state.loading or (folder_loading and jump) or loader_seen(touched, tails, cfg, order))
    return replace(state, touched=touched, loading=loading, tails=tails, data_read=state.data_read or jump,
                   order=order)


def _early(offset: int, size: int, run: Stream, cfg: PrefetchConfig) -> ExactRead | None:
    """A read of the header, or of the kernel reading on past it: the head's within
    ``head`` (read/shape.py), else its pages — but in requests of ``min_split`` or more (a
    read(2)'s, cat's, or a large readahead's) its blocks: cat would wait a round trip per
    request."""
    return ExactRead() if offset + size > cfg.head and run.reach < cfg.min_split else None


def _from_zero(tmap: TensorMap, state: FileState, run: Stream, offset: int, size: int, file_size: int,
               folder_loading: bool, cfg: PrefetchConfig) -> Verdict:
    """A run from byte 0 into the data.  Up to ``spill`` of its requests past the header
    (to a block's end) it may be the kernel reading on after a header read (``_early``), with
    no window.  Further on it is the program (cat, a loader iterating in file order): blocks,
    the window up to the end of the tensor read (or ``guard`` into it, near its start), and
    to the file's end once it has read ``stream_bytes`` of data: a stream.  In a folder a
    loader reads, all of it is the program's."""
    zone = 0 if folder_loading else -(-(tmap.data + cfg.spill * run.reach) // cfg.block_size) * cfg.block_size
    if offset < zone:
        return Verdict(_early(offset, size, run, cfg), state=state)
    if offset - tmap.data >= cfg.stream_bytes:
        return Verdict(window=(zone, file_size), state=state)
    start, end = tmap.ranges[tmap.find(offset)]
    return Verdict(window=(zone, end if start + cfg.guard <= offset else min(end, offset + cfg.guard)), state=state)


def _jump(tmap: TensorMap, state: FileState, offset: int, size: int, file_size: int,
          cfg: PrefetchConfig) -> Verdict:
    """A read that jumped into tensor data: a run for the tensor it is for begins.  That
    tensor is fetched exactly now if it is at most ``max_extent`` (the first fault of a
    ``get_tensor``; or its second thread's, first), unless this is a first look at a big
    tensor's tail (a loader's, before there is evidence: only the pages read).  The run may
    be for any tensor that starts in this read after that one (a read-around over dense small
    tensors and a big one): it is bounded by the last of them."""
    i, fault = fault_for(tmap, offset, size, file_size, cfg.min_split)
    if i is None:
        return Verdict(ExactRead(), state=state)
    start, end = tmap.ranges[i]
    if end - start > 2 * cfg.guard and fault >= end - cfg.guard:  # a look at a tail
        return _within(tmap, i, i, state, offset, size, file_size, cfg)
    bound = max(i, last_for(tmap, offset, size, file_size, cfg.min_split))
    if i in state.extents or end - start > cfg.max_extent:
        return _within(tmap, i, bound, state, offset, size, file_size, cfg)
    return _fetch(tmap, i, start, bound, state, offset, size, file_size, cfg)


def _run(tmap: TensorMap, state: FileState, run: Stream, streak: int, offset: int, size: int,
         file_size: int, cfg: PrefetchConfig) -> Verdict:
    """A read that continues a run mid-file: bounded by the run's tensor.  Past its end,
    the kernel's readahead for ``spill`` of the run's requests (to a block's end: pages,
    exactly); further on the program itself: a stream through 3 whole tensors, else a run
    for the tensor it is in."""
    t = run.target
    if t < 0:
        return Verdict(ExactRead(), state=state)
    end = tmap.ranges[t][1]
    if offset < end:
        return _tensor(tmap, tmap.find(offset), t, streak, state, offset, size, file_size, cfg)
    spilled = -(-(end + cfg.spill * run.reach) // cfg.block_size) * cfg.block_size
    k = tmap.find(offset)
    if offset < spilled or k is None:
        return Verdict(ExactRead(), t, state=state)
    if k >= 3 and streak <= tmap.ranges[k - 3][0]:
        return Verdict(None, t, (0, file_size), state=state)
    return _tensor(tmap, k, k, streak, state, offset, size, file_size, cfg)


def _tensor(tmap: TensorMap, k: int, target: int, streak: int, state: FileState, offset: int, size: int,
            file_size: int, cfg: PrefetchConfig) -> Verdict:
    """A run's read in tensor ``k``: the rest of it exactly (once) if it is small, else as
    ``_within``; only the pages read of a tensor before the one the run is for that it began
    inside (the read-around before that one)."""
    ks, ke = tmap.ranges[k]
    if ks < streak and k != target:
        return Verdict(ExactRead(), target, state=state)
    if k in state.extents or ke - ks > cfg.max_extent:
        return _within(tmap, k, target, state, offset, size, file_size, cfg)
    return _fetch(tmap, k, max(ks, offset // PAGE * PAGE), target, state, offset, size, file_size, cfg)


def _fetch(tmap: TensorMap, k: int, a: int, target: int, state: FileState, offset: int, size: int,
           file_size: int, cfg: PrefetchConfig) -> Verdict:
    """Tensor ``k`` from ``a`` on, exactly, now: its whole blocks as blocks (in parallel,
    started before the read, which joins them), the piece before them as the read's extent,
    the piece after them exactly too (``pieces``).  A tensor in one or two blocks: one extent."""
    end, bs = tmap.ranges[k][1], cfg.block_size
    lo, hi = aligned_within(a, end, bs)
    hi = end if end == file_size and lo < end else hi
    first = _first(tmap, k, target, offset, size, file_size, cfg)
    if lo >= hi:
        return Verdict(ExactRead(extent=(a, end)), target, first=first, state=_fetched_exactly(state, k))
    blocks = (*range(lo // bs, -(-hi // bs)), *first)
    return Verdict(ExactRead(extent=(a, lo) if a < lo else None), target, first=blocks,
                   pieces=((hi, end),) if hi < end else (), state=_fetched_exactly(state, k))


def _within(tmap: TensorMap, i: int, target: int, state: FileState, offset: int, size: int, file_size: int,
            cfg: PrefetchConfig) -> Verdict:
    """A read in (or around) tensor ``i`` of a run bounded by ``target``: the whole blocks
    of a big tensor, or of one fetched exactly (``_fetch``), in blocks (and the window within
    them), anything else exactly."""
    start, end = tmap.ranges[i]
    big = end - start > cfg.max_extent or i in state.extents  # (its whole blocks come as blocks)
    lo, hi = tmap.whole_blocks(i, cfg.block_size, file_size) if big else (0, 0)
    if lo <= offset and min(offset + size, file_size) <= hi:
        return Verdict(None, target, (lo, hi), state=state)
    return Verdict(ExactRead(), target, (lo, hi), first=_first(tmap, i, target, offset, size, file_size, cfg),
                   state=state)


def _first(tmap: TensorMap, i: int, target: int, offset: int, size: int, file_size: int,
           cfg: PrefetchConfig) -> tuple[int, ...]:
    """The whole blocks of big tensors ``i`` to ``target`` that a read fetched exactly
    overlaps: started as blocks before it (it joins them), not fetched twice."""
    last, out, k = min(offset + size, file_size), [], i
    while k <= target and tmap.ranges[k][0] < last:
        start, end = tmap.ranges[k]
        if end - start > cfg.max_extent:
            lo, hi = tmap.whole_blocks(k, cfg.block_size, file_size)
            out += range(max(lo, offset) // cfg.block_size, -(-min(hi, last) // cfg.block_size))
        k += 1
    return tuple(out)


def _columnar(tmap: TensorMap, state: FileState, streak: int | None, offset: int, size: int,
              file_size: int, cfg: PrefetchConfig) -> Verdict:
    """A parquet file: a jump to (the first page of) a chunk fetches that chunk exactly, a
    jump well inside one wants its blocks; reads around chunks fetched exactly are fetched
    exactly (the kernel's read-around); a run stops at its chunk's end unless it is a scan."""
    if near_any(tmap, state.extents, offset, offset + size, cfg.near):
        return Verdict(ExactRead(), state=state)
    limit = _columnar_limit(tmap, offset, streak, file_size, cfg)
    i = None if streak is not None else chunk_for(tmap, offset, min(offset + size, file_size) - 1, cfg.near)
    if i is None or i in state.extents or i in state.wanted:
        return Verdict(window=(0, limit), state=state)
    start, end = tmap.ranges[i]
    if end - start <= cfg.max_extent and offset <= start + cfg.near:
        return Verdict(ExactRead(extent=(start, end)), i, state=_fetched_exactly(state, i))
    if start + cfg.guard <= offset < end - cfg.guard:
        return Verdict(None, i, (0, limit), span=(start, end), state=replace(state, wanted=state.wanted | {i}))
    return Verdict(window=(0, limit), state=state)


def _columnar_limit(tmap: TensorMap, offset: int, streak: int | None, file_size: int, cfg: PrefetchConfig) -> int:
    i = tmap.find(offset)
    if i is None:  # (between column chunks: a page index, say)
        return offset + cfg.block_size
    start, end = tmap.ranges[i]
    begun = 0 if streak is None else max(streak, tmap.data)
    # (a run from byte 0 may be the first column's chunk alone: only 3 whole chunks make a scan)
    if streak is not None and offset - begun >= cfg.stream_bytes and i >= 3 and streak <= tmap.ranges[i - 3][0]:
        return file_size
    return end if start + cfg.guard <= offset else min(end, offset + cfg.guard)


def wants(tmap: TensorMap | None, verdict: Verdict, window: list[int], file_size: int,
          cfg: PrefetchConfig) -> list[int]:
    """The blocks one read wants fetched, in order: a loader's rest of the file (from the
    tensor it read), then the sequential window's blocks that start within the verdict's
    span (whole blocks of the run's tensor, for a partial read)."""
    lo, hi = verdict.window
    out = [*verdict.first, *(b for b in window if lo <= b * cfg.block_size < hi)]  # (first: what did not fit)
    if verdict.span is not None:
        out = [*block_range(verdict.span[0], verdict.span[1] - verdict.span[0], file_size, cfg.block_size), *out]
    if tmap is not None and verdict.loader is not None:
        out = [*loader_blocks(tmap, verdict.loader, file_size, cfg), *out]
    return list(dict.fromkeys(out))
