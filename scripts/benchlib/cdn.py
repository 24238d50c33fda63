"""nginx as the bench's CDN: files by name at C speed, on loopback and behind an emulated WAN.

One nginx (ours: own config, pid and logs under ``work/nginx``, stopped with the bench)
serves ``root`` (the hub's folder of repos) twice on 127.0.0.1:

- ``url``: ``location /cdn/ { alias root/; }`` with ``sendfile``, ``autoindex`` (peers such as
  rclone's http remote read the folder's HTML index) — a C-speed CDN for loopback runs;
- ``wan_url``: the same files after ``echo_sleep`` (first byte ``latency_ms`` late) and with
  ``limit_rate`` (body bytes per request capped at ``rate`` bytes/s) — the test hub's WAN
  model (``netmount/dev/testhub/wan.py``) in C.  Needs Debian's ``libnginx-mod-http-echo``;
  without it ``wan_url`` is None and WAN rows are skipped.

Why not ``tc netem`` on a veth pair into a network namespace: this machine's kernel has no
``sch_netem`` (``tc qdisc add ... netem`` answers "Specified qdisc kind is unknown"), and
netem on the shared ``lo`` would slow every other process's loopback traffic.  The delay
here is per request, not per packet: TCP handshakes and window growth are not slowed.
nginx ignores the query string, so the hub's signed ``?Expires=..&Signature=..`` passes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(root: Path, state: Path, port: int, wan_port: int | None, latency_ms: float, rate: int) -> str:
    temp = " ".join(f"{k}_temp_path {state / 'tmp'};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    head = f"load_module {ECHO_MODULE};\n" if wan_port else ""
    if os.geteuid() == 0:  # workers as root too (else nobody): they read what the bench's user reads
        head += "user root;\n"
    wan = f"""
  server {{
    listen 127.0.0.1:{wan_port};
    location /cdn/ {{ echo_sleep {latency_ms / 1000:.3f}; echo_exec /wan$uri $args; }}
    location /wan/cdn/ {{ internal; alias {root}/; autoindex on; limit_rate {rate}; }}
  }}""" if wan_port else ""
    return f"""{head}worker_processes 2;
pid {state / 'nginx.pid'};
error_log {state / 'error.log'};
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  {temp}
  server {{
    listen 127.0.0.1:{port};
    location /cdn/ {{ alias {root}/; autoindex on; }}
  }}{wan}
}}
"""


class NginxCdn:
    """Start with ``NginxCdn(root, state_dir, latency_ms, rate)``; ``url``/``wan_url`` end in ``/cdn``."""

    def __init__(self, root: Path, state: Path, latency_ms: float = 40, rate: int = 25_000_000):
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        (state / "tmp").mkdir(parents=True, exist_ok=True)
        port = free_port()
        wan_port = free_port() if ECHO_MODULE.exists() else None
        conf = state / "nginx.conf"
        conf.write_text(config(root.resolve(), state, port, wan_port, latency_ms, rate))
        self.proc = subprocess.Popen([binary, "-p", str(state), "-c", str(conf), "-e", str(state / "error.log"),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{port}/cdn"
        self.wan_url = f"http://127.0.0.1:{wan_port}/cdn" if wan_port else None
        self._wait_listening(port)

    def _wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a foreign server: it has no ready signal of its own
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen within 10 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
