"""What the files of a repo say about themselves: one cache for the policy, stats and views.

- ``TensorMaps``: each file's tensor layout — a safetensors file's tensors from its header,
  a parquet file's column chunks from its footer — parsed once, kept by content id (the same
  blob has the same layout under every path, view and revision), with the tensors' names for
  ``stats.json``.  Bounded: least recently used maps go first once the maps hold
  ``max_tensors`` tensors in all (DeepSeek-V3's 163 headers are ~92k; issue 22 puts many
  repos in one daemon).  How the bytes are read is the caller's: the prefetcher reads through
  the reader, ``stats.json`` only what is local (``NotLocal``: not known yet, asked again).
- ``Folders``: per folder of a listing, its safetensors shards, the order a loader reads
  them in (from the index's weight map), and the shards a loader opens only for their
  header (``unbuilt.py``: from the index and config.json).  Computed once per folder from the
  two small files, and only the answers are kept (a weight map of 92k keys is not).

No locks are held while reading: two threads asking at once may both parse (the reader
fetches once); the first answer is kept.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netmount.core.recent import Recent
from netmount.core.safetensors import HeaderError, read_header
from netmount.read.listing import by_folder
from netmount.read.loader import loader_order
from netmount.read.parquet import ParquetError, read_layout
from netmount.read.tensormap import TensorMap
from netmount.read.unbuilt import num_layers, unbuilt_shards

log = logging.getLogger("netmount.metadata")

Read = Callable[[int, int], bytes]  # read(start, end) -> the file's bytes [start, end)
Names = tuple[tuple[str, int, int], ...]  # (name, start, end) of every tensor, in file order


class NotLocal(Exception):
    """Raised by a ``Read`` that will not fetch: the bytes are not local (yet)."""


@dataclass(frozen=True)
class Layout:
    """A file's layout: its map (None: not a file we can map) and, for safetensors, names."""

    tmap: TensorMap | None
    names: Names | None = None

    @property
    def weight(self) -> int:
        return 1 + (len(self.tmap.ranges) if self.tmap is not None else 0)


def mapped(path: str) -> bool:
    """Files whose layout the policy knows: safetensors (tensors), parquet (column chunks)."""
    return path.endswith((".safetensors", ".parquet"))


def parse(path: str, size: int, read: Read, first: int) -> Layout:
    """The layout of a file, reading it through ``read``: a safetensors header (``first``
    bytes, then the rest of a longer header), or a parquet footer.  A file that does not
    parse has no map (logged); ``NotLocal`` and fetch errors propagate."""
    try:
        if path.endswith(".parquet"):
            layout = read_layout(read, size)
            ranges = [(c.start, c.end) for c in layout.chunks] + [(layout.footer_start, size)]
            if ranges[0][0] <= 4:  # the leading magic: a reader of the first chunk reads page 0
                ranges[0] = (0, ranges[0][1])
            return Layout(TensorMap(ranges, columnar=True))
        tensors = read_header(read, size, first=first)
        return Layout(TensorMap([(t.start, t.end) for t in tensors]), tuple((t.name, t.start, t.end) for t in tensors))
    except (HeaderError, ParquetError) as exc:
        log.warning("%s: not a file we can map, no tensor- or column-aware prefetch: %s", path, exc)
        return Layout(None)


class TensorMaps:
    """Layouts by key (a content id), least recently used dropped past ``max_tensors``."""

    def __init__(self, max_tensors: int = 1 << 20) -> None:
        self.max_tensors = max_tensors
        self._lock = threading.Lock()
        self._layouts: OrderedDict[str, Layout] = OrderedDict()
        self._weight = 0

    def get(self, key: str) -> Layout | None:
        """The layout kept for ``key``, or None when it is not known (yet)."""
        with self._lock:
            layout = self._layouts.get(key)
            if layout is not None:
                self._layouts.move_to_end(key)
            return layout

    def layout(self, key: str, path: str, size: int, read: Read, first: int) -> Layout | None:
        """The layout of a file, parsed through ``read`` if not kept; None when ``read``
        raised ``NotLocal`` or failed (logged): nothing is kept, the next call asks again."""
        known = self.get(key)
        if known is not None:
            return known
        try:
            found = parse(path, size, read, first)
        except NotLocal:
            return None
        except Exception as exc:  # a fetch failed (the program's own read will meet it): asked again later
            log.warning("%s: layout not read (%s)", path, exc)
            return None
        return self.put(key, found)

    def put(self, key: str, layout: Layout) -> Layout:
        """Keep ``layout`` for ``key`` unless one is kept already; the one kept."""
        with self._lock:
            kept = self._layouts.setdefault(key, layout)
            if kept is layout:
                self._weight += layout.weight
                while self._weight > self.max_tensors and len(self._layouts) > 1:
                    _, old = self._layouts.popitem(last=False)
                    self._weight -= old.weight
            self._layouts.move_to_end(key)
            return kept

    def forget(self, key: str) -> None:
        """``key``'s bytes were dropped (found wrong by ``netmount verify``): parse anew."""
        with self._lock:
            old = self._layouts.pop(key, None)
            if old is not None:
                self._weight -= old.weight


class Folders:
    """The folders of a listing: shards, a loader's order, shards opened for the header only.

    ``files``: the names of the files (all of them, for a fixed tree) or a function
    ``folder -> names of the files in it`` (a listing that grows: ``--hf-cache``).  What is
    worked out per folder is kept for the ``max_folders`` folders asked of most recently."""

    def __init__(self, files: Iterable[str] | Callable[[str], Iterable[str]],
                 read_small: Callable[[str], bytes | None], max_folders: int = 1024) -> None:
        self._read = read_small  # name -> a small file's bytes (the index, config.json), or None
        self._listed = files if callable(files) else by_folder(files)
        self._lock = threading.Lock()
        self._known: Recent = Recent(max_folders)  # folder -> (order, unbuilt names)

    def shards(self, folder: str) -> list[str]:
        """The folder's safetensors files, by name (the order transformers opens them in)."""
        return sorted(p for p in self._listed(folder) if p.endswith(".safetensors"))

    def header_only(self, path: str) -> bool:
        """Will a loader open shard ``path`` for its header only (DeepSeek-V3's MTP shard)?"""
        folder, _, name = path.rpartition("/")
        return path.endswith(".safetensors") and name in self._folder(folder)[1]

    def order(self, folder: str) -> list[str]:
        """The folder's shards in a loader's order (by the index), unbuilt ones left out."""
        return self._folder(folder)[0]

    def _folder(self, folder: str) -> tuple[list[str], frozenset[str]]:
        with self._lock:
            known = self._known.get(folder)
        if known is not None:
            return known
        prefix = folder + "/" if folder else ""
        weight_map = None
        index = min((p for p in self._listed(folder) if p.endswith(".safetensors.index.json")), default=None)
        try:
            raw = self._read(index) if index else None
            weight_map = json.loads(raw).get("weight_map") if raw else None
            layers = num_layers(self._read(prefix + "config.json")) if isinstance(weight_map, dict) else None
        except Exception as exc:  # unreadable: nothing is known, the shards open as any other
            log.warning("%s: no loader order from the index (%s)", index or folder, exc)
            layers = None
        weight_map = weight_map if isinstance(weight_map, dict) else None
        skip = unbuilt_shards(weight_map, layers) if layers else frozenset()
        order = loader_order([p for p in self.shards(folder) if p.rpartition("/")[2] not in skip], weight_map)
        with self._lock:
            return self._known.setdefault(folder, (order, skip))
