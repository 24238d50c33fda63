"""The readahead switch's decisions (mounting/readahead.py), with a plain file standing in
for the mount's sysfs ``read_ahead_kb`` and a hand-moved clock.  The kernel side (request
sizes through a real mount) is in test_fuse3.py and test_parallel_load.py."""

from __future__ import annotations

import pytest

from netmount.mounting import readahead
from netmount.mounting.readahead import ReadaheadSwitch

SMALL = readahead.SMALL_KB  # while no loader is seen (the sysfs file starts at the kernel's 128)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sysfs(tmp_path, monkeypatch):
    """The mount's read_ahead_kb as a plain file, found for any mountpoint."""
    path = tmp_path / "read_ahead_kb"
    path.write_text("128\n")
    monkeypatch.setattr(readahead, "bdi_path", lambda mountpoint: (str(path), None))
    return path


def switch(clock=None, **kw) -> ReadaheadSwitch:
    sw = ReadaheadSwitch("/mnt", None, clock=clock or Clock(), **kw)
    assert sw.start() == 1024 << 10  # the INIT reply carries the large one: the kernel keeps the smaller
    return sw


def kb_now(sysfs) -> int:
    return int(sysfs.read_text())


def test_a_loaders_folder_opens_large_others_small(sysfs):
    sw = switch()
    sw.opening(1, "m/model-1.safetensors")
    assert kb_now(sysfs) == SMALL and sw.switches == 0
    sw.news.loader("m")
    sw.opening(2, "m/model-2.safetensors")
    assert kb_now(sysfs) == 1024
    sw.opening(3, "other/model.safetensors")
    assert kb_now(sysfs) == SMALL
    sw.opening(4, None)  # the raw mirror (netmount prefetch): never large
    assert kb_now(sysfs) == SMALL
    sw.opening(5, "m/config.json")  # any file of the folder being loaded
    assert kb_now(sysfs) == 1024
    state = sw.state()
    assert state["read_ahead_switches"] == 3 and state["read_ahead_large_opens"] == 2
    assert state["read_ahead_mode"] == "switching" and state["read_ahead_loading"] == ["m"]


def test_a_file_held_whole_opens_large_and_its_folder_stays_small(sysfs):
    """Its read-around is read from local disk: large requests cost no network.  The folder
    is not one being loaded: a lone tensor of another shard there keeps the small readahead."""
    held = {"m/model-1.safetensors"}
    sw = switch(held_whole=lambda p: p in held)
    sw.opening(1, "m/model-1.safetensors")
    assert kb_now(sysfs) == 1024
    sw.opening(2, "m/model-2.safetensors")
    assert kb_now(sysfs) == SMALL
    state = sw.state()
    assert state["read_ahead_held_opens"] == 1 and state["read_ahead_large_opens"] == 0
    assert state["read_ahead_loading"] == []
    fixed = ReadaheadSwitch("/mnt", 64, held_whole=lambda p: True)  # a fixed readahead is never switched
    fixed.start()
    fixed.opening(3, "m/model-1.safetensors")
    assert kb_now(sysfs) == 64 and fixed.state()["read_ahead_held_opens"] == 0


def test_a_file_a_whole_file_reader_opens_opens_large_alone(sysfs, caplog):
    """cat, cp, sha256sum...: they read what they open front to back.  A Python process may
    read one tensor: it keeps the small readahead; an opener that cannot be asked is "no"."""
    who = ["cat"]

    def opener():
        if who[0] is None:
            raise OSError("gone")
        return who[0]

    sw = switch(opener=opener)
    sw.opening(1, "m/model-1.safetensors")
    assert kb_now(sysfs) == 1024
    for who[0] in ("python3", None):
        sw.opening(2, "m/model-2.safetensors")
        assert kb_now(sysfs) == SMALL
    state = sw.state()
    assert state["read_ahead_reader_opens"] == 1 and state["read_ahead_large_opens"] == 0
    assert state["read_ahead_loading"] == [] and "failed" in caplog.text


