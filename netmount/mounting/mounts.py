"""Which netmount mounts are live: /proc/mounts, and unmounting them."""

from __future__ import annotations

import errno
import gc
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

FSTYPE = "fuse.netmount"


@dataclass(frozen=True)
class MountEntry:
    device: str
    mountpoint: str


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return (field.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def list_mounts() -> list[MountEntry]:
    try:
        with open("/proc/mounts") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == FSTYPE:
            out.append(MountEntry(_unescape(parts[0]), _unescape(parts[1])))
    return out


def find_mount(path: str) -> MountEntry | None:
    """The netmount mount at ``path``, if any.  Never stats a mount root: a FUSE mount whose
    daemon is stuck (ours or anyone's) would hang the caller; the kernel writes mountpoints
    to /proc/mounts already canonical, so only ``path``'s parent is resolved."""
    absolute = os.path.abspath(path)
    real = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    for entry in list_mounts():
        if entry.mountpoint in (absolute, real):
            return entry
    return None


def is_dead(path: str) -> bool:
    """A FUSE mount whose daemon died answers ENOTCONN ('Transport endpoint is not connected').

    ``statvfs`` as well as ``stat``: for ``attr_timeout`` after the daemon's death the
    kernel still answers ``stat`` of the mount root from its attribute cache, while
    ``statfs`` always asks the daemon."""
    for probe in (os.stat, os.statvfs):
        try:
            probe(path)
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return True
            return False
    return False


def fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def force_unmount(path: str, lazy: bool = False) -> bool:
    """Unmount ``path`` with fusermount (or umount as a last resort); True if it is gone."""
    tool = fusermount()
    commands = []
    if tool:
        commands.append([tool, "-u"] + (["-z"] if lazy else []) + [path])
    commands.append(["umount"] + (["-l"] if lazy else []) + [path])
    for cmd in commands:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return True
    return find_mount(path) is None and not is_dead(path)


def unmount_retrying(path: str, tries: int = 3) -> bool:
    """Unmount the netmount (live or dead) at ``path``, if one is there; lazily if it stays busy.

    Between tries the garbage collector runs: a model just freed may still hold mmaps of the
    mount until its tensors are collected.  True if nothing is mounted there any more.
    """
    if not (find_mount(path) or is_dead(path)):
        return True
    for attempt in range(tries):
        if force_unmount(path):
            return True
        gc.collect()
        if attempt + 1 < tries:
            time.sleep(0.2)
    return force_unmount(path, lazy=True)
