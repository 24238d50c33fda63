"""The cache-proxy route (``netmount mount --cache-proxy``), with its circuit breaker.

While the proxy is up, a range goes to ``{proxy}/{repo}/resolve/{sha}/{path}`` (no resolve
step: the proxy follows the Hub's redirect itself), with the token only if the mount has
one, checked like any answer (``ranged.py``).  Any fault of the proxy (refused, reset, 2 s
connect timeout, stall, an error status, an answer that fails the checks) sends that same
request to the origin at once, and the breaker (``breaker.py``) keeps the next ones off the
proxy for a back-off (``NETMOUNT_PROXY_BACKOFF`` seconds, doubling to 60 s; wrong bytes: 5
minutes).  The origin then goes on from the first piece the proxy did not hand over.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import quote, urljoin, urlsplit

from netmount.core.counters import Counters
from netmount.core.errors import FetchError
from netmount.remote.breaker import CLOSED, Breaker
from netmount.remote.hub import RepoRef
from netmount.remote.links import TRANSPORT_ERRORS
from netmount.remote.ranged import (
    REDIRECTS,
    FetchSettings,
    Retry,
    ShortBody,
    check_length,
    content_range,
    env_number,
    read_body,
)

log = logging.getLogger("netmount.fetch")

PROXY_CONNECT_TIMEOUT = 2.0  # a proxy on the LAN connects at once, or it is down
DEFAULT_PROXY_BACKOFF, PROXY_MAX_BACKOFF, PROXY_DISTRUST = 1.0, 60.0, 300.0
PROXY_CACHE_STATUS = {"HIT": "proxy_hits", "MISS": "proxy_misses", "EXPIRED": "proxy_misses",
                      "UPDATING": "proxy_misses", "STALE": "proxy_hits", "REVALIDATED": "proxy_hits",
                      "BYPASS": "proxy_bypass"}
PROXY_HOPS = 3  # redirects followed on the proxy's own host (a renamed repo)


class ProxyFault(Exception):
    """The proxy could not give this range; ``distrust``: it gave a wrong answer."""

    def __init__(self, why: str, distrust: bool = False):
        super().__init__(why)
        self.distrust = distrust


class ProxyRoute:
    def __init__(self, proxy: str, token: str | None, links, settings: FetchSettings, counters: Counters) -> None:
        self.proxy = proxy.rstrip("/")
        self._host = urlsplit(self.proxy).netloc
        self._token, self.links, self.settings, self.counters = token, links, settings, counters
        self.breaker = Breaker(env_number("NETMOUNT_PROXY_BACKOFF", DEFAULT_PROXY_BACKOFF),
                               PROXY_MAX_BACKOFF, PROXY_DISTRUST)

    def in_use(self) -> bool:
        """Requests go to the proxy now (its breaker is closed); from any thread."""
        return self.breaker.state == CLOSED

    def fetch(self, ref: RepoRef, path: str, start: int, end: int, size: int, sink) -> bool:
        """Try ``[start, end)`` (from the first piece ``sink`` lacks) through the proxy: True if
        it was served (and checked), False if the request must go to the origin (a fault, or
        the breaker is open)."""
        ticket = self.breaker.acquire(time.monotonic())
        if ticket is None:
            self.counters.add("proxy_skipped")
            return False
        outcome = None
        try:
            lo = sink.first_missing(start, end)
            if lo < end:
                self._get(ref, path, lo, end, size, sink)
            outcome = "ok"
            self.breaker.succeeded(ticket)
            return True
        except ProxyFault as exc:
            outcome = "fault"
            self._failed(path, start, end, ticket, exc)
            return False
        finally:
            if outcome is None:  # cancelled, or a bug in on_part: the probe is void
                self.breaker.abandon(ticket)

    def _failed(self, path: str, start: int, end: int, ticket: str, exc: ProxyFault) -> None:
        self.counters.add("proxy_fallbacks")
        wait = self.breaker.failed(ticket, time.monotonic(), distrust=exc.distrust, why=str(exc))
        if exc.distrust:
            log.warning("cache proxy %s answered %s [%d, %d) wrongly (%s): not using it for %.0fs",
                        self.proxy, path, start, end, exc, wait)
        elif wait:
            log.warning("cache proxy %s failed on %s [%d, %d) (%s): to the origin, proxy again in %.1fs",
                        self.proxy, path, start, end, exc, wait)

    def _get(self, ref: RepoRef, path: str, start: int, end: int, size: int, sink) -> None:
        """``[start, end)`` from the proxy, checked as always; ``ProxyFault`` otherwise."""
        url = f"{self.proxy}/{ref.url_path}/resolve/{ref.sha}/{quote(path)}"
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        bounds = self.settings.bounds(end - start, connect=PROXY_CONNECT_TIMEOUT)
        try:
            for _hop in range(PROXY_HOPS):
                self.counters.add("requests", path=path)
                self.counters.add("proxy_requests")
                with self.links.request("GET", url, headers, **bounds) as resp:
                    if resp.status in REDIRECTS:  # a renamed repo: another path on the proxy
                        url = urljoin(url, resp.getheader("Location") or "")
                        if urlsplit(url).netloc != self._host:
                            raise ProxyFault(f"redirect to another host ({urlsplit(url).netloc})")
                        continue
                    self._take(resp, path, start, end, size, sink)
                    return
            raise ProxyFault("too many redirects")
        except TRANSPORT_ERRORS as exc:
            if self.links.stopping.is_set():  # not the proxy's fault: the probe is void
                raise FetchError(f"{path} [{start}, {end}): the fetcher is stopping") from None
            raise ProxyFault(str(exc) or type(exc).__name__) from None

    def _take(self, resp, path: str, start: int, end: int, size: int, sink) -> None:
        """Check the proxy's answer as any (206, exact Content-Range and length) and read it."""
        if resp.status != 206 and not (resp.status == 200 and start == 0 and end == size):
            raise ProxyFault(f"HTTP {resp.status}", distrust=resp.status in (200, 206))
        want, got = content_range(start, end, size), (resp.getheader("Content-Range") or "").strip()
        if resp.status == 206 and got != want:
            raise ProxyFault(f"Content-Range {got!r}, asked for {want!r}", distrust=True)
        try:
            check_length(resp, start, end)
            read_body(resp, path, start, end, sink, self.counters)
        except Retry as exc:  # a short body (a reset), or a wrong length, encoding or long body
            raise ProxyFault(str(exc), distrust=not isinstance(exc, ShortBody)) from None
        self.counters.add("proxy_bytes", end - start)
        # hits/misses/bypass: of the answers that were used
        kind = PROXY_CACHE_STATUS.get((resp.getheader("X-Cache-Status") or "").strip().upper())
        if kind:
            self.counters.add(kind)

    def status(self) -> dict:
        """The proxy's part of the stats; from any thread (the breaker is read under its lock)."""
        state, retry_in, last_error = self.breaker.view(time.monotonic())
        c = self.counters
        return {"url": self.proxy, "state": state, "last_error": last_error, "retry_in": round(retry_in, 3),
                **{k: c.get(f"proxy_{k}") for k in
                   ("requests", "bytes", "hits", "misses", "bypass", "fallbacks", "skipped")}}