def test_the_third_shard_open_at_once_is_a_loaders_when_that_rule_is_on(sysfs):
    """transformers opens every shard before it reads one: no policy evidence yet."""
    sw = switch(shards_open=2)
    sw.opening(1, "m/a.safetensors")
    sw.opening(2, "m/b.safetensors")
    sw.opening(7, "m/b.safetensors")  # the same file again is not another shard
    assert kb_now(sysfs) == SMALL
    sw.opening(3, "m/c.safetensors")
    assert kb_now(sysfs) == 1024
    sw.opening(4, "n/a.safetensors")  # other folders are not affected
    assert kb_now(sysfs) == SMALL


@pytest.mark.parametrize("paths, close_each", [
    (["m/a.safetensors", "m/b.safetensors", "m/c.safetensors"], True),  # one after another
    (["m/a.bin", "m/b.bin", "m/c.safetensors"], False),  # only shards count
    (["m/a.safetensors", "n/b.safetensors", "m/c.safetensors"], False),  # of the same folder
])
def test_shards_read_one_at_a_time_stay_small(sysfs, paths, close_each):
    sw = switch(shards_open=2)
    for n, p in enumerate(paths):
        sw.opening(n, p)
        assert kb_now(sysfs) == SMALL, p
        if close_each:
            sw.released(n)
    assert sw.state()["read_ahead_large_opens"] == 0


def test_a_stream_through_one_handle_makes_its_folder_loading(sysfs):
    sw = switch(stream_bytes=8 << 20)
    sw.opening(1, "m/a.safetensors")
    sw.opening(2, "n/a.safetensors")
    for k in range(40):  # n: jumps around, 10 MiB in all
        sw.reading(2, (k * 7919 % 40) << 20, 256 << 10)
    for off in range(0, 8 << 20, 128 << 10):  # m: front to back, a little out of order is fine
        sw.reading(1, off + (4096 if off % (1 << 20) == 0 else 0), 128 << 10)
    sw.released(1)
    assert sw.state()["read_ahead_loading"] == ["m"]
    sw.opening(3, "m/b.safetensors")
    assert kb_now(sysfs) == 1024
    sw.opening(4, "n/b.safetensors")
    assert kb_now(sysfs) == SMALL


def test_by_default_the_third_shard_open_at_once_opens_large(sysfs):
    sw = switch()
    for n in range(5):
        sw.opening(n, f"m/{n}.safetensors")
        assert kb_now(sysfs) == (1024 if n >= readahead.SHARDS_OPEN else SMALL), n
    assert sw.state()["read_ahead_large_opens"] == 5 - readahead.SHARDS_OPEN


def test_a_shard_opened_for_its_header_only_stays_small(sysfs):
    """DeepSeek-V3's MTP shard: transformers opens it with the others, and in a folder
    already loading, but reads only its header: its fault must cost the small read-around."""
    asked = []
    sw = switch(shards_open=2, header_only=lambda path: asked.append(path) or path.endswith("mtp.safetensors"))
    sw.opening(1, "m/a.safetensors")
    sw.opening(2, "m/b.safetensors")
    assert asked == []  # not asked while the open is small anyway
    sw.opening(3, "m/mtp.safetensors")
    assert kb_now(sysfs) == SMALL
    sw.opening(4, "m/c.safetensors")
    assert kb_now(sysfs) == 1024
    sw.news.loader("m")
    sw.opening(5, "m/mtp.safetensors")
    assert kb_now(sysfs) == SMALL
    sw.opening(6, "m/config.json")
    assert kb_now(sysfs) == 1024


def test_back_to_small_when_the_load_is_over(sysfs):
    clock = Clock()
    sw = switch(clock, idle=30.0)
    sw.news.loader("m")
    sw.opening(1, "m/a.safetensors")
    assert kb_now(sysfs) == 1024
    clock.now += 1000  # a long read of an open large file: still loading
    sw.opening(2, "m/b.safetensors")
    assert kb_now(sysfs) == 1024
    sw.released(1)
    sw.released(2)
    clock.now += 29
    sw.opening(3, "m/c.safetensors")  # within idle of the last close
    assert kb_now(sysfs) == 1024
    sw.released(3)
    clock.now += 31
    assert sw.state()["read_ahead_loading"] == []
    sw.opening(4, "m/a.safetensors")  # a person inspecting a tensor after the load
    assert kb_now(sysfs) == SMALL


