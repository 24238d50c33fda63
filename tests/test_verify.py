"""``netmount verify`` on real mounts of the test hub, with a hub that lies.

The ``lie`` fault answers a range with the right status, Content-Range and length but one
flipped byte: no per-request check sees it, only the file's digest does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from netmount.core.units import format_size
from netmount.dev.testhub.repo import git_blob_sha1

from conftest import run_cli, settle, sha256_file
from faultkit import BLOCK, fhub, fm  # noqa: F401 (fixtures)

REPO = "verify/model"


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory):
    """verify/model: LFS shards (.bin by suffix, one safetensors), regular files (git blob
    sha1), and a 32-block LFS file for partial reads."""
    import numpy as np
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("verifyroot")
    repo = root / "verify" / "model"
    repo.mkdir(parents=True)
    for i in range(1, 4):
        (repo / f"model-0000{i}-of-00003.bin").write_bytes(os.urandom(5 * BLOCK + 1000 * i))
    rng = np.random.default_rng(7)
    save_file({"w": rng.standard_normal((512, 600), dtype=np.float32)}, str(repo / "model.safetensors"))
    (repo / "big.bin").write_bytes(os.urandom(32 * BLOCK))
    (repo / "config.json").write_text(json.dumps({"verify": True}))
    (repo / "tokenizer.json").write_bytes(os.urandom(300_000).hex().encode()[:300_000])  # 2 blocks
    (repo / "empty.txt").write_bytes(b"")
    return root


def _src(fault_root) -> Path:
    return fault_root / "verify" / "model"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lies(src: Path, lfs: list[str], regular: list[str]) -> list[dict]:
    rules = [{"kind": "lie", "path_contains": _sha256(src / name)} for name in lfs]  # CDN /blobs/<sha256>
    return rules + [{"kind": "lie", "server": "hub", "path_contains": f"/{name}"} for name in regular]


def _verify(mp: Path, *args: str) -> tuple[int, list[dict]]:
    done = run_cli("verify", str(mp), *args, "--json")
    assert not done.stderr.strip() or "Traceback" not in done.stderr, done.stderr
    return done.returncode, {r["path"]: r for r in json.loads(done.stdout)}


def _per_file(stats: dict) -> dict:
    return {f["path"]: f for f in stats["files"]}


def test_lying_hub_is_caught_dropped_and_healed(fm, fhub, fault_root):
    src = _src(fault_root)
    mp = fm.mount(REPO)
    bad = ["model-00002-of-00003.bin", "model.safetensors", "tokenizer.json"]
    fhub.set_faults(_lies(src, bad[:2], bad[2:]))
    names = sorted(p.name for p in src.iterdir() if p.name != "big.bin")
    for name in names[:-2]:  # the others are left to --fetch
        (mp / name).read_bytes()
    assert sum(r["hits"] for r in fhub.faults()) >= 1, fhub.faults()
    assert sha256_file(mp / bad[0]) != _sha256(src / bad[0])  # the lie went through unseen
    settle(mp)

    done = run_cli("verify", str(mp), "--fetch", *names)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    mismatched = sorted(line.split(":")[0] for line in lines[:-1])
    assert mismatched == sorted(bad), done.stdout
    assert "model-00002-of-00003.bin: sha256 mismatch," in done.stdout
    assert "tokenizer.json: git blob sha1 mismatch," in done.stdout
    assert "of cached blocks dropped; the next read fetches them again" in done.stdout
    assert lines[-1].startswith(f"3 of {len(names)} files checked did not match"), lines[-1]
    stats = _per_file(fm.stats(mp))
    for name in bad:
        assert stats[name]["cached_bytes"] == 0 and not stats[name]["verified"], name
    for name in set(names) - set(bad):
        assert stats[name]["cached_bytes"] == stats[name]["size"] and stats[name]["verified"], name

    fhub.clear_faults()
    for name in bad:  # the same mount, the same kernel: memory tiers and page cache forgot
        assert sha256_file(mp / name) == _sha256(src / name), name
    settle(mp)
    code, records = _verify(mp, *names)
    assert code == 0 and {r["status"] for r in records.values()} == {"ok"}, records
    assert records["config.json"]["expected"] == git_blob_sha1((src / "config.json").read_bytes())
    assert records["config.json"]["algorithm"] == "git blob sha1"
    assert records["model.safetensors"]["actual"] == _sha256(src / "model.safetensors")
    assert records["empty.txt"]["status"] == "ok"
    stats = fm.stats(mp)
    assert stats["verified_files"] == len(names)
    text = run_cli("stats", str(mp))
    assert f"{len(names)} files verified" in text.stdout, text.stdout


def test_partial_file_is_not_checked_and_nothing_is_fetched(fm, fhub, fault_root):
    mp = fm.mount(REPO)
    with open(mp / ".netmount" / "raw" / "big.bin", "rb") as fh:  # raw: no daemon prefetch
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        assert len(os.pread(fh.fileno(), BLOCK, 4 * BLOCK)) == BLOCK
    (mp / "config.json").read_bytes()
    settle(mp)
    cached = _per_file(fm.stats(mp))["big.bin"]["cached_bytes"]
    assert 0 < cached < 32 * BLOCK
    fhub.reset_log()
    done = run_cli("verify", str(mp), "big.bin", "config.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"big.bin: partial ({100 * cached // (32 * BLOCK)}% cached), not checked" in done.stdout
    hashed = format_size((fault_root / REPO / "config.json").stat().st_size)
    last = done.stdout.strip().splitlines()[-1]
    assert last == f"1 files checked, all match ({hashed} hashed), 1 partial (not checked)"
    code, records = _verify(mp, "--match", "*.bin", "--match", "config.*")
    assert code == 0
    assert records["big.bin"]["status"] == "partial" and records["big.bin"]["cached_bytes"] == cached
    assert records["big.bin"]["actual"] is None
    assert all(records[f"model-0000{i}-of-00003.bin"]["status"] == "partial" for i in (1, 2, 3))
    assert records["config.json"]["status"] == "ok"
    settle(mp)
    assert fhub.requests() == [], fhub.requests()  # stats and hashing never touch the network


def test_a_drop_is_seen_by_another_mount_on_the_same_cache(fm, fhub, fault_root):
    import netmount

    src = _src(fault_root)
    name = "model-00001-of-00003.bin"
    a = fm.mount(REPO, name="a")
    b = fm.mount(REPO, name="b")  # same cache dir (fm.cache_dir)
    fhub.set_faults(_lies(src, [name], []))
    wrong = (a / name).read_bytes()
    settle(a)
    assert (b / name).read_bytes() == wrong  # b reads a's blocks (or its own lies)
    settle(b)
    records = {r["path"]: r for r in netmount.verify(str(a), [name])}
    assert records[name]["status"] == "mismatch" and records[name]["dropped_bytes"] > 0
    fhub.clear_faults()
    assert sha256_file(b / name) == _sha256(src / name)  # b's memory and page cache forgot too
    settle(b)
    assert [r["status"] for r in netmount.verify(b, [str(b / name)])] == ["ok"]
    assert _per_file(fm.stats(a))[name]["verified"]  # one store: the mark is seen by both


@pytest.mark.parametrize("args, message", [
    (["{tmp}"], "is not a netmount mount"),
    (["{mp}", "nope.bin"], "nope.bin: no such file"),
    (["{mp}", "--match", "*.gguf"], "matches no file"),
    (["{mp}", "/etc/passwd"], "not under the mount"),
])
def test_bad_input_is_one_line(fm, tmp_path, args, message):
    mp = fm.mount(REPO)
    done = run_cli("verify", *[a.format(tmp=tmp_path, mp=mp) for a in args])
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr


def test_paths_may_follow_options():
    from netmount.commands.cli import build_parser

    args = build_parser().parse_args(["verify", "/m", "--fetch", "a.bin", "--match", "*.json", "b/c.json"])
    assert (args.mountpoint, args.paths, args.match, args.fetch) == ("/m", ["a.bin", "b/c.json"], ["*.json"], True)


def test_reader_forget_drops_every_tier_of_one_file():
    """Wrong bytes in every in-memory tier and the store: after drop + forget, a read is
    fetched again (the daemon's side of a mismatch, without a mount)."""
    from cache import MemoryBlockStore
    from netmount.read.reader import BlockReader, ExactRead
    from netmount.remote.hub import RemoteFile
    from netmount.remote.memory import MemoryFetcher

    bs = 64 << 10
    right = os.urandom(6 * bs + 5)
    wrong = bytes(b ^ 0xFF for b in right)
    fetcher = MemoryFetcher({"a.safetensors": wrong, "b.bin": right})
    store = MemoryBlockStore(bs)
    reader = BlockReader(store, fetcher, head_bytes=bs // 4)
    a = RemoteFile("a.safetensors", len(right), "c" * 64, True)
    b = RemoteFile("b.bin", len(right), "d" * 64, True)
    assert reader.read(a, 0, 100) == wrong[:100]  # the head tier
    assert reader.read(a, 3 * bs + 10, 50, exact=ExactRead()) == wrong[3 * bs + 10:3 * bs + 60]  # an extent
    assert reader.read(a, 0, len(right)) == wrong  # blocks: memory and store
    assert reader.read(b, 0, len(right)) == right
    assert reader.drain(10)
    fetcher.contents["a.safetensors"] = right
    assert reader.read(a, 0, len(right)) == wrong  # still served from the tiers
    assert store.drop(a.content_id) > 0
    reader.forget(a)
    assert reader.read(a, 0, 100) == right[:100]
    assert reader.read(a, 3 * bs + 10, 50, exact=ExactRead()) == right[3 * bs + 10:3 * bs + 60]
    assert reader.read(a, 0, len(right)) == right
    assert store.cached_bytes(b.content_id) == len(right)  # the other file kept its blocks
    reader.close()
