"""What this process knows the disk store holds: one ``Held`` map per content.

A content's map is loaded from the index on first use (one range scan) and then kept up
to date by this process's own commits (``apply``: stored, replaced, merged, evicted,
dropped); what another process stores or evicts shows up on a refresh, or as a miss when
a file is gone.  The maps of the ``max_contents`` contents used last are kept.

A load runs its SQL outside the lock; a commit applied while it ran may be missing from
what it read, so every commit applied to a content being loaded is also written down
(``_journal``) and replayed on the loaded map before it is installed.  (Loading again until
no commit overlapped never ends while writers keep committing: a map installed stale by a
put made the reader fetch that put's bytes a second time.)
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
        self._journal: dict[str, list[tuple[int, Obj | str]]] = {}  # ... -> (index, obj added | ref removed)

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
            seen = len(self._journal.setdefault(content_id, []))
        try:
            fresh = self._load(content_id)
            with self.lock:
                _replay(fresh, self._journal[content_id][seen:])
                return self._install(content_id, fresh)
        finally:
            with self.lock:
                self._loading[content_id] -= 1
                if not self._loading[content_id]:
                    del self._loading[content_id]
                    del self._journal[content_id]

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
                    self._note(parsed[0], parsed[1], filename)
                    held = self._held.get(parsed[0])
                    if held is not None:
                        held.remove(parsed[1], filename)
            for row in stored:
                found = self._object(row, checked=True)
                if found is None or row.filename in gone:  # evicted by the commit that stored it
                    continue
                content_id, index, obj = found
                self._note(content_id, index, obj)
                held = self._held.get(content_id)
                if held is not None:
                    held.add(index, obj)

    def _note(self, content_id: str, index: int, change: Obj | str) -> None:
        journal = self._journal.get(content_id)
        if journal is not None:  # being loaded: replayed on the loaded map
            journal.append((index, change))


def _replay(held: Held, changes: list[tuple[int, Obj | str]]) -> None:
    """Apply commits, in the order applied, to a map loaded while they were made (it may
    hold some of them already): a removal is by file name, so replaying it is harmless; an
    object added and removed again within ``changes`` is not added (the map may hold its
    successor already)."""
    removed = {change for _, change in changes if isinstance(change, str)}
    for index, change in changes:
        if isinstance(change, str):
            held.remove(index, change)
        elif change.ref not in removed:
            held.add(index, change)
