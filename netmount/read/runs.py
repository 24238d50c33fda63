"""The run scheduler: every block download goes through here, once.

- **Single-flight**: a block being downloaded has one future; every reader of it (and
  prefetch) joins that future.  Two readers of one block cause one download.
- **Coalescing**: adjacent missing blocks become one ranged request (a *run*) of at most
  ``max_request_bytes``; runs go out in parallel.
- **Streaming**: a run asks the fetcher for block-sized pieces (the fetch contract,
  ``remote/contract.py``), so a reader waiting for the first block of a 4 MiB run is woken
  when that block's bytes are in, not when the whole run is.  Woken waiters find the block
  in memory.
- **Write-behind**: a finished run's blocks are written to the store on a small pool, off
  the fetcher's thread; a block stays registered as in flight (its future done) until
  stored, so nothing fetches it again or misses it meanwhile.  A block is stored only
  complete and of the expected length.
- **Budget**: bytes of blocks started and not yet stored are counted; prefetch starts
  blocks only within a budget (``start_within``), demand reads always start.
- **Across processes** (two mounts sharing one cache dir): no lock.  A reader looks in the
  store before it claims a block, so a block another daemon stored is not fetched again;
  two daemons that miss the same block at the same moment both fetch it (the same bytes,
  stored twice).  They never wait on each other's network: a stalled daemon must not
  stall another (issue 20).

News goes up only through ``on_run_done`` (given at construction): called, with no
arguments and no lock held, after each run's blocks have left the in-flight count, and as
each block lands (its bytes leave the network budget before they are stored: inflight.py).
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Callable, Iterable

from netmount.core.blocks import block_span, coalesce
from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.read.inflight import Futures, InFlight
from netmount.read.tiers import BlockMemory, StoreTier
from netmount.remote.contract import Fetcher
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.reader")


class RunScheduler:
    def __init__(self, fetcher: Fetcher, stored: StoreTier, memory: BlockMemory, counters: Counters, *,
                 max_request_bytes: int, on_run_done: Callable[[], None] | None = None,
                 workers: int = 4) -> None:
        self.fetcher = fetcher
        self.stored = stored
        self.memory = memory
        self.counters = counters
        self.block_size = stored.block_size
        self.max_run = max(1, max_request_bytes // self.block_size)
        self._on_run_done = on_run_done
        self.inflight = InFlight(memory, self.block_size)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="netmount-store")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every block is stored (or has failed); False on timeout."""
        return self.inflight.drain(timeout)

    # -- starting downloads ------------------------------------------------------------------
    def ensure(self, f: RemoteFile, indices: Iterable[int], *, max_run: int | None = None,
               prefetch: bool = False) -> Futures:
        """Futures for blocks of ``f``: joined if downloading, done if in memory, else started."""
        futures, owned = self.inflight.claim(f, indices)
        self._start(f, owned, futures, max_run, prefetch)
        return futures

    def start_within(self, f: RemoteFile, indices: Iterable[int], budget: int, *,
                     skip: frozenset[int] = frozenset(), max_run: int | None = None) -> tuple[int, int]:
        """Prefetch: start those of ``indices`` (in order) not in ``skip`` (known stored), in
        memory or downloading, while bytes in flight (demand included) stay within ``budget``.
        Returns (blocks started, blocks still wanted but left for lack of room)."""
        futures, wanted = self.inflight.claim_within(f, indices, budget, skip)
        if futures:
            self.counters.add("prefetch_blocks", len(futures))
            self._start(f, sorted(futures), futures, max_run, prefetch=True)
        return len(futures), wanted - len(futures)

    def store_extra(self, f: RemoteFile, i: int, data: bytes) -> None:
        """Store a whole block that came by another way (inside an extent), unless it is
        downloading or stored already; write-behind, like a run's blocks."""
        def put() -> None:
            try:
                if not self.inflight.has(f, i) and i not in self.stored.known(f):
                    self.memory.put((f.content_id, i), data)
                    self.stored.put(f, i, data)
            finally:
                self.inflight.writing(-1)

        self.inflight.writing(1)
        try:
            self._pool.submit(put)
        except RuntimeError:  # shutting down
            self.inflight.writing(-1)

    def _start(self, f: RemoteFile, owned: list[int], futures: Futures, max_run: int | None,
               prefetch: bool) -> None:
        for first, last in coalesce(owned, max_run or self.max_run):
            self._fetch_run(f, first, last, futures, prefetch, self._notify)

    # -- one run -----------------------------------------------------------------------------
    def _fetch_run(self, f: RemoteFile, first: int, last: int, futures: Futures, prefetch: bool,
                   done: Callable[[], None]) -> None:
        start = block_span(first, self.block_size, f.size)[0]
        end = block_span(last, self.block_size, f.size)[1]

        def finish(exc: BaseException | None) -> None:
            try:
                self._finish(f, first, last, futures, exc)
            finally:
                done()

        def landed(run: concurrent.futures.Future) -> None:  # on the fetcher's thread
            exc = FetchError(f"{f.path}: fetch cancelled") if run.cancelled() else run.exception()
            try:
                self._pool.submit(finish, exc)
            except RuntimeError:  # closing: finish here
                finish(exc)

        try:
            run = self.fetcher.fetch(f, start, end, lambda offset, data: self._piece(f, offset, data, futures),
                                     part_size=self.block_size, prefetch=prefetch)
        except Exception as exc:  # could not even start: fail these blocks, not the process
            finish(exc)
            return
        run.add_done_callback(landed)

    def _piece(self, f: RemoteFile, offset: int, data: bytes, futures: Futures) -> None:
        """One block of a run arrived (on the fetcher's thread): to memory and its waiters."""
        i, rest = divmod(offset, self.block_size)
        fut = futures.get(i)
        if fut is None or rest:
            return
        lo, hi = block_span(i, self.block_size, f.size)
        if len(data) == hi - lo:
            self._deliver(f, i, data, fut)

    def _deliver(self, f: RemoteFile, i: int, data: bytes, fut: concurrent.futures.Future) -> None:
        """A complete block: to memory, then to its waiters (once: a retry's second copy of a
        piece is dropped)."""
        self.memory.put((f.content_id, i), data)
        try:
            fut.set_result(data)
        except concurrent.futures.InvalidStateError:
            return
        self.inflight.landed(f, i)
        self._notify()  # room in the budget: the prefetch pump may start more

    def _finish(self, f: RemoteFile, first: int, last: int, futures: Futures, exc: BaseException | None) -> None:
        """Fail the blocks that never came, store the ones that did (even if the rest of the run
        failed: their bytes were right), then let them all leave the in-flight count."""
        fetched: list[tuple[int, bytes]] = []
        failed: list[int] = []
        for i in range(first, last + 1):
            fut = futures[i]
            if fut.done():
                if not fut.cancelled() and fut.exception() is None:
                    fetched.append((i, fut.result()))
                continue
            why = exc if exc is not None else "its bytes never came"
            error = why if isinstance(why, FetchError) else FetchError(f"{f.path}: block {i}: {why}")
            try:
                fut.set_exception(error)
            except concurrent.futures.InvalidStateError:  # delivered meanwhile: keep it
                fetched.append((i, fut.result()))
                continue
            failed.append(i)
        self.inflight.release(f, failed)
        for i, data in fetched:
            if not self.inflight.has(f, i):
                continue  # already released (dropped by a verify meanwhile, say)
            try:
                self.stored.put(f, i, data)
            except Exception:  # SafeBlockStore never raises; any other store must not kill reads
                log.exception("storing block %d of %s failed", i, f.path)
            finally:
                self.inflight.release(f, [i])

    def _notify(self) -> None:
        if self._on_run_done is not None:
            try:
                self._on_run_done()
            except Exception:
                log.exception("on_run_done listener failed")
