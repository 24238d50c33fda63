"""The cache proxy in tests: a real ``netmount cache-proxy`` (the system's nginx) per test.

Shared by test_cache_proxy.py (the proxy alone) and test_cache_proxy_mount.py (mounts
behind it).  The ``origin`` fixture (a ``HubProcess`` knowing ``TOKEN``) serves the test
module's own ``proxy_root`` fixture; ``start_proxy`` puts a proxy in front of it.
Tests that need nginx fail in CI (``CI=true``) when it is missing and are
skipped elsewhere with the apt line.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from netmount.proxy.server import alive

from conftest import run_cli
from hubproc import HubProcess

TOKEN = "good-token"


@pytest.fixture(scope="module")
def origin(proxy_root):
    """The origin hub, in its own process, over the module's ``proxy_root``."""
    with HubProcess(proxy_root, tokens={TOKEN}) as server:
        yield server


def require_nginx() -> str:
    path = shutil.which("nginx")
    if path is None:
        message = "nginx is not installed: apt-get update && apt-get install -y nginx (scripts/setup.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """One ``netmount cache-proxy`` started through the CLI; stopped at the end of the test."""

    def __init__(self, origin: HubProcess, cache_dir: Path, *extra: str):
        self.origin, self.cache_dir, self.extra = origin, cache_dir, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Proxy":
        done = run_cli("cache-proxy", "--listen", f"127.0.0.1:{self.port}", "--cache-dir", str(self.cache_dir),
                       "--upstream", self.origin.url, *self.extra)
        assert done.returncode == 0, done.stderr
        assert "cache proxy on" in done.stdout and done.stderr == ""
        return self

    def stop(self) -> None:
        done = run_cli("cache-proxy", "--stop", "--cache-dir", str(self.cache_dir))
        assert done.returncode == 0, done.stderr

    def pid(self) -> int | None:
        try:
            return int((self.cache_dir / "nginx.pid").read_text())
        except (OSError, ValueError):
            return None

    def get(self, path: str, rng: tuple[int, int] | None = None, token: str | None = None,
            method: str = "GET") -> tuple[int, dict, bytes]:
        headers = {}
        if rng is not None:
            headers["Range"] = f"bytes={rng[0]}-{rng[1]}"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, _headers(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, _headers(err.headers), err.read()

    def cached_files(self) -> list[Path]:
        return [p for d in ("slices", "redirects") for p in (self.cache_dir / d).rglob("*") if p.is_file()]


def _headers(message) -> dict:
    """Headers as a dict; a repeated one (say, two X-Cache-Status) keeps all its values."""
    return {k: ", ".join(message.get_all(k)) for k in set(message.keys())}


@pytest.fixture
def start_proxy(origin, tmp_path):
    require_nginx()
    started: list[Proxy] = []

    def start(*extra: str, cache_dir: Path | None = None) -> Proxy:
        p = Proxy(origin, cache_dir or tmp_path / f"proxy{len(started)}", *extra).start()
        started.append(p)
        return p

    yield start
    for p in started:
        pid = p.pid()
        if pid is not None and alive(pid):
            p.stop()

