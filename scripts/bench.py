#!/usr/bin/env python3
"""Side-by-side benchmark: netmount vs what a user would use instead, on 127.0.0.1.

    python scripts/bench.py [--only GROUPS] [--runs 3] [--work DIR] [--profile DIR] [--mount-args "..."]

Issue 21's set (``--only i21`` = cdn,cdnpeers,wan,big,fio; modules under scripts/benchlib/):
a 1.5 GB random Llama in 4 shards, served by the test hub (API, ``/resolve/`` 302) and an
nginx CDN (cdn.py) — ``cdn`` loopback cat/curl/aria2c/dd, ``cdnpeers`` rclone and httpdirfs,
``wan`` the emulated WAN (40 ms first byte, 25 MB/s per connection), ``big`` cold/warm
loads with mmap and ``disable_mmap``, ``fio`` on a warm mount.  The old rows (``--only
old`` = local,snapshot,netmount,partial,deepseek,cat,peers; legacy.py) load a 300 MB Llama
over the hub's own Python WAN emulation, as earlier sessions did.  Default: everything.

Within each run netmount and its baseline alternate; tables show medians of ``--runs`` and
netmount ÷ baseline.  Every process is separate (hub, nginx, each daemon, each loader).
``--profile DIR`` adds, after the timed runs, a ``py-spy`` flame graph of the daemon for a
cold and a warm ``cat`` (with ``cdn``) and for warm 4 KiB random reads (with ``fio``).
A missing tool prints one line and its rows are skipped (scripts/bench_setup.sh installs them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from benchlib import legacy, loads, streams  # noqa: E402
from benchlib.context import Ctx, Skip, link_repo  # noqa: E402
from benchlib.procs import Hub  # noqa: E402
from benchlib.results import Results  # noqa: E402
from benchlib.tables import i21_table, legacy_table  # noqa: E402

I21 = ["cdn", "cdnpeers", "wan", "big", "fio"]
OLD = ["local", "snapshot", "netmount", "partial", "deepseek", "cat", "peers"]
GROUPS = {"i21": I21, "old": OLD, "all": I21 + OLD}


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--only", default="all",
                    help=f"comma list of scenarios or groups ({', '.join(GROUPS)}: {', '.join(I21 + OLD)}); "
                         "partial:PATTERN for some patterns")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/netmount-bench"),
                    help="scratch folder; the models are built here once (default /var/tmp/netmount-bench)")
    ap.add_argument("--profile", type=Path, default=None, help="write py-spy flame graphs (SVG) here")
    ap.add_argument("--mount-args", default="", help="extra netmount mount arguments")
    ap.add_argument("--latency-ms", type=float, default=40, help="WAN: first-byte delay (both emulations)")
    ap.add_argument("--conn-mbps", type=float, default=200, help="WAN: Mbit/s per connection (both emulations)")
    ap.add_argument("--size", type=int, default=300_000_000, help="old rows: model bytes (bf16 Llama-like)")
    ap.add_argument("--shards", type=int, default=6, help="old rows: shards")
    ap.add_argument("--peers", default="rclone,httpdirfs", help="comma list; empty for none")
    ap.add_argument("--parallel-loading", action="store_true",
                    help="old rows: transformers' parallel loading, 8 threads (4.5x: HF_ENABLE_PARALLEL_LOADING; "
                         "5.x: its pool)")
    args = ap.parse_args(argv)
    only = set()
    for word in filter(None, args.only.split(",")):
        if word in GROUPS:
            only |= set(GROUPS[word])
        elif word in I21 + OLD or word.startswith("partial:"):
            only.add(word)
        else:
            ap.error(f"--only: unknown scenario {word!r}")
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    args.only = only
    return args


def run_i21(args, res: Results) -> None:
    ctx = Ctx(args.work, args.runs, res, args.mount_args.split(), args.profile, args.latency_ms,
              int(args.conn_mbps * 1e6 / 8))
    peers = [p for p in args.peers.split(",") if p]
    try:
        for name, job in [("cdn", streams.loopback), ("cdnpeers", lambda c: streams.peers(c, peers)),
                          ("wan", streams.wan), ("big", loads.big), ("fio", loads.fio)]:
            if name in args.only:
                t = time.monotonic()
                print(f"[{name}]", flush=True)
                try:
                    job(ctx)
                except Skip as exc:
                    print(f"  skipped: {exc}", flush=True)
                print(f"[{name}] {time.monotonic() - t:.0f} s", flush=True)
    finally:
        ctx.close()


def run_old(args, res: Results) -> None:
    from netmount.dev.testmodels import cached_model

    model = cached_model("llama-like", cache_root=args.work / "models", total_bytes=args.size, shards=args.shards)
    link_repo(args.work / "hubroot", legacy.REPO, model)
    load_env = {"HF_ENABLE_PARALLEL_LOADING": "true", "HF_PARALLEL_LOADING_WORKERS": "8",
                "NETMOUNT_BENCH_WORKERS": "8"} if args.parallel_loading else {}
    patterns = [p.split(":", 1)[1] for p in args.only if p.startswith("partial:")]
    patterns = patterns or (legacy.PATTERNS if "partial" in args.only else [])
    hub = Hub(args.work / "hubroot", args.latency_ms, args.conn_mbps, synthetic="deepseek" in args.only)
    lg = legacy.Legacy(hub, args.work, model, args.runs, res, args.mount_args.split(), load_env)
    print(f"[old] 300 MB model; hub {hub.url}, Python WAN {args.latency_ms} ms, {args.conn_mbps} Mbit/s "
          "per connection", flush=True)
    try:
        legacy.loads(lg, args.only)
        if patterns or "deepseek" in args.only:
            legacy.partial(lg, patterns, "deepseek" in args.only)
        if "cat" in args.only:
            legacy.cat(lg)
        if "peers" in args.only:
            legacy.peers(lg, [p for p in args.peers.split(",") if p])
    finally:
        hub.stop()


def machine() -> str:
    """When, which tree, and how busy the machine is: the numbers depend on it."""
    head = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, tree {head or '?'}, load average {load}, {os.cpu_count()} cpus"


def main(argv=None) -> int:
    args = parse(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    res = Results()
    print(f"start: {machine()}", flush=True)
    t = time.monotonic()
    if args.only & set(I21):
        run_i21(args, res)
    if args.only - set(I21):
        run_old(args, res)
    print(f"\nend: {machine()}")
    print(f"medians of {args.runs} runs ({time.monotonic() - t:.0f} s):")
    for lines in (i21_table(res), legacy_table(res, [p for p in args.peers.split(",") if p])):
        if lines:
            print("\n" + "\n".join(lines))
    print("\nall runs:", res.dump())
    return 0


if __name__ == "__main__":
    sys.exit(main())
