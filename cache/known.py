"""What this process knows the disk store holds: one ``Held`` map per content.

A content's map is loaded from the index on first use (one range scan) and then kept up
to date by this process's own commits (``apply``: stored, replaced, merged, evicted,
dropped); what another process stores or evicts shows up on a refresh, or as a miss when
a file is gone.  The maps of the ``max_contents`` contents used last are kept.

A load runs its SQL outside the lock; a commit applied while it ran would be missing from
what it read, so such a load is done again (up to three times; after that the map may be
stale by a put or two, which only costs a refetch: a miss refreshes).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from typing import Iterable

from .held import Held, Obj
from .index import Index, Row
from .store import check_content_id


class Known:
    def __init__(self, index: Index, max_contents: int = 4096) -> None:
        self.index = index
        self.block_size = index.block_size
        self.lock = threading.Lock()  # guards every map; held for dict and list work only
        self._held: OrderedDict[str, Held] = OrderedDict()  # content id -> map, LRU
        self._max_contents = max_contents
        self._loading: Counter[str] = Counter()  # contents being loaded -> loaders
        self._changed: Counter[str] = Counter()  # ... -> commits applied meanwhile

    def get(self, content_id: str, refresh: bool = False) -> Held:
        """The map of ``content_id``, loaded if this process has none (or ``refresh``)."""
        if not refresh:
            with self.lock:
                held = self._held.get(content_id)
                if held is not None:
                    self._held.move_to_end(content_id)
                    return held
        check_content_id(content_id)
        with self.lock:
            self._loading[content_id] += 1
        try:
            for _ in range(3):
                seen = self._changed[content_id]
                fresh = self._load(content_id)
                with self.lock:
                    if self._changed[content_id] == seen:
                        return self._install(content_id, fresh)
            with self.lock:
                return self._install(content_id, fresh)
        finally:
            with self.lock:
                self._loading[content_id] -= 1
                if not self._loading[content_id]:
                    del self._loading[content_id]
                    self._changed.pop(content_id, None)

    def plan(self, content_id: str, offset: int, end: int, size: int):
        """``Held.plan`` on the content's map (loaded first if need be)."""
        with self.lock:
            held = self._held.get(content_id)
            if held is not None:
                self._held.move_to_end(content_id)
                return held.plan(offset, end, size, self.block_size)
        held = self.get(content_id)
        with self.lock:
            return held.plan(offset, end, size, self.block_size)

    def spans(self, content_id: str, refresh: bool = False) -> list[tuple[int, int]]:
        held = self.get(content_id, refresh)
        with self.lock:
            return list(held.spans())

    def whole(self, content_id: str, index: int) -> Obj | None:
        held = self.get(content_id)
        with self.lock:
            return held.blocks.get(index)

    def add(self, content_id: str, index: int, obj: Obj) -> None:
        with self.lock:
            held = self._held.get(content_id)
            if held is not None:
                held.add(index, obj)

    def forget(self, content_id: str, index: int | None = None, ref: str | None = None) -> None:
        """Forget one object (``index``, ``ref``), or the whole content's map."""
        with self.lock:
            if index is None:
                self._held.pop(content_id, None)
                return
            held = self._held.get(content_id)
            if held is not None:
                held.remove(index, ref)

    def overlapping(self, content_id: str, ranges: Iterable[tuple[int, int]], size: int | None
                    ) -> list[tuple[int, Obj]]:
        """Objects with a byte in any of ``ranges`` (each once)."""
        held = self.get(content_id)
        with self.lock:
            found = {id(obj): (index, obj) for a, b in ranges
                     for index, obj in held.overlapping(a, b if size is None else min(b, size), self.block_size)}
        return list(found.values())

    def _load(self, content_id: str) -> Held:
        held = Held()
        for row in self.index.rows(content_id):
            found = self._object(row)
            if found is not None:
                held.add(found[1], found[2])
        return held

    def _object(self, row: Row, checked: bool = False) -> tuple[str, int, Obj] | None:
        """``(content_id, index, object)`` of an object row of this block size."""
        parsed = self.index.parse(row.key)
        if parsed is None:
            return None
        content_id, index, offset = parsed
        start = index * self.block_size + (offset or 0)
        return content_id, index, Obj(start, row.size, row.filename, offset is None, row.crc, checked)

    def _install(self, content_id: str, fresh: Held) -> Held:
        old = self._held.get(content_id)
        if old is not None:  # checked once per process: names are never reused
            checked = {obj.ref for _, obj in old.objects() if obj.checked}
            for _, obj in fresh.objects():
                obj.checked = obj.ref in checked
        self._held[content_id] = fresh
        self._held.move_to_end(content_id)
        while len(self._held) > self._max_contents:
            self._held.popitem(last=False)
        return fresh

    def apply(self, stored: list[Row], removed: list[tuple[str, str]]) -> None:
        """Bring the maps in line with a commit: rows ``stored`` (written by this process:
        checked) and ``(key, filename)`` rows ``removed``."""
        gone = {filename for _, filename in removed}
        with self.lock:
            for key, filename in removed:
                parsed = self.index.parse(key)
                if parsed is not None:
                    self._touch(parsed[0])
                    held = self._held.get(parsed[0])
                    if held is not None:
                        held.remove(parsed[1], filename)
            for row in stored:
                found = self._object(row, checked=True)
                if found is None or row.filename in gone:  # evicted by the commit that stored it
                    continue
                content_id, index, obj = found
                self._touch(content_id)
                held = self._held.get(content_id)
                if held is not None:
                    held.add(index, obj)

    def _touch(self, content_id: str) -> None:
        if content_id in self._loading:
            self._changed[content_id] += 1
