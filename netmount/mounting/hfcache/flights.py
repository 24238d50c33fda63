"""Single-flight calls, each waited on with a bound: how a lookup asks the Hub.

A lookup that needs the Hub (a repo seen for the first time, a ref past its TTL) joins the
call in flight for that key, or starts one; the call runs on a worker thread, never on the
lookup's, and never under a lock anybody else needs.  The lookup waits at most
``wait_seconds``: past that it gets ``Unavailable`` (EIO) and the call runs on, recording its
answer for the next lookup.  Many lookups of one repo cost one call; lookups of other repos
do not wait behind it (up to ``workers`` calls run at once, the rest queue).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable

from netmount.mounting.namespace import Unavailable

log = logging.getLogger("netmount.hfcache")


class Workers:
    """A fixed number of daemon threads running submitted calls in order: a pool that never
    holds the process up at exit (a call may sit in a network timeout)."""

    def __init__(self, workers: int, name: str = "netmount-resolve") -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()
        self._count = workers

    def submit(self, call: Callable[[], None]) -> None:
        if self._closed:
            raise RuntimeError("closed")
        self._jobs.put(call)

    def _work(self) -> None:
        while True:
            call = self._jobs.get()
            if call is None:
                return
            try:
                call()
            except Exception:  # a call reports through its flight; this is a bug
                log.exception("resolve worker")

    def close(self) -> None:
        """No new calls; each worker ends after the call it runs (queued ones never run)."""
        self._closed = True
        for _ in range(self._count):
            self._jobs.put(None)


class _Flight:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value = None


class Flights:
    """``join(key, call)``: ``call()``'s value, one call per key at a time.  ``call`` must not
    raise: it returns its outcome (errors included) as a value, which every waiter gets."""

    def __init__(self, submit: Callable[[Callable[[], None]], None], wait_seconds: float,
                 wait: Callable[[threading.Event, float], bool] | None = None) -> None:
        self._submit = submit
        self.wait_seconds = wait_seconds
        self._wait = wait or (lambda event, seconds: event.wait(seconds))
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self._closed = False

    def join(self, key: Hashable, call: Callable[[], object]):
        with self._lock:
            flight = self._flights.get(key)
            start = flight is None
            if start:
                flight = self._flights[key] = _Flight()
        if start:
            try:
                self._submit(lambda: self._run(key, flight, call))
            except RuntimeError:  # closed
                self._end(key, flight)
                raise Unavailable(f"{key}: the mount is closing") from None
        if not self._wait(flight.done, self.wait_seconds):
            raise Unavailable(f"{key}: no answer from the Hub within {self.wait_seconds:g} s")
        if flight.value is None:
            raise Unavailable(f"{key}: " + ("the mount is closing" if self._closed else "resolving failed"))
        return flight.value

    def _run(self, key: Hashable, flight: _Flight, call: Callable[[], object]) -> None:
        try:
            flight.value = call()
        except Exception:  # a bug in ``call``: its waiters get Unavailable
            log.exception("resolving %s", key)
        finally:
            self._end(key, flight)

    def _end(self, key: Hashable, flight: _Flight) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)

    def close(self) -> None:
        """Every waiter gets ``Unavailable`` now; calls still running finish unheard."""
        with self._lock:
            self._closed = True
            flights, self._flights = list(self._flights.values()), {}
        for flight in flights:
            flight.done.set()
