"""Turn page-sized reads into few, large, parallel requests, ahead of the reader.

Two signals, both cheap to compute on every read:
- **Sequential** (files that are not safetensors): per file, a read that starts where the previous one ended grows a
  readahead window (doubling from 2 blocks up to ``window_max``); a jump resets it.
  That covers ``cat``, ``cp`` and loaders that stream a file.
- **Tensor-aware** (safetensors): the header gives every tensor's byte range.  When a
  read lands in a tensor, the whole tensor is fetched (loaders read tensors whole), in
  parallel sub-ranges.  If the tensor before it was also read, the reader is streaming
  through the file, so the following tensors up to ``lookahead`` bytes are fetched too.
  A lone tensor read (``safe_open`` + ``get_tensor``) thus costs that tensor only.

Bounds: prefetch never goes past the end of the file or into another file, never
refetches blocks known to be cached, and stops issuing while ``budget`` bytes of
downloads are already in flight (demand reads are never held back).  Decisions run on
one background thread so a FUSE read never waits for prefetch bookkeeping.
"""

from __future__ import annotations

import bisect
import json
import concurrent.futures
import logging
import threading

from .blocks import block_range
from .hub import RemoteFile
from .reader import BlockReader

log = logging.getLogger("netmount.prefetch")

MAX_HEADER = 100 << 20  # the Rust safetensors reader's own limit
GUARD = 512 << 10  # reads this close to a tensor's ends may be spill-over from a neighbour


def header_data_ranges(header: bytes, data_start: int, file_size: int) -> list[tuple[int, int]] | None:
    """Absolute [start, end) of every tensor in a safetensors header; None if it is not one."""
    try:
        entries = json.loads(header)
        ranges = [(data_start + int(v["data_offsets"][0]), data_start + int(v["data_offsets"][1]))
                  for k, v in entries.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    if any(not data_start <= a <= b <= file_size for a, b in ranges):
        return None
    return ranges


class TensorMap:
    """Sorted absolute [start, end) data ranges of one safetensors file's tensors."""

    def __init__(self, ranges: list[tuple[int, int]]):
        self.ranges = sorted(r for r in ranges if r[1] > r[0])
        self.starts = [r[0] for r in self.ranges]
        self.touched: set[int] = set()  # tensors any read landed in
        self.triggered: set[int] = set()  # tensors fetched whole

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
        budget: int = 256 << 20,
        header_ranges=header_data_ranges,
    ) -> None:
        self.reader = reader
        self.bs = reader.block_size
        self.window_max, self.lookahead, self.budget = window_max, lookahead, budget
        self._header_ranges = header_ranges  # callable(bytes) -> list[(start, end)] or None
        self._lock = threading.Lock()
        self._seq: dict[str, tuple[int, int]] = {}  # path -> (next expected offset, window)
        self._maps: dict[str, TensorMap | None] = {}  # None: not safetensors / unparsable
        self._pending_headers: set[str] = set()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netmount-prefetch")

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def on_read(self, f: RemoteFile, offset: int, size: int) -> None:
        """Called after every demand read; returns at once."""
        try:
            self._worker.submit(self._decide, f, offset, size)
        except RuntimeError:  # shut down
            pass

    # -- decisions (background thread) ---------------------------------------------------
    def _decide(self, f: RemoteFile, offset: int, size: int) -> None:
        try:
            tensor_blocks = self._tensors(f, offset)
            if tensor_blocks is None:  # not a (parsable) safetensors file
                wanted = self._sequential(f, offset, size)
            else:  # the tensor layout knows better than a window where reading stops
                wanted = tensor_blocks
            if wanted:
                started = self.reader.prefetch(f, sorted(wanted), self.budget)
                log.debug("read %s [%d,+%d): %s prefetch of %d blocks, %d started", f.path, offset,
                          size, "sequential" if tensor_blocks is None else "tensor", len(wanted), started)
        except Exception:
            log.exception("prefetch decision for %s failed (reads are unaffected)", f.path)

    def _sequential(self, f: RemoteFile, offset: int, size: int) -> set[int]:
        end = offset + size
        with self._lock:
            expected, window = self._seq.get(f.path, (-1, 0))
            # the kernel may reorder neighbouring requests a little: allow one block of slack
            if expected >= 0 and abs(offset - expected) <= self.bs:
                window = min(max(window * 2, 2 * self.bs), self.window_max)
            else:
                window = 0
            self._seq[f.path] = (max(end, expected), window)
        if window == 0 or end >= f.size:
            return set()
        return set(block_range(end, window, f.size, self.bs))

    def _tensors(self, f: RemoteFile, offset: int) -> set[int] | None:
        if not f.path.endswith(".safetensors"):
            return None
        tmap = self._tensor_map(f)
        if tmap is None:
            return None
        i = tmap.find(offset)
        if i is None:
            return set()
        start, end = tmap.ranges[i]
        with self._lock:
            # streaming: the tensor before was read in earnest (fetched whole, or small and read)
            prev = i - 1
            streaming = prev >= 0 and (prev in tmap.triggered or (
                prev in tmap.touched and tmap.ranges[prev][1] - tmap.ranges[prev][0] <= 2 * GUARD))
            tmap.touched.add(i)
            # Around a tensor's first and last pages the kernel reads windows that spill
            # into the neighbours (mmap read-around, readahead): a read there alone is no
            # reason to fetch a whole neighbouring tensor.  Small tensors come on demand.
            inside = start + GUARD <= offset < end - GUARD
            if i in tmap.triggered or not inside:
                return set()
            tmap.triggered.add(i)
        if streaming:
            j = i + 1
            while j < len(tmap.ranges) and tmap.ranges[j][0] < end + self.lookahead:
                end = tmap.ranges[j][1]
                j += 1
        return set(block_range(start, end - start, f.size, self.bs))

    def _tensor_map(self, f: RemoteFile) -> TensorMap | None:
        if f.path in self._maps:
            return self._maps[f.path]
        tmap = None
        try:
            head = self.reader.read(f, 0, 8, account=False)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if 0 < n <= MAX_HEADER and 8 + n <= f.size:
                ranges = self._header_ranges(self.reader.read(f, 8, n, account=False), 8 + n, f.size)
                tmap = TensorMap(ranges) if ranges is not None else None
        except Exception as exc:
            log.warning("%s: no tensor-aware prefetch (%s)", f.path, exc)
        self._maps[f.path] = tmap
        return tmap
