"""The prefetch policy: pure decisions over explicit state, no I/O, no threads, no locks.

Designed on a read trace of transformers 5.24 loading a 6-shard bf16 Llama through the
mount (BENCHMARKS.md): ``from_pretrained`` reads each shard's header on the main thread,
shard after shard, then two threads fault in the *last* ~256 KiB of every tensor, hopping
between shards in key order; weights stay zero-copy mmap views, so the bulk of the bytes is
read later, at first use, in module order (not file order) on torch's threads.

The signals, cheap to compute on every read:

- **Sequential** (``advance``, per open file handle): a read that starts where the previous
  one ended grows a readahead window (doubling from 2 blocks up to ``window_max``); a jump
  resets it.  That covers ``cat``, ``cp`` and loaders that stream a file.  In a
  safetensors file the window stops at the end of the tensor being read until the run is a
  *stream* (from byte 0 through ``stream_bytes`` of data, or through 3 whole tensors):
  reading one tensor page by page must cost that tensor, not the next 64 MiB.
- **A lone tensor** (``exact_read``): a far jump to the start of a tensor of at most
  ``max_extent`` in a shard no loader is reading (the first fault of
  ``safe_open(...).get_tensor``) fetches exactly that tensor as an extent, and the kernel's
  reads around it exactly too.  A lone read well inside a bigger tensor (``guard`` from its
  ends: reads near the edges may be the kernel's read-around spilling over from a
  neighbour) fetches the whole tensor in blocks.  The kernel reads R either side of a
  faulting page for a readahead of R — one request centred on it when ``max_read`` holds
  that, else pieces split *at* that page, served by several threads in any order (traced on
  libfuse3): ``fault_for`` finds the tensor a read is for whatever R (16 KiB to 1 MiB): not
  the neighbour a read starts in, nor the big one it runs into.  torch copies a tensor on
  two threads (from its start and from its middle) through one handle: each keeps its own
  sequential run (``Stream.others``), so neither looks like a jump.
- **A loader** (``loader_seen``), decided on evidence, never on one tensor: a read is *for*
  the tensor that starts in the page under its middle, else the one under it (``read_for``,
  with the split halves above), and a file is being loaded
  once the first jumps into ``load_tails`` big tensors have landed in their *tails* (last
  ``guard`` bytes), or the first looks at ``load_sweep`` tensors in a row went forward
  through the file (transformers 5 looks at the page where each tensor ends, in key order:
  traced, the page it shares with the next tensor's start), or jumps into a run of
  ``load_run`` tensors next to each other in file order — ``load_file`` and vLLM-style
  iteration.  A person reading tensors reads them from their start (two torch threads:
  start and middle), a few at a time: one big tensor, one tensor per shard, a routed
  expert (3 weights and 3 scales: two runs of 3), 10 random tensors — none of these is
  evidence, and each stays a lone-tensor read.
- **What a loader gets** (``tensor_wants``, ``ahead``): once a file is being loaded, the
  rest of the whole file is wanted — the tensors from the one read up to ``lookahead``, half
  that before it (module order is not file order), then everything after, then everything
  before — and the pump keeps the in-flight budget full with it.  The folder is then a
  loading folder: the other shards, in the order the loader reads them (``loader_order``:
  by their first tensor in key order, as the index names them), are wanted ahead of it, but
  a shard the program has read no tensor data from yet gets only its header and a
  ``speculative`` window (1 MiB) after it — enough to hide the first round trip, and all a
  shard opened only for its header costs (DeepSeek-V3's MTP shard).  The first jump into
  tensor data of a shard in a loading folder makes that shard loading too.

**Readahead (issue 11, item 2: the decision; the mechanism is the FUSE face's).**  The
kernel's readahead is one number per mount (the bdi's ``read_ahead_kb``), so it follows the
mount's strongest evidence: small (32 KiB, ``readahead.SMALL_KB``) until a loader is seen,
because every lone-tensor fault costs a read-around of twice that fetched exactly, and the
kernel's readahead after the tensor more (a 2 KiB norm at 1 MiB costs 1 MiB: measured in
session 3; one tensor per shard cost 1.4x its bytes at 128 KiB, 1.1x at 32: session 5);
large (1 MiB) from the moment a loader is seen in any folder (the Prefetcher's
``on_loader(folder)``, called once per folder, where the policy first says ``loading``),
since then every byte is wanted anyway and 1 MiB requests cut the FUSE round trips 8x.  Not
signalled: a plain stream (``cat``) — the sequential window already keeps the link busy
there, and raising the mount's readahead for one stream would cost every lone reader
beside it.

Every threshold is in ``PrefetchConfig``, whose defaults are the production values.
Tests: ``tests/test_policy.py`` (tables), ``tests/test_prefetch.py`` (the pump).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace

from netmount.core.blocks import PAGE, block_range
from netmount.core.settings import DEFAULT_BLOCK_SIZE
from netmount.read.reader import ExactRead


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
    guard: int = 512 << 10  # reads this close to a tensor's ends may be a neighbour's spill-over
    stream_bytes: int = 2 << 20  # this much tensor data read in one sequential run: a stream
    runs: int = 4  # sequential runs kept per handle (threads reading one mmap at once)
    min_split: int = 128 << 10  # max_read's floor (readahead.max_read): shorter reads are never pieces
    head: int = 128 << 10  # reads within a file's first bytes this far are the head tier's (read/head.py)
    max_extent: int = 16 << 20  # a lone tensor up to this size is fetched exactly, not in blocks
    near: int = 512 << 10  # reads this close to a lone tensor's extent: the kernel reading around it
    far: int = 2 << 20  # a read this far from where the last one ended is a jump


# -- sequential runs, per open file handle ----------------------------------------------------

@dataclass(frozen=True)
class Stream:
    expected: int = -1  # where the next read of a sequential run would start
    window: int = 0  # readahead window, bytes
    streak: int = 0  # where the current sequential run began
    far: bool = False  # the run began with a far jump (or the handle's first read)
    # the handle's other recent runs, most recent first: threads that fault one mmap (torch's
    # two on a get_tensor) each read on sequentially, their requests interleaved on one handle
    others: tuple[Stream, ...] = ()

    def run_at(self, offset: int, gap: int) -> Stream:
        """The run a read at ``offset`` continues (within ``gap`` of where it stopped): this
        one, else the nearest other; this one if none does."""
        if self.expected < 0 or abs(offset - self.expected) <= gap:
            return self
        runs = [r for r in self.others if abs(offset - r.expected) <= gap]
        return min(runs, key=lambda r: abs(offset - r.expected)) if runs else self


def advance(stream: Stream | None, offset: int, size: int, file_size: int,
            cfg: PrefetchConfig, slack: int | None = None) -> tuple[Stream, list[int], int | None]:
    """The handle's state after a read of [offset, offset + size), the readahead window's
    blocks, and where the sequential run this read continues began (None: a jump).
    ``slack``: how far from where the last read ended a read still continues the run
    (default a block; see ``TensorMap.slack`` for a columnar file).  A read that continues
    one of the handle's ``runs`` most recent runs continues that one (another thread's)."""
    end = offset + size
    s = stream or Stream(streak=offset)
    # the kernel may reorder neighbouring requests a little: allow one block of slack
    gap = cfg.block_size if slack is None else slack
    if slack is None:  # (a columnar file's slack is for its last run only)
        run = s.run_at(offset, gap)
        if run is not s:
            s = replace(run, others=(replace(s, others=()), *(r for r in s.others if r is not run)))
    if s.expected >= 0 and abs(offset - s.expected) <= gap:
        window = min(max(s.window * 2, 2 * cfg.block_size), cfg.window_max)
        new = Stream(max(end, s.expected), window, s.streak, s.far, s.others)
        streak: int | None = s.streak
    else:
        kept = (replace(s, others=()), *s.others)[: cfg.runs - 1] if s.expected >= 0 else ()
        new = Stream(end, 0, offset, s.expected < 0 or abs(offset - s.expected) > cfg.far, kept)
        streak = None
    if new.window == 0 or end >= file_size:
        return new, [], streak
    return new, list(block_range(end, new.window, file_size, cfg.block_size)), streak


# -- safetensors layout ---------------------------------------------------------------------

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

    def slack(self, expected: int, offset: int, cfg: PrefetchConfig) -> int:
        """How far a read at ``offset`` may be from where the handle's last read ended
        (``expected``) and still continue its run: a block (the kernel reorders its
        readahead a little), but nothing in a columnar file if a whole chunk lies between —
        a column's chunks in consecutive row groups are a few KB to a few MB apart, and
        with a block's slack a column read would pass for a scan whose readahead window
        fetches the other columns."""
        a, b = min(expected, offset), max(expected, offset)
        j = bisect.bisect_left(self.starts, a)
        if self.columnar and j < len(self.ranges) and self.ranges[j][1] <= b:
            return 0
        return cfg.block_size

    def find(self, offset: int) -> int | None:
        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and offset < self.ranges[i][1]:
            return i
        return None


@dataclass(frozen=True)
class FileState:
    """What reads of one safetensors file (all handles) have shown so far."""

    touched: frozenset[int] = frozenset()  # tensors a jump was for
    triggered: frozenset[int] = frozenset()  # tensors already wanted whole (blocks or extent)
    loading: bool = False  # a loader is reading this file tensor after tensor
    tails: frozenset[int] = frozenset()  # big tensors a jump landed in the tail of
    data_read: bool = False  # the program jumped into tensor data (not only the header)
    order: tuple[int, ...] = ()  # the last tensors first jumped into, oldest first


def loader_seen(touched: frozenset[int], tails: frozenset[int], cfg: PrefetchConfig,
                order: tuple[int, ...] = ()) -> bool:
    """Is a loader reading this file?  The evidence: jumps into the tails of ``load_tails``
    big tensors, first looks at ``load_sweep`` tensors in a row going forward through the
    file (each at most ``sweep_gap`` past the one before: transformers in key order), or
    jumps into a run of ``load_run`` neighbouring tensors (see the module docstring).  Jumps
    into a few tensors, scattered, out of order or in short runs, are a person's."""
    if len(tails) >= cfg.load_tails:
        return True
    last = order[-cfg.load_sweep:]
    if len(last) >= cfg.load_sweep and all(0 < b - a <= cfg.sweep_gap for a, b in zip(last, last[1:])):
        return True
    run, best, prev = 0, 0, None
    for i in sorted(touched):
        run = run + 1 if prev is not None and i == prev + 1 else 1
        best, prev = max(best, run), i
    return best >= cfg.load_run


