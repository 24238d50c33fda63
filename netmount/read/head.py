"""The head tier: the first bytes of safetensors files, kept in memory.

The first read of a shard is its header (8 + N bytes, often ~3-10 KB).  Fetching the whole
first block for it (1 MiB) is most of what a ``safe_open`` costs, so reads within the first
``head_bytes`` (128 KiB: the kernel's reads of a header at the default readahead) are served
from bytes fetched alone and kept here, outside the store (which holds only whole blocks).
The head grows with the reads: the first fetches what that read needs (the mount's small
readahead, 32 KiB, for a ``safe_open``'s fault at page 0: a 3 KB header costs 32 KiB, not
128), and a later read past it (a longer header) fetches the rest of ``head_bytes`` at
once: one more round trip, not one per request of the kernel's.  Single-flight per file; a failure fails the waiting
reads and the next read tries again.  ``drain`` waits for the heads being fetched (today on
their readers' threads, which the reader's own count covers too: said here all the same).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import OrderedDict

from netmount.core.activity import Activity
from netmount.core.blocks import PAGE
from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.remote.contract import Fetcher, fetch_bytes
from netmount.remote.hub import RemoteFile


class HeadTier:
    def __init__(self, fetcher: Fetcher, head_bytes: int, memory_bytes: int, counters: Counters) -> None:
        self.fetcher = fetcher
        self.head_bytes = head_bytes
        self.counters = counters
        self._max = max(1, memory_bytes // max(1, head_bytes))
        self._lock = threading.Lock()
        self._heads: OrderedDict[str, bytes] = OrderedDict()
        self._inflight: dict[str, concurrent.futures.Future] = {}
        self._under_way = Activity()  # heads being fetched (``drain``)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no head is being fetched; False on timeout."""
        return self._under_way.wait_none(timeout)

    def covers(self, f: RemoteFile, offset: int, end: int) -> bool:
        """Whether a read of [offset, end) is one this tier serves (a safetensors head read)."""
        n = self.head_bytes
        return bool(n) and f.size > n and end <= n and f.path.endswith(".safetensors")

    def local(self, f: RemoteFile) -> bytes | None:
        """The head of ``f`` if it is in memory; never fetches."""
        with self._lock:
            return self._heads.get(f.content_id)

    def forget(self, content_id: str) -> None:
        """Drop the head of ``content_id`` (its bytes were found wrong)."""
        with self._lock:
            self._heads.pop(content_id, None)

    def get(self, f: RemoteFile, end: int | None = None) -> bytes:
        """The head of ``f``, at least its first ``end`` bytes (default and at most
        ``head_bytes``), fetched once however many readers ask."""
        want = self.head_bytes if end is None else min(-(-max(end, 1) // PAGE) * PAGE, self.head_bytes)
        hit = True
        while True:
            with self._lock:
                data = self._heads.get(f.content_id)
                if data is not None and len(data) >= want:
                    self._heads.move_to_end(f.content_id)
                    if hit:
                        self.counters.add("head_hits")
                    return data
                fut = self._inflight.get(f.content_id)
                owner = fut is None
                if owner:
                    fut = self._inflight[f.content_id] = concurrent.futures.Future()
                    self._under_way.add(1)
            if owner:  # a header longer than the first read: the rest of the head at once
                self._fetch(f, fut, data or b"", want if data is None else self.head_bytes)
            fut.result()  # (raises the fetch's error) then look again: it may have fetched less
            hit = False

    def _fetch(self, f: RemoteFile, fut: concurrent.futures.Future, have: bytes, want: int) -> None:
        try:
            data = have + fetch_bytes(self.fetcher, f, len(have), want).result()
            with self._lock:
                self._heads[f.content_id] = data
                self._heads.move_to_end(f.content_id)
                while len(self._heads) > self._max:
                    self._heads.popitem(last=False)
            fut.set_result(data)
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, FetchError) else FetchError(f"{f.path}: {exc}"))
        finally:
            with self._lock:
                self._inflight.pop(f.content_id, None)
            self._under_way.add(-1)
