"""``mounts.find_mount`` never stats a mount root (a stuck FUSE daemon would hang it)."""

import os

from netmount.mounting import mounts


def test_find_mount_resolves_only_the_parent(monkeypatch, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    entry = mounts.MountEntry("netmount:org/name", str(mp))
    monkeypatch.setattr(mounts, "list_mounts", lambda: [mounts.MountEntry("other", "/elsewhere"), entry])
    real = os.path.realpath

    def careful(p, *a, **kw):
        assert os.path.abspath(p) != str(mp), "stat of a mount root"
        return real(p, *a, **kw)

    monkeypatch.setattr(os.path, "realpath", careful)
    assert mounts.find_mount(str(mp)) == entry
    assert mounts.find_mount(str(mp) + "/") == entry
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert mounts.find_mount(str(link / "mnt")) == entry  # through a symlinked parent
    assert mounts.find_mount(str(tmp_path / "other")) is None