def test_a_fixed_readahead_never_switches(sysfs):
    sw = ReadaheadSwitch("/mnt", 512, clock=Clock())
    assert sw.start() == 512 << 10 and kb_now(sysfs) == 512
    sw.news.loader("m")
    sw.opening(1, "m/a.safetensors")
    assert kb_now(sysfs) == 512 and sw.state()["read_ahead_mode"] == "fixed"
    assert readahead.max_read(512) == 512 << 10 and readahead.max_read(1024) is None


def test_readahead_zero_leaves_the_kernels(sysfs):
    sw = ReadaheadSwitch("/mnt", 0, clock=Clock())
    assert sw.start() is None and kb_now(sysfs) == 128
    assert "kernel's default" in sw.state()["read_ahead_note"]


def test_not_permitted_says_why_and_works_as_today(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(readahead, "bdi_path", lambda mp: (str(tmp_path / "no-bdi" / "read_ahead_kb"), None))
    sw = ReadaheadSwitch("/mnt", None, clock=Clock())
    assert sw.start() is None
    sw.news.loader("m")
    for n in range(3):
        sw.opening(n, f"m/{n}.safetensors")
    state = sw.state()
    assert state["read_ahead_kb"] is None and state["read_ahead_mode"] == "kernel"
    assert "cannot set" in state["read_ahead_note"] and state["read_ahead_switches"] == 0
    assert sum("not set" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("fixed", [None, 4096])
def test_a_shard_opened_amid_others_is_told_once_per_open(sysfs, fixed):
    """For the prefetcher's headers ahead: a shard opened while two other shards of its folder
    are open, switching or not (a fixed readahead still wants its headers early); one other
    open shard is a person reading shard after shard."""
    told = []
    sw = ReadaheadSwitch("/mnt", fixed, clock=Clock(), on_amid_others=told.append)
    sw.start()
    sw.opening(1, "m/a.safetensors")
    sw.opening(2, "m/config.json")
    sw.opening(3, "n/a.safetensors")  # another folder
    sw.opening(4, "m/b.safetensors")
    assert told == []
    sw.opening(5, "m/c.safetensors")
    sw.released(1)
    sw.released(4)
    sw.opening(6, "m/d.safetensors")  # one other (c) open
    assert told == ["m/c.safetensors"]


def test_shards_whose_tensors_were_read_do_not_count_as_opened_together(sysfs):
    """A person reading one tensor per shard keeps the last ones mapped (or their releases
    come late) while opening the next: those shards had tensor data read, a loader's had not."""
    read = {"m/a.safetensors", "m/b.safetensors"}
    told = []
    sw = switch(shards_open=2, data_read=read.__contains__, on_amid_others=told.append)
    for n, p in enumerate(["m/a.safetensors", "m/b.safetensors", "m/c.safetensors"]):
        sw.opening(n, p)
    assert kb_now(sysfs) == SMALL and told == [] and sw.state()["read_ahead_large_opens"] == 0
    read.clear()  # as a loader: opened, headers only
    sw.opening(7, "m/d.safetensors")
    assert kb_now(sysfs) == 1024 and told == ["m/d.safetensors"]


def test_no_lock_is_held_while_the_prefetcher_is_asked(sysfs):
    """``header_only`` may read config.json and the index over the network, ``data_read``
    takes the prefetcher's lock: the switch asks both with its own lock free, so every FUSE
    read (``reading``), other opens and the stats go on meanwhile."""
    import threading

    from conftest import within

    asked, release = threading.Event(), threading.Event()

    def header_only(path: str) -> bool:  # a slow Hub: blocks until the test lets it go
        asked.set()
        assert release.wait(60)
        return False

    sw = switch(shards_open=2, header_only=header_only,
                data_read=lambda p: sw.state() is None)  # calls back in: a held lock would deadlock
    within(30, sw.opening, 1, "m/a.safetensors")
    within(30, sw.opening, 2, "m/b.safetensors")
    opener = threading.Thread(target=sw.opening, args=(3, "m/c.safetensors"))
    opener.start()
    assert asked.wait(60)
    within(30, sw.reading, 1, 0, 128 << 10)
    within(30, sw.opening, 4, "n/config.json")
    within(30, sw.released, 4)
    assert within(30, sw.state)["read_ahead_large_opens"] == 0
    release.set()
    opener.join(60)
    assert not opener.is_alive() and kb_now(sysfs) == 1024 and sw.state()["read_ahead_large_opens"] == 1
