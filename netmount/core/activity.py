"""A count of work under way, and a wait until there is none: what ``idle`` is made of.

Each part of the read path that starts work the daemon must finish before it may call
itself settled (a read being served, a head or an extent being fetched and handed on)
holds one of these while the work runs; ``wait_none`` blocks on a condition, never polls.
"""

from __future__ import annotations

import threading


class Activity:
    def __init__(self) -> None:
        self._count = 0
        self._none = threading.Condition(threading.Lock())

    def add(self, n: int = 1) -> None:
        """``n`` more pieces of work under way (negative: that many ended)."""
        with self._none:
            self._count += n
            if self._count <= 0:
                self._none.notify_all()

    def __enter__(self) -> "Activity":
        self.add(1)
        return self

    def __exit__(self, *exc) -> None:
        self.add(-1)

    def wait_none(self, timeout: float | None = None) -> bool:
        """Block until no work is under way; False if some still is after ``timeout``."""
        with self._none:
            return self._none.wait_for(lambda: self._count <= 0, timeout)