def read_for(tmap: TensorMap, offset: int, size: int) -> int | None:
    """The tensor a read is for: the one that starts in the page under its middle (an mmap
    fault's read-around is centred on the faulting page, and a reader faults first where its
    tensor starts: a norm that shares that page with the end of a big tensor is what is
    read, not that tensor's tail), else the one under its middle, else the one its start is
    in — or the next one, when the read ends at the page it starts in."""
    mid = _middle(offset, size)
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


def _middle(offset: int, size: int) -> int:
    return offset + min(size // 2, max(0, size - 1))


def exact_read(tmap: TensorMap, state: FileState, stream: Stream | None, offset: int, size: int,
               file_size: int, *, near_anchor: bool, folder_loading: bool,
               cfg: PrefetchConfig) -> tuple[ExactRead | None, FileState]:
    """Should a read that misses be fetched exactly (its pages, not their blocks)?  Yes
    around a lone tensor's extent (``near_anchor``), and for a far jump to the start of a
    small tensor in a shard no loader is reading: then that whole tensor is the extent.
    Never in a file or folder a loader is reading (blocks, and the loader's wants)."""
    folder_loading = folder_loading and not tmap.columnar
    if not tmap.ranges or state.loading or folder_loading or offset < tmap.ranges[0][0]:
        return None, state  # (the header: the head tier, or blocks)
    if near_anchor:
        return ExactRead(), state
    # (columnar: readers jump between nearby chunks of one column, so only a read that
    # really continues the run — ``TensorMap.slack``, as in ``advance`` — is left to blocks;
    # they pread, so no split read-around either)
    far = tmap.slack(stream.expected, offset, cfg) if tmap.columnar and stream is not None else cfg.far
    if stream is not None and not tmap.columnar:
        stream = stream.run_at(offset, far)  # (the run of the thread this read is likely from)
    continuing = stream is not None and abs(offset - stream.expected) <= far
    if continuing and (tmap.columnar or not stream.far or stream.streak == 0 or offset - stream.streak > cfg.near):
        return None, state  # continues (or nearly) a run read in blocks
    last = min(offset + size, file_size) - 1
    if continuing:
        # the kernel splits an mmap fault's read-around into max_read requests: this one,
        # just after the jump, starts at the faulting page — the tensor that starts in it
        i = tmap.find(offset)
        if i is None:
            return None, state
        if i + 1 < len(tmap.ranges) and tmap.ranges[i + 1][0] < offset + PAGE:
            i += 1
        start, end = tmap.ranges[i]
        if end - start > cfg.max_extent or offset > start + cfg.near:
            return None, state
        return ExactRead(extent=(start, end)), replace(state, triggered=state.triggered | {i})
    if tmap.columnar:
        i, fault = _chunk_for(tmap, offset, last, cfg.near), offset
    else:
        i, fault = fault_for(tmap, offset, size, file_size, cfg)
    if i is None:
        return None, state
    start, end = tmap.ranges[i]
    # a jump to the middle or the end of a tensor (a loader's first look) is left to blocks
    if end - start > cfg.max_extent or max(offset, fault) > start + cfg.near:
        return None, state
    return ExactRead(extent=(start, end)), replace(state, triggered=state.triggered | {i})


def _starting_in(tmap: TensorMap, page: int) -> int | None:
    """The first tensor that starts in the page at ``page``."""
    j = bisect.bisect_left(tmap.starts, page)
    return j if j < len(tmap.starts) and tmap.starts[j] < page + PAGE else None


def fault_for(tmap: TensorMap, offset: int, size: int, file_size: int,
              cfg: PrefetchConfig) -> tuple[int | None, int]:
    """The tensor a read that jumped was most likely for, and where its fault was.

    Whatever the mount's readahead ``R`` (16 KiB to 1 MiB), an mmap fault at page ``P``
    makes the kernel read ``[P - R, P + R)`` (cut at the file's ends), in requests of at most
    ``max_read`` counted from its start (traced on libfuse3 at 32 and 128 KiB): one request
    centred on ``P`` when ``max_read`` holds it, else pieces, one ending at ``P`` and the
    next starting there.  No ``R`` is assumed.  A reader of a tensor faults first at the
    page the tensor starts in, so the candidates are the tensor that starts in the read's
    middle page (centred), in its first page (the piece from ``P``, or a read() of it), in
    the page right after it (the piece up to ``P``); a read cut short by the end of the file
    began ``R`` before ``P`` and ran on less than ``R`` after it, so ``P`` lies in its second
    half.  A read shorter than ``min_split`` is never a piece (``max_read`` is at least that),
    so the centred reading goes first — where small tensors are dense (a routed expert's
    scales before its weights) its first page always holds some tensor's start; a longer
    one may be a piece, and the pieces' readings go first (wrong, they cost a small tensor's
    extent; the centred reading, wrong, a big neighbour's).  Else the fault was inside a
    tensor: the one under the middle."""
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

    rules = (centred, first_page, after_end) if size < cfg.min_split else (first_page, after_end, centred)
    for rule in rules:
        i = rule()
        if i is not None:
            return i, tmap.starts[i]
    return tmap.find(mid), mid


def _chunk_for(tmap: TensorMap, offset: int, last: int, near: int) -> int | None:
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


@dataclass(frozen=True)
class TensorWants:
    blocks: list[int] = field(default_factory=list)  # in fetch order
    limit: int = 0  # how far a sequential window may reach
    state: FileState = FileState()


def tensor_wants(tmap: TensorMap, state: FileState, offset: int, streak: int | None, file_size: int,
                 *, folder_loading: bool, cfg: PrefetchConfig, size: int = 1) -> TensorWants:
    """Blocks to fetch for a read of [offset, offset + size) by tensor layout, how far a
    sequential window may reach (the file's end, or the end of the tensor read), and the
    file's new state.  ``streak``: where the sequential run this read continues began (None:
    a jump).  ``folder_loading``: a loader is reading another shard of this folder."""
    bs = cfg.block_size
    jump = streak is None
    i = tmap.find(offset)
    if i is None:  # the header (or padding): a loader's window may run on
        if tmap.columnar:  # (between column chunks: a page index, say)
            limit = offset + bs
        elif state.loading:
            limit = file_size
        elif folder_loading and tmap.ranges:
            limit = max(offset + bs, tmap.ranges[0][0] + cfg.speculative)
        else:  # the kernel reading on past a header is no reason to fetch tensors, nor the
            # header's own blocks: the head tier serves its reads (at a small readahead the
            # kernel reads a long header in several requests), and a read past it fetches its block
            limit = 0 if tmap.ranges else offset + bs
        return TensorWants([], limit, state)
    start, end = tmap.ranges[i]
    # Only jumps count as evidence: a sequential run (the kernel's readahead after a header
    # read, say) crosses many small tensors without meaning them.
    touched, tails, order = state.touched, state.tails, state.order
    if jump:
        k = read_for(tmap, offset, size)
        k = i if k is None else k
        ks, ke = tmap.ranges[k]
        # the *first* look at a big tensor at its tail: a reader of the whole tensor comes
        # there too, but after its start
        if k not in touched and ke - ks > 2 * cfg.guard and _middle(offset, size) >= ke - cfg.guard:
            tails = tails | {k}
        if k not in touched:
            order = (*order, k)[-2 * cfg.load_sweep:]
        touched = touched | {k}
    # A stream (cat, cp) gets no limit: a run from the file's first byte through
    # stream_bytes of tensor data, or through >= 3 whole tensors and stream_bytes.
    data = tmap.ranges[0][0]
    # (Columnar: a run from byte 0 may be the first column's chunk alone; only crossing
    # 3 whole chunks makes it a scan.)
    # (Mid-file, stream_bytes must lie before the tensor read: a lone reader's run begins in
    # the kernel's read around its tensor's first page, and may cross many small tensors
    # there — a routed expert's scales — on its way into that one tensor.)
    begun = 0 if jump else max(streak, data)
    streaming = not jump and offset - begun >= cfg.stream_bytes and (
        (streak == 0 and not tmap.columnar) or (i >= 3 and streak <= tmap.ranges[i - 3][0] and (
            tmap.columnar or start - begun >= cfg.stream_bytes)))
    loading = not tmap.columnar and (
        state.loading or (folder_loading and jump) or loader_seen(touched, tails, cfg, order))
    # Around a tensor's first and last pages the kernel reads windows that spill into the
    # neighbours: for a lone read, no reason to fetch a whole neighbouring tensor.
    inside = start + cfg.guard <= offset < end - cfg.guard
    limit = end if start + cfg.guard <= offset else min(end, offset + cfg.guard)
    if streak == 0 and offset + size <= cfg.head:
        limit = 0  # the kernel reading on past a header, served by the head tier: no block for it
    if streaming or loading:
        limit = file_size
    new = FileState(touched, state.triggered, loading, tails, state.data_read or jump, order)
    if not loading and (i in state.triggered or not inside):
        return TensorWants([], limit, new)
    new = replace(new, triggered=new.triggered | {i})
    if not loading:
        return TensorWants(list(block_range(start, end - start, file_size, bs)), limit, new)
    return TensorWants(loader_blocks(tmap, i, file_size, cfg), file_size, new)


def loader_blocks(tmap: TensorMap, i: int, file_size: int, cfg: PrefetchConfig) -> list[int]:
    """A loader read tensor ``i``: the rest of the file, nearest first.  It and the tensors
    after it up to ``lookahead``, then (files sort a layer's tensors by name — k, o, q, v —
    models use them in module order — q, k, v, o) the tensors just before it, up to half the
    lookahead, nearest first; then the rest after, then the rest before (nearest first)."""
    bs = cfg.block_size
    start, end = tmap.ranges[i]
    j, stop = i + 1, end + cfg.lookahead
    while j < len(tmap.ranges) and tmap.ranges[j][0] < stop:
        end = tmap.ranges[j][1]
        j += 1
    k, back = i, start - cfg.lookahead // 2
    while k > 0 and tmap.ranges[k - 1][1] > back:
        k -= 1
    ahead = list(block_range(start, end - start, file_size, bs))
    before = tmap.ranges[k][0]
    behind = [b for b in block_range(before, start - before, file_size, bs) if b < ahead[0]][::-1]
    data_end = tmap.ranges[-1][1]
    rest = [b for b in block_range(end, data_end - end, file_size, bs) if b > ahead[-1]]
    first = tmap.ranges[0][0]
    low = min(behind[-1] if behind else ahead[0], ahead[0])
    earlier = list(block_range(first, low * bs - first, file_size, bs))[::-1] if low * bs > first else []
    return list(dict.fromkeys([*ahead, *behind, *rest, *earlier]))


def speculative_blocks(tmap: TensorMap, file_size: int, cfg: PrefetchConfig) -> list[int]:
    """A shard ahead of a loader that the program has read no tensor data from yet: the
    ``speculative`` window after its header, no more."""
    if not tmap.ranges:
        return []
    data = tmap.ranges[0][0]
    return list(block_range(data, min(cfg.speculative, file_size - data), file_size, cfg.block_size))


def merge_wants(window: list[int], wants: TensorWants, *, near_anchor: bool, block_size: int) -> list[int]:
    """What one read wants fetched, in order: its tensor blocks, then the sequential window
    (cut at ``wants.limit``; none at all next to a lone tensor's extent, which holds what
    comes next)."""
    window = [] if near_anchor else [i for i in window if i * block_size < wants.limit]
    return list(dict.fromkeys([*wants.blocks, *window]))


def loader_order(paths: list[str], weight_map: dict[str, str] | None = None) -> list[str]:
    """The safetensors files of a folder in the order a loader reads them: by the first of
    their tensors in key order as the index names them (transformers walks the keys sorted),
    then any the index does not name, by name."""
    shards = sorted(p for p in paths if p.endswith(".safetensors"))
    if not weight_map:
        return shards
    by_name = {p.rpartition("/")[2]: p for p in shards}
    order: list[str] = []
    for key in sorted(weight_map):
        p = by_name.get(weight_map[key])
        if p is not None and p not in order:
            order.append(p)
    return order + [p for p in shards if p not in order]


def ahead(order: list[str], reached: set[str], wanted: frozenset[str], cfg: PrefetchConfig) -> list[str]:
    """Shards to want next for a loader: up to ``ahead_files`` past the furthest one in
    ``order`` that the program has read (``reached``), not wanted already, nearest first."""
    last = max((n for n, p in enumerate(order) if p in reached), default=-1)
    if last < 0:
        return []
    return [p for p in order[last + 1 : last + 1 + cfg.ahead_files] if p not in wanted]
