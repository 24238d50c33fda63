"""The fetcher's threads: one request at a time each (so one connection per host each), demand
requests first, prefetch requests on at most ``prefetch_threads`` of them at once.

Why two queues rather than a pool: a read that waits must never queue behind a full set of
multi-MiB prefetch requests (measured: tail reads of a cold load waited 100-240 ms for a
connection), and a prefetch request must not sit on a thread while it waits for room.  So a
prefetch job is taken only while fewer than ``prefetch_threads`` run, and a demand job is
always taken first by the next free thread.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

log = logging.getLogger("netmount.fetch")

Job = Callable[[], None]


class Lanes:
    def __init__(self, threads: int, prefetch_threads: int, name: str = "netmount-fetch") -> None:
        self.threads, self.prefetch_threads = max(1, threads), max(1, min(threads, prefetch_threads))
        self._name = name
        lock = threading.Lock()
        self._ready = threading.Condition(lock)  # a job for a waiting thread
        self._settled = threading.Condition(lock)  # nothing queued or running (``idle``)
        self._demand: collections.deque[Job] = collections.deque()
        self._prefetch: collections.deque[Job] = collections.deque()
        self._running = self._running_prefetch = 0
        self._closed = False
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._workers = [threading.Thread(target=self._work, name=f"{self._name}-{n}", daemon=True)
                         for n in range(self.threads)]
        for t in self._workers:
            t.start()

    def submit(self, job: Job, prefetch: bool = False) -> None:
        """Run ``job()`` on a free thread (it handles its own errors)."""
        with self._ready:
            (self._prefetch if prefetch else self._demand).append(job)
            self._ready.notify()

    def idle(self, timeout: float) -> bool:
        """Wait until no job is queued or running; False after ``timeout`` seconds."""
        with self._settled:
            return self._settled.wait_for(self._is_idle, timeout)

    def _is_idle(self) -> bool:
        return not (self._running or self._demand or self._prefetch)

    def close(self, timeout: float = 10.0) -> bool:
        """Run what is queued, then end the threads (each joined within ``timeout``)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for t in self._workers:
            t.join(timeout)
        return not any(t.is_alive() for t in self._workers)

    def _next(self) -> tuple[Job | None, bool]:
        """(the next job, whether it is a prefetch one), or (None, _) to end; under the lock."""
        while True:
            if self._demand:
                return self._demand.popleft(), False
            if self._prefetch and self._running_prefetch < self.prefetch_threads:
                self._running_prefetch += 1
                return self._prefetch.popleft(), True
            if self._closed and not self._prefetch:
                return None, False
            self._ready.wait()

    def _work(self) -> None:
        while True:
            with self._ready:
                job, prefetch = self._next()
                if job is None:
                    return
                self._running += 1
            try:
                job()
            except BaseException:  # a job reports its own errors: this is a bug
                log.exception("a fetch job failed unexpectedly")
            finally:
                del job  # what it holds (a fetch's pieces) is not kept while this thread waits
                with self._ready:
                    self._running -= 1
                    self._running_prefetch -= prefetch
                    if prefetch and self._prefetch:
                        self._ready.notify()  # room for a queued prefetch job
                    if self._is_idle():
                        self._settled.notify_all()
