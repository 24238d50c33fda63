"""``netmount tensors``: every tensor of a repo, a mount or a local folder, from headers only.

For a repo, the commit is pinned and each safetensors header is read with range requests
(``RangeFetcher``), all shards at once: one speculative read of ``min(size, 256 KiB)``
per shard, and a second only for a longer header — never tensor data beyond that.  For
a mount or a local folder, headers are read with ``os.pread`` through the files (the
mount fetches the header's blocks, nothing else: readahead is turned off with
``POSIX_FADV_RANDOM``, and a mount is read through its ``.netmount/raw`` mirror, which the
daemon's prefetch leaves alone).

With ``match`` globs and a ``*.safetensors.index.json``, only the shards its
``weight_map`` places matching tensors in are read (plus any shard no index mentions):
``--match 'model.layers.0.*'`` costs one or two headers, not 163.

A header that fails validation is skipped with a warning; a file that cannot be read
fails the listing (a silently partial list would be wrong).
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import json
import logging
import os
import posixpath
from typing import Callable, Iterable
from urllib.parse import quote

from netmount.core import errors
from netmount.core.blocks import PAGE
from netmount.core.safetensors import FIRST_READ, HeaderError, TensorInfo, header_size, parse_header, read_header

log = logging.getLogger("netmount.tensorlist")

KEYS = ("name", "dtype", "shape", "file", "start", "end", "nbytes", "url")
MAX_INDEX = 64 << 20  # an index.json larger than this is not used for narrowing
# Through a mount a read costs no round trip, so read one page, then exactly the header:
# no read starts inside tensor data, where the daemon's tensor-aware prefetch would react.
LOCAL_FIRST = PAGE

Skip = Callable[[str, Exception], None]


def matches(name: str, patterns: Iterable[str]) -> bool:
    """No patterns match everything."""
    patterns = list(patterns)
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def record(t: TensorInfo, path: str, url: str | None) -> dict:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "file": path,
            "start": t.start, "end": t.end, "nbytes": t.end - t.start, "url": url}


def list_tensors(target: str, match: Iterable[str] = (), *, revision: str | None = None,
                 endpoint: str | None = None, token: str | None = None, workers: int = 16,
                 on_skip: Skip | None = None) -> list[dict]:
    """Tensor records (``KEYS``) of ``target``: a mountpoint, a local folder or file, or a
    Hub repo id ``org/name[@rev]``; in file order, files sorted by path."""
    match = list(match)
    on_skip = on_skip or (lambda path, exc: log.warning("skipping %s: %s", path, exc))
    if os.path.exists(target):
        return _local(target, match, workers, on_skip)
    check_target(target)
    return _repo(target, match, revision, endpoint, token, workers, on_skip)


def shards_to_read(files: dict[str, int], match: list[str], read_small: Callable[[str], bytes],
                   ) -> list[str]:
    """Safetensors paths whose headers are needed for ``match`` (all of them without globs)."""
    shards = sorted(p for p in files if p.endswith(".safetensors"))
    if not match:
        return shards
    wanted, mentioned = set(), set()
    for index in sorted(p for p in files if p.endswith(".safetensors.index.json")):
        if files[index] > MAX_INDEX:
            return shards
        try:
            weight_map = json.loads(read_small(index))["weight_map"]
            base = posixpath.dirname(index)
            for name, shard in weight_map.items():
                path = posixpath.normpath(posixpath.join(base, shard))
                mentioned.add(path)
                if matches(name, match):
                    wanted.add(path)
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            return shards  # an unusable index narrows nothing
    return [p for p in shards if p in wanted or p not in mentioned]


# -- a mount or a local folder ----------------------------------------------------------------

def _local(target: str, match: list[str], workers: int, on_skip: Skip) -> list[dict]:
    target = os.path.abspath(target)
    if os.path.isfile(target):
        root, files = os.path.dirname(target), {os.path.basename(target): os.path.getsize(target)}
    else:
        root, files = target, {}
        for dirpath, dirnames, names in os.walk(target):
            dirnames[:] = sorted(d for d in dirnames if d != ".netmount")
            for n in names:
                full = os.path.join(dirpath, n)
                files[os.path.relpath(full, target).replace(os.sep, "/")] = os.path.getsize(full)
    url_base, data_root, first = None, root, LOCAL_FIRST
    mounted = _in_mount(root)
    if mounted is not None:
        data_root, s = mounted  # headers through the raw mirror: without daemon prefetch
        if s is not None and s.get("view_files") is not None:
            first = 8  # a view's files have no URL; their raw reads are exact: 8 bytes, then the header
        elif s is not None and s.get("repo"):
            scope = f"/{quote(s['scope'])}" if s.get("scope") else ""
            url_base = f"{s['endpoint']}/{s['repo']}/resolve/{s['revision']}{scope}"

    def read_small(rel: str) -> bytes:
        with open(os.path.join(root, rel), "rb") as fh:
            return fh.read()

    def one(rel: str) -> list[TensorInfo] | None:
        with open(os.path.join(data_root, rel), "rb") as fh:
            fd = fh.fileno()
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead into tensor data
            try:
                return read_header(lambda a, b: _pread_exactly(fd, a, b), files[rel], first=first)
            except HeaderError as exc:
                on_skip(rel, exc)
                return None

    paths = shards_to_read(files, match, read_small)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        headers = list(pool.map(one, paths))
    return _records(paths, headers, match, url_base)


def _in_mount(folder: str) -> tuple[str, dict | None] | None:
    """For a folder in a netmount mount: (the same folder in its raw mirror, the stats of what
    the folder shows — a mount's, an hf-cache snapshot's — or None); None outside any mount."""
    from netmount.mounting.stats import locate, read_stats

    try:
        mountpoint, inside = locate(folder)
    except errors.NetmountError:
        return None
    try:
        stats = read_stats(folder)
    except errors.NetmountError:  # a folder in a plain mount: read through the mirror, no URLs
        stats = None
    return os.path.join(mountpoint, ".netmount", "raw", inside), stats


def _pread_exactly(fd: int, start: int, end: int) -> bytes:
    parts, pos = [], start
    while pos < end:
        chunk = os.pread(fd, end - pos, pos)
        if not chunk:
            break
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts)


# -- a Hub repo -------------------------------------------------------------------------------

def _repo(spec: str, match: list[str], revision, endpoint, token, workers, on_skip) -> list[dict]:
    from netmount.core import settings
    from netmount.remote import hub
    from netmount.remote.contract import fetch_bytes
    from netmount.remote.fetch import RangeFetcher

    repo_id, rev, repo_type = hub.parse_repo_spec(spec, revision)
    endpoint = settings.endpoint(endpoint)
    token = None if token is False else settings.token(token or None)  # False: anonymous
    snap = hub.resolve_snapshot(repo_id, rev, endpoint, token, repo_type)
    sizes = {f.path: f.size for f in snap.files}
    files = {f.path: f for f in snap.files}
    fetcher = RangeFetcher(endpoint, repo_id, snap.sha, token, connections=max(1, workers),
                           repo_type=repo_type).start()
    try:
        def get(path: str, start: int, end: int):
            return fetch_bytes(fetcher, files[path], start, end)

        paths = shards_to_read(sizes, match, lambda p: get(p, 0, sizes[p]).result() if sizes[p] else b"")
        first = {p: get(p, 0, min(sizes[p], FIRST_READ)) for p in paths if sizes[p]}
        heads: dict[str, bytes | None] = {p: None for p in paths}
        rest = {}
        for p in paths:
            if p not in first:
                on_skip(p, HeaderError("empty file"))
                continue
            head = first[p].result()
            try:
                span = header_size(head, sizes[p])
            except HeaderError as exc:
                on_skip(p, exc)
                continue
            heads[p] = head
            if span > len(head):
                rest[p] = get(p, len(head), span)
        for p, fut in rest.items():
            heads[p] += fut.result()
    finally:
        fetcher.close()
    parsed = []
    for p in paths:
        try:
            parsed.append(parse_header(heads[p], sizes[p]) if heads[p] is not None else None)
        except HeaderError as exc:
            on_skip(p, exc)
            parsed.append(None)
    return _records(paths, parsed, match, f"{endpoint}/{snap.name}/resolve/{snap.sha}")


def _records(paths, headers, match, url_base) -> list[dict]:
    out = []
    for path, infos in zip(paths, headers):
        url = f"{url_base}/{quote(path)}" if url_base else None
        out.extend(record(t, path, url) for t in infos or () if matches(t.name, match))
    return out


def check_target(target: str) -> None:
    """A clear error for a path-looking target that does not exist (not a repo id)."""
    typed = target.startswith(("models/", "datasets/", "spaces/"))
    if not os.path.exists(target) and (target.startswith((".", "/", "~")) or target.count("/") > 1 + typed):
        raise errors.BadInput(f"{target}: no such file or folder (and not an [datasets/]org/name repo id)")
