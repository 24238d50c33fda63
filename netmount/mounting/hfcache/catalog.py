"""What the mount knows of each repo, bounded: refs -> commit, commit -> its file tree.

A long-lived mount may see thousands of repos; what it keeps of them is an LRU over repos,
bounded by how many it holds (``max_repos``) and by the paths their trees hold together
(``max_entries``; a model's tree is a few hundred paths, a dataset's may be 100,000), and per
repo by how many commits it keeps (``max_commits``).  Repos named at mount time (``pin``) are
never evicted.  An evicted repo is resolved again at its next lookup; the root keeps
listing its name (``names``, bounded too).  Refs that point to a commit no longer held are
dropped with it, so the tree stays one huggingface_hub's ``scan_cache_dir`` accepts.

``Misses``: answers remembered for a while — a repo that is missing, or a revision — so a
loader that looks the same name up fifty times asks the Hub once.

Everything here is a dict operation under one lock: no I/O, no waiting.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from netmount.mounting.hfcache.layout import RepoKey
from netmount.mounting.namespace import TreeNamespace


@dataclass
class Ref:
    sha: str
    checked: float  # clock() when the Hub last said so


@dataclass
class RepoState:
    refs: dict[str, Ref] = field(default_factory=dict)
    commits: OrderedDict = field(default_factory=OrderedDict)  # sha -> TreeNamespace, least recent first
    pinned: bool = False

    @property
    def weight(self) -> int:
        return 1 + sum(t.entries for t in self.commits.values())


class Catalog:
    def __init__(self, *, max_repos: int = 256, max_entries: int = 100_000, max_commits: int = 8,
                 max_names: int = 10_000) -> None:
        self.max_repos, self.max_entries, self.max_commits = max_repos, max_entries, max_commits
        self.max_names = max_names
        self._lock = threading.Lock()
        self._repos: OrderedDict[RepoKey, RepoState] = OrderedDict()
        self._names: OrderedDict[RepoKey, None] = OrderedDict()  # listed at the root
        self._weight = 0

    # -- questions -------------------------------------------------------------------------------
    def has(self, key: RepoKey) -> bool:
        with self._lock:
            if key in self._repos:
                self._repos.move_to_end(key)
                return True
            return False

    def ref(self, key: RepoKey, revision: str) -> Ref | None:
        with self._lock:
            state = self._repos.get(key)
            return None if state is None else state.refs.get(revision)

    def commit(self, key: RepoKey, sha: str) -> TreeNamespace | None:
        with self._lock:
            state = self._repos.get(key)
            tree = None if state is None else state.commits.get(sha)
            if tree is not None:
                self._repos.move_to_end(key)
                state.commits.move_to_end(sha)
            return tree

    def refs(self, key: RepoKey) -> list[str]:
        with self._lock:
            state = self._repos.get(key)
            return [] if state is None else sorted(state.refs)

    def commits(self, key: RepoKey) -> list[str]:
        with self._lock:
            state = self._repos.get(key)
            return [] if state is None else sorted(state.commits)

    def names(self) -> list[str]:
        """Folder names of the repos to list at the root: held, pinned, or resolved before."""
        with self._lock:
            return sorted({k.folder for k in self._names} | {k.folder for k in self._repos})

    def held(self) -> list[tuple[RepoKey, dict[str, str], list[str]]]:
        """Every repo held, least recently used first: its refs (name -> sha) and its commits."""
        with self._lock:
            return [(k, {r: ref.sha for r, ref in s.refs.items()}, list(s.commits)) for k, s in self._repos.items()]

    def usage(self) -> dict:
        with self._lock:
            return {"repos": len(self._repos), "entries": self._weight, "names": len(self._names)}

    # -- news ------------------------------------------------------------------------------------
    def pin(self, key: RepoKey) -> None:
        with self._lock:
            self._state(key).pinned = True

    def exists(self, key: RepoKey) -> None:
        """The repo exists (it may have no ``main``): a folder, even with nothing resolved."""
        with self._lock:
            self._state(key)
            self._evict(keep=key)

    def record(self, key: RepoKey, revision: str, sha: str, make_tree: Callable[[], TreeNamespace],
               now: float) -> TreeNamespace:
        """The Hub said ``revision`` is commit ``sha``; its tree (made only if not held yet)."""
        with self._lock:
            state = self._state(key)
            tree = state.commits.get(sha)
        if tree is None:
            tree = make_tree()  # outside the lock: a large listing takes a while to index
        with self._lock:
            state = self._state(key)
            if sha not in state.commits:
                state.commits[sha] = tree
                self._weight += tree.entries
            state.commits.move_to_end(sha)
            if revision != sha:
                state.refs[revision] = Ref(sha, now)
            self._trim_commits(state)
            self._evict(keep=key)
            return state.commits.get(sha, tree)

    def forget(self, key: RepoKey) -> None:
        """The repo is gone (or this token may not read it): not held, not listed."""
        with self._lock:
            state = self._repos.pop(key, None)
            if state is not None:
                self._weight -= state.weight
            self._names.pop(key, None)

    def forget_ref(self, key: RepoKey, revision: str) -> None:
        with self._lock:
            state = self._repos.get(key)
            if state is not None:
                state.refs.pop(revision, None)

    # -- inside the lock -------------------------------------------------------------------------
    def _state(self, key: RepoKey) -> RepoState:
        state = self._repos.get(key)
        if state is None:
            state = self._repos[key] = RepoState()
            self._weight += 1
        self._repos.move_to_end(key)
        self._names[key] = None
        self._names.move_to_end(key)
        while len(self._names) > self.max_names:
            self._names.popitem(last=False)
        return state

    def _trim_commits(self, state: RepoState) -> None:
        while len(state.commits) > self.max_commits:
            sha, tree = state.commits.popitem(last=False)
            self._weight -= tree.entries
            for name in [r for r, ref in state.refs.items() if ref.sha == sha]:
                del state.refs[name]

    def _evict(self, keep: RepoKey) -> None:
        """Least recently used repos out until within bounds; never ``keep`` nor a pinned one."""
        if len(self._repos) <= self.max_repos and self._weight <= self.max_entries:
            return
        for key in list(self._repos):
            if len(self._repos) <= self.max_repos and self._weight <= self.max_entries:
                return
            state = self._repos[key]
            if key != keep and not state.pinned:
                del self._repos[key]
                self._weight -= state.weight


class Misses:
    """Answers remembered until a deadline: ``key -> kind`` (bounded; the oldest go first)."""

    def __init__(self, clock: Callable[[], float], max_items: int = 10_000) -> None:
        self._clock, self.max_items = clock, max_items
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, tuple[str, float]] = OrderedDict()

    def get(self, key: Hashable) -> str | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if self._clock() >= item[1]:
                del self._items[key]
                return None
            return item[0]

    def put(self, key: Hashable, kind: str, seconds: float) -> None:
        with self._lock:
            self._items[key] = (kind, self._clock() + seconds)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def clear(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)
