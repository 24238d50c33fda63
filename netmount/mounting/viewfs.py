"""Serving a view's files: a read is cut into its pieces; synthesized pieces come from memory,
source pieces through the one ``BlockReader`` as reads of the *source* file.

So cache keys stay the source files' content ids (a plain mount, or another view, of the
same repo reuses every block), and the bytes counters and read coverage of the source files
count what a view read cost.

Prefetch: each source piece of a program's read is handed to the prefetcher as a read of
the source file (``plan`` before, ``follow`` after), under a handle of its own per (open
view file, source file): the loader heuristics then see what they see on a plain mount —
sequential reads of a source file, jumps to tensor starts — and fetch ahead in the source.
Reads of the raw mirror (``/.netmount/raw``) get no prefetch, as on a plain mount.
A program's read that starts in a synthesized piece (a header: ``safe_open``'s first page
fault, and the kernel's read-around of it, up to the readahead) fetches the source bytes
it spills into exactly (their pages, not their blocks) and tells the prefetcher nothing:
opening a view file must not start fetching the tensors behind its header (the MTP layer
of a ``--reshard layer`` view that transformers opens but never reads).  Raw reads are
``direct_io`` (fs.py): they arrive exactly as asked, so ``netmount tensors`` reads a view
header without spilling, and ``netmount prefetch`` gets whole source blocks stored.

Per view file this keeps the bytes served and the read coverage (``stats.json``:
``view_files``); its tensors are known from its synthesized header (no network).
"""

from __future__ import annotations

import threading

from cache import Segment
from netmount.core.blocks import coalesce
from netmount.core.ranges import Ranges
from netmount.read.coverage import Coverage
from netmount.read.metadata import Folders, TensorMaps
from netmount.read.reader import ExactRead, cut, join
from netmount.remote.hub import RemoteFile, Snapshot
from netmount.views.model import View, ViewFile

EXACT = ExactRead()  # fetch a miss as its pages, not its blocks


