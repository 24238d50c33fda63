"""Finding a mount in /proc/mounts without touching the other mounts listed there."""

from __future__ import annotations

import os

from netmount.mounting import mounts
from netmount.mounting.mounts import MountEntry


def test_find_mount_resolves_only_the_path_asked_about(tmp_path, monkeypatch):
    target = tmp_path / "mnt"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    listed = [MountEntry("netmount:a/b", "/stuck/other-mount"), MountEntry("netmount:c/d", str(target))]
    monkeypatch.setattr(mounts, "list_mounts", lambda: listed)
    resolved = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: resolved.append(str(p)) or real(p, **kw))

    assert mounts.find_mount(str(link)) == listed[1]  # through a symlink
    assert mounts.find_mount("/stuck") is None
    # a stat of another netmount's mountpoint hangs while its daemon is stuck: never done
    assert "/stuck/other-mount" not in resolved and resolved == [str(link), "/stuck"]
