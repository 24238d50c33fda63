"""The test hub speaks the Hub's protocol: checked with the real huggingface_hub client,
raw HTTP for what the client does not expose (ranges, signatures), and the real
safetensors writer/reader for the synthetic DeepSeek-V3 headers."""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from netmount.dev.testhub import TestHub, ranges, synthetic
from netmount.dev.testhub.repo import git_blob_sha1, lfs_pointer

TOKEN = "hf_testtoken"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hubroot")
    tiny = root / "org" / "tiny"
    _write(tiny / "config.json", b'{"model_type": "llama"}\n')
    _write(tiny / "model.safetensors", os.urandom(3_000_000))
    _write(tiny / "big.dat", os.urandom(11 * 1024 * 1024))  # LFS by size alone
    _write(tiny / "sub" / "dir" / "notes.txt", b"notes\n")
    _write(tiny / "sub" / "weights.bin", os.urandom(1000))
    _write(tiny / ".hidden", b"marker, not content")
    gated = root / "org" / "gated"
    _write(gated / ".gated", b"")
    _write(gated / "config.json", b"{}\n")
    _write(gated / "model.safetensors", os.urandom(200_000))
    return root


@pytest.fixture(scope="module")
def hub(root):
    with TestHub(root, page_size=2, tokens=[TOKEN]) as hub:
        yield hub


@pytest.fixture(autouse=True)
def _isolated_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def _get(url: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) without following redirects or raising on 4xx/5xx."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def _cdn_url(hub: TestHub, repo_id: str, path: str) -> str:
    status, headers, _ = _get(f"{hub.url}/{repo_id}/resolve/main/{path}", method="HEAD")
    assert status == 302, status
    return headers["Location"]


# ---- huggingface_hub against the hub ---------------------------------------------------


def test_model_info_files_metadata(hub, root):
    info = HfApi(endpoint=hub.url, token=False).model_info("org/tiny", files_metadata=True)
    assert info.id == "org/tiny"
    assert info.sha == hub.commit_sha("org/tiny") and len(info.sha) == 40
    assert info.gated is False and info.private is False
    sib = {s.rfilename: s for s in info.siblings}
    assert set(sib) == {"config.json", "model.safetensors", "big.dat", "sub/dir/notes.txt", "sub/weights.bin"}
    for name, s in sib.items():
        data = (root / "org" / "tiny" / name).read_bytes()
        assert s.size == len(data)
        if name in ("config.json", "sub/dir/notes.txt"):
            assert s.lfs is None
            assert s.blob_id == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        else:
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
            assert s.lfs.sha256 == sha256 and s.lfs.size == len(data) and s.lfs.pointer_size == len(pointer)
            assert s.blob_id == hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    # files_metadata=True is sent as ?blobs=true; plain model_info carries no sizes
    assert "blobs=true" in hub.requests(server="hub", path_contains="/api/models/org/tiny")[-1].query
    plain = HfApi(endpoint=hub.url, token=False).model_info("org/tiny")
    assert all(s.size is None for s in plain.siblings)


def test_list_repo_tree_paginates_and_lists_every_file_once(hub):
    api = HfApi(endpoint=hub.url, token=False)
    hub.reset_log()
    entries = list(api.list_repo_tree("org/tiny", recursive=True))
    paths = [e.path for e in entries]
    assert len(paths) == len(set(paths))
    files = {e.path: e for e in entries if type(e).__name__ == "RepoFile"}
    dirs = {e.path for e in entries if type(e).__name__ == "RepoFolder"}
    assert set(files) == {"config.json", "model.safetensors", "big.dat", "sub/dir/notes.txt", "sub/weights.bin"}
    assert dirs == {"sub", "sub/dir"}
    assert files["big.dat"].lfs is not None and files["config.json"].lfs is None
    tree_calls = hub.requests(server="hub", path_contains="/tree/")
    assert len(tree_calls) == 4  # 7 entries, pages of 2
    assert all("cursor=" in r.query for r in tree_calls[1:])
    top = [e.path for e in api.list_repo_tree("org/tiny")]
    assert sorted(top) == ["big.dat", "config.json", "model.safetensors", "sub"]
    sub = [e.path for e in api.list_repo_tree("org/tiny", path_in_repo="sub", recursive=True)]
    assert sorted(sub) == ["sub/dir", "sub/dir/notes.txt", "sub/weights.bin"]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree("org/tiny", path_in_repo="nope"))


