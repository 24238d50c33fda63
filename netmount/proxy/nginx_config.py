"""Options in, nginx config text out: the shared cache tier between many mounts and the Hub.

Pure (no I/O): ``render(ProxyOptions(...))`` is what ``netmount cache-proxy`` runs and what
``--print-config`` prints.  What the config does, and why:

- **Only file downloads are served**: ``GET``/``HEAD /{repo}/resolve/{revision}/{path}``
  (and the ``datasets/``, ``spaces/`` forms).  Everything else (the ``/api/`` metadata)
  answers 404 with a one-line JSON reason.  Metadata answers change (``main`` moves,
  listings grow), so caching them would serve stale truth, and passing them through would
  funnel every node's API calls onto one IP and its Hub quota for no gain; netmount sends
  metadata to the Hub directly.  Other methods answer 405: a cache is no place for uploads.
- **Three servers in one nginx.**  The client-facing one slices each request into
  ``--slice``-aligned ranges (the ``slice`` module) and caches every slice as a 206, keyed
  by URI and slice.  A slice that misses goes, over a unix socket, to a *follower* that asks
  the Hub and follows its redirect to the CDN itself; the follower asks through a third
  server that **caches the Hub's redirect** for a few minutes (well inside the signed URL's
  lifetime).  So a cold file costs one Hub ``/resolve/`` call every few minutes, not one per
  slice: the Hub rate-limits ``/resolve/`` per IP, and every node behind the proxy shares
  one.  The redirect is followed in a server of its own because following it in the
  client-facing one needs a named location, and entering one drops the slice module's
  per-slice state (measured: a slice subrequest then asked the CDN for the whole file).
- Clients never see signed CDN URLs; a *relative* redirect (a renamed repo) names another
  path on this proxy and is handed to the client as a 307.
- **A commit-pinned URI is immutable**: cached without revalidation (``inactive`` and
  validity of years), evicted only by ``max_size``.  A revision that is not a 40-hex commit
  (``main``, a tag) is passed through uncached, as is ``HEAD`` (metadata for
  huggingface_hub: the Hub's ``X-Repo-Commit``/``X-Linked-*`` headers are kept, the
  ``Location`` is followed, not shown).  Passed-through requests are not sliced: one client
  request, one Hub request.
- **Concurrent misses of one slice go upstream once** (``proxy_cache_lock``).
- **Authorization**: a request with a token is passed through and never cached, so one
  gated-repo user cannot be served another's bytes by accident.  With ``cache_private``
  such requests are cached too, under a key scope of their own: any token holder may then
  be served what another token fetched (nginx cannot check what a token may read), while
  anonymous clients never are.  The token is never sent to a host other than the upstream.
- Every answer carries ``X-Cache-Status`` (nginx's HIT/MISS/EXPIRED/UPDATING for the
  first slice; BYPASS when passed through; NONE when the proxy answered itself), and every
  request is one JSON line in ``logs/access.jsonl`` (the inner Hub hop: ``logs/hub.jsonl``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from netmount.core.errors import BadInput
from netmount.core.settings import origin_url
from netmount.core.units import parse_size

DEFAULT_MAX_SIZE = "500G"
DEFAULT_SLICE = "1M"
REDIRECT_TTL = "5m"  # the Hub's signed CDN URLs live about an hour; stay well inside that
LOCK_TIMEOUT = "30s"  # waiters for a slice being fetched; after this they go upstream, uncached
KEYS_PER_MB = 8000  # nginx: "a one megabyte zone can store about 8 thousand keys"
_SOCKET_MAX = 107  # sun_path is 108 bytes with its NUL

REPO = r"/(?:(?:datasets|spaces)/)?(?:[^/]+/)?[^/]+"
RESOLVE_RE = rf"^{REPO}/resolve/[^/]+/."
PINNED_RE = rf"^{REPO}/resolve/[0-9a-f]{{40}}/."
NOT_SERVED = ("netmount cache proxy: only GET /{repo}/resolve/{revision}/{path} is served here; "
              "send API calls to the Hub")


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the cache dir (one proxy per dir)."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def pid(self) -> Path:
        return self.root / "nginx.pid"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def access_log(self) -> Path:
        return self.logs / "access.jsonl"

    @property
    def hub_log(self) -> Path:
        return self.logs / "hub.jsonl"

    @property
    def error_log(self) -> Path:
        return self.logs / "error.log"

    @property
    def slices(self) -> Path:
        return self.root / "slices"

    @property
    def redirects(self) -> Path:
        return self.root / "redirects"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def socket(self, name: str) -> Path:
        """An inner server's unix socket; in /tmp if the dir's path is too long for one."""
        path = self.root / f"{name}.sock"
        if len(str(path).encode()) <= _SOCKET_MAX:
            return path
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:16]
        return Path("/tmp") / f"netmount-proxy-{digest}-{name}.sock"

    def sockets(self) -> list[Path]:
        return [self.socket("follow"), self.socket("hub")]

    def dirs(self) -> list[Path]:
        """Folders nginx needs before it starts (the cache folders it makes itself)."""
        return [self.root, self.logs, self.tmp]


@dataclass(frozen=True)
class ProxyOptions:
    host: str
    port: int
    cache_dir: Path  # absolute
    upstream: str = "https://huggingface.co"  # scheme://host[:port], no path
    max_size: int = 500 << 30
    slice_size: int = 1 << 20
    cache_private: bool = False
    resolvers: tuple[str, ...] = ()  # for CDN host names (nginx resolves them itself)
    ca_file: str | None = None  # verify TLS upstreams against this bundle
    user: str | None = None  # worker user, only meaningful when the master runs as root
    layout: Layout = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "layout", Layout(Path(self.cache_dir)))


# ---- parsing the flags ---------------------------------------------------------------------

def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text or "")
    if not m:
        raise BadInput(f"--listen {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        raise BadInput(f"--listen {text!r}: port must be 1..65535")
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadInput(f"--listen {text!r}: {host} is not an IPv6 address") from None
    return host, int(port)


def parse_upstream(url: str) -> str:
    """A Hub endpoint as ``scheme://host[:port]``; a path, query or credentials are refused."""
    return origin_url(url, "--upstream", "https://huggingface.co")


