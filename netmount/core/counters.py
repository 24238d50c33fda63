"""Thread-safe counters shared by the fetcher, the reader and the stats file."""

from __future__ import annotations

import threading
import time
from collections import defaultdict


class Counters:
    """Named integer counters plus per-file tallies; cheap enough for every read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = defaultdict(int)
        self._per_file: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.started = time.time()

    def add(self, name: str, n: int = 1, path: str | None = None) -> None:
        with self._lock:
            self._values[name] += n
            if path is not None:
                self._per_file[path][name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def per_file(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {p: dict(v) for p, v in self._per_file.items()}
