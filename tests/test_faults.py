"""Network faults on range requests, injected by the test hub (netmount/testhub/faults.py),
against a real kernel mount: whole files come back with the source's sha256, or the read
fails with EIO after bounded retries; never a wrong block in the cache; the daemon stays
up and reads work again once the server recovers."""

from __future__ import annotations

import errno
import os
import re

import pytest

from netmount.mounting.stats import wait_idle

from conftest import sha256_file, within
from faultkit import assert_tree_matches, check_cache_blocks, fault_root, fhub, fm  # noqa: F401 (fixtures)


def _repo(fault_root):
    return fault_root / "faults" / "model"


# (kind, options): every fault a range request can meet; server=None hits both the CDN
# (weights.bin, an LFS blob) and the hub's /resolve/ (notes.txt, config.json)
FAULTS = {
    "http500": ("status", {"status": 500}),
    "http502": ("status", {"status": 502}),
    "http503": ("status", {"status": 503}),
    "http429": ("status", {"status": 429, "retry_after": 0.2}),
    "reset_mid_body": ("reset", {}),
    "short_body": ("short", {}),
    "short_body_declared": ("short", {"declare_short": True}),
    "full_200_for_range": ("full", {}),
    "wrong_content_range": ("wrong_range", {}),
    "stall_mid_body": ("stall", {"delay": 30}),
    "stall_before_headers": ("delay", {"delay": 30}),
    "expired_signed_url": ("expired", {}),
}


def _rule(name, **more):
    kind, opts = FAULTS[name]
    server = "cdn" if kind == "expired" else None  # only the CDN signs URLs
    return {"kind": kind, "server": server, **opts, **more}


def _hits(fhub) -> int:
    return sum(r["hits"] for r in fhub.faults())


@pytest.mark.parametrize("name", list(FAULTS))
def test_transient_fault_is_retried_and_bytes_are_right(fm, fhub, fault_root, name):
    """Each request meets the fault twice before being answered properly (3 retries)."""
    repo = _repo(fault_root)
    mp = fm.mount("faults/model")
    fhub.set_faults([_rule(name, times=2)])
    assert_tree_matches(mp, repo)
    assert _hits(fhub) == 2, fhub.faults()
    stats = fm.stats(mp)
    # (a 200 with the whole file is right for a request of the whole file: config.json)
    assert stats["retries"] >= 1 and stats["errors"] == 0, stats
    fm.unmount(mp)
    assert check_cache_blocks(fm.cache_dir, [repo]) > 0


@pytest.mark.parametrize("name", list(FAULTS))
def test_persistent_fault_is_eio_then_the_mount_recovers(fm, fhub, fault_root, name):
    repo = _repo(fault_root)
    mp = fm.mount("faults/model")
    fhub.set_faults([_rule(name)])
    failing = ("weights.bin",) if _rule(name)["server"] == "cdn" else ("weights.bin", "notes.txt")
    for rel in failing:
        # bounded: 4 tries per request, 1 s timeouts, short backoff (the kernel may retry a
        # failed readahead once as a plain read); the 120 s only catches a read that hangs
        with pytest.raises(OSError) as exc:
            within(120, (mp / rel).read_bytes)
        assert exc.value.errno == errno.EIO, rel
    assert _hits(fhub) >= 4
    stats = fm.stats(mp)  # the daemon is still up and answering
    assert stats["errors"] >= 1
    assert os.path.exists(f"/proc/{stats['pid']}")
    fhub.clear_faults()
    assert_tree_matches(mp, repo)  # the server recovered: the same mount reads everything
    fm.unmount(mp)
    assert check_cache_blocks(fm.cache_dir, [repo]) > 0


def test_429_retry_after_is_honoured(fm, fhub, fault_root):
    mp = fm.mount("faults/model")
    fhub.reset_log()
    fhub.set_faults([{"kind": "status", "status": 429, "retry_after": 0.7, "times": 1,
                      "path_contains": "/blobs/"}])
    assert sha256_file(mp / "weights.bin") == sha256_file(_repo(fault_root) / "weights.bin")
    cdn = [r for r in fhub.requests(server="cdn") if r.range]
    first_429 = next(r for r in cdn if r.status == 429)
    assert any(r.range == first_429.range and r.status == 206 for r in cdn), "not retried"
    # the wait the daemon chose, from its log: the server's 0.7 s, not its own backoff
    # (0.05 s doubling, at most 0.24 s here); no clock read in the test
    log = "".join(p.read_text() for p in (fm.cache_dir / "logs").glob("*.log"))
    assert re.search(r"retry 1/\d+ for weights\.bin \[\d+, \d+\) in 0\.70s: HTTP 429", log), log