def test_tree_link_header_is_absolute(hub):
    status, headers, body = _get(f"{hub.url}/api/models/org/tiny/tree/main?recursive=true")
    assert status == 200 and len(json.loads(body)) == 2
    link = headers["Link"]
    assert link.startswith(f"<{hub.url}/api/models/org/tiny/tree/main?") and link.endswith('>; rel="next"')
    assert "recursive=true" in link and "cursor=" in link


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_directory_oids_are_git_tree_ids(tmp_path):
    repo = tmp_path / "org" / "plain"
    for rel in ("a.txt", "a/b/x.txt", "a-b/y", "c/q.json", "README.md"):
        _write(repo / rel, rel.encode() + b"\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    root_tree = subprocess.run(["git", "write-tree"], cwd=repo, check=True, capture_output=True,
                               text=True).stdout.strip()
    listing = subprocess.run(["git", "ls-tree", "-r", "-t", root_tree], cwd=repo, check=True,
                             capture_output=True, text=True).stdout
    git_ids = {line.split("\t")[1]: line.split()[2] for line in listing.splitlines()}
    shutil.rmtree(repo / ".git")  # top-level dot entries are not content
    with TestHub(tmp_path) as hub:
        entries = HfApi(endpoint=hub.url, token=False).list_repo_tree("org/plain", recursive=True)
        ours = {e.path: getattr(e, "tree_id", None) or e.blob_id for e in entries}
    assert ours == git_ids


