"""Bad input: one line on stderr, a non-zero exit, no traceback, nothing mounted.

tests/test_mount.py covers a malformed id, a missing repo, an unknown revision, a gated
repo without a token, a bad size string and the mountpoint errors; these are the rest.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from netmount.commands import cli
from netmount.mounting import lifecycle, mounts

from conftest import run_cli, sha256_file
from faultkit import fault_root, fhub, fm  # noqa: F401 (fixtures)


def _fails_in_one_line(done, *needles: str) -> str:
    assert done.returncode != 0, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def env(tmp_path, hub):
    return {"HF_ENDPOINT": hub.url, "NETMOUNT_CACHE_DIR": str(tmp_path / "c"), "HF_TOKEN": ""}


@pytest.fixture
def mp(tmp_path):
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    assert not os.path.ismount(path)


def test_gated_without_token_says_how_to_give_one(mp, env):
    line = _fails_in_one_line(run_cli("mount", "tests/gated", str(mp), env=env), "gated")
    assert "HF_TOKEN" in line and "hf auth login" in line


def test_gated_with_a_token_without_access(mp, env):
    done = run_cli("mount", "tests/gated", str(mp), env={**env, "HF_TOKEN": "hf_not_on_the_list"})
    _fails_in_one_line(done, "gated", "no access")
    assert "hf_not_on_the_list" not in done.stderr + done.stdout


def test_wrong_token_is_named_and_not_shown(tmp_path, fhub):
    """The real Hub answers 401 "Invalid credentials" to an unknown token on every route."""
    fhub.set_faults([{"kind": "bad_token"}])
    try:
        mp = tmp_path / "mnt"
        mp.mkdir()
        env = {"HF_ENDPOINT": fhub.url, "NETMOUNT_CACHE_DIR": str(tmp_path / "c"), "HF_TOKEN": "hf_wrong_one"}
        done = run_cli("mount", "faults/model", str(mp), env=env)
        _fails_in_one_line(done, "rejected the token", "HF_TOKEN")
        assert "hf_wrong_one" not in done.stderr + done.stdout
        assert not os.path.ismount(mp)
    finally:
        fhub.clear_faults()


def test_unreachable_endpoint_fails_fast(mp, env):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused
    # the timeout only catches a mount that hangs or retries for minutes (TimeoutExpired)
    done = run_cli("mount", "tests/plain", str(mp), timeout=60,
                   env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    _fails_in_one_line(done, "cannot reach", f"127.0.0.1:{port}")


def test_black_holed_endpoint_fails_in_bounded_time(mp, env):
    """Accepts connections, never answers: huggingface_hub alone would wait forever."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        # bounded is the point: the timeout (TimeoutExpired) catches a mount that waits forever
        done = run_cli("mount", "tests/plain", str(mp), timeout=60,
                       env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{s.getsockname()[1]}",
                            "NETMOUNT_METADATA_TIMEOUT": "2"})
        _fails_in_one_line(done, "cannot reach")
    finally:
        s.close()


@pytest.mark.parametrize("flag, value", [
    ("--cache-size", "0"), ("--cache-size", "-5G"), ("--cache-size", "500K"), ("--cache-size", "12Q"),
    ("--block-size", "100K"), ("--block-size", "128M"), ("--block-size", "0"), ("--block-size", "1M5"),
])
def test_invalid_sizes(mp, env, flag, value):
    _fails_in_one_line(run_cli("mount", "tests/plain", str(mp), f"{flag}={value}", env=env), flag)


@pytest.mark.parametrize("args", [["mount", "tests/plain"], ["mount", "a/b", "c", "--cache-size"],
                                  ["mount", "a/b", "c", "--connections", "many"], ["frobnicate"]])
def test_usage_errors_are_one_line_too(args, env):
    _fails_in_one_line(run_cli(*args, env=env), "error:", "--help")


def test_optional_paths_are_not_called_required(env):
    """argparse names an empty ``nargs="*"`` positional as required unless it has a default."""
    done = run_cli("verify", env=env)
    _fails_in_one_line(done, "required: mountpoint")
    assert "PATH" not in done.stderr


def test_mountpoint_is_a_file(tmp_path, env):
    f = tmp_path / "file"
    f.write_text("x")
    _fails_in_one_line(run_cli("mount", "tests/plain", str(f), env=env), "not a directory")


# -- FUSE unavailable: simulated in-process ------------------------------------------------

def _children() -> set[int]:
    """Our child processes (ppid in /proc/<pid>/stat)."""
    kids = set()
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid():
            kids.add(int(name))
    return kids


