"""A hub that answers ``model_info`` and then stalls on the tree listing fails the mount
in bounded time, with one line naming the endpoint (issue 10, item 9)."""

from __future__ import annotations

import os

from conftest import require_fuse, run_cli
from faultkit import fault_root, fhub  # noqa: F401  (fixtures)


def test_stalled_tree_listing_fails_the_mount_with_one_line(fhub, tmp_path):  # noqa: F811
    require_fuse()
    fhub.clear_faults()
    fhub.reset_log()
    # the tree API answers nothing for an hour (or until the client hangs up)
    fhub.add_fault("delay", server="hub", path_contains="/tree/", ranged=None, delay=3600)
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        # the subprocess timeout is the bound: without a listing timeout this hangs
        done = run_cli("mount", "faults/model", str(mp), "--cache-dir", str(tmp_path / "cache"),
                       env={"HF_ENDPOINT": fhub.url, "HF_TOKEN": "", "NETMOUNT_LISTING_TIMEOUT": "3"},
                       timeout=60)
    finally:
        fhub.clear_faults()
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("netmount: error: ") and fhub.url in lines[0], lines[0]
    assert "/tree/" in lines[0] and "NETMOUNT_LISTING_TIMEOUT" in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    asked = [r.path for r in fhub.requests(server="hub")]
    assert any(p == "/api/models/faults/model/revision/main" for p in asked), asked  # model_info answered
    assert any("/tree/" in p for p in asked), asked
    assert not os.path.ismount(mp) and os.listdir(mp) == []


def test_listing_timeout_setting(monkeypatch):
    from netmount.remote.hub import listing_timeout

    monkeypatch.setenv("NETMOUNT_LISTING_TIMEOUT", "2.5")
    assert listing_timeout() == 2.5
    for bad in ("", "soon", "-1", "0"):
        monkeypatch.setenv("NETMOUNT_LISTING_TIMEOUT", bad)
        assert listing_timeout() == 60.0
