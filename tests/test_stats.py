"""`netmount stats`: the numbers agree with the test hub's own byte log, and the views render.

Mounted files are read with os.pread / open().read() only: no mmap in the test process.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

import pytest

from netmount.commands.statsview import SHADES, bar, render_map, render_table

from conftest import run_cli, settle, sha256_file

BLOCK = 1 << 20


def pread_range(path, start, end):
    """Read [start, end) with readahead off, so the kernel asks for those pages only."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        out = b""
        while len(out) < end - start:
            chunk = os.pread(fd, end - start - len(out), start + len(out))
            assert chunk
            out += chunk
        return out
    finally:
        os.close(fd)


def header_of(path):
    from netmount.core.safetensors import parse_header

    raw = open(path, "rb").read()
    return {t.name: t for t in parse_header(raw, len(raw))}


def settled_stats(mp, hub):
    """CLI stats once the daemon has nothing in flight (its downloads over and stored), and
    the bytes the hub sent meanwhile."""
    settle(mp)
    done = run_cli("stats", "--json", str(mp))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), hub.bytes_sent(server=None)


def test_stats_json_agrees_with_the_server_byte_log(mounter, hub, hub_root):
    src = hub_root / "tests" / "big" / "model.safetensors"
    mp = mounter.mount("tests/big")
    hub.reset_log()
    tensors = header_of(src)
    t = tensors["layer.4.weight"]
    assert pread_range(mp / "model.safetensors", t.start, t.end) == src.read_bytes()[t.start:t.end]
    pread_range(mp / "config.json", 0, 2)
    stats, sent = settled_stats(mp, hub)
    assert abs(stats["bytes_fetched"] - sent) <= stats["block_size"], (stats["bytes_fetched"], sent)
    assert stats["requests"] == len(hub.log)
    for key in ("mountpoint", "repo", "revision", "block_size", "bytes_served", "bytes_fetched",
                "requests", "retries", "errors", "cache_hits", "cache_misses", "cached_bytes",
                "files", "tensors", "amplification", "download_rate", "download_rate_avg", "serve_rate"):
        assert key in stats, key
    assert stats["mountpoint"] == str(mp) and stats["repo"] == "tests/big"
    assert stats["revision"] == hub.commit_sha("tests/big")
    by_path = {f["path"]: f for f in stats["files"]}
    assert sum(f["fetched_bytes"] for f in stats["files"]) == stats["bytes_fetched"]
    for f in stats["files"]:
        # small files come from the hub's /resolve/, LFS files from the CDN's /blobs/<sha256>
        sent_f = (hub.bytes_sent(server="hub", path_contains="/" + f["path"])
                  + hub.bytes_sent(server="cdn", path_contains=sha256_file(src.parent / f["path"])))
        assert abs(f["fetched_bytes"] - sent_f) <= stats["block_size"], f
        runs_bytes = sum(min((b + 1) * BLOCK, f["size"]) - a * BLOCK for a, b in f["cached_runs"])
        assert runs_bytes <= sum(e - s for s, e in f["cached_ranges"]) == f["cached_bytes"], f
    model = by_path["model.safetensors"]
    cached_blocks = {i for a, b in model["cached_runs"] for i in range(a, b + 1)}
    # the tensor's whole blocks are cached, and its two edge blocks' parts that hold it (a
    # lone tensor's reads fetch only its own bytes, stored as pieces of those blocks)
    assert set(range(-(-t.start // BLOCK), t.end // BLOCK)) <= cached_blocks
    held = model["cached_ranges"]
    assert any(s <= t.start and t.end <= e for s, e in held), (held, t)
    assert stats["cached_bytes"] == sum(f["cached_bytes"] for f in stats["files"])
    assert stats["errors"] == 0 and stats["retries"] == 0


def test_tensor_touched_bytes_and_amplification(mounter, hub, hub_root):
    src = hub_root / "tests" / "big" / "model.safetensors"
    mp = mounter.mount("tests/big")
    hub.reset_log()
    before = mounter.stats(mp)
    assert before["tensors"] == [] and before["amplification"] is None  # no header known yet
    assert hub.log == []  # and the stats file did not go and fetch one
    tensors = header_of(src)
    t = tensors["layer.2.weight"]
    pread_range(mp / "model.safetensors", 0, 8 + int.from_bytes(src.read_bytes()[:8], "little"))
    pread_range(mp / "model.safetensors", t.start, t.end)
    stats, _ = settled_stats(mp, hub)
    touched = {x["name"]: x for x in stats["tensors"]}
    assert set(touched) == set(tensors)
    assert all(x["file"] == "model.safetensors" for x in stats["tensors"])
    assert touched["layer.2.weight"]["touched_bytes"] == t.nbytes == touched["layer.2.weight"]["nbytes"]
    # neighbours share at most the boundary page with it; the rest was never read
    assert 0 < touched["layer.1.weight"]["touched_bytes"] < 4096
    assert 0 < touched["layer.3.weight"]["touched_bytes"] < 4096
    assert touched["layer.6.weight"]["touched_bytes"] == 0
    read = stats["bytes_read"]
    assert t.nbytes <= read <= t.nbytes + tensors["layer.0.weight"].start + 3 * 4096
    assert stats["amplification"] == pytest.approx(stats["bytes_fetched"] / read, rel=1e-3)
    assert stats["amplification"] >= 1.0
    # a second read of the same bytes is served from cache: nothing new read or fetched
    fetched = stats["bytes_fetched"]
    pread_range(mp / "model.safetensors", t.start, t.end)
    again, _ = settled_stats(mp, hub)
    assert again["bytes_read"] == read and again["bytes_fetched"] == fetched


def test_stats_of_a_plain_folder_fails_in_one_line(tmp_path):
    for path in (tmp_path, tmp_path / "missing"):
        done = run_cli("stats", str(path))
        assert done.returncode != 0
        assert done.stderr.strip() == f"netmount: error: {path} is not a netmount mount"
        assert done.stdout == ""


def test_all_mounts_table_json_and_map(mounter, hub, monkeypatch):
    a = mounter.mount("tests/big", name="a")
    b = mounter.mount("tests/plain", name="b")
    (b / "README.md").read_bytes()
    done = run_cli("stats", "--json")  # no mountpoint: every live mount (there may be others)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert isinstance(listed, list)
    assert {str(a), str(b)} <= {s["mountpoint"] for s in listed}
    one = json.loads(run_cli("stats", "--json", str(b)).stdout)
    assert isinstance(one, dict) and one["repo"] == "tests/plain"
    two = json.loads(run_cli("stats", "--json", str(a), str(b)).stdout)
    assert [s["repo"] for s in two] == ["tests/big", "tests/plain"]

    table = run_cli("stats", str(a), str(b)).stdout
    assert f"tests/big@{hub.commit_sha('tests/big')[:12]} on {a}" in table
    assert f"tests/plain@{one['revision'][:12]} on {b}" in table
    assert "amplification" in table and "requests" in table

    done = run_cli("stats", "--map", str(b), env={"COLUMNS": "70"})
    lines = done.stdout.splitlines()
    assert all(len(line) <= 70 for line in lines[1:]), lines
    readme = next(line for line in lines if line.startswith("README.md"))
    assert SHADES[4] in readme and "100.0%" in readme  # read in full: every block cached
    data = next(line for line in lines if line.startswith("data.bin"))
    assert SHADES[4] not in data and "0.0%" in data


def test_watch_refreshes_until_ctrl_c(mounter):
    mp = mounter.mount("tests/plain")
    # SIGINT as a terminal's Ctrl-C finds it: at its default, even when this suite runs in a
    # background job of a non-interactive shell, which starts with SIGINT ignored (inherited)
    proc = subprocess.Popen([sys.executable, "-m", "netmount", "stats", "--watch", "--interval", "0.2",
                             str(mp)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Ctrl-C once it has redrawn three times (each redraw is flushed); the select bound
    # only catches a watch that hangs
    seen = b""
    try:
        while seen.count(b"\x1b[H\x1b[2J") < 3:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            chunk = os.read(proc.stdout.fileno(), 1 << 16) if ready else b""
            assert chunk, f"watch stopped or hung after {seen.count(b'tests/plain@')} redraws"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = (seen + rest).decode(), err.decode()
    assert proc.returncode == 0, err
    assert out.count("\x1b[H\x1b[2J") >= 3 and out.count("tests/plain@") >= 3
    assert "Traceback" not in err


# -- the views, without a mount -----------------------------------------------------------------

def test_bar_shades_follow_cached_fractions():
    assert bar([], 10, 10) == SHADES[0] * 10
    assert bar([(0, 9)], 10, 10) == SHADES[4] * 10
    assert bar([(0, 4)], 10, 10) == SHADES[4] * 5 + SHADES[0] * 5
    assert bar([(0, 0)], 1, 8) == SHADES[4] * 8  # one block: every cell shows it
    assert bar([(0, 0), (4, 4)], 8, 2) == SHADES[1] + SHADES[1]  # 1 of 4 per cell
    assert bar([(0, 1), (4, 6)], 8, 2) == SHADES[2] + SHADES[3]  # 2 of 4, 3 of 4
    assert bar([(0, 99)], 100, 0) == ""


def test_render_views_from_a_stats_dict():
    s = {"repo": "o/n", "revision": "a" * 40, "mountpoint": "/m", "block_size": 4,
         "bytes_served": 10, "bytes_read": 8, "bytes_fetched": 16, "amplification": 2.0,
         "cache_hits": 3, "cache_misses": 1, "cached_bytes": 16, "total_bytes": 40,
         "requests": 2, "retries": 0, "errors": 0, "download_rate": 0, "download_rate_avg": 1024,
         "serve_rate": 3 << 20,
         "files": [{"path": "x" * 50, "size": 40, "cached_bytes": 16, "cached_runs": [[0, 3]]},
                   {"path": "empty", "size": 0, "cached_bytes": 0, "cached_runs": []}]}
    table = render_table([s])
    assert "o/n@aaaaaaaaaaaa on /m" in table and "75.0% block hits" in table
    assert "amplification 2.00" in table and "16 B of 40 B (40.0%)" in table
    assert "serving 3 MiB/s now; fetching 0 B/s now, 1 KiB/s on average" in table
    assert render_table([]) == "no live netmount mounts"
    lines = render_map(s, 60).splitlines()
    assert len(lines) == 3 and all(len(line) <= 60 for line in lines[1:])
    assert lines[1].startswith("…") and lines[1].endswith(" 40.0%")


def test_serve_rate_is_what_the_daemon_served_lately():
    """``serve_rate`` comes from the meter over ``bytes_served`` (the mount's pace as programs see
    it), beside ``download_rate`` over ``bytes_fetched``."""
    from types import SimpleNamespace

    from netmount.mounting.stats import build_stats

    class Meter:
        def __init__(self, value):
            self.value = value

        def rate(self):
            return self.value

    counters = SimpleNamespace(snapshot=lambda: {"bytes_served": 10, "bytes_fetched": 4}, per_file=lambda: {},
                               started=0.0)
    snap = SimpleNamespace(files=[], name="o/n", sha="a" * 40, revision="main", endpoint="http://x")
    config = SimpleNamespace(mountpoint="/m", block_size=4)
    out = build_stats(config, snap, counters, store=None, rate=Meter(2.4), served=Meter(1234.6))
    assert out["serve_rate"] == 1235 and out["download_rate"] == 2
    assert build_stats(config, snap, counters, store=None)["serve_rate"] == 0
