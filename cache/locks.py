"""Cross-process single-flight for blocks: striped ``flock`` files next to a disk store.

Two daemons sharing one cache dir must not both download a block.  Before fetching, a
process takes the stripe locks of the blocks it is about to fetch, looks in the store
again (the other process may just have stored them), fetches only what is still missing,
stores it, and only then lets go.

- A block maps to one of ``STRIPES`` files (``crc32(content id, index)``), so the lock
  files stay few however large the repo; two different blocks on one stripe only wait
  for each other across processes.
- Locks are taken in ascending stripe order and held until the whole run is stored, so
  two processes can never wait for each other in a cycle.
- Inside a process a stripe is shared, not exclusive: ``flock`` is taken once per stripe
  (one open file per stripe, reference-counted) and threads of the same process just
  join it.  In-process single-flight is the reader's job already, so a process never
  waits on itself — which would otherwise serialise its own parallel downloads.
- A process that dies holding locks releases them with its file descriptors (the kernel
  drops ``flock`` locks on close), so a ``kill -9`` never wedges the other daemon.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from typing import Iterable

STRIPES = 1024


class _Stripe:
    __slots__ = ("mutex", "count", "fd")

    def __init__(self) -> None:
        self.mutex = threading.Lock()  # held while flock blocks: same-process waiters queue here
        self.count = 0
        self.fd: int | None = None


class StripeLocks:
    """``hold(content_id, indices)`` -> a ``Held`` to ``release()`` once the blocks are stored."""

    def __init__(self, directory: str, stripes: int = STRIPES) -> None:
        self.directory = directory
        self.stripes = stripes
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._table_lock = threading.Lock()
        self._table: dict[int, _Stripe] = {}

    def stripe_of(self, content_id: str, index: int) -> int:
        return zlib.crc32(f"{content_id}:{index}".encode()) % self.stripes

    def hold(self, content_id: str, indices: Iterable[int]) -> "Held":
        wanted = sorted({self.stripe_of(content_id, i) for i in indices})
        taken: list[int] = []
        try:
            for s in wanted:
                self._acquire(s)
                taken.append(s)
        except BaseException:
            for s in reversed(taken):
                self._release(s)
            raise
        return Held(self, taken)

    def _stripe(self, s: int) -> _Stripe:
        with self._table_lock:
            st = self._table.get(s)
            if st is None:
                st = self._table[s] = _Stripe()
            return st

    def _acquire(self, s: int) -> None:
        st = self._stripe(s)
        with st.mutex:
            if st.count == 0:
                if st.fd is None:
                    path = os.path.join(self.directory, f"{s:04d}.lock")
                    st.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(st.fd, fcntl.LOCK_EX)
            st.count += 1

    def _release(self, s: int) -> None:
        st = self._stripe(s)
        with st.mutex:
            st.count -= 1
            if st.count == 0 and st.fd is not None:
                fcntl.flock(st.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._table_lock:
            for st in self._table.values():
                if st.fd is not None:
                    os.close(st.fd)  # drops any lock still held
                    st.fd = None
            self._table.clear()


class Held:
    def __init__(self, locks: StripeLocks, stripes: list[int]) -> None:
        self._locks, self._stripes = locks, stripes
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            stripes, self._stripes = self._stripes, []
        for s in reversed(stripes):
            self._locks._release(s)
