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
  neighbour) fetches the whole tensor in blocks.
- **A loader** (``tensor_wants``): once reads have *jumped* into ``load_tensors`` different
  tensors of a file — more than one tensor read and its spill-over can touch — every read
  there fetches its tensor and the tensors after it up to ``lookahead`` bytes (and half that
  before it: module order is not file order), and so does the first read in any other
  shard of the same folder (loaders treat all shards alike).
- **The next shard** (``next_shard``): once a loader is at work in a folder, the next
  safetensors file by name that the program has read too (its header, at least) is wanted
  from its first tensor, up to ``lookahead`` bytes, once.  A file the program never read is
  never fetched.

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
    lookahead: int = 64 << 20  # a loader's tensors wanted past (and half before) the one read
    load_tensors: int = 4  # distinct tensors of a file jumped into: a loader is reading it
    guard: int = 512 << 10  # reads this close to a tensor's ends may be a neighbour's spill-over
    stream_bytes: int = 2 << 20  # this much tensor data read in one sequential run: a stream
    max_extent: int = 16 << 20  # a lone tensor up to this size is fetched exactly, not in blocks
    near: int = 512 << 10  # reads this close to a lone tensor's extent: the kernel reading around it
    far: int = 2 << 20  # a read this far from where the last one ended is a jump


# -- sequential runs, per open file handle ----------------------------------------------------

@dataclass(frozen=True)
class Stream:
    expected: int = -1  # where the next read of a sequential run would start
    window: int = 0  # readahead window, bytes
    streak: int = 0  # where the current sequential run began


def advance(stream: Stream | None, offset: int, size: int, file_size: int,
            cfg: PrefetchConfig, slack: int | None = None) -> tuple[Stream, list[int], int | None]:
    """The handle's state after a read of [offset, offset + size), the readahead window's
    blocks, and where the sequential run this read continues began (None: a jump).
    ``slack``: how far from where the last read ended a read still continues the run
    (default a block; see ``TensorMap.slack`` for a columnar file)."""
    end = offset + size
    s = stream or Stream(streak=offset)
    # the kernel may reorder neighbouring requests a little: allow one block of slack
    if s.expected >= 0 and abs(offset - s.expected) <= (cfg.block_size if slack is None else slack):
        window = min(max(s.window * 2, 2 * cfg.block_size), cfg.window_max)
        new = Stream(max(end, s.expected), window, s.streak)
        streak: int | None = s.streak
    else:
        new, streak = Stream(end, 0, offset), None
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

    touched: frozenset[int] = frozenset()  # tensors a jump landed in
    triggered: frozenset[int] = frozenset()  # tensors already wanted whole (blocks or extent)
    loading: bool = False  # a loader is reading this file tensor after tensor


def exact_read(tmap: TensorMap, state: FileState, stream: Stream | None, offset: int, size: int,
               file_size: int, *, near_anchor: bool, folder_loading: bool,
               cfg: PrefetchConfig) -> tuple[ExactRead | None, FileState]:
    """Should a read that misses be fetched exactly (its pages, not their blocks)?  Yes
    around a lone tensor's extent (``near_anchor``), and for a far jump to the start of a
    small tensor in a shard no loader is reading: then that whole tensor is the extent.
    At most ``load_tensors`` lone tensors come this way before a loader is assumed."""
    folder_loading = folder_loading and not tmap.columnar
    if not tmap.ranges or state.loading or folder_loading or offset < tmap.ranges[0][0]:
        return None, state  # (the header: the head tier, or blocks)
    if near_anchor:
        return ExactRead(), state
    # (columnar: readers jump between nearby chunks of one column, so only a read that
    # really continues the run — ``TensorMap.slack``, as in ``advance`` — is left to blocks)
    far = tmap.slack(stream.expected, offset, cfg) if tmap.columnar and stream is not None else cfg.far
    if stream is not None and abs(offset - stream.expected) <= far:
        return None, state  # continues (or nearly) a run read in blocks
    last = min(offset + size, file_size) - 1
    i = tmap.find(last)
    if tmap.columnar:  # pread, not mmap: the chunk read starts in the read's first page
        j = bisect.bisect_left(tmap.starts, offset)
        if j < len(tmap.starts) and tmap.starts[j] < offset + PAGE:
            i = j
    if i is None:
        return None, state
    # a reader of a tensor starts at its start; the read-around of its first page may end
    # just before it (in the previous tensor's tail)
    if tmap.ranges[i][0] + cfg.near < offset and i + 1 < len(tmap.ranges) and tmap.ranges[i + 1][0] <= last + cfg.near:
        i += 1
    start, end = tmap.ranges[i]
    # a jump to the middle or the end of a tensor (a loader's first look) is left to blocks
    if end - start > cfg.max_extent or offset > start + cfg.near:
        return None, state
    return ExactRead(extent=(start, end)), replace(state, triggered=state.triggered | {i})


