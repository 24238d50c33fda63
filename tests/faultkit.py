"""Shared by the fault, crash and security tests: a private hub with fault rules, mounts
tuned for quick retries, and a check that every block in a cache dir is the source's."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from netmount.core.procs import wait_exit
from netmount.dev.testhub.repo import git_blob_sha1, is_lfs

from conftest import Mounter, sha256_file

# small retries and timeouts, so a fault run takes seconds (read by netmount/fetch.py)
QUICK = {"NETMOUNT_FETCH_TIMEOUT": "1", "NETMOUNT_FETCH_RETRIES": "3", "NETMOUNT_FETCH_BACKOFF": "0.05"}
CACHE_SIZE = 1 << 30
BLOCK = 256 << 10


def write_fault_repos(root: Path) -> None:
    """faults/model: an LFS binary (CDN path) and regular files (hub /resolve/ path);
    faults/gated: a gated repo with an LFS file (Authorization must stop at the hub)."""
    repo = root / "faults" / "model"
    repo.mkdir(parents=True)
    (repo / "weights.bin").write_bytes(os.urandom(3 * (1 << 20) + 777))
    (repo / "notes.txt").write_bytes(os.urandom(300_000))  # regular file, two blocks
    (repo / "config.json").write_text(json.dumps({"fault": True}))
    gated = root / "faults" / "gated"
    gated.mkdir(parents=True)
    (gated / ".gated").write_text("")
    (gated / "config.json").write_text("{}")
    (gated / "model.bin").write_bytes(os.urandom(700_000))
    big = root / "faults" / "big"  # for crashes, cache limits and concurrency
    big.mkdir(parents=True)
    for i in range(4):
        (big / f"shard-{i}.bin").write_bytes(os.urandom(6 * (1 << 20) + 1000 * i))
    corrupt = root / "faults" / "corrupt"
    corrupt.mkdir(parents=True)
    (corrupt / "absurd.safetensors").write_bytes((1 << 62).to_bytes(8, "little") + os.urandom(400_000))
    (corrupt / "garbage.safetensors").write_bytes((1000).to_bytes(8, "little") + os.urandom(300_000))
    lies = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 1 << 40]}}).encode()
    (corrupt / "lies.safetensors").write_bytes(len(lies).to_bytes(8, "little") + lies + os.urandom(1000))
    (corrupt / "truncated.safetensors").write_bytes(b"\x10\x00")
    (corrupt / "config.json").write_text("{}")
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"good.weight": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(corrupt / "good.safetensors"))


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faultroot")
    write_fault_repos(root)
    return root


@pytest.fixture(scope="module")
def fhub(fault_root):
    """A private hub process per test module (its faults never reach other tests)."""
    from hubproc import HubProcess

    with HubProcess(fault_root, tokens={"good-token"}) as server:
        yield server


@pytest.fixture
def fm(tmp_path, fhub):
    fhub.clear_faults()
    m = FaultMounter(tmp_path, fhub)
    yield m
    fhub.clear_faults()
    m.cleanup()


def source_files(repo_dir: Path):
    for p in sorted(repo_dir.rglob("*")):
        if p.is_file() and not p.relative_to(repo_dir).as_posix().startswith("."):
            yield p.relative_to(repo_dir).as_posix(), p


def content_id(path: Path, rel: str) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest() if is_lfs(rel, len(data)) else git_blob_sha1(data)


def check_cache_blocks(cache_dir: Path, repo_dirs, block_size: int = BLOCK,
                       cache_size: int = CACHE_SIZE) -> int:
    """Every byte stored under ``cache_dir`` (whole blocks and pieces) equals the source
    bytes it claims to be; returns how many whole blocks were checked.  Call with no daemon
    using the cache."""
    from cache import open_disk_store

    sources = {}
    for repo_dir in repo_dirs:
        for rel, path in source_files(repo_dir):
            sources[content_id(path, rel)] = path.read_bytes()
    with open_disk_store(cache_dir, block_size, cache_size) as store:
        for cid, data in sources.items():
            for a, b in store.cached_ranges(cid):
                for lo in range(a, b, block_size):
                    got = store.read(cid, lo, min(b, lo + block_size) - lo, len(data))
                    assert got is not None, (cid, lo)
                    assert got == data[lo:lo + len(got)], f"wrong bytes {cid[:12]} at {lo}"
        return sum(len(store.cached_indices(cid)) for cid in sources)


class FaultMounter(Mounter):
    """``Mounter`` against the fault hub: quick retries, fixed block and cache size, and an
    unmount that waits for the daemon to exit (it closes the cache on the way out)."""

    def __init__(self, tmp_path: Path, hub, extra_env: dict | None = None):
        super().__init__(tmp_path, hub.url)
        self.hub = hub
        self.env.update({**QUICK, **(extra_env or {})})

    def mount(self, repo: str, *extra: str, name: str = "mnt", env: dict | None = None) -> Path:
        return super().mount(repo, "--block-size", str(BLOCK), "--cache-size", str(CACHE_SIZE),
                             *extra, name=name, env=env)

    def unmount(self, mp: Path) -> None:
        pids = daemon_pids(mp)
        super().unmount(mp)
        wait_gone(pids)


def daemon_pids(mp: Path) -> list[int]:
    """Pids of daemons serving ``mp`` (from their stats file, if the mount answers)."""
    try:
        return [json.loads((mp / ".netmount" / "stats.json").read_text())["pid"]]
    except (OSError, ValueError, KeyError):
        return []


def wait_gone(pids, timeout: float = 20.0) -> None:
    """Wait for each daemon to exit (a pidfd, no polling); the bound only catches a hang."""
    for pid in pids:
        assert wait_exit(pid, timeout), f"daemon {pid} still running {timeout:.0f}s after its unmount"


def assert_tree_matches(mp: Path, repo_dir: Path) -> None:
    for rel, path in source_files(repo_dir):
        assert sha256_file(mp / rel) == sha256_file(path), rel
