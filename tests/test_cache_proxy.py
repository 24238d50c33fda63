"""``netmount cache-proxy``: a real nginx (the system's) in front of the real test hub.

The hub runs in its own process with its own repos, so its request log is what reached the
origin (``hub`` = /resolve/ and API, ``cdn`` = the signed blob URLs).  Tests that need nginx
fail in CI (``CI=true``) when it is missing and are skipped elsewhere with the apt line.
The config generator's pure parts are tested without nginx at the end.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from netmount.core.errors import BadInput
from netmount.proxy import nginx_config
from netmount.proxy.nginx_config import Layout, ProxyOptions, render
from netmount.proxy.server import alive

from conftest import run_cli
from proxykit import TOKEN, free_port, origin, require_nginx, start_proxy  # noqa: F401 (fixtures)

MiB = 1 << 20


# ---- a hub of our own, a proxy per test ------------------------------------------------------

@pytest.fixture(scope="module")
def proxy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("proxyhub")
    rng = random.Random(13)
    m = root / "org" / "m"
    m.mkdir(parents=True)
    (m / "model.safetensors").write_bytes(rng.randbytes(5 * MiB + 4321))  # LFS: 302 to the CDN
    (m / "notes.txt").write_bytes(rng.randbytes(3 * MiB + 17))  # not LFS: served by the hub
    (m / "config.json").write_text('{"a": 1}')
    g = root / "org" / "gated"
    g.mkdir(parents=True)
    (g / "w.safetensors").write_bytes(rng.randbytes(2 * MiB + 99))
    (g / ".gated").write_text("")
    return root



def file_url(origin, repo: str, path: str, rev: str | None = None) -> str:
    return f"/{repo}/resolve/{rev or origin.commit_sha(repo)}/{path}"


def source(proxy_root: Path, repo: str, path: str) -> bytes:
    return (proxy_root / repo / path).read_bytes()


def slice_ranges(a: int, b: int, size: int, slice_size: int = MiB) -> list[str]:
    """The Range headers nginx sends upstream for bytes a..b of a file of ``size``."""
    first, last = a // slice_size, b // slice_size
    return [f"bytes={i * slice_size}-{(i + 1) * slice_size - 1}" for i in range(first, last + 1)]


# ---- what a client gets ----------------------------------------------------------------------

def test_a_range_is_the_source_bytes_then_a_hit_that_reaches_no_origin(start_proxy, origin, proxy_root):
    proxy = start_proxy()
    data = source(proxy_root, "org/m", "model.safetensors")
    url = file_url(origin, "org/m", "model.safetensors")
    a, b = MiB - 10, 3 * MiB + 5  # four slices, unaligned ends
    origin.reset_log()
    status, headers, body = proxy.get(url, (a, b))
    assert status == 206
    assert headers["Content-Range"] == f"bytes {a}-{b}/{len(data)}"
    assert body == data[a:b + 1]
    assert headers["X-Cache-Status"] == "MISS"
    assert headers["X-Repo-Commit"] == origin.commit_sha("org/m")
    # one /resolve/ for the file (its redirect is cached), one CDN request per slice
    assert len(origin.requests("hub")) == 1
    assert sorted(r.range for r in origin.requests("cdn")) == sorted(slice_ranges(a, b, len(data)))
    assert not any(r.has_auth for r in origin.log)

    origin.reset_log()
    status, headers, body = proxy.get(url, (a, b))
    assert (status, headers["X-Cache-Status"], body) == (206, "HIT", data[a:b + 1])
    assert origin.log == []


def test_random_ranges_and_whole_files_match_the_source(start_proxy, origin, proxy_root):
    """Whatever is already cached: hits and misses mixed inside one request, file ends,
    files the hub serves itself (no redirect), requests without Range."""
    proxy = start_proxy()
    rng = random.Random(7)
    for path in ("model.safetensors", "notes.txt"):
        data = source(proxy_root, "org/m", path)
        url = file_url(origin, "org/m", path)
        for _ in range(25):
            a = rng.randrange(len(data))
            b = min(len(data) - 1, a + rng.choice([0, 1, MiB - 1, MiB, 2 * MiB + 3, len(data)]))
            status, headers, body = proxy.get(url, (a, b))
            assert (status, body) == (206, data[a:b + 1]), (path, a, b, len(body))
            assert headers["Content-Range"] == f"bytes {a}-{b}/{len(data)}"
        status, headers, body = proxy.get(url)
        assert (status, body) == (200, data)
        assert headers["X-Cache-Status"] == "HIT"
    # the whole of both files is cached now: nothing more reaches the origin
    origin.reset_log()
    for path in ("model.safetensors", "notes.txt"):
        assert proxy.get(file_url(origin, "org/m", path))[2] == source(proxy_root, "org/m", path)
    assert origin.log == []


def test_concurrent_readers_of_one_slice_send_one_request_per_slice(start_proxy, origin, proxy_root):
    proxy = start_proxy()
    data = source(proxy_root, "org/m", "model.safetensors")
    url = file_url(origin, "org/m", "model.safetensors")
    a, b = 2 * MiB + 100, 3 * MiB + 200  # two slices
    origin.reset_log()
    start = threading.Barrier(8)
    results: list = [None] * 8

    def read(i: int) -> None:
        start.wait()
        results[i] = proxy.get(url, (a, b))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and r[0] == 206 and r[2] == data[a:b + 1] for r in results)
    cdn = [r.range for r in origin.requests("cdn")]
    assert sorted(cdn) == sorted(slice_ranges(a, b, len(data))), cdn
    assert len(origin.requests("hub")) == 1


def test_a_token_is_passed_through_and_nothing_is_cached(start_proxy, origin, proxy_root):
    proxy = start_proxy()
    data = source(proxy_root, "org/gated", "w.safetensors")
    url = file_url(origin, "org/gated", "w.safetensors")
    for _ in range(2):
        origin.reset_log()
        status, headers, body = proxy.get(url, (10, MiB + 10), token=TOKEN)
        assert (status, body) == (206, data[10:MiB + 11])
        assert headers["X-Cache-Status"] == "BYPASS"
        # every time to the origin, with the client's own range; the token to the hub only
        assert [(r.server, r.range, r.has_auth) for r in origin.log] == [
            ("hub", "bytes=10-1048586", True), ("cdn", "bytes=10-1048586", False)]
    # a public file asked for with a token is not cached either
    status, headers, _ = proxy.get(file_url(origin, "org/m", "model.safetensors"), (0, 99), token=TOKEN)
    assert (status, headers["X-Cache-Status"]) == (206, "BYPASS")
    assert proxy.cached_files() == []
    # without the token the gated file is the hub's 401, not bytes from anywhere
    status, headers, body = proxy.get(url, (10, 20))
    assert status == 401 and headers.get("X-Error-Code") == "GatedRepo"
    assert proxy.cached_files() == []


def test_cache_private_caches_token_requests_apart_from_anonymous_ones(start_proxy, origin, proxy_root):
    proxy = start_proxy("--cache-private")
    data = source(proxy_root, "org/gated", "w.safetensors")
    url = file_url(origin, "org/gated", "w.safetensors")
    assert proxy.get(url, (0, MiB), token=TOKEN)[2] == data[:MiB + 1]
    origin.reset_log()
    status, headers, body = proxy.get(url, (0, MiB), token=TOKEN)
    assert (status, headers["X-Cache-Status"], body) == (206, "HIT", data[:MiB + 1])
    assert origin.log == []
    assert proxy.cached_files()
    status, _, body = proxy.get(url, (0, MiB))  # anonymous: the hub decides, not the cache
    assert status == 401 and body != data[:MiB + 1]


def test_a_revision_that_is_not_a_commit_is_passed_through(start_proxy, origin, proxy_root):
    proxy = start_proxy()
    data = source(proxy_root, "org/m", "model.safetensors")
    url = file_url(origin, "org/m", "model.safetensors", rev="main")
    for _ in range(2):
        origin.reset_log()
        status, headers, body = proxy.get(url, (5, 50))
        assert (status, headers["X-Cache-Status"], body) == (206, "BYPASS", data[5:51])
        assert [r.server for r in origin.log] == ["hub", "cdn"]
    assert proxy.cached_files() == []


def test_a_restarted_proxy_serves_its_cache_without_the_origin(start_proxy, origin, proxy_root, tmp_path):
    cache_dir = tmp_path / "kept"
    data = source(proxy_root, "org/m", "model.safetensors")
    url = file_url(origin, "org/m", "model.safetensors")
    first = start_proxy(cache_dir=cache_dir)
    assert first.get(url, (0, 2 * MiB))[2] == data[:2 * MiB + 1]
    first.stop()
    second = start_proxy(cache_dir=cache_dir)
    origin.reset_log()
    status, headers, body = second.get(url, (100, 2 * MiB))
    assert (status, headers["X-Cache-Status"], body) == (206, "HIT", data[100:2 * MiB + 1])
    assert origin.log == []


def test_a_rack_proxy_behind_a_cluster_proxy(start_proxy, origin, proxy_root):
    """Proxies chain: the upstream of one can be another (it answers 206s, no redirect)."""
    cluster = start_proxy()
    rack = start_proxy("--upstream", cluster.url)  # the last --upstream wins
    data = source(proxy_root, "org/m", "model.safetensors")
    url = file_url(origin, "org/m", "model.safetensors")
    origin.reset_log()
    status, headers, body = rack.get(url, (7, 2 * MiB))
    assert (status, headers["X-Cache-Status"], body) == (206, "MISS", data[7:2 * MiB + 1])
    assert sorted(r.range for r in origin.requests("cdn")) == slice_ranges(7, 2 * MiB, len(data))
    status, headers, body = cluster.get(url, (7, 2 * MiB))
    assert (status, headers["X-Cache-Status"], body) == (206, "HIT", data[7:2 * MiB + 1])
    origin.reset_log()
    status, headers, body = rack.get(url, (7, 2 * MiB))
    assert (status, headers["X-Cache-Status"], body) == (206, "HIT", data[7:2 * MiB + 1])
    assert origin.log == []


def test_other_paths_and_methods_and_health(start_proxy, origin):
    proxy = start_proxy()
    status, headers, body = proxy.get("/healthz")
    assert (status, body, headers["X-Cache-Status"]) == (200, b"ok\n", "NONE")
    origin.reset_log()
    status, headers, body = proxy.get("/api/models/org/m")
    assert status == 404 and headers["X-Cache-Status"] == "NONE"
    assert "resolve" in json.loads(body)["error"]
    status, headers, _ = proxy.get(file_url(origin, "org/m", "config.json"), method="POST")
    assert status == 405 and headers["X-Cache-Status"] == "NONE"
    assert origin.log == []


def test_head_gives_the_hub_metadata_and_no_signed_url(start_proxy, origin, proxy_root):
    proxy = start_proxy()
    size = len(source(proxy_root, "org/m", "model.safetensors"))
    status, headers, body = proxy.get(file_url(origin, "org/m", "model.safetensors"), method="HEAD")
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == origin.commit_sha("org/m")
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(size)
    assert "Location" not in headers and "Signature" not in json.dumps(headers)


def test_access_log_is_json_lines(start_proxy, origin):
    proxy = start_proxy()
    url = file_url(origin, "org/m", "config.json")
    proxy.get(url, (0, 3))
    proxy.get(url, (0, 3), token=TOKEN)
    # nginx writes a request's line just after its last byte goes out: once it has stopped
    # (gracefully: it finishes every request first, and `--stop` returns when it is gone) the
    # log is whole
    proxy.stop()
    lines = (proxy.cache_dir / "logs" / "access.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["uri"], r["range"], r["status"], r["cache"], r["token"]) for r in records] == [
        (url, "bytes=0-3", 206, "MISS", False), (url, "bytes=0-3", 206, "BYPASS", True)]
    assert "good-token" not in "".join(lines)


def test_huggingface_hub_downloads_through_the_proxy(start_proxy, origin, proxy_root, tmp_path):
    """huggingface_hub needs only /resolve/ (HEAD for metadata, then GET) for one file."""
    from huggingface_hub import hf_hub_download

    proxy = start_proxy()
    sha = origin.commit_sha("org/m")
    origin.reset_log()
    for name in ("model.safetensors", "config.json"):
        path = hf_hub_download("org/m", name, revision=sha, endpoint=proxy.url, cache_dir=tmp_path / "hf",
                               token=False)
        assert Path(path).read_bytes() == source(proxy_root, "org/m", name)
    assert origin.requests("hub", path_contains="/api/") == []


# ---- process control ---------------------------------------------------------------------------

def test_stop_stops_it_and_a_second_stop_says_so(start_proxy):
    proxy = start_proxy()
    pid = proxy.pid()
    assert pid and alive(pid)
    proxy.stop()
    assert not alive(pid)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(proxy.url + "/healthz", timeout=5)
    done = run_cli("cache-proxy", "--stop", "--cache-dir", str(proxy.cache_dir))
    one_line(done, "no cache proxy runs on")


def test_foreground_stops_on_sigterm(origin, tmp_path):
    require_nginx()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "netmount", "cache-proxy", "--listen", f"127.0.0.1:{port}",
                             "--cache-dir", str(tmp_path / "fg"), "--upstream", origin.url, "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()  # printed once /healthz answers
        assert "cache proxy on" in ready, proc.stderr.read() if proc.poll() is not None else ready
        nginx_pid = int((tmp_path / "fg" / "nginx.pid").read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read() == ""
        assert not alive(nginx_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_print_config_prints_what_nginx_accepts_and_starts_nothing(tmp_path, origin):
    nginx = require_nginx()
    cache_dir = tmp_path / "printed"
    done = run_cli("cache-proxy", "--listen", "0.0.0.0:8080", "--cache-dir", str(cache_dir),
                   "--upstream", origin.url, "--slice", "4M", "--max-size", "2G", "--print-config")
    assert done.returncode == 0, done.stderr
    assert not cache_dir.exists()
    text = done.stdout
    assert "listen 0.0.0.0:8080;" in text and "slice 4m;" in text and "max_size=2g" in text
    assert origin.url in text and not re.search(r"^user ", text, flags=re.M)
    layout = Layout(cache_dir)
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    layout.conf.write_text(text)
    check = subprocess.run([nginx, "-t", "-p", str(cache_dir), "-c", str(layout.conf), "-e", str(layout.error_log)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_upstream_defaults_to_hf_endpoint(tmp_path):
    args = ("cache-proxy", "--listen", "127.0.0.1:8080", "--cache-dir", str(tmp_path), "--print-config")
    text = run_cli(*args, env={"HF_ENDPOINT": "http://10.9.8.7:1234/"}).stdout
    assert 'set $netmount_upstream "http://10.9.8.7:1234";' in text
    text = run_cli(*args, env={"HF_ENDPOINT": ""}).stdout
    assert 'set $netmount_upstream "https://huggingface.co";' in text
    assert "proxy_ssl_verify on;" in text  # a TLS upstream is checked against the CA bundle


# ---- bad input: one line, non-zero, no traceback -------------------------------------------------

def one_line(done, *needles: str) -> str:
    assert done.returncode != 0, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_nginx_missing_says_how_to_install_it(tmp_path, origin):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = run_cli("cache-proxy", "--listen", f"127.0.0.1:{free_port()}", "--cache-dir", str(tmp_path / "c"),
                   "--upstream", origin.url, env={"PATH": str(empty)})
    one_line(done, "nginx", "apt-get install -y nginx")


def test_busy_port(tmp_path, origin):
    require_nginx()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = run_cli("cache-proxy", "--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "c"),
                       "--upstream", origin.url)
    one_line(done, f"127.0.0.1:{port}", "busy")


@pytest.fixture
def unwritable_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:  # root writes through modes: a read-only file system it is
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], check=True)
        yield d
        subprocess.run(["umount", str(d)], check=True)
    else:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def test_unwritable_cache_dir(unwritable_dir, origin):
    require_nginx()
    for cache_dir in (unwritable_dir, unwritable_dir / "sub"):
        done = run_cli("cache-proxy", "--listen", f"127.0.0.1:{free_port()}", "--cache-dir", str(cache_dir),
                       "--upstream", origin.url)
        one_line(done, str(cache_dir))
        assert re.search(r"not writable|cannot create", done.stderr)


def test_a_second_proxy_on_one_dir_is_refused(start_proxy, origin):
    proxy = start_proxy()
    done = run_cli("cache-proxy", "--listen", f"127.0.0.1:{free_port()}", "--cache-dir", str(proxy.cache_dir),
                   "--upstream", origin.url)
    one_line(done, "already runs", "--stop")


@pytest.mark.parametrize("args, needle", [
    (["--listen", "localhost"], "HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "port"),
    (["--listen", "127.0.0.1:8080", "--slice", "3M"], "power of two"),
    (["--listen", "127.0.0.1:8080", "--max-size", "lots"], "--max-size"),
    (["--listen", "127.0.0.1:8080", "--upstream", "ftp://x"], "--upstream"),
    (["--listen", "127.0.0.1:8080", "--upstream", "https://hub.example/some/path"], "no path"),
    ([], "--listen"),
])
def test_bad_flags(tmp_path, args, needle):
    done = run_cli("cache-proxy", "--cache-dir", str(tmp_path / "c"), "--print-config", *args)
    one_line(done, needle)


# ---- the pure config generator ---------------------------------------------------------------

def test_parse_listen():
    assert nginx_config.parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert nginx_config.parse_listen("[::1]:80") == ("::1", 80)
    assert nginx_config.parse_listen("proxy.local:3128") == ("proxy.local", 3128)
    for bad in ("8080", ":8080", "[::1]", "[zz]:80", "h:0", "a b:1"):
        with pytest.raises(BadInput):
            nginx_config.parse_listen(bad)


def test_pinned_uris_are_the_commit_ones():
    sha = "0123456789abcdef0123456789abcdef01234567"
    pinned = re.compile(nginx_config.PINNED_RE)
    resolve = re.compile(nginx_config.RESOLVE_RE)
    for uri in (f"/org/m/resolve/{sha}/a.bin", f"/datasets/org/d/resolve/{sha}/x/y.parquet",
                f"/spaces/org/s/resolve/{sha}/app.py", f"/gpt2/resolve/{sha}/config.json"):
        assert pinned.search(uri) and resolve.search(uri), uri
    for uri in ("/org/m/resolve/main/a.bin", f"/org/m/resolve/{sha[:-1]}/a.bin", f"/org/m/resolve/{sha.upper()}/a"):
        assert not pinned.search(uri) and resolve.search(uri), uri
    for uri in ("/api/models/org/m", f"/org/m/blob/{sha}/a.bin", "/org/m/resolve/main/"):
        assert not resolve.search(uri), uri


def test_render_follows_the_options(tmp_path):
    base = ProxyOptions("127.0.0.1", 8080, tmp_path, upstream="http://10.0.0.5:9000",
                        max_size=100 << 30, slice_size=2 * MiB)
    text = render(base)
    assert "slice 2m;" in text and "max_size=100g" in text and "listen 127.0.0.1:8080;" in text
    assert "proxy_cache_key $netmount_scope$uri$slice_range;" in text
    assert "proxy_cache_lock on;" in text and 'set $netmount_upstream "http://10.0.0.5:9000";' in text
    assert '"GET:1:" 0;' in text and '"~^GET:1:" 0;' not in text  # anonymous GETs only
    assert not re.search(r"^user |^ *resolver ", text, flags=re.M) and "proxy_ssl_verify" not in text
    private = render(ProxyOptions("::", 80, tmp_path, cache_private=True, resolvers=("10.1.1.1",),
                                  ca_file="/etc/ca.pem", user="cache cache"))
    assert '"~^GET:1:" 0;' in private and "listen [::]:80;" in private
    assert "resolver 10.1.1.1 valid=300s;" in private and 'proxy_ssl_trusted_certificate "/etc/ca.pem";' in private
    assert private.startswith("#") and "\nuser cache cache;\n" in private
    # the token never goes to another host
    follow = private[private.index("location @netmount_cdn"):]
    assert 'proxy_set_header Authorization "";' in follow[:follow.index("}\n    }")]


def test_render_refuses_what_cannot_be_quoted(tmp_path):
    with pytest.raises(BadInput):
        render(ProxyOptions("127.0.0.1", 1, tmp_path / "a b"))
    with pytest.raises(BadInput):
        render(ProxyOptions("127.0.0.1", 1, tmp_path / "a$b"))


def test_sizes_and_zone():
    assert nginx_config.parse_slice("1M") == MiB
    for bad in ("3M", "32K", "128M", "x"):
        with pytest.raises(BadInput):
            nginx_config.parse_slice(bad)
    assert nginx_config.parse_max_size("500G", MiB) == 500 << 30
    with pytest.raises(BadInput):
        nginx_config.parse_max_size("1M", MiB)
    # ~8000 keys per MB of zone, with headroom: 500 GiB of 1 MiB slices is 512000 keys
    assert 64 <= nginx_config.keys_zone_mb(500 << 30, MiB) <= 100
    assert nginx_config.keys_zone_mb(1 << 30, MiB) == 2


def test_long_cache_dirs_get_short_sockets(tmp_path):
    layout = Layout(tmp_path / ("x" * 120))
    assert all(len(str(s)) <= 107 for s in layout.sockets())
    assert layout.socket("hub") != layout.socket("follow")
    assert Layout(Path("/c")).socket("hub") == Path("/c/hub.sock")