@dataclass(frozen=True)
class TensorWants:
    blocks: list[int] = field(default_factory=list)  # in fetch order
    limit: int = 0  # how far a sequential window may reach
    state: FileState = FileState()


def tensor_wants(tmap: TensorMap, state: FileState, offset: int, streak: int | None, file_size: int,
                 *, folder_loading: bool, cfg: PrefetchConfig) -> TensorWants:
    """Blocks to fetch for a read at ``offset`` by tensor layout, how far a sequential window
    may reach (the file's end, or the end of the tensor read), and the file's new state.
    ``streak``: where the sequential run this read continues began (None: a jump)."""
    bs = cfg.block_size
    i = tmap.find(offset)
    if i is None:
        loading = not tmap.columnar and (state.loading or folder_loading)
        return TensorWants([], file_size if loading else offset + bs, state)
    start, end = tmap.ranges[i]
    # Only jumps count as touching a tensor: a sequential run (the kernel's readahead after
    # a header read, say) crosses many small tensors without meaning them.
    touched = state.touched | {i} if streak is None else state.touched
    # A stream (cat, cp) gets no limit: a run from the file's first byte through
    # stream_bytes of tensor data, or through >= 3 whole tensors and stream_bytes.
    data = tmap.ranges[0][0]
    # (Columnar: a run from byte 0 may be the first column's chunk alone; only crossing
    # 3 whole chunks makes it a scan.)
    streaming = streak is not None and offset - max(streak, data) >= cfg.stream_bytes and (
        (streak == 0 and not tmap.columnar) or (i >= 3 and streak <= tmap.ranges[i - 3][0]))
    loading = not tmap.columnar and (state.loading or len(touched) >= cfg.load_tensors or folder_loading)
    # Around a tensor's first and last pages the kernel reads windows that spill into the
    # neighbours: for a lone read, no reason to fetch a whole neighbouring tensor.
    inside = start + cfg.guard <= offset < end - cfg.guard
    limit = end if start + cfg.guard <= offset else min(end, offset + cfg.guard)
    if streaming or loading:
        limit = file_size
    new = FileState(touched, state.triggered, loading)
    if not loading and (i in state.triggered or not inside):
        return TensorWants([], limit, new)
    new = replace(new, triggered=new.triggered | {i})
    if not loading:
        return TensorWants(list(block_range(start, end - start, file_size, bs)), limit, new)
    return TensorWants(_loader_blocks(tmap, i, file_size, cfg), file_size, new)


def _loader_blocks(tmap: TensorMap, i: int, file_size: int, cfg: PrefetchConfig) -> list[int]:
    """A loader read tensor ``i``: it and the tensors after it up to ``lookahead``, then
    (files sort a layer's tensors by name — k, o, q, v — models use them in module order —
    q, k, v, o) the tensors just before it, up to half the lookahead, nearest first."""
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
    behind = [b for b in block_range(before, start - before, file_size, bs) if b < ahead[0]]
    return ahead + behind[::-1]


def merge_wants(window: list[int], wants: TensorWants, *, near_anchor: bool, block_size: int) -> list[int]:
    """What one read wants fetched, in order: its tensor blocks, then the sequential window
    (cut at ``wants.limit``; none at all next to a lone tensor's extent, which holds what
    comes next)."""
    window = [] if near_anchor else [i for i in window if i * block_size < wants.limit]
    return list(dict.fromkeys([*wants.blocks, *window]))


def next_shard(read_in_folder: list[str], path: str, chained: frozenset[str]) -> str | None:
    """The safetensors file after ``path`` by name among those the program has read in this
    folder, unless it was already wanted (``chained``)."""
    later = sorted(p for p in read_in_folder if p > path and p.endswith(".safetensors"))
    if not later or later[0] in chained:
        return None
    return later[0]
