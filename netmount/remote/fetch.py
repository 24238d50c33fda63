"""Verified HTTP range fetches on one background asyncio loop (the only aiohttp user).

``RangeFetcher`` follows the fetch contract (``remote/contract.py``) exactly: the pieces it
hands out are the contract's, however its parallel sub-requests cut the range (``_Pieces``).

Why it looks like this:
- ``/resolve/{sha}/{path}`` is resolved once per file (single-flight) to its data URL —
  usually a 302 to a signed CDN URL on another host — and the target is reused until it
  expires (``Expires=`` in the query) or the CDN answers 403; then it is resolved again.
  This keeps Hub request counts (rate limits are per IP) to one per file, not per block.
- Authorization is sent only to the endpoint's own host, never to a redirect target.
- Never wrong bytes: a range answer must be 206 with exactly the Content-Range asked for
  and exactly that many body bytes (a 200 is taken only for a whole-file request).
  Anything else is retried with backoff (honouring Retry-After), and after
  ``max_retries`` the fetch fails with ``FetchError`` — which the filesystem turns into EIO.
- Bodies are never decompressed (``Accept-Encoding: identity``): ranges are of raw bytes.
- Timeouts: connecting, and every wait for the next bytes (headers or body), are bounded
  by ``timeout``; a stalled answer is retried like a reset one.  A trickle (a few bytes
  now and then, never ``timeout`` apart) is bounded too: a whole request may take
  ``timeout`` plus its size at ``min_rate`` (64 KiB/s).  The defaults (30 s, 5 retries,
  backoff from 0.5 s doubling to 8 s) can be changed without a flag through
  ``NETMOUNT_FETCH_TIMEOUT``, ``NETMOUNT_FETCH_RETRIES``, ``NETMOUNT_FETCH_BACKOFF`` and
  ``NETMOUNT_FETCH_MIN_RATE`` in the daemon's environment — tests use that to make fault
  runs take seconds.
- The cache proxy (``proxy=``, ``netmount mount --cache-proxy``): while it is up, a range
  goes to ``{proxy}/{repo}/resolve/{sha}/{path}`` (no resolve step: the proxy follows the
  Hub's redirect itself), with the token only if the mount has one, checked like any
  answer.  Any fault of the proxy (refused, reset, 2 s connect timeout, stall, an error
  status, an answer that fails the checks) sends that same request to the origin path at
  once, and a circuit breaker (``remote/breaker.py``) keeps the next ones off the proxy
  for a back-off (``NETMOUNT_PROXY_BACKOFF`` seconds, doubling to 60 s; wrong bytes: 5
  minutes).  A piece may then be delivered twice, which the contract allows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import re
import threading
import time
from urllib.parse import parse_qs, quote, urljoin, urlsplit

from netmount.core import settings
from netmount.core.blocks import PAGE  # a split that cannot cut on piece edges cuts on pages
from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.remote.breaker import CLOSED, Breaker
from netmount.remote.contract import OnPart
from netmount.remote.hub import RemoteFile, url_path

log = logging.getLogger("netmount.fetch")

# aiohttp, bound by ``import_client``: importing it costs ~0.3 s of CPU, which the daemon's
# way to a live mount does not wait for (see ``RangeFetcher.start``)
aiohttp = None


def import_client() -> None:
    """Import aiohttp (once; it is thread-safe): on the fetcher's loop thread before it opens
    its session, or earlier on a thread that has nothing better to do (daemon.py)."""
    global aiohttp
    import aiohttp

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
REDIRECTS = {301, 302, 303, 307, 308}
EXPIRY_MARGIN = 30.0  # re-resolve a signed URL this long before it says it expires
DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_BACKOFF = 30.0, 5, 0.5
DEFAULT_MIN_RATE = 64 << 10  # bytes/s: slower than this over a whole request is a stall
# A request a reader is waiting for goes out as up to SPLIT_MAX parallel pieces of at least
# SPLIT_PIECE: where each connection is capped (CDNs, the bench's emulated link) a 1 MiB
# miss then costs a round trip and a quarter of its transfer time.
SPLIT_PIECE, SPLIT_MAX = 256 << 10, 4
PROXY_CONNECT_TIMEOUT = 2.0  # a proxy on the LAN connects at once, or it is down
DEFAULT_PROXY_BACKOFF, PROXY_MAX_BACKOFF, PROXY_DISTRUST = 1.0, 60.0, 300.0
PROXY_CACHE_STATUS = {"HIT": "proxy_hits", "MISS": "proxy_misses", "EXPIRED": "proxy_misses",
                      "UPDATING": "proxy_misses", "STALE": "proxy_hits", "REVALIDATED": "proxy_hits",
                      "BYPASS": "proxy_bypass"}


def _env_number(name: str, default, kind=float):
    """A positive number from the environment (0 allowed for retries), else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number", name, raw)
        return default
    if value < 0 or (value == 0 and kind is float):
        log.warning("ignoring %s=%r: out of range", name, raw)
        return default
    return value


