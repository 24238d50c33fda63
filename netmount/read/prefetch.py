"""The prefetcher: the FUSE face's one partner for reads; keeps the policy's state, asks it,
and hands what it wants to the pump.

The FUSE face calls, per read of a program (never for netmount's own reads):

    exact = prefetcher.plan(handle, file, offset, size)   # before the read, on its thread
    data = reader.read(file, offset, size, exact=exact)
    prefetcher.follow(handle, file, offset, len(data))     # after it: returns at once

``plan`` advances the file's sequential runs and asks the policy (``policy.judge``) under
one lock, in the order requests arrive — so a read the kernel issued while an earlier one
is still being fetched already sees it (the policy's bound on a run of reads inside one
tensor depends on it).  Runs are kept per file, not per handle: the kernel's readahead
follows the page cache, which all handles share (a read on a new handle that starts where
another's run ended is that run's readahead, not a jump).  ``follow`` hands the verdict to
the pump's thread (``pump.py``), which turns it into blocks (``policy.wants``, plus a
loader's next shards: ``ahead``).  A tensor the policy fetches exactly at a read is started
in ``plan``: its whole blocks (within the budget; the pump starts what did not fit) and its
end pieces exactly (``reader.fetch_exact``: like the read's own bytes, not held back by the
budget; at most two per tensor a program starts reading).

Files are named as the mount shows them (``listing.py``: a plain mount's repo paths, or
``--hf-cache``'s ``models--org--name/snapshots/{sha}/{path}``): every piece of state here —
runs, policy state, folders a loader reads — is per (repo, commit, path), and kept for the
``MAX_FILES`` files and ``MAX_FOLDERS`` folders read most recently.
Layouts come from the shared ``TensorMaps`` (``metadata.py``), read through the reader
(not counted as served); a folder's order and header-only shards from ``Folders``.  A file
the program has read no tensor data from is fetched only as a loader's speculative window
(its header and ``speculative`` bytes after it), and only in a folder a loader is reading.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from netmount.core.blocks import block_span
from netmount.core.recent import Recent
from netmount.read.handoff import Handoff, to_decide
from netmount.read.listing import FixedListing, Listing
from netmount.read.loader import ahead, speculative_blocks
from netmount.read.metadata import Folders, TensorMaps, mapped
from netmount.read.policy import FileState, PrefetchConfig, TensorMap, Verdict, advance, judge, wants
from netmount.read.pump import Pump
from netmount.read.reader import ExactRead
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.prefetch")
EXACT = ExactRead()
SMALL_FILE = 64 << 20  # the largest index or config.json read whole
MAX_FILES, MAX_FOLDERS = 4096, 1024  # per-file and per-folder state kept (the most recently read)


class Prefetcher:
    def __init__(self, reader, run_done: threading.Event, *, budget: int, connections: int,
                 config: PrefetchConfig | None = None, files=(), listing: Listing | None = None,
                 resolve: Callable[[list[RemoteFile]], None] | None = None,
                 on_loader: Callable[[str], None] | None = None, maps: TensorMaps | None = None) -> None:
        """``listing`` names the files (``files``: a plain mount's, when not given); ``resolve(files)``
        looks their data URLs up ahead; ``on_loader(folder)``: a loader was first seen there."""
        self.reader = reader
        self.cfg = config or PrefetchConfig(block_size=reader.block_size)
        if self.cfg.block_size != reader.block_size:
            raise ValueError("PrefetchConfig.block_size must be the reader's block size")
        self.maps = maps if maps is not None else TensorMaps()
        self.listing = listing if listing is not None else FixedListing(files)
        self.folders = Folders(self.listing.folder, self._small_file)
        self._on_loader = on_loader
        self._resolve = resolve
        self._lock = threading.Lock()
        # by name: file -> its sequential runs (``Stream``; all handles: one page cache), its policy state
        self._streams: Recent = Recent(MAX_FILES)
        self._states: Recent = Recent(MAX_FILES)
        self._planned: dict[int, dict[int, tuple]] = {}  # handle -> read offset -> (map, verdict, window)
        self._loading_dirs: Recent = Recent(MAX_FOLDERS)  # folders a loader reads (as a set)
        self._read: Recent = Recent(MAX_FOLDERS)  # folder -> {name: file} the program read
        self._ahead: Recent = Recent(MAX_FILES)  # files wanted as a loader's speculative window (a set)
        self._resolved: Recent = Recent(MAX_FOLDERS)  # folders whose shards' URLs were looked up (a set)
        self.handoff = Handoff(MAX_FILES)  # which reads are worth the pump's thread (handoff.py)
        self._headers: concurrent.futures.ThreadPoolExecutor | None = None  # heads read ahead
        self._heads_reading: set[concurrent.futures.Future] = set()
        self._closed = False
        self.pump = Pump(reader, run_done, self._decide_all, budget=budget, connections=connections)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the pump and the heads read ahead; True once none of their threads runs any
        more (only then may the reader be closed: they read through it), within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:  # (``opened_amid_others`` starts no heads once it is set)
            self._closed = True
        pumped = self.pump.close(timeout)
        with self._lock:
            pool, heads = self._headers, list(self._heads_reading)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        late = concurrent.futures.wait(heads, max(0.0, deadline - time.monotonic())).not_done
        return pumped and not late

    # -- the FUSE face's calls -------------------------------------------------------------------
    def plan(self, handle: int, f: RemoteFile, offset: int, size: int) -> ExactRead | None:
        """How this read, if it misses, is to be fetched (None: in blocks)."""
        name = self.listing.name(f)
        folder = name.rpartition("/")[0]
        tmap = self.tensor_map(f, offset + size, header_read=offset == 0) if mapped(f.path) else None
        with self._lock:
            last = self._streams.get(name)
            slack = tmap.slack(last.expected, offset, self.cfg.block_size) if tmap and tmap.columnar and last else None
            run, window, streak = advance(last, offset, size, f.size, self.cfg, slack)
            verdict = Verdict(window=(0, f.size))
            if tmap is not None:
                verdict = judge(tmap, self._states.get(name, FileState()), run, streak, offset, size, f.size,
                                folder_loading=folder in self._loading_dirs, cfg=self.cfg)
                self._states[name] = verdict.state
                run = replace(run, target=verdict.target)
            self._streams[name] = run
            self._planned.setdefault(handle, {})[offset] = (tmap, verdict, window)
            first_loader = verdict.state.loading and folder not in self._loading_dirs
            if first_loader:
                self._loading_dirs.add(folder)
        for a, b in verdict.pieces:
            self.reader.fetch_exact(f, a, b)
        if verdict.first:  # (whole blocks of the tensor read: the read joins them; the pump gets the rest)
            per_request = len(verdict.first) * self.cfg.block_size // max(1, self.pump.connections)
            self.reader.prefetch(f, list(verdict.first), self.pump.budget, max_request_bytes=per_request)
        if first_loader and self._on_loader is not None:
            try:
                self._on_loader(folder)
            except Exception:
                log.exception("on_loader failed")
        return verdict.exact

    def follow(self, handle: int, f: RemoteFile, offset: int, size: int) -> None:
        """A program read [offset, offset + size) of ``f`` through ``handle``: returns at once
        (a read not planned is planned now)."""
        with self._lock:
            item = self._planned.get(handle, {}).pop(offset, None)
        if item is None and size > 0:
            self.plan(handle, f, offset, size)
            with self._lock:
                item = self._planned.get(handle, {}).pop(offset, None)
        if item is not None and size > 0 and self.handoff.news(f, item[1], item[2]):
            self.pump.submit((f, *item))

    def forget(self, handle: int) -> None:
        """The handle was closed."""
        with self._lock:
            self._planned.pop(handle, None)

    def data_read(self, name: str) -> bool:
        """Has a program read tensor data of file ``name`` (not only its header)?"""
        with self._lock:
            state = self._states.get(name)
        return state is not None and state.data_read

    def header_only(self, name: str) -> bool:
        """Will a loader open shard ``name`` for its header only (DeepSeek-V3's MTP shard)?
        For the readahead switch: such a shard opens small even amid a loader's opens."""
        return self.folders.header_only(name)

    def opened_amid_others(self, name: str) -> None:
        """Shard ``name`` opened while other shards of its folder are open: a loader opening
        them all, each for its header first (transformers, by name, one after another, a round
        trip each: 163 of them for DeepSeek-V3).  Read the next ``ahead_headers`` shards' first
        blocks by name now, in parallel: the header, and what the large read-around of its
        first fault asks (readahead.py) — all a loader's shard may cost before its tensors are
        read (issue 11); a shard opened for its header only (``header_only``) costs its head."""
        order = self.folders.shards(name.rpartition("/")[0])
        if name not in order or self._closed:
            return
        at = order.index(name)
        todo = [self.listing.file(p) for p in order[at + 1 : at + 1 + self.cfg.ahead_headers]]
        todo = [g for g in todo if g is not None and self.maps.get(g.content_id) is None]
        with self._lock:
            if not todo or self._closed:
                return
            if self._headers is None:
                self._headers = concurrent.futures.ThreadPoolExecutor(self.cfg.ahead_headers,
                                                                      thread_name_prefix="netmount-heads")
            self._heads_reading = {h for h in self._heads_reading if not h.done()}
            self._heads_reading.update(self._headers.submit(self._head_ahead, g) for g in todo)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every read so far is decided on, everything wanted has been fetched and
        stored, and nothing is left to start (for tests and ``netmount prefetch``)."""
        def heads(left: float) -> bool:
            with self._lock:
                reading = list(self._heads_reading)
            return not concurrent.futures.wait(reading, left).not_done

        return self.pump.drain(time.monotonic() + timeout, heads)

    # -- layouts ---------------------------------------------------------------------------------
    def tensor_map(self, f: RemoteFile, first: int | None = None, header_read: bool = False) -> TensorMap | None:
        """The tensor layout of a safetensors file (or the column chunks of a parquet one),
        read once (through the reader, not counted as served); None if it is not one or does
        not parse.  ``first``: the end of the program's read that asks; ``header_read``: that
        read starts at the file's start (a header read): the header is read from what it reads, so
        nothing more is fetched for it than that read needs anyway (the head, or its blocks:
        ``policy._early``); else (or None: no read waits) from the head."""
        if not mapped(f.path):
            return None
        known = self.maps.get(f.content_id)
        if known is not None:
            return known.tmap
        head = self.cfg.head
        # the program's first read of the file (usually the header's, as large as the mount's
        # readahead): the header from what it reads anyway — the head, or its first block(s)
        n = min(max(first or head, 8), head) if head else 8
        if header_read and first is not None and first > n:  # (a header read past the head: in blocks)
            n = first
        how = EXACT if f.path.endswith(".parquet") else None  # (the footer exactly: pyarrow reads it next)

        def read(a: int, b: int) -> bytes:
            return self.reader.read(f, a, b - a, account=False, exact=how)

        layout = self.maps.layout(f.content_id, f.path, f.size, read, n)
        return layout.tmap if layout is not None else None

    def _small_file(self, name: str) -> bytes | None:
        """A JSON file's bytes (not counted as served), or None when absent, too big or unread."""
        f = self.listing.file(name)
        if f is None or f.size > SMALL_FILE:
            return None
        try:
            return self.reader.read(f, 0, f.size, account=False)
        except Exception as exc:
            log.warning("%s: not read (%s)", name, exc)
            return None

    def _head_ahead(self, f: RemoteFile) -> None:
        if self._closed:
            return
        try:
            if not self.header_only(self.listing.name(f)):
                self.reader.read(f, 0, min(f.size, self.reader.block_size), account=False)
        except Exception as exc:  # the loader's own read will meet it
            log.debug("%s: first block ahead failed: %s", f.path, exc)
        if not self._closed:
            self.tensor_map(f)

    # -- on the pump's thread --------------------------------------------------------------------
    def _decide_all(self, items: list) -> None:
        for item in to_decide(items):
            self._decide(item)

    def _decide(self, item) -> None:
        f, tmap, verdict, window = item
        wanted = wants(tmap, verdict, window, f.size, self.cfg)
        if tmap is not None and verdict.state.extents:  # (blocks of a tensor fetched exactly: not again)
            wanted = [i for i in wanted if not self._in_extent(f, tmap, verdict.state.extents, i)]
        self._resolve_siblings(f)
        for g, blocks in reversed(self._ahead_of(f)):  # queued first, nearest last: the file read keeps priority
            self.pump.want(g, blocks)
        self.pump.want(f, wanted)

    def _in_extent(self, f: RemoteFile, tmap: TensorMap, extents: frozenset[int], i: int) -> bool:
        lo, hi = block_span(i, self.cfg.block_size, f.size)
        k = tmap.find(lo)
        return k in extents and hi <= tmap.ranges[k][1] and self.reader.covered(f, lo, hi)

    def _resolve_siblings(self, f: RemoteFile) -> None:
        """At the first shard read in a folder, look up the data URLs of the others: loaders
        open them next, each waiting a round trip to resolve otherwise.  No byte is fetched."""
        name = self.listing.name(f)
        folder = name.rpartition("/")[0]
        if self._resolve is None or not f.path.endswith(".safetensors"):
            return
        with self._lock:
            if folder in self._resolved:
                return
            self._resolved.add(folder)
        others = [self.listing.file(p) for p in self.folders.shards(folder) if p != name]
        self._resolve([g for g in others if g is not None])

    def _ahead_of(self, f: RemoteFile) -> list[tuple[RemoteFile, list[int]]]:
        """In a folder a loader is reading: the shards after the furthest one the program
        has read, in the loader's order, each wanted once as a speculative window (its header
        and ``speculative`` bytes; more only when the program reads its tensor data)."""
        name = self.listing.name(f)
        folder = name.rpartition("/")[0]
        with self._lock:
            read = self._read.setdefault(folder, {})
            read[name] = f
            if folder not in self._loading_dirs or not f.path.endswith(".safetensors"):
                return []
            reached = set(read)
        order = self.folders.order(folder)
        with self._lock:
            paths = ahead(order, reached, frozenset(self._ahead), self.cfg)
            for path in paths:
                self._ahead.add(path)
        out = []
        for path in paths:
            g = self.listing.file(path) or read.get(path)
            tmap = self.tensor_map(g) if g is not None else None  # its header: a loader reads it next
            with self._lock:
                if self._states.get(path, FileState()).data_read:
                    continue  # its own reads decide
            if tmap is not None and tmap.ranges:
                out.append((g, speculative_blocks(tmap, g.size, self.cfg)))
        return out
