"""The prefetch pump: keeps the policy's state, asks it, and starts what it wants.

The FUSE face calls, per read of a program (never for netmount's own reads):

    exact = prefetcher.plan(handle, file, offset, size)   # before the read, on its thread
    data = reader.read(file, offset, size, exact=exact)
    prefetcher.follow(handle, file, offset, len(data))     # after it: returns at once

``plan`` answers only the question the read itself needs (fetch its pages exactly or in
blocks: ``policy.exact_read``).  ``follow`` records the read in the handle's sequential
state and queues it; one background thread makes the decisions (``policy.tensor_wants``,
``policy.ahead``) and pumps: it starts wanted blocks while the in-flight budget
allows, the most recently read file first, and pumps again whenever the reader reports a
finished run (the ``run_done`` event it was constructed with), so a long want flows at the
budget without waiting for the next read.

Bounds: never past the end of a file, never a block known stored or downloading, never
more than ``budget`` bytes in flight.  A file the program has read no tensor data from is
fetched only as a loader's speculative window (its header and ``speculative`` bytes after
it), and only in a folder a loader is reading.  Wanted blocks are spread over
``connections`` parallel sub-ranges of at least a block.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from netmount.core.safetensors import HeaderError, read_header
from netmount.read.parquet import ParquetError, read_layout
from netmount.read.policy import (
    FileState,
    PrefetchConfig,
    Stream,
    TensorMap,
    advance,
    ahead,
    exact_read,
    loader_order,
    merge_wants,
    speculative_blocks,
    tensor_wants,
)
from netmount.read.reader import BlockReader, ExactRead
from netmount.read.unbuilt import num_layers, unbuilt_shards
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.prefetch")


class Prefetcher:
    def __init__(self, reader: BlockReader, run_done: threading.Event, *, budget: int, connections: int,
                 config: PrefetchConfig | None = None, files=(), resolve=None,
                 on_loader: Callable[[str], None] | None = None) -> None:
        self.reader = reader
        self.cfg = config or PrefetchConfig(block_size=reader.block_size, head=reader.head_bytes)
        if self.cfg.block_size != reader.block_size:
            raise ValueError("PrefetchConfig.block_size must be the reader's block size")
        self.budget, self.connections = budget, connections
        self._wake = run_done  # set by the reader when a run finishes, and by ``follow``
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._streams: dict[int, Stream] = {}  # open handle -> its sequential state
        self._maps: dict[str, TensorMap | None] = {}  # None: not safetensors / unparsable
        self._states: dict[str, FileState] = {}
        self._loading_dirs: set[str] = set()
        self._read: dict[str, dict[str, RemoteFile]] = {}  # folder -> files the program read
        self._ahead: set[str] = set()  # files wanted as a loader's speculative window
        self._files: dict[str, dict[str, RemoteFile]] = {}  # folder -> its safetensors files
        self._indexes: dict[str, RemoteFile] = {}  # folder -> its *.safetensors.index.json
        self._orders: dict[str, list[str]] = {}  # folder -> its shards in a loader's order
        self._configs: dict[str, RemoteFile] = {}  # folder -> its config.json
        self._weight_maps: dict[str, dict | None] = {}  # folder -> its index's weight_map
        self._unbuilt: dict[str, frozenset[str]] = {}  # folder -> shards opened for their header only
        self._anchors: dict[str, list[tuple[int, int]]] = {}  # path -> lone tensors fetched exactly
        self._on_loader = on_loader  # told the folder when a loader is first seen there
        self._reads: collections.deque = collections.deque()  # reads not yet decided on
        self._followed = 0  # reads ever followed: ``drain`` sees one that came while it waited
        self._busy = False
        # path -> (file, blocks still wanted, in fetch order); the most recently read file last
        self._pending: OrderedDict[str, tuple[RemoteFile, list[int]]] = OrderedDict()
        self._shards: dict[str, list[str]] = {}  # folder -> its safetensors files, until resolved
        for f in files:
            folder = _folder(f)
            if f.path.endswith(".safetensors"):
                self._shards.setdefault(folder, []).append(f.path)
                self._files.setdefault(folder, {})[f.path] = f
            elif f.path.endswith(".safetensors.index.json"):
                self._indexes.setdefault(folder, f)
            elif f.path.rpartition("/")[2] == "config.json":
                self._configs[folder] = f
        self._resolve = resolve  # resolve(paths): look their data URLs up ahead
        self._headers: concurrent.futures.ThreadPoolExecutor | None = None  # heads read ahead
        self._heads_reading: set[concurrent.futures.Future] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="netmount-prefetch", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the pump and the heads read ahead; True once none of their threads runs any
        more (only then may the reader be closed: they read through it), within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:  # (``opened_amid_others`` starts no heads once it is set)
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            pool, heads = self._headers, list(self._heads_reading)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        late = concurrent.futures.wait(heads, max(0.0, deadline - time.monotonic())).not_done
        return not self._thread.is_alive() and not late

    # -- the FUSE face's calls -------------------------------------------------------------------
    def plan(self, handle: int, f: RemoteFile, offset: int, size: int) -> ExactRead | None:
        """How this read, if it misses, is to be fetched (None: in blocks)."""
        if not mapped(f.path):
            return None
        tmap = self.tensor_map(f, offset + size)
        if tmap is None:
            return None
        near = self._near(f, offset, offset + size)
        folder = _folder(f)
        with self._lock:
            exact, state = exact_read(tmap, self._states.get(f.path, FileState()), self._streams.get(handle),
                                      offset, size, f.size, near_anchor=near,
                                      folder_loading=folder in self._loading_dirs, cfg=self.cfg)
            self._states[f.path] = state
            if exact is not None and exact.extent is not None:  # a lone tensor: reads around it are exact too
                anchors = self._anchors.setdefault(f.path, [])
                anchors.append(exact.extent)
                del anchors[:-64]
        return exact

    def follow(self, handle: int, f: RemoteFile, offset: int, size: int) -> None:
        """A program read [offset, offset + size) of ``f`` through ``handle``: returns at once."""
        if size <= 0:
            return
        with self._lock:
            tmap, last = self._maps.get(f.path), self._streams.get(handle)  # (maps: built by ``plan``)
            slack = tmap.slack(last.expected, offset, self.cfg) if tmap and tmap.columnar and last else None
            stream, window, streak = advance(last, offset, size, f.size, self.cfg, slack)
            self._streams[handle] = stream
            self._reads.append((f, offset, size, window, streak))
            self._followed += 1
        self._wake.set()

    def opened_amid_others(self, path: str) -> None:
        """Shard ``path`` opened while other shards of its folder are open: a loader opening
        them all, each for its header first (transformers, by name, one after another, a round
        trip each: 163 of them for DeepSeek-V3).  Read the next ``ahead_headers`` shards' first
        blocks by name now, in parallel: the header, and what the large read-around of its
        first fault asks (readahead.py) — all a loader's shard may cost before its tensors are
        read (issue 11); a shard opened for its header only (``header_only``) costs its head."""
        folder = path.rpartition("/")[0]
        with self._lock:
            files = dict(self._files.get(folder, {}))
        if path not in files or self._closed:
            return
        order = sorted(files)  # the order transformers opens them in (sorted shard names)
        at = order.index(path)
        with self._lock:
            todo = [files[p] for p in order[at + 1 : at + 1 + self.cfg.ahead_headers] if p not in self._maps]
            if not todo or self._closed:
                return
            if self._headers is None:
                self._headers = concurrent.futures.ThreadPoolExecutor(self.cfg.ahead_headers,
                                                                      thread_name_prefix="netmount-heads")
            self._heads_reading = {h for h in self._heads_reading if not h.done()}
            self._heads_reading.update(self._headers.submit(self._head_ahead, g) for g in todo)

    def _head_ahead(self, f: RemoteFile) -> None:
        try:
            if not self.header_only(f.path):
                self.reader.read(f, 0, min(f.size, self.reader.block_size), account=False)
        except Exception as exc:  # the loader's own read will meet it
            log.debug("%s: first block ahead failed: %s", f.path, exc)
        self.tensor_map(f)

    def forget(self, handle: int) -> None:
        """The handle was closed."""
        with self._lock:
            self._streams.pop(handle, None)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every read so far is decided on, everything wanted has been fetched and
        stored, and nothing is left to start (for tests and ``netmount prefetch``).  A read
        under way when the wait began is waited for by the reader's drain, and the FUSE face
        follows it within that read: if one was followed meanwhile, this looks again."""
        deadline = time.monotonic() + timeout
        while True:
            with self._idle:
                if not self._idle.wait_for(lambda: not self._reads and not self._busy,
                                           max(0.0, deadline - time.monotonic())):
                    return False
                # seen before the reader drains: a pump that empties ``_pending`` has started
                # (and registered) its runs first, so the reader's drain below waits for them
                quiet = not self._pending
                followed = self._followed
            with self._lock:
                heads = list(self._heads_reading)
            if concurrent.futures.wait(heads, max(0.0, deadline - time.monotonic())).not_done:
                return False
            if not self.reader.drain(max(0.0, deadline - time.monotonic())):
                return False
            with self._lock:
                if quiet and self._followed == followed:
                    return True
            if time.monotonic() >= deadline:
                return False
            self._wake.set()

    # -- the background thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            with self._lock:
                self._busy = True
            try:
                while True:
                    with self._lock:
                        item = self._reads.popleft() if self._reads else None
                    if item is None:
                        break
                    self._decide(*item)
                self._pump()
            except Exception:
                log.exception("prefetch failed (reads are unaffected)")
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _decide(self, f: RemoteFile, offset: int, size: int, window: list[int], streak: int | None) -> None:
        wanted = window
        tmap = self.tensor_map(f) if mapped(f.path) else None
        folder = _folder(f)
        first_loader = False
        if tmap is not None:
            near = self._near(f, offset, offset + size)
            with self._lock:
                wants = tensor_wants(tmap, self._states.get(f.path, FileState()), offset, streak, f.size,
                                     folder_loading=folder in self._loading_dirs, cfg=self.cfg, size=size)
                self._states[f.path] = wants.state
                if wants.state.loading and folder not in self._loading_dirs:
                    self._loading_dirs.add(folder)
                    first_loader = True
            wanted = merge_wants(window, wants, near_anchor=near, block_size=self.cfg.block_size)
        if first_loader and self._on_loader is not None:
            try:
                self._on_loader(folder)
            except Exception:
                log.exception("on_loader failed")
        self._resolve_siblings(f)
        nxt = self._ahead_of(f)
        with self._lock:
            for path, want in reversed(nxt):  # queued first, nearest last: the file read keeps priority
                self._pending[path] = want
                self._pending.move_to_end(path)
            if wanted:
                self._pending[f.path] = (f, wanted)
                self._pending.move_to_end(f.path)

    def _near(self, f: RemoteFile, lo: int, hi: int) -> bool:
        """Whether [lo, hi) lies within ``near`` bytes of a lone tensor of ``f`` fetched
        exactly (the kernel reads around its ends).  Only those count, so small exact reads
        never pull more exact reads after them."""
        margin = self.cfg.near
        with self._lock:
            spans = list(self._anchors.get(f.path, ()))
        return any(lo < e + margin and hi > s - margin for s, e in spans)

    def _resolve_siblings(self, f: RemoteFile) -> None:
        """At the first shard read in a folder, look up the data URLs of the others: loaders
        open them next, each waiting a round trip to resolve otherwise.  No byte is fetched."""
        if self._resolve is None or not f.path.endswith(".safetensors"):
            return
        with self._lock:
            shards = self._shards.pop(_folder(f), None)
        if shards:
            self._resolve([p for p in shards if p != f.path])

    def _ahead_of(self, f: RemoteFile) -> list[tuple[str, tuple[RemoteFile, list[int]]]]:
        """In a folder a loader is reading: the shards after the furthest one the program
        has read, in the loader's order, each wanted once as a speculative window (its header
        and ``speculative`` bytes; more only when the program reads its tensor data)."""
        folder = _folder(f)
        with self._lock:
            read = self._read.setdefault(folder, {})
            read[f.path] = f
            if folder not in self._loading_dirs or not f.path.endswith(".safetensors"):
                return []
            files = dict(self._files.get(folder, {}))
            files.update({p: g for p, g in read.items() if p.endswith(".safetensors")})
            reached = set(read)
        order = self._order(folder, files)
        with self._lock:
            paths = ahead(order, reached, frozenset(self._ahead), self.cfg)
            self._ahead.update(paths)
        out = []
        for path in paths:
            g = files[path]
            tmap = self.tensor_map(g)  # its header: a loader reads it next
            with self._lock:
                if self._states.get(path, FileState()).data_read:
                    continue  # its own reads decide
            if tmap is not None and tmap.ranges:
                out.append((path, (g, speculative_blocks(tmap, g.size, self.cfg))))
        return out

    def _order(self, folder: str, files: dict[str, RemoteFile]) -> list[str]:
        """The folder's shards in a loader's order, from its index when it has one; shards
        that hold only layers the model does not build (``unbuilt.py``) are left out."""
        with self._lock:
            if folder in self._orders:
                return self._orders[folder]
        skip = self._unbuilt_in(folder)
        order = loader_order([p for p in files if p.rpartition("/")[2] not in skip], self._weight_map(folder))
        with self._lock:
            return self._orders.setdefault(folder, order)

    def data_read(self, path: str) -> bool:
        """Has a program read tensor data of ``path`` (not only its header)?"""
        with self._lock:
            state = self._states.get(path)
        return state is not None and state.data_read

    def header_only(self, path: str) -> bool:
        """Will a loader open shard ``path`` for its header only (DeepSeek-V3's MTP shard)?
        For the readahead switch: such a shard opens small even amid a loader's opens."""
        folder, _, name = path.rpartition("/")
        return path.endswith(".safetensors") and name in self._unbuilt_in(folder)

    def _unbuilt_in(self, folder: str) -> frozenset[str]:
        with self._lock:
            if folder in self._unbuilt:
                return self._unbuilt[folder]
            config = self._configs.get(folder)
        layers = num_layers(self._small_file(config))
        found = unbuilt_shards(self._weight_map(folder), layers) if layers else frozenset()
        with self._lock:
            return self._unbuilt.setdefault(folder, found)

    def _weight_map(self, folder: str) -> dict | None:
        """The folder's index's weight_map, read once (through the reader: a loader has read
        it already, so it is in memory)."""
        with self._lock:
            if folder in self._weight_maps:
                return self._weight_maps[folder]
            index = self._indexes.get(folder)
        weight_map = None
        try:
            raw = self._small_file(index)
            weight_map = json.loads(raw).get("weight_map") if raw else None
        except Exception as exc:
            log.warning("%s: no loader order from the index (%s)", index.path, exc)
        with self._lock:
            return self._weight_maps.setdefault(folder, weight_map if isinstance(weight_map, dict) else None)

    def _small_file(self, f: RemoteFile | None) -> bytes | None:
        """A JSON file's bytes (not counted as served), or None when absent or too big."""
        if f is None or f.size > 64 << 20:
            return None
        try:
            return self.reader.read(f, 0, f.size, account=False)
        except Exception as exc:
            log.warning("%s: not read (%s)", f.path, exc)
            return None

    def _pump(self) -> None:
        """Start wanted blocks while the budget allows, the most recently read file first."""
        with self._lock:
            queue = list(reversed(self._pending.items()))
        for path, (f, wanted) in queue:
            per_request = len(wanted) * self.cfg.block_size // max(1, self.connections)
            started, left = self.reader.prefetch(f, wanted, self.budget, max_request_bytes=per_request)
            with self._lock:
                if not left and self._pending.get(path, (None, None))[1] is wanted:
                    del self._pending[path]
            if left and not started:
                break  # no room: a finished run wakes us again

    # -- headers ---------------------------------------------------------------------------------
    def tensor_map(self, f: RemoteFile, first: int | None = None) -> TensorMap | None:
        """The tensor layout of a safetensors file (or the column chunks of a parquet one),
        read once (through the reader, not counted as served); None if it is not one or does
        not parse.  ``first``: the end of the program's read that asks (its first read of the
        file is usually the header's, as large as the mount's readahead): the header is read
        from that much of the head (a longer header, then the rest), so no more is fetched
        for it than that read needs anyway; None (no read waits): the whole head."""
        with self._lock:
            if f.path in self._maps:
                return self._maps[f.path]
        if f.path.endswith(".parquet"):
            return self._columnar_map(f)
        tmap = None
        try:
            # the first read is within the head tier (else just the length): no block fetched for it
            head = self.reader.head_bytes
            tensors = read_header(lambda a, b: self.reader.read(f, a, b - a, account=False), f.size,
                                  first=min(max(first or head, 8), head) if head else 8)
            tmap = TensorMap([(t.start, t.end) for t in tensors])
        except HeaderError as exc:
            log.warning("%s: not a valid safetensors header, no tensor-aware prefetch: %s", f.path, exc)
        except Exception as exc:
            log.warning("%s: no tensor-aware prefetch (%s)", f.path, exc)
        with self._lock:
            return self._maps.setdefault(f.path, tmap)

    def _columnar_map(self, f: RemoteFile) -> TensorMap | None:
        """A parquet file's column chunks and its footer, as a columnar TensorMap.  The
        footer is fetched exactly (pyarrow's own first read, the last 64 KiB, then hits it)."""
        tmap = None
        try:
            layout = read_layout(lambda a, b: self.reader.read(f, a, b - a, account=False, exact=ExactRead()),
                                 f.size)
            ranges = [(c.start, c.end) for c in layout.chunks] + [(layout.footer_start, f.size)]
            if ranges[0][0] <= 4:  # the leading magic: a reader of the first chunk reads page 0
                ranges[0] = (0, ranges[0][1])
            tmap = TensorMap(ranges, columnar=True)
        except ParquetError as exc:
            log.warning("%s: not a parquet file we can map, no column-aware prefetch: %s", f.path, exc)
        except Exception as exc:
            log.warning("%s: no column-aware prefetch (%s)", f.path, exc)
        with self._lock:
            return self._maps.setdefault(f.path, tmap)


def mapped(path: str) -> bool:
    """Files whose layout the policy knows: safetensors (tensors), parquet (column chunks)."""
    return path.endswith((".safetensors", ".parquet"))


def _folder(f: RemoteFile) -> str:
    return f.path.rpartition("/")[0]
