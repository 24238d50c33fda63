"""``RangeFetcher``: the fetch contract (``remote/contract.py``) over HTTP range requests.

One fetcher serves files of any repo on its endpoint: a file names its repo and commit
(``RemoteFile.repo``, a ``RepoRef``; files that name none are of the fetcher's own repo, if
it was given one).  It is put together from parts with one job each:

- ``client.py``: the one aiohttp module — the loop thread, the session, its lifetime;
- ``pieces.py``: a range a reader waits for goes out as parallel sub-requests, handed out as
  the contract's pieces however they cut them;
- ``proxy_route.py``: the cache proxy first while its breaker lets it, the origin on any fault;
- ``ranged.py`` with ``resolver.py``: verified range requests to the origin (206, exact
  Content-Range, exact length; retries, backoff, stall bounds) at the file's data URL,
  resolved once per file and Authorization only to the endpoint's host.

Connections: ``prefetch`` requests hold at most ``prefetch_connections`` of them, so a read
that waits never queues behind a full set of multi-MiB prefetch requests (measured: tail
reads of a cold load waited 100-240 ms for a connection).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging

from netmount.core import settings
from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.remote.client import HttpLoop
from netmount.remote.contract import OnPart
from netmount.remote.hub import RemoteFile, RepoRef
from netmount.remote.pieces import Pieces, split_cuts
from netmount.remote.proxy_route import ProxyRoute
from netmount.remote.ranged import FetchSettings, RangeRequests
from netmount.remote.resolver import Resolver

log = logging.getLogger("netmount.fetch")

AHEAD = 4  # data URLs resolved at once by ``resolve_ahead``


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
        self.resolver = Resolver(endpoint, token, self.counters)
        self.origin = RangeRequests(self.resolver, self.settings, self.counters)
        self.proxy = ProxyRoute(proxy, token, self.settings, self.counters) if proxy else None
        self._http = HttpLoop(connections, self.settings.timeout, grace=self.settings.max_backoff * 1.2 + 5)
        self._sem: asyncio.Semaphore | None = None  # made on the loop (``_semaphores``)
        self._prefetch_sem: asyncio.Semaphore | None = None

    # -- lifetime ----------------------------------------------------------------------------
    def start(self) -> "RangeFetcher":
        """Start the HTTP loop and return at once (the session opens on it: ``client.py``)."""
        self._http.start()
        return self

    def abort(self) -> None:
        """Fail every request in flight now, and every later one at once (nothing is retried
        any more): a read blocked on a stalled server gets EIO when the daemon is told to
        stop.  Bounded (``client.HttpLoop.abort``).  Safe to call twice, from any thread."""
        self._http.abort(on_loop=self._no_more_retries)

    def _no_more_retries(self) -> None:  # on the loop thread, where retries are decided
        self.origin.final = True

    def close(self) -> None:
        """``abort()``, then stop the loop (bounded).  Safe to call twice."""
        self._http.close()

    @property
    def stopping(self) -> bool:
        return self._http.stopping.is_set()

    # -- the fetch contract (remote/contract.py), from any thread ---------------------------
    def fetch(self, file: RemoteFile, start: int, end: int, on_part: OnPart, *,
              part_size: int = 0, prefetch: bool = False) -> concurrent.futures.Future:
        """Bytes ``[start, end)`` of ``file`` to ``on_part`` in the contract's pieces (on the
        HTTP thread: keep it short); the future's result is ``end - start``.  ``prefetch``
        requests use at most ``prefetch_connections`` of the connections."""
        if not 0 <= start < end <= file.size:
            raise FetchError(f"bad range [{start}, {end}) of {file.path} ({file.size} bytes)")
        ref = self._ref(file)
        work = self._fetch(ref, file.path, start, end, file.size, on_part, part_size, prefetch)
        return self._http.submit(work, f"{file.path} [{start}, {end})")

    def _ref(self, file: RemoteFile) -> RepoRef:
        ref = file.repo or self.repo
        if ref is None or not ref.sha:
            raise FetchError(f"{file.path}: names no repo and commit, and the fetcher has none")
        return ref

    def resolve_ahead(self, files) -> None:
        """Resolve these files' data URLs in the background (``AHEAD`` at a time), so their
        first read skips the round trip; failures are left for that read to meet.  Not while
        the cache proxy is in use: its route has no resolve step."""
        if self.proxy is not None and self.proxy.in_use():
            return
        wanted = [(self._ref(f), f.path) for f in files]
        with contextlib.suppress(FetchError):  # stopping: nothing to look up for
            self._http.submit(self._resolve_all(wanted), "resolving ahead")

    async def _resolve_all(self, wanted: list[tuple[RepoRef, str]]) -> None:
        gate = asyncio.Semaphore(AHEAD)

        async def one(ref: RepoRef, path: str) -> None:
            async with gate:
                try:
                    await self.resolver.target(self._http.session, ref, path)
                except Exception as exc:  # the read that needs it will retry and report
                    log.debug("resolving %s ahead failed: %s", path, exc)

        await asyncio.gather(*(one(ref, p) for ref, p in wanted))

    def status(self) -> dict | None:
        """The proxy's part of the stats (None without a proxy); from any thread."""
        return self.proxy.status() if self.proxy is not None else None

    # -- the loop side -------------------------------------------------------------------
    async def _fetch(self, ref: RepoRef, path: str, start: int, end: int, size: int, on_part: OnPart,
                     part_size: int, prefetch: bool) -> int:
        """[start, end) as parallel sub-requests (``split_cuts``), their bodies handed out
        as the contract's pieces however the sub-requests cut them."""
        if self._http.session is None:  # the session could not be opened (logged)
            raise FetchError(f"{path} [{start}, {end}): no HTTP session (see the log)")
        sink = Pieces(start, end, part_size, on_part)
        cuts = split_cuts(start, end, part_size, prefetch)
        tasks = [asyncio.ensure_future(self._fetch_one(ref, path, a, b, size, prefetch, sink))
                 for a, b in zip(cuts, cuts[1:])]
        try:
            await asyncio.gather(*tasks)
        except FetchError:
            raise
        except Exception as exc:  # a bug (in on_part, say): still a FetchError, logged in full
            if not self.stopping:
                log.exception("fetching %s [%d, %d) failed unexpectedly", path, start, end)
            raise FetchError(f"{path} [{start}, {end}): {type(exc).__name__}: {exc}") from None
        finally:
            for t in tasks:  # one sub-request failed for good: do not leave the others running
                t.cancel()
        return end - start

    async def _fetch_one(self, ref: RepoRef, path: str, start: int, end: int, size: int, prefetch: bool,
                         sink: Pieces) -> None:
        if self.stopping:
            raise FetchError(f"{path} [{start}, {end}): the fetcher is stopping")
        session = self._http.session

        def connection():
            return self._connection(prefetch)

        if self.proxy is not None and await self.proxy.fetch(session, ref, path, start, end, size, sink,
                                                             connection):
            return
        await self.origin.fetch(session, ref, path, start, end, size, sink, connection)

    @contextlib.asynccontextmanager
    async def _connection(self, prefetch: bool):
        if self._sem is None:  # first use, on the loop thread
            self._sem = asyncio.Semaphore(self.connections)
            self._prefetch_sem = asyncio.Semaphore(self.prefetch_connections)
        if prefetch:
            async with self._prefetch_sem, self._sem:
                yield
        else:
            async with self._sem:
                yield
