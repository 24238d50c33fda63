"""The files of an ``--hf-cache`` mount as the prefetcher names them (``read/listing.py``).

A file is named by its path in the mount, ``models--org--name/snapshots/{sha}/{path}``, so
what the prefetcher, the readahead switch and the stats keep per file is per (repo, commit,
path).  The files themselves are the catalog's, of the commits it holds: asking never waits
on the Hub (a commit no longer held is not known: the prefetcher then knows less of that
folder until a lookup resolves it again).
"""

from __future__ import annotations

from netmount.mounting.hfcache.catalog import Catalog
from netmount.mounting.hfcache.layout import RepoKey, is_commit, parse_folder
from netmount.mounting.namespace import TreeNamespace
from netmount.remote.hub import RemoteFile


def snapshot_folder(key: RepoKey, sha: str) -> str:
    """``models--org--name/snapshots/{sha}``: where a commit's files are in the mount."""
    return f"{key.folder}/snapshots/{sha}"


def name_of(f: RemoteFile) -> str:
    """The path in the mount of a file of a resolved snapshot (its ``repo`` names the commit)."""
    return f"{snapshot_folder(RepoKey(f.repo.repo_type, f.repo.repo_id), f.repo.sha)}/{f.path}"


def split_name(name: str) -> tuple[RepoKey, str, str] | None:
    """``models--org--name/snapshots/{sha}/{rest}`` -> (repo, sha, rest); None for any other path."""
    parts = name.split("/", 3)
    if len(parts) < 3 or parts[1] != "snapshots" or not is_commit(parts[2]):
        return None
    key = parse_folder(parts[0])
    return None if key is None else (key, parts[2], parts[3] if len(parts) == 4 else "")


class HubListing:
    """``name``/``file``/``folder`` over the catalog's commits (see the module docstring)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    name = staticmethod(name_of)

    def file(self, name: str) -> RemoteFile | None:
        found = self._tree(name)
        return None if found is None else found[0].files.get("/" + found[1])

    def folder(self, folder: str) -> list[str]:
        found = self._tree(folder)
        if found is None:
            return []
        tree, rest = found
        inside = "/" + rest if rest else "/"
        names = tree.dirs.get(inside, ())
        prefix = inside.rstrip("/") + "/"
        return sorted(f"{folder}/{n}" for n in names if prefix + n in tree.files)

    def _tree(self, name: str) -> tuple[TreeNamespace, str] | None:
        where = split_name(name)
        if where is None:
            return None
        key, sha, rest = where
        tree = self.catalog.commit(key, sha)
        return None if tree is None else (tree, rest)