def parse_slice(text: str) -> int:
    try:
        n = parse_size(text)
    except ValueError as exc:
        raise BadInput(f"--slice: {exc}") from None
    if n < 64 << 10 or n > 64 << 20 or n & (n - 1):
        raise BadInput(f"--slice {text}: must be a power of two from 64K to 64M "
                       "(match netmount's --block-size, 1M by default)")
    return n


def parse_max_size(text: str, slice_size: int) -> int:
    try:
        n = parse_size(text)
    except ValueError as exc:
        raise BadInput(f"--max-size: {exc}") from None
    if n < 16 * slice_size:
        raise BadInput(f"--max-size {text}: too small; give at least 16 slices' worth")
    return n


# ---- rendering -------------------------------------------------------------------------------

def _size(n: int) -> str:
    """nginx size syntax: ``1m``, ``500g`` when exact, else bytes."""
    for unit, shift in (("g", 30), ("m", 20), ("k", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _quote(s: str) -> str:
    if re.search(r'["\\$;{}\s]', s):
        raise BadInput(f"{s!r}: a path or name with quotes, '$', ';', braces or spaces cannot go in an nginx config")
    return f'"{s}"'


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _local(host: str) -> str:
    """Where a client on this machine reaches a wildcard listen address."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def keys_zone_mb(max_size: int, slice_size: int) -> int:
    keys = max_size // slice_size + 1
    return max(2, -(-keys * 5 // 4 // KEYS_PER_MB))  # 25% headroom, at least 2m


def render(o: ProxyOptions) -> str:
    L = o.layout
    tls_lines = ["proxy_ssl_server_name on;"]
    if o.ca_file:
        tls_lines += ["proxy_ssl_verify on;", "proxy_ssl_verify_depth 4;",
                      f"proxy_ssl_trusted_certificate {_quote(o.ca_file)};"]
    tls = "".join(f"            {line}\n" for line in tls_lines)
    resolver = (f"    resolver {' '.join(o.resolvers)} valid=300s;\n    resolver_timeout 10s;\n"
                if o.resolvers else
                "    # no resolver: the Hub and CDN must be IP addresses (else add `resolver <dns-ip>;`)\n")
    if o.cache_private:
        cached = '"~^GET:1:" 0;'  # tokens too: their own scope in the key
        hub_cached = '"~^1:" 0;'
    else:
        cached = '"GET:1:" 0;'  # anonymous GETs of pinned files only
        hub_cached = '"1:" 0;'
    user = f"user {o.user};\n" if o.user else ""
    slice_size = _size(o.slice_size)
    tokens = "cached in a scope of their own (--cache-private)" if o.cache_private else "passed through, never cached"
    return f"""\
# nginx config generated by `netmount cache-proxy` (see netmount/proxy/nginx_config.py).
# A shared cache for Hub file downloads: {_listen(o.host, o.port)} -> {o.upstream}
#   slices of {slice_size}, at most {_size(o.max_size)} in {L.slices},
#   requests with a token {tokens}.
# To run it yourself: save it as {L.conf}, mkdir -p {L.logs} {L.tmp},
# and start (as the user owning {L.root}; drop -g for a daemon):
#   nginx -p {L.root} -c {L.conf} -e {L.error_log} -g 'daemon off;'
# Check: curl http://{_listen(_local(o.host), o.port)}/healthz
{user}worker_processes auto;
pid {_quote(str(L.pid))};
error_log {_quote(str(L.error_log))} warn;
events {{
    worker_connections 4096;
}}

http {{
    default_type application/octet-stream;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65s;
    client_body_temp_path {_quote(str(L.tmp / 'client_body'))};
    proxy_temp_path {_quote(str(L.tmp / 'proxy'))};
    fastcgi_temp_path {_quote(str(L.tmp / 'fastcgi'))};
    uwsgi_temp_path {_quote(str(L.tmp / 'uwsgi'))};
    scgi_temp_path {_quote(str(L.tmp / 'scgi'))};
{resolver}
    log_format netmount_json escape=json
        '{{"time":"$time_iso8601","client":"$remote_addr","method":"$request_method",'
        '"uri":"$uri","range":"$http_range","status":$status,"bytes":$body_bytes_sent,'
        '"cache":"$netmount_cache_status","upstream":"$upstream_addr",'
        '"upstream_status":"$upstream_status","token":$netmount_token,'
        '"request_time":$request_time}}';

    # slices of files, kept until evicted by size (commit-pinned URIs never change)
    proxy_cache_path {_quote(str(L.slices))} levels=1:2 use_temp_path=off
        keys_zone=netmount_slices:{keys_zone_mb(o.max_size, o.slice_size)}m max_size={_size(o.max_size)} inactive=3650d;
    # the Hub's redirects to signed CDN URLs, for {REDIRECT_TTL}
    proxy_cache_path {_quote(str(L.redirects))} levels=1:2 use_temp_path=off
        keys_zone=netmount_redirects:4m max_size=256m inactive=10m;

    map $uri $netmount_pinned {{
        default 0;
        "~{PINNED_RE}" 1;
    }}
    map $http_authorization $netmount_token {{
        "" false;
        default true;
    }}
    map $http_authorization $netmount_scope {{
        "" "anon:";
        default "token:";
    }}
    # 0: served from the slice cache; 1: passed through (HEAD, not pinned, a token)
    map "$request_method:$netmount_pinned:$http_authorization" $netmount_pass {{
        default 1;
        {cached}
    }}
    # 0: the inner hop may cache the Hub's redirect
    map "$netmount_pinned:$http_authorization" $netmount_hub_pass {{
        default 1;
        {hub_cached}
    }}
    # X-Cache-Status and the log's "cache": BYPASS on the pass-through route, else nginx's
    # word for the (first) slice, else NONE (the proxy answered itself)
    map "$netmount_bypass:$upstream_cache_status" $netmount_cache_status {{
        "~^BYPASS:" BYPASS;
        ":" NONE;
        "~^:(?<netmount_upstream_cache>.+)$" $netmount_upstream_cache;
    }}

    upstream netmount_follow {{
        server unix:{L.socket("follow")};
        keepalive 32;
    }}

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Accept-Encoding "";  # uncompressed: slices are the file's own bytes
    proxy_hide_header X-Cache-Status;  # an upstream proxy's (proxies can be chained): ours only
    proxy_connect_timeout 10s;
    proxy_read_timeout 60s;
    recursive_error_pages on;

    # The client-facing server: slices, the slice cache, the pass-through route.
    server {{
        listen {_listen(o.host, o.port)};
        access_log {_quote(str(L.access_log))} netmount_json;
        set $netmount_bypass "";
        absolute_redirect off;
        add_header X-Cache-Status $netmount_cache_status always;

        location = /healthz {{
            access_log off;
            default_type text/plain;
            return 200 "ok\n";
        }}

        location / {{
            default_type application/json;
            add_header X-Error-Message "{NOT_SERVED}" always;
            add_header X-Cache-Status NONE always;
            return 404 '{{"error":"{NOT_SERVED}"}}\n';
        }}

        location ~ "{RESOLVE_RE}" {{
            error_page 419 = @netmount_pass;
            if ($request_method !~ ^(GET|HEAD)$) {{
                return 405;
            }}
            if ($netmount_pass) {{
                return 419;
            }}
            slice {slice_size};
            proxy_cache netmount_slices;
            proxy_cache_key $netmount_scope$uri$slice_range;
            proxy_cache_valid 200 206 3650d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout {LOCK_TIMEOUT};
            proxy_cache_lock_age {LOCK_TIMEOUT};
            proxy_ignore_headers Cache-Control Expires X-Accel-Expires Set-Cookie Vary;
            proxy_set_header Connection "";
            proxy_set_header Accept-Encoding "";  # uncompressed: slices are the file's own bytes
            proxy_set_header Range $slice_range;
            proxy_pass http://netmount_follow;
        }}

        # HEAD, a revision that is not a commit, or a token: the client's own Range, not cached
        location @netmount_pass {{
            set $netmount_bypass BYPASS;
            proxy_pass http://netmount_follow;
        }}
    }}

    # Follows the Hub's redirect to its CDN, so no client sees a signed URL.  Reachable
    # only through its unix socket.  (Following in the client-facing server would need a
    # named location there, and entering one drops the slice module's per-slice state.)
    server {{
        listen unix:{L.socket("follow")};
        access_log off;
        absolute_redirect off;
        location / {{
            proxy_pass http://unix:{L.socket("hub")}:;
            proxy_buffering off;  # the front server buffers (and caches); no second copy here
            proxy_intercept_errors on;
            error_page 301 302 303 307 308 = @netmount_cdn;
        }}
        location @netmount_cdn {{
            set $netmount_location $upstream_http_location;
            set $netmount_commit $upstream_http_x_repo_commit;
            set $netmount_linked_etag $upstream_http_x_linked_etag;
            set $netmount_linked_size $upstream_http_x_linked_size;
            # relative: a path on this proxy (a renamed repo), nothing secret: the client follows
            if ($netmount_location ~ "^/") {{
                return 307 $netmount_location;
            }}
            proxy_set_header Connection "";
            proxy_set_header Accept-Encoding "";  # uncompressed: slices are the file's own bytes
            proxy_set_header Authorization "";  # never to another host
            proxy_pass $netmount_location;
            proxy_buffering off;
{tls}            add_header X-Repo-Commit $netmount_commit always;
            add_header X-Linked-Etag $netmount_linked_etag always;
            add_header X-Linked-Size $netmount_linked_size always;
        }}
    }}

    # The Hub's /resolve/, its redirects cached for {REDIRECT_TTL}.  Reachable only through its
    # unix socket.
    server {{
        listen unix:{L.socket("hub")};
        access_log {_quote(str(L.hub_log))} netmount_json;
        set $netmount_bypass "";
        location / {{
            # a variable, so nginx resolves the Hub's name with `resolver` as it goes (its
            # addresses change) and starts even when DNS is down
            set $netmount_upstream {_quote(o.upstream)};
            proxy_pass $netmount_upstream;
            proxy_set_header Connection "";
            proxy_set_header Accept-Encoding "";  # uncompressed: slices are the file's own bytes
            # with proxy_cache on, nginx drops Range unless told; a file the Hub serves
            # itself (no redirect) must answer the slice asked for, not the whole file
            proxy_set_header Range $http_range;
            proxy_set_header If-Range $http_if_range;
{tls}            proxy_redirect off;
            proxy_cache netmount_redirects;
            proxy_cache_key $netmount_scope$request_method$uri;
            proxy_cache_convert_head off;
            proxy_cache_methods GET HEAD;
            proxy_cache_valid 301 302 303 307 308 {REDIRECT_TTL};
            proxy_cache_bypass $netmount_hub_pass;
            proxy_no_cache $netmount_hub_pass;
            proxy_cache_lock on;
            proxy_cache_lock_timeout {LOCK_TIMEOUT};
            proxy_ignore_headers Cache-Control Expires X-Accel-Expires Set-Cookie Vary;
        }}
    }}
}}
"""