def _mount_in_process(capsys, mp, env, monkeypatch) -> tuple[int, str]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = _children()
    code = cli.main(["mount", "tests/plain", str(mp)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # the daemon, started before the checks so that its imports overlap them, is gone
    assert _children() <= before
    return code, err


def test_fuse_device_missing(tmp_path, mp, env, monkeypatch, capsys):
    monkeypatch.setattr(lifecycle, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    code, err = _mount_in_process(capsys, mp, env, monkeypatch)
    assert code != 0
    assert "fuse3" in err and "--device /dev/fuse --cap-add SYS_ADMIN" in err


def test_fuse_device_not_usable(tmp_path, mp, env, monkeypatch, capsys):
    monkeypatch.setattr(lifecycle, "FUSE_DEVICE", str(tmp_path))  # exists, cannot be opened read-write
    code, err = _mount_in_process(capsys, mp, env, monkeypatch)
    assert code != 0 and "cannot open" in err and "--cap-add SYS_ADMIN" in err


def test_fusermount_missing(mp, env, monkeypatch, capsys):
    monkeypatch.setattr(mounts, "fusermount", lambda: None)
    code, err = _mount_in_process(capsys, mp, env, monkeypatch)
    assert code != 0 and "install fuse3" in err


# -- a listing that could escape the mountpoint ---------------------------------------------

def _file(path, size=3):
    return {"type": "file", "oid": "a" * 40, "size": size, "path": path}


@pytest.mark.parametrize("entries, shown", [
    ([_file("../x")], "'../x'"),
    ([_file("a/../../x")], "'a/../../x'"),
    ([_file("/etc/passwd")], "'/etc/passwd'"),
    ([_file("a//b")], "'a//b'"),
    ([_file("a/./b")], "'a/./b'"),
    ([_file("dir/")], "'dir/'"),
    ([_file(".netmount/stats.json")], "'.netmount/stats.json'"),
    ([_file("x"), _file("x")], "twice"),
    ([_file("a"), _file("a/b")], "as a file and as a folder"),
])
def test_unsafe_listing_is_refused(tmp_path, fhub, entries, shown):
    fhub.set_faults([{"kind": "listing", "entries": entries}])
    try:
        mp = tmp_path / "mnt"
        mp.mkdir()
        env = {"HF_ENDPOINT": fhub.url, "NETMOUNT_CACHE_DIR": str(tmp_path / "c"), "HF_TOKEN": ""}
        done = run_cli("mount", "faults/model", str(mp), env=env)
        _fails_in_one_line(done, "refusing to mount", shown)
        assert not os.path.ismount(mp) and os.listdir(mp) == []
    finally:
        fhub.clear_faults()


# -- safetensors files with a corrupt or absurd header ----------------------------------------

def test_corrupt_safetensors_headers_do_not_disturb_the_daemon(fm, fault_root):
    from safetensors import safe_open

    src = fault_root / "faults" / "corrupt"
    mp = fm.mount("faults/corrupt")
    pid = fm.stats(mp)["pid"]
    for name in ("absurd.safetensors", "garbage.safetensors", "lies.safetensors", "truncated.safetensors"):
        # read as a program would look at it: header first (tensor-aware prefetch kicks in)
        with open(mp / name, "rb") as fh:
            fh.read(8)
        with pytest.raises(Exception):  # the library refuses it, the mount does not care
            with safe_open(str(mp / name), framework="pt") as sf:
                list(sf.keys())
        assert sha256_file(mp / name) == sha256_file(src / name), name  # raw bytes intact
    stats = fm.stats(mp)
    assert stats["pid"] == pid and stats["errors"] == 0
    assert json.loads((mp / "config.json").read_text()) == {}
    # tensor features skip the bad files with a warning each, through the mount and the Hub
    bad = {"absurd.safetensors", "garbage.safetensors", "lies.safetensors", "truncated.safetensors"}
    for target in (str(mp), "faults/corrupt"):
        done = run_cli("tensors", target, env=fm.env)
        assert done.returncode == 0, done.stderr
        assert "good.weight" in done.stdout and "Traceback" not in done.stderr
        warned = {n for n in bad if any(n in line and "warning" in line for line in done.stderr.splitlines())}
        assert warned == bad, done.stderr
    assert fm.stats(mp)["pid"] == pid
    log = next((fm.cache_dir / "logs").glob("*.log")).read_text()
    assert "Traceback" not in log, log


def test_hub_api_errors_at_mount_time(tmp_path, fhub):
    """The API answers 503: one line naming the endpoint, nothing mounted; a single 503 on
    the listing is retried (by huggingface_hub) and the mount goes on."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {"HF_ENDPOINT": fhub.url, "NETMOUNT_CACHE_DIR": str(tmp_path / "c"), "HF_TOKEN": ""}
    try:
        fhub.set_faults([{"kind": "status", "status": 503, "server": "hub", "ranged": None,
                          "path_contains": "/api/models/"}])
        _fails_in_one_line(run_cli("mount", "faults/model", str(mp), env=env), fhub.url, "503")
        assert not os.path.ismount(mp)
        fhub.set_faults([{"kind": "status", "status": 503, "server": "hub", "ranged": None,
                          "path_contains": "/tree/", "times": 1}])
        done = run_cli("mount", "faults/model", str(mp), env=env)
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(mp)) == ["config.json", "notes.txt", "weights.bin"]
    finally:
        fhub.clear_faults()
        subprocess.run(["fusermount", "-uz", str(mp)], capture_output=True)
