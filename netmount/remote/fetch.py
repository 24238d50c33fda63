"""``RangeFetcher``: the fetch contract (``remote/contract.py``) over HTTP range requests.

One fetcher serves files of any repo on its endpoint: a file names its repo and commit
(``RemoteFile.repo``, a ``RepoRef``; files that name none are of the fetcher's own repo, if
it was given one).  It is put together from parts with one job each:

- ``lanes.py``: the fetcher's threads, one request at a time each, demand requests first;
- ``links.py``: blocking keep-alive connections per thread and host, every request under its
  stall bounds, all cut at once by ``abort`` (``deadlines.py``: the whole-request bound);
- ``pieces.py``: a range a reader waits for goes out as parallel sub-requests, whose bodies
  are read into the contract's pieces' own buffers, however they cut them;
- ``proxy_route.py``: the cache proxy first while its breaker lets it, the origin on any fault;
- ``ranged.py`` with ``resolver.py``: verified range requests to the origin (206, exact
  Content-Range, exact length; retries, backoff, stall bounds) at the file's data URL,
  resolved once per file and Authorization only to the endpoint's host.

Threads, not an event loop (issue 21): a body is read with ``readinto`` straight into the
buffer handed to ``on_part``, in C with the GIL released; aiohttp spent about twice the CPU
per byte in callbacks on its loop (``links.py`` has the numbers).  The resolver's HEADs run on
the same threads (a thread resolves what it needs; one resolve per file), so the daemon has
no event loop and no aiohttp to import (0.1-0.3 s of CPU at start, measured here).

Connections: ``prefetch`` requests run on at most ``prefetch_connections`` of the threads, so a
read that waits never queues behind a full set of multi-MiB prefetch requests.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading

from netmount.core import settings
from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.remote.buffers import Buffers
from netmount.remote.contract import OnPart
from netmount.remote.hub import RemoteFile, RepoRef
from netmount.remote.lanes import Lanes
from netmount.remote.links import Links
from netmount.remote.pieces import Abandoned, Pieces, split_cuts
from netmount.remote.proxy_route import ProxyRoute
from netmount.remote.ranged import FetchSettings, RangeRequests
from netmount.remote.resolver import Resolver

log = logging.getLogger("netmount.fetch")

AHEAD = 4  # data URLs resolved at once by ``resolve_ahead``
ABORT_WAIT = 10.0  # seconds ``abort`` waits for the requests it failed to end


class RangeFetcher:
    def __init__(self, endpoint: str, repo_id: str | None = None, sha: str | None = None,
                 token: str | None = None, *, connections: int = settings.DEFAULT_CONNECTIONS,
                 max_retries: int | None = None, timeout: float | None = None, backoff: float | None = None,
                 max_backoff: float = 8.0, counters: Counters | None = None, proxy: str | None = None,
                 repo_type: str = "model") -> None:
        """``repo_id``/``sha``/``repo_type``: the repo of files that name none (a fetcher for
        one repo); without them every file must name its own."""
        self.repo = RepoRef(repo_id, repo_type, sha or "") if repo_id else None
        self.counters = counters or Counters()
        self.connections = connections
        self.prefetch_connections = max(1, connections - max(1, connections // 4))
        self.settings = FetchSettings(timeout, max_retries, backoff, max_backoff)
        self.links = Links()
        self.resolver = Resolver(endpoint, token, self.counters, self.links, self.settings)
        self.origin = RangeRequests(self.resolver, self.links, self.settings, self.counters)
        self.proxy = ProxyRoute(proxy, token, self.links, self.settings, self.counters) if proxy else None
        self._lanes = Lanes(connections, self.prefetch_connections)
        self._buffers = Buffers()
        self._closed = False

    # -- lifetime ----------------------------------------------------------------------------
    def start(self) -> "RangeFetcher":
        """Start the threads and return at once."""
        self.links.start()
        self._lanes.start()
        return self

    def abort(self) -> None:
        """Fail every request in flight now (their sockets are cut, their back-offs end), and
        every later one at once (nothing is retried any more): a read blocked on a stalled
        server gets EIO when the daemon is told to stop.  Waits ``ABORT_WAIT`` at most for
        the requests to end.  Safe to call twice, from any thread."""
        self.links.abort()
        if not self._lanes.idle(ABORT_WAIT):
            log.warning("fetches still running %g s after the fetcher was aborted", ABORT_WAIT)

    def close(self) -> None:
        """``abort()``, then end the threads and close the connections (bounded).  Safe to
        call twice."""
        if self._closed:
            return
        self._closed = True
        self.abort()
        if not self._lanes.close(ABORT_WAIT):
            log.warning("fetch threads still running %g s after the fetcher closed", ABORT_WAIT)
        self.links.close()

    @property
    def stopping(self) -> bool:
        return self.links.stopping.is_set()

    # -- the fetch contract (remote/contract.py), from any thread ---------------------------
    def fetch(self, file: RemoteFile, start: int, end: int, on_part: OnPart, *,
              part_size: int = 0, prefetch: bool = False) -> concurrent.futures.Future:
        """Bytes ``[start, end)`` of ``file`` to ``on_part`` in the contract's pieces (on a
        fetch thread: keep it short); the future's result is ``end - start``.  ``prefetch``
        requests use at most ``prefetch_connections`` of the threads."""
        if not 0 <= start < end <= file.size:
            raise FetchError(f"bad range [{start}, {end}) of {file.path} ({file.size} bytes)")
        ref = self._ref(file)
        if self.stopping:
            raise FetchError(f"{file.path} [{start}, {end}): the fetcher is stopping")
        cuts = split_cuts(start, end, part_size, prefetch)
        run = Run(len(cuts) - 1, Pieces(start, end, part_size, on_part, self._buffers))
        for a, b in zip(cuts, cuts[1:]):
            self._lanes.submit(lambda a=a, b=b: self._one(run, ref, file.path, a, b, file.size), prefetch)
        return run.future

    def _ref(self, file: RemoteFile) -> RepoRef:
        ref = file.repo or self.repo
        if ref is None or not ref.sha:
            raise FetchError(f"{file.path}: names no repo and commit, and the fetcher has none")
        return ref

    def resolve_ahead(self, files) -> None:
        """Resolve these files' data URLs in the background (``AHEAD`` at a time, as prefetch
        jobs), so their first read skips the round trip; failures are left for that read to
        meet.  Not while the cache proxy is in use: its route has no resolve step."""
        if self.stopping or self.proxy is not None and self.proxy.in_use():
            return
        wanted = [(self._ref(f), f.path) for f in files]
        for n in range(min(AHEAD, len(wanted))):
            self._lanes.submit(lambda share=wanted[n::AHEAD]: self._resolve_all(share), prefetch=True)

    def _resolve_all(self, wanted: list[tuple[RepoRef, str]]) -> None:
        for ref, path in wanted:
            if self.stopping:
                return
            try:
                self.resolver.target(ref, path)
            except Exception as exc:  # the read that needs it will retry and report
                log.debug("resolving %s ahead failed: %s", path, exc)

    def status(self) -> dict | None:
        """The proxy's part of the stats (None without a proxy); from any thread."""
        return self.proxy.status() if self.proxy is not None else None

    # -- on a fetch thread ------------------------------------------------------------------
    def _one(self, run: "Run", ref: RepoRef, path: str, start: int, end: int, size: int) -> None:
        """One sub-request ``[start, end)``, through the proxy or the origin, into the run."""
        try:
            if self.stopping:
                raise FetchError(f"{path} [{start}, {end}): the fetcher is stopping")
            if self.proxy is None or not self.proxy.fetch(ref, path, start, end, size, run.pieces):
                self.origin.fetch(ref, path, start, end, size, run.pieces)
        except FetchError as exc:
            run.ended(exc)
        except Abandoned:  # another sub-request failed the run
            run.ended(None)
        except Exception as exc:  # a bug (in on_part, say): still a FetchError, logged in full
            if not self.stopping:
                log.exception("fetching %s [%d, %d) failed unexpectedly", path, start, end)
            run.ended(FetchError(f"{path} [{start}, {end}): {type(exc).__name__}: {exc}"))
        else:
            run.ended(None)


class Run:
    """One fetch: its sub-requests' ends -> the contract's future.  The first failure fails it
    at once and closes its pieces (nothing more goes to ``on_part``); the others stop at their
    next piece."""

    def __init__(self, parts: int, pieces: Pieces) -> None:
        self.pieces, self._left = pieces, parts
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._failed = False

    def ended(self, error: FetchError | None) -> None:
        with self._lock:
            self._left -= 1
            fail = error is not None and not self._failed
            self._failed |= fail
            done = self._left == 0 and not self._failed
        if fail:
            self.pieces.close()
            self.future.set_exception(error)
        elif done:
            self.future.set_result(self.pieces.end - self.pieces.start)
