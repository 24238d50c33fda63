"""Where settings come from: flags first, then the environment users already know.

``HF_ENDPOINT`` / ``HF_TOKEN`` / ``HF_HOME`` as huggingface_hub reads them, plus
``NETMOUNT_CACHE_DIR`` for the block cache; and the production defaults.
"""

import os
from pathlib import Path

# The production defaults, in one place: the CLI, ``mount()``, ``DaemonConfig`` and the
# daemon's wiring read them from here, so tests that take defaults run what users run.
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_CACHE_SIZE = "50G"
DEFAULT_CONNECTIONS = 16  # measured: cold load and cat faster than with 8 (BENCHMARKS.md)
# bytes per HTTP request at most: at 40 ms to first byte and 25 MB/s per connection a 4 MiB
# request is ~80% transfer; prefetch cuts smaller wants into parallel sub-ranges (BENCHMARKS.md)
MAX_REQUEST_BYTES = 4 << 20
# the mount's kernel readahead (its bdi read_ahead_kb, set by the daemon when root), which also
# caps FUSE read requests: 1024 lets a sequential reader's requests reach libfuse3's 1 MiB, but
# then a page fault anywhere reads up to 1 MiB around it: measured, a lone 9 MiB get_tensor
# fetched 20 MB instead of 9.8, and a shard opened for its header costs 1 MiB (README
# "Readahead").  So by default the daemon switches it per open (mounting/readahead.py): this
# small value, the kernel's own 128 KiB, unless the file's folder is being loaded (1 MiB).
DEFAULT_READAHEAD_KB = 128
MAX_READAHEAD_KB = 65536


def endpoint(flag: str | None = None) -> str:
    value = flag or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    return value.rstrip("/")


def token(flag: str | None = None) -> str | None:
    """The flag, else $HF_TOKEN, else huggingface_hub's token file ($HF_TOKEN_PATH / $HF_HOME/token)."""
    if flag:
        return flag
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # a broken token file must not stop an anonymous mount
        return None


def cache_dir(flag: str | None = None) -> Path:
    value = flag or os.environ.get("NETMOUNT_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "netmount"


def cache_proxy(flag: str | None = None) -> str | None:
    """The shared cache proxy (``netmount cache-proxy``) for file content: the flag, else
    $NETMOUNT_CACHE_PROXY, else None.  ``scheme://host[:port]`` only, like the proxy's own
    ``--upstream``: a path would be silently dropped from the routes the proxy serves."""
    value = (flag or os.environ.get("NETMOUNT_CACHE_PROXY") or "").strip()
    return origin_url(value, "--cache-proxy", "http://10.0.0.5:8080") if value else None


def origin_url(value: str, option: str, example: str) -> str:
    """``value`` as ``scheme://host[:port]`` (http or https); a bad port, a path, a query or
    credentials are a one-line ``BadInput`` naming ``option``."""
    from urllib.parse import urlsplit

    from netmount.core.errors import BadInput

    parts = urlsplit((value or "").strip())
    try:
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise BadInput(f"{option} {value!r}: bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"{option} {value!r}: expected http(s)://host[:port], e.g. {example}")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        raise BadInput(f"{option} {value!r}: give only scheme://host[:port] (no path, query or user)")
    return f"{parts.scheme}://{parts.netloc}"
