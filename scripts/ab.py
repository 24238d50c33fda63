#!/usr/bin/env python3
"""Two trees side by side on one scenario of the bench's set-up, alternating, a run each in turn.

    python scripts/ab.py TREE_A TREE_B [--what cold|warm|wan] [--pairs 3] [--readahead KB]

``cold``: a fresh cache, ``cat`` of the 448 MB shard through the loopback hub (nginx as the
CDN); ``warm``: the same over a cache that holds it (filled first), page cache dropped;
``wan``: cold, through the emulated WAN (40 ms, 25 MB/s per connection).  Each run is a
child ``python`` with ``PYTHONPATH=<tree>`` (its daemon runs that tree's code) printing one
JSON line: MB/s, the daemon's CPU seconds, FUSE and HTTP request counts, bytes fetched.
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
import time
from pathlib import Path

WORK = Path("/var/tmp/netmount-bench")
KEYS = ("max_read_bytes", "requests", "bytes_fetched", "cache_hits", "cache_misses")


def one(what: str, readahead: str | None) -> dict:
    """One run, in this process (the child's side)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.context import Ctx
    from benchlib.procs import cpu_seconds, drop_caches
    from benchlib.results import Results

    ctx = Ctx(WORK, 1, Results(), extra=["--readahead", readahead] if readahead else [])
    try:
        hub = ctx.hub(wan=what == "wan")
        name = "ab-" + what
        if what == "warm":
            with ctx.mount(hub, ctx.cache(name, True)) as m:
                subprocess.run(["cat", str(m.mp / ctx.shard.name)], stdout=subprocess.DEVNULL, check=True)
                m.idle()
        with ctx.mount(hub, ctx.cache(name, what != "warm")) as m:
            pid = m.stats()["pid"]
            drop_caches()
            cpu = cpu_seconds(pid)
            t = time.monotonic()
            subprocess.run(["cat", str(m.mp / ctx.shard.name)], stdout=subprocess.DEVNULL, check=True)
            seconds = time.monotonic() - t
            m.idle()
            cpu = cpu_seconds(pid) - cpu
            stats = m.stats()
        return {"MBps": round(ctx.shard.stat().st_size / seconds / 1e6), "cpu_s": round(cpu, 2),
                **{k: stats.get(k) for k in KEYS}}
    finally:
        ctx.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="*", type=Path)
    ap.add_argument("--what", choices=["cold", "warm", "wan"], default="cold")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--readahead", help="netmount mount --readahead KB (default: switched)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's run
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.what, args.readahead)), flush=True)
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
              f"CPU {statistics.median(r['cpu_s'] for r in got)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
