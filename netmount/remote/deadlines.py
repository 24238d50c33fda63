"""Whole-request deadlines for blocking sockets: a request past its deadline has its socket cut.

Why a thread: a socket's timeout bounds each wait for the next bytes, not a whole request —
a trickle (a few bytes now and then, never a timeout apart) would hold a reading thread, and
its ``readinto`` of a whole piece, for as long as it lasts.  One watchdog thread per fetcher
holds the requests in flight (at most one per fetch thread), sleeps until the earliest
deadline, and shuts down the socket of any request past it: the reading thread's ``recv``
returns at once, and the request is retried as a stall (``Watch.expired`` says which).
"""

from __future__ import annotations

import math
import socket
import threading
import time


class Watch:
    """One request in flight: its connection (``conn.sock`` is cut) and its deadline."""

    __slots__ = ("conn", "deadline", "seconds", "expired")

    def __init__(self, conn, seconds: float) -> None:
        self.conn, self.seconds = conn, seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False


def cut(conn) -> None:
    """Shut the connection's socket down (both ways), from any thread: a ``recv`` blocked on
    it returns at once.  Not closed: the owning thread closes it (a closed fd number could be
    reused under it).  The plain socket's method, also for TLS: ``SSLSocket.shutdown`` would
    change its TLS state under the reading thread."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # not connected (any more)
            pass


class Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: set[Watch] = set()
        self._wake_at = math.inf
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="netmount-deadlines", daemon=True)
        self._thread.start()

    def watch(self, conn, seconds: float) -> Watch:
        w = Watch(conn, seconds)
        with self._cond:
            self._active.add(w)
            if w.deadline < self._wake_at:
                self._cond.notify()
        return w

    def unwatch(self, w: Watch) -> None:
        with self._cond:
            self._active.discard(w)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for w in [w for w in self._active if w.deadline <= now]:
                    self._active.discard(w)
                    w.expired = True
                    cut(w.conn)
                self._wake_at = min((w.deadline for w in self._active), default=math.inf)
                self._cond.wait(None if self._wake_at == math.inf else self._wake_at - now)
