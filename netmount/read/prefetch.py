"""Turn page-sized reads into few, large, parallel requests, ahead of the reader.

Designed on a read trace of transformers 5.24 loading a 6-shard bf16 Llama through the
mount (BENCHMARKS.md): ``from_pretrained`` reads each shard's header on the main thread,
shard after shard, then two threads fault in the *last* ~256 KiB of every tensor, hopping
between shards in key order; weights stay zero-copy mmap views, so the bulk of the bytes
is read later, at first use, in module order (not file order) on torch's threads.

Signals, cheap to compute on every read:
- **Sequential**: per file, a read that starts where the previous one ended grows a
  readahead window (doubling from 2 blocks up to ``window_max``); a jump resets it.
  That covers ``cat``, ``cp`` and loaders that stream a file.  In a safetensors file the
  window stops at the end of the tensor being read until the run is a stream (from byte 0
  through ``STREAM_BYTES`` of data, or through 3 whole tensors): reading one tensor page by
  page must cost that tensor, not the next 64 MiB.
- **Tensor-aware** (safetensors; the header gives every tensor's byte range): a far jump
  to the start of a tensor of at most ``MAX_EXTENT`` in a shard no loader is reading (the
  first fault of ``safe_open(...).get_tensor``) fetches exactly that tensor as an extent
  (extents.py), and the kernel's reads around it exactly too (``_exact``, asked by the
  reader on the read's own thread).  A lone read well inside a bigger tensor (``GUARD``
  from its ends: reads near the edges may be the kernel's read-around spilling over from
  a neighbour) fetches the whole tensor in blocks.  Once reads have
  *jumped* into ``load_tensors`` different tensors of a file — more than one tensor read
  and its spill-over can — a loader is at work: from then on every read there fetches its
  tensor and the tensors after it up to ``lookahead`` bytes (and half that before it:
  module order is not file order), and so does the first read in any other shard of the
  same folder (loaders treat all shards alike).  The next shard by name that the program
  has read too (its header, at least) is wanted from its first tensor, up to
  ``lookahead`` bytes, so its download overlaps the loader's work on this one.
- **Already cached** blocks among those wanted are read into memory (or hinted to the
  page cache) ahead of the reader instead (``BlockReader.prefetch``).

Requests: what is wanted is spread over the connections in sub-ranges of at least a
block and at most the reader's request cap, so one tensor comes in parallel.  A pump keeps
up to ``budget`` bytes in flight (demand reads included; they are never held back) and
starts more whenever a run finishes, so a long want flows at link speed without waiting
for the next read; the most recently read file goes first.

Bounds: prefetch never goes past the end of a file, never touches a file the program has
not read (the next shard above must have been read already), never refetches blocks
known to be cached or already downloading, and never has more
than ``budget`` bytes of its own in flight.  Decisions run on one background thread so a
FUSE read never waits for prefetch bookkeeping.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import logging
import threading
from collections import OrderedDict

from netmount.core.blocks import block_range
from netmount.remote.hub import RemoteFile
from netmount.read.reader import BlockReader
from netmount.core.safetensors import HeaderError, parse_header

log = logging.getLogger("netmount.prefetch")

MAX_HEADER = 100 << 20  # the Rust safetensors reader's own limit
GUARD = 512 << 10  # reads this close to a tensor's ends may be spill-over from a neighbour
STREAM_BYTES = 2 << 20  # and this much tensor data read in one sequential run: a stream
MAX_EXTENT = 16 << 20  # a lone tensor up to this size is fetched exactly (extents.py), not in blocks
NEAR = 512 << 10  # reads this close to a lone tensor's extent are the kernel reading around it
FAR = 2 << 20  # a read this far from where the last one ended is a jump to a new place
LOAD_TENSORS = 4  # distinct tensors of a file read: a loader is reading the file


def header_data_ranges(header: bytes, data_start: int, file_size: int) -> list[tuple[int, int]] | None:
    """Absolute [start, end) of every tensor in a safetensors header (the JSON after the
    8-byte length); None, with a warning, if it does not validate (``tensors.parse_header``)."""
    prefix = (data_start - 8).to_bytes(8, "little")
    try:
        return [(t.start, t.end) for t in parse_header(prefix + header, file_size)]
    except HeaderError as exc:
        log.warning("not a valid safetensors header, no tensor-aware prefetch: %s", exc)
        return None


class TensorMap:
    """Sorted absolute [start, end) data ranges of one safetensors file's tensors."""

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = sorted(r for r in ranges if r[1] > r[0])
        self.starts = [r[0] for r in self.ranges]
        self.touched: set[int] = set()  # tensors any read landed in
        self.triggered: set[int] = set()  # tensors fetched whole
        self.loading = False  # a loader is reading this file tensor after tensor

    def find(self, offset: int) -> int | None:
        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and offset < self.ranges[i][1]:
            return i
        return None


