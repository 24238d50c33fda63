"""``netmount mount --cache-proxy``: mounts ("nodes") behind a real ``netmount cache-proxy``.

The origin is the real test hub in its own process: its log (``cdn`` = the signed blob
URLs, ``hub`` = /resolve/ and the API) is what reached the origin.  The proxy is the
system's nginx (proxykit.py); tests that need it fail in CI when it is missing.  A stub
proxy that answers wrongly checks that its answers are verified like the origin's.  The
circuit breaker's logic is tested alone with a fake clock at the end.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from netmount.commands.statsview import render_summary
from netmount.core.procs import wait_exit
from netmount.remote.breaker import CLOSED, OPEN, PROBING, Breaker

from conftest import Mounter, require_fuse, run_cli, settle, stats
from proxykit import TOKEN, origin, require_nginx, start_proxy  # noqa: F401 (fixtures)

MiB = 1 << 20
FILES = {"a.bin": 5 * MiB + 4321, "b.bin": 3 * MiB + 17, "c.bin": 12 * MiB + 5}  # LFS: on the CDN


@pytest.fixture(scope="module")
def proxy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("proxymounthub")
    rng = random.Random(1313)
    m = root / "org" / "m"
    m.mkdir(parents=True)
    for name, size in FILES.items():
        (m / name).write_bytes(rng.randbytes(size))
    (m / "config.json").write_text('{"a": 1}')
    g = root / "org" / "gated"
    g.mkdir(parents=True)
    (g / "w.bin").write_bytes(rng.randbytes(2 * MiB + 99))
    (g / ".gated").write_text("")
    return root



def source(proxy_root: Path, name: str, repo: str = "org/m") -> bytes:
    return (proxy_root / repo / name).read_bytes()


def origin_data_requests(origin) -> list:
    """Requests for file content that reached the origin: CDN, or the hub's /resolve/."""
    return [r for r in origin.log if r.server == "cdn" or "/resolve/" in r.path]


@pytest.fixture
def bare(tmp_path, origin, monkeypatch):
    """Mounts without the daemon's prefetcher (reads decide what is fetched), through
    ``lifecycle.spawn_daemon`` as ``netmount mount`` starts them; a fast proxy back-off."""
    from netmount.mounting.daemon import DaemonConfig
    from netmount.mounting.lifecycle import spawn_daemon
    from netmount.mounting.mounts import unmount_retrying
    from netmount.remote.hub import resolve_snapshot

    monkeypatch.setenv("NETMOUNT_PROXY_BACKOFF", "0.2")
    monkeypatch.setenv("NETMOUNT_FETCH_BACKOFF", "0.05")
    live: list[tuple[Path, subprocess.Popen]] = []

    def mount(proxy_url: str, name: str = "bare") -> Path:
        require_fuse()
        mp = tmp_path / name
        mp.mkdir()
        snap = resolve_snapshot("org/m", "main", origin.url, None)
        config = DaemonConfig(snap, str(mp), str(tmp_path / f"{name}-cache"), 1 << 30, MiB,
                              log_file=str(tmp_path / f"{name}.log"), prefetch=False,
                              cache_proxy=proxy_url)
        live.append((mp, spawn_daemon(config)))
        return mp

    yield mount
    for mp, proc in live:
        unmount_retrying(str(mp))
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def pread(mp: Path, name: str, start: int, length: int) -> bytes:
    fd = os.open(mp / name, os.O_RDONLY)
    try:
        return os.pread(fd, length, start)
    finally:
        os.close(fd)


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


# ---- two nodes, one proxy ------------------------------------------------------------------

@pytest.mark.fuse
def test_two_nodes_one_proxy_the_origin_sends_each_byte_once(start_proxy, origin, proxy_root, tmp_path):
    proxy = start_proxy()
    total = sum(FILES.values())
    origin.reset_log()
    first = Mounter(tmp_path / "node1", origin.url)
    second = Mounter(tmp_path / "node2", origin.url)
    try:
        (tmp_path / "node1").mkdir()
        (tmp_path / "node2").mkdir()
        mp1 = first.mount("org/m", "--cache-proxy", proxy.url)
        for name in FILES:
            assert (mp1 / name).read_bytes() == source(proxy_root, name)
        settle(mp1)
        s1 = stats(mp1)["proxy"]
        assert s1["url"] == proxy.url and s1["state"] == "closed"
        assert s1["misses"] > 0 and s1["fallbacks"] == 0 and s1["bytes"] >= total
        cdn = origin.bytes_sent("cdn")
        assert total <= cdn <= 1.1 * total  # slices of 1 MiB: each byte about once
        assert not any(r.has_auth for r in origin.log)

        origin.reset_log()
        # the second node by the environment variable, not the flag
        mp2 = second.mount("org/m", env={"NETMOUNT_CACHE_PROXY": proxy.url})
        for name in FILES:
            assert (mp2 / name).read_bytes() == source(proxy_root, name)
        settle(mp2)
        assert origin_data_requests(origin) == []  # metadata only: the bytes came from the proxy
        s2 = stats(mp2)["proxy"]
        assert s2["hits"] > 0 and s2["misses"] == 0 and s2["fallbacks"] == 0
        line = run_cli("stats", str(mp2))
        assert line.returncode == 0, line.stderr
        assert re.search(rf"proxy\s+{re.escape(proxy.url)} closed: {s2['hits']} hits, 0 misses", line.stdout)
    finally:
        first.cleanup()
        second.cleanup()


