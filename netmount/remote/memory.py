"""``MemoryFetcher``: the fetch contract (``remote/contract.py``) over bytes in memory.

For unit tests of everything above the network: it behaves as ``RangeFetcher`` does at
the contract — pieces of ``part_size``, results of ``end - start``, ``FetchError`` on
failure, pieces delivered again by a retry — and it can misbehave on demand the ways the
network does:

- ``fail(n)``: the next ``n`` fetches fail (after no piece, or after ``after_pieces``);
- ``retry_midway(n)``: the next ``n`` fetches deliver their first piece, "lose the
  connection", and deliver every piece again (what a real retry looks like from above);
- ``hold(after_pieces=0)`` / ``release()``: bodies stall after that many pieces until released;
- ``calls``: every fetch asked for, as ``(path, start, end, prefetch)``.
"""

from __future__ import annotations

import concurrent.futures
import threading

from netmount.core.errors import FetchError
from netmount.remote.contract import OnPart, pieces
from netmount.remote.hub import RemoteFile


class MemoryFetcher:
    def __init__(self, contents: dict, *, workers: int = 8) -> None:
        # path -> the file's bytes; or (RepoRef, path) -> the bytes of a file that names that
        # repo (a file whose repo has no entry of its own is looked up by path alone)
        self.contents = contents
        self.calls: list[tuple[str, int, int, bool]] = []
        self._lock = threading.Lock()
        self._fail: list[int] = []  # per failing fetch to come: pieces delivered first
        self._retry_midway = 0
        self._gate = threading.Event()
        self._gate.set()
        self._hold_after = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="memory-fetch")

    # -- faults on demand ---------------------------------------------------------------
    def fail(self, n: int = 1, after_pieces: int = 0) -> None:
        with self._lock:
            self._fail.extend([after_pieces] * n)

    def retry_midway(self, n: int = 1) -> None:
        with self._lock:
            self._retry_midway += n

    def hold(self, after_pieces: int = 0) -> None:
        self._hold_after = after_pieces
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self.release()
        self._pool.shutdown(wait=True)

    # -- the contract ---------------------------------------------------------------------
    def fetch(self, file: RemoteFile, start: int, end: int, on_part: OnPart, *,
              part_size: int = 0, prefetch: bool = False) -> concurrent.futures.Future:
        if not 0 <= start < end <= file.size:
            raise FetchError(f"bad range [{start}, {end}) of {file.path} ({file.size} bytes)")
        with self._lock:
            self.calls.append((file.path, start, end, prefetch))
            fail = self._fail.pop(0) if self._fail else None
            midway = self._retry_midway > 0
            self._retry_midway -= midway
        return self._pool.submit(self._serve, file, start, end, on_part, part_size, fail, midway)

    def _serve(self, file, start, end, on_part, part_size, fail, midway) -> int:
        body = self.contents.get((file.repo, file.path))
        body = self.contents[file.path] if body is None else body
        if len(body) != file.size:
            raise FetchError(f"{file.path}: the source has {len(body)} bytes, the listing {file.size}")
        cuts = pieces(start, end, part_size)
        if midway:  # the first piece, then the connection drops and the retry starts over
            a, b = cuts[0]
            on_part(a, body[a:b])
        for n, (a, b) in enumerate(cuts):
            if n == self._hold_after and not self._gate.is_set():
                self._gate.wait()
            if fail is not None and n == fail:
                raise FetchError(f"{file.path} [{start}, {end}): injected failure")
            on_part(a, body[a:b])
        if fail is not None:
            raise FetchError(f"{file.path} [{start}, {end}): injected failure")
        return end - start

    # -- for tests ---------------------------------------------------------------------------
    def fetched_bytes(self) -> int:
        with self._lock:
            return sum(e - s for _, s, e, _ in self.calls)
