"""When to try the cache proxy: a circuit breaker (the clock is passed in).

The proxy is an accelerator, never a single point of failure: a fault sends that request
to the origin and *opens* the breaker, so the next requests go straight to the origin
instead of each waiting out the same dead proxy.  After the wait one request (the probe)
tries the proxy again: success closes the breaker, a fault opens it for twice as long (up
to ``max_wait``).  A proxy that answered wrong bytes is not trusted for ``distrust`` (five
minutes).  Changed on the fetcher's loop thread, read by the stats on FUSE threads: every
method takes the breaker's lock (a leaf: nothing is called under it).
"""

from __future__ import annotations

import threading

CLOSED, OPEN, PROBING = "closed", "open", "probing"


class Breaker:
    def __init__(self, base_wait: float = 1.0, max_wait: float = 60.0, distrust: float = 300.0) -> None:
        self.base_wait, self.max_wait, self.distrust = base_wait, max(max_wait, base_wait), distrust
        self._lock = threading.Lock()
        self.state = CLOSED
        self.wait = 0.0  # the last wait it opened for (doubles while probes fail)
        self.until = 0.0  # open: no request to the proxy before this
        self.last_error = ""  # why it last opened

    def acquire(self, now: float) -> str | None:
        """May this request go to the proxy?  ``"normal"``, ``"probe"`` (the one request
        allowed after a wait: report its outcome), or None (go to the origin)."""
        with self._lock:
            if self.state == CLOSED:
                return "normal"
            if self.state == OPEN and now >= self.until:
                self.state = PROBING
                return "probe"
            return None

    def succeeded(self, ticket: str) -> None:
        with self._lock:
            if ticket == "probe":
                self.state, self.wait = CLOSED, 0.0

    def failed(self, ticket: str, now: float, distrust: bool = False, why: str = "") -> float:
        """A fault on a request that had ``ticket``; returns how long the breaker stays open
        (0 when it was already open for another request's fault)."""
        with self._lock:
            self.last_error = why
            if distrust:
                self.state, self.until = OPEN, now + self.distrust
                self.wait = max(self.wait, self.base_wait)
                return self.distrust
            if ticket == "probe":
                self.wait = min(max(self.wait, self.base_wait / 2) * 2, self.max_wait)
            elif self.state == CLOSED:
                self.wait = self.base_wait
            else:
                return 0.0  # a request sent before the breaker opened: it is open already
            self.state, self.until = OPEN, now + self.wait
            return self.wait

    def abandon(self, ticket: str) -> None:
        """The probe was cancelled before it could tell: let the next request probe."""
        with self._lock:
            if ticket == "probe" and self.state == PROBING:
                self.state = OPEN

    def view(self, now: float) -> tuple[str, float, str]:
        """(state, seconds until the next probe may go, the last fault), read together."""
        with self._lock:
            retry_in = max(0.0, self.until - now) if self.state == OPEN else 0.0
            return self.state, retry_in, self.last_error
