"""Issue 21's whole-file rows: one ~448 MB shard read front to back, netmount beside what a
user compares it with, alternating within each run.

- ``lo`` (``--only cdn``): loopback, nginx as the CDN.  Cold ``cat`` (fresh cache, page
  cache dropped) vs ``curl`` one connection into a file and to /dev/null and ``aria2c
  -x16``; warm ``cat`` and ``dd bs=4M`` (a fresh mount over the full cache, page cache
  dropped) vs the same on the local file (dropped too).
- peers (``--only cdnpeers``): ``rclone mount --vfs-cache-mode full`` and ``httpdirfs --cache``
  on the same nginx (its folder index), cold then warm (remounted on their cache).
- ``wan`` (``--only wan``): the emulated WAN (cdn.py), cold ``cat`` vs ``aria2c -x16`` and ``curl``.

Speeds are MB/s (10^6 bytes/s) of the reading command alone (mounting is not in them);
"CPU s/GB" is the daemon's (or the peer's) user+system CPU for the read, taken once the
daemon is idle (every block stored), per 10^9 bytes.
"""

from __future__ import annotations

from . import tools
from .context import BIG, Ctx
from .procs import PeerMount, drop_caches
from .profile import Spy


def read_through(ctx: Ctx, key: str, tool, m, spy=None) -> None:
    """``tool`` over the shard on mount ``m`` (page cache dropped first): MB/s and CPU s/GB."""
    size = ctx.shard.stat().st_size
    drop_caches()
    cpu = m.cpu()
    if spy is not None:
        with Spy(m.pid, spy):
            tool(m.mp / ctx.shard.name)
        return
    secs = tool(m.mp / ctx.shard.name)
    if hasattr(m, "idle"):
        m.idle()
    ctx.res.add(f"{key} MB/s", size / secs / 1e6)
    ctx.res.add(f"{key} CPU s/GB", (m.cpu() - cpu) / (size / 1e9))


def local(ctx: Ctx, key: str, tool) -> None:
    drop_caches()
    ctx.res.add(f"{key} MB/s", ctx.shard.stat().st_size / tool(ctx.shard) / 1e6)


def downloads(ctx: Ctx, prefix: str, hub, null: bool = True) -> None:
    """curl (one connection, into a file and, if ``null``, to /dev/null) and aria2c -x16 of the
    resolve URL."""
    size, url = ctx.shard.stat().st_size, ctx.url(hub, ctx.shard)
    jobs = [("curl", f"{prefix} curl file", lambda: tools.curl(url, ctx.work / "curl.out", size)),
            ("curl", f"{prefix} curl null", lambda: tools.curl(url, None, size)),
            ("aria2c", f"{prefix} aria2c x16", lambda: tools.aria2c(url, ctx.work / "aria2", size))]
    jobs = jobs if null else [j for j in jobs if not j[1].endswith("null")]
    for tool, key, job in jobs:
        if not tools.missing(tool):
            try:
                ctx.res.add(f"{key} MB/s", size / job() / 1e6)
            except tools.ToolError as exc:
                print(f"  {key}: {exc}", flush=True)


def loopback(ctx: Ctx) -> None:
    hub = ctx.hub(wan=False)
    for _ in range(ctx.runs):
        cache = ctx.cache("lo", fresh=True)
        with ctx.mount(hub, cache) as m:
            read_through(ctx, "lo cold cat", tools.cat, m)
        downloads(ctx, "lo", hub)
        for name, tool in (("cat", tools.cat), ("dd", tools.dd)):
            with ctx.mount(hub, cache) as m:
                read_through(ctx, f"lo warm {name}", tool, m)
            local(ctx, f"local {name}", tool)
    if ctx.profile is not None:  # after the timed runs: a profiled run is not one of them
        cache = ctx.cache("lo", fresh=True)
        with ctx.mount(hub, cache) as m:
            read_through(ctx, "", tools.cat, m, spy=ctx.profile / "cold-cat")
        with ctx.mount(hub, cache) as m:
            read_through(ctx, "", tools.cat, m, spy=ctx.profile / "warm-cat")


def wan(ctx: Ctx) -> None:
    hub = ctx.hub(wan=True)
    if hub is None:
        return
    for _ in range(ctx.runs):
        with ctx.mount(hub, ctx.cache("wan", fresh=True)) as m:
            read_through(ctx, "wan cold cat", tools.cat, m)
        downloads(ctx, "wan", hub, null=False)  # one connection is the link's cap either way: 18 s


def peers(ctx: Ctx, kinds=("rclone", "httpdirfs")) -> None:
    ctx.model  # noqa: B018 - builds the model and its link under the CDN's folder
    url = f"{ctx.cdn.url}/{BIG}/"  # nginx's autoindex of the repo folder
    for kind in kinds:
        if tools.missing(kind):
            continue
        for _ in range(ctx.runs):
            try:
                for state, fresh in (("cold", True), ("warm", False)):
                    with PeerMount(kind, url, ctx.work, fresh=fresh) as p:
                        read_through(ctx, f"{kind} {state} cat", tools.cat, p)
            except (RuntimeError, tools.ToolError) as exc:
                print(f"  {kind}: failed: {str(exc)[-300:]}", flush=True)
                break
