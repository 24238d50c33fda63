"""The FUSE face on libfuse3: request sizes follow the mount's readahead, which the daemon sets.

libfuse2 capped every read request at 128 KiB whatever the readahead; libfuse3 negotiates up
to 1 MiB, and the kernel's readahead for the mount (its bdi ``read_ahead_kb``, which the
daemon sets when root) decides how large sequential requests get.  The sizes are counted by
the daemon (``max_read_bytes`` in stats.json): functional, never timed.
"""

from __future__ import annotations

import os

import pytest

from netmount.core import errors
from netmount.mounting import libfuse, readahead

from conftest import run_cli

KIB = 1 << 10
MIB = 1 << 20
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only root may set a mount's readahead")


def read_sequentially(path, chunk: int = MIB) -> int:
    n = 0
    with open(path, "rb") as fh:
        while data := fh.read(chunk):
            n += len(data)
    return n


def daemon_log(mounter, mp) -> str:
    logs = list((mounter.cache_dir / "logs").glob("*.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


@root_only
def test_raised_readahead_brings_1_mib_requests(mounter):
    mp = mounter.mount("tests/big", "--readahead", "1024")
    stats = mounter.stats(mp)
    assert stats["read_ahead_kb"] == 1024 and stats["read_ahead_note"] is None, stats
    size = (mp / "model.safetensors").stat().st_size
    assert size > 8 * MIB
    assert read_sequentially(mp / "model.safetensors") == size
    assert mounter.stats(mp)["max_read_bytes"] == MIB  # libfuse3's largest request, reached
    assert "readahead of %s: 1024 KiB" % mp in daemon_log(mounter, mp)


def test_libfuse_threads_keep_their_python_thread_state_from_one_request_to_the_next(mounter):
    """A state made per request (ctypes' default for a thread Python did not start) would be
    counted once per request; kept, once per libfuse worker (at most ``max_threads``)."""
    mp = mounter.mount("tests/big")
    for n in range(600):  # a lookup each (distinct names: no negative entry to answer from)
        assert not (mp / f"missing-{n}").exists()
    kept = mounter.stats(mp)["fuse_thread_states"]
    assert 0 < kept <= 64, kept


@root_only
def test_small_readahead_keeps_requests_at_128_kib(mounter):
    mp = mounter.mount("tests/big", "--readahead", "128")
    assert mounter.stats(mp)["read_ahead_kb"] == 128
    size = (mp / "model.safetensors").stat().st_size
    assert read_sequentially(mp / "model.safetensors") == size
    assert 0 < mounter.stats(mp)["max_read_bytes"] <= 128 * KIB


@root_only
def test_a_file_the_store_holds_whole_opens_with_1_mib_requests(mounter):
    """Switching: a lone ``cat`` of a file opens small (128 KiB requests); once the store
    holds it whole, an open of it on the next mount gets the large readahead (its read-around
    is local disk), and its read arrives in 1 MiB requests — from the store, nothing fetched."""
    mp = mounter.mount("tests/big")
    path = mp / "model.safetensors"
    size = path.stat().st_size
    assert read_sequentially(path) == size
    stats = mounter.stats(mp)
    assert 0 < stats["max_read_bytes"] <= 128 * KIB and stats["read_ahead_held_opens"] == 0, stats
    mounter.unmount(mp)
    mp = mounter.mount("tests/big")
    assert read_sequentially(mp / "model.safetensors") == size
    stats = mounter.stats(mp)
    assert stats["read_ahead_held_opens"] == 1 and stats["read_ahead_large_opens"] == 0, stats
    assert stats["max_read_bytes"] == MIB and stats["bytes_fetched"] == 0, stats


@root_only
def test_cat_of_a_cold_file_gets_1_mib_requests_and_fetches_it_once(mounter, hub, hub_root):
    """cat reads what it opens whole: its file opens with the large readahead alone (the
    folder stays small for a Python reader of one tensor), its reads arrive in 1 MiB
    requests, and every byte crosses the network once."""
    import subprocess

    mp = mounter.mount("tests/big")
    src = hub_root / "tests" / "big" / "model.safetensors"
    hub.reset_log()
    done = subprocess.run(["cat", str(mp / "model.safetensors")], capture_output=True, check=True)
    assert done.stdout == src.read_bytes()
    stats = mounter.stats(mp)
    assert stats["read_ahead_reader_opens"] == 1 and stats["read_ahead_large_opens"] == 0, stats
    assert stats["max_read_bytes"] == MIB and hub.bytes_sent(server="cdn") == src.stat().st_size, stats


def test_readahead_left_alone_is_said_once_and_reads_work(mounter, hub_root):
    mp = mounter.mount("tests/big", "--readahead", "0")
    stats = mounter.stats(mp)
    assert stats["read_ahead_kb"] is None and "kernel's default" in stats["read_ahead_note"]
    src = hub_root / "tests" / "big" / "model.safetensors"
    assert (mp / "model.safetensors").read_bytes() == src.read_bytes()
    assert 0 < mounter.stats(mp)["max_read_bytes"] <= 128 * KIB  # the kernel's own readahead
    assert daemon_log(mounter, mp).count("not set (") == 1


def test_readahead_that_cannot_be_set_says_why(tmp_path, monkeypatch):
    """Without root (here: a sysfs folder that is not the kernel's) the daemon keeps going."""
    monkeypatch.setattr(readahead, "BDI_DIR", str(tmp_path / "no-bdi"))
    kb, why = readahead.set_readahead("/", 1024)  # "/" is always in mountinfo
    assert kb is None and "cannot set" in why and str(tmp_path / "no-bdi") in why
    kb, why = readahead.set_readahead(str(tmp_path / "not-a-mount"), 1024)
    assert kb is None and "mountinfo" in why


def test_missing_libfuse3_is_one_line_with_the_apt_line(monkeypatch):
    monkeypatch.delenv("FUSE_LIBRARY_PATH", raising=False)
    monkeypatch.setattr(libfuse, "LIBFUSE", "netmount-no-such-libfuse")
    with pytest.raises(errors.FuseUnavailable) as exc:
        libfuse.libfuse3_path()  # the last of check_fuse's checks, and the FUSE face's first
    assert str(exc.value) == "libfuse3 not found: apt-get install fuse3 libfuse3-3"


@pytest.mark.parametrize("value", ["-1", "100000", "lots"])
def test_bad_readahead_is_one_line(tmp_path, value):
    (tmp_path / "mnt").mkdir()
    done = run_cli("mount", "tests/plain", str(tmp_path / "mnt"), "--readahead", value,
                   env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": ""})
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--readahead" in done.stderr
    assert not os.path.ismount(tmp_path / "mnt")


@root_only
def test_a_lone_small_tensor_keeps_the_small_readahead_and_costs_its_pages(mounter, hub, hub_root):
    """Switching (the default): a file nobody loads opens with the small readahead (32 KiB),
    so a fault in a 28-byte tensor costs the header's first read (the head tier) and one
    read-around of 32 KiB either side, not 1 MiB, nor 128 KiB either side."""
    import json

    from safetensors import safe_open

    from netmount.mounting.readahead import SMALL_KB

    src = hub_root / "tests" / "big" / "model.safetensors"
    mp = mounter.mount("tests/big")
    hub.reset_log()
    with safe_open(str(mp / "model.safetensors"), framework="pt") as sf:
        assert sf.get_tensor("small.bias").numel() == 7
    stats = mounter.stats(mp)
    assert stats["read_ahead_mode"] == "switching" and stats["read_ahead_kb"] == SMALL_KB, stats
    assert stats["read_ahead_large_opens"] == 0, stats
    n = int.from_bytes(src.read_bytes()[:8], "little")
    begin, end = json.loads(src.read_bytes()[8 : 8 + n])["small.bias"]["data_offsets"]
    pages = -(-(end - begin) // 4096) * 4096 + 4096  # may straddle a page edge
    head = SMALL_KB * KIB if 8 + n <= SMALL_KB * KIB else 128 * KIB  # the first read's, or the whole head
    # max_read is not capped while switching: the read around a fault is one request, centred
    assert hub.bytes_sent(server="cdn") <= head + pages + 2 * SMALL_KB * KIB
