"""Run the system's nginx with netmount's config: start, wait until healthy, stop.

One proxy per cache dir: the config, pid file and logs live in it, so ``--stop --cache-dir
DIR`` needs nothing else.  Every known failure (nginx missing or without the slice module,
port busy, a dir that cannot be written, a proxy already running) is a ``NetmountError``
with a one-line message.

Started by root, the nginx workers run as the cache dir's owner: they must write the cache,
and a dir owned by an unprivileged user gives unprivileged workers (nginx alone would pick
``nobody``, who usually cannot even reach the dir).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from netmount.core.errors import BadInput, NetmountError
from netmount.proxy.nginx_config import Layout, ProxyOptions, render

APT_LINE = "sudo apt-get update && sudo apt-get install -y nginx"
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


class ProxyError(NetmountError):
    """The cache proxy could not be started, found or stopped."""


# ---- what the machine offers --------------------------------------------------------------

def find_nginx() -> str:
    """The nginx binary on PATH, checked for the slice module."""
    path = shutil.which("nginx")
    if path is None:
        raise ProxyError(f"nginx is not installed (or not on PATH): install it with `{APT_LINE}`")
    try:
        version = subprocess.run([path, "-V"], check=False, capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProxyError(f"{path} -V failed: {exc}") from None
    if "--with-http_slice_module" not in version:
        raise ProxyError(f"{path} was built without the slice module: install Debian/Ubuntu's nginx "
                         f"(`{APT_LINE}`) or one configured --with-http_slice_module")
    return path


def system_resolvers(resolv_conf: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """Nameservers nginx can use for CDN host names (it does not read resolv.conf itself)."""
    out = []
    try:
        lines = Path(resolv_conf).read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and "%" not in parts[1]:
            out.append(f"[{parts[1]}]" if ":" in parts[1] else parts[1])
    return tuple(out)


def ca_bundle() -> str | None:
    for path in (os.environ.get("SSL_CERT_FILE"), *CA_BUNDLES):
        if path and os.path.isfile(path):
            return path
    return None


def options(host: str, port: int, cache_dir: str | Path, upstream: str, *, max_size: int,
            slice_size: int, cache_private: bool, for_nginx_here: bool) -> ProxyOptions:
    """ProxyOptions with what this machine provides (DNS servers, CA bundle, worker user)."""
    root = Path(cache_dir).expanduser().absolute()
    ca = ca_bundle()
    if upstream.startswith("https:") and ca is None:
        raise ProxyError("no CA certificate bundle found to check the Hub's TLS certificate: "
                         "install it with `sudo apt-get install -y ca-certificates`")
    user = None
    if for_nginx_here and os.geteuid() == 0:
        user = _owner(root)
    return ProxyOptions(host, port, root, upstream=upstream, max_size=max_size, slice_size=slice_size,
                        cache_private=cache_private, resolvers=system_resolvers(), ca_file=ca, user=user)


def _owner(root: Path) -> str:
    """``user group`` owning the cache dir; ours if it does not exist yet (we create it)."""
    try:
        st = root.stat()
        return f"{pwd.getpwuid(st.st_uid).pw_name} {grp.getgrgid(st.st_gid).gr_name}"
    except (OSError, KeyError):
        return f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"


# ---- checks that make one-line errors of nginx's failures ----------------------------------

def prepare_dir(layout: Layout) -> None:
    for d in layout.dirs():
        if d.exists() and not d.is_dir():
            raise ProxyError(f"cache dir {layout.root}: {d} exists and is not a directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProxyError(f"cache dir {layout.root}: cannot create {d}: {exc.strerror}") from None
    probe = layout.root / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ProxyError(f"cache dir {layout.root} is not writable: {exc.strerror}") from None


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadInput(f"--listen {host}:{port}: {exc.strerror}") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does
        try:
            s.bind(infos[0][4])
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ProxyError(f"--listen {host}:{port}: the port is busy (another program listens on it)") from None
            raise ProxyError(f"--listen {host}:{port}: {exc.strerror}") from None


def running_pid(layout: Layout) -> int | None:
    """The pid of the nginx master serving this dir, if one is alive."""
    try:
        pid = int(layout.pid.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    # a recycled pid belongs to something else: only an nginx started on this config counts
    return pid if "nginx" in cmdline and str(layout.conf) in cmdline else None


def health_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _nginx_failure(text: str, layout: Layout) -> str:
    """nginx's own reason, from its output or error log: the last [emerg]/[alert] line."""
    lines = text.splitlines()
    try:
        lines += layout.error_log.read_text(errors="replace").splitlines()[-20:]
    except OSError:
        pass
    found = [ln for ln in lines if "[emerg]" in ln or "[alert]" in ln or "[crit]" in ln]
    line = (found or [ln for ln in lines if ln.strip()] or ["no output"])[-1]
    return re.sub(r"^.*?\[(emerg|alert|crit)\] [\d#]+: (\*\d+ )?", "", line).strip()


