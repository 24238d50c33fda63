"""``python -m netmount.dev.testhub --root DIR``: serve until SIGINT/SIGTERM.

Prints the endpoint (use it as HF_ENDPOINT) on stdout, one line, once listening.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .runner import TestHub


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netmount.dev.testhub",
                                 description="Serve model repos from DIR/<org>/<name>/ over the Hub's HTTP protocol.")
    ap.add_argument("--root", type=Path, help="directory holding <org>/<name>/ repo folders")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="API port (0: any free port)")
    ap.add_argument("--cdn-port", type=int, default=0, help="CDN port (0: any free port)")
    ap.add_argument("--page-size", type=int, default=1000, help="tree entries per page")
    ap.add_argument("--url-ttl", type=float, default=3600.0, help="seconds a signed CDN URL stays valid")
    ap.add_argument("--token", action="append", default=[], help="a token that opens gated repos (repeatable)")
    ap.add_argument("--synthetic-deepseek", action="store_true",
                    help="also serve a generated 688 GB deepseek-ai/DeepSeek-V3")
    ap.add_argument("--synthetic-repos", action="store_true",
                    help="also serve synthetic/repo-N and synthetic/gated-N (N < 1,000,000), made on demand")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="WAN emulation: delay before every hub and CDN answer (default 0)")
    ap.add_argument("--conn-mbps", type=float, default=0.0,
                    help="WAN emulation: body bytes per TCP connection capped at this many Mbit/s (default 0: no cap)")
    ap.add_argument("--cdn-base", default="",
                    help="redirect /resolve/ of folder repos' LFS files to URL/<org>/<name>/<path> "
                         "(e.g. an nginx serving --root by name) instead of the built-in CDN")
    args = ap.parse_args(argv)
    if args.latency_ms < 0 or args.conn_mbps < 0:
        ap.error("--latency-ms and --conn-mbps must be >= 0")
    if args.root is None and not args.synthetic_deepseek and not args.synthetic_repos:
        ap.error("give --root DIR, --synthetic-deepseek, --synthetic-repos, or several")
    if args.root is not None and not args.root.is_dir():
        ap.error(f"--root {args.root}: not a directory")
    if args.cdn_base and not args.cdn_base.startswith(("http://", "https://")):
        ap.error(f"--cdn-base {args.cdn_base}: not an http(s) URL")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    hub = TestHub(args.root, host=args.host, port=args.port, cdn_port=args.cdn_port,
                  page_size=args.page_size, url_ttl=args.url_ttl, tokens=args.token,
                  synthetic_deepseek=args.synthetic_deepseek, synthetic_repos=args.synthetic_repos,
                  latency_ms=args.latency_ms, conn_mbps=args.conn_mbps, cdn_base=args.cdn_base)
    with hub:
        print(hub.url, flush=True)
        print(f"cdn: {hub.cdn_url}", file=sys.stderr, flush=True)
        while not stop.wait(3600):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
