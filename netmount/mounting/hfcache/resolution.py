"""Asking the Hub what a repo, a ref or a commit is, on a lookup's behalf; remembering the answer.

The resolver (injected: ``remote/hub.py``'s ``resolve_snapshot`` in the daemon, a fake in
unit tests) turns ``(repo, revision)`` into a ``Snapshot`` — the commit sha and every file
with its size and content id — or raises netmount's typed errors.  Here its answers become:

- a snapshot: ``refs/{revision}`` -> sha (checked now), ``snapshots/{sha}`` -> its tree;
- ``RepoNotFound``, ``GatedRepo``, ``AuthFailed``, ``UnsafeListing``: the repo is missing
  for this token: ENOENT, remembered ``negative_ttl`` seconds, and it leaves the root;
- ``RevisionNotFound``: that revision is missing (the repo is not): ENOENT, remembered too;
- anything else (the Hub unreachable, a timeout): EIO, remembered ``retry_ttl`` seconds so a
  storm of lookups does not queue behind a dead endpoint; a ref checked before stays in use.

A ref is checked again once ``refs_ttl`` has passed; a commit's tree never changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from netmount.core import errors
from netmount.mounting.hfcache.catalog import Catalog, Misses
from netmount.mounting.hfcache.flights import Flights
from netmount.mounting.hfcache.layout import RepoKey, is_commit
from netmount.mounting.namespace import NotFound, TreeNamespace, Unavailable

log = logging.getLogger("netmount.hfcache")

Resolver = Callable[[RepoKey, str], object]  # (repo, revision) -> Snapshot (sha, files); raises NetmountError

MISSING_REPO = (errors.RepoNotFound, errors.GatedRepo, errors.AuthFailed, errors.UnsafeListing)


def hub_resolver(endpoint: str, token: str | None) -> Resolver:
    """The daemon's resolver: ``remote/hub.py``'s ``resolve_snapshot`` on the mount's endpoint,
    with the mount's token (a repo this token may not read is missing)."""
    from netmount.remote.hub import resolve_snapshot

    return lambda key, revision: resolve_snapshot(key.repo_id, revision, endpoint, token, key.repo_type)


class RepoMissing(NotFound):
    """No such repo, or not for this token."""


class RevisionMissing(NotFound):
    """The repo has no such branch, tag or commit."""


class Outcome(NamedTuple):
    sha: str | None = None
    tree: TreeNamespace | None = None
    missing: str | None = None  # "repo" or "revision"
    error: str | None = None  # a transient failure, one line


class Resolution:
    def __init__(self, resolve: Resolver, catalog: Catalog, misses: Misses, flights: Flights,
                 clock: Callable[[], float], *, refs_ttl: float, negative_ttl: float, retry_ttl: float) -> None:
        self.resolve, self.catalog, self.misses, self.flights = resolve, catalog, misses, flights
        self.clock = clock
        self.refs_ttl, self.negative_ttl, self.retry_ttl = refs_ttl, negative_ttl, retry_ttl

    # -- what lookups ask ----------------------------------------------------------------------
    def repo(self, key: RepoKey) -> None:
        """Returns if the repo exists for this token (its ``main`` resolved on first sight)."""
        if self.catalog.has(key):
            return
        try:
            self.ref(key, "main")
        except RevisionMissing:  # a repo without main is still a repo
            self.catalog.exists(key)

    def ref(self, key: RepoKey, revision: str) -> str:
        """The commit ``revision`` names now (checked at most ``refs_ttl`` ago)."""
        held = self.catalog.ref(key, revision)
        if held is not None and self.clock() - held.checked < self.refs_ttl:
            return held.sha
        try:
            return self._ask(key, revision).sha
        except Unavailable:
            if held is None:
                raise
            log.info("%s@%s: checking it again failed: still %s", key.folder, revision, held.sha[:12])
            return held.sha

    def commit(self, key: RepoKey, sha: str) -> TreeNamespace:
        """The tree of commit ``sha`` (resolved on first sight; never changes)."""
        tree = self.catalog.commit(key, sha)
        if tree is not None:
            return tree
        return self._ask(key, sha).tree

    # -- asking --------------------------------------------------------------------------------
    def _ask(self, key: RepoKey, revision: str) -> Outcome:
        for miss_key in (key, (key, revision)):
            kind = self.misses.get(miss_key)
            if kind is not None:
                self._raise(key, revision, Outcome(missing=kind) if kind != "error" else Outcome(error="failed lately"))
        outcome = self.flights.join((key, revision), lambda: self._call(key, revision))
        self._raise(key, revision, outcome)
        return outcome

    def _raise(self, key: RepoKey, revision: str, outcome: Outcome) -> None:
        where = f"{key.folder}@{revision}"
        if outcome.missing == "repo":
            raise RepoMissing(where)
        if outcome.missing == "revision":
            raise RevisionMissing(where)
        if outcome.error is not None:
            raise Unavailable(f"{where}: {outcome.error}")

    def _call(self, key: RepoKey, revision: str) -> Outcome:
        """On a worker: one question to the Hub, its answer recorded before waiters see it."""
        try:
            snap = self.resolve(key, revision)
        except MISSING_REPO as exc:
            self.catalog.forget(key)
            self.misses.put(key, "repo", self.negative_ttl)
            log.info("%s: %s", key.folder, exc)
            return Outcome(missing="repo")
        except errors.RevisionNotFound as exc:
            self.catalog.forget_ref(key, revision)
            self.misses.put((key, revision), "revision", self.negative_ttl)
            log.info("%s@%s: %s", key.folder, revision, exc)
            return Outcome(missing="revision")
        except Exception as exc:  # the Hub unreachable, slow, or answering nonsense
            self.misses.put((key, revision), "error", self.retry_ttl)
            first = (str(exc).splitlines() or [""])[0]
            log.warning("%s@%s: %s: %s", key.folder, revision, type(exc).__name__, first)
            return Outcome(error=f"{type(exc).__name__}: {first}")
        if is_commit(revision) and snap.sha != revision:  # asked for one commit, answered another
            log.warning("%s@%s: the Hub answered commit %s", key.folder, revision, snap.sha)
            self.misses.put((key, revision), "revision", self.negative_ttl)
            return Outcome(missing="revision")
        tree = self.catalog.record(key, revision, snap.sha, lambda: TreeNamespace(snap.files), self.clock())
        return Outcome(sha=snap.sha, tree=tree)

    def seed(self, key: RepoKey, revision: str, snapshot, pinned: bool = False) -> None:
        """What was resolved already (``--repo`` at mount time): recorded as if asked now."""
        if pinned:
            self.catalog.pin(key)
        self.catalog.record(key, revision, snapshot.sha, lambda: TreeNamespace(snapshot.files), self.clock())
