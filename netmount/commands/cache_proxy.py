"""Subcommand ``cache-proxy``: a shared nginx cache in front of the Hub for many mounts.

Arguments in, ``netmount.proxy`` call, one line out; the config and its reasons are in
``netmount/proxy/nginx_config.py``.
"""

from __future__ import annotations

import os

from netmount.core import settings
from netmount.core.errors import BadInput
from netmount.proxy import nginx_config


def register(sub) -> None:
    p = sub.add_parser(
        "cache-proxy",
        help="run a shared nginx cache of Hub downloads for many machines",
        description="Start nginx as a shared cache of Hub file downloads (GET /{repo}/resolve/{commit}/{path} "
                    "with Range), or print its config, or stop it.")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on, e.g. 0.0.0.0:8080")
    p.add_argument("--cache-dir", required=True, metavar="DIR",
                   help="folder for the cache, config, pid file and logs (one proxy per folder)")
    p.add_argument("--max-size", default=nginx_config.DEFAULT_MAX_SIZE, metavar="SIZE",
                   help=f"cache cap; least recently used slices go first (default {nginx_config.DEFAULT_MAX_SIZE})")
    p.add_argument("--upstream", metavar="URL",
                   help=f"Hub endpoint (default: $HF_ENDPOINT or {settings.DEFAULT_ENDPOINT})")
    p.add_argument("--slice", default=nginx_config.DEFAULT_SLICE, metavar="SIZE",
                   help=f"cached piece size, a power of two; match the mounts' --block-size "
                        f"(default {nginx_config.DEFAULT_SLICE})")
    p.add_argument("--cache-private", action="store_true",
                   help="also cache requests that carry a token (any token holder may then be served "
                        "what another fetched)")
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops nginx")
    p.add_argument("--print-config", action="store_true",
                   help="print the nginx config and exit (to run nginx yourself)")
    p.add_argument("--stop", action="store_true", help="stop the proxy running on --cache-dir")
    p.set_defaults(func=cmd_cache_proxy)


def cmd_cache_proxy(args) -> int:
    from netmount.proxy import server

    if args.stop:
        if args.print_config or args.foreground:
            raise BadInput("--stop takes only --cache-dir")
        pid = server.stop(args.cache_dir)
        print(f"stopped the cache proxy on {os.path.abspath(os.path.expanduser(args.cache_dir))} (pid {pid})")
        return 0
    if not args.listen:
        raise BadInput("--listen HOST:PORT is required (e.g. --listen 0.0.0.0:8080)")
    host, port = nginx_config.parse_listen(args.listen)
    upstream = nginx_config.parse_upstream(settings.endpoint(args.upstream))
    slice_size = nginx_config.parse_slice(args.slice)
    max_size = nginx_config.parse_max_size(args.max_size, slice_size)
    opts = server.options(host, port, args.cache_dir, upstream, max_size=max_size, slice_size=slice_size,
                          cache_private=args.cache_private, for_nginx_here=not args.print_config)
    if args.print_config:
        print(nginx_config.render(opts), end="")
        return 0

    url = f"http://{args.listen}"

    def ready() -> None:
        how = "Ctrl-C stops it" if args.foreground else \
            f"stop it with: netmount cache-proxy --stop --cache-dir {opts.cache_dir}"
        print(f"cache proxy on {url} -> {upstream} (cache {opts.cache_dir}, at most {args.max_size}); {how}",
              flush=True)

    return server.start(opts, foreground=args.foreground, on_ready=ready)