@pytest.mark.fuse
def test_eight_readers_on_two_nodes_at_once_each_slice_reaches_the_origin_once(start_proxy, origin, proxy_root,
                                                                               tmp_path):
    proxy = start_proxy()
    nodes = [Mounter(tmp_path / f"node{i}", origin.url) for i in range(2)]
    try:
        mps = []
        for i, node in enumerate(nodes):
            (tmp_path / f"node{i}").mkdir()
            mps.append(node.mount("org/m", "--cache-proxy", proxy.url))
        origin.reset_log()
        readers = [subprocess.Popen(["sha256sum", str(mps[i % 2] / "c.bin")], stdout=subprocess.PIPE, text=True)
                   for i in range(8)]
        sums = {r.communicate(timeout=120)[0].split()[0] for r in readers}
        assert [r.returncode for r in readers] == [0] * 8
        assert sums == {hashlib.sha256(source(proxy_root, "c.bin")).hexdigest()}
        for mp in mps:
            settle(mp)
        cdn = [(r.path, r.range) for r in origin.requests("cdn")]
        assert len(cdn) == len(set(cdn))  # each 1 MiB slice once, however many readers
        per_file = collections.Counter(path for path, _ in cdn)
        assert max(per_file.values()) == -(-FILES["c.bin"] // MiB)  # c.bin: all its slices
    finally:
        for node in nodes:
            node.cleanup()


@pytest.mark.fuse
def test_a_token_mount_reads_through_the_proxy_and_nothing_is_cached(start_proxy, origin, proxy_root, tmp_path):
    proxy = start_proxy()
    node = Mounter(tmp_path, origin.url)
    try:
        origin.reset_log()
        mp = node.mount("org/gated", env={"HF_TOKEN": TOKEN, "NETMOUNT_CACHE_PROXY": proxy.url})
        assert (mp / "w.bin").read_bytes() == source(proxy_root, "w.bin", "org/gated")
        settle(mp)
        s = stats(mp)["proxy"]
        assert s["bypass"] > 0 and s["hits"] == s["misses"] == 0 and s["fallbacks"] == 0
        assert proxy.cached_files() == []
        # the proxy passed the token on to the hub; the CDN never saw it
        assert all(r.has_auth for r in origin.log if r.server == "hub")
        assert origin.requests("cdn") and not any(r.has_auth for r in origin.requests("cdn"))
    finally:
        node.cleanup()


# ---- the proxy is never a single point of failure -------------------------------------------

@pytest.mark.fuse
def test_proxy_killed_mid_read_then_restarted(start_proxy, origin, proxy_root, bare, monkeypatch):
    # a back-off of 1 ms, doubled by each failed probe while the proxy is down: long over by
    # the time `netmount cache-proxy` has started it again (a process), so no test waits on it
    monkeypatch.setenv("NETMOUNT_PROXY_BACKOFF", "0.001")
    proxy = start_proxy()
    mp = bare(proxy.url)
    data = source(proxy_root, "c.bin")
    assert pread(mp, "c.bin", 0, 2 * MiB) == data[:2 * MiB]
    before = stats(mp)["proxy"]
    assert before["requests"] > 0 and before["misses"] > 0 and before["fallbacks"] == 0

    pid = proxy.pid()
    os.kill(pid, signal.SIGTERM)  # nginx's fast shutdown: the master exits after its workers
    assert wait_exit(pid, 30)  # (a pidfd; the bound only catches a hang)
    assert refuses(proxy.port)
    origin.reset_log()
    assert pread(mp, "c.bin", 2 * MiB, 4 * MiB) == data[2 * MiB:6 * MiB]
    down = stats(mp)["proxy"]
    assert down["fallbacks"] >= 1 and down["state"] in ("open", "probing")
    assert down["last_error"]
    assert origin.requests("cdn")  # the bytes came from the origin's CDN

    proxy.start()  # the same port and cache dir
    assert stats(mp)["proxy"]["retry_in"] == 0  # the next request probes
    # the probe: a read far from the last one (the kernel's readahead after [2, 6) MiB may
    # have fetched the next blocks already, and a read served locally sends no request)
    assert pread(mp, "c.bin", 11 * MiB, len(data)) == data[11 * MiB:]
    settle(mp)
    after = stats(mp)["proxy"]
    assert after["state"] == "closed" and after["requests"] > down["requests"]
    origin.reset_log()
    assert pread(mp, "c.bin", 7 * MiB, 4 * MiB) == data[7 * MiB:11 * MiB]
    settle(mp)
    again = stats(mp)["proxy"]
    assert again["state"] == "closed"
    assert (again["fallbacks"], again["skipped"]) == (after["fallbacks"], after["skipped"])
    assert again["bytes"] > after["bytes"] > down["bytes"]  # through the proxy again
    assert not [r for r in origin.log if r.server == "hub" and "/resolve/" in r.path and r.method == "HEAD"]
    assert "fallbacks" in run_cli("stats", str(mp)).stdout


class StubProxy:
    """A proxy that answers wrongly: ``mode`` "200" sends the whole file as a 200 to a range
    request, "range" a 206 whose Content-Range is off by one (with those bytes), "moved" a
    307 to another path on itself (a renamed repo) where it answers right; "500" an error,
    "stall" the right headers and half the body, then nothing."""

    def __init__(self, root: Path, mode: str):
        self.hits = 0
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.hits += 1
                name = unquote(self.path.rsplit("/", 1)[-1])
                data = (root / "org" / "m" / name).read_bytes()
                a, b = (int(x) for x in re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers["Range"]).groups())
                if mode == "500":
                    self.send_error(500)
                    return
                if mode == "stall":
                    body = data[a:b + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    stub.release.wait(60)
                    return
                if mode == "moved" and not self.path.startswith("/moved/"):
                    self.send_response(307)
                    self.send_header("Location", "/moved" + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode == "moved":
                    body = data[a:b + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
                elif mode == "200":
                    self.send_response(200)
                    body = data
                else:
                    a, b = a + 1, min(b + 1, len(data) - 1)
                    body = data[a:b + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Cache-Status", "HIT")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.fuse
@pytest.mark.parametrize("mode", ["200", "range"])
def test_a_wrong_answer_from_the_proxy_falls_back_with_the_right_bytes(origin, proxy_root, bare, mode):
    stub = StubProxy(proxy_root, mode)
    try:
        mp = bare(stub.url)
        data = source(proxy_root, "a.bin")
        assert pread(mp, "a.bin", 100, MiB) == data[100:100 + MiB]
        assert (mp / "a.bin").read_bytes() == data
        s = stats(mp)["proxy"]
        assert stub.hits >= 1 and s["fallbacks"] >= 1
        assert s["state"] == "open" and s["retry_in"] > 60  # not trusted for minutes
        assert s["skipped"] >= 1  # later requests went straight to the origin
    finally:
        stub.close()


@pytest.mark.fuse
@pytest.mark.parametrize("mode", ["500", "stall"])
def test_an_error_or_a_stall_falls_back_and_the_proxy_is_tried_again_soon(origin, proxy_root, bare,
                                                                          monkeypatch, mode):
    monkeypatch.setenv("NETMOUNT_FETCH_TIMEOUT", "1")  # a stall is a second without bytes
    stub = StubProxy(proxy_root, mode)
    try:
        mp = bare(stub.url)
        data = source(proxy_root, "a.bin")
        assert pread(mp, "a.bin", 3 * MiB, MiB) == data[3 * MiB:4 * MiB]
        s = stats(mp)["proxy"]
        assert stub.hits >= 1 and s["fallbacks"] >= 1 and s["bytes"] == 0
        assert s["state"] in ("open", "probing") and s["retry_in"] < 60  # a fault, not distrust
        assert {"500": "HTTP 500", "stall": "stalled: no bytes for 1s"}[mode] in s["last_error"]
    finally:
        stub.close()


@pytest.mark.fuse
def test_a_refused_proxy_costs_nothing_but_a_fallback(origin, proxy_root, bare):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp = bare(f"http://127.0.0.1:{port}")
    assert (mp / "b.bin").read_bytes() == source(proxy_root, "b.bin")
    s = stats(mp)["proxy"]
    assert s["fallbacks"] >= 1 and s["state"] in ("open", "probing") and s["misses"] == 0


@pytest.mark.fuse
def test_a_redirect_on_the_proxy_is_followed(origin, proxy_root, bare):
    stub = StubProxy(proxy_root, "moved")
    try:
        mp = bare(stub.url)
        origin.reset_log()
        assert (mp / "a.bin").read_bytes() == source(proxy_root, "a.bin")
        s = stats(mp)["proxy"]
        assert s["state"] == "closed" and s["fallbacks"] == 0 and s["hits"] >= 1
        assert origin_data_requests(origin) == []
    finally:
        stub.close()


# ---- flags ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["ftp://h:1", "http://h:99999", "http://h:1/some/path", "localhost:8080"])
def test_a_bad_cache_proxy_is_one_line(tmp_path, url):
    (tmp_path / "mp").mkdir()
    for args, env in ((["--cache-proxy", url], {}), ([], {"NETMOUNT_CACHE_PROXY": url})):
        done = run_cli("mount", "org/m", str(tmp_path / "mp"), *args, env=env)
        assert done.returncode != 0
        assert done.stderr.count("\n") == 1 and "--cache-proxy" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_cache_proxy_setting_order(monkeypatch):
    from netmount.core import settings

    monkeypatch.delenv("NETMOUNT_CACHE_PROXY", raising=False)
    assert settings.cache_proxy(None) is None
    monkeypatch.setenv("NETMOUNT_CACHE_PROXY", "http://10.0.0.5:8080/")
    assert settings.cache_proxy(None) == "http://10.0.0.5:8080"
    assert settings.cache_proxy("https://proxy.local") == "https://proxy.local"


def test_the_stats_line():
    s = {"repo": "org/m", "revision": "0" * 40, "mountpoint": "/m", "bytes_served": 0, "bytes_fetched": 0,
         "cached_bytes": 0, "requests": 3, "retries": 0, "errors": 0,
         "proxy": {"url": "http://p:1", "state": "open", "retry_in": 1.5, "last_error": "x", "requests": 3,
                   "bytes": MiB, "hits": 4, "misses": 2, "bypass": 0, "fallbacks": 1, "skipped": 7}}
    text = render_summary(s)
    assert "proxy    http://p:1 open: 4 hits, 2 misses, 0 bypass, 1 fallbacks" in text
    assert "proxy" not in render_summary({**s, "proxy": None})


# ---- the circuit breaker, alone -------------------------------------------------------------

def test_breaker_closed_lets_everything_through_and_a_fault_opens_it():
    b = Breaker(base_wait=1.0, max_wait=8.0)
    assert [b.acquire(0.0) for _ in range(3)] == ["normal"] * 3
    assert b.failed("normal", 10.0) == 1.0
    assert b.state == OPEN
    assert b.failed("normal", 10.1) == 0.0  # a request sent before it opened: no longer wait
    assert b.until == 11.0
    assert b.acquire(10.5) is None


def test_breaker_one_probe_after_the_wait_and_success_closes():
    b = Breaker(base_wait=1.0, max_wait=8.0)
    b.acquire(0.0)
    b.failed("normal", 0.0)
    assert b.acquire(1.0) == "probe"
    assert b.state == PROBING
    assert b.acquire(1.0) is None  # one probe at a time
    b.succeeded("normal")  # a request from before: says nothing about now
    assert b.state == PROBING
    b.succeeded("probe")
    assert b.state == CLOSED and b.acquire(1.0) == "normal"


def test_breaker_failed_probes_double_the_wait_up_to_the_cap():
    b = Breaker(base_wait=1.0, max_wait=8.0)
    now = 0.0
    b.failed("normal", now)
    waits = []
    for _ in range(6):
        now = b.until
        assert b.acquire(now) == "probe"
        waits.append(b.failed("probe", now))
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    now = b.until
    b.acquire(now)
    b.succeeded("probe")
    b.acquire(now)
    assert b.failed("normal", now) == 1.0  # closed again: the wait starts over


def test_breaker_distrust_and_an_abandoned_probe():
    b = Breaker(base_wait=1.0, max_wait=60.0, distrust=300.0)
    assert b.failed("normal", 5.0, distrust=True) == 300.0
    assert b.acquire(304.9) is None
    assert b.acquire(305.0) == "probe"
    b.abandon("probe")  # cancelled: the next request probes instead
    assert b.state == OPEN and b.acquire(305.0) == "probe"
