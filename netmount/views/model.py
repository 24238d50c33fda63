"""What a view is: files made of pieces, each either synthesized bytes (a header, a rewritten
config.json or index) or a byte range of a source file of the repo.  Pure data, no I/O.

The planner (``plan.py``) builds a ``View`` from the repo's listing, its safetensors headers
and its small JSON files; the mount serves a ``ViewFile`` by cutting a read into its pieces
(``ViewFile.cut``) and reading each source range through the same block cache as a plain
mount, so cache keys stay the source files' content ids.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Piece:
    """``length`` bytes of a view file: ``data`` itself (synthesized), or the source file
    ``source`` (a repo path) from ``offset``."""

    length: int
    data: bytes | None = None
    source: str | None = None
    offset: int = 0


@dataclass(frozen=True)
class ViewFile:
    path: str  # path in the mount
    pieces: tuple[Piece, ...]  # in order, covering [0, size) with no gap
    starts: tuple[int, ...] = field(default=(), compare=False)  # offset of each piece (derived)

    def __post_init__(self) -> None:
        pos, starts = 0, []
        for p in self.pieces:
            starts.append(pos)
            pos += p.length
        object.__setattr__(self, "starts", tuple(starts))

    @property
    def size(self) -> int:
        return (self.starts[-1] + self.pieces[-1].length) if self.pieces else 0

    def cut(self, offset: int, size: int) -> list[tuple[Piece, int, int]]:
        """The pieces a read of [offset, offset + size) touches, each as
        (piece, start within the piece, length), in order; clipped at the end of the file."""
        end = min(offset + size, self.size)
        out = []
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        while i < len(self.pieces) and offset < end:
            p, base = self.pieces[i], self.starts[i]
            lo, hi = offset - base, min(end - base, p.length)
            if hi > lo:
                out.append((p, lo, hi - lo))
                offset = base + hi
            i += 1
        return out


@dataclass(frozen=True)
class View:
    """The mount's tree under a view: ``files`` are synthesized or re-cut; ``passthrough``
    names repo files shown as they are (config rewritten only when ``--experts`` asks)."""

    files: tuple[ViewFile, ...]
    passthrough: tuple[str, ...]


def view_to_bytes(view: View) -> bytes:
    """A view as bytes, for the daemon: 8-byte length N, N bytes of JSON (source paths listed
    once; a piece is ``[length, source index, offset]``, or ``length`` for synthesized bytes),
    then the synthesized bytes back to back, in piece order.  Raw, not base64 in JSON:
    DeepSeek-V3's ``--reshard expert`` carries ~20 MB of headers, and JSON-escaping them
    (twice: the view is a field of the daemon's JSON config) cost the parent and the daemon
    ~1 s of CPU at mount time."""
    with no_gc():
        return _to_bytes(view)


def _to_bytes(view: View) -> bytes:
    index: dict[str, int] = {}
    blob: list[bytes] = []
    files = []
    for vf in view.files:
        pieces = []
        for p in vf.pieces:
            if p.data is not None:
                blob.append(p.data)
                pieces.append(p.length)
            else:
                pieces.append([p.length, index.setdefault(p.source, len(index)), p.offset])
        files.append([vf.path, pieces])
    head = json.dumps({"sources": list(index), "files": files, "passthrough": list(view.passthrough)},
                      separators=(",", ":")).encode()
    return b"".join([len(head).to_bytes(8, "little"), head, *blob])


def view_from_bytes(raw: bytes) -> View:
    """The ``View`` of ``view_to_bytes``; ValueError when ``raw`` is not one."""
    with no_gc():
        return _from_bytes(raw)


@contextlib.contextmanager
def no_gc():
    """Cyclic GC off while tens of thousands of acyclic lists and pieces are made: with the
    planned view alive, collections walk it again and again (DeepSeek-V3 --reshard expert:
    encode 0.28 -> 0.17 s, decode 0.44 -> 0.27 s CPU)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _from_bytes(raw: bytes) -> View:
    n = int.from_bytes(raw[:8], "little")
    obj = json.loads(raw[8:8 + n])
    sources, pos, files = obj["sources"], 8 + n, []
    for path, pieces in obj["files"]:
        out = []
        for p in pieces:
            if type(p) is int:
                if p < 0 or pos + p > len(raw):
                    raise ValueError("view bytes: a synthesized piece runs past the end")
                out.append(Piece(p, data=raw[pos:pos + p]))
                pos += p
            else:
                out.append(Piece(p[0], source=sources[p[1]], offset=p[2]))
        files.append(ViewFile(path, tuple(out)))
    if pos != len(raw):
        raise ValueError(f"view bytes: {len(raw) - pos} bytes left over")
    return View(files=tuple(files), passthrough=tuple(obj["passthrough"]))


@dataclass(frozen=True)
class ViewSpec:
    """The options of ``netmount mount``: ``--reshard``, ``--only`` (repeatable), ``--experts``."""

    reshard: str | None = None  # None, "layer" or "expert"
    only: tuple[str, ...] = ()  # fnmatch globs over tensor names
    experts: tuple[int, ...] | None = None  # kept routed experts, ascending

    @property
    def active(self) -> bool:
        return bool(self.reshard or self.only or self.experts is not None)
