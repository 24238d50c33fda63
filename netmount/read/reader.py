"""Byte ranges of remote files, served from blocks: memory -> block store -> network.

The read path in one place:
- the requested range is mapped to fixed-size blocks (``blocks.py``);
- blocks come from a small in-memory LRU (the kernel asks in 128 KiB pieces, so one
  1 MiB block is read about eight times in a row), then from the block store;
- missing blocks are fetched single-flight (two readers of a block cause one download)
  and coalesced: adjacent missing blocks become one ranged GET of at most
  ``max_request_bytes``, and the runs go out in parallel;
- a fetched block goes to the store only complete and of the expected length, and a
  stored block of the wrong length is treated as missing — never served.
- prefetch of blocks already in the store reads them into the memory LRU ahead of the
  reader, on a few threads of its own (at most ``lift_blocks`` past the read), so a warm
  sequential reader finds its next blocks in memory instead of waiting on the disk once
  per block (a warm ``cat`` spent half its time there);
- a missing read the prefetcher calls a lone read (``exact``: a lone tensor of a shard
  no loader is reading, and the kernel's reads around it) is fetched as an *extent*,
  exactly its pages, kept in memory (extents.py); whole blocks inside go to the store;
- a read inside the first 128 KiB of a safetensors file whose first block is not local
  (``safe_open``'s header read) fetches just those 128 KiB, kept in a small memory map:
  with 1 MiB blocks a ~10 KB header would otherwise cost 1 MiB.
Completion work (splitting, writing to the store) runs on a small thread pool so the
HTTP loop never blocks on disk.

Across processes (two mounts sharing one cache dir), single-flight goes through the
store's ``block_locks()`` (cache/locks.py): a run first takes the stripe locks of its
blocks — on a thread of its own, never the caller's — then looks in the store again,
fetches only the blocks still missing, stores them, and lets go.  A store without
locks (memory) skips all that.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from typing import Callable, Iterable

from cache import BlockStore

from netmount.core.blocks import block_range, block_span, coalesce
from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.read.extents import Extents
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.reader")

# fetch(file, start, end, *, prefetch=False, on_part=None, part_size=0) -> Future[bytes].
# ``prefetch=True`` marks a request no reader waits for yet, which the fetcher may hold back
# so that reads never queue behind it.  ``on_part(offset, data)``, if the fetcher supports
# it, is called (on any thread) with each ``part_size`` piece of the body as it arrives, from
# a response already checked: a reader waiting for the first block of a 4 MiB request gets
# it when its bytes are in, not when the whole request is.
Fetch = Callable[..., concurrent.futures.Future]


class BlockReader:
    def __init__(
        self,
        store: BlockStore,
        fetch: Fetch,
        *,
        max_request_bytes: int = 16 << 20,
        memory_bytes: int = 64 << 20,
        counters: Counters | None = None,
        workers: int = 4,
        on_served: Callable[[RemoteFile, int, int], None] | None = None,
        head_bytes: int = 128 << 10,
        head_memory: int = 16 << 20,
        disk_workers: int = 4,
        extent_memory: int = 32 << 20,
    ) -> None:
        self.store = store
        self.block_size = store.block_size
        self._fetch = fetch
        self.max_run = max(1, max_request_bytes // self.block_size)
        self.counters = counters or Counters()
        self.on_served = on_served  # (file, offset, length) of every range handed to a program
        self._lock = threading.Lock()
        self._prefetch_lock = threading.Lock()
        self._inflight: dict[tuple[str, int], concurrent.futures.Future] = {}
        self._memory: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._memory_blocks = max(2, memory_bytes // self.block_size)
        # stored blocks being read into memory ahead of the reader (prefetch of cached blocks)
        self._lifting: dict[tuple[str, int], concurrent.futures.Future] = {}
        self.lift_blocks = max(1, self._memory_blocks // 4)
        self._advised: OrderedDict[tuple[str, int], None] = OrderedDict()  # will_need sent
        # exact byte ranges for lone reads (extents.py); ``exact(f, offset, size)``, set by
        # the prefetcher, says which missing reads to fetch that way instead of in blocks
        self.extents = Extents(lambda f, start, end: self._fetch(f, start, end), extent_memory)
        self.exact: Callable[[RemoteFile, int, int], bool] | None = None
        self._disk_pool = concurrent.futures.ThreadPoolExecutor(disk_workers, thread_name_prefix="netmount-disk")
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="netmount-store")
        self._inflight_bytes = 0  # bytes of runs started and not yet finished (demand and prefetch)
        self.max_inflight_bytes = 0  # the most ever in flight at once (stats, tests)
        self._cached_sets: dict[str, set[int]] = {}  # content id -> blocks known stored
        # called (no arguments, on a store thread) after every run has finished and its bytes
        # left the in-flight count: the prefetcher's cue to start more
        self.on_run_done: Callable[[], None] | None = None
        # Safetensors headers: the first read of a shard is its header (8 + N bytes, often
        # ~10 KB).  Fetching the whole first block for it (1 MiB) is most of what a
        # ``safe_open`` costs, so the first ``head_bytes`` (the kernel's largest read) are
        # fetched alone and kept here, outside the store (which holds only whole blocks).
        self.head_bytes = head_bytes if 0 < head_bytes < self.block_size else 0
        self._heads: OrderedDict[str, bytes] = OrderedDict()
        self._heads_max = max(1, head_memory // max(1, self.head_bytes))
        self._head_inflight: dict[str, concurrent.futures.Future] = {}
        try:
            self._locks = store.block_locks()
        except Exception as exc:
            log.warning("no cross-process single-flight (%s: %s)", type(exc).__name__, exc)
            self._locks = None
        self._lock_pool = (concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="netmount-lock")
                           if self._locks is not None else None)

    def close(self) -> None:
        if self._lock_pool is not None:
            self._lock_pool.shutdown(wait=True, cancel_futures=False)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._disk_pool.shutdown(wait=True, cancel_futures=True)

    # -- reading -----------------------------------------------------------------------
    def read(self, f: RemoteFile, offset: int, size: int, account: bool = True, exact: bool = True) -> bytes:
        """Exactly the bytes [offset, offset+size) of ``f`` (short only at end of file).

        ``account=False`` is for netmount's own reads (headers for prefetch): they are not
        counted as bytes served to programs.  ``exact=False`` never fetches an extent
        (reads meant to fill the block cache: ``netmount prefetch``).
        """
        indices = block_range(offset, size, f.size, self.block_size)
        if not indices:
            return b""
        blocks: dict[int, bytes] = {}
        missing = []
        for i in indices:
            data = self._lookup(f, i)
            if data is None:
                missing.append(i)
            else:
                blocks[i] = data
        if missing == [0] and len(indices) == 1 and offset + size <= self.head_bytes:
            head = self._head(f)
            if head is not None:  # a header read: served from the head, block 0 not fetched
                return self._served(f, offset, head[offset : offset + size], account)
        end = offset + min(size, f.size - offset)
        if account:
            self.counters.add("cache_hits", len(blocks))
            if missing:
                self.counters.add("cache_misses", len(missing))
        if missing and exact:  # (not for reads meant to fill the block cache)
            got = self.extents.get(f, offset, end)
            if got is None and self.exact is not None and self.exact(f, offset, size):
                self.extents.fetch(f, offset, end, on_done=self._extent_in)
                got = self.extents.get(f, offset, end)
            if got is not None:
                return self._served(f, offset, got, account)
        if missing:
            for i, fut in self.ensure(f, missing).items():
                blocks[i] = fut.result()
        if len(indices) == 1:  # the common case: a slice of one block
            base = indices[0] * self.block_size
            out = blocks[indices[0]][offset - base : end - base]
        else:  # join only the parts asked for, not whole blocks
            parts = []
            for i in indices:
                base = i * self.block_size
                parts.append(memoryview(blocks[i])[max(offset, base) - base : min(end, base + self.block_size) - base])
            out = b"".join(parts)
        return self._served(f, offset, out, account)

    def _served(self, f: RemoteFile, offset: int, out: bytes, account: bool) -> bytes:
        if account:
            self.counters.add("bytes_served", len(out), path=f.path)
            if self.on_served is not None:
                self.on_served(f, offset, len(out))
        return out

    def prefetch_extent(self, f: RemoteFile, start: int, end: int) -> None:
        """Fetch exactly [start, end) of ``f`` (widened to pages) as an extent, leaving out
        a head and a tail already in blocks (cached or downloading); for lone tensors."""
        bs = self.block_size
        known = self._known_cached(f)
        with self._lock:
            def have(i):
                key = (f.content_id, i)
                return i in known or key in self._memory or key in self._inflight
            while start < end and have(start // bs):
                start = (start // bs + 1) * bs
            while end > start and have((end - 1) // bs):
                end = (end - 1) // bs * bs
        if start < end:
            self.extents.fetch(f, start, end, on_done=self._extent_in, anchor=True)

    def _extent_in(self, f: RemoteFile, start: int, data: bytes) -> None:
        """Whole blocks inside an extent that just came in go to the store as well."""
        bs = self.block_size
        first = -(-start // bs)
        for i in range(first, (start + len(data)) // bs + 1):
            lo, hi = block_span(i, bs, f.size) if i * bs < f.size else (0, 0)
            if hi <= lo or lo < start or hi > start + len(data):
                continue
            try:
                self._pool.submit(self._store_whole, f, i, data[lo - start : hi - start])
            except RuntimeError:  # shutting down
                return

    def _store_whole(self, f: RemoteFile, i: int, data: bytes) -> None:
        with self._lock:
            if (f.content_id, i) in self._inflight:
                return
        if i not in self._known_cached(f):
            self._remember((f.content_id, i), data)
            self.store.put(f.content_id, i, data)
            self._mark_known(f, i)

    def prefetch(self, f: RemoteFile, indices: Iterable[int], budget: int,
                 max_request_bytes: int | None = None) -> tuple[int, int]:
        """Start fetching ``indices`` (in the order given) that are not cached, in memory or
        already downloading, as long as no more than ``budget`` bytes are in flight in all
        (demand reads included: they are never held back, so they only leave less room).

        ``max_request_bytes`` (at least one block, at most the reader's cap) splits the
        blocks into smaller requests, which go out in parallel.

        Blocks among the first ``lift_blocks`` of ``indices`` that are in the store but not in
        memory are read into memory in the background (no network, no budget).

        Returns ``(started, left)``: blocks started now, and blocks still wanted but not
        started for lack of room.  Call again when a run finishes (``on_run_done``)."""
        with self._prefetch_lock:  # check and start as one step: the budget holds across callers
            return self._prefetch(f, indices, budget, max_request_bytes)

    def _prefetch(self, f, indices, budget, max_request_bytes) -> tuple[int, int]:
        known = self._known_cached(f)
        indices = list(dict.fromkeys(indices))
        cid = f.content_id
        lift: list[tuple[int, concurrent.futures.Future]] = []
        advise: list[int] = []
        with self._lock:
            todo = [i for i in indices if i not in known
                    and (cid, i) not in self._memory and (cid, i) not in self._inflight]
            room = budget - self._inflight_bytes
            for n, i in enumerate(indices):
                key = (cid, i)
                if i not in known or key in self._memory or key in self._lifting:
                    continue
                if n < self.lift_blocks:
                    self._lifting[key] = fut = concurrent.futures.Future()
                    lift.append((i, fut))
                elif key not in self._advised:
                    self._advised[key] = None
                    advise.append(i)
            while len(self._advised) > 4 * self._memory_blocks:
                self._advised.popitem(last=False)
        if advise:  # the rest of what is wanted: into the page cache, by the kernel
            try:  # (on the disk pool: a WILLNEED may block while the kernel queues the reads)
                self._disk_pool.submit(self.store.will_need, cid, advise)
            except RuntimeError:  # shutting down
                pass
        for i, fut in lift:
            try:
                self._disk_pool.submit(self._lift, f, i, fut)
            except RuntimeError:  # shutting down
                self._lifted(f, i, fut, None)
        take = []
        for i in todo:
            lo, hi = block_span(i, self.block_size, f.size)
            if hi - lo > room:
                break
            room -= hi - lo
            take.append(i)
        if take:
            self.counters.add("prefetch_blocks", len(take))
            run = self.max_run if max_request_bytes is None else max(1, min(self.max_run, max_request_bytes // self.block_size))
            self.ensure(f, take, max_run=run, prefetch=True)
        return len(take), len(todo) - len(take)

    def ensure(self, f: RemoteFile, indices: Iterable[int], max_run: int | None = None,
               prefetch: bool = False) -> dict[int, concurrent.futures.Future]:
        """Futures for blocks of ``f``: joined if already downloading, else fetched now.

        Also the prefetch entry point: call it and do not wait.
        """
        futures: dict[int, concurrent.futures.Future] = {}
        owned: list[int] = []
        with self._lock:
            for i in sorted(set(indices)):
                key = (f.content_id, i)
                fut = self._inflight.get(key)
                if fut is None:
                    fut = concurrent.futures.Future()
                    data = self._memory.get(key)
                    if data is not None:
                        fut.set_result(data)
                    else:
                        self._inflight[key] = fut
                        owned.append(i)
                futures[i] = fut
        for first, last in coalesce(owned, max_run or self.max_run):
            self._start_run(f, first, last, futures, prefetch)
        return futures

    # -- internals -----------------------------------------------------------------------
    def _lookup(self, f: RemoteFile, i: int) -> bytes | None:
        key = (f.content_id, i)
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                return data
            lifting = self._lifting.get(key)
        if lifting is not None:  # being read into memory already: wait for that read
            data = lifting.result()
            if data is not None:
                return data
        data = self._stored(f, i)
        if data is not None:
            self._remember(key, data)
        return data

    def _stored(self, f: RemoteFile, i: int) -> bytes | None:
        """Block ``i`` from the store if it is there and of the right length."""
        data = self.store.get(f.content_id, i)
        if data is None:
            return None
        start, end = block_span(i, self.block_size, f.size)
        if len(data) != end - start:
            log.warning("cached block %s:%d has %d bytes, expected %d: refetching",
                        f.content_id[:12], i, len(data), end - start)
            return None
        return data

    def _lift(self, f: RemoteFile, i: int, fut: concurrent.futures.Future) -> None:
        """Read stored block ``i`` into memory ahead of the reader (disk pool)."""
        data = None
        try:
            data = self._stored(f, i)
        except Exception:  # the store is SafeBlockStore in the daemon; be safe anyway
            log.exception("reading block %d of %s from the store failed", i, f.path)
        finally:
            self._lifted(f, i, fut, data)

    def _lifted(self, f: RemoteFile, i: int, fut: concurrent.futures.Future, data: bytes | None) -> None:
        key = (f.content_id, i)
        if data is not None:
            self._remember(key, data)  # in memory before the waiters look again
        else:  # evicted since we looked (or unreadable): fetch it like any missing block
            known = self._cached_sets.get(f.content_id)
            if known is not None:
                known.discard(i)
        with self._lock:
            self._lifting.pop(key, None)
        fut.set_result(data)

    def _head(self, f: RemoteFile) -> bytes | None:
        """The first ``head_bytes`` of a safetensors file whose block 0 is neither cached nor
        downloading (else None: the block path is as cheap); single-flight per file."""
        n = self.head_bytes
        if not n or f.size <= n or not f.path.endswith(".safetensors") or 0 in self._known_cached(f):
            return None
        with self._lock:
            data = self._heads.get(f.content_id)
            if data is not None:
                self._heads.move_to_end(f.content_id)
                return data
            if (f.content_id, 0) in self._inflight:
                return None
            fut = self._head_inflight.get(f.content_id)
            owner = fut is None
            if owner:
                fut = concurrent.futures.Future()
                self._head_inflight[f.content_id] = fut
        if owner:
            try:
                data = self._fetch(f, 0, n).result()
                if len(data) != n:
                    raise FetchError(f"{f.path}: head came back with {len(data)} of {n} bytes")
                with self._lock:
                    self._heads[f.content_id] = data
                    while len(self._heads) > self._heads_max:
                        self._heads.popitem(last=False)
                fut.set_result(data)
            except BaseException as exc:
                fut.set_exception(exc if isinstance(exc, FetchError) else FetchError(f"{f.path}: {exc}"))
            finally:
                with self._lock:
                    self._head_inflight.pop(f.content_id, None)
        return fut.result()

    def local_head(self, f: RemoteFile) -> bytes | None:
        """The head of ``f`` if it is in memory (see ``head_bytes``); never fetches."""
        with self._lock:
            return self._heads.get(f.content_id)

    def _known_cached(self, f: RemoteFile) -> set[int]:
        """Blocks of ``f`` known to be in the store: read once from it, then kept up to date
        by this reader's own puts (another daemon's puts or evictions only cost a refetch
        or a skipped prefetch, never a wrong byte)."""
        known = self._cached_sets.get(f.content_id)
        if known is None:
            known = set(self.store.cached_indices(f.content_id))
            self._cached_sets[f.content_id] = known
        return known

    def _remember(self, key: tuple[str, int], data: bytes) -> None:
        with self._lock:
            self._memory[key] = data
            self._memory.move_to_end(key)
            while len(self._memory) > self._memory_blocks:
                self._memory.popitem(last=False)

    def _start_run(self, f: RemoteFile, first: int, last: int, futures, prefetch: bool) -> None:
        start = block_span(first, self.block_size, f.size)[0]
        end = block_span(last, self.block_size, f.size)[1]
        with self._lock:
            self._inflight_bytes += end - start
            self.max_inflight_bytes = max(self.max_inflight_bytes, self._inflight_bytes)
        if self._lock_pool is not None:
            try:
                self._lock_pool.submit(self._locked_run, f, first, last, futures, prefetch)
                return
            except RuntimeError:  # shutting down: fetch without the cross-process lock
                pass
        self._fetch_run(f, first, last, futures, prefetch)

    def _fetch_run(self, f: RemoteFile, first: int, last: int, futures, prefetch: bool, done=None) -> None:
        start = block_span(first, self.block_size, f.size)[0]
        end = block_span(last, self.block_size, f.size)[1]
        try:
            run = self._fetch(f, start, end, prefetch=prefetch, part_size=self.block_size,
                              on_part=lambda offset, data: self._part(f, offset, data, futures))
        except Exception as exc:  # could not even start: fail these blocks, not the process
            try:
                self._finish(f, first, last, futures, None, exc)
            finally:
                if done is not None:
                    done()
            return

        def complete(r):
            try:
                self._complete(f, first, last, futures, r)
            finally:
                if done is not None:
                    done()

        def hand_over(r):
            try:
                self._pool.submit(complete, r)
            except RuntimeError:  # the reader is closing: finish here
                complete(r)

        run.add_done_callback(hand_over)

    def _part(self, f: RemoteFile, offset: int, data: bytes, futures) -> None:
        """One block of a run's body arrived (on the fetcher's thread, before the run's
        future resolves): to memory and to its readers now."""
        i = offset // self.block_size
        lo, hi = block_span(i, self.block_size, f.size)
        fut = futures.get(i)
        if fut is not None and offset == lo and len(data) == hi - lo:
            self._deliver(f, i, data, fut)

    def _locked_run(self, f: RemoteFile, first: int, last: int, futures, prefetch: bool) -> None:
        """The blocks' stripe locks, then the store again, then fetch what is still missing;
        the locks go once every fetched block is stored (or has failed)."""
        try:
            held = self._locks.hold(f.content_id, range(first, last + 1))
        except Exception as exc:  # unusable lock files: duplicate fetches, never wrong bytes
            log.warning("block locks unavailable (%s: %s); fetching without", type(exc).__name__, exc)
            held = None
        try:
            missing = []
            found = 0
            for i in range(first, last + 1):
                data = self.store.get(f.content_id, i)
                lo, hi = block_span(i, self.block_size, f.size)
                if data is not None and len(data) == hi - lo:  # another process fetched it
                    self._deliver(f, i, data, futures[i])
                    self._mark_known(f, i)
                    with self._lock:
                        self._inflight.pop((f.content_id, i), None)
                        self._inflight_bytes -= hi - lo
                    found += 1
                else:
                    missing.append(i)
            if found:
                self.counters.add("shared_cache_hits", found)
            runs = coalesce(missing, self.max_run)
        except BaseException as exc:
            if held is not None:
                held.release()
            for i in range(first, last + 1):
                if not futures[i].done():
                    futures[i].set_exception(FetchError(f"{f.path}: block {i}: {exc}"))
                    with self._lock:
                        self._inflight.pop((f.content_id, i), None)
                        lo, hi = block_span(i, self.block_size, f.size)
                        self._inflight_bytes -= hi - lo
            log.exception("%s: run [%d, %d] failed before fetching", f.path, first, last)
            return
        if not runs:
            if held is not None:
                held.release()
            self._run_done()
            return
        left = [len(runs)]
        left_lock = threading.Lock()

        def one_done() -> None:
            with left_lock:
                left[0] -= 1
                last_one = left[0] == 0
            if last_one and held is not None:
                held.release()

        for a, b in runs:
            self._fetch_run(f, a, b, futures, prefetch, one_done)

    def _complete(self, f, first, last, futures, run) -> None:
        exc = run.exception()
        body = None if exc else run.result()
        if isinstance(body, int):  # streamed: every block went through ``_part`` already
            body = b""
        self._finish(f, first, last, futures, body, exc)

    def _finish(self, f, first, last, futures, body, exc) -> None:
        """Wake every waiter of the run, store its blocks, then release its budget.  A
        block stays in ``_inflight`` (its future done) until stored, so a prefetch in the
        meantime neither refetches it nor misses it in the store.  Blocks delivered early
        (``_part``) are stored even if the rest of the run failed: their bytes were right."""
        start = block_span(first, self.block_size, f.size)[0]
        end = block_span(last, self.block_size, f.size)[1]
        fetched, failed = [], []
        for i in range(first, last + 1):
            fut = futures[i]
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fetched.append((i, fut.result()))  # streamed in already (``_part``)
                continue
            if body is not None:
                lo, hi = block_span(i, self.block_size, f.size)
                data = body[lo - start : hi - start]
                if len(data) == hi - lo:
                    self._deliver(f, i, data, fut)
                    fetched.append((i, data))
                    continue
                exc = FetchError(f"{f.path}: block {i} came back short")
            error = exc if isinstance(exc, FetchError) else FetchError(f"{f.path}: {exc}")
            try:
                fut.set_exception(error)
            except concurrent.futures.InvalidStateError:  # delivered meanwhile: keep it
                fetched.append((i, fut.result()))
                continue
            failed.append(i)
        with self._lock:
            for i in failed:
                self._inflight.pop((f.content_id, i), None)
        try:
            for i, data in fetched:
                try:
                    self.store.put(f.content_id, i, data)
                    self._mark_known(f, i)
                finally:
                    with self._lock:
                        self._inflight.pop((f.content_id, i), None)
        finally:
            # the run leaves the budget once stored: prefetch cannot outrun the disk (and
            # fill memory with blocks waiting to be written) by more than its budget
            with self._lock:
                self._inflight_bytes -= end - start
            self._run_done()

    def _deliver(self, f: RemoteFile, i: int, data: bytes, fut) -> None:
        """A complete block: to memory, then to its waiters (once: a block delivered early
        by ``_part`` is not delivered again at the run's end)."""
        self._remember((f.content_id, i), data)
        try:
            fut.set_result(data)
        except concurrent.futures.InvalidStateError:
            pass

    def _mark_known(self, f: RemoteFile, i: int) -> None:
        known = self._cached_sets.get(f.content_id)
        if known is not None:
            known.add(i)

    def _run_done(self) -> None:
        hook = self.on_run_done
        if hook is not None:
            try:
                hook()
            except Exception:
                log.exception("on_run_done hook failed")