def test_expired_url_is_resolved_again_once(fm, fhub, fault_root):
    """A 403 from the CDN means the signed URL expired: resolve once more, not per block."""
    mp = fm.mount("faults/model")
    fhub.reset_log()
    fhub.set_faults([{"kind": "expired", "server": "cdn", "times": 1}])
    assert sha256_file(mp / "weights.bin") == sha256_file(_repo(fault_root) / "weights.bin")
    resolves = fhub.requests(server="hub", method="HEAD", path_contains="/resolve/")
    assert len([r for r in resolves if r.path.endswith("weights.bin")]) == 2, resolves
    assert all(r.status == 302 for r in resolves)


def test_a_file_that_fails_does_not_disturb_the_others(fm, fhub, fault_root):
    repo = _repo(fault_root)
    mp = fm.mount("faults/model")
    fhub.set_faults([{"kind": "reset", "server": "cdn", "path_contains": "/blobs/"}])
    with pytest.raises(OSError) as exc:
        (mp / "weights.bin").read_bytes()
    assert exc.value.errno == errno.EIO
    for rel in ("notes.txt", "config.json"):  # served by the hub, not the faulty CDN
        assert sha256_file(mp / rel) == sha256_file(repo / rel)


@pytest.mark.parametrize("times", [2, None])
def test_resolve_failures_are_retried_or_eio(fm, fhub, fault_root, times):
    """The HEAD that resolves a file's data URL fails too: retried like a range request."""
    repo = _repo(fault_root)
    mp = fm.mount("faults/model")
    fhub.set_faults([{"kind": "status", "status": 503, "server": "hub", "method": "HEAD",
                      "ranged": None, "path_contains": "/resolve/", "times": times}])
    if times is None:
        with pytest.raises(OSError) as exc:
            (mp / "weights.bin").read_bytes()
        assert exc.value.errno == errno.EIO
        assert _hits(fhub) >= 4  # 1 + 3 retries
        fhub.clear_faults()
    assert_tree_matches(mp, repo)
    if times is not None:
        assert _hits(fhub) == times


def test_a_trickle_is_a_stall_too(fm, fhub, fault_root):
    """Bytes keep coming, never a timeout apart, far too slowly: bounded by the whole-request
    deadline (timeout + size at the minimum rate), retried, then served right."""
    mp = fm.mount("faults/model", env={"NETMOUNT_FETCH_MIN_RATE": str(1 << 20)})
    fhub.set_faults([{"kind": "slow", "rate": 40 << 10, "server": "cdn", "times": 1}])
    # the retry shows the trickle was cut; the bound only catches a read that hangs
    assert within(120, sha256_file, mp / "weights.bin") == sha256_file(_repo(fault_root) / "weights.bin")
    assert _hits(fhub) == 1
    assert fm.stats(mp)["retries"] >= 1


def test_signed_urls_are_reused_then_resolved_again_once_expired(fm, fhub, fault_root):
    """A CDN URL is reused while valid (not one resolve per request); once the CDN says it
    has expired (for every request that carries it), the file is resolved again once and
    every byte is right.  Re-resolving *before* the expiry, by the clock, is tested with a
    fake clock in test_fetch.py; here the hub's URL clock jumps instead of the test waiting."""
    src = _repo(fault_root) / "weights.bin"
    data = src.read_bytes()
    mp = fm.mount("faults/model")
    fhub.reset_log()

    def cdn_gets():
        return [r for r in fhub.requests(server="cdn", method="GET") if r.range]

    def resolves():
        return fhub.requests(server="hub", method="HEAD", path_contains="weights.bin")

    with open(mp / "weights.bin", "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # one block per read
        assert os.pread(fh.fileno(), 4096, 0) == data[:4096]
        assert os.pread(fh.fileno(), 4096, 1 << 20) == data[1 << 20:(1 << 20) + 4096]
        assert wait_idle(mp)  # no request of the daemon's own still in flight
        assert len(resolves()) == 1 and len(cdn_gets()) >= 2  # one URL, used again
        assert all(r.status == 206 for r in cdn_gets())
        fhub.expire_signed_urls()
        assert os.pread(fh.fileno(), 4096, len(data) - 4096) == data[-4096:]
    assert sha256_file(mp / "weights.bin") == sha256_file(src)
    assert len(resolves()) == 2, resolves()
    statuses = [r.status for r in cdn_gets()]
    assert 403 in statuses, statuses
    fm.unmount(mp)
    assert check_cache_blocks(fm.cache_dir, [_repo(fault_root)]) > 0


def test_expiry_margin():
    from urllib.parse import urlencode

    from netmount.remote.resolver import expiry as _expiry

    url = "http://cdn/blobs/x?" + urlencode({"Expires": 1000, "Signature": "s"})
    assert _expiry(url, now=0) == 1000 - 30  # long-lived: 30 s early
    assert _expiry(url, now=996) == 999  # 4 s left: a quarter early, not 30 s (always stale)
    assert _expiry(url, now=2000) == 1000  # already expired: stale now
    assert _expiry("http://cdn/blobs/x", now=5) == 3605
