"""The prefetch pump: keeps the policy's state, asks it, and starts what it wants.

The FUSE face calls, per read of a program (never for netmount's own reads):

    exact = prefetcher.plan(handle, file, offset, size)   # before the read, on its thread
    data = reader.read(file, offset, size, exact=exact)
    prefetcher.follow(handle, file, offset, len(data))     # after it: returns at once

``plan`` answers only the question the read itself needs (fetch its pages exactly or in
blocks: ``policy.exact_read``).  ``follow`` records the read in the handle's sequential
state and queues it; one background thread makes the decisions (``policy.tensor_wants``,
``policy.next_shard``) and pumps: it starts wanted blocks while the in-flight budget
allows, the most recently read file first, and pumps again whenever the reader reports a
finished run (the ``run_done`` event it was constructed with), so a long want flows at the
budget without waiting for the next read.

Bounds: never past the end of a file, never a file the program has not read, never a block
known stored or downloading, never more than ``budget`` bytes in flight.  Wanted blocks are
spread over ``connections`` parallel sub-ranges of at least a block.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable

from netmount.core.blocks import block_range
from netmount.core.safetensors import HeaderError, read_header
from netmount.read.policy import (
    FileState,
    PrefetchConfig,
    Stream,
    TensorMap,
    advance,
    exact_read,
    merge_wants,
    next_shard,
    tensor_wants,
)
from netmount.read.reader import BlockReader, ExactRead
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.prefetch")


class Prefetcher:
    def __init__(self, reader: BlockReader, run_done: threading.Event, *, budget: int, connections: int,
                 config: PrefetchConfig | None = None, files=(), resolve=None,
                 on_loader: Callable[[str], None] | None = None) -> None:
        self.reader = reader
        self._on_loader = on_loader  # on_loader(folder): once per folder, when it is seen loading
        self.cfg = config or PrefetchConfig(block_size=reader.block_size)
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
        self._chained: set[str] = set()  # files wanted because the one before was being loaded
        self._reads: collections.deque = collections.deque()  # reads not yet decided on
        self._busy = False
        # path -> (file, blocks still wanted, in fetch order); the most recently read file last
        self._pending: OrderedDict[str, tuple[RemoteFile, list[int]]] = OrderedDict()
        self._shards: dict[str, list[str]] = {}  # folder -> its safetensors files, until resolved
        for f in files:
            if f.path.endswith(".safetensors"):
                self._shards.setdefault(f.path.rpartition("/")[0], []).append(f.path)
        self._resolve = resolve  # resolve(paths): look their data URLs up ahead
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="netmount-prefetch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)

    # -- the FUSE face's calls -------------------------------------------------------------------
    def plan(self, handle: int, f: RemoteFile, offset: int, size: int) -> ExactRead | None:
        """How this read, if it misses, is to be fetched (None: in blocks)."""
        if not f.path.endswith(".safetensors"):
            return None
        tmap = self.tensor_map(f)
        if tmap is None:
            return None
        near = self.reader.extents.near(f, offset, offset + size, self.cfg.near)
        folder = _folder(f)
        with self._lock:
            exact, state = exact_read(tmap, self._states.get(f.path, FileState()), self._streams.get(handle),
                                      offset, size, f.size, near_anchor=near,
                                      folder_loading=folder in self._loading_dirs, cfg=self.cfg)
            self._states[f.path] = state
        return exact

    def follow(self, handle: int, f: RemoteFile, offset: int, size: int) -> None:
        """A program read [offset, offset + size) of ``f`` through ``handle``: returns at once."""
        if size <= 0:
            return
        with self._lock:
            stream, window, streak = advance(self._streams.get(handle), offset, size, f.size, self.cfg)
            self._streams[handle] = stream
            self._reads.append((f, offset, size, window, streak))
        self._wake.set()

    def forget(self, handle: int) -> None:
        """The handle was closed."""
        with self._lock:
            self._streams.pop(handle, None)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every read so far is decided on, everything wanted has been fetched and
        stored, and nothing is left to start (for tests and ``netmount prefetch``)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._idle:
                if not self._idle.wait_for(lambda: not self._reads and not self._busy,
                                           max(0.0, deadline - time.monotonic())):
                    return False
            if not self.reader.drain(max(0.0, deadline - time.monotonic())):
                return False
            with self._lock:
                if not self._reads and not self._busy and not self._pending:
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
        tmap = self.tensor_map(f) if f.path.endswith(".safetensors") else None
        folder = _folder(f)
        if tmap is not None:
            near = self.reader.extents.near(f, offset, offset + size, self.cfg.near)
            with self._lock:
                wants = tensor_wants(tmap, self._states.get(f.path, FileState()), offset, streak, f.size,
                                     folder_loading=folder in self._loading_dirs, cfg=self.cfg)
                self._states[f.path] = wants.state
                newly = wants.state.loading and folder not in self._loading_dirs
                if wants.state.loading:
                    self._loading_dirs.add(folder)
            if newly and self._on_loader is not None:
                self._on_loader(folder)
            wanted = merge_wants(window, wants, near_anchor=near, block_size=self.cfg.block_size)
        self._resolve_siblings(f)
        nxt = self._next_shard(f)
        with self._lock:
            if nxt is not None:  # queued first: the file being read keeps priority
                self._pending[nxt[0].path] = nxt
                self._pending.move_to_end(nxt[0].path)
            if wanted:
                self._pending[f.path] = (f, wanted)
                self._pending.move_to_end(f.path)

    def _resolve_siblings(self, f: RemoteFile) -> None:
        """At the first shard read in a folder, look up the data URLs of the others: loaders
        open them next, each waiting a round trip to resolve otherwise.  No byte is fetched."""
        if self._resolve is None or not f.path.endswith(".safetensors"):
            return
        with self._lock:
            shards = self._shards.pop(_folder(f), None)
        if shards:
            self._resolve([p for p in shards if p != f.path])

    def _next_shard(self, f: RemoteFile) -> tuple[RemoteFile, list[int]] | None:
        folder = _folder(f)
        with self._lock:
            read = self._read.setdefault(folder, {})
            read[f.path] = f
            if folder not in self._loading_dirs or not f.path.endswith(".safetensors"):
                return None
            path = next_shard(list(read), f.path, frozenset(self._chained))
            if path is None:
                return None
            self._chained.add(path)
            nxt = read[path]
        tmap = self.tensor_map(nxt)
        if tmap is None or not tmap.ranges:
            return None
        start = tmap.ranges[0][0]
        return nxt, list(block_range(start, min(self.cfg.lookahead, nxt.size - start), nxt.size, self.cfg.block_size))

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
    def tensor_map(self, f: RemoteFile) -> TensorMap | None:
        """The tensor layout of a safetensors file, read once (through the reader, not
        counted as served); None if it is not one or does not parse."""
        with self._lock:
            if f.path in self._maps:
                return self._maps[f.path]
        tmap = None
        try:
            # the first read is what the head tier holds (else just the length): no block fetched for it
            tensors = read_header(lambda a, b: self.reader.read(f, a, b - a, account=False), f.size,
                                  first=self.reader.head.head_bytes or 8)
            tmap = TensorMap([(t.start, t.end) for t in tensors])
        except HeaderError as exc:
            log.warning("%s: not a valid safetensors header, no tensor-aware prefetch: %s", f.path, exc)
        except Exception as exc:
            log.warning("%s: no tensor-aware prefetch (%s)", f.path, exc)
        with self._lock:
            return self._maps.setdefault(f.path, tmap)


def _folder(f: RemoteFile) -> str:
    return f.path.rpartition("/")[0]