class ViewTree:
    """A ``View`` bound to the snapshot's files and the reader: what the FUSE face serves."""

    def __init__(self, view: View, snap: Snapshot, reader, prefetcher=None, maps: TensorMaps | None = None) -> None:
        self.view, self.reader, self.prefetcher = view, reader, prefetcher
        self.sources: dict[str, RemoteFile] = {f.path: f for f in snap.files}
        self.passthrough = [self.sources[p] for p in view.passthrough]
        self.files: dict[str, ViewFile] = {vf.path: vf for vf in view.files}
        self.coverage = Coverage()  # of view files, in view offsets
        self._served: dict[str, int] = {}
        self._handles: dict[int, set] = {}  # open view handle -> its per-source prefetch handles
        self._lock = threading.Lock()
        self.maps = maps if maps is not None else TensorMaps()  # the daemon's one cache of layouts
        self.folders = Folders([*self.files, *view.passthrough], self._whole)

    def header_only(self, path: str) -> bool:
        """Will a loader open view file ``path`` for its header only (the MTP layer's file of a
        ``--reshard layer`` view)?  From the view's own index and config (``read/unbuilt.py``),
        for the readahead switch, as the prefetcher answers it on a plain mount."""
        return self.folders.header_only(path)

    def _whole(self, path: str) -> bytes | None:
        """A small file of the view as it shows it (synthesized, or a passthrough source)."""
        vf = self.files.get(path)
        if vf is not None:  # (the rewritten index and config are synthesized whole: no reads counted)
            return b"".join(p.data for p in vf.pieces) if all(p.data is not None for p in vf.pieces) else None
        f = self.sources.get(path) if path in self.view.passthrough else None
        return self.reader.read(f, 0, f.size, account=False) if f is not None and f.size <= 64 << 20 else None

    def read(self, vf: ViewFile, offset: int, size: int, handle: int | None, prefetch: bool = True) -> bytes:
        return join(self.reply(vf, offset, size, handle, prefetch))

    def reply(self, vf: ViewFile, offset: int, size: int, handle: int | None,
              prefetch: bool = True) -> list[Segment]:
        """The segments of [offset, offset + size) of ``vf``: synthesized bytes from memory,
        source bytes as the reader answers them (stored files' fds, or fetched bytes)."""
        policy = self.prefetcher if prefetch and handle is not None else None
        pieces = vf.cut(offset, size)
        header_read = policy is not None and bool(pieces) and pieces[0][0].data is not None
        out: list[Segment] = []
        for piece, lo, n in pieces:
            if piece.data is not None:
                out.append(Segment(-1, lo, n, piece.data))
                continue
            f = self.sources[piece.source]
            at = piece.offset + lo
            if header_read:  # the read-around of a header: exactly these bytes, no prefetch
                out.extend(self.reader.reply(f, at, n, exact=EXACT))
                continue
            if policy is None:
                out.extend(self._whole_blocks(f, at, n))
                continue
            key = (handle, f.path)
            with self._lock:
                self._handles.setdefault(handle, set()).add(key)
            exact = policy.plan(key, f, at, n)
            segs = self.reader.reply(f, at, n, exact=exact)
            policy.follow(key, f, at, sum(s.length for s in segs))
            out.extend(segs)
        got = sum(s.length for s in out)
        if got:
            self.coverage.record(vf, offset, got)
            with self._lock:
                self._served[vf.path] = self._served.get(vf.path, 0) + got
        return out

    def _whole_blocks(self, f: RemoteFile, at: int, n: int) -> list[Segment]:
        """``[at, at + n)`` of ``f``, fetched as the whole blocks that hold it: a raw read
        (``netmount prefetch``) is asked to cache whole blocks, and a short read near a file's
        start would otherwise fetch only the head of its first block."""
        bs = self.reader.block_size
        lo, hi = at // bs * bs, min(-(-(at + n) // bs) * bs, f.size)
        segs = cut(self.reader.reply(f, lo, hi - lo, account=False), at - lo, n)
        got = sum(s.length for s in segs)
        self.reader.counters.add("bytes_served", got, path=f.path)
        if self.reader.on_served is not None:
            self.reader.on_served(f, at, got)
        return segs

    def release(self, handle: int) -> None:
        with self._lock:
            keys = self._handles.pop(handle, ())
        if self.prefetcher is not None:
            for key in keys:
                self.prefetcher.forget(key)

    # -- what is local ---------------------------------------------------------------------------
    def cached_bytes(self, vf: ViewFile, known: dict | None = None) -> int:
        """Bytes of ``vf`` whose source bytes are stored (synthesized bytes always are)."""
        return sum(hi - lo for lo, hi in self._local_spans(vf, known))

    def cached_runs(self, vf: ViewFile, block_size: int, known: dict | None = None) -> list[list[int]]:
        """``[first, last]`` runs of view-file blocks (of ``block_size``) wholly local."""
        local = self._local_spans(vf, known)
        blocks, i = [], 0
        for b in range(-(-vf.size // block_size)):
            lo, hi = b * block_size, min((b + 1) * block_size, vf.size)
            while i < len(local) and local[i][1] <= lo:
                i += 1
            if i < len(local) and local[i][0] <= lo and local[i][1] >= hi:
                blocks.append(b)
        return [list(r) for r in coalesce(blocks)]

    def _local_spans(self, vf: ViewFile, known: dict | None) -> list[tuple[int, int]]:
        """Maximal ``[lo, hi)`` spans of ``vf`` that are local, in order."""
        spans: list[tuple[int, int]] = []

        def add(lo: int, hi: int) -> None:
            if spans and spans[-1][1] == lo:
                spans[-1] = (spans[-1][0], hi)
            elif hi > lo:
                spans.append((lo, hi))

        for start, p in zip(vf.starts, vf.pieces):
            if p.data is not None:
                add(start, start + p.length)
                continue
            f = self.sources[p.source]
            have = known.get(f.path) if known is not None else None
            if have is None:
                have = Ranges(self.reader.store.held(f.content_id))
                if known is not None:
                    known[f.path] = have
            for lo, hi in have.intersect(p.offset, p.offset + p.length):
                add(start + lo - p.offset, start + hi - p.offset)
        return spans

    # -- for stats.json --------------------------------------------------------------------------
    def tensors(self, vf: ViewFile) -> list[tuple[str, int, int]] | None:
        """``(name, start, end)`` of a view safetensors file, from its synthesized header."""
        head = vf.pieces[0].data if vf.pieces and vf.path.endswith(".safetensors") else None
        if head is None:
            return None
        layout = self.maps.layout("view:" + vf.path, vf.path, vf.size, lambda a, b: head[a:b], len(head))
        return list(layout.names) if layout is not None and layout.names is not None else None

    def stats(self, block_size: int) -> tuple[list[dict], list[dict]]:
        """Per view file (passthrough files included) and per view tensor: sizes, bytes served
        and read, what is cached; never any network."""
        known: dict = {}
        files, tensors = [], []
        with self._lock:
            served = dict(self._served)
        for vf in self.view.files:
            cached = self.cached_bytes(vf, known)
            files.append({
                "path": vf.path, "size": vf.size, "cached_bytes": cached,
                "served_bytes": served.get(vf.path, 0),
                "read_bytes": self.coverage.covered_bytes(vf.path),
                "cached_runs": self.cached_runs(vf, block_size, known) if cached else [],
                "sources": sorted({p.source for p in vf.pieces if p.source is not None}),
            })
            known_t = self.tensors(vf)
            if known_t:
                touched = self.coverage.touched(vf.path, [(s, e) for _, s, e in known_t])
                tensors.extend({"name": name, "file": vf.path, "nbytes": e - s, "touched_bytes": t}
                               for (name, s, e), t in zip(known_t, touched))
        return files, tensors
