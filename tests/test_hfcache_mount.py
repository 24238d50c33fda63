"""``netmount mount --hf-cache``: the Hub as a live, read-only Hugging Face cache (issue 22).

Real parts only: the kernel FUSE mount through the CLI, the test hub in another process
(programs read the mount through mmap) serving folder repos and the ``synthetic/repo-{n}``
family, and stock huggingface_hub, transformers and sentence-transformers run with
``HF_HUB_CACHE`` on the mount (``hfcache_checks.py``'s scripts, in child processes).

- offline, by repo id in one mount: the tiny DeepSeek-V3 through transformers (logits as a
  local load; its MTP shard costs its header's block), a sentence-embedding model through
  sentence-transformers (embeddings as a local load); ``snapshot_download`` returns the
  folder in the mount; an unknown repo is huggingface_hub's own error within seconds, a gated
  one too, and neither is listed;
- online with the ref current: the mount's paths, nothing written, nothing downloaded;
- a moved ref (see README, "A branch that moves"): online, the new commit's file, written
  nowhere; offline, the commit ``refs/main`` names, which follows the branch after
  ``--refs-ttl``;
- two repos that share files fetch each once (the hub's byte log), and stats say so;
- 1,000 repos looked up: the daemon's RSS stays bounded (and what it holds of them).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from netmount.dev.demo import find_mtp_shard, mtp_verdict
from netmount.dev.testhub import family
from netmount.mounting.hfcache import RepoKey
from netmount.mounting.stats import read_stats, wait_idle

from conftest import run_cli, within, write_big_safetensors
from hfcache_checks import OFFLINE_HUB, ONLINE, READ, SENTENCE_BY_ID, SENTENCE_MODEL, TRANSFORMERS_BY_ID, run_hf
from hubproc import HubProcess

pytestmark = pytest.mark.fuse

MODEL, SENTENCES, MOVING, BIG = "tests/tiny-dsv3", "tests/tiny-sentences", "org/moving", "tests/big"
QUICK = 20.0  # seconds: "within seconds", with room for a loaded machine


@pytest.fixture(scope="module")
def sentence_model(tmp_path_factory) -> Path:
    """A tiny sentence-embedding model, built by sentence-transformers itself (BERT + mean pooling)."""
    out, work = tmp_path_factory.mktemp("sentences"), tmp_path_factory.mktemp("sentences-work")
    words = "the a quick brown fox jumps over lazy dog netmount mounts hub cache model lazily".split()
    files = run_hf(SENTENCE_MODEL, {"out": str(out), "work": str(work), "words": words}, cache=work / "hub",
                   endpoint="http://127.0.0.1:9", home=work, offline=True)
    assert "modules.json" in files and "model.safetensors" in files and "1_Pooling/config.json" in files
    return out


@pytest.fixture(scope="module")
def hfhub(tmp_path_factory, tiny_model, sentence_model):
    root = tmp_path_factory.mktemp("hubroot")
    shutil.copytree(tiny_model, root / MODEL)
    shutil.copytree(sentence_model, root / SENTENCES)
    (root / MOVING).mkdir(parents=True)
    (root / MOVING / "config.json").write_text('{"version": 1}\n')
    write_big_safetensors(root)  # tests/big: one ~40 MB shard
    with HubProcess(root, synthetic_repos=True) as hub:
        hub.root_dir = root
        yield hub


class HfMounts:
    """``netmount mount --hf-cache`` through the CLI, each mount with a cache of its own."""

    def __init__(self, tmp_path: Path, hub) -> None:
        self.tmp_path, self.hub = tmp_path, hub
        self.mounted: list[Path] = []

    def mount(self, *extra: str, name: str = "hf") -> Path:
        mp = self.tmp_path / name
        mp.mkdir()
        env = {"HF_ENDPOINT": self.hub.url, "NETMOUNT_CACHE_DIR": str(self.tmp_path / f"{name}-cache"),
               "HF_TOKEN": "", "HF_HUB_OFFLINE": "1"}  # (offline mode never reaches the daemon)
        done = run_cli("mount", "--hf-cache", str(mp), *extra, env=env)
        assert done.returncode == 0, done.stderr
        assert f"HF_HUB_CACHE={mp}" in done.stdout
        self.mounted.append(mp)
        return mp

    def cleanup(self) -> None:
        from netmount.mounting.mounts import force_unmount

        for mp in self.mounted:
            force_unmount(str(mp), lazy=True)


@pytest.fixture
def hf(tmp_path, hfhub):
    mounts = HfMounts(tmp_path, hfhub)
    yield mounts
    mounts.cleanup()


def snapshot(mp: Path, repo: str, sha: str, name: str = "") -> str:
    return str(mp / RepoKey("model", repo).folder / "snapshots" / sha / name).rstrip("/")


def sha_of(mp: Path, repo: str) -> str:
    return (mp / RepoKey("model", repo).folder / "refs" / "main").read_text()


def test_stock_loaders_by_repo_id_offline_two_repos_one_mount(hf, hfhub, tiny_model, sentence_model, tmp_path):
    """transformers loads the tiny DeepSeek-V3 by id (the logits of a local load) and reads no
    more of its MTP shard than the block its header is in; sentence-transformers loads a second
    repo by id in the same mount (the embeddings of a local load); stats group them by repo."""
    mp = hf.mount("--repo", MODEL, "--block-size", "128K")
    assert os.listdir(mp) == [RepoKey("model", MODEL).folder]  # pinned: listed from the start
    out = run_hf(TRANSFORMERS_BY_ID, {"repo": MODEL, "local": str(tiny_model)}, cache=mp, endpoint=hfhub.url,
                 home=tmp_path, offline=True)
    sha = sha_of(mp, MODEL)
    assert out["equal"] is True and out["config"] == snapshot(mp, MODEL, sha, "config.json")
    out = run_hf(SENTENCE_BY_ID, {"repo": SENTENCES, "local": str(sentence_model)}, cache=mp, endpoint=hfhub.url,
                 home=tmp_path, offline=True)
    assert out["equal"] is True and out["shape"] == [2, 32]
    assert wait_idle(mp)
    stats = read_stats(snapshot(mp, MODEL, sha))  # the snapshot's stats: a plain mount's shape
    assert stats["root"] == f"{RepoKey('model', MODEL).folder}/snapshots/{sha}" and stats["revision"] == sha
    mtp = find_mtp_shard(tiny_model)
    ok, line = mtp_verdict(stats, dataclasses.replace(mtp, path=f"{stats['root']}/{mtp.path}"))
    assert ok, line
    whole = read_stats(mp)
    repos = {r["repo"]: r for r in whole["repos"]}
    assert set(repos) == {MODEL, SENTENCES} and whole["mode"] == "hf-cache"
    assert repos[SENTENCES]["files"] >= 4 and repos[SENTENCES]["bytes_fetched"] > 0
    assert sum(r["bytes_fetched"] for r in repos.values()) == whole["bytes_fetched"]
    table = run_cli("stats", str(mp)).stdout
    assert "as a Hugging Face cache" in table and MODEL in table and SENTENCES in table


def test_offline_huggingface_hub_and_what_is_not_there(hf, hfhub, tmp_path):
    """snapshot_download returns the folder in the mount; ``.no_exist``, the cached tree and
    scan_cache_dir answer; an unknown repo and a gated one (no token) are huggingface_hub's own
    "not in the cache" error within seconds, asked of the Hub once, and never listed."""
    mp = hf.mount()
    repo, gated = "synthetic/repo-3", "synthetic/gated-3"
    files = ["config.json", "model.safetensors", "tokenizer.json", "embed.safetensors"]
    args = {"repo": repo, "sha": "", "files": files, "no_exist": "adapter_config.json", "unknown": "org/unknown",
            "gated": gated}
    args["sha"] = sha_of(mp, repo)
    hfhub.reset_log()
    out = run_hf(OFFLINE_HUB, args, cache=mp, endpoint=hfhub.url, home=tmp_path, offline=True)
    sha = args["sha"]
    assert out["download"] == {f: snapshot(mp, repo, sha, f) for f in files}
    assert out["snapshot"] == snapshot(mp, repo, sha) and out["try_no_exist"] is True
    assert out["try_absent"] == "no-exist"  # every path a commit lacks has its .no_exist marker: known absent
    assert out["tree"] == sorted(files)
    for what in ("unknown", "unknown_snapshot", "gated"):
        kind, _message, _errno, seconds = out[what]
        assert kind == "LocalEntryNotFoundError" and seconds < QUICK, (what, out[what])
    assert out["scan"] == {"repos": [repo], "warnings": [], "files": len(files)}
    assert sorted(os.listdir(mp)) == [RepoKey("model", repo).folder]  # the gated one is not listed
    for _ in range(5):  # ENOENT, remembered: asked of the Hub once
        for name in ("org/unknown", gated):
            with pytest.raises(FileNotFoundError):
                within(QUICK, os.stat, mp / RepoKey("model", name).folder)
    for name in ("org/unknown", gated):
        assert len(hfhub.requests(server="hub", path_contains=f"/api/models/{name}/revision/main")) == 1


def test_online_with_the_ref_current_returns_the_mount_and_writes_nothing(hf, hfhub, tmp_path):
    mp = hf.mount()
    repo = MODEL
    files = ["config.json", "model-00001-of-00011.safetensors"]
    sha = sha_of(mp, repo)
    before = sorted(str(p) for p in mp.rglob("*"))
    hfhub.reset_log()
    out = run_hf(ONLINE, {"repo": repo, "files": files, "gated": "synthetic/gated-4", "unknown": "org/unknown"},
                 cache=mp, endpoint=hfhub.url, home=tmp_path, offline=False)
    assert out["download"] == {f: {"value": snapshot(mp, repo, sha, f)} for f in files}
    assert out["snapshot"] == {"value": snapshot(mp, repo, sha)}
    assert out["config"] is None  # AutoConfig loaded
    assert out["gated"][0] == "GatedRepoError" and out["unknown"][0] == "RepositoryNotFoundError"
    assert sorted(str(p) for p in mp.rglob("*")) == before  # nothing written, nothing new resolved
    assert not hfhub.requests(server="cdn")  # nothing downloaded (AutoConfig's config.json: read by the mount)


def test_a_moved_ref_online_gets_the_new_commit_offline_follows_the_ref(hf, hfhub, tmp_path):
    """What the README decides: online, huggingface_hub asks the Hub for the commit, finds
    its snapshot folder in the mount (resolved on lookup) and returns the new file, written
    nowhere; offline, ``refs/main`` names the commit, checked again after ``--refs-ttl``."""
    mp = hf.mount(name="hf")
    fresh = hf.mount("--refs-ttl", "0", name="hf-fresh")
    config = hfhub.root_dir / MOVING / "config.json"
    config.write_text('{"version": 1}\n')
    args = {"repo": MOVING, "file": "config.json"}
    old = sha_of(mp, MOVING)
    first = run_hf(READ, args, cache=mp, endpoint=hfhub.url, home=tmp_path, offline=True)
    assert first == {"value": [snapshot(mp, MOVING, old, "config.json"), '{"version": 1}\n']}
    config.write_text('{"version": 2}\n')
    new = hfhub.commit_sha(MOVING)
    assert new != old
    online = run_hf(READ, args, cache=mp, endpoint=hfhub.url, home=tmp_path, offline=False)
    assert online == {"value": [snapshot(mp, MOVING, new, "config.json"), '{"version": 2}\n']}
    assert sha_of(mp, MOVING) == old  # written nowhere: the ref follows the Hub after --refs-ttl
    assert sorted(os.listdir(Path(snapshot(mp, MOVING, old)).parent)) == sorted([old, new])
    assert sorted(os.listdir(mp / RepoKey("model", MOVING).folder / "refs")) == ["main"]
    offline = run_hf(READ, args, cache=mp, endpoint=hfhub.url, home=tmp_path, offline=True)
    assert offline == first  # the ref as checked last (within --refs-ttl): the old commit, still readable
    followed = run_hf(READ, args, cache=fresh, endpoint=hfhub.url, home=tmp_path, offline=True)
    assert followed == {"value": [snapshot(fresh, MOVING, new, "config.json"), '{"version": 2}\n']}


def test_two_repos_sharing_files_fetch_them_once(hf, hfhub):
    """The family's tokenizer.json (a regular file) and embed.safetensors (LFS) are the same in
    every repo: read in two repos, each crosses the network once, and stats say so."""
    mp = hf.mount()
    a, b = "synthetic/repo-11", "synthetic/repo-12"
    shared = family.shared_files()
    hfhub.reset_log()
    for repo in (a, b):
        sha = sha_of(mp, repo)
        for name, content in shared.items():
            assert Path(snapshot(mp, repo, sha, name)).read_bytes() == content
        assert Path(snapshot(mp, repo, sha, "config.json")).read_bytes() == family.own_files(int(repo[-2:]))[
            "config.json"]
    assert wait_idle(mp)
    for name, content in shared.items():
        where = name if name.endswith(".json") else _sha256(content)  # a regular file, or an LFS blob on the CDN
        sent = [r.body_bytes for r in hfhub.requests(path_contains=where) if r.status in (200, 206)]
        assert sum(sent) == len(content), (name, sent)
    stats = read_stats(mp)
    assert stats["shared"] == {"contents": 2, "files": 4, "bytes": sum(len(c) for c in shared.values())}
    by_path = {f["path"]: f for f in stats["files"]}
    for name, content in shared.items():
        twins = [by_path[snapshot(mp, r, sha_of(mp, r), name)[len(str(mp)) + 1:]] for r in (a, b)]
        assert sorted(t["fetched_bytes"] for t in twins) == [0, len(content)]
        assert twins[0]["shared_with"] == [twins[1]["path"]]
    rows = {r["repo"]: r for r in stats["repos"]}
    assert rows[a]["shared_bytes"] == rows[b]["shared_bytes"] == sum(len(c) for c in shared.values())


def _sha256(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()


def test_a_thousand_repos_keep_the_daemon_rss_bounded(hf, hfhub):
    """1,000 distinct repos looked up (each resolved: its info and listing) after 300 that fill
    the catalog (256 repos): the daemon holds no more of them than its bounds, and its RSS grows
    by less than ``RSS_BOUND``.  Measured (one daemon, 6,000 repos in batches of 1,000): 41 MiB
    at start, 55 MiB after the first 1,000 (huggingface_hub imported), then +0.3 MiB per 1,000
    (the root's list of names, up to 10,000); an unbounded catalog holds ~3 KB more per repo of
    this family, a leak of a thread or a session per repo far more."""
    mp = hf.mount()
    pid = read_stats(mp)["pid"]

    def look(n: int) -> bool:
        return os.path.isdir(mp / RepoKey("model", f"synthetic/repo-{n}").folder)

    def look_all(numbers) -> None:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            assert all(pool.map(look, numbers))

    within(600, look_all, range(1000, 1300))  # imports, threads, a full catalog
    before = _rss(pid)
    within(1200, look_all, range(2000, 3000))
    after = _rss(pid)
    usage = read_stats(mp)["hf_cache"]
    assert usage == {"repos": 256, "entries": 256 * 6, "names": 1300, "resolving": 0, "refs_ttl": 600.0}
    assert after - before < RSS_BOUND, f"RSS {before >> 20} MiB -> {after >> 20} MiB over 1,000 repos"


RSS_BOUND = 16 << 20  # bytes


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


def test_stats_json_of_a_snapshot_is_one_control_file(hf):
    mp = hf.mount()
    sha = sha_of(mp, "synthetic/repo-5")
    folder = RepoKey("model", "synthetic/repo-5").folder
    raw = json.loads((mp / ".netmount" / "stats" / f"{folder}@{sha}.json").read_text())
    assert raw["repo"] == "synthetic/repo-5" and raw["root"] == f"{folder}/snapshots/{sha}"
    assert sorted(f["path"] for f in raw["files"]) == sorted(f"{folder}/snapshots/{sha}/{n}" for n in (
        "config.json", "embed.safetensors", "model.safetensors", "tokenizer.json"))
    with pytest.raises(FileNotFoundError):
        (mp / ".netmount" / "stats" / f"{folder}@{'0' * 40}.json").read_text()


def test_partial_reads_stay_partial_and_the_commands_take_a_snapshot_folder(hf, hfhub):
    """One tensor read through safetensors costs its bytes, the header and the kernel's read
    around them, as on a plain mount (test_mount.py); ``netmount tensors``, ``prefetch --match``,
    ``verify`` and ``stats`` take the snapshot folder, globs on paths in it."""
    from safetensors import safe_open

    mp = hf.mount()
    sha = sha_of(mp, BIG)
    folder, src = Path(snapshot(mp, BIG, sha)), hfhub.root_dir / BIG / "model.safetensors"
    hfhub.reset_log()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as sf:
        got = sf.get_tensor("layer.5.weight")
    with safe_open(str(src), framework="pt") as sf:
        assert (got == sf.get_tensor("layer.5.weight")).all()
    start, end = _tensor_span(src, "layer.5.weight")
    fetched = hfhub.bytes_sent(server="cdn")
    assert end - start <= fetched <= (128 << 10) + (end - start) + (128 << 10) + (512 << 10), (fetched, end - start)

    done = run_cli("tensors", str(folder), "--match", "layer.6.*", "--json")
    [record] = json.loads(done.stdout)
    assert record["url"] == f"{hfhub.url}/{BIG}/resolve/{sha}/model.safetensors", record
    assert (record["start"], record["end"]) == _tensor_span(src, "layer.6.weight")
    assert wait_idle(mp)
    hfhub.reset_log()
    done = run_cli("prefetch", str(folder), "--match", "layer.6.*", "--quiet")
    assert done.returncode == 0 and "1 tensors" in done.stdout, done.stdout + done.stderr
    a, b = _tensor_span(src, "layer.6.weight")
    mib = 1 << 20  # the mount's block
    assert hfhub.bytes_sent(server="cdn") <= ((b - 1) // mib - a // mib + 1) * mib  # the tensor's blocks at most
    shard = next(f for f in read_stats(folder)["files"] if f["path"].endswith("model.safetensors"))
    assert any(lo <= a and b <= hi for lo, hi in shard["cached_ranges"]), shard["cached_ranges"]

    done = run_cli("verify", str(folder), "--json", "--match", "*.json", "--fetch")
    assert done.returncode == 0, done.stderr
    assert [(r["path"], r["status"]) for r in json.loads(done.stdout)] == [
        (f"{RepoKey('model', BIG).folder}/snapshots/{sha}/config.json", "ok")]
    stats = json.loads(run_cli("stats", str(folder), "--json").stdout)
    assert stats["repo"] == BIG and stats["revision"] == sha and len(stats["files"]) == 2


def _tensor_span(path: Path, name: str) -> tuple[int, int]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def test_the_python_api_and_bad_input(hfhub, tmp_path, monkeypatch):
    """``netmount.mount_hf_cache`` as a context manager (a temp mountpoint, removed after); a
    missing ``--repo`` fails the mount (nothing mounted); per-repo options are one-line errors."""
    import netmount
    from netmount.core import errors
    from netmount.mounting.mounts import find_mount

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with netmount.mount_hf_cache(repos=[MODEL], endpoint=hfhub.url, token=False, cache_dir=tmp_path / "cache") as path:
        assert os.listdir(path) == [RepoKey("model", MODEL).folder] and find_mount(path)
    assert not os.path.exists(path)
    with pytest.raises(errors.RepoNotFound):
        netmount.mount_hf_cache(repos=["org/missing"], endpoint=hfhub.url, token=False, cache_dir=tmp_path / "cache")
    mp = tmp_path / "mp"
    mp.mkdir()
    env = {"HF_ENDPOINT": hfhub.url, "NETMOUNT_CACHE_DIR": str(tmp_path / "cache"), "HF_TOKEN": ""}
    for argv, says in ((["--repo", "org/missing"], "repository org/missing not found"),
                       (["--reshard", "layer"], "--reshard does not go with it"),
                       (["--refs-ttl", "soon"], "invalid --refs-ttl")):
        done = run_cli("mount", "--hf-cache", str(mp), *argv, env=env)
        assert done.returncode != 0 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert not find_mount(str(mp)) and os.listdir(mp) == []
    done = run_cli("mount", "--hf-cache", MODEL, str(mp), env=env)
    assert done.returncode != 0 and "REPO does not go with it" in done.stderr, done.stderr


def test_verify_drops_wrong_bytes_for_every_repo_that_shares_them(hf, hfhub):
    """A hub that lies (right status, Content-Range and length, one byte flipped) about a file
    two repos share: both read the wrong bytes (one fetch, one block cache); ``netmount verify``
    of one snapshot finds the mismatch and drops the content — the other repo's copy in the
    kernel's page cache too — so both read right afterwards."""
    mp = hf.mount()
    content = family.shared_files()["embed.safetensors"]
    repos = ("synthetic/repo-21", "synthetic/repo-22")
    files = [Path(snapshot(mp, r, sha_of(mp, r), "embed.safetensors")) for r in repos]
    hfhub.set_faults([{"kind": "lie", "path_contains": _sha256(content)}])
    try:
        assert [f.read_bytes() == content for f in files] == [False, False]
        assert wait_idle(mp)
        done = run_cli("verify", str(files[0].parent), "embed.safetensors", "--json")
        [record] = json.loads(done.stdout)
        assert done.returncode == 1 and record["status"] == "mismatch" and record["dropped_bytes"] > 0, done.stdout
    finally:
        hfhub.clear_faults()
    assert [f.read_bytes() == content for f in files] == [True, True]
