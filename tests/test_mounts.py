"""Finding a mount in /proc/mounts without touching the mounts listed there: a stat of a
FUSE mount root hangs while its daemon is stuck (``netmount unmount`` of that very mount
included), so ``find_mount`` resolves only the parent of the path asked about."""

from __future__ import annotations

import os

from netmount.mounting import mounts
from netmount.mounting.mounts import MountEntry


def test_find_mount_resolves_only_the_parent_of_the_path_asked_about(tmp_path, monkeypatch):
    target = tmp_path / "mnt"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    listed = [MountEntry("netmount:a/b", "/stuck/other-mount"), MountEntry("netmount:c/d", str(target))]
    monkeypatch.setattr(mounts, "list_mounts", lambda: listed)
    resolved = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: resolved.append(str(p)) or real(p, **kw))

    assert mounts.find_mount(str(target)) == listed[1]
    assert mounts.find_mount(str(target) + "/") == listed[1]
    assert mounts.find_mount(str(link / "mnt")) == listed[1]  # through a symlinked parent
    assert mounts.find_mount("/stuck") is None
    assert mounts.find_mount(str(tmp_path / "other")) is None
    # neither a listed mountpoint nor the mount asked about is ever resolved (stat'ed)
    assert not {"/stuck/other-mount", str(target), str(link / "mnt")} & set(resolved)
