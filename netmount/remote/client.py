"""The one aiohttp module: one background asyncio loop, one HTTP session on it, its lifetime.

Why here and alone: aiohttp costs ~0.3 s of CPU to import, so it is imported on the loop
thread (``import_client``) while the daemon goes on to a live mount, and the rest of the
fetcher (``fetch.py``, ``ranged.py``, ``resolver.py``, ``proxy_route.py``) reaches it only
through the few names below (``deadline``, ``transport_errors``).

Lifetime, from the owner's thread: ``start`` (returns at once), ``submit`` (a coroutine ->
``concurrent.futures.Future``), ``abort`` (fail what is in flight and everything after it,
bounded), ``close`` (stop the loop, bounded).  ``stopping`` is set by ``abort`` before it
touches anything: from then on a submitted coroutine is refused (``FetchError``) rather than
run against a closed session.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from typing import Coroutine

from netmount.core.errors import FetchError

log = logging.getLogger("netmount.fetch")

aiohttp = None  # bound by ``import_client``
OPEN_WAIT = 60.0  # seconds ``abort`` waits for the session's opening (an import of aiohttp)
CLOSE_WAIT = 10.0  # seconds ``close`` waits for the loop thread to end


def import_client() -> None:
    """Import aiohttp (once; thread-safe): on the loop thread before it opens its session, or
    earlier on a thread that has nothing better to do (daemon.py)."""
    global aiohttp
    import aiohttp


def deadline(total: float | None, connect: float, read: float):
    """An aiohttp timeout: the whole request, connecting, and every wait for the next bytes."""
    return aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read)


def transport_errors() -> tuple[type[BaseException], ...]:
    """What a broken connection, a stall or a refused one raises (retried, never final)."""
    return aiohttp.ClientError, asyncio.TimeoutError, OSError


class HttpLoop:
    """The loop thread and its session (see the module docstring)."""

    def __init__(self, connections: int, timeout: float, *, grace: float = 10.0) -> None:
        self.connections, self.timeout = connections, timeout
        self.grace = grace  # seconds ``abort`` lets requests end before it cancels them
        self.session = None  # aiohttp.ClientSession, once opened on the loop
        self.stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netmount-http", daemon=True)
        self._opening: concurrent.futures.Future | None = None

    def start(self) -> None:
        """Start the loop and return at once.  Its first task opens the session, importing
        aiohttp first; tasks run in the order they come, so a request submitted meanwhile
        simply waits for it.  If it cannot be opened, that is logged and every request fails."""
        self._thread.start()
        self._opening = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        self._opening.add_done_callback(_log_open_failure)

    async def _open(self) -> None:
        import_client()  # no await in _open: it is done before any later task starts
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections * 2, ttl_dns_cache=300),
            timeout=deadline(None, self.timeout, self.timeout),
            auto_decompress=False,
            headers={"Accept-Encoding": "identity", "User-Agent": "netmount/0.1"},
        )

    def submit(self, work: Coroutine, what: str) -> concurrent.futures.Future:
        """Run ``work`` on the loop; ``FetchError`` (and ``work`` closed) once stopping."""
        if self.stopping.is_set():
            work.close()
            raise FetchError(f"{what}: the fetcher is stopping")
        try:
            return asyncio.run_coroutine_threadsafe(work, self._loop)
        except RuntimeError:  # the loop is closed
            work.close()
            raise FetchError(f"{what}: the fetcher is closed") from None

    def abort(self, on_loop=None) -> None:
        """Fail every request in flight now, and every later one at once: a read blocked on a
        stalled server gets EIO when the daemon is told to stop, not after ``timeout`` x
        retries.  ``on_loop()`` runs first on the loop thread (the fetcher's "no more retries").
        The loop keeps running so that late submitters fail rather than wait; ``close`` stops
        it.  Bounded: ``OPEN_WAIT`` for a session still opening, then ``grace`` + 10 s."""
        self.stopping.set()
        if self._opening is not None:
            with contextlib.suppress(Exception):  # failed: logged (start)
                self._opening.result(timeout=OPEN_WAIT)
        if not self._thread.is_alive() or self.session is None or self.session.closed:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._fail_in_flight(on_loop), self._loop).result(
                timeout=self.grace + 10)
        except Exception as exc:  # close() still stops the loop
            log.warning("aborting the fetcher: %s", exc or type(exc).__name__)

    async def _fail_in_flight(self, on_loop) -> None:
        """Cut the connections in use, close the session, and wait for every request to end.
        Cut, not closed: ``ClientSession.close()`` closes a busy connection without telling
        its reader (aiohttp drops the body stream and its read timeout), so a stalled body
        would be waited for forever; an aborted transport fails it with ``ClientPayloadError``.
        aiohttp lists busy connections only in the connector's private ``_acquired``: if that
        ever goes, requests end at their own timeout.  A request asleep between tries wakes
        within ``grace`` and meets the closed session; one still running after that is
        cancelled (its future then says so: ``contract.fetch_bytes`` fails it)."""
        if on_loop is not None:
            on_loop()
        for proto in list(getattr(self.session.connector, "_acquired", ())):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)  # let connection_lost() fail the readers
        await self.session.close()
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if pending:
            _done, late = await asyncio.wait(pending, timeout=self.grace)
            for t in late:
                log.warning("cancelling a fetch that did not end when the fetcher closed")
                t.cancel()

    def close(self) -> None:
        """``abort()``, then stop and close the loop (waiting ``CLOSE_WAIT`` at most).  Call it
        once nothing submits any more.  Safe to call twice."""
        if not self._thread.is_alive():
            return
        self.abort()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CLOSE_WAIT)
        if not self._thread.is_alive():
            self._loop.close()
        else:
            log.warning("the HTTP loop did not stop within %g s", CLOSE_WAIT)


def _log_open_failure(opening: concurrent.futures.Future) -> None:
    if not opening.cancelled() and opening.exception() is not None:
        exc = opening.exception()
        log.error("cannot open the HTTP session: %s: %s", type(exc).__name__, exc)
