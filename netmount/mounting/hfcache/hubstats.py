"""``stats.json`` of an ``--hf-cache`` mount: the whole Hub seen so far, grouped by repo.

A plain mount lists its snapshot's files; this mount shows every repo, so it lists the files
programs touched (served or fetched: ``tally.py``), each under its path in the mount, and
groups the numbers by repo.  Blocks are keyed by content, so a file that several repos hold
(a tokenizer, layers a fine-tune kept) is fetched and stored once: each such file names the
others (``shared_with``), and ``shared`` counts what was not stored again.

Keys besides the common ones (``stats.mount_numbers``): ``mode`` ("hf-cache"), ``endpoint``,
``hf_cache`` (the namespace's ``usage``: repos held, tree entries, names, lookups resolving now,
and ``refs_ttl``), ``repos[{repo repo_type folder refs commits files bytes_fetched bytes_served
read_bytes cached_bytes shared_bytes}]`` (held in the catalog, or counted lately), ``shared
{contents files bytes}``, ``files`` (as a plain mount's, plus ``repo`` and ``shared_with``),
``tensors``, ``cached_bytes``/``total_bytes`` of the files listed (content held for several of
them counted once).  ``repo`` and ``revision`` are None: no one repo.

One snapshot's stats (``snapshot``, at ``/.netmount/stats/{folder}@{sha}.json``) have a plain
mount's shape for that commit, paths as the mount shows them, and ``root``: the snapshot's
folder (what ``netmount prefetch``, ``verify`` and ``tensors`` use inside the layout).
"""

from __future__ import annotations

from collections import defaultdict

from netmount.mounting.hfcache.layout import RepoKey, is_commit, parse_folder
from netmount.mounting.hfcache.listing import name_of, snapshot_folder
from netmount.mounting.namespace import NotFound
from netmount.mounting.stats import Meters, build_stats, file_record, mount_numbers, tensor_records
from netmount.remote.hub import Snapshot, url_path


class HubStatsBuilder(Meters):
    """The callables behind the control files: ``()`` the whole mount, ``snapshot(name)`` one
    commit's.  ``namespace``: the ``HfCacheNamespace``; ``tally``: the ``FileTally``."""

    def __init__(self, config, endpoint: str, counters, store, coverage, tally, namespace, *, maps=None,
                 proxy=None, extra=None) -> None:
        super().__init__(counters, store, maps)
        self.config, self.endpoint, self.counters, self.store = config, endpoint, counters, store
        self.coverage, self.tally, self.namespace = coverage, tally, namespace
        self.proxy, self.extra = proxy, extra

    def __call__(self) -> dict:
        with self._lock:
            counted = self.tally.files()
            files = [file_record(f, name, self.store, self.coverage, vars(c)) for name, f, c in counted]
            for record, (_name, f, _c) in zip(files, counted):
                record["repo"] = url_path(f.repo.repo_id, f.repo.repo_type)
            shared = _share(files)
            out = self._head(self.coverage.total_bytes())
            out.update(hf_cache={**self.namespace.usage(), "refs_ttl": self.namespace.resolution.refs_ttl},
                       repos=self._repos(files), shared=shared,
                       cached_bytes=sum(_once(files, "cached_bytes")), total_bytes=sum(r["size"] for r in files),
                       verified_files=sum(r["verified"] for r in files), files=files,
                       tensors=[t for name, f, _c in counted for t in tensor_records(f, name, self.headers,
                                                                                     self.coverage)])
            return out

    def snapshot(self, leaf: str) -> dict:
        """One commit's stats, for ``{folder}@{sha}.json``: the commit resolved if need be (a
        lookup's bound: ``Unavailable``), ``NotFound`` for a name that is no repo's commit."""
        folder, _, rest = leaf.partition("@")
        sha = rest[:-len(".json")] if rest.endswith(".json") else ""
        key = parse_folder(folder)
        if key is None or not is_commit(sha):
            raise NotFound(leaf)
        tree = self.namespace.resolution.commit(key, sha)
        snap = Snapshot(key.repo_id, sha, sha, self.endpoint, list(tree.files.values()), key.repo_type)
        with self._lock:
            out = build_stats(self.config, snap, self.counters, self.store, coverage=self.coverage,
                              headers=self.headers, rate=self.rate, served=self.served, proxy=self._proxy(),
                              name=name_of, per_file=self.tally.per_file())
        out.update(mode="hf-cache", root=snapshot_folder(key, sha))
        return out

    # -- pieces ----------------------------------------------------------------------------------
    def _proxy(self):
        return self.proxy() if self.proxy is not None else None

    def _head(self, read_total: int) -> dict:
        out = {"mountpoint": self.config.mountpoint, "mode": "hf-cache", "repo": None, "revision": None,
               "requested_revision": None, "endpoint": self.endpoint,
               **mount_numbers(self.config, self.counters, self.store, read_total, rate=self.rate,
                               served=self.served, proxy=self._proxy())}
        if self.extra is not None:
            out.update(self.extra())
        return out

    def _repos(self, files: list[dict]) -> list[dict]:
        """Per repo: what the catalog holds of it (refs, commits) and what its files cost."""
        rows: dict[str, dict] = {}
        for key, refs, commits in self.namespace.catalog.held():
            rows[key.folder] = _repo_row(key, refs, commits)
        for folder, count in self.tally.repos().items():
            key = parse_folder(folder)
            if key is not None:
                row = rows.setdefault(folder, _repo_row(key, {}, []))
                row.update(bytes_fetched=count.bytes_fetched, bytes_served=count.bytes_served)
        for r in files:
            row = rows.get(r["path"].partition("/")[0])
            if row is not None:
                row["files"] += 1
                for k in ("read_bytes", "cached_bytes"):
                    row[k] += r[k]
                row["shared_bytes"] += r["cached_bytes"] if r["shared_with"] else 0
        return sorted(rows.values(), key=lambda row: row["folder"])


def _repo_row(key: RepoKey, refs: dict, commits: list) -> dict:
    return {"repo": url_path(key.repo_id, key.repo_type), "repo_type": key.repo_type, "folder": key.folder,
            "refs": dict(sorted(refs.items())), "commits": sorted(commits), "files": 0, "bytes_fetched": 0,
            "bytes_served": 0, "read_bytes": 0, "cached_bytes": 0, "shared_bytes": 0}


def _share(files: list[dict]) -> dict:
    """Name each file's twins (the same content under other paths), in place; the totals: how
    many contents are held once for several files, those files, and the bytes not stored again."""
    by_content: dict[str, list[dict]] = defaultdict(list)
    for r in files:
        by_content[r["content_id"]].append(r)
    contents = twins = saved = 0
    for group in by_content.values():
        for r in group:
            r["shared_with"] = [o["path"] for o in group if o is not r]
        if len(group) > 1:
            contents += 1
            twins += len(group)
            saved += (len(group) - 1) * group[0]["cached_bytes"]
    return {"contents": contents, "files": twins, "bytes": saved}


def _once(files: list[dict], key: str):
    """``key`` of each distinct content among ``files`` (a content several files share counts once)."""
    seen: set[str] = set()
    for r in files:
        if r["content_id"] not in seen:
            seen.add(r["content_id"])
            yield r[key]
