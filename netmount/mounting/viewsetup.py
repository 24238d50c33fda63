"""A view's mount-time half: check the options, read what the planner needs, plan, and hand
the plan to the daemon.

Runs in the parent (``lifecycle.mount``), before any daemon starts, so a bad spec or a repo
the spec does not fit is one line and leaves nothing mounted.  Every safetensors header of
the repo is read at once (one speculative range request per shard, a second only for a
longer header: ``RangeFetcher`` with many connections), plus ``config.json`` and
``model.safetensors.index.json``; the pure planner (``views/plan.py``) turns them into a
``View``.  The daemon gets the ``View`` itself, compactly (``views.model.view_to_bytes``:
synthesized bytes raw, source pieces as (length, source index, offset)), checks it
(``check_view``) and serves every synthesized header from memory, never from the network.
"""

from __future__ import annotations

import concurrent.futures
import gc

from netmount.core import errors
from netmount.core.safetensors import HeaderError, header_size
from netmount.remote.hub import RemoteFile, Snapshot
from netmount.views.model import View, ViewSpec

MAX_SMALL = 64 << 20  # a config or index larger than this is not a model's
# The first read of each shard: DeepSeek-V3's headers (~70 KB) fit, and little tensor data
# comes with a short header (kept: the daemon stores what the parent fetched, ``keep``).
FIRST_READ = 128 << 10
# Header reads are small and latency-bound (each file's first request also resolves its
# CDN URL): many at once, e.g. DeepSeek-V3's 163 in ~6 rounds.
HEADER_CONNECTIONS = 32


def build_view(snap: Snapshot, spec: ViewSpec, token: str | None, *, connections: int = HEADER_CONNECTIONS,
               proxy: str | None = None, keep: list | None = None) -> View:
    """Read the small JSON files, then every source header (in parallel), and plan the view.
    ``keep``: a list that gets every range fetched, as ``(file, offset, bytes)``, for the
    daemon's store (a plain mount of the same repo then fetches none of it again)."""
    from netmount.views.plan import plan_view

    if not any(f.path.endswith(".safetensors") for f in snap.files):
        raise errors.BadInput(f"{snap.name} has no safetensors files: nothing to re-shard or select")
    gc.disable()  # ~100k parsed tensors, all acyclic: collections would walk them again and again
    try:
        headers, small = read_headers(snap, token, connections=connections, proxy=proxy, keep=keep)
        return plan_view(spec, list(snap.files), headers, small)
    finally:
        gc.enable()


def read_headers(snap: Snapshot, token: str | None, *, connections: int = HEADER_CONNECTIONS,
                 proxy: str | None = None, keep: list | None = None) -> tuple[dict, dict[str, bytes]]:
    """The small files the planner reads (whole), then the parsed headers of every source
    shard they name: all requests at once, a second round only for headers longer than the
    first read; each header is parsed as soon as it is in, while the others travel.
    ``keep``: as ``build_view``'s."""
    from netmount.core.safetensors import parse_header_full
    from netmount.remote.contract import fetch_bytes
    from netmount.remote.fetch import RangeFetcher
    from netmount.views.plan import SMALL_FILES, sources

    fetcher = RangeFetcher(snap.endpoint, snap.repo_id, snap.sha, token, connections=connections,
                           proxy=proxy, repo_type=snap.repo_type).start()
    try:
        def get(f: RemoteFile, start: int, end: int) -> concurrent.futures.Future:
            fut = fetch_bytes(fetcher, f, start, end)
            if keep is not None:
                fut.add_done_callback(lambda done: keep.append((f, start, done.result()))
                                      if not done.cancelled() and done.exception() is None else None)
            return fut

        small_files = [f for f in snap.files if f.path in SMALL_FILES and f.size <= MAX_SMALL]
        pending = {f.path: (f, get(f, 0, f.size)) for f in small_files if f.size}
        small = {p: bytes(_result(fut, f)) for p, (f, fut) in pending.items()}
        small.update({f.path: b"" for f in small_files if not f.size})
        by_path = {f.path: f for f in snap.files}
        shards = [by_path[p] for p in sources(list(snap.files), small)]
        for f in shards:
            if not f.size:
                raise errors.BadInput(f"{f.path} is empty, not safetensors: cannot make a view of it")
        waiting = {get(f, 0, min(f.size, FIRST_READ)): (f, b"") for f in shards}
        headers = {}
        while waiting:
            done, _ = concurrent.futures.wait(waiting, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in done:
                f, before = waiting.pop(fut)
                head = before + bytes(_result(fut, f))
                try:
                    span = header_size(head, f.size)
                    if span > len(head):  # a long header: its rest, in a second round
                        waiting[get(f, len(head), span)] = (f, head)
                        continue
                    headers[f.path] = parse_header_full(head, f.size)
                except HeaderError as exc:
                    raise errors.BadInput(f"{f.path} is not valid safetensors, no view of it: {exc}") from None
        return headers, small
    finally:
        fetcher.close()


def _result(fut: concurrent.futures.Future, f: RemoteFile) -> bytes:
    try:
        return fut.result()
    except errors.NetmountError as exc:
        raise errors.FetchError(f"reading {f.path} for the view failed: {exc}") from None


# -- in the daemon --------------------------------------------------------------------------

def check_view(view: View, snap: Snapshot) -> None:
    """What the daemon relies on: every source piece inside a file of the snapshot, view paths
    unique, not clashing with a passthrough file, and safe (no ``..``, not under ``.netmount``)."""
    from netmount.remote.hub import check_path

    sizes = {f.path: f.size for f in snap.files}
    seen = set(view.passthrough)
    for path in view.passthrough:
        if path not in sizes:
            raise errors.BadInput(f"view error: passthrough {path!r} is not a file of {snap.repo_id}")
    for vf in view.files:
        check_path(vf.path)
        if vf.path in seen:
            raise errors.BadInput(f"view error: {vf.path!r} twice in the view")
        seen.add(vf.path)
        for p in vf.pieces:
            if p.data is None and (p.source not in sizes or p.offset < 0 or p.offset + p.length > sizes[p.source]):
                raise errors.BadInput(f"view error: {vf.path!r} maps past the end of {p.source!r}")
