"""Relative paths work from any working directory (issue 10, item 9).

The daemon runs with cwd ``/`` (so a folder in the caller's cwd cannot shadow our
packages): a relative ``--cache-dir`` or mountpoint must be made absolute before it starts,
or it opens ``/c/logs/...`` and dies.
"""

from __future__ import annotations

import os
import subprocess
import sys

import netmount
from cache import STORE_DIR

from conftest import require_fuse
from faultkit import daemon_pids, wait_gone


def _cli(cwd, env, *args):
    return subprocess.run([sys.executable, "-m", "netmount", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, **env})


def test_cli_mount_with_relative_cache_dir_and_mountpoint(hub, hub_root, tmp_path):
    require_fuse()
    (tmp_path / "mnt").mkdir()
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "", "NETMOUNT_CACHE_DIR": ""}
    done = _cli(tmp_path, env, "mount", "tests/plain", "mnt", "--cache-dir", "c")
    try:
        assert done.returncode == 0, done.stderr
        want = (hub_root / "tests" / "plain" / "data.bin").read_bytes()
        assert (tmp_path / "mnt" / "data.bin").read_bytes() == want
        assert list((tmp_path / "c" / "logs").glob("*.log")), "the log goes to the cache dir given"
        assert not os.path.exists("/c"), "a relative cache dir must not land in the daemon's cwd"
        pids = daemon_pids(tmp_path / "mnt")
        done = _cli(tmp_path, env, "unmount", "mnt")
        assert done.returncode == 0, done.stderr
        wait_gone(pids)
        assert any((tmp_path / "c" / STORE_DIR).iterdir()), "the blocks were cached under ./c"
    finally:
        subprocess.run(["fusermount", "-uz", str(tmp_path / "mnt")], capture_output=True)


def test_api_mount_with_relative_paths(hub, hub_root, tmp_path, monkeypatch):
    require_fuse()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "")
    os.mkdir("m")
    with netmount.mount("tests/plain", "m", endpoint=hub.url, cache_dir="c2") as path:
        assert path == str(tmp_path / "m")
        assert (tmp_path / "m" / "config.json").read_bytes() == \
            (hub_root / "tests" / "plain" / "config.json").read_bytes()
    assert list((tmp_path / "c2" / "logs").glob("*.log"))
