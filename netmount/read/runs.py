"""The run scheduler: every byte fetched goes through here, once, and into the store.

- **Single-flight** (``inflight.py``): a range being fetched is a set of pieces with one
  future each; every reader of it (and prefetch) joins them.  Claims are atomic against the
  store's ``held`` ranges and the pieces in flight, so two readers of one byte cause one
  download.
- **Coalescing**: the gaps of a claim that touch become one ranged request (a *run*) of at
  most ``max_request_bytes``, cut at block edges; runs go out in parallel.
- **Streaming**: a run asks the fetcher for block-sized pieces (the fetch contract,
  ``remote/contract.py``), so a reader waiting for the first block of an 8 MiB run is woken
  when that block's bytes are in, not when the whole run is; it answers from the piece's
  bytes in memory.
- **Write-behind** (``Writer``): landed pieces go to the store on a few threads of their own,
  off the fetcher's event loop, batched; a piece stays in flight (its bytes on it) until the
  store holds them, so nothing fetches it again or misses it meanwhile.  Whatever crossed
  the network lands in the store: blocks, exact tensor extents, headers, footers alike.
- **Across processes** (two mounts sharing one cache dir): no lock.  A claim looks at what
  the store holds, so a range another daemon stored is not fetched again once the reader
  has refreshed its view of the store; two daemons missing the same range at the same moment
  both fetch it (the same bytes, stored twice).  They never wait on each other's network.

News goes up only through ``on_news`` (given at construction): called, with no arguments
and no lock held, as pieces land (room in the prefetch budget) and as they leave.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.core.ranges import Interval, Ranges
from netmount.read.inflight import InFlight, Piece, Request
from netmount.remote.contract import Fetcher, pieces
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.reader")

WRITE_BATCH = 16 << 20  # bytes one store call takes at most (one transaction)


def cut_runs(gaps: list[Interval], max_bytes: int, block_size: int) -> list[Interval]:
    """Touching gaps joined, then cut into requests of at most ``max_bytes``, at block edges
    (a cut that no block edge allows falls where the size says)."""
    joined = Ranges(gaps)
    out: list[Interval] = []
    for a, b in joined:
        while b - a > max_bytes:
            cut = (a + max_bytes) // block_size * block_size
            if cut <= a:
                cut = a + max_bytes
            out.append((a, cut))
            a = cut
        out.append((a, b))
    return out


class Writer:
    """Write-behind: landed pieces to the store in batches, then out of flight."""

    def __init__(self, store, inflight: InFlight, on_news: Callable[[], None], workers: int) -> None:
        self.store, self.inflight, self._news = store, inflight, on_news
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: collections.deque[tuple[RemoteFile, Piece]] = collections.deque()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"netmount-store-{n}", daemon=True)
                         for n in range(workers)]
        for t in self._threads:
            t.start()

    def put(self, f: RemoteFile, p: Piece) -> None:
        with self._ready:
            if not self._closed:
                self._queue.append((f, p))
                self._ready.notify()
                return
        self._write([(f, p)])  # closing: write it here

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop (each thread joined within ``timeout``)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                batch, size = [], 0
                while self._queue and size < WRITE_BATCH:
                    batch.append(self._queue.popleft())
                    size += len(batch[-1][1])
            self._write(batch)

    def _write(self, batch: list[tuple[RemoteFile, Piece]]) -> None:
        try:
            self.store.put_ranges([(p.cid, p.start, p.data, f.size) for f, p in batch])
        except Exception:  # SafeBlockStore never raises; another store must not kill reads
            log.exception("storing %d fetched ranges failed", len(batch))
        finally:
            self.inflight.release([p for _, p in batch])
            self._news()


class RunScheduler:
    def __init__(self, fetcher: Fetcher, store, counters: Counters, *, max_request_bytes: int,
                 on_news: Callable[[], None] | None = None, workers: int = 4) -> None:
        self.fetcher, self.store, self.counters = fetcher, store, counters
        self.block_size = store.block_size
        self.max_request_bytes = max(self.block_size, max_request_bytes)
        self._on_news = on_news
        self.inflight = InFlight()
        self.writer = Writer(store, self.inflight, self._notify, workers)

    def close(self) -> None:
        self.writer.close()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every piece is stored (or has failed); False on timeout."""
        return self.inflight.drain(timeout)

    # -- claiming and starting -----------------------------------------------------------------
    def claim(self, f: RemoteFile, wanted: list[Interval], *, prefetch: bool = False, budget: int | None = None,
              max_request_bytes: int | None = None) -> tuple[list[Piece], list[Request], int]:
        """``InFlight.claim`` for ``f``, against what the store holds, cut into this
        scheduler's requests; see there.  The caller starts the requests (``start``)."""
        cap = min(self.max_request_bytes, max(self.block_size, max_request_bytes or self.max_request_bytes))

        def plan(cid: str, gaps: list[Interval], _prefetch: bool):
            return [(a, b, pieces(a, b, self.block_size)) for a, b in cut_runs(gaps, cap, self.block_size)]

        return self.inflight.claim(f.content_id, wanted, lambda: Ranges(self.store.held(f.content_id)), plan,
                                   prefetch=prefetch, budget=budget, block=self.block_size)

    def start(self, f: RemoteFile, requests: list[Request], *, prefetch: bool = False) -> None:
        for r in requests:
            by_start = {p.start: p for p in r.pieces}
            try:
                run = self.fetcher.fetch(f, r.start, r.end, lambda off, data, m=by_start: self._part(f, m, off, data),
                                         part_size=self.block_size, prefetch=prefetch)
            except Exception as exc:  # could not even start: fail these pieces, not the process
                self._fail(r, exc)
                continue
            run.add_done_callback(lambda fut, r=r: self._ended(f, r, fut))

    # -- on the fetcher's thread -----------------------------------------------------------------
    def _part(self, f: RemoteFile, by_start: dict[int, Piece], offset: int, data: bytes) -> None:
        p = by_start.get(offset)
        if p is None or len(data) != len(p):
            return  # not one of ours (cannot happen under the contract): never stored
        if self.inflight.land(p, data):
            self.writer.put(f, p)
            self._notify()

    def _ended(self, f: RemoteFile, r: Request, run) -> None:
        if run.cancelled():
            exc: BaseException | None = FetchError(f"{f.path}: fetch cancelled")
        else:
            exc = run.exception()
        if exc is not None or any(p.data is None for p in r.pieces):
            self._fail(r, exc if isinstance(exc, FetchError) else
                       FetchError(f"{f.path} [{r.start}, {r.end}): {exc or 'bytes never came'}"))

    def _fail(self, r: Request, exc: BaseException) -> None:
        """Pieces of ``r`` that never came fail (their waiters get ``exc``); those that came
        are the writer's."""
        self.inflight.release([p for p in r.pieces if p.data is None], exc)
        self._notify()

    def _notify(self) -> None:
        if self._on_news is not None:
            try:
                self._on_news()
            except Exception:
                log.exception("on_news listener failed")
