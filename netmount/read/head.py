"""The head tier: the first bytes of safetensors files, kept in memory.

The first read of a shard is its header (8 + N bytes, often ~10 KB).  Fetching the whole
first block for it (1 MiB) is most of what a ``safe_open`` costs, so the first
``head_bytes`` (128 KiB: the kernel's largest read) are fetched alone and kept here,
outside the store (which holds only whole blocks).  Single-flight per file; a failure
fails the waiting reads and the next read tries again.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import OrderedDict

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

    def get(self, f: RemoteFile) -> bytes:
        """The head of ``f``, fetched once however many readers ask."""
        with self._lock:
            data = self._heads.get(f.content_id)
            if data is not None:
                self._heads.move_to_end(f.content_id)
                self.counters.add("head_hits")
                return data
            fut = self._inflight.get(f.content_id)
            owner = fut is None
            if owner:
                fut = self._inflight[f.content_id] = concurrent.futures.Future()
        if owner:
            self._fetch(f, fut)
        return fut.result()

    def _fetch(self, f: RemoteFile, fut: concurrent.futures.Future) -> None:
        try:
            data = fetch_bytes(self.fetcher, f, 0, self.head_bytes).result()
            with self._lock:
                self._heads[f.content_id] = data
                while len(self._heads) > self._max:
                    self._heads.popitem(last=False)
            fut.set_result(data)
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, FetchError) else FetchError(f"{f.path}: {exc}"))
        finally:
            with self._lock:
                self._inflight.pop(f.content_id, None)
