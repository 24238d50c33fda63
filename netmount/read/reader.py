"""Byte ranges of remote files: from the store, else fetched once and stored.

``BlockReader.reply(file, offset, size, exact=...)`` is the whole read path below the FUSE
face and the prefetch policy, top-down, with no call back up:

1. **Held**: the store (``cache/``) holds every byte of the range: the answer is the store's
   segments — (fd, offset) of stored files, checked once per daemon — which the FUSE face
   hands to libfuse to copy or splice in C (``read_buf``): Python never touches the bytes.
2. **Missing**: the bytes to fetch are chosen (``shape.py``: the read's pages when the policy
   says *exact* — a lone tensor, the kernel's read around it; the head of a safetensors file
   for a header read; else whole blocks), less what the store holds and what is already
   being fetched, which is joined (``runs.py``, ``inflight.py``: single-flight, coalescing,
   write-behind).  The answer is cut from the pieces' bytes as they land and from the store.
3. Never a wrong byte: a piece is only ever the fetcher's verified bytes (206, exact
   Content-Range and length); a stored file is CRC32C-checked on first use; a range the
   store held a moment ago but no longer does (evicted, deleted, failed its check) is
   fetched again.

Every byte fetched lands in the store — blocks, exact extents, heads, footers — so a
remount, a view of the same repo and ``verify`` see all of it.  No memory tier: the kernel's
page cache (``keep_cache``) and the store's files are the caches.

Prefetch calls down into ``prefetch`` (blocks, within a budget), ``fetch_exact`` (a range,
exactly) and ``covered``; news of pieces landing and leaving (room in the budget) goes up
only through ``on_news``, given at construction.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from cache import BlockStore, Segment
from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.core.ranges import Ranges
from netmount.core.settings import MAX_REQUEST_BYTES
from netmount.read import shape
from netmount.read.inflight import Piece
from netmount.read.runs import RunScheduler
from netmount.remote.contract import Fetcher
from netmount.remote.hub import RemoteFile

log = logging.getLogger("netmount.reader")

READ_WAIT = 900.0  # seconds a read waits for its pieces: beyond the fetcher's own bounds (retries, stalls)
ATTEMPTS = 3  # a range the store dropped between lookup and use is fetched again, this often
PREPARED_FILES = 256  # files whose prepared spans are remembered


@dataclass(frozen=True)
class ExactRead:
    """The policy's word on a read that misses: fetch its pages exactly, not their blocks;
    ``extent``, if set, is a range (a lone tensor) to fetch exactly first."""

    extent: tuple[int, int] | None = None


class BlockReader:
    def __init__(
        self,
        store: BlockStore,
        fetcher: Fetcher,
        *,
        counters: Counters | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        head_bytes: int = 128 << 10,
        workers: int = 4,
        on_served: Callable[[RemoteFile, int, int], None] | None = None,
        on_run_done: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.block_size = store.block_size
        self.counters = counters or Counters()
        self.on_served = on_served  # (file, offset, length) of every range handed to a program
        self.head_bytes = head_bytes if 0 < head_bytes < self.block_size else 0
        self._prepared: dict[str, Ranges] = {}  # content id -> spans handed to store.prepare
        self._prepared_lock = threading.Lock()
        self.runs = RunScheduler(fetcher, store, self.counters, max_request_bytes=max_request_bytes,
                                 on_news=on_run_done, workers=workers)

    def close(self) -> None:
        """Write what has landed; the fetcher is closed by its owner (after this)."""
        self.runs.close()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every piece fetched has been stored (or has failed); False on timeout."""
        return self.runs.drain(timeout)

    def forget(self, f: RemoteFile) -> None:
        """``f``'s stored bytes were dropped (``netmount verify`` found them wrong): look at
        the store afresh, so the next read fetches them again."""
        self.store.held(f.content_id, refresh=True)

    # -- reading -----------------------------------------------------------------------------
    def reply(self, f: RemoteFile, offset: int, size: int, *, exact: ExactRead | None = None,
              account: bool = True) -> list[Segment]:
        """Segments holding exactly the bytes [offset, offset+size) of ``f`` (short only at
        end of file): the store's files where it holds them, else fetched bytes in memory.
        ``account=False``: netmount's own reads (headers for prefetch), not counted as
        served.  ``exact``: see ``ExactRead`` (None: whole blocks)."""
        end = min(offset + size, f.size)
        if offset >= end:
            return []
        segs = self.store.segments(f.content_id, offset, end - offset, f.size)
        if segs is None:
            segs = self._miss(f, offset, end, exact)
            if account:
                self.counters.add("cache_misses")
        elif account:
            self.counters.add("cache_hits")
        if account:
            self.counters.add("bytes_served", end - offset, path=f.path)
            if self.on_served is not None:
                self.on_served(f, offset, end - offset)
        return segs

    def read(self, f: RemoteFile, offset: int, size: int, *, exact: ExactRead | None = None,
             account: bool = True) -> bytes:
        """``reply``'s bytes, copied: for callers that want bytes (headers, small files)."""
        return join(self.reply(f, offset, size, exact=exact, account=account))

    def read_local(self, f: RemoteFile, offset: int, size: int) -> bytes | None:
        """The bytes if the store holds them all, else None; never fetches (stats)."""
        end = min(offset + size, f.size)
        segs = self.store.segments(f.content_id, offset, end - offset, f.size) if offset < end else []
        return None if segs is None else join(segs)

    def _miss(self, f: RemoteFile, offset: int, end: int, exact: ExactRead | None) -> list[Segment]:
        cid = f.content_id
        for _ in range(ATTEMPTS):
            held = Ranges(self.store.held(cid))
            if not held.contains(offset, end) and not self._coming(f, held, offset, end):
                held = Ranges(self.store.held(cid, refresh=True))  # another daemon may have stored it
            have = Ranges([*held, *self.runs.inflight.spans(cid)])  # here or coming
            if have.contains(offset, end):  # nothing to fetch: join what is coming
                want = [(offset, end)]
            else:
                want = shape.wanted(f.path, f.size, offset, end, self.block_size, have=have, exact=exact,
                                    head_bytes=self.head_bytes)
            joined, requests, _ = self.runs.claim(f, want)
            self.runs.start(f, requests)
            mine = [p for p in [*joined, *(p for r in requests for p in r.pieces)] if p.start < end and p.end > offset]
            for p in sorted(mine, key=lambda p: p.start):
                wait(p)
            segs = self._assemble(f, offset, end, mine)
            if segs is not None:
                return segs
        raise FetchError(f"{f.path} [{offset}, {end}): the cache kept dropping it")

    def _coming(self, f: RemoteFile, held: Ranges, offset: int, end: int) -> bool:
        busy = self.runs.inflight.spans(f.content_id)
        return all(busy.contains(a, b) for a, b in held.missing(offset, end))

    def _assemble(self, f: RemoteFile, offset: int, end: int, pieces: list[Piece]) -> list[Segment] | None:
        """[offset, end) from ``pieces`` (landed) where they cover it, else from the store;
        None if the store no longer holds a part it held when claimed."""
        out: list[Segment] = []
        pos = offset
        for p in sorted(pieces, key=lambda p: p.start):
            if p.end <= pos:
                continue
            if p.start > pos:
                segs = self.store.segments(f.content_id, pos, p.start - pos, f.size)
                if segs is None:
                    return None
                out.extend(segs)
                pos = p.start
            stop = min(end, p.end)
            out.append(Segment(-1, pos - p.start, stop - pos, p.data))
            pos = stop
        if pos < end:
            segs = self.store.segments(f.content_id, pos, end - pos, f.size)
            if segs is None:
                return None
            out.extend(segs)
        return out

    # -- ahead of the reader -------------------------------------------------------------------
    def prefetch(self, f: RemoteFile, indices: Iterable[int], budget: int,
                 max_request_bytes: int | None = None) -> tuple[int, int]:
        """Start fetching the blocks ``indices`` (in the order given) — what of them the
        store does not hold and nothing fetches yet — while no more than ``budget`` bytes are
        in flight in all (demand reads included: never held back, they only leave less room).
        ``max_request_bytes`` (at least a block, at most the reader's cap) cuts them into
        smaller requests, which go out in parallel.  Held blocks among the wanted are
        checked and read into the page cache ahead instead (no network, no budget).
        Returns (blocks started, blocks left for lack of room): call again on the next news."""
        spans = block_runs(indices, self.block_size, f.size)
        if not spans:
            return 0, 0
        held = Ranges(self.store.held(f.content_id))
        ready = [r for a, b in spans for r in held.intersect(a, b)]
        if ready:
            self._prepare(f, ready)
        if sum(b - a for a, b in ready) == sum(b - a for a, b in spans):
            return 0, 0
        _joined, requests, left = self.runs.claim(f, spans, prefetch=True, budget=budget,
                                                  max_request_bytes=max_request_bytes)
        self.runs.start(f, requests, prefetch=True)
        started = sum(r.end - r.start for r in requests)
        if started:
            self.counters.add("prefetch_blocks", -(-started // self.block_size))
        return -(-started // self.block_size), -(-left // self.block_size)

    def _prepare(self, f: RemoteFile, spans: list[tuple[int, int]]) -> None:
        """Ask the store to check held spans ahead of a reader (and read them into the page
        cache), each span once: the pump asks again after every read."""
        with self._prepared_lock:
            done = self._prepared.pop(f.content_id, None) or Ranges()
            self._prepared[f.content_id] = done  # (most recent last)
            while len(self._prepared) > PREPARED_FILES:
                self._prepared.pop(next(iter(self._prepared)))
            new = [g for a, b in spans for g in done.missing(a, b)]
            for a, b in new:
                done.add(a, b)
        if new:
            self.store.prepare(f.content_id, new, f.size)

    def fetch_exact(self, f: RemoteFile, start: int, end: int) -> None:
        """Start fetching [start, end) of ``f`` exactly (widened to pages), less what the
        store holds or is coming; returns at once."""
        want = [shape.pages(start, end, f.size)]
        _joined, requests, _ = self.runs.claim(f, want)
        self.runs.start(f, requests)

    def covered(self, f: RemoteFile, start: int, end: int) -> bool:
        """Every byte of [start, end) is held by the store or being fetched."""
        held = Ranges(self.store.held(f.content_id))
        return held.contains(start, end) or self._coming(f, held, start, end)


def block_runs(indices: Iterable[int], block_size: int, size: int) -> list[tuple[int, int]]:
    """Byte spans of ``indices`` (in the order given, each once) with consecutive blocks
    joined: the pump hands the rest of a file after every read, so per-call work must grow
    with the runs, not the blocks."""
    runs: list[list[int]] = []
    seen = set()
    for i in indices:
        if i in seen or not 0 <= i * block_size < size:
            continue
        seen.add(i)
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(a * block_size, min(size, b * block_size)) for a, b in runs]


def wait(p: Piece) -> bytes:
    """The piece's bytes, once landed; its failure as ``FetchError``."""
    try:
        return p.future.result(READ_WAIT)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(f"bytes [{p.start}, {p.end}) did not come in {READ_WAIT:.0f}s") from None
    except Exception as exc:
        raise FetchError(f"bytes [{p.start}, {p.end}): {exc}") from exc


def join(segs: list[Segment]) -> bytes:
    """The bytes of ``segs`` in one ``bytes`` (stored files read with ``pread``)."""
    parts = []
    for s in segs:
        if s.data is not None:
            parts.append(memoryview(s.data)[s.pos : s.pos + s.length])
            continue
        got = os.pread(s.fd, s.length, s.pos)
        if len(got) != s.length:
            raise FetchError(f"a stored file was cut short under the mount ({len(got)} of {s.length} bytes)")
        parts.append(got)
    if len(parts) == 1 and isinstance(parts[0], bytes):
        return parts[0]
    return b"".join(parts)


def cut(segs: list[Segment], skip: int, length: int) -> list[Segment]:
    """The segments of bytes [skip, skip + length) of what ``segs`` hold, in order."""
    out = []
    for s in segs:
        if skip >= s.length:
            skip -= s.length
            continue
        n = min(length, s.length - skip)
        if n <= 0:
            break
        out.append(Segment(s.fd, s.pos + skip, n, s.data))
        length -= n
        skip = 0
    return out
