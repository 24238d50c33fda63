"""``netmount verify``: prove a mount's cached bytes are the repo's, and heal them if not.

Every range is checked on the way in (206, Content-Range, length, CRC on disk), but bytes
that are wrong under a truthful-looking Content-Range are not.  The listing gives each
file's digest, and it is already the file's cache key (``RemoteFile.content_id``): the
LFS sha256 of the content, or for regular files the git blob sha1 (sha1 of
``b"blob <size>\\0"`` + content).  So no new field is needed: ``stats.json`` publishes
``content_id`` and ``lfs`` per file.

Where the work runs:
- Hashing runs *here*, in the CLI process, reading the block store directly (the cache
  directory and block size are in ``stats.json``; ``cache.open_store`` opens it as the
  daemon does, and the store is made for several processes on one directory).  It never
  touches the network, costs the daemon nothing, and runs block by block (bounded memory:
  one block per worker; each block's CRC32C checked as it is read), a few files at once,
  at disk speed.  A file is hashed when every byte of it is stored (``cached_bytes`` equals
  its size: pieces that cover a block are merged into it).  A daemon on its memory fallback
  has no store to read: that is an error.
- Dropping a wrong file runs in the daemons: opening ``<mount>/.netmount/drop/<path>``
  deletes its blocks and pieces from the store and forgets it in every in-memory tier
  (``mounting/drop.py``), in this mount and in every other live mount on the same cache
  directory holding that content.  The kernel's page cache for the file (kept across
  opens: ``keep_cache``) is dropped here with ``POSIX_FADV_DONTNEED`` on the mounted file
  and its raw mirror; pages a program has mmap'ed stay until it unmaps them.
- ``--fetch`` reads a partial file's missing blocks through ``<mount>/.netmount/raw/``
  (as ``netmount prefetch`` does: the daemon's one read path), waits for the daemon to
  store them, then hashes.  Without it a partial file is reported, never fetched.

A file found right is marked in the store (``cache/index.py``: the mark is voided when any
of its objects is evicted or stored again), shown as ``verified`` in ``netmount stats``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import sys
import threading
from typing import Callable, Iterable

from netmount.core import errors
from netmount.core.blocks import block_count, block_span
from netmount.core.units import format_size

STATUSES = ("ok", "mismatch", "partial", "no-digest")
_HEX = {True: re.compile(r"[0-9a-f]{64}"), False: re.compile(r"[0-9a-f]{40}")}


def register(sub) -> None:
    p = sub.add_parser("verify", help="hash cached files against the repo's digests; drop wrong ones")
    p.add_argument("mountpoint", help="a netmount mountpoint, or a snapshot folder of an --hf-cache mount")
    p.add_argument("paths", nargs="*", default=[], metavar="PATH",
                   help="files or folders in it (default: all; on an --hf-cache mount: the files read)")
    p.add_argument("--match", action="append", default=[], metavar="GLOB",
                   help="only files whose path matches (repeatable)")
    p.add_argument("--fetch", action="store_true",
                   help="fetch the missing blocks of partly cached files first, then check them")
    p.add_argument("--json", action="store_true", help="a JSON array of records, one per file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)
    p.__class__ = _intermixed(type(p))


def _intermixed(base: type) -> type:
    """``verify MP --fetch a.bin b.bin``: argparse alone stops taking PATHs at the first
    option; intermixed parsing takes them wherever they are."""

    class Intermixed(base):
        _inside = False

        def parse_known_args(self, args=None, namespace=None):
            if self._inside:  # parse_known_intermixed_args calls back in here
                return super().parse_known_args(args, namespace)
            self._inside = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._inside = False

    return Intermixed


def cmd_verify(args) -> int:
    show = not (args.json or args.quiet)
    lines: list[str] = []
    records = verify(args.mountpoint, args.paths, args.match, args.fetch, progress=show,
                     on_record=None if args.json else lambda r: _line(r, lines))
    if args.json:
        sys.stdout.write(json.dumps(records) + "\n")
    else:
        for line in lines:
            print(line)
        print(summary(records))
    return 1 if any(r["status"] == "mismatch" for r in records) else 0


def _line(r: dict, out: list[str]) -> None:
    if r["status"] == "mismatch":
        out.append(f"{r['path']}: {r['algorithm']} mismatch, {format_size(r['dropped_bytes'])} of cached"
                   f" blocks dropped; the next read fetches them again")
    elif r["status"] == "partial":
        out.append(f"{r['path']}: partial ({_percent(r['cached_bytes'], r['size'])}% cached), not checked")
    elif r["status"] == "no-digest":
        out.append(f"{r['path']}: the listing gives no digest, not checked")


def _percent(part: int, whole: int) -> int:
    """Rounded down, so a file one block short never reads as 100%."""
    return 100 * part // whole if whole else 0


def summary(records: list[dict]) -> str:
    count = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    hashed = sum(r["size"] for r in records if r["status"] in ("ok", "mismatch"))
    checked = count["ok"] + count["mismatch"]
    head = (f"{count['mismatch']} of {checked} files checked did not match" if count["mismatch"]
            else f"{checked} files checked, all match")
    tail = f", {count['no-digest']} without a digest" if count["no-digest"] else ""
    return f"{head} ({format_size(hashed)} hashed), {count['partial']} partial (not checked){tail}"


# -- the library call ------------------------------------------------------------------------

def verify(mountpoint, paths: Iterable[str] = (), match: Iterable[str] = (), fetch: bool = False, *,
           progress: bool = False, workers: int | None = None,
           on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """Check the cached files of the mount at ``mountpoint`` against the listing's digests.

    Returns one record per selected file (in path order): ``path size cached_bytes
    algorithm expected actual status dropped_bytes``, ``status`` one of ``ok`` (hashed
    right, now marked verified), ``mismatch`` (hashed wrong: its cached bytes were dropped
    everywhere), ``partial`` (not all blocks cached: not checked) or ``no-digest``.
    ``paths`` are files or folders of the repo (relative to ``mountpoint``, or absolute under
    the mount), ``match`` globs on file paths; neither means every file.  ``fetch``: fetch the
    missing blocks of partial files first.  Bad input raises ``NetmountError``.
    On an ``--hf-cache`` mount ``mountpoint`` may be a snapshot folder (or a folder in one):
    its files, globs on their paths in the snapshot; the mount itself means the files read.
    """
    from netmount.mounting.stats import read_stats

    target = os.path.abspath(os.fspath(mountpoint))
    stats = read_stats(target)
    mp = stats.get("mountpoint", target)
    files = select(stats["files"], target, paths, match, mp, stats.get("root") or "")
    bs = stats["block_size"]
    if not stats.get("cache_dir"):
        raise errors.MountpointError(f"{mp}: the mount runs without its disk cache; nothing to verify")
    if os.path.exists(os.path.join(stats["cache_dir"], "cache.db")):  # an older daemon names its store
        raise errors.MountpointError(f"{mp}: its daemon is an older netmount; unmount and mount it again to verify")
    if fetch and stats.get("view_files") is not None:
        raise errors.BadInput(f"{mp} shows a view (--reshard/--only/--experts), not the repo's files: "
                              f"fetch with `netmount prefetch {mp}`, or verify on a plain mount of the same cache")
    if fetch:
        _fetch_missing(mp, stats, files, progress)
    from cache import open_store

    try:  # no limit given: the daemon's stays; failures after opening are misses (partial)
        store = open_store(stats["cache_dir"], bs, None, logging.getLogger("netmount.verify"), fallback_bytes=None)
    except Exception as exc:
        raise errors.MountpointError(f"{mp}: cannot open its block cache: {exc}") from None
    try:
        records = _check_all(store, files, bs, progress, workers)
    finally:
        store.close()
    for r in records:
        if r["status"] == "mismatch":
            r["dropped_bytes"] = drop_everywhere(mp, stats, r)
        if on_record is not None:
            on_record(r)
    return records


def select(files: list[dict], target: str, paths: Iterable[str], match: Iterable[str], mp: str | None = None,
           root: str = "") -> list[dict]:
    """The files named (a file, or a folder: the files under it; relative paths from ``target``,
    the folder named; none: every file under it) and matching the globs (on paths from ``root``,
    the snapshot of an hf-cache mount's files).  ``mp``: the mount (default ``target``)."""
    from netmount.commands.tensorlist import matches

    mp = mp or target
    here = _relative(target, mp)
    paths, match = list(paths), list(match)
    chosen = files
    if paths or here:
        by_path = {f["path"]: f for f in files}
        picked: dict[str, dict] = {}
        for p in paths or [target]:
            rel = _relative(p if os.path.isabs(p) else os.path.join(target, p), mp)
            if rel in by_path:
                picked[rel] = by_path[rel]
                continue
            under = [f for f in files if f["path"].startswith(rel.rstrip("/") + "/")] if rel else files
            if not under:
                raise errors.BadInput(f"{p}: no such file in the repo mounted on {mp}")
            picked.update((f["path"], f) for f in under)
        chosen = sorted(picked.values(), key=lambda f: f["path"])
    if match:
        def name(f: dict) -> str:
            return f["path"][len(root) + 1:] if root else f["path"]

        for g in match:
            if not any(matches(name(f), [g]) for f in chosen):
                raise errors.BadInput(f"--match {g!r} matches no file")
        chosen = [f for f in chosen if matches(name(f), match)]
    return chosen


def _relative(p: str, mp: str) -> str:
    """``p`` (absolute) as a path inside the mount ``mp``; "" for the mount itself."""
    p = os.path.abspath(p)
    if p != mp and not p.startswith(mp.rstrip("/") + "/"):
        raise errors.BadInput(f"{p}: not under the mount {mp}")
    p = os.path.normpath(os.path.relpath(p, mp))
    return "" if p == "." else p


def _fetch_missing(mp: str, stats: dict, files: list[dict], progress: bool) -> None:
    """Read the missing blocks of partial files through the mount, then wait until the
    daemon has stored them (``/.netmount/idle``)."""
    from netmount.commands.warm import Plan, execute, update_missing

    bs = stats["block_size"]
    plan = Plan(bs, {f["path"]: f["size"] for f in files})
    plan.wanted = {f["path"]: [(0, block_count(f["size"], bs) - 1)]
                   for f in files if f["size"] and f["cached_bytes"] < f["size"]}
    update_missing(plan, stats)
    if not plan.missing:
        return
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.todo_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                   desc="fetch", dynamic_ncols=True)
    try:
        execute(mp, plan, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    try:
        with open(os.path.join(mp, ".netmount", "idle"), "rb") as fh:
            fh.read()
    except OSError as exc:
        raise errors.MountpointError(f"{mp}: cannot wait for the daemon: {exc.strerror or exc}") from None


# -- hashing ---------------------------------------------------------------------------------

def _record(f: dict) -> dict:
    lfs = bool(f.get("lfs"))
    expected = f.get("content_id") or ""
    return {"path": f["path"], "size": f["size"], "cached_bytes": 0,
            "algorithm": "sha256" if lfs else "git blob sha1",
            "expected": expected if _HEX[lfs].fullmatch(expected) else None,
            "actual": None, "status": "partial", "dropped_bytes": 0,
            "content_id": expected, "lfs": lfs}


def _check_all(store, files: list[dict], bs: int, progress: bool, workers: int | None) -> list[dict]:
    records = [_record(f) for f in files]
    for r in records:
        r["cached_bytes"] = min(store.cached_bytes(r["content_id"]), r["size"]) if r["content_id"] else 0
    todo = [r for r in records if r["expected"] and r["cached_bytes"] == r["size"]]
    for r in records:
        if not r["expected"]:
            r["status"] = "no-digest"
    bar = None
    lock = threading.Lock()
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=sum(r["size"] for r in todo), unit="B", unit_scale=True, unit_divisor=1024,
                   desc="verify", dynamic_ncols=True)

    def advance(n: int) -> None:
        if bar is not None:
            with lock:
                bar.update(n)

    try:
        n = workers or min(4, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(max(1, n), thread_name_prefix="netmount-verify") as pool:
            for r, fut in [(r, pool.submit(_check, store, r, bs, advance)) for r in todo]:
                fut.result()
    finally:
        if bar is not None:
            bar.close()
    return records


def _check(store, r: dict, bs: int, advance: Callable[[int], None]) -> None:
    """Hash ``r``'s blocks in order from the store; fills ``actual`` and ``status``."""
    cid, size = r["content_id"], r["size"]
    fingerprint = store.fingerprint(cid)  # before reading: a block changed since voids the mark
    h = hashlib.sha256() if r["lfs"] else hashlib.sha1(b"blob %d\0" % size)
    for i in range(block_count(size, bs)):
        lo, hi = block_span(i, bs, size)
        data = store.read(cid, lo, hi - lo, size)
        if data is None:  # evicted since we looked
            r["cached_bytes"] = min(store.cached_bytes(cid), size)
            r["status"] = "partial"
            return
        h.update(data)
        advance(len(data))
    r["actual"] = h.hexdigest()
    if r["actual"] == r["expected"]:
        r["status"] = "ok"
        store.mark_verified(cid, fingerprint)
    else:
        r["status"] = "mismatch"


# -- dropping --------------------------------------------------------------------------------

def drop_everywhere(mp: str, stats: dict, r: dict) -> int:
    """Drop ``r``'s file in this mount and every file of the same content in live mounts on
    the same cache directory, this one included (an hf-cache mount's twins in other repos);
    returns the bytes deleted from the store."""
    targets = [(mp, r["path"])]
    targets += [t for t in _sharing_mounts(stats, r["content_id"]) if t != (mp, r["path"])]
    dropped = 0
    for where, path in targets:
        try:
            with open(os.path.join(where, ".netmount", "drop", path), "rb") as fh:
                dropped += json.loads(fh.read()).get("dropped_bytes", 0)
        except (OSError, ValueError) as exc:
            if (where, path) == targets[0]:
                raise errors.MountpointError(
                    f"{mp}: cannot drop {path}: {getattr(exc, 'strerror', None) or exc}") from None
            continue  # another mount (or file) went away meanwhile: nothing of it to invalidate
        for view in (os.path.join(where, path), os.path.join(where, ".netmount", "raw", path)):
            _drop_page_cache(view)
        for shown in _view_files_of(where, stats if where == mp else None, path):
            _drop_page_cache(os.path.join(where, shown))  # a view's files cut from it
    return dropped


def _view_files_of(where: str, stats: dict | None, path: str) -> list[str]:
    """On a view mount (``--reshard``...), the files it shows that hold bytes of ``path``."""
    if stats is None:
        from netmount.mounting.stats import read_stats

        try:
            stats = read_stats(where)
        except errors.NetmountError:
            return []
    return [f["path"] for f in stats.get("view_files") or () if path in f.get("sources", ()) and f["path"] != path]


def _sharing_mounts(stats: dict, content_id: str) -> list[tuple[str, str]]:
    from netmount.mounting import mounts
    from netmount.mounting.stats import read_stats

    mine = os.path.realpath(stats["cache_dir"])
    out = []
    for entry in mounts.list_mounts():
        try:
            other = read_stats(entry.mountpoint)
        except errors.NetmountError:
            continue
        if not other.get("cache_dir") or os.path.realpath(other["cache_dir"]) != mine:
            continue
        out += [(entry.mountpoint, f["path"]) for f in other["files"] if f.get("content_id") == content_id]
    return out


def _drop_page_cache(path: str) -> None:
    """The kernel keeps a mounted file's pages across opens (``keep_cache``):
    ``POSIX_FADV_DONTNEED`` evicts the clean ones, so the next read asks the daemon."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
