"""The benchmark's own parts (scripts/benchlib): its nginx CDN behind the test hub's
``--cdn-base`` serves the right bytes to huggingface_hub and to range requests, and the
profile helper's collapsed-stack arithmetic and flame graph are right.  No timing."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from huggingface_hub import hf_hub_download

from netmount.dev.testhub import TestHub

from proxykit import require_nginx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from benchlib.cdn import NginxCdn  # noqa: E402
from benchlib.profile import flame_svg, read_collapsed, top  # noqa: E402
from benchlib.results import Results, Row, table  # noqa: E402


def _get(url: str, rng: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Range": rng} if rng else {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def test_nginx_cdn_behind_the_hub_serves_exact_bytes(tmp_path, monkeypatch):
    require_nginx()
    root = tmp_path / "root"
    (root / "org" / "m").mkdir(parents=True)
    data = os.urandom(3_000_017)
    (root / "org" / "m" / "model.safetensors").write_bytes(data)
    (root / "org" / "m" / "config.json").write_text("{}\n")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    cdn = NginxCdn(root, tmp_path / "nginx", latency_ms=1, rate=50_000_000)
    try:
        for k, base in enumerate(filter(None, [cdn.url, cdn.wan_url])):  # wan_url: None without the echo module
            with TestHub(root, cdn_base=base) as hub:
                got = hf_hub_download("org/m", "model.safetensors", endpoint=hub.url, cache_dir=tmp_path / f"hf{k}")
                assert hashlib.sha256(Path(got).read_bytes()).digest() == hashlib.sha256(data).digest()
                assert hub.requests(server="cdn") == []  # nginx served it, not the hub's CDN
                status, body = _get(f"{hub.url}/org/m/resolve/main/model.safetensors", "bytes=1048570-2097157")
                assert status == 206 and body == data[1048570:2097158]
        status, listing = _get(f"{cdn.url}/org/m/")  # the folder index rclone and httpdirfs read
        assert status == 200 and b'href="model.safetensors"' in listing
    finally:
        cdn.stop()
    assert cdn.proc.returncode is not None


def test_collapsed_stacks_by_function_self_and_total():
    text = ("a (x.py:1);b (y.py:2) 3\n"
            "a (x.py:1);b (y.py:9) 2\n"  # another line of b: the same function
            "a (x.py:1);c (z.py:4);b (y.py:2) 5\n"
            "not a sample line\n")
    stacks = read_collapsed(text)
    assert stacks == {("a (x.py)", "b (y.py)"): 5, ("a (x.py)", "c (z.py)", "b (y.py)"): 5}
    own, total, n = top(stacks)
    assert n == 10
    assert dict(own) == {"b (y.py)": 10}
    assert dict(total) == {"a (x.py)": 10, "b (y.py)": 10, "c (z.py)": 5}


def test_flame_graph_has_a_box_per_frame_sized_by_samples():
    stacks = {("a", "b"): 3, ("a", "c"): 1}
    svg = ET.fromstring(flame_svg(stacks, title="t", width=400))
    ns = "{http://www.w3.org/2000/svg}"
    boxes = {g.find(f"{ns}title").text.split(":")[0]: float(g.find(f"{ns}rect").get("width"))
             for g in svg.iter(f"{ns}g")}
    assert boxes == {"a": 400.0, "b": 300.0, "c": 100.0}


def test_side_by_side_rows_show_medians_and_ratios():
    res = Results()
    for v in (100.0, 300.0, 200.0):
        res.add("ours MB/s", v)
    for v in (400.0, 400.0):
        res.add("theirs MB/s", v)
    lines = table([Row("cold", "ours MB/s", "theirs MB/s", "curl", "MB/s", "≥ 0.9×"),
                   Row("missing baseline", "ours MB/s", "absent", "x", "MB/s"),
                   Row("no baseline", "ours MB/s", "", "", "MB/s")], res)
    assert lines[2] == "| cold | 200 MB/s | curl 400 | 0.50× | ≥ 0.9× |"
    assert lines[3] == "| no baseline | 200 MB/s |  |  |  |"
    assert len(lines) == 4