def test_hf_hub_download_small_and_lfs_token_never_reaches_cdn(hub, root, tmp_path):
    hub.reset_log()
    for name in ("config.json", "model.safetensors", "sub/weights.bin"):
        got = hf_hub_download("org/tiny", name, endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
        assert Path(got).read_bytes() == (root / "org" / "tiny" / name).read_bytes()
    cdn = hub.requests(server="cdn")
    assert len(cdn) == 2 and all(r.status == 200 for r in cdn)
    assert not any(r.has_auth for r in cdn)
    assert all(r.has_auth for r in hub.requests(server="hub"))
    assert hub.bytes_sent("cdn") == 3_000_000 + 1000
    assert hub.bytes_sent("hub", path_contains="config.json") == len((root / "org/tiny/config.json").read_bytes())


def test_revision_pinned_by_sha(hub, root, tmp_path):
    sha = hub.commit_sha("org/tiny")
    api = HfApi(endpoint=hub.url, token=False)
    assert api.model_info("org/tiny", revision=sha).sha == sha
    assert len(list(api.list_repo_tree("org/tiny", revision=sha, recursive=True))) == 7
    got = hf_hub_download("org/tiny", "sub/dir/notes.txt", revision=sha, endpoint=hub.url,
                          cache_dir=tmp_path, token=False)
    assert Path(got).read_bytes() == b"notes\n" and sha in got


def test_agent_harness_registry_is_served_and_kept_by_the_client(hub, tmp_path):
    """huggingface_hub (telemetry on) asks for the agent registry once and keeps it in
    HF_HOME: the next process does not ask again (a 404 would be asked for by every one)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_ENDPOINT": hub.url}
    env.pop("HF_HUB_DISABLE_TELEMETRY", None)
    code = "from huggingface_hub import HfApi; print(HfApi(token=False).model_info('org/tiny').sha)"
    asked = []
    for _ in range(2):
        hub.reset_log()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == hub.commit_sha("org/tiny")
        asked.append([r.status for r in hub.requests(server="hub") if r.path == "/api/agent-harnesses"])
    assert asked == [[200], []], asked
    assert json.loads((tmp_path / "hf_home" / ".agent_harnesses.json").read_text()) == {
        "standardEnvVars": [], "harnesses": {}}


def test_unknown_revision(hub, tmp_path):
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/tiny", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/tiny", revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "config.json", revision="v9", endpoint=hub.url, cache_dir=tmp_path, token=False)


def test_missing_repo_and_missing_file(hub, tmp_path):
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError) as e:
        api.model_info("org/nope")
    assert type(e.value) is RepositoryNotFoundError and e.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as e:
        HfApi(endpoint=hub.url, token=TOKEN).model_info("org/nope")
    assert type(e.value) is RepositoryNotFoundError and e.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", "nope.txt", endpoint=hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/tiny", ".hidden", endpoint=hub.url, cache_dir=tmp_path, token=False)


def test_gated_repo(hub, root, tmp_path):
    # As on today's Hub: info and listing are public, downloads need an authorized token.
    info = HfApi(endpoint=hub.url, token=False).model_info("org/gated", files_metadata=True)
    assert info.gated == "auto" and {s.rfilename for s in info.siblings} == {"config.json", "model.safetensors"}
    for token, status in ((False, 401), ("hf_someone_else", 403)):
        for name in ("config.json", "model.safetensors"):
            with pytest.raises(GatedRepoError) as e:
                hf_hub_download("org/gated", name, endpoint=hub.url, cache_dir=tmp_path, token=token)
            assert e.value.response.status_code == status
    hub.reset_log()
    got = hf_hub_download("org/gated", "model.safetensors", endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
    assert Path(got).read_bytes() == (root / "org/gated/model.safetensors").read_bytes()
    assert hub.requests(server="cdn") and not any(r.has_auth for r in hub.requests(server="cdn"))


def test_gate_api_gates_info_and_tree_too(root):
    with TestHub(root, tokens=[TOKEN], gate_api=True) as hub:
        with pytest.raises(GatedRepoError):
            HfApi(endpoint=hub.url, token=False).model_info("org/gated")
        with pytest.raises(GatedRepoError):
            list(HfApi(endpoint=hub.url, token=False).list_repo_tree("org/gated"))
        assert HfApi(endpoint=hub.url, token=TOKEN).model_info("org/gated").sha == hub.commit_sha("org/gated")


def test_each_file_is_hashed_once(root):
    with TestHub(root) as hub:
        HfApi(endpoint=hub.url, token=False).model_info("org/tiny")
        first = hub._hasher.hashed_bytes
        on_disk = sum(p.stat().st_size for p in (root / "org/tiny").rglob("*") if p.is_file())
        assert first == on_disk - len(b"marker, not content")
        HfApi(endpoint=hub.url, token=False).model_info("org/tiny", files_metadata=True)
        _get(f"{hub.url}/org/tiny/resolve/main/config.json")
        assert hub._hasher.hashed_bytes == first


# ---- raw HTTP: resolve, CDN ranges and signatures -------------------------------------


def test_resolve_headers(hub, root):
    sha = hub.commit_sha("org/tiny")
    data = (root / "org/tiny/model.safetensors").read_bytes()
    for method in ("HEAD", "GET"):
        status, h, body = _get(f"{hub.url}/org/tiny/resolve/main/model.safetensors", method=method)
        assert status == 302 and h["X-Repo-Commit"] == sha
        assert h["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert h["X-Linked-Size"] == str(len(data))
        assert h["Location"].startswith(f"{hub.cdn_url}/blobs/{hashlib.sha256(data).hexdigest()}?Expires=")
        assert "Signature=" in h["Location"] and (body == b"") == (method == "HEAD")
    status, h, body = _get(f"{hub.url}/org/tiny/resolve/main/config.json")
    assert status == 200 and body == (root / "org/tiny/config.json").read_bytes()
    assert h["ETag"] == f'"{git_blob_sha1(body)}"' and h["X-Repo-Commit"] == sha
    status, h, body = _get(f"{hub.url}/org/tiny/resolve/main/config.json", {"Range": "bytes=2-5"})
    assert status == 206 and body == (root / "org/tiny/config.json").read_bytes()[2:6]
    status, h, _ = _get(f"{hub.url}/org/tiny/resolve/main/missing.txt")
    assert status == 404 and h["X-Error-Code"] == "EntryNotFound" and h["X-Repo-Commit"] == sha


def test_cdn_ranges(hub, root):
    data = (root / "org/tiny/model.safetensors").read_bytes()
    n = len(data)
    url = _cdn_url(hub, "org/tiny", "model.safetensors")
    cases = [
        ("bytes=0-0", 0, 1),
        ("bytes=100-199", 100, 200),
        ("bytes=2999990-", 2999990, n),
        ("bytes=-10", n - 10, n),
        ("bytes=2999990-5000000", 2999990, n),  # end clamped to the last byte
        ("bytes=-5000000", 0, n),
    ]
    for header, a, b in cases:
        status, h, body = _get(url, {"Range": header})
        assert status == 206, header
        assert h["Content-Range"] == f"bytes {a}-{b - 1}/{n}", header
        assert int(h["Content-Length"]) == b - a and body == data[a:b], header
    for header in ("bytes=3000000-", "bytes=5000000-5000001", "bytes=-0"):
        status, h, _ = _get(url, {"Range": header})
        assert status == 416 and h["Content-Range"] == f"bytes */{n}", header
    for header in (None, "bytes=0-1,5-9", "bytes=9-2", "items=0-1"):
        status, h, body = _get(url, {"Range": header} if header else {})
        assert status == 200 and "Content-Range" not in h and body == data, header
    status, h, body = _get(url, {"Range": "bytes=10-19"}, method="HEAD")
    assert status == 206 and h["Content-Length"] == "10" and body == b""


def test_cdn_rejects_bad_and_expired_signatures(root, hub):
    url = _cdn_url(hub, "org/tiny", "model.safetensors")
    assert _get(url, {"Range": "bytes=0-9"})[0] == 206
    assert _get(url.replace("Signature=", "Signature=0"))[0] == 403
    assert _get(url.split("?")[0])[0] == 403
    expires = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["Expires"][0])
    assert _get(url.replace(f"Expires={expires}", f"Expires={expires + 1}"))[0] == 403
    with TestHub(root, url_ttl=0) as short:
        status, _, body = _get(_cdn_url(short, "org/tiny", "model.safetensors"))
        assert status == 403 and b"expired" in body


def test_cdn_base_redirects_lfs_files_by_name_to_an_external_file_server(root, tmp_path):
    """``cdn_base`` (the benchmark's nginx CDN): LFS files of folder repos redirect to
    ``<base>/<org>/<name>/<path>``, signed as usual; a server serving ``root`` by name answers
    them, and huggingface_hub follows the redirect to the right bytes."""
    import asyncio
    import threading

    from aiohttp import web

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_static("/cdn", root)  # a plain file server with ranges, as nginx's alias
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    files = f"http://127.0.0.1:{runner.addresses[0][1]}/cdn"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with TestHub(root, cdn_base=files + "/") as hub:
            url = _cdn_url(hub, "org/tiny", "sub/weights.bin")
            assert url.startswith(f"{files}/org/tiny/sub/weights.bin?Expires=") and "Signature=" in url
            data = (root / "org/tiny/model.safetensors").read_bytes()
            status, _, body = _get(_cdn_url(hub, "org/tiny", "model.safetensors"), {"Range": "bytes=100-199"})
            assert status == 206 and body == data[100:200]
            got = hf_hub_download("org/tiny", "model.safetensors", endpoint=hub.url, cache_dir=tmp_path)
            assert Path(got).read_bytes() == data
            assert hub.requests(server="cdn") == []  # the built-in CDN served nothing
            status, _, body = _get(f"{hub.url}/org/tiny/resolve/main/config.json")  # small: no redirect
            assert status == 200 and body == (root / "org/tiny/config.json").read_bytes()
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_fault_hook_answers_instead_of_handler(hub):
    from aiohttp import web

    url = _cdn_url(hub, "org/tiny", "model.safetensors")
    hook = lambda request, rec: web.Response(status=503, headers={"Retry-After": "1"}) if rec.server == "cdn" else None
    hub.faults.append(hook)
    try:
        status, h, _ = _get(url)
        assert status == 503 and h["Retry-After"] == "1"
        assert hub.requests(server="cdn")[-1].status == 503
        assert _get(f"{hub.url}/api/models/org/tiny")[0] == 200
    finally:
        hub.faults.remove(hook)
    assert _get(url, {"Range": "bytes=0-0"})[0] == 206


# ---- synthetic DeepSeek-V3 -------------------------------------------------------------


def test_synthetic_layout():
    files = dict(synthetic.repo_files())
    shards = [p for p in files if p.endswith(".safetensors")]
    assert len(shards) == 163 and shards[0] == "model-00001-of-000163.safetensors"
    assert shards[-1] == "model-00163-of-000163.safetensors"
    total = sum(files[p] for p in shards)
    assert 680e9 < total < 695e9
    index = json.loads(synthetic.file_bytes("model.safetensors.index.json", 0, files["model.safetensors.index.json"]))
    names = {}
    data_total = 0
    for p in shards:
        n = int.from_bytes(synthetic.file_bytes(p, 0, 8), "little")
        raw = synthetic.file_bytes(p, 8, 8 + n)
        assert n % 8 == 0 and raw.rstrip(b" ").endswith(b"}") and len(raw) == n
        header = json.loads(raw)
        assert header.pop("__metadata__") == {"format": "pt"}
        spans = sorted(v["data_offsets"] for v in header.values())
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert files[p] == 8 + n + spans[-1][1]
        data_total += spans[-1][1]
        for k, v in header.items():
            names[k] = (p, v["dtype"], tuple(v["shape"]))
            itemsize = {"F8_E4M3": 1, "BF16": 2, "F32": 4}[v["dtype"]]
            a, b = v["data_offsets"]
            assert b - a == itemsize * math.prod(v["shape"]), k
    assert 90_000 < len(names) < 93_000
    assert index["weight_map"] == {k: v[0] for k, v in names.items()}
    assert index["metadata"]["total_size"] == data_total
    assert 3.5e9 < min(files[p] for p in shards) and max(files[p] for p in shards) < 5e9
    # the architecture, spot-checked
    assert names["model.embed_tokens.weight"][1:] == ("BF16", (129280, 7168))
    assert names["lm_head.weight"][1:] == ("BF16", (129280, 7168))
    assert names["model.layers.0.mlp.gate_proj.weight"][1:] == ("F8_E4M3", (18432, 7168))
    assert names["model.layers.0.mlp.down_proj.weight_scale_inv"][1:] == ("F32", (56, 144))
    assert names["model.layers.3.mlp.experts.255.down_proj.weight"][1:] == ("F8_E4M3", (7168, 2048))
    assert names["model.layers.60.mlp.gate.weight"][1:] == ("BF16", (256, 7168))
    assert names["model.layers.60.mlp.gate.e_score_correction_bias"][1:] == ("F32", (256,))
    assert names["model.layers.7.mlp.shared_experts.up_proj.weight"][1:] == ("F8_E4M3", (2048, 7168))
    assert names["model.layers.5.self_attn.q_b_proj.weight"][1:] == ("F8_E4M3", (24576, 1536))
    assert names["model.layers.5.self_attn.kv_a_proj_with_mqa.weight_scale_inv"][1:] == ("F32", (5, 56))
    assert names["model.layers.5.self_attn.kv_b_proj.weight"][1:] == ("F8_E4M3", (32768, 512))
    assert names["model.layers.5.self_attn.o_proj.weight"][1:] == ("F8_E4M3", (7168, 16384))
    assert names["model.layers.5.self_attn.kv_a_layernorm.weight"][1:] == ("BF16", (512,))
    assert names["model.layers.61.eh_proj.weight"][1:] == ("BF16", (7168, 14336))
    assert names["model.layers.61.shared_head.head.weight"][1:] == ("BF16", (129280, 7168))
    assert names["model.layers.61.shared_head.norm.weight"][0] == shards[-1]
    # shards are filled in layer order: each layer's shards come after the previous layer's
    span = {}
    for k, (p, _, _) in names.items():
        layer = int(k.split(".")[2]) if k.startswith("model.layers.") else None
        if layer is not None:
            lo, hi = span.get(layer, (999, 0))
            span[layer] = (min(lo, shards.index(p)), max(hi, shards.index(p)))
    assert all(span[i][1] <= span[i + 1][0] for i in range(61))
    assert not any(k.startswith("model.layers.2.mlp.experts") for k in names)
    assert sum(k.startswith("model.layers.10.mlp.experts.") for k in names) == 256 * 6


def test_synthetic_header_matches_the_real_safetensors_writer(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors import safe_open
    from safetensors.torch import save

    tensors = (synthetic._fp8_linear("model.layers.3.mlp.experts.7.up_proj", 300, 260)
               + [synthetic.Tensor("model.layers.3.input_layernorm.weight", "BF16", (7,)),
                  synthetic.Tensor("model.layers.3.mlp.gate.e_score_correction_bias", "F32", (5,))])
    header, order, data_size = synthetic.encode_header(tensors, {"format": "pt"})
    dtypes = {"F8_E4M3": torch.float8_e4m3fn, "BF16": torch.bfloat16, "F32": torch.float32}
    real = save({t.name: torch.zeros(t.shape, dtype=dtypes[t.dtype]) for t in tensors}, metadata={"format": "pt"})
    assert real[: len(header)] == header and len(real) == len(header) + data_size
    # and a file laid out from our header loads with the real reader
    path = tmp_path / "x.safetensors"
    path.write_bytes(header + bytes(range(256)) * (data_size // 256) + bytes(data_size % 256))
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(t.name for t in tensors)
        for t in tensors:
            x = f.get_tensor(t.name)
            assert tuple(x.shape) == t.shape and x.dtype == dtypes[t.dtype]


def test_synthetic_config_is_a_deepseek_v3_config():
    from transformers import AutoConfig

    raw = dict(synthetic.repo_files())["config.json"]
    cfg = json.loads(synthetic.file_bytes("config.json", 0, raw))
    config = AutoConfig.for_model(**cfg)
    assert type(config).__name__ == "DeepseekV3Config"
    assert (config.num_hidden_layers, config.n_routed_experts, config.hidden_size) == (61, 256, 7168)


def test_synthetic_file_bytes_deterministic_and_range_consistent():
    p = "model-00042-of-000163.safetensors"
    size = dict(synthetic.repo_files())[p]
    hlen = 8 + int.from_bytes(synthetic.file_bytes(p, 0, 8), "little")
    for a, b, c in [(0, hlen, hlen + 100_000), (hlen - 5, hlen + 3, hlen + 70_000),
                    (1_000_000_007, 1_000_065_536, 1_000_300_001), (size - 200_000, size - 65_536, size)]:
        assert synthetic.file_bytes(p, a, c) == synthetic.file_bytes(p, a, b) + synthetic.file_bytes(p, b, c)
    first = synthetic.file_bytes(p, 123_456_789, 123_556_789)
    synthetic._chunk.cache_clear()
    assert synthetic.file_bytes(p, 123_456_789, 123_556_789) == first
    assert first != synthetic.file_bytes("model-00043-of-000163.safetensors", 123_456_789, 123_556_789)
    assert synthetic.file_bytes(p, size, size) == b""
    with pytest.raises(ValueError):
        synthetic.file_bytes(p, size - 1, size + 1)


def test_synthetic_served_through_hub_and_cdn(tmp_path):
    with TestHub(None, synthetic_deepseek=True) as hub:
        info = HfApi(endpoint=hub.url, token=False).model_info(synthetic.REPO_ID, files_metadata=True)
        sib = {s.rfilename: s for s in info.siblings}
        sizes = dict(synthetic.repo_files())
        assert len(sib) == len(sizes) == 167
        p = "model-00100-of-000163.safetensors"
        assert sib[p].size == sizes[p] and sib[p].lfs.sha256 == synthetic.fake_sha256(p, sizes[p])
        config = hf_hub_download(synthetic.REPO_ID, "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
        assert json.loads(Path(config).read_text())["model_type"] == "deepseek_v3"
        url = _cdn_url(hub, synthetic.REPO_ID, p)
        hlen = 8 + int.from_bytes(synthetic.file_bytes(p, 0, 8), "little")
        for a, b in [(0, hlen + 10), (hlen - 100, hlen + 2_000_000), (sizes[p] - 5000, sizes[p])]:
            status, h, body = _get(url, {"Range": f"bytes={a}-{b - 1}"})
            assert status == 206 and h["Content-Range"] == f"bytes {a}-{b - 1}/{sizes[p]}"
            assert body == synthetic.file_bytes(p, a, b)


def test_body_bytes_counts_what_was_written_when_client_disconnects():
    with TestHub(None, synthetic_deepseek=True) as hub:
        url = urllib.parse.urlsplit(_cdn_url(hub, synthetic.REPO_ID, "model-00001-of-000163.safetensors"))
        with socket.create_connection((url.hostname, url.port)) as s:
            s.sendall(f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-999999999\r\n\r\n".encode())
            got = 0
            while got < 3_000_000:
                got += len(s.recv(1 << 20))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST on close
        assert hub.wait_idle(10)
        rec = hub.requests(server="cdn")[-1]
        assert rec.status == 206 and rec.range == "bytes=0-999999999" and rec.t_end is not None
        assert got - 1000 <= rec.body_bytes < 200_000_000  # header bytes included in got


def test_start_reports_a_busy_port(root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            TestHub(root, port=taken.getsockname()[1]).start()


# ---- ranges, CLI -----------------------------------------------------------------------


@pytest.mark.parametrize("header,total,expect", [
    (None, 10, (200, 0, 10)),
    ("bytes=0-4", 10, (206, 0, 5)),
    ("bytes=5-", 10, (206, 5, 10)),
    ("bytes=-3", 10, (206, 7, 10)),
    ("bytes=8-100", 10, (206, 8, 10)),
    ("bytes=10-", 10, (416, 0, 0)),
    ("bytes=-0", 10, (416, 0, 0)),
    ("bytes=-5", 0, (416, 0, 0)),
    ("bytes=4-2", 10, (200, 0, 10)),
    ("bytes=0-1,3-4", 10, (200, 0, 10)),
    ("bytes=abc", 10, (200, 0, 10)),
    ("BYTES = 1 - 2", 10, (206, 1, 3)),
])
def test_range_plan(header, total, expect):
    p = ranges.plan(header, total)
    assert (p.status, p.start, p.end) == expect


def test_lfs_pointer_format():
    ptr = lfs_pointer("ab" * 32, 123)
    assert ptr == b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 123\n"


@pytest.mark.parametrize("cmd", [[sys.executable, "-m", "netmount.dev.testhub"],
                                 [str(REPO_ROOT / "scripts" / "testhub")]])
def test_cli_serves_until_signalled(root, cmd):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([*cmd, "--root", str(root), "--token", TOKEN, "--page-size", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        info = HfApi(endpoint=url, token=TOKEN).model_info("org/gated", files_metadata=True)
        assert info.gated == "auto"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
