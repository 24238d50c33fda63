"""What the test hub serves: repos as lists of files with git/LFS ids, and their bytes.

Two kinds of repo answer the same questions (``snapshot()``, ``read()``):
``FolderRepo`` is a directory on disk (``root/<org>/<name>/...``), ``SyntheticRepo`` the
generated DeepSeek-V3.  The ids follow git and git-lfs exactly so that clients which
check them (huggingface_hub's cache, netmount's content-addressed cache) see what the
Hub would give them:

- a regular file's ``oid`` is its git blob sha1;
- an LFS file (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.gguf``, ``*.parquet`` or larger than 10 MiB) has
  ``lfs.sha256`` of its content, and its ``oid`` is the git blob sha1 of its *pointer* text;
- a directory's ``oid`` is its git tree sha1.

The commit sha is a sha1 over the sorted (path, size, oid) list: a pure function of the
content, so it changes exactly when a file does.  Hashing is memoized on (path, size,
mtime) and done under one lock, so a 300 MB model is hashed once per server, lazily.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import synthetic

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".parquet")
LFS_MIN_SIZE = 10 * 1024 * 1024
READ_CHUNK = 1024 * 1024  # bounded memory: bodies are streamed in pieces of this size


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    oid: str  # git blob sha1 (of the LFS pointer for LFS files)
    sha256: str | None = None  # LFS files only

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size)) if self.sha256 else 0

    @classmethod
    def make(cls, path: str, size: int, *, sha256: str | None = None, blob_sha1: str | None = None) -> "Entry":
        if sha256 is not None:
            return cls(path, size, git_blob_sha1(lfs_pointer(sha256, size)), sha256)
        assert blob_sha1 is not None
        return cls(path, size, blob_sha1)


def _tree_oids(entries: list[Entry]) -> dict[str, str]:
    """Git tree sha1 of every directory ("" is the root), as ``git write-tree`` computes it."""
    rows: dict[str, dict[str, tuple[bytes, str]]] = {"": {}}  # dir -> name -> (mode, oid)
    subdirs: dict[str, set[str]] = {"": set()}
    for e in entries:
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            rows.setdefault(d, {})
            subdirs.setdefault(d, set())
            subdirs["/".join(parts[: i - 1])].add(parts[i - 1])
        rows["/".join(parts[:-1])][parts[-1]] = (b"100644", e.oid)
    oids: dict[str, str] = {}
    for d in sorted(rows, key=lambda p: p.count("/") + 1 if p else 0, reverse=True):  # deepest first
        items = dict(rows[d])
        for name in subdirs[d]:
            items[name] = (b"40000", oids[f"{d}/{name}" if d else name])
        # git orders entries by name, comparing a directory's name as if it ended in "/"
        order = sorted(items, key=lambda n: n + "/" if items[n][0] == b"40000" else n)
        body = b"".join(
            items[n][0] + b" " + n.encode() + b"\0" + bytes.fromhex(items[n][1]) for n in order
        )
        oids[d] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    return oids


@dataclass
class Snapshot:
    """One revision of a repo: its files sorted by path, its directories, its commit sha."""

    files: list[Entry]
    mtime: float = 0.0  # newest file's mtime: the "lastModified" of the repo
    sha: str = field(init=False)
    dirs: dict[str, str] = field(init=False)  # path -> tree oid ("" = root)
    by_path: dict[str, Entry] = field(init=False)

    def __post_init__(self) -> None:
        self.files.sort(key=lambda e: e.path)
        self.by_path = {e.path: e for e in self.files}
        self.dirs = _tree_oids(self.files)
        listing = "".join(f"{e.path}\0{e.size}\0{e.oid}\n" for e in self.files)
        self.sha = hashlib.sha1(listing.encode()).hexdigest()


class Hasher:
    """sha256 / git blob sha1 of local files, memoized on (path, size, mtime_ns)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, int, int], str] = {}
        self.hashed_bytes = 0  # lets tests prove a file is hashed once

    def entry(self, abspath: str, relpath: str, st: os.stat_result) -> Entry:
        lfs = is_lfs(relpath, st.st_size)
        key = (abspath, st.st_size, st.st_mtime_ns)
        with self._lock:
            digest = self._memo.get(key)
            if digest is None:
                h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % st.st_size)
                with open(abspath, "rb") as f:
                    while chunk := f.read(READ_CHUNK):
                        h.update(chunk)
                        self.hashed_bytes += len(chunk)
                digest = self._memo[key] = h.hexdigest()
        if lfs:
            return Entry.make(relpath, st.st_size, sha256=digest)
        return Entry.make(relpath, st.st_size, blob_sha1=digest)


class Repo:
    repo_id: str

    @property
    def gated(self) -> bool:
        raise NotImplementedError

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    def read(self, path: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of a file, in pieces of at most READ_CHUNK."""
        raise NotImplementedError


class FolderRepo(Repo):
    """``root/<org>/<name>`` as revision main.  Dotfiles at the top are markers, not content."""

    def __init__(self, repo_id: str, folder: Path, hasher: Hasher) -> None:
        self.repo_id = repo_id
        self.folder = folder
        self._hasher = hasher

    @property
    def gated(self) -> bool:
        return (self.folder / ".gated").exists()

    def snapshot(self) -> Snapshot:
        entries, mtime = [], 0.0
        for dirpath, dirnames, filenames in os.walk(self.folder, followlinks=True):
            rel = os.path.relpath(dirpath, self.folder)
            top = rel == "."
            if top:
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            dirnames.sort()
            for fn in sorted(filenames):
                if top and fn.startswith("."):
                    continue
                abspath = os.path.join(dirpath, fn)
                relpath = fn if top else f"{rel.replace(os.sep, '/')}/{fn}"
                st = os.stat(abspath)
                mtime = max(mtime, st.st_mtime)
                entries.append(self._hasher.entry(abspath, relpath, st))
        return Snapshot(entries, mtime)

    def read(self, path: str, start: int, end: int) -> Iterator[bytes]:
        with open(self.folder / path, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(READ_CHUNK, left))
                if not chunk:
                    raise OSError(f"{path} shrank while being served")
                left -= len(chunk)
                yield chunk


class SyntheticRepo(Repo):
    """The generated DeepSeek-V3 (see synthetic.py); never gated, never changes."""

    repo_id = synthetic.REPO_ID
    gated = False

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        # Built now, with the hub (~2 s of CPU: 163 headers, the index, the listing): a real
        # Hub has its listing ready, and a client's first request must not wait for it (it
        # landed in the DeepSeek-V3 view's mount time, issue 12).
        self.snapshot()

    def snapshot(self) -> Snapshot:
        with self._lock:
            if self._snapshot is None:
                entries = []
                for path, size in synthetic.repo_files():
                    if is_lfs(path, size):
                        entries.append(Entry.make(path, size, sha256=synthetic.fake_sha256(path, size)))
                    else:
                        blob = git_blob_sha1(synthetic.file_bytes(path, 0, size))
                        entries.append(Entry.make(path, size, blob_sha1=blob))
                self._snapshot = Snapshot(entries, synthetic.RELEASED)
            return self._snapshot

    def read(self, path: str, start: int, end: int) -> Iterator[bytes]:
        for pos in range(start, end, READ_CHUNK):
            yield synthetic.file_bytes(path, pos, min(end, pos + READ_CHUNK))
