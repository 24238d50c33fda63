"""Bytes fetched and served per file of an ``--hf-cache`` mount, and per repo.

A plain mount counts per file by repo path (the fetcher's and the reader's counters); in the
cache layout two repos' ``config.json`` are two files, so here files are counted by their path
in the mount (``listing.name_of``): served bytes from the reader's ``on_served``, fetched bytes
from the pieces the fetcher delivers (``counting``: the fetch contract, wrapped; a piece a
retry delivers again counts again, as the fetcher's own ``bytes_fetched`` does).

Bounded: the ``max_files`` files touched most recently keep their numbers and their
``RemoteFile`` (stats.json lists them); per repo, totals for the ``max_repos`` most recent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from netmount.core.recent import Recent
from netmount.remote.hub import RemoteFile

MAX_FILES, MAX_REPOS = 4096, 10_000


@dataclass
class Count:
    bytes_fetched: int = 0
    bytes_served: int = 0


class FileTally:
    def __init__(self, name: Callable[[RemoteFile], str], max_files: int = MAX_FILES,
                 max_repos: int = MAX_REPOS) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._files: Recent = Recent(max_files)  # name -> (file, Count)
        self._repos: Recent = Recent(max_repos)  # repo folder name (models--org--name) -> Count

    def served(self, f: RemoteFile, offset: int, length: int) -> None:
        """The reader's ``on_served``: ``length`` bytes of ``f`` went to a program."""
        self._add(f, "bytes_served", length)

    def fetched(self, f: RemoteFile, length: int) -> None:
        self._add(f, "bytes_fetched", length)

    def _add(self, f: RemoteFile, what: str, n: int) -> None:
        name = self.name(f)
        repo = name.partition("/")[0]
        with self._lock:
            entry = self._files.get(name)
            if entry is None:
                entry = (f, Count())
            self._files[name] = entry
            total = self._repos.get(repo) or Count()
            self._repos[repo] = total
            setattr(entry[1], what, getattr(entry[1], what) + n)
            setattr(total, what, getattr(total, what) + n)

    def files(self) -> list[tuple[str, RemoteFile, Count]]:
        """Every file counted, by name."""
        with self._lock:
            return sorted((name, f, Count(c.bytes_fetched, c.bytes_served)) for name, (f, c) in self._files.items())

    def per_file(self) -> dict[str, dict[str, int]]:
        """``{name: {"bytes_fetched": n, "bytes_served": n}}``, as ``Counters.per_file`` answers."""
        return {name: vars(c) for name, _f, c in self.files()}

    def repos(self) -> dict[str, Count]:
        """Totals per repo folder (``models--org--name``)."""
        with self._lock:
            return {k: Count(c.bytes_fetched, c.bytes_served) for k, c in self._repos.items()}

    def counting(self, fetcher) -> "CountingFetcher":
        """``fetcher`` (the fetch contract), counting the bytes it delivers per file here."""
        return CountingFetcher(fetcher, self.fetched)


class CountingFetcher:
    """The fetch contract (``remote/contract.py``) over ``inner``: each piece delivered is
    counted (``count(file, bytes)``) before it goes on to the caller's ``on_part``."""

    def __init__(self, inner, count: Callable[[RemoteFile, int], None]) -> None:
        self.inner, self._count = inner, count

    def fetch(self, file: RemoteFile, start: int, end: int, on_part, **options):
        count = self._count

        def counted(offset: int, data) -> None:
            count(file, len(data))
            on_part(offset, data)

        return self.inner.fetch(file, start, end, counted, **options)
