#!/usr/bin/env python3
"""Two trees side by side on one scenario of the bench's set-up, alternating, a run each in turn.

    python scripts/ab.py TREE_A TREE_B [--what cold|warm|wan] [--pairs 3] [--readahead KB]

``cold``: a fresh cache, ``cat`` of the 448 MB shard through the loopback hub (nginx as the
CDN); ``warm``: the same over a cache that holds it (filled first), page cache dropped;
``wan``: cold, through the emulated WAN (40 ms, 25 MB/s per connection).  Each run is a
child ``python`` with ``PYTHONPATH=<tree>`` (its daemon runs that tree's code) printing one
JSON line: MB/s, the daemon's CPU s/GB, FUSE and HTTP request counts, bytes fetched, and the
daemon's ``PYTHONPATH`` (proof of which tree ran).
Prints every run and the medians.  What a change is measured with before it is kept
(BENCHMARKS.md): the machine is noisy, so compare within pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORK = Path("/var/tmp/netmount-bench")
KEYS = ("max_read_bytes", "requests", "bytes_fetched", "cache_hits", "cache_misses")


def one(what: str, readahead: str | None, tree: Path) -> dict:
    """One run, in this process (the child's side), with ``tree``'s daemon: the bench's
    processes get its ``PYTHONPATH`` (``procs.TREE_ENV`` would name this script's own tree)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import procs, tools
    from benchlib.context import Ctx
    from benchlib.results import Results
    from benchlib.streams import read_through

    procs.TREE_ENV["PYTHONPATH"] = str(tree)
    ctx = Ctx(WORK, 1, Results(), extra=["--readahead", readahead] if readahead else [])
    try:
        hub = ctx.hub(wan=what == "wan")
        cache = ctx.cache("ab-" + what, fresh=True)
        if what == "warm":  # filled first, then read by a fresh mount
            with ctx.mount(hub, cache) as m:
                tools.cat(m.mp / ctx.shard.name)
                m.idle()
        with ctx.mount(hub, cache) as m:
            read_through(ctx, "ab", tools.cat, m)
            stats = m.stats()
            ran = _pythonpath(m.pid)
        return {"MBps": round(ctx.res.med("ab MB/s")), "cpu_s_per_GB": round(ctx.res.med("ab CPU s/GB"), 2),
                **{k: stats.get(k) for k in KEYS}, "daemon_pythonpath": ran}
    finally:
        ctx.close()


def _pythonpath(pid: int) -> str | None:
    """The daemon's ``PYTHONPATH``: which tree's code it runs."""
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"PYTHONPATH="):
            return item.split(b"=", 1)[1].decode()
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="*", type=Path)
    ap.add_argument("--what", choices=["cold", "warm", "wan"], default="cold")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--readahead", help="netmount mount --readahead KB (default: switched)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's run
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.what, args.readahead, Path(os.environ["PYTHONPATH"]))), flush=True)
        return 0
    if len(args.trees) != 2:
        ap.error("give two trees")
    runs: dict[Path, list[dict]] = {t: [] for t in args.trees}
    for _ in range(args.pairs):
        for tree in args.trees:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--what", args.what]
            cmd += ["--readahead", args.readahead] if args.readahead else []
            env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if out.returncode:
                print(f"{tree}: failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
                return 1
            runs[tree].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(tree, runs[tree][-1], flush=True)
    for tree, got in runs.items():
        print(f"median {tree}: {statistics.median(r['MBps'] for r in got)} MB/s, "
              f"CPU {statistics.median(r['cpu_s_per_GB'] for r in got)} s/GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
