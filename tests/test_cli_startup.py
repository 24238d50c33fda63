"""`netmount mount` starts quickly: what its start-up may skip, it skips (no timing here,
only what is imported and started)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netmount.commands import cli
from netmount.core import errors
from netmount.mounting.daemon import DaemonConfig
from netmount.mounting.lifecycle import spawn_daemon, start_daemon
from netmount.remote.hub import Snapshot

from conftest import require_fuse


@pytest.mark.parametrize("argv, command", [
    (["mount", "org/name", "/mnt"], "mount"),
    (["--debug", "mount", "org/name", "/mnt"], "mount"),
    (["--debug", "umount", "/mnt"], "umount"),
    (["stats", "/mnt"], "stats"),
    (["--help"], None),
    ([], None),
])
def test_subcommand(argv, command):
    assert cli._subcommand(argv) == command


def _modules_after(*argv: str) -> tuple[int, list[str]]:
    """Run the CLI as the program; (exit code, netmount.commands/dev modules it imported)."""
    code = ("import json, sys\n"
            "from netmount.commands import cli\n"
            f"sys.argv = ['netmount', *{list(argv)!r}]\n"
            "try:\n    rc = cli.main()\nexcept SystemExit as exc:\n    rc = exc.code\n"
            "mods = sorted(m for m in sys.modules if m.startswith(('netmount.commands.', 'netmount.dev')))\n"
            "print(json.dumps([rc, mods]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    rc, mods = json.loads(done.stdout.strip().splitlines()[-1])
    return rc, mods


def test_mount_does_not_import_the_other_commands():
    rc, mods = _modules_after("mount", "org/name", "/nonexistent", "--connections", "0")
    assert rc == 2  # BadInput, after the parser
    assert mods == ["netmount.commands.cli"], mods


def test_other_commands_still_get_the_whole_parser():
    rc, mods = _modules_after("stats", "/nonexistent")
    assert rc != 0
    assert {"netmount.dev.demo", "netmount.commands.verify", "netmount.commands.cache_proxy"} <= set(mods), mods
    names = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"mount", "unmount", "demo", "stats", "verify", "cache-proxy"} <= set(names)


@pytest.mark.fuse
def test_daemon_started_before_its_log_is_known_writes_libfuse_messages_there(tmp_path):
    """The daemon starts with stderr on /dev/null (lifecycle.start_daemon) and points it at
    the log file its configuration names: libfuse's own complaints land there."""
    require_fuse()
    log = tmp_path / "daemon.log"
    snap = Snapshot("org/x", "main", "a" * 40, "http://127.0.0.1:9", [])
    config = DaemonConfig(snap, str(tmp_path / "absent"), str(tmp_path / "cache"), log_file=str(log))
    with pytest.raises(errors.MountpointError, match="failed"):
        spawn_daemon(config, start_daemon())
    assert "fuse: bad mount point" in log.read_text()
