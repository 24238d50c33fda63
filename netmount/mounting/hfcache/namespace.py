"""The Hub as huggingface_hub's cache folder: ``lookup`` and ``children`` of every path in it.

::

    /                                       every repo resolved so far, and those pinned
    /models--{org}--{name}/                 (datasets--, spaces--) resolved on first lookup
        refs/{revision}                     the commit sha (40 bytes); a branch is checked again
                                            after refs_ttl, so its content may change (fresh)
        snapshots/{sha}/{path}              the repo's files at that commit, exact sizes, no
                                            symlinks; a sha not seen yet is resolved on lookup
        trees/{sha}.json                    the commit's listing, as huggingface_hub 2.x caches it
        .no_exist/{sha}/{path}              an empty file for a path the commit does not have

No ``blobs/``: every reader of the cache goes through ``snapshots/`` (see the package's
docstring for what huggingface_hub reads, with its source).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from netmount.mounting.hfcache.catalog import Catalog, Misses
from netmount.mounting.hfcache.flights import Flights, Workers
from netmount.mounting.hfcache.layout import RepoKey, is_commit, parse_folder, ref_content, tree_json
from netmount.mounting.hfcache.resolution import Resolution, Resolver, RevisionMissing
from netmount.mounting.namespace import DIR, Node, NotAFolder, NotFound, TreeNamespace, data_node

SECTIONS = (".no_exist", "refs", "snapshots", "trees")
# not a git ref name, or huggingface_hub's temporary file beside a ref it updates
# (``refs/main.1a2b3c4d.tmp``: file_download.py): never asked of the Hub
_BAD_REF = re.compile(r"(^[.-])|\.\.|[~^:?*\[\\\s]|\.lock$|@\{|^@$|\.[0-9a-f]{8}\.tmp$")


class HfCacheNamespace:
    """``lookup``/``children`` over the layout above; the Hub asked through ``resolve``.

    ``wait_seconds`` bounds how long a lookup waits for the Hub (then EIO; the answer is kept
    when it comes); ``workers`` how many questions run at once.  ``clock`` (monotonic seconds)
    times the TTLs; ``submit``/``wait`` replace the worker pool and the bounded wait in tests."""

    def __init__(self, resolve: Resolver, *, refs_ttl: float = 600.0, negative_ttl: float = 60.0,
                 retry_ttl: float = 5.0, wait_seconds: float = 30.0, workers: int = 8,
                 catalog: Catalog | None = None, clock: Callable[[], float] = time.monotonic,
                 submit: Callable | None = None, wait: Callable | None = None) -> None:
        self.catalog = catalog or Catalog()
        self._workers = Workers(workers) if submit is None else None
        self.flights = Flights(submit or self._workers.submit, wait_seconds, wait)
        self.resolution = Resolution(resolve, self.catalog, Misses(clock), self.flights, clock, refs_ttl=refs_ttl,
                                     negative_ttl=negative_ttl, retry_ttl=retry_ttl)
        self._json: OrderedDict[tuple, bytes] = OrderedDict()  # trees/{sha}.json, the last few made
        self._json_lock = threading.Lock()

    def pin(self, key: RepoKey, revision: str = "main", snapshot=None) -> None:
        """A repo named at mount time: always listed, never evicted; ``snapshot`` if resolved."""
        self.catalog.pin(key)
        if snapshot is not None:
            self.resolution.seed(key, revision, snapshot, pinned=True)

    def close(self) -> None:
        self.flights.close()
        if self._workers is not None:
            self._workers.close()

    # -- the Namespace interface ---------------------------------------------------------------
    def lookup(self, path: str) -> Node:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return DIR
        key = parse_folder(parts[0])
        if key is None:
            raise NotFound(path)
        self.resolution.repo(key)
        if len(parts) == 1:
            return DIR
        section, rest = parts[1], parts[2:]
        if section not in SECTIONS:
            raise NotFound(path)
        if not rest:
            return DIR
        if section == "refs":
            return self._ref(key, "/".join(rest))
        sha = _commit_named(section, rest)
        if sha is None:
            raise NotFound(path)
        tree = self.resolution.commit(key, sha)
        if section == "snapshots":
            return tree.lookup("/" + "/".join(rest[1:]))
        if section == "trees":
            return data_node(self._tree_json(key, sha, tree))
        return _absent(tree, rest[1:])

    def children(self, path: str) -> list[str]:
        node = self.lookup(path)
        if node.kind != "dir":
            raise NotAFolder(path)
        parts = [p for p in path.split("/") if p]
        if not parts:
            return self.catalog.names()
        key = parse_folder(parts[0])
        if len(parts) == 1:
            return list(SECTIONS)
        section, rest = parts[1], parts[2:]
        if section == "refs":
            return _ref_children(self.catalog.refs(key), "/".join(rest))
        if not rest:
            shas = self.catalog.commits(key)
            return [f"{s}.json" for s in shas] if section == "trees" else shas
        if section == "snapshots":
            return self.resolution.commit(key, rest[0]).children("/" + "/".join(rest[1:]))
        return []  # .no_exist/{sha}/...: what is absent cannot be listed

    # -- pieces ----------------------------------------------------------------------------------
    def _ref(self, key: RepoKey, name: str) -> Node:
        held = self.catalog.refs(key)
        if name in held:
            return data_node(ref_content(self.resolution.ref(key, name)), fresh=True)
        if any(r.startswith(name + "/") for r in held) or name == "refs" or (
                name.startswith("refs/") and name.count("/") == 1):
            return DIR  # a folder of refs: refs/pr/1 is refs/refs/pr/1
        if is_commit(name) or _BAD_REF.search(name):
            raise NotFound(name)
        try:
            return data_node(ref_content(self.resolution.ref(key, name)), fresh=True)
        except RevisionMissing:
            raise NotFound(name) from None

    def _tree_json(self, key: RepoKey, sha: str, tree: TreeNamespace) -> bytes:
        with self._json_lock:
            made = self._json.get((key, sha))
            if made is not None:
                self._json.move_to_end((key, sha))
                return made
        made = tree_json(tree.files.values())
        with self._json_lock:
            self._json[(key, sha)] = made
            while len(self._json) > 8:
                self._json.popitem(last=False)
        return made

    def usage(self) -> dict:
        """What it holds and does (for stats.json): repos, tree entries, names, calls in flight."""
        return {**self.catalog.usage(), "resolving": self.flights.in_flight()}


_MARKER = data_node(b"")


def _commit_named(section: str, rest: list[str]) -> str | None:
    """The commit a path under ``snapshots/``, ``.no_exist/`` or ``trees/`` names, if any."""
    name = rest[0]
    if section == "trees":
        if len(rest) != 1 or not name.endswith(".json"):
            return None
        name = name[:-len(".json")]
    return name if is_commit(name) else None


def _absent(tree: TreeNamespace, rest: list[str]) -> Node:
    """``.no_exist/{sha}/{rest}``: a folder where the commit has one, an empty marker file where
    it has nothing; nothing where it has a file (or where a folder above is itself a marker:
    the kernel never asks below a file)."""
    if not rest:
        return DIR
    for depth in range(1, len(rest)):
        try:
            above = tree.lookup("/" + "/".join(rest[:depth]))
        except NotFound:
            raise NotFound("/".join(rest)) from None
        if above.kind != "dir":
            raise NotFound("/".join(rest))
    try:
        node = tree.lookup("/" + "/".join(rest))
    except NotFound:
        return _MARKER
    if node.kind == "dir":
        return DIR
    raise NotFound("/".join(rest))


def _ref_children(refs: list[str], prefix: str) -> list[str]:
    """Names directly under ``refs/{prefix}`` among the refs held."""
    start = prefix + "/" if prefix else ""
    return sorted({r[len(start):].split("/")[0] for r in refs if r.startswith(start) and len(r) > len(start)})
