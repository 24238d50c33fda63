"""``netmount prefetch``: warm a mount's block cache for whole files or matching tensors.

Works from outside the daemon, through the mounted files, so every byte goes through the
one read path (single-flight, verification, stats) and nothing here needs the token or
the cache directory.  The plan comes from the mount's stats (block size, which blocks are
cached) and from the safetensors headers (``tensorlist``): globs that match a file path
take the whole file, the others select tensors by name.  Only blocks not cached yet are
read, so an interrupted run resumes where it stopped.

Each missing run is read with ``os.pread`` by a pool of threads (parallel HTTP requests in
the daemon), one block at a time, block-aligned.  Readahead is off (``POSIX_FADV_RANDOM``)
so the kernel asks for exactly those blocks, and the pages are dropped before and after
(``POSIX_FADV_DONTNEED``): before, so a page already in the page cache still reaches the
daemon; after, so warming 100 GB does not push everything else out of memory.

Reads go through ``<mount>/.netmount/raw/``, the same files without the daemon's own
prefetch: it would take these reads for a program streaming tensors and fetch past the
selection.  So exactly the selected blocks and the headers cross the network.

On a view mount the files are the view's (stats ``view_files``: paths, sizes and cached
block runs of the files the mount shows), read the same way.  On an ``--hf-cache`` mount the
target is a snapshot folder (``models--org--name/snapshots/<sha>``), or a folder or file in
one: its files are those of that snapshot's stats (``read_stats``), the globs match paths in
the snapshot, as they would on a plain mount of it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from netmount.commands.tensorlist import list_tensors, matches
from netmount.core import errors
from netmount.core.blocks import block_range
from netmount.core.ranges import Ranges
from netmount.mounting.stats import read_stats, wait_idle

Run = tuple[int, int]  # block indices, inclusive


@dataclass
class Plan:
    block_size: int
    sizes: dict[str, int]  # every file the mount shows, by its path in the mount
    wanted: dict[str, list[Run]] = field(default_factory=dict)  # runs selected
    missing: dict[str, list[Run]] = field(default_factory=dict)  # of those, runs not cached
    wanted_bytes: int = 0  # bytes of all blocks selected (cached or not)
    tensors: int = 0
    whole_files: int = 0
    unmatched: list[str] = field(default_factory=list)  # globs that selected nothing
    mountpoint: str = ""  # the mount the files are read through

    @property
    def todo_bytes(self) -> int:
        return sum(_run_bytes(r, self.block_size, self.sizes[p]) for p, runs in self.missing.items()
                   for r in runs)


def _run_bytes(run: Run, bs: int, size: int) -> int:
    return min((run[1] + 1) * bs, size) - run[0] * bs


def make_plan(target: str, patterns: Iterable[str] = (), on_skip=None) -> Plan:
    """What to read: block runs per file that the globs select and the cache lacks.  ``target``:
    a mountpoint, or in an hf-cache mount a snapshot folder (or a folder or file in one)."""
    patterns = list(patterns)
    stats = read_stats(target)
    bs = stats["block_size"]
    sizes = {f["path"]: f["size"] for f in _shown(stats)}
    plan = Plan(bs, sizes, mountpoint=stats["mountpoint"])
    root, scope = stats.get("root") or "", _scope(stats)
    ranges: dict[str, list[tuple[int, int]]] = {}
    used: set[str] = set()
    for path, size in sizes.items():
        if scope and path != scope and not path.startswith(scope + "/"):
            continue
        hit = [p for p in patterns if matches(path[len(root) + 1:] if root else path, [p])] if patterns else ["*"]
        if hit and size:
            ranges[path] = [(0, size)]
            plan.whole_files += 1
            used.update(hit)
    if patterns:
        folder = target if os.path.isdir(target) else os.path.dirname(target)  # what list_tensors names from
        base = os.path.relpath(os.path.abspath(folder), plan.mountpoint)
        for t in list_tensors(target, patterns, on_skip=on_skip):
            path = os.path.normpath(os.path.join(base, t["file"]))
            if path in ranges and ranges[path] == [(0, sizes[path])]:
                continue  # the whole file is already selected
            ranges.setdefault(path, []).append((t["start"], t["end"]))
            plan.tensors += 1
            used.update(p for p in patterns if matches(t["name"], [p]))
        stats = read_stats(target)  # reading the headers cached their blocks
    plan.unmatched = [p for p in patterns if p not in used]
    for path, spans in ranges.items():
        blocks = Ranges()
        for start, end in spans:
            r = block_range(start, end - start, sizes[path], bs)
            blocks.add(r.start, r.stop)
        plan.wanted[path] = blocks.runs()
        plan.wanted_bytes += sum(_run_bytes(r, bs, sizes[path]) for r in plan.wanted[path])
    update_missing(plan, stats)
    return plan


def update_missing(plan: Plan, stats: dict) -> None:
    """Recompute ``plan.missing`` from the cached runs in a fresh ``stats``."""
    have = {f["path"]: Ranges.from_runs(f.get("cached_runs", [])) for f in _shown(stats)}
    plan.missing = {}
    for path, wanted in plan.wanted.items():
        cached = have.get(path, Ranges())
        missing = [(a, b - 1) for first, last in wanted for a, b in cached.missing(first, last + 1)]
        if missing:
            plan.missing[path] = missing


def _shown(stats: dict) -> list[dict]:
    """The files the mount shows: a view's (``view_files``), else the repo's."""
    return stats["view_files"] if stats.get("view_files") is not None else stats["files"]


def _scope(stats: dict) -> str:
    """The path in the mount a snapshot's stats were asked for ("" for a whole mount)."""
    root, scope = stats.get("root") or "", stats.get("scope") or ""
    return f"{root}/{scope}".rstrip("/") if root else ""


