"""The test hub's WAN emulation (pacing checked on a fake clock: never timed) and its HTML
folder index for directory-mounting peers (rclone, httpdirfs)."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from netmount.dev.testhub import wan
from netmount.dev.testhub.wan import SLICE, Wan


@pytest.fixture
def fake_clock(monkeypatch):
    clock = {"now": 100.0, "sleeps": []}

    async def sleep(seconds):
        clock["sleeps"].append(seconds)
        clock["now"] += seconds

    monkeypatch.setattr(wan.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(wan.asyncio, "sleep", sleep)
    return clock


def send(w: Wan, conn, nbytes: int) -> None:
    async def go():
        for piece in w.slices(b"x" * nbytes):
            await w.pace(conn, len(piece))

    asyncio.run(go())


def test_one_connection_is_paced_at_the_cap_after_a_one_slice_burst(fake_clock):
    w = Wan(conn_mbps=8)  # 1,000,000 bytes/s
    send(w, "conn-a", 10 * SLICE)
    # 10 slices: the first goes at once, the other 9 at the cap
    assert sum(fake_clock["sleeps"]) == pytest.approx(9 * SLICE / 1e6)


def test_the_cap_is_per_connection_not_shared(fake_clock):
    w = Wan(conn_mbps=8)
    send(w, "conn-a", 4 * SLICE)
    spent = sum(fake_clock["sleeps"])
    fake_clock["sleeps"].clear()
    fake_clock["now"] -= spent  # conn-b starts at the same moment as conn-a did
    send(w, "conn-b", 4 * SLICE)
    assert sum(fake_clock["sleeps"]) == pytest.approx(spent)  # not slowed by conn-a's bytes


def test_a_later_request_on_the_same_connection_shares_its_budget(fake_clock):
    w = Wan(conn_mbps=8)

    async def go():
        await w.pace("conn-a", SLICE)
        await w.pace("conn-a", SLICE)  # no time has passed: must wait one slice time

    asyncio.run(go())
    assert fake_clock["sleeps"] == [pytest.approx(SLICE / 1e6)]


def test_latency_and_off_switches(fake_clock):
    asyncio.run(Wan(latency_ms=40).first_byte())
    assert fake_clock["sleeps"] == [pytest.approx(0.04)]
    fake_clock["sleeps"].clear()
    off = Wan()
    assert not off.active
    asyncio.run(off.first_byte())
    send(off, "c", 10 * SLICE)
    assert fake_clock["sleeps"] == []
    with pytest.raises(ValueError):
        Wan(latency_ms=-1)


def test_folder_index_lists_files_and_subfolders_with_and_without_slash(tmp_path):
    from netmount.dev.testhub import TestHub

    repo = tmp_path / "org" / "m"
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_text("{}")
    (repo / "sub" / "a b.txt").write_text("x")
    with TestHub(tmp_path) as hub:
        for url in (f"{hub.url}/org/m/resolve/main", f"{hub.url}/org/m/resolve/main/"):
            page = urllib.request.urlopen(url).read().decode()
            assert '<a href="config.json">config.json</a>' in page
            assert '<a href="sub/">sub/</a>' in page
        sub = urllib.request.urlopen(f"{hub.url}/org/m/resolve/main/sub/").read().decode()
        assert '<a href="a%20b.txt">a b.txt</a>' in sub
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{hub.url}/org/m/resolve/main/nope/")
        assert err.value.code == 404


def test_hub_cli_rejects_negative_wan_settings():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "netmount.dev.testhub", "--synthetic-deepseek", "--latency-ms", "-5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "must be >= 0" in done.stderr
