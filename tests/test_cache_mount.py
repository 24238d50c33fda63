"""The store under a real mount (a daemon's own store, read through FUSE): what a first
mount stored is read by the next one with no network; a block file deleted under a live
mount is fetched again, never an EIO; a cache of an older format is dropped, never read."""

from __future__ import annotations

import os
import sqlite3

import pytest

from cache import STORE_DIR

from conftest import run_cli
from faultkit import BLOCK, content_id, fault_root, fhub, fm  # noqa: F401 (fixtures)


def _block_files(cache_dir, cid: str) -> dict[int, str]:
    """Whole blocks of ``cid`` in the store: index -> file path."""
    directory = cache_dir / STORE_DIR
    con = sqlite3.connect(directory / "cache.db")
    try:
        found = con.execute("SELECT key, filename FROM Cache WHERE key >= ? AND key < ? AND filename IS NOT NULL",
                            (f"{cid}:{BLOCK}:", f"{cid}:{BLOCK};")).fetchall()
    finally:
        con.close()
    return {int(k.split(":")[2]): str(directory / f) for k, f in found if k.count(":") == 2}


def _fetched_blocks(fhub) -> set[int]:
    got = set()
    for r in fhub.requests(server="cdn", method="GET"):
        if r.status == 206 and r.range:
            a, b = (int(x) for x in r.range.split("=")[1].split("-"))
            got.update(range(a // BLOCK, b // BLOCK + 1))
    return got


def test_blocks_deleted_under_a_live_mount_are_fetched_again_and_the_rest_not_at_all(fm, fhub, fault_root):
    src = fault_root / "faults" / "big"
    name = sorted(p.name for p in src.iterdir())[0]
    want = (src / name).read_bytes()
    mp = fm.mount("faults/big")
    assert (mp / name).read_bytes() == want
    fm.unmount(mp)  # waits for the daemon to exit: everything fetched is stored
    blocks = _block_files(fm.cache_dir, content_id(src / name, name))
    assert sorted(blocks) == list(range(-(-len(want) // BLOCK)))

    mp = fm.mount("faults/big", name="again")
    fhub.reset_log()
    for i in (1, 5):  # a user's rm, or another daemon's eviction, under this live mount
        os.remove(blocks[i])
    with open(mp / name, "rb") as fh:
        assert fh.read() == want  # no EIO: the two blocks come from the network again
    with open(mp / ".netmount" / "idle", "rb") as fh:
        assert fh.read() == b"idle\n"
    assert _fetched_blocks(fhub) == {1, 5}  # and nothing else: the rest came from the store
    stats = fm.stats(mp)
    assert stats["cache_dir"] == str(fm.cache_dir)
    assert {f["path"]: f["cached_bytes"] for f in stats["files"]}[name] == len(want)


def test_a_cache_of_an_older_format_is_dropped_never_read(fm, fhub, fault_root):
    old = fm.cache_dir / "blocks"
    (old / "ab" / "cd").mkdir(parents=True)
    (old / "cache.db").write_bytes(b"SQLite format 3\0" + b"\0" * 100)
    (old / "ab" / "cd" / "x.val").write_bytes(b"an old block")
    src = fault_root / "faults" / "big"
    name = sorted(p.name for p in src.iterdir())[-1]
    mp = fm.mount("faults/big")
    assert (mp / name).read_bytes() == (src / name).read_bytes()
    assert not old.exists() and (fm.cache_dir / STORE_DIR).is_dir()
    log = "".join(p.read_text() for p in (fm.cache_dir / "logs").glob("*.log"))
    assert log.count("a block cache of an older format; removing it") == 1, log
    done = run_cli("verify", str(mp), name, env=fm.env)  # verify opens the same store
    assert done.returncode == 0 and "1 files checked, all match" in done.stdout, done.stdout + done.stderr


def test_verify_refuses_the_store_of_an_older_daemon(tmp_path, monkeypatch):
    """A daemon started before an upgrade publishes its old store directory: verify says so
    instead of opening a new, empty store inside it."""
    from netmount.commands.verify import verify
    from netmount.core import errors

    old = tmp_path / "cache" / "blocks"
    old.mkdir(parents=True)
    (old / "cache.db").write_bytes(b"")
    monkeypatch.setattr("netmount.mounting.stats.read_stats",
                        lambda mp: {"files": [], "block_size": BLOCK, "cache_dir": str(old)})
    with pytest.raises(errors.MountpointError, match="older netmount"):
        verify(tmp_path / "mnt")
    assert os.listdir(old) == ["cache.db"]
