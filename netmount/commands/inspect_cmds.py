"""Subcommands ``stats``, ``tensors`` and ``prefetch``: arguments in, library call, output out.

The work is in ``stats`` / ``statsview``, ``tensorlist`` and ``warm``; errors are
``NetmountError``s that the CLI prints as one line.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys

from netmount.core import errors


def register(sub) -> None:
    p = sub.add_parser("stats", help="what live mounts served, fetched and cached")
    p.add_argument("mountpoint", nargs="*", help="netmount mountpoints, or snapshot folders of --hf-cache "
                                                 "mounts (default: every live mount)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable: one object for one mount, else a list")
    p.add_argument("--map", action="store_true", help="one bar per file showing which blocks are cached")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between --watch refreshes")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("tensors", help="list tensors (name, dtype, shape, byte range) from headers only")
    p.add_argument("target", help="org/name[@rev] on the Hub, a netmount mountpoint, a local folder "
                                  "(a snapshot folder of an --hf-cache mount)")
    p.add_argument("--match", action="append", default=[], metavar="GLOB",
                   help="only tensors whose name matches (repeatable), e.g. 'model.layers.0.*'")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--endpoint", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--token", help="access token (default: $HF_TOKEN or the saved login)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array of records")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    p.set_defaults(func=cmd_tensors)

    p = sub.add_parser("prefetch", help="warm a mount's cache for whole files or matching tensors")
    p.add_argument("mountpoint", help="a netmount mountpoint, or a snapshot folder of an --hf-cache mount "
                                      "(models--org--name/snapshots/<sha>, or a folder or file in one)")
    p.add_argument("--match", action="append", default=[], metavar="GLOB",
                   help="file paths (whole file) or tensor names to warm (repeatable; default: everything)")
    p.add_argument("--workers", type=int, default=16, help="parallel reads (default 16)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prefetch)


def _stdout_closed() -> int:
    """``| head`` closed the pipe: stop quietly, as cat does."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError:
        pass
    return 0


def cmd_stats(args) -> int:
    from netmount.commands.statsview import render_map, render_table, watch
    from netmount.mounting.stats import live_stats

    def text() -> str:
        stats = live_stats(args.mountpoint, on_error=lambda exc: print(
            f"netmount: warning: {exc}", file=sys.stderr))
        if args.json:
            return json.dumps(stats[0] if len(stats) == 1 else stats, indent=1)
        width = shutil.get_terminal_size((100, 24)).columns
        if args.map:
            return "\n\n".join(render_map(s, width) for s in stats) or render_table(stats)
        return render_table(stats)

    try:
        if args.watch:
            def safe_text() -> str:
                try:
                    return text()
                except errors.NetmountError as exc:  # a mount went away: say so, keep watching
                    return f"netmount: {exc}"
            text()  # a bad mountpoint fails at once, not inside the loop
            watch(safe_text, max(0.1, args.interval))
        else:
            print(text())
    except BrokenPipeError:
        return _stdout_closed()
    return 0


def cmd_tensors(args) -> int:
    from netmount.commands.tensorlist import KEYS, list_tensors

    def skip(path: str, exc: Exception) -> None:
        print(f"netmount: warning: skipping {path}: {exc}", file=sys.stderr)

    records = list_tensors(args.target, args.match, revision=args.revision, endpoint=args.endpoint,
                           token=args.token, on_skip=skip)
    try:
        if args.json:
            sys.stdout.write(json.dumps(records) + "\n")  # dumps: the C encoder; dump is pure Python
        elif args.csv:
            w = csv.writer(sys.stdout, lineterminator="\n")
            w.writerow(KEYS)
            for r in records:
                w.writerow([json.dumps(r[k], separators=(",", ":")) if k == "shape" else
                            ("" if r[k] is None else r[k]) for k in KEYS])
        else:
            _print_table(records)
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_closed()
    if args.match and not records:
        print(f"netmount: warning: no tensor matches {' '.join(args.match)}", file=sys.stderr)
    return 0


def _print_table(records: list[dict]) -> None:
    from netmount.core.units import format_size

    name_w = max([len(r["name"]) for r in records] + [4])
    out = sys.stdout
    out.write(f"{'name':<{name_w}}  {'dtype':<8} {'shape':<20} {'size':>10}  file [start, end)\n")
    for r in records:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        out.write(f"{r['name']:<{name_w}}  {r['dtype']:<8} {shape:<20} {format_size(r['nbytes']):>10}"
                  f"  {r['file']} [{r['start']}, {r['end']})\n")
    total = sum(r["nbytes"] for r in records)
    out.write(f"{len(records)} tensors, {format_size(total)}\n")


def cmd_prefetch(args) -> int:
    from netmount.commands.warm import prefetch
    from netmount.core.units import format_size

    def skip(path: str, exc: Exception) -> None:
        print(f"netmount: warning: skipping {path}: {exc}", file=sys.stderr)

    if args.workers < 1 or args.workers > 256:
        raise errors.BadInput("invalid --workers: 1 to 256")
    summary = prefetch(args.mountpoint, args.match, workers=args.workers,
                       show_progress=not args.quiet, on_skip=skip)
    for pattern in summary["unmatched"]:
        print(f"netmount: warning: --match {pattern!r} matched no file and no tensor", file=sys.stderr)
    print(f"prefetch: {format_size(summary['selected_bytes'])} selected "
          f"({summary['whole_files']} whole files, {summary['tensors']} tensors); "
          f"{format_size(summary['already_cached_bytes'])} were cached, "
          f"{format_size(summary['read_bytes'])} read now"
          + (f"; {format_size(summary['still_missing_bytes'])} still missing (cache too small?)"
             if summary["still_missing_bytes"] else ""))
    if args.match and len(summary["unmatched"]) == len(args.match):
        return 1
    return 0