def segments(plan: Plan, max_blocks: int = 16):
    """Missing runs cut into pieces of at most ``max_blocks``, lazily (bounded memory)."""
    for path, runs in plan.missing.items():
        for first, last in runs:
            for a in range(first, last + 1, max_blocks):
                yield path, a, min(last, a + max_blocks - 1)


def execute(mountpoint: str, plan: Plan, *, workers: int = 16,
            progress: Callable[[int], None] | None = None) -> int:
    """Read the plan's missing blocks through the mount; returns bytes read.

    Each worker reads one segment at a time, front to back, one block per ``pread``: a
    sequential stream the daemon's own prefetcher can follow.
    """
    return _Warming(mountpoint, plan, progress).run(workers)


class _Warming:
    """One ``execute``: the workers, the files they opened, what they read, the first failure."""

    def __init__(self, mountpoint: str, plan: Plan, progress: Callable[[int], None] | None) -> None:
        self.mountpoint, self.plan, self.progress = mountpoint, plan, progress
        self.work = segments(plan)
        self.lock = threading.Lock()
        self.fds: dict[str, int] = {}
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.done = 0

    def run(self, workers: int) -> int:
        threads = [threading.Thread(target=self._worker, name=f"netmount-warm-{k}", daemon=True)
                   for k in range(max(1, workers))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # wake up for Ctrl-C
        finally:
            self.stop.set()
            for t in threads:
                t.join()
            for fd in self.fds.values():
                os.close(fd)
        if self.failures:
            exc = self.failures[0]
            if isinstance(exc, OSError):
                raise errors.FetchError(f"prefetch read failed: {exc.strerror or exc}") from None
            raise exc
        return self.done

    def _fd_of(self, path: str) -> int:
        with self.lock:
            if path not in self.fds:
                # the raw mirror: the daemon's own prefetch stays out of an explicit selection
                fd = os.open(os.path.join(self.mountpoint, ".netmount", "raw", path), os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                self.fds[path] = fd
            return self.fds[path]

    def _read_block(self, path: str, i: int) -> int:
        fd = self._fd_of(path)
        start = i * self.plan.block_size
        length = min(self.plan.block_size, self.plan.sizes[path] - start)
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
        got = 0
        while got < length:
            chunk = os.pread(fd, length - got, start + got)
            if not chunk:
                raise errors.FetchError(f"{path}: unexpected end of file at {start + got}")
            got += len(chunk)
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
        return got

    def _worker(self) -> None:
        try:
            while not self.stop.is_set():
                with self.lock:
                    seg = next(self.work, None)
                if seg is None:
                    return
                path, first, last = seg
                for i in range(first, last + 1):
                    if self.stop.is_set():
                        return
                    n = self._read_block(path, i)
                    with self.lock:
                        self.done += n
                    if self.progress is not None:
                        self.progress(n)
        except BaseException as exc:
            self.failures.append(exc)
            self.stop.set()


def _settle(target: str, plan: Plan) -> int:
    """Bytes of the plan still not cached.  The daemon hands a block to its readers before
    writing it to the store, so the last blocks may not be counted yet when the reads
    return: wait once for the daemon to have nothing in flight, then read the stats once."""
    wait_idle(target)
    update_missing(plan, read_stats(target))
    return plan.todo_bytes


def prefetch(target: str, patterns: Iterable[str] = (), *, workers: int = 16,
             show_progress: bool = True, on_skip=None) -> dict:
    """Warm the cache of the mount at ``target`` (or of a snapshot of an hf-cache mount, or a
    folder or file in one); returns a summary dict.

    ``patterns`` are globs matched against file paths (whole file) and tensor names; none
    means every file.  Safe to interrupt and run again: cached blocks are skipped.
    """
    target = os.path.abspath(target)
    plan = make_plan(target, patterns, on_skip)
    todo = plan.todo_bytes
    bar = None
    if show_progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=todo, unit="B", unit_scale=True, unit_divisor=1024, desc="prefetch",
                   dynamic_ncols=True)
    try:
        done = execute(plan.mountpoint, plan, workers=workers, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    left = todo and _settle(target, plan)
    return {"files": len(plan.wanted), "whole_files": plan.whole_files, "tensors": plan.tensors,
            "selected_bytes": plan.wanted_bytes, "read_bytes": done,
            "already_cached_bytes": plan.wanted_bytes - todo, "still_missing_bytes": left,
            "unmatched": plan.unmatched}
