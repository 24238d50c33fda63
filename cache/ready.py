"""Objects checked ahead of a reader, kept in memory for its reads: a window that slides.

A ``prepare`` thread reads an object past the page cache (``direct.py``) and checks it; its
bytes wait here until the read they were checked for takes them.  At most ``limit`` bytes
wait.  A prepare ahead of a loader is handed whole files at once, and its threads outrun the
reader, so a hint that finds no room is *queued*, not checked: each object a read takes out
(or that ages out unread) lets the oldest queued hint go (``on_room``).  The window so stays
``limit`` bytes ahead of the reader.  Measured on a warm 1.5 GB mmap load before the queue:
792 objects kept, 32 read, the rest pushed out by newer ones before their reader came (each
then read again from its file).
"""

from __future__ import annotations

import collections
import threading
import time
from collections import OrderedDict
from typing import Callable

from .direct import share

WAITING = 8192  # hints queued at most (past it, a new one is dropped: its read checks itself)
AGE = 5.0  # seconds an unread object waits before it is dropped (its reader went elsewhere)


class Ready:
    def __init__(self, limit: int, on_room: Callable[[tuple], bool | None] = lambda hint: None, *,
                 age: float = AGE, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.on_room, self.age, self.clock = limit, on_room, age, clock
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[memoryview, float]] = OrderedDict()  # oldest first
        self._bytes = 0  # kept, and reserved for checks under way
        self._waiting: collections.deque[tuple] = collections.deque()
        self.kept = self.taken = self.unused = 0  # counters (benchmarks, tests)

    def reserve(self, size: int, hint: tuple, *, released: bool = False) -> bool:
        """Room for ``size`` more bytes: reserved (True; ``settle`` it after the check), or
        ``hint`` queued for when there is room (False).  In turn: a new hint waits behind the
        queued ones; a ``released`` one (``on_room`` let it go) takes the room it was let go for."""
        with self._lock:
            freed = self._expire()
            room = self._bytes + size <= self.limit
            if room and (released or not self._waiting):
                self._bytes += size
                go = True
            else:
                go = False
                if len(self._waiting) < WAITING:
                    self._waiting.append(hint)
                freed = freed or int(room)  # room all the same (a released hint was lost): the oldest goes
        self._release(freed)
        return go

    def settle(self, size: int) -> None:
        """The check a ``reserve`` was for is over (whether it kept its bytes or not)."""
        with self._lock:
            self._bytes -= size

    def put(self, name: str, view: memoryview) -> None:
        """Keep ``view`` for later reads."""
        with self._lock:
            old = self._items.pop(name, None)
            self._bytes += view.nbytes - (old[0].nbytes if old is not None else 0)
            self._items[name] = (view, self.clock())
            self.kept += 1

    def get(self, name: str, end: int) -> memoryview | None:
        """The bytes of ``name``; a read up to ``end`` = its last byte takes them out."""
        freed = 0
        with self._lock:
            item = self._items.get(name)
            if item is None:
                return None
            view = item[0]
            if end >= view.nbytes:
                self.taken += 1
                del self._items[name]
                self._bytes -= view.nbytes
                freed = 1
            else:
                share(view)
        self._release(freed)
        return view

    def discard(self, name: str) -> None:
        with self._lock:
            item = self._items.pop(name, None)
            if item is not None:
                self._bytes -= item[0].nbytes
        self._release(item is not None)

    def _expire(self) -> int:
        """Drop what waited past ``age`` (under the lock); how many went."""
        now, gone = self.clock(), 0
        while self._items:
            name, (view, since) = next(iter(self._items.items()))
            if now - since < self.age:
                break
            del self._items[name]
            self._bytes -= view.nbytes
            self.unused += 1
            gone += 1
        return gone

    def _release(self, count: int) -> None:
        """Let ``count`` queued hints go (outside the lock: ``on_room`` submits work); one
        that ``on_room`` finds stale (False: its object was read meanwhile) lets the next go."""
        while count > 0:
            with self._lock:
                if not self._waiting:
                    return
                hint = self._waiting.popleft()
            count -= self.on_room(hint) is not False