class _Retry(Exception):
    def __init__(self, why: str, after: float | None = None, forget_target: bool = False):
        super().__init__(why)
        self.after = after
        self.forget_target = forget_target


class _LongBody(_Retry):
    """More body bytes than asked for: wrong bytes, not a broken connection."""


class _Fatal(Exception):
    pass


class _ProxyFault(Exception):
    """The proxy could not give this range; ``distrust``: it gave a wrong answer."""

    def __init__(self, why: str, distrust: bool = False):
        super().__init__(why)
        self.distrust = distrust


def _log_open_failure(opening: concurrent.futures.Future) -> None:
    if not opening.cancelled() and opening.exception() is not None:
        exc = opening.exception()
        log.error("cannot open the HTTP session: %s: %s", type(exc).__name__, exc)


class RangeFetcher:
    def __init__(
        self,
        endpoint: str,
        repo_id: str,
        sha: str,
        token: str | None = None,
        *,
        connections: int = settings.DEFAULT_CONNECTIONS,
        max_retries: int | None = None,
        timeout: float | None = None,
        backoff: float | None = None,
        max_backoff: float = 8.0,
        counters: Counters | None = None,
        proxy: str | None = None,
        repo_type: str = "model",
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.repo_id, self.sha, self._token = repo_id, sha, token
        self._repo_path = url_path(repo_id, repo_type)  # datasets/org/name in URLs, as the Hub's
        self.connections = connections
        if max_retries is None:
            max_retries = _env_number("NETMOUNT_FETCH_RETRIES", DEFAULT_RETRIES, int)
        if timeout is None:
            timeout = _env_number("NETMOUNT_FETCH_TIMEOUT", DEFAULT_TIMEOUT)
        if backoff is None:
            backoff = _env_number("NETMOUNT_FETCH_BACKOFF", DEFAULT_BACKOFF)
        self.max_retries, self.timeout = max_retries, timeout
        self.min_rate = _env_number("NETMOUNT_FETCH_MIN_RATE", DEFAULT_MIN_RATE)
        self.backoff, self.max_backoff = backoff, max(max_backoff, backoff)
        self.counters = counters or Counters()
        self._endpoint_host = urlsplit(self.endpoint).netloc
        self.proxy = proxy.rstrip("/") if proxy else None
        self._proxy_host = urlsplit(self.proxy).netloc if self.proxy else None
        self.breaker = Breaker(_env_number("NETMOUNT_PROXY_BACKOFF", DEFAULT_PROXY_BACKOFF),
                               PROXY_MAX_BACKOFF, PROXY_DISTRUST)
        self.proxy_error = ""  # the last fault of the proxy, for the stats
        self._targets: dict[str, tuple[str, float]] = {}
        self._resolving: dict[str, asyncio.Future] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netmount-http", daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._opening: concurrent.futures.Future | None = None  # _open, until it is done
        self._sem: asyncio.Semaphore | None = None
        # prefetch may hold all connections but a few: a read that waits never queues behind
        # a full set of multi-MiB prefetch requests (measured: tail reads of a cold load
        # waited 100-240 ms for a connection)
        self.prefetch_connections = max(1, connections - max(1, connections // 4))
        self._prefetch_sem: asyncio.Semaphore | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "RangeFetcher":
        """Start the loop thread and return at once.  Its first task opens the HTTP session,
        importing aiohttp first; the loop runs tasks in the order they come, so a request
        submitted meanwhile simply waits for it.  If the session cannot be opened, that is
        logged and every request fails with ``FetchError``."""
        self._thread.start()
        self._opening = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        self._opening.add_done_callback(_log_open_failure)
        return self

    async def _open(self) -> None:
        import_client()  # no await in _open: it is done before any later task starts
        self._sem = asyncio.Semaphore(self.connections)
        self._prefetch_sem = asyncio.Semaphore(self.prefetch_connections)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections * 2, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
            auto_decompress=False,
            headers={"Accept-Encoding": "identity", "User-Agent": "netmount/0.1"},
        )

    def close(self) -> None:
        """``abort()``, then stop and close the loop.  Call it once nothing submits any
        more: a request submitted to a stopped loop would never run, and its reader would
        wait forever.  Safe to call twice."""
        if not self._thread.is_alive():
            return
        self.abort()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def abort(self) -> None:
        """Fail every request in flight now, and every later one at once: a read blocked
        on a stalled server must get EIO when the daemon is told to stop, not hold the
        unmount for ``timeout`` x ``max_retries``.  Connections in use are cut and nothing
        is retried, so each request ends with an error (``FetchError``, or ``RuntimeError``
        from the closed session).  The loop keeps running, so that a request submitted
        meanwhile fails rather than waits: ``close()`` stops it.  Safe to call twice."""
        if self._opening is not None:
            with contextlib.suppress(Exception):  # failed: logged (start)
                self._opening.result(timeout=60)
        if not self._thread.is_alive() or self._session is None or self._session.closed:
            return
        self.max_retries = 0  # read on the loop thread: what fails from now on is final
        try:
            asyncio.run_coroutine_threadsafe(self._fail_in_flight(), self._loop).result(
                timeout=self.max_backoff * 1.2 + 10)
        except Exception as exc:  # close() still stops the loop
            log.warning("aborting the fetcher: %s", exc or type(exc).__name__)

    async def _fail_in_flight(self) -> None:
        """Cut the connections in use, close the session, and wait for every request to
        end.  Cut, not closed: ``ClientSession.close()`` closes a busy connection without
        telling its reader (aiohttp drops the body stream and its read timeout), so a
        stalled body would be waited for forever; an aborted transport fails it with
        ``ClientPayloadError``.  aiohttp lists busy connections only in the connector's
        private ``_acquired``: if that ever goes, requests end at their own timeout.
        Only a request asleep between tries takes a while: it wakes within
        ``max_backoff`` and meets the closed session.  One still running after that is
        cancelled (not expected: a reader waiting for it would wait forever)."""
        for proto in list(getattr(self._session.connector, "_acquired", ())):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)  # let connection_lost() fail the readers
        await self._session.close()
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=self.max_backoff * 1.2 + 5)
            for t in late:
                log.warning("cancelling a fetch that did not end when the fetcher closed")
                t.cancel()

    # -- the fetch contract (remote/contract.py), from any thread ---------------------------
    def fetch(self, file: RemoteFile, start: int, end: int, on_part: OnPart, *,
              part_size: int = 0, prefetch: bool = False) -> concurrent.futures.Future:
        """Bytes ``[start, end)`` of ``file`` to ``on_part`` in the contract's pieces (on the
        HTTP thread: keep it short); the future's result is ``end - start``.  ``prefetch``
        requests use at most ``prefetch_connections`` of the connections."""
        if not 0 <= start < end <= file.size:
            raise FetchError(f"bad range [{start}, {end}) of {file.path} ({file.size} bytes)")
        work = self._fetch(file.path, start, end, file.size, on_part, part_size, prefetch)
        try:
            return asyncio.run_coroutine_threadsafe(work, self._loop)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            work.close()
            raise FetchError(f"{file.path} [{start}, {end}): the fetcher is closed") from None

    def resolve_ahead(self, paths) -> None:
        """Resolve these files' data URLs in the background (at most 4 at a time), so their
        first read skips the round trip; failures are left for that read to meet.  Not
        while the cache proxy is in use: its route has no resolve step."""
        if self.proxy is not None and self.breaker.state == CLOSED:
            return
        asyncio.run_coroutine_threadsafe(self._resolve_all(list(paths)), self._loop)

    async def _resolve_all(self, paths: list[str]) -> None:
        gate = asyncio.Semaphore(4)

        async def one(path: str) -> None:
            async with gate:
                try:
                    await self._target(path)
                except Exception as exc:  # the read that needs it will retry and report
                    log.debug("resolving %s ahead failed: %s", path, exc)

        await asyncio.gather(*(one(p) for p in paths))

    # -- the loop side -------------------------------------------------------------------
    async def _fetch(self, path: str, start: int, end: int, size: int, on_part: OnPart,
                     part_size: int, prefetch: bool) -> int:
        """[start, end) as parallel sub-requests (``split_cuts``), their bodies handed out
        as the contract's pieces however the sub-requests cut them."""
        if self._session is None:  # _open failed (logged)
            raise FetchError(f"{path} [{start}, {end}): no HTTP session (see the log)")
        sink = _Pieces(start, end, part_size, on_part)
        cuts = split_cuts(start, end, part_size, prefetch)
        tasks = [asyncio.ensure_future(self._fetch_one(path, a, b, size, prefetch, sink))
                 for a, b in zip(cuts, cuts[1:])]
        try:
            await asyncio.gather(*tasks)
        except FetchError:
            raise
        except Exception as exc:  # a bug (in on_part, say): still a FetchError, logged in full
            log.exception("fetching %s [%d, %d) failed unexpectedly", path, start, end)
            raise FetchError(f"{path} [{start}, {end}): {type(exc).__name__}: {exc}") from None
        finally:
            for t in tasks:  # one sub-request failed for good: do not leave the others running
                t.cancel()
        return end - start

    @contextlib.asynccontextmanager
    async def _connection(self, prefetch: bool):
        if prefetch:
            async with self._prefetch_sem, self._sem:
                yield
        else:
            async with self._sem:
                yield

    async def _fetch_one(self, path: str, start: int, end: int, size: int, prefetch: bool,
                         sink: "_Pieces") -> None:
        if self.proxy is not None:
            ticket = self.breaker.acquire(time.monotonic())
            if ticket is None:
                self.counters.add("proxy_skipped")
            else:
                outcome = None
                try:
                    async with self._connection(prefetch):
                        await self._via_proxy(path, start, end, size, sink)
                    outcome = "ok"
                    self.breaker.succeeded(ticket)
                    return
                except _ProxyFault as exc:
                    outcome = "fault"
                    self._proxy_failed(path, start, end, ticket, exc)
                finally:
                    if outcome is None:  # cancelled, or a bug in on_part: the probe is void
                        self.breaker.abandon(ticket)
        attempt = 0
        while True:
            try:
                async with self._connection(prefetch):
                    return await self._once(path, start, end, size, sink)
            except _Fatal as exc:
                self.counters.add("errors")
                raise FetchError(f"{path} [{start}, {end}): {exc}") from None
            except (_Retry, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                why = str(exc) or type(exc).__name__
                if isinstance(exc, _Retry) and exc.forget_target:
                    self._targets.pop(path, None)
                attempt += 1
                if attempt > self.max_retries:
                    self.counters.add("errors")
                    log.error("giving up on %s [%d, %d) after %d tries: %s", path, start, end, attempt, why)
                    raise FetchError(f"{path} [{start}, {end}): {why}") from None
                self.counters.add("retries")
                delay = getattr(exc, "after", None)
                if delay is None:
                    delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff) * random.uniform(0.8, 1.2)
                log.warning("retry %d/%d for %s [%d, %d) in %.2fs: %s",
                            attempt, self.max_retries, path, start, end, delay, why)
                await asyncio.sleep(delay)

    async def _once(self, path: str, start: int, end: int, size: int, sink: "_Pieces") -> None:
        url = await self._target(path)
        headers = {"Range": f"bytes={start}-{end - 1}", **self._auth_for(url)}
        self.counters.add("requests", path=path)
        deadline = aiohttp.ClientTimeout(total=self.timeout + (end - start) / self.min_rate,
                                         sock_connect=self.timeout, sock_read=self.timeout)
        async with self._session.get(url, headers=headers, allow_redirects=False, timeout=deadline) as resp:
            status = resp.status
            if status in REDIRECTS or status == 403 and url != self._resolve_url(path):
                raise _Retry(f"data URL answered {status}; resolving again", after=0, forget_target=True)
            _check_status(status, resp.headers)
            if status == 200:
                if not (start == 0 and end == size and resp.content_length == size):
                    raise _Retry("server answered 200 (whole file) to a range request")
            elif status == 206:
                want = f"bytes {start}-{end - 1}/{size}"
                got = resp.headers.get("Content-Range", "")
                if got.strip() != want:
                    raise _Retry(f"Content-Range {got!r}, asked for {want!r}")
            else:
                raise _Fatal(f"unexpected HTTP {status}")
            await self._read_body(resp, path, start, end, sink)

    async def _read_body(self, resp, path: str, start: int, end: int, sink: "_Pieces") -> None:
        """The body of a checked answer, handed to ``sink`` segment by segment as it arrives."""
        for lo, hi in sink.segments(start, end):
            try:
                data = await resp.content.readexactly(hi - lo)
            except asyncio.IncompleteReadError as exc:
                got = lo - start + len(exc.partial)
                self.counters.add("bytes_fetched", len(exc.partial), path=path)
                raise _Retry(f"short body: {got} of {end - start} bytes") from None
            self.counters.add("bytes_fetched", hi - lo, path=path)
            sink.put(lo, data)
        extra = await resp.content.read(1)
        if extra:
            raise _LongBody(f"long body: more than the {end - start} bytes asked for")

    # -- the cache proxy -------------------------------------------------------------------
    def _proxy_failed(self, path: str, start: int, end: int, ticket: str, exc: "_ProxyFault") -> None:
        self.counters.add("proxy_fallbacks")
        self.proxy_error = str(exc)
        wait = self.breaker.failed(ticket, time.monotonic(), distrust=exc.distrust)
        if exc.distrust:
            log.warning("cache proxy %s answered %s [%d, %d) wrongly (%s): not using it for %.0fs",
                        self.proxy, path, start, end, exc, wait)
        elif wait:
            log.warning("cache proxy %s failed on %s [%d, %d) (%s): to the origin, proxy again in %.1fs",
                        self.proxy, path, start, end, exc, wait)

    async def _via_proxy(self, path: str, start: int, end: int, size: int, sink: "_Pieces") -> None:
        """``[start, end)`` from the cache proxy, checked as always; ``_ProxyFault`` otherwise."""
        url = f"{self.proxy}/{self._repo_path}/resolve/{self.sha}/{quote(path)}"
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        deadline = aiohttp.ClientTimeout(total=self.timeout + (end - start) / self.min_rate,
                                         sock_connect=PROXY_CONNECT_TIMEOUT, sock_read=self.timeout)
        try:
            for _hop in range(3):
                self.counters.add("requests", path=path)
                self.counters.add("proxy_requests")
                async with self._session.get(url, headers=headers, allow_redirects=False,
                                             timeout=deadline) as resp:
                    if resp.status in REDIRECTS:  # a renamed repo: another path on the proxy
                        url = urljoin(url, resp.headers.get("Location", ""))
                        if urlsplit(url).netloc != self._proxy_host:
                            raise _ProxyFault(f"redirect to another host ({urlsplit(url).netloc})")
                        continue
                    if resp.status != 206 and not (resp.status == 200 and start == 0 and end == size):
                        raise _ProxyFault(f"HTTP {resp.status}", distrust=resp.status in (200, 206))
                    want = f"bytes {start}-{end - 1}/{size}"
                    got = resp.headers.get("Content-Range", "").strip()
                    if resp.status == 206 and got != want:
                        raise _ProxyFault(f"Content-Range {got!r}, asked for {want!r}", distrust=True)
                    if resp.content_length is not None and resp.content_length != end - start:
                        raise _ProxyFault(f"Content-Length {resp.content_length}, asked for "
                                          f"{end - start}", distrust=True)
                    try:
                        await self._read_body(resp, path, start, end, sink)
                    except _Retry as exc:  # short (a reset) or long (wrong) body
                        raise _ProxyFault(str(exc), distrust=isinstance(exc, _LongBody)) from None
                    self.counters.add("proxy_bytes", end - start)
                    # hits/misses/bypass: of the answers that were used
                    kind = PROXY_CACHE_STATUS.get(resp.headers.get("X-Cache-Status", "").strip().upper())
                    if kind:
                        self.counters.add(kind)
                    return
            raise _ProxyFault("too many redirects")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise _ProxyFault(str(exc) or type(exc).__name__) from None

    def status(self) -> dict | None:
        """The proxy's part of the stats (None without a proxy); from any thread."""
        if self.proxy is None:
            return None
        c = self.counters
        retry_in = max(0.0, self.breaker.until - time.monotonic()) if self.breaker.state == "open" else 0.0
        return {"url": self.proxy, "state": self.breaker.state, "last_error": self.proxy_error,
                "retry_in": round(retry_in, 3),
                **{k: c.get(f"proxy_{k}") for k in
                   ("requests", "bytes", "hits", "misses", "bypass", "fallbacks", "skipped")}}

    def _resolve_url(self, path: str) -> str:
        return f"{self.endpoint}/{self._repo_path}/resolve/{self.sha}/{quote(path)}"

    def _auth_for(self, url: str) -> dict[str, str]:
        if self._token and urlsplit(url).netloc == self._endpoint_host:
            return {"authorization": f"Bearer {self._token}"}
        return {}

    async def _target(self, path: str) -> str:
        """The data URL of ``path``: cached, or resolved once however many readers ask."""
        hit = self._targets.get(path)
        if hit and hit[1] > time.time():
            return hit[0]
        pending = self._resolving.get(path)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve(path))
            self._resolving[path] = pending
            pending.add_done_callback(lambda _f: self._resolving.pop(path, None))
        return await asyncio.shield(pending)

    async def _resolve(self, path: str) -> str:
        url = self._resolve_url(path)
        for _hop in range(5):
            self.counters.add("requests", path=path)
            async with self._session.head(url, headers=self._auth_for(url), allow_redirects=False) as resp:
                if resp.status in REDIRECTS:
                    url = urljoin(url, resp.headers.get("Location", ""))
                    if urlsplit(url).netloc != self._endpoint_host:
                        break  # a CDN: no need to HEAD it, the first range GET will tell
                    continue
                _check_status(resp.status, resp.headers)
                if resp.status != 200:
                    raise _Fatal(f"resolving {path}: HTTP {resp.status}")
                break
        else:
            raise _Fatal(f"resolving {path}: too many redirects")
        self._targets[path] = (url, _expiry(url))
        return url


