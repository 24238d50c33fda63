"""Fakes for unit tests of pure logic: a fetcher that serves deterministic bytes and counts calls."""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time

from netmount.remote.hub import RemoteFile


def make_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class FakeFetch:
    """``fetch(f, start, end) -> Future[bytes]`` over in-memory file contents."""

    def __init__(self, contents: dict[str, bytes], delay: float = 0.0, workers: int = 8):
        self.contents = contents
        self.delay = delay
        self.calls: list[tuple[str, int, int]] = []
        self.fail_next = 0
        self.hold_after_first_part: threading.Event | None = None  # a body that stalls midway
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers)

    def __call__(self, f: RemoteFile, start: int, end: int, prefetch: bool = False,
                 on_part=None, part_size: int = 0) -> concurrent.futures.Future:
        with self._lock:
            self.calls.append((f.path, start, end))
            fail = self.fail_next > 0
            self.fail_next -= fail
        return self._pool.submit(self._serve, f.path, start, end, fail, on_part, part_size)

    def _serve(self, path, start, end, fail, on_part=None, part_size=0):
        if self.delay:
            time.sleep(self.delay)
        if fail:
            from netmount.core.errors import FetchError

            raise FetchError("injected failure")
        body = self.contents[path][start:end]
        if on_part is not None and part_size and self.hold_after_first_part is not None:
            on_part(start, body[:part_size])  # the first piece is in, the rest is slow
            assert self.hold_after_first_part.wait(10)
        return body

    def fetched_bytes(self) -> int:
        return sum(e - s for _, s, e in self.calls)


def remote(path: str, data: bytes) -> RemoteFile:
    return RemoteFile(path, len(data), "cid-" + path, True)
