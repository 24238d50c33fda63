"""huggingface_hub and transformers on a read-only Hugging Face cache laid out as the
--hf-cache namespace answers it (issue 22, proven before the mount exists).

The cache: what ``HfCacheNamespace`` (over the real resolver and the test hub) answers for
three repos, written to a folder (``hfcache_checks.materialize``), then bind-mounted read-only
(root ignores permission bits; a read-only mount it cannot write through).  Stock code then:

- offline, loads by repo id: ``hf_hub_download``, ``snapshot_download``,
  ``try_to_load_from_cache`` (``.no_exist`` honoured), ``get_cached_repo_tree``,
  ``scan_cache_dir`` without warnings, transformers ``from_pretrained(repo_id)`` with the logits
  of a local load; an unknown or gated repo is huggingface_hub's own error, at once;
- online with the Hub's ref unchanged: the same paths, nothing written, nothing downloaded,
  no listing (``trees/{sha}.json``);
- online after the Hub moved on: ``OSError(EROFS)`` at once, from huggingface_hub and from
  transformers.  (On the live mount ``snapshots/{new sha}`` resolves on lookup, so the same
  call is expected to return the new commit's file instead: phase 2 checks which.)
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest

from netmount.dev.testhub import TestHub
from netmount.mounting.hfcache import HfCacheNamespace, RepoKey

from hfcache_checks import OFFLINE_HUB, ONLINE, TRANSFORMERS_BY_ID, hub_resolver, materialize, run_hf

pytestmark = pytest.mark.fuse  # mounts (a read-only bind mount: root, like FUSE)

MODEL, PLAIN, MOVING = "tests/tiny-dsv3", "org/plain", "org/moving"
QUICK = 60.0  # seconds: "at once", with room for a loaded machine (a hang guard)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("hubroot")
    shutil.copytree(tiny_model, root / MODEL)
    for repo in (PLAIN, MOVING):
        (root / repo).mkdir(parents=True)
        shutil.copy(tiny_model / "config.json", root / repo / "config.json")
        (root / repo / "weights.safetensors").write_bytes(bytes(range(256)) * 64)
        (root / repo / "notes").mkdir()
        (root / repo / "notes" / "a.txt").write_text("a note\n")
    gated = root / "org" / "gated"
    gated.mkdir()
    (gated / "config.json").write_text("{}\n")
    (gated / ".gated").write_text("")
    with TestHub(root) as hub:
        hub.root_dir = root
        yield hub


@pytest.fixture(scope="module")
def cache(hub, tmp_path_factory):
    """The namespace's cache for the three repos, read-only; (mountpoint, shas)."""
    ns = HfCacheNamespace(hub_resolver(hub.url, None))
    shas = {}
    try:
        for repo in (MODEL, PLAIN, MOVING):
            shas[repo] = ns.lookup(f"/{RepoKey('model', repo).folder}/refs/main").data.decode()
        src = tmp_path_factory.mktemp("hfcache-src")
        markers = {RepoKey("model", r).folder: ["adapter_config.json"] for r in shas}
        materialize(ns, src, lambda f: _content(hub, shas, f), markers)
    finally:
        ns.close()
    ro = tmp_path_factory.mktemp("hfcache-ro")
    subprocess.run(["mount", "--bind", str(src), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        probe = ro / "probe"
        with pytest.raises(OSError) as caught:
            probe.write_text("x")
        assert caught.value.errno == errno.EROFS
        yield ro, shas
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def _content(hub, shas: dict, f) -> bytes:
    """A file's bytes, as the test hub serves them (the repo it belongs to has f.path)."""
    for repo in shas:
        candidate = hub.root_dir / repo / f.path
        if candidate.is_file():
            return candidate.read_bytes()
    raise FileNotFoundError(f.path)


def _tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def _in_snapshot(cache_dir: Path, repo: str, sha: str, name: str = "") -> str:
    return str(cache_dir / RepoKey("model", repo).folder / "snapshots" / sha / name).rstrip("/")


def test_offline_huggingface_hub_reads_the_cache(hub, cache, tmp_path):
    ro, shas = cache
    files = ["config.json", "weights.safetensors", "notes/a.txt"]
    hub.reset_log()
    out = run_hf(OFFLINE_HUB, {"repo": PLAIN, "sha": shas[PLAIN], "files": files, "no_exist": "adapter_config.json",
                               "unknown": "org/unknown", "gated": "org/gated"},
                 cache=ro, endpoint=hub.url, home=tmp_path, offline=True)
    assert out["download"] == {f: _in_snapshot(ro, PLAIN, shas[PLAIN], f) for f in files}
    assert out["by_sha"] == out["try"] == _in_snapshot(ro, PLAIN, shas[PLAIN], "config.json")
    assert out["snapshot"] == _in_snapshot(ro, PLAIN, shas[PLAIN])
    assert out["try_absent"] is None and out["try_no_exist"] is True
    assert out["tree"] == sorted(files)
    for what in ("unknown", "unknown_snapshot", "gated"):
        kind, message, _, seconds = out[what]
        assert kind == "LocalEntryNotFoundError" and seconds < QUICK, (what, out[what])
    assert out["scan"]["repos"] == sorted([MODEL, PLAIN, MOVING]) and out["scan"]["warnings"] == []
    assert out["scan"]["files"] == sum(1 for r in (MODEL, PLAIN, MOVING) for f in (hub.root_dir / r).rglob("*")
                                       if f.is_file())
    assert hub.requests() == []  # offline: not one request


def test_offline_transformers_loads_by_repo_id(hub, cache, tiny_model, tmp_path):
    ro, shas = cache
    hub.reset_log()
    out = run_hf(TRANSFORMERS_BY_ID, {"repo": MODEL, "local": str(tiny_model)},
                 cache=ro, endpoint=hub.url, home=tmp_path, offline=True)
    assert out["equal"] is True and out["shape"][:2] == [1, 7]
    assert out["config"] == _in_snapshot(ro, MODEL, shas[MODEL], "config.json")
    assert hub.requests() == []


def test_online_with_the_ref_current_returns_the_cache_and_writes_nothing(hub, cache, tmp_path):
    ro, shas = cache
    before = _tree(ro)
    files = ["config.json", "weights.safetensors"]
    hub.reset_log()
    out = run_hf(ONLINE, {"repo": PLAIN, "files": files, "gated": "org/gated", "unknown": "org/unknown"},
                 cache=ro, endpoint=hub.url, home=tmp_path, offline=False)
    assert out["download"] == {f: {"value": _in_snapshot(ro, PLAIN, shas[PLAIN], f)} for f in files}
    assert out["snapshot"] == {"value": _in_snapshot(ro, PLAIN, shas[PLAIN])}
    assert out["config"] is None
    assert out["gated"][0] == "GatedRepoError" and out["gated"][3] < QUICK
    assert out["unknown"][0] == "RepositoryNotFoundError" and out["unknown"][3] < QUICK
    assert _tree(ro) == before
    assert hub.bytes_sent("cdn") == 0 and not hub.requests(server="cdn")  # nothing downloaded
    assert not hub.requests(path_contains="/tree/")  # the listing came from trees/{sha}.json
    asked = {(r.method, r.path.split("?")[0]) for r in hub.requests(server="hub", path_contains="org/plain")}
    assert asked <= {("GET", "/api/models/org/plain"), ("GET", "/api/models/org/plain/revision/main"),
                     ("HEAD", "/org/plain/resolve/main/config.json"),
                     ("HEAD", "/org/plain/resolve/main/weights.safetensors")}, asked


def test_online_after_the_hub_moved_on_is_a_read_only_error_at_once(hub, cache, tmp_path):
    ro, shas = cache
    (hub.root_dir / MOVING / "config.json").write_text('{"model_type": "llama", "moved": true}\n')
    assert hub.commit_sha(MOVING) != shas[MOVING]
    out = run_hf(ONLINE, {"repo": MOVING, "files": ["config.json", "weights.safetensors"], "gated": "org/gated",
                          "unknown": "org/unknown"}, cache=ro, endpoint=hub.url, home=tmp_path, offline=False)
    for f in ("config.json", "weights.safetensors"):
        kind, message, code, seconds = out["download"][f]["error"]
        assert code == errno.EROFS and "Read-only file system" in message and seconds < QUICK, out["download"][f]
    kind, message, code, seconds = out["config"]
    assert code == errno.EROFS and seconds < QUICK, out["config"]  # transformers re-raises EROFS as it is
    assert out["snapshot"]["error"][2] == errno.EROFS