def split_cuts(start: int, end: int, part_size: int = 0, prefetch: bool = False) -> list[int]:
    """Where ``[start, end)`` is cut into parallel sub-requests: ``[c0, c1), [c1, c2), ...``.

    A prefetch, or a range under ``2 * SPLIT_PIECE``, is one request.  A range a reader waits
    for goes out as up to ``SPLIT_MAX`` sub-requests of at least ``SPLIT_PIECE``, cut on piece
    edges when there are at least two whole pieces (each piece then streams as it arrives),
    else on pages (the pieces they cut are assembled before they are handed out)."""
    length = end - start
    if prefetch or length < 2 * SPLIT_PIECE:
        return [start, end]
    unit = part_size if 0 < part_size and length >= 2 * part_size else PAGE
    units = -(-length // unit)
    n = min(SPLIT_MAX, length // SPLIT_PIECE, units)
    step = -(-units // n) * unit
    return [*range(start, end, step), end]


class _Pieces:
    """The contract's pieces of one fetch, from sub-requests that may cut them.

    A sub-request reads its body in ``segments`` (its range cut at piece edges); a segment
    that is a whole piece goes to ``on_part`` as it is, the segments of a piece cut across
    sub-requests are copied together and the piece goes out, once, when it is complete.  A
    retried sub-request puts its segments again: whole pieces go out again (the contract
    allows it), an assembled piece already out is not sent twice.  Loop thread only."""

    def __init__(self, start: int, end: int, part_size: int, on_part: OnPart) -> None:
        self.start, self.end, self.on_part = start, end, on_part
        self.size = part_size if 0 < part_size < end - start else end - start
        self._open: dict[int, tuple[bytearray, dict[int, int]]] = {}  # piece -> (bytes, segments)
        self._sent: set[int] = set()  # assembled pieces already handed out

    def piece(self, offset: int) -> tuple[int, int]:
        a = self.start + (offset - self.start) // self.size * self.size
        return a, min(self.end, a + self.size)

    def segments(self, a: int, b: int) -> list[tuple[int, int]]:
        out = []
        while a < b:
            hi = min(b, self.piece(a)[1])
            out.append((a, hi))
            a = hi
        return out

    def put(self, lo: int, data: bytes) -> None:
        a, b = self.piece(lo)
        if lo == a and len(data) == b - a:
            self.on_part(a, data)
            return
        if a in self._sent:
            return
        buf, have = self._open.setdefault(a, (bytearray(b - a), {}))
        buf[lo - a : lo - a + len(data)] = data
        have[lo] = len(data)
        if sum(have.values()) == b - a:
            del self._open[a]
            self._sent.add(a)
            self.on_part(a, bytes(buf))


def _check_status(status: int, headers) -> None:
    if status in RETRY_STATUSES:
        raise _Retry(f"HTTP {status}", after=_retry_after(headers.get("Retry-After")))
    if status in (401, 403, 404, 410, 416) or 400 <= status < 500:
        code = headers.get("X-Error-Code")
        raise _Fatal(f"HTTP {status}" + (f" ({code})" if code else ""))


def _retry_after(value: str | None) -> float | None:
    if value and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return min(float(value), 60.0)
    return None


def _expiry(url: str, now: float | None = None) -> float:
    """When to stop using a signed URL: ``EXPIRY_MARGIN`` before its ``Expires=`` says, or
    a quarter of its remaining life before for short-lived URLs (a margin longer than the
    life would re-resolve on every request); without ``Expires=``, in an hour."""
    now = time.time() if now is None else now
    query = parse_qs(urlsplit(url).query)
    for key in ("Expires", "expires"):
        if key in query:
            try:
                expires = float(query[key][0])
            except ValueError:
                break
            return expires - min(EXPIRY_MARGIN, max(0.0, expires - now) / 4)
    return now + 3600.0
