"""Command line: parse arguments, call the library, print one line per known error.

No logic lives here.  ``--debug`` shows tracebacks; without it every failure is a single
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from netmount.core import errors, settings
from netmount.core.units import format_size

# Modules that add their own subcommands: each has ``register(subparsers)`` that adds a
# parser with ``set_defaults(func=...)``; ``func(args) -> int`` may raise NetmountError.
COMMAND_MODULES: list[str] = ["dev.demo", "commands.inspect_cmds", "commands.cache_proxy", "commands.verify"]


def _add_mount(sub) -> None:
    p = sub.add_parser("mount", help="mount a Hub model, dataset or space repo read-only (lazy, block-cached); "
                                     "or, with --hf-cache, the whole Hub as a Hugging Face cache")
    p.add_argument("repo", nargs="?",
                   help="org/name (a model), datasets/org/name or spaces/org/name; @revision optional "
                        "(none with --hf-cache)")
    p.add_argument("mountpoint", help="an existing empty directory")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--endpoint", help="Hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--token", help="access token (visible in `ps`: prefer $HF_TOKEN or `hf auth login`)")
    p.add_argument("--cache-dir", help="block cache folder (default: $NETMOUNT_CACHE_DIR or ~/.cache/netmount)")
    p.add_argument("--cache-size", default=settings.DEFAULT_CACHE_SIZE,
                   help=f"cache cap, e.g. 20G (default {settings.DEFAULT_CACHE_SIZE})")
    p.add_argument("--block-size", default=settings.DEFAULT_BLOCK_SIZE,
                   help=f"cache block size, power of two 64K..64M (default {format_size(settings.DEFAULT_BLOCK_SIZE)})")
    p.add_argument("--connections", type=int, default=settings.DEFAULT_CONNECTIONS,
                   help=f"parallel HTTP connections (default {settings.DEFAULT_CONNECTIONS})")
    p.add_argument("--cache-proxy", metavar="URL",
                   help="fetch file content through this `netmount cache-proxy` (default: "
                        "$NETMOUNT_CACHE_PROXY); the Hub stays the fallback")
    p.add_argument("--readahead", type=int, default=None, metavar="KB",
                   help="fix the mount's kernel readahead in KiB, set when root (1024: 1 MiB requests; "
                        "0: leave it alone; default: switched, 1024 for files a loader opens, "
                        f"else {settings.DEFAULT_READAHEAD_KB})")
    v = p.add_argument_group("views", "show the checkpoint as other safetensors files (no byte copied)")
    v.add_argument("--reshard", choices=("layer", "expert"),
                   help="one file per layer (model.layers.N.safetensors), or also one per routed expert")
    v.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="only tensors whose names match (repeatable), e.g. 'model.layers.61.*'")
    v.add_argument("--experts", metavar="SPEC",
                   help="keep only these routed experts, renumbered (e.g. 0-31, 0,5,9); config rewritten")
    p.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    p.add_argument("--foreground", action="store_true", help="stay attached until unmounted")
    add_hf_cache_options(p)
    p.set_defaults(func=cmd_mount)


def add_hf_cache_options(p) -> None:
    """``netmount mount --hf-cache MOUNTPOINT [--repo ID[@REV]]... [--refs-ttl DURATION]``
    (issue 22); ``hf_cache_request`` checks what was given."""
    g = p.add_argument_group("hf-cache", "the whole Hub in huggingface_hub's cache layout, any repo by id")
    g.add_argument("--hf-cache", action="store_true",
                   help="mount the Hub as a read-only Hugging Face cache: set HF_HUB_CACHE=MOUNTPOINT and "
                        "HF_HUB_OFFLINE=1, and load by repo id (give MOUNTPOINT alone)")
    g.add_argument("--repo", dest="repo_specs", action="append", default=[], metavar="ID[@REV]",
                   help="a repo to list from the start and keep (repeatable); others appear on first use")
    g.add_argument("--refs-ttl", metavar="DURATION",
                   help="how long refs/<branch> is trusted before the Hub is asked again (default 10m; "
                        "600, 90s, 1h; 0: every lookup)")


def hf_cache_request(args):
    """The checked ``HfCacheOptions`` of a parsed ``netmount mount --hf-cache``, or None for a
    plain mount (which must name its repo and take no --hf-cache option)."""
    from netmount.mounting.hfcache.options import check_hf_cache, check_plain

    if not args.hf_cache:
        check_plain(repo=args.repo, repos=args.repo_specs, refs_ttl=args.refs_ttl)
        return None
    return check_hf_cache(repos=args.repo_specs, refs_ttl=args.refs_ttl,
                          given={"REPO": args.repo, "--revision": args.revision, "--reshard": args.reshard,
                                 "--only": args.only, "--experts": args.experts})


# Offline mode is for the programs that read a mount (HF_HUB_CACHE on an --hf-cache mount): a
# node's environment may set it for every job, and `netmount mount` must ask the Hub all the same
OFFLINE_MODE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def cmd_mount(args) -> int:
    from netmount.mounting.lifecycle import mount

    for name in OFFLINE_MODE:  # before huggingface_hub is imported: it reads them once
        os.environ.pop(name, None)
    wanted = hf_cache_request(args)
    if args.token:
        print("netmount: warning: --token is visible to other users in `ps`; "
              "prefer HF_TOKEN or `hf auth login`", file=sys.stderr)
    if wanted is not None:
        return _mount_hf_cache(args)
    m = mount(args.repo, args.mountpoint, revision=args.revision, endpoint=args.endpoint,
              token=args.token, cache_dir=args.cache_dir, cache_size=args.cache_size,
              block_size=args.block_size, connections=args.connections,
              readahead=args.readahead, allow_other=args.allow_other, foreground=args.foreground,
              debug=args.debug, cache_proxy=args.cache_proxy,
              reshard=args.reshard, only=args.only, experts=args.experts)
    if not args.foreground:
        snap = m.snapshot
        total = sum(f.size for f in snap.files)
        from netmount.core.units import format_size

        shown = ""
        if m.view is not None:
            sizes = {f.path: f.size for f in snap.files}
            n = len(m.view.files) + len(m.view.passthrough)
            vbytes = sum(vf.size for vf in m.view.files) + sum(sizes[p] for p in m.view.passthrough)
            shown = f" as a view of {n} files, {format_size(vbytes)},"
        print(f"mounted {snap.name}@{snap.sha[:12]} ({len(snap.files)} files, "
              f"{format_size(total)}){shown} on {m.path}")
    return 0


def _mount_hf_cache(args) -> int:
    from netmount.mounting.lifecycle import mount_hf_cache

    m = mount_hf_cache(args.mountpoint, repos=args.repo_specs, refs_ttl=args.refs_ttl, endpoint=args.endpoint,
                       token=args.token, cache_dir=args.cache_dir, cache_size=args.cache_size,
                       block_size=args.block_size, connections=args.connections, readahead=args.readahead,
                       allow_other=args.allow_other, foreground=args.foreground, debug=args.debug,
                       cache_proxy=args.cache_proxy)
    if not args.foreground:
        pinned = "".join(f"; {s.name}@{s.sha[:12]} listed" for s in m.pinned)
        print(f"mounted the Hub as a Hugging Face cache on {m.path}{pinned}; "
              f"load by repo id with HF_HUB_CACHE={m.path} HF_HUB_OFFLINE=1")
    return 0


def cmd_unmount(args) -> int:
    from netmount.mounting.lifecycle import unmount

    unmount(args.mountpoint, stop_daemon=True)  # busy: stop the daemon, reads in flight get EIO
    return 0


# What `netmount --help` says first: what netmount is for, in one line.
ABOUT = ("netmount: Hugging Face repos as lazy, read-only local files (FUSE): "
         "only the bytes programs read cross the network")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (the full usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _TopParser(_Parser):
    """The top-level parser: its help starts with ``ABOUT``, before the usage."""

    def format_help(self) -> str:
        return f"{ABOUT}\n\n{super().format_help()}"


def build_parser(modules: list[str] | tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The whole CLI; given ``modules`` (of COMMAND_MODULES), only their subcommands besides
    mount and unmount."""
    parser = _TopParser(prog="netmount")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_mount(sub)
    p = sub.add_parser("unmount", aliases=["umount"], help="unmount a netmount mount")
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_unmount)
    for name in COMMAND_MODULES if modules is None else modules:
        importlib.import_module(f"netmount.{name}").register(sub)
    return parser


OWN_COMMANDS = ("mount", "unmount", "umount")  # the subcommands this module defines


def _subcommand(argv: list[str]) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option (the options
    before it, --debug and --help, take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:  # run as the program, which ends now: its last collections would walk every
        gc.freeze()  # object huggingface_hub made (~0.2 s of `netmount mount`) to free nothing
    return code


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `netmount mount` starts no sooner than its parser is built: the other commands' modules
    # (the demo's, verify's, the cache proxy's: ~0.1 s) are imported only when they may be asked for
    parser = build_parser(() if _subcommand(argv) in OWN_COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except errors.NetmountError as exc:
        if args.debug:
            raise
        print(f"netmount: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # unknown failure: still one line unless --debug
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"netmount: error: {type(exc).__name__}: {first} (rerun with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