class Prefetcher:
    def __init__(
        self,
        reader: BlockReader,
        *,
        window_max: int = 64 << 20,
        lookahead: int = 64 << 20,
        budget: int = 64 << 20,
        load_tensors: int = LOAD_TENSORS,
        connections: int = 8,
        header_ranges=header_data_ranges,
        files=(),
        resolve=None,
    ) -> None:
        self.reader = reader
        self.bs = reader.block_size
        self.window_max, self.lookahead, self.budget = window_max, lookahead, budget
        self.load_tensors = load_tensors
        self.connections = connections
        self._header_ranges = header_ranges  # callable(bytes) -> list[(start, end)] or None
        self._lock = threading.Lock()
        self._seq: dict[str, tuple[int, int]] = {}  # path -> (next expected offset, window)
        self._maps: dict[str, TensorMap | None] = {}  # None: not safetensors / unparsable
        # path -> (file, blocks still wanted, in fetch order); the most recently read file last
        self._loading_dirs: set[str] = set()  # folders where a file is being loaded
        self._read: dict[str, dict[str, RemoteFile]] = {}  # folder -> files the program read
        self._chained: set[str] = set()  # files wanted because the one before was being loaded
        self._pending: OrderedDict[str, tuple[RemoteFile, list[int]]] = OrderedDict()
        # folder -> its safetensors files; ``resolve(paths)`` looks their data URLs up ahead
        self._shards: dict[str, list[str]] = {}
        for f in files:
            if f.path.endswith(".safetensors"):
                self._shards.setdefault(f.path.rpartition("/")[0], []).append(f.path)
        self._resolve = resolve
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netmount-prefetch")
        reader.on_run_done = self._on_done
        reader.exact = self._exact

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def on_read(self, f: RemoteFile, offset: int, size: int) -> None:
        """Called after every demand read; returns at once."""
        # the run bookkeeping happens now, on the reader's thread: ``_exact`` asks it about
        # the very next read, which must not see a state some decisions behind
        window, streak = self._sequential(f, offset, size)
        self._submit(self._decide, f, offset, size, window, streak)

    def _submit(self, fn, *args) -> None:
        try:
            self._worker.submit(fn, *args)
        except RuntimeError:  # shut down
            pass

    # -- decisions (background thread) ---------------------------------------------------
    def _decide(self, f: RemoteFile, offset: int, size: int, window: list[int], streak: int | None) -> None:
        try:
            tensor_blocks, limit = self._tensors(f, offset, streak)
            if self.reader.extents.near(f, offset, offset + size, NEAR):
                window = []  # a lone tensor's reader: its extent holds what comes next
            # a sequential reader (cat, cp, a streaming loader) gets a growing window even in
            # a safetensors file — but not past the tensor it is in until it has streamed
            # through several tensors or a loader is seen at work: reading one tensor page
            # by page must cost that tensor only
            wanted = [i for i in window if i * self.bs < limit]
            if tensor_blocks:  # in their order (what is needed first), then the window
                wanted = list(dict.fromkeys([*tensor_blocks, *wanted]))
            self._resolve_siblings(f)
            nxt = self._next_shard(f)
            with self._lock:
                if nxt is not None:  # queued first: the file being read keeps priority
                    self._pending[nxt[0].path] = nxt
                    self._pending.move_to_end(nxt[0].path)
                if wanted:
                    self._pending[f.path] = (f, wanted)
                    self._pending.move_to_end(f.path)
            if wanted:
                log.debug("read %s [%d,+%d): %s prefetch of %d blocks", f.path, offset, size,
                          "sequential" if tensor_blocks is None else "tensor", len(wanted))
            self._pump()
        except Exception:
            log.exception("prefetch decision for %s failed (reads are unaffected)", f.path)

    def _exact(self, f: RemoteFile, offset: int, size: int) -> bool:
        """The reader's question for a read that misses (on its FUSE thread, so only a few
        lookups): fetch just these pages rather than their blocks?  Yes around a lone
        tensor's extent; and a far jump to the start of a small tensor in a shard no
        loader is reading (the first fault of ``safe_open(...).get_tensor``) starts that
        whole tensor as an extent right here, so the reads that follow find it.
        Extents are outside the prefetch budget: at most ``load_tensors`` lone tensors
        (``MAX_EXTENT`` each) before a loader is assumed and blocks take over."""
        if not f.path.endswith(".safetensors"):
            return False
        # the map may not be parsed yet (a tensor is faulted in right after the header
        # read whose decision builds it): parse it here then, from the head in memory
        tmap = self._maps[f.path] if f.path in self._maps else self._tensor_map(f)
        if tmap is None or not tmap.ranges or tmap.loading or f.path.rpartition("/")[0] in self._loading_dirs:
            return False
        if offset < tmap.ranges[0][0]:
            return False  # the header: the head, or blocks
        if self.reader.extents.near(f, offset, offset + size, NEAR):
            return True
        seq = self._seq.get(f.path)
        if seq is not None and abs(offset - seq[0]) <= FAR:
            return False  # continues (or nearly) a run read in blocks, or the read-ahead past an extent
        last = min(offset + size, f.size) - 1
        i = tmap.find(last)
        if i is None:
            return False
        # a reader of a tensor starts at its start; the read-around of its first page may
        # end just before it (in the previous tensor's tail)
        if tmap.ranges[i][0] + NEAR < offset and i + 1 < len(tmap.ranges) and tmap.ranges[i + 1][0] <= last + NEAR:
            i += 1
        start, end = tmap.ranges[i]
        # a jump to the middle or the end of a tensor (a loader's first look, in
        # transformers' case) is left to blocks
        if end - start > MAX_EXTENT or offset > start + NEAR:
            return False
        with self._lock:
            tmap.triggered.add(i)  # no whole-tensor blocks for it (``_tensors``)
        self.reader.prefetch_extent(f, start, end)
        return True

    def _resolve_siblings(self, f: RemoteFile) -> None:
        """At the first shard read in a folder, look up the data URLs of the others: loaders
        open them next, header after header, each waiting a round trip to resolve
        otherwise.  Only metadata: no byte of those files is fetched."""
        if self._resolve is None or not f.path.endswith(".safetensors"):
            return
        with self._lock:
            shards = self._shards.pop(f.path.rpartition("/")[0], None)
        if shards:
            self._resolve([p for p in shards if p != f.path])

    def _next_shard(self, f: RemoteFile) -> tuple[RemoteFile, list[int]] | None:
        """Once a loader is at work in a folder, the next safetensors file (by name) that
        the program has also read — its header, typically — is wanted from its first
        tensor, up to ``lookahead`` bytes, once: loaders walk shards in order, and without
        this each shard's download only started when the loader got there.  A file the
        program never read is never fetched."""
        folder = f.path.rpartition("/")[0]
        with self._lock:
            read = self._read.setdefault(folder, {})
            read[f.path] = f
            if folder not in self._loading_dirs or not f.path.endswith(".safetensors"):
                return None
            later = sorted(p for p in read if p > f.path and p.endswith(".safetensors"))
            if not later or later[0] in self._chained:
                return None
            nxt = read[later[0]]
            self._chained.add(nxt.path)
        tmap = self._tensor_map(nxt)
        if tmap is None or not tmap.ranges:
            return None
        start = tmap.ranges[0][0]
        return nxt, list(block_range(start, min(self.lookahead, nxt.size - start), nxt.size, self.bs))

    def _pump(self) -> None:
        """Start wanted blocks while the in-flight budget allows, the most recently read file
        first; called after each decision and whenever a prefetched run completes, so a long
        wanted range keeps flowing at the budget without waiting for the next read."""
        try:
            with self._lock:
                queue = list(reversed(self._pending.items()))
            for path, (f, wanted) in queue:
                # parallel sub-ranges: spread what is wanted over the connections, in requests
                # of at least a block and at most the reader's request cap
                per_request = len(wanted) * self.bs // max(1, self.connections)
                started, left = self.reader.prefetch(f, wanted, self.budget, max_request_bytes=per_request)
                with self._lock:
                    if not left and self._pending.get(path, (None, None))[1] is wanted:
                        del self._pending[path]
                if left and not started:
                    break  # no room: a completion will call again
        except Exception:
            log.exception("prefetch pump failed (reads are unaffected)")

    def _on_done(self) -> None:
        self._submit(self._pump)

    def _sequential(self, f: RemoteFile, offset: int, size: int) -> tuple[list[int], int | None]:
        """The readahead window after this read, and where its sequential streak began
        (None: this read is a jump)."""
        end = offset + size
        with self._lock:
            expected, window, streak = self._seq.get(f.path, (-1, 0, offset))
            # the kernel may reorder neighbouring requests a little: allow one block of slack
            if expected >= 0 and abs(offset - expected) <= self.bs:
                window = min(max(window * 2, 2 * self.bs), self.window_max)
                continued = True
            else:
                window, streak, continued = 0, offset, False
            self._seq[f.path] = (max(end, expected) if continued else end, window, streak)
        if window == 0 or end >= f.size:
            return [], (streak if continued else None)
        return list(block_range(end, window, f.size, self.bs)), (streak if continued else None)

    def _tensors(self, f: RemoteFile, offset: int, streak: int | None) -> tuple[list[int], int]:
        """Blocks to fetch for a read at ``offset`` by tensor layout, and how far a
        sequential window may reach (the file's end, or the end of the tensor read).
        ``streak``: where the sequential run this read continues began (None: a jump)."""
        if not f.path.endswith(".safetensors"):
            return [], f.size
        tmap = self._tensor_map(f)
        if tmap is None:
            return [], f.size
        i = tmap.find(offset)
        folder = f.path.rpartition("/")[0]
        if i is None:
            return [], (f.size if tmap.loading or folder in self._loading_dirs else offset + self.bs)
        start, end = tmap.ranges[i]
        with self._lock:
            # Only jumps count as touching a tensor: a sequential run (the kernel's readahead
            # after a header read, say) crosses many small tensors without meaning them.
            if streak is None:
                tmap.touched.add(i)
            # A stream (cat, cp) gets no limit: a run from the file's first byte through
            # STREAM_BYTES of tensor data (past what the kernel reads ahead after a header),
            # or through >= 3 whole tensors and STREAM_BYTES.
            data = tmap.ranges[0][0]
            streaming = streak is not None and offset - max(streak, data) >= STREAM_BYTES and (
                streak == 0 or (i >= 3 and streak <= tmap.ranges[i - 3][0]))
            # A loader is at work once reads have landed in several tensors: more than a
            # lone tensor read can touch (it, and its two neighbours through the kernel's
            # read-around).  Loaders touch tensors in their own order (transformers 5.24
            # faults in the last pages of every tensor first, two threads hopping between
            # shards), so from then on every read pulls its tensor and what follows.
            # A loader that read several tensors of one shard will read the other shards
            # of that folder the same way: there, the first tensor read is enough.
            loading = tmap.loading = tmap.loading or len(tmap.touched) >= self.load_tensors or (
                folder in self._loading_dirs)
            if loading:
                self._loading_dirs.add(folder)
            # Around a tensor's first and last pages the kernel reads windows that spill
            # into the neighbours (mmap read-around, readahead): for a lone read, that is no
            # reason to fetch a whole neighbouring tensor.  Small tensors come on demand.
            inside = start + GUARD <= offset < end - GUARD
            # a lone reader that just crossed into this tensor may be spill-over: no window yet
            limit = end if start + GUARD <= offset else min(end, offset + GUARD)
            if streaming or loading:
                limit = f.size
            if not loading and (i in tmap.triggered or not inside):
                return [], limit
            tmap.triggered.add(i)
        if not loading:
            return list(block_range(start, end - start, f.size, self.bs)), limit
        j, stop = i + 1, end + self.lookahead
        while j < len(tmap.ranges) and tmap.ranges[j][0] < stop:
            end = tmap.ranges[j][1]
            j += 1
        # Loaders do not go in file order: a file sorts a layer's tensors by name (k, o, q,
        # v; down, gate, up), a model uses them in module order (q, k, v, o; gate, up,
        # down), so the tensors just before this one are wanted too, after those following.
        k, back = i, start - self.lookahead // 2
        while k > 0 and tmap.ranges[k - 1][1] > back:
            k -= 1
        ahead = list(block_range(start, end - start, f.size, self.bs))
        before = tmap.ranges[k][0]
        behind = [b for b in block_range(before, start - before, f.size, self.bs) if b < ahead[0]]
        return ahead + behind[::-1], f.size

    def _tensor_map(self, f: RemoteFile) -> TensorMap | None:
        if f.path in self._maps:
            return self._maps[f.path]
        tmap = None
        try:
            # exact=False: ``_exact`` builds maps with this, it must not ask itself again
            head = self.reader.read(f, 0, 8, account=False, exact=False)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if 0 < n <= MAX_HEADER and 8 + n <= f.size:
                ranges = self._header_ranges(self.reader.read(f, 8, n, account=False, exact=False), 8 + n, f.size)
                tmap = TensorMap(ranges) if ranges is not None else None
        except Exception as exc:
            log.warning("%s: no tensor-aware prefetch (%s)", f.path, exc)
        self._maps[f.path] = tmap
        return tmap
