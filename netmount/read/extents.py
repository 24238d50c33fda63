"""Exact byte ranges of files, kept in memory beside the blocks, for lone reads.

A program that reads one tensor of a shard (``safe_open(...).get_tensor``) needs that
tensor's bytes.  In whole 1 MiB blocks it pays for the parts of the blocks at the tensor's
two ends that hold other tensors — half the bench's partial-read bytes were that.  So a lone
tensor, and the kernel's read-around spilling past its ends, are fetched as *extents*: the
exact pages asked for.  Extents live in a small LRU here (whole blocks inside one also go
to the block store, through ``on_done``), and a read the extents cover is served from them.

Single-flight: a range already in memory or being fetched inside one extent is not
fetched again; readers of a range an extent in flight covers wait for that extent.

Settling (``drain``): an extent is under way from ``fetch`` until its ``on_done`` has
returned, not merely until its bytes are in: ``on_done`` hands its whole blocks to the
store's write-behind, which must be registered before the extent stops counting, or an
``idle`` asked in between would see neither.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections import OrderedDict
from typing import Callable

from netmount.core.activity import Activity
from netmount.core.blocks import PAGE
from netmount.core.counters import Counters
from netmount.remote.contract import Fetcher, fetch_bytes
from netmount.remote.hub import RemoteFile


class Extents:
    def __init__(self, fetcher: Fetcher, max_bytes: int, counters: Counters) -> None:
        self.fetcher = fetcher
        self.max_bytes = max_bytes
        self.counters = counters
        self._lock = threading.Lock()
        self._done: OrderedDict[str, list[tuple[int, bytes]]] = OrderedDict()  # content id -> extents
        self._bytes = 0
        self._pending: dict[str, list[tuple[int, int, concurrent.futures.Future]]] = {}
        self._anchors: dict[str, list[tuple[int, int]]] = {}  # content id -> lone tensors fetched
        self._under_way = Activity()  # extents fetched and not yet handed on (``drain``)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every extent started has come in (or failed) and its ``on_done`` has
        returned; False on timeout."""
        return self._under_way.wait_none(timeout)

    def get(self, f: RemoteFile, lo: int, hi: int) -> bytes | None:
        """The bytes [lo, hi) if one extent in memory or in flight holds them all (waiting
        for it if need be; its failure raises here), else None."""
        with self._lock:
            for start, data in self._done.get(f.content_id, ()):
                if start <= lo and hi <= start + len(data):
                    self._done.move_to_end(f.content_id)
                    self.counters.add("extent_hits")
                    return data[lo - start : hi - start]
            for start, end, fut in self._pending.get(f.content_id, ()):
                if start <= lo and hi <= end:
                    break
            else:
                return None
        data = fut.result()
        self.counters.add("extent_hits")
        return data[lo - start : hi - start]

    def covering(self, f: RemoteFile, pos: int) -> tuple[int, int] | None:
        """[start, end) of an extent of ``f`` in memory or in flight that holds byte ``pos``."""
        with self._lock:
            for start, data in self._done.get(f.content_id, ()):
                if start <= pos < start + len(data):
                    return start, start + len(data)
            for start, end, _ in self._pending.get(f.content_id, ()):
                if start <= pos < end:
                    return start, end
        return None

    def near(self, f: RemoteFile, lo: int, hi: int, margin: int) -> bool:
        """Whether [lo, hi) lies within ``margin`` bytes of an *anchor* extent of ``f`` (a
        lone tensor; the kernel reads around its ends).  Only anchors count, so small
        extents never pull more small extents after them."""
        with self._lock:
            spans = list(self._anchors.get(f.content_id, ()))
        return any(lo < e + margin and hi > s - margin for s, e in spans)

    def fetch(self, f: RemoteFile, lo: int, hi: int,
              on_done: Callable[[RemoteFile, int, bytes], None] | None = None, anchor: bool = False) -> None:
        """Start fetching [lo, hi), widened to whole pages and clipped to the file, unless
        an extent in memory or in flight already holds it.  ``on_done(f, start, data)`` is
        called with the extent once it is in (on the fetcher's thread: keep it short).
        ``anchor``: a lone tensor, which reads around it may be fetched exactly too."""
        lo, hi = lo // PAGE * PAGE, min(f.size, -(-hi // PAGE) * PAGE)
        if lo >= hi:
            return
        cid = f.content_id
        with self._lock:
            if anchor:
                anchors = self._anchors.setdefault(cid, [])
                anchors.append((lo, hi))
                del anchors[:-64]  # the recent ones are what reads go around
            if any(s <= lo and hi <= s + len(d) for s, d in self._done.get(cid, ())) or any(
                    s <= lo and hi <= e for s, e, _ in self._pending.get(cid, ())):
                return
            fut: concurrent.futures.Future = concurrent.futures.Future()  # readers wait on this
            entry = (lo, hi, fut)
            self._pending.setdefault(cid, []).append(entry)
            self._under_way.add(1)

        landed = functools.partial(self._landed, f, entry, on_done)
        try:  # outside the lock: a fetcher may call back on this thread
            fetch_bytes(self.fetcher, f, lo, hi).add_done_callback(landed)
        except BaseException as exc:
            failed: concurrent.futures.Future = concurrent.futures.Future()
            failed.set_exception(exc)
            landed(failed)

    def _landed(self, f: RemoteFile, entry: tuple[int, int, concurrent.futures.Future],
                on_done: Callable[[RemoteFile, int, bytes], None] | None, r: concurrent.futures.Future) -> None:
        """The extent ``entry`` came in (or failed): to memory, to its readers, to ``on_done``;
        only then is it no longer under way (its blocks are registered for the store)."""
        lo, hi, fut = entry
        cid = f.content_id
        try:
            data = None if r.cancelled() or r.exception() is not None else r.result()
            with self._lock:
                waiting = self._pending.get(cid, [])
                if entry in waiting:
                    waiting.remove(entry)
                if not waiting:
                    self._pending.pop(cid, None)
                if data is not None and len(data) == hi - lo:
                    self._done.setdefault(cid, []).append((lo, data))
                    self._done.move_to_end(cid)
                    self._bytes += len(data)
                    self._shrink()
            if data is not None:
                fut.set_result(data)
                if on_done is not None:
                    on_done(f, lo, data)
            else:
                fut.set_exception(r.exception() or concurrent.futures.CancelledError())
        finally:
            self._under_way.add(-1)

    def forget(self, content_id: str) -> None:
        """Drop the extents of ``content_id`` in memory (its bytes were found wrong)."""
        with self._lock:
            for _, data in self._done.pop(content_id, ()):
                self._bytes -= len(data)
            self._anchors.pop(content_id, None)

    def _shrink(self) -> None:
        """Drop the oldest extents (least recently used file first) down to ``max_bytes``."""
        while self._bytes > self.max_bytes and self._done:
            cid, extents = next(iter(self._done.items()))
            start, data = extents.pop(0)
            self._bytes -= len(data)
            if not extents:
                del self._done[cid]
