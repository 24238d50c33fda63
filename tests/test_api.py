"""The Python API a notebook uses: ``with netmount.mount("org/name", ...) as path:``.

The ``hub`` fixture serves from a thread of this process, so these tests read with plain
``read()`` calls only, never ``mmap``: a page fault on the mount would hold this process's
GIL while the hub thread that must answer it waits for the same GIL.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest

import netmount
from netmount.core import errors

from conftest import require_fuse


def is_mounted(path: str | Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as fh:
        return any(line.split()[1].replace("\\040", " ") == target for line in fh)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """A temp root of our own, so 'the temp mountpoint is gone' looks only at our dirs."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setenv("HF_TOKEN", "")
    return root


def test_context_manager_mounts_reads_and_unmounts(hub, hub_root, tmp_path, private_tmp):
    require_fuse()
    src = hub_root / "tests" / "plain"
    with netmount.mount("tests/plain", endpoint=hub.url, cache_dir=tmp_path / "cache") as path:
        assert isinstance(path, str)
        assert Path(path).parent == private_tmp and is_mounted(path)
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = f.relative_to(src).as_posix()
            assert os.path.getsize(Path(path) / rel) == f.stat().st_size, rel
            with open(Path(path) / rel, "rb") as fh:  # plain reads, in pieces that cross blocks
                got = hashlib.sha256()
                while chunk := fh.read(300_000):
                    got.update(chunk)
            assert got.hexdigest() == hashlib.sha256(f.read_bytes()).hexdigest(), rel
        with open(Path(path) / "data.bin", "rb") as fh:
            fh.seek((1 << 20) - 5)
            assert fh.read(10) == (src / "data.bin").read_bytes()[(1 << 20) - 5:(1 << 20) + 5]
    assert not is_mounted(path)
    assert not os.path.exists(path), "the temp mountpoint must be removed"
    assert os.listdir(private_tmp) == []


def test_explicit_mountpoint_is_kept_and_unmount_works(hub, tmp_path, private_tmp):
    require_fuse()
    mp = tmp_path / "mnt"
    mp.mkdir()
    m = netmount.mount("tests/plain", mp, endpoint=hub.url, cache_dir=tmp_path / "cache")
    try:
        assert isinstance(m, netmount.Mount) and os.fspath(m) == str(mp) and is_mounted(mp)
        assert m.snapshot.repo_id == "tests/plain" and len(m.snapshot.sha) == 40
        assert (mp / "config.json").read_text() == '{"hello": "world"}'
        netmount.unmount(mp)
        assert not is_mounted(mp)
    finally:
        m.unmount()  # a second unmount is harmless
    assert mp.is_dir() and os.listdir(mp) == []
    with pytest.raises(errors.NotAMount):
        netmount.unmount(mp)


@pytest.mark.parametrize("spec, error", [
    ("tests/no-such-repo", errors.RepoNotFound),
    ("tests/plain@no-such-branch", errors.RevisionNotFound),
    ("not a repo id!", errors.BadInput),
])
def test_typed_errors_leave_nothing_behind(hub, tmp_path, private_tmp, spec, error):
    require_fuse()
    with pytest.raises(error) as exc:
        netmount.mount(spec, endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert isinstance(exc.value, netmount.NetmountError)
    assert "\n" not in str(exc.value)  # one line, fit for a CLI message
    assert os.listdir(private_tmp) == []


@pytest.mark.fuse  # mount() checks /dev/fuse before it looks for the endpoint
def test_unreachable_endpoint_is_a_typed_error(tmp_path, private_tmp):
    require_fuse()
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(errors.EndpointUnreachable):
        netmount.mount("org/name", endpoint=f"http://127.0.0.1:{port}", cache_dir=tmp_path / "cache")
    assert os.listdir(private_tmp) == []


def test_mount_into_a_non_empty_dir_is_refused(hub, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(errors.MountpointError):
        netmount.mount("tests/plain", tmp_path / "full", endpoint=hub.url, cache_dir=tmp_path / "cache")
