"""Which files the prefetcher knows, named as the mount shows them.

Everything above the reader — the prefetch policy's state, the loader's folders, the readahead
switch, which bytes programs read — names a file by its path in the mount (no leading slash):
for a plain mount its path in the repo, for ``--hf-cache`` ``models--org--name/snapshots/{sha}/
{path}`` (``mounting/hfcache/listing.py``).  So state is kept per (repo, commit, path) without
any of it knowing of repos: two repos that both hold ``model-00001-of-00002.safetensors`` are
two names, two folders.

A listing answers three questions, none of which waits on the network:

- ``name(f)``: the name of a file the reader reads (a ``RemoteFile``);
- ``file(name)``: the file a name names, or None when it is not known now;
- ``folder(folder)``: the names of the files directly in a folder (sorted; [] if unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from netmount.remote.hub import RemoteFile


class Listing(Protocol):
    def name(self, f: RemoteFile) -> str: ...

    def file(self, name: str) -> RemoteFile | None: ...

    def folder(self, folder: str) -> list[str]: ...


class FixedListing:
    """One snapshot's files (a plain mount): a file's name is its path in the repo."""

    def __init__(self, files: Iterable[RemoteFile]) -> None:
        self._files = {f.path: f for f in files}
        self.folder = by_folder(self._files)

    def name(self, f: RemoteFile) -> str:
        return f.path

    def file(self, name: str) -> RemoteFile | None:
        return self._files.get(name)


def by_folder(paths: Iterable[str]) -> Callable[[str], list[str]]:
    """A fixed tree's ``folder -> the names of the files in it`` (sorted)."""
    folders: dict[str, list[str]] = {}
    for p in sorted(paths):
        folders.setdefault(p.rpartition("/")[0], []).append(p)
    return lambda folder: list(folders.get(folder, ()))