# ---- start / stop ---------------------------------------------------------------------------

def nginx_command(nginx: str, layout: Layout, *, foreground: bool) -> list[str]:
    cmd = [nginx, "-p", str(layout.root), "-c", str(layout.conf), "-e", str(layout.error_log)]
    return cmd + (["-g", "daemon off;"] if foreground else [])


def start(opts: ProxyOptions, *, foreground: bool = False,
          on_ready: Callable[[], None] | None = None) -> int:
    """Start nginx; return once ``/healthz`` answers (or, in the foreground, once it exits).

    In the foreground, SIGINT and SIGTERM stop nginx and this returns 0.
    """
    layout = opts.layout
    nginx = find_nginx()
    prepare_dir(layout)
    pid = running_pid(layout)
    if pid is not None:
        raise ProxyError(f"a cache proxy already runs on {layout.root} (pid {pid}): "
                         f"stop it with `netmount cache-proxy --stop --cache-dir {layout.root}`")
    check_port(opts.host, opts.port)
    for stale in (*layout.sockets(), layout.pid):  # left by a proxy that was killed
        if stale.exists():
            stale.unlink()
    layout.conf.write_text(render(opts))
    test = subprocess.run([*nginx_command(nginx, layout, foreground=False), "-t", "-q"], check=False,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if test.returncode != 0:
        raise ProxyError(f"nginx refused the config: {_nginx_failure(test.stderr, layout)}")
    url = health_url(opts.host, opts.port)
    if foreground:
        return _run_foreground(nginx, layout, url, on_ready)
    done = subprocess.run(nginx_command(nginx, layout, foreground=False), check=False, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ProxyError(f"nginx did not start: {_nginx_failure(done.stderr, layout)}")
    # the daemon writes its pid file a moment after the starting process returns
    _wait_healthy(url, lambda: not layout.pid.exists() or running_pid(layout) is not None, layout)
    if on_ready:
        on_ready()
    return 0


def _wait_healthy(url: str, alive: Callable[[], bool], layout: Layout) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not healthy(url):
        if not alive():
            raise ProxyError(f"nginx exited at start: {_nginx_failure('', layout)}")
        if time.monotonic() > deadline:
            raise ProxyError(f"nginx started but {url} did not answer within {START_TIMEOUT:.0f} s "
                             f"({_nginx_failure('', layout)})")
        time.sleep(0.05)


def _run_foreground(nginx: str, layout: Layout, url: str, on_ready) -> int:
    """nginx as our child; the first SIGINT/SIGTERM asks it to finish what it is sending
    (SIGQUIT), a second one stops it at once (SIGTERM)."""
    proc = subprocess.Popen(nginx_command(nginx, layout, foreground=True),
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopping: list[int] = []

    def on_signal(signum, _frame):
        stopping.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT if len(stopping) == 1 else signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            _wait_healthy(url, lambda: proc.poll() is None, layout)
        except ProxyError:
            if stopping:
                return 0
            raise
        if on_ready:
            on_ready()
        proc.wait()
        if not stopping:
            raise ProxyError(f"nginx exited by itself (status {proc.returncode}): "
                             f"{_nginx_failure('', layout)}")
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        for s, handler in old.items():
            signal.signal(s, handler)


def stop(cache_dir: str | Path) -> int:
    """Stop the proxy serving ``cache_dir``; return its pid."""
    layout = Layout(Path(cache_dir).expanduser().absolute())
    pid = running_pid(layout)
    if pid is None:
        raise ProxyError(f"no cache proxy runs on {layout.root}")
    os.kill(pid, signal.SIGQUIT)  # graceful: workers finish what they are sending
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
        time.sleep(0.05)
    return pid


def alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
