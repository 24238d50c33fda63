"""The token stays secret, Authorization stays on the endpoint's host, the cache is
private, and the mount is read-only and for its owner only unless asked."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from cache import STORE_DIR
from netmount.mounting import mounts

from conftest import run_cli, sha256_file
from faultkit import fault_root, fhub, fm  # noqa: F401 (fixtures)

TOKEN = "good-token"  # the fault hub's token that opens faults/gated


def _mount_options(mp) -> set[str]:
    with open("/proc/mounts") as fh:
        for line in fh:
            dev, where, fstype, opts, *_ = line.split()
            if mounts._unescape(where) == str(mp):
                assert fstype == mounts.FSTYPE
                return set(opts.split(","))
    raise AssertionError(f"{mp} is not mounted")


def _all_bytes_under(folder) -> list[tuple[str, bytes]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            out.append((os.path.join(dirpath, name), b""))
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out.append((path, fh.read()))
    return out


def test_token_never_leaks_and_auth_stays_on_the_hub(fm, fhub, fault_root, tmp_path):
    src = fault_root / "faults" / "gated"
    fhub.reset_log()
    mp = tmp_path / "mnt"
    mp.mkdir()
    # --debug: the most talkative daemon log there is
    done = run_cli("--debug", "mount", "faults/gated", str(mp), "--block-size", "256K",
                   env={**fm.env, "HF_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    fm.mounted.append(mp)
    # the error path first: failed fetches are logged with their reasons
    fhub.set_faults([{"kind": "status", "status": 503, "server": "cdn"}])
    with pytest.raises(OSError) as exc:
        (mp / "model.bin").read_bytes()
    assert exc.value.errno == errno.EIO
    fhub.clear_faults()
    assert sha256_file(mp / "model.bin") == sha256_file(src / "model.bin")  # LFS: via the CDN
    assert (mp / "config.json").read_text() == "{}"  # regular: from the hub itself

    stats_text = (mp / ".netmount" / "stats.json").read_text()
    pid = json.loads(stats_text)["pid"]
    secret = TOKEN.encode()
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        assert secret not in fh.read()
    with open(f"/proc/{pid}/environ", "rb") as fh:
        environ = fh.read()
    assert secret not in environ and b"HF_TOKEN=" not in environ
    assert TOKEN not in stats_text
    assert TOKEN not in done.stdout + done.stderr
    for path, data in _all_bytes_under(fm.cache_dir):  # names, logs, the SQLite index
        assert TOKEN not in os.path.basename(path), path
        assert secret not in data, path
    logs = list((fm.cache_dir / "logs").glob("*.log"))
    assert logs and "giving up" in "".join(p.read_text() for p in logs)  # errors were logged

    log = fhub.log
    cdn = [r for r in log if r.server == "cdn"]
    hub = [r for r in log if r.server == "hub"]
    assert cdn and not any(r.has_auth for r in cdn), "Authorization was sent to the CDN host"
    assert hub and all(r.has_auth for r in hub)  # the hub needs it: the repo is gated


def test_token_flag_stays_out_of_the_daemon(fm, fhub, fault_root, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    done = run_cli("mount", "faults/gated", str(mp), "--token", TOKEN, env=fm.env)
    assert done.returncode == 0, done.stderr
    fm.mounted.append(mp)
    assert "visible to other users" in done.stderr  # the user is warned about `ps`
    pid = fm.stats(mp)["pid"]
    for what in ("cmdline", "environ"):
        with open(f"/proc/{pid}/{what}", "rb") as fh:
            assert TOKEN.encode() not in fh.read(), what
    assert (mp / "model.bin").read_bytes() == (fault_root / "faults" / "gated" / "model.bin").read_bytes()


def test_cache_dir_is_private(fm):
    mp = fm.mount("faults/model")
    (mp / "weights.bin").read_bytes()
    for d in (fm.cache_dir, fm.cache_dir / STORE_DIR, fm.cache_dir / "logs"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


def test_mount_is_read_only_and_private_by_default(fm):
    mp = fm.mount("faults/model")
    opts = _mount_options(mp)
    assert "ro" in opts and "rw" not in opts
    assert "allow_other" not in opts
    with pytest.raises(OSError) as exc:
        open(mp / "weights.bin", "r+b")
    assert exc.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        (mp / "new").write_text("x")
    with pytest.raises(OSError):
        os.mkdir(mp / "newdir")


def test_allow_other_only_when_asked(fm):
    mp = fm.mount("faults/model", "--allow-other")
    opts = _mount_options(mp)
    assert "allow_other" in opts and "ro" in opts
