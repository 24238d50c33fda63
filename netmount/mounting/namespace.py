"""What a path of a mount is: the one question the FUSE face asks of what a mount shows.

A plain mount shows one repo's files, a view shows files synthesized from one repo, and
``--hf-cache`` shows the Hub in huggingface_hub's cache layout, its repos resolved on first
lookup.  The FUSE face (fs.py) serves all three the same way through this interface:

- ``lookup(path) -> Node``: what ``/a/b`` is — a folder, a file the reader reads (a
  ``RemoteFile``, or a view's ``ViewFile``), or a small file held whole (``data``: an hf-cache
  ``refs/main``).  Raises ``NotFound`` (ENOENT) or ``Unavailable`` (EIO: could not be answered
  now, e.g. the Hub did not answer in time); never blocks without a bound.
- ``children(path) -> list[str]``: the names in a folder, sorted (``NotFound``, ``NotAFolder``).

getattr, readdir, open and access are then a lookup each; ``read`` gets the node's file.
``TreeNamespace`` is the plain and view case: a fixed tree, two dicts built once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class NotFound(Exception):
    """No such path (ENOENT)."""


class NotAFolder(Exception):
    """A folder's listing asked of a file (ENOTDIR)."""


class Unavailable(Exception):
    """The path's answer could not be had now (EIO): the Hub failed or is slow; try again."""


@dataclass(frozen=True)
class Node:
    """What a path is.  ``kind``: "dir", "file" (``file`` is what the reader reads: it has
    ``path`` and ``size``) or "data" (``data`` is the whole content, synthesized)."""

    kind: str
    file: object | None = None
    data: bytes | None = None
    fresh: bool = False  # "data" that may differ at the next open (refs/<branch>): no page cache

    @property
    def size(self) -> int:
        if self.kind == "file":
            return self.file.size
        return len(self.data) if self.kind == "data" else 0


DIR = Node("dir")


def file_node(f) -> Node:
    return Node("file", file=f)


def data_node(content: bytes, fresh: bool = False) -> Node:
    return Node("data", data=content, fresh=fresh)


class Namespace(Protocol):
    def lookup(self, path: str) -> Node: ...

    def children(self, path: str) -> list[str]: ...


class TreeNamespace:
    """A fixed tree of files, each with a repo-relative ``path``: a plain mount's snapshot, a
    view's files, or (in ``--hf-cache``) one snapshot of one repo.  Paths are absolute
    (``/a/b``, ``/`` the root), as FUSE gives them."""

    def __init__(self, files: Iterable) -> None:
        self.files: dict[str, object] = {}
        self.dirs: dict[str, set[str]] = {"/": set()}
        for f in files:
            self.files["/" + f.path] = f
            parts = f.path.split("/")
            for depth in range(len(parts)):
                parent = "/" + "/".join(parts[:depth])
                self.dirs.setdefault(parent.rstrip("/") or "/", set()).add(parts[depth])

    def lookup(self, path: str) -> Node:
        f = self.files.get(path)
        if f is not None:
            return file_node(f)
        if path in self.dirs:
            return DIR
        raise NotFound(path)

    def children(self, path: str) -> list[str]:
        names = self.dirs.get(path)
        if names is None:
            raise NotAFolder(path) if path in self.files else NotFound(path)
        return sorted(names)

    @property
    def entries(self) -> int:
        """How many paths it holds (files and folders): its weight in a bounded cache."""
        return len(self.files) + len(self.dirs)


def plain_namespace(snapshot) -> TreeNamespace:
    """A plain mount: the repo's files as they are."""
    return TreeNamespace(snapshot.files)


def view_namespace(view) -> TreeNamespace:
    """A view mount (a ``viewfs.ViewTree``): the view's files and the source files it passes through."""
    return TreeNamespace([*view.passthrough, *view.files.values()])
