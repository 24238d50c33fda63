"""The prefetch pump: one thread that decides on reads and keeps wanted blocks in flight.

Reads are handed in (``submit``) as they finish; the thread calls ``decide(items)`` with all
handed in since it last looked (the prefetcher's policy, which calls ``want``: one call per
batch, so a pump that falls behind a fast reader catches up in one step instead of deciding
every read of a stream in turn) and then starts wanted blocks while the
in-flight budget allows, the most recently wanted file first.  It runs again whenever the
reader reports a finished run (the ``run_done`` event it was constructed with), so a long
want flows at the budget without waiting for the next read.

Bounds: never a block known stored or downloading (the reader skips those), never more
than ``budget`` bytes in flight; wanted blocks are spread over ``connections`` parallel
sub-ranges of at least a block.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.prefetch")


class Pump:
    def __init__(self, reader, run_done: threading.Event, decide: Callable[[list], None], *,
                 budget: int, connections: int) -> None:
        self.reader = reader
        self.budget, self.connections = budget, connections
        self._decide = decide
        self._wake = run_done  # set by the reader when a run finishes, and by ``submit``
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._items: collections.deque = collections.deque()  # reads not yet decided on
        self._submitted = 0  # reads ever handed in: ``drain`` sees one that came while it waited
        self._busy = False
        # file -> (file, blocks still wanted, in fetch order); the most recently wanted last.  By the
        # file itself (its repo, commit and path: two repos' files of one path are two files)
        self._pending: OrderedDict[RemoteFile, tuple[RemoteFile, list[int]]] = OrderedDict()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="netmount-prefetch", daemon=True)
        self._thread.start()

    def submit(self, item) -> None:
        """A read to decide on, on the pump's thread (returns at once)."""
        with self._lock:
            self._items.append(item)
            self._submitted += 1
        self._wake.set()

    def want(self, f: RemoteFile, blocks: list[int]) -> None:
        """Blocks of ``f`` to fetch, in order, before those of files wanted earlier (the
        file's earlier want is replaced)."""
        if not blocks:
            return
        with self._lock:
            self._pending[f] = (f, blocks)
            self._pending.move_to_end(f)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the thread (after the decision it is making); False if it did not end in time."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def drain(self, deadline: float, also: Callable[[float], bool] = lambda _t: True) -> bool:
        """Wait until every read is decided on, everything wanted has been fetched and
        stored, and nothing is left to start; ``also(timeout)`` is waited for each round
        too (the prefetcher's headers read ahead).  False at the ``deadline`` (monotonic).
        A read under way when the wait began is waited for by the reader's drain, and the
        FUSE face hands it in within that read: if one came meanwhile, this looks again."""
        while True:
            with self._idle:
                if not self._idle.wait_for(lambda: not self._items and not self._busy,
                                           max(0.0, deadline - time.monotonic())):
                    return False
                # seen before the reader drains: a pump that empties ``_pending`` has started
                # (and registered) its runs first, so the reader's drain below waits for them
                quiet = not self._pending
                submitted = self._submitted
            if not also(max(0.0, deadline - time.monotonic())):
                return False
            if not self.reader.drain(max(0.0, deadline - time.monotonic())):
                return False
            with self._lock:
                if quiet and self._submitted == submitted:
                    return True
            if time.monotonic() >= deadline:
                return False
            self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            with self._lock:
                self._busy = True
            try:
                while not self._closed:
                    with self._lock:
                        items = list(self._items)
                        self._items.clear()
                    if not items:
                        break
                    try:
                        self._decide(items)
                    except Exception:
                        log.exception("prefetch decision failed (reads are unaffected)")
                self._pump()
            except Exception:
                log.exception("prefetch failed (reads are unaffected)")
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _pump(self) -> None:
        """Start wanted blocks while the budget allows, the most recently wanted file first."""
        with self._lock:
            queue = list(reversed(self._pending.items()))
        for key, (f, wanted) in queue:
            if self._closed:
                return
            per_request = len(wanted) * self.reader.block_size // max(1, self.connections)
            started, left = self.reader.prefetch(f, wanted, self.budget, max_request_bytes=per_request)
            with self._lock:
                if not left and self._pending.get(key, (None, None))[1] is wanted:
                    del self._pending[key]
            if left and not started:
                break  # no room: a finished run wakes us again
