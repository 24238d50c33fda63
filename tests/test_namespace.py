"""The namespace interface (mounting/namespace.py) and the FUSE face's metadata over it:
getattr, readdir, open and access of fs.py answered from a namespace, no mount needed."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pytest

from netmount.mounting.namespace import (
    DIR,
    NotAFolder,
    NotFound,
    TreeNamespace,
    Unavailable,
    data_node,
    plain_namespace,
    view_namespace,
)
from netmount.remote.hub import RemoteFile, Snapshot
from netmount.views.model import Piece, ViewFile

FILES = [RemoteFile("config.json", 10, "a" * 40), RemoteFile("sub/deeper/w.safetensors", 5000, "b" * 64, True),
         RemoteFile("sub/x.txt", 3, "c" * 40), RemoteFile("empty", 0, "d" * 40)]
SNAP = Snapshot("org/name", "main", "e" * 40, "http://127.0.0.1:1", FILES)


def test_a_tree_answers_files_folders_and_nothing_else():
    tree = plain_namespace(SNAP)
    assert tree.lookup("/") is DIR and tree.lookup("/sub") is DIR and tree.lookup("/sub/deeper") is DIR
    node = tree.lookup("/sub/deeper/w.safetensors")
    assert node.kind == "file" and node.file is SNAP.files[1] and node.size == 5000  # (the snapshot's, naming its repo)
    assert tree.lookup("/empty").size == 0
    for missing in ("/nope", "/sub/nope", "/config.json/x", "/sub/", "//sub", "sub"):
        with pytest.raises(NotFound):
            tree.lookup(missing)
    assert tree.children("/") == ["config.json", "empty", "sub"]
    assert tree.children("/sub") == ["deeper", "x.txt"]
    with pytest.raises(NotAFolder):
        tree.children("/config.json")
    with pytest.raises(NotFound):
        tree.children("/nope")
    assert tree.entries == 4 + 3  # files + folders (/, /sub, /sub/deeper)


def test_an_empty_tree_is_an_empty_root():
    tree = TreeNamespace([])
    assert tree.lookup("/") is DIR and tree.children("/") == []


def test_a_view_shows_its_files_and_its_passthrough_sources():
    vf = ViewFile("layers/model.layers.0.safetensors", (Piece(8, data=b"\0" * 8), Piece(100, source="w", offset=0)))
    view = SimpleNamespace(passthrough=[FILES[0]], files={vf.path: vf})
    tree = view_namespace(view)
    assert tree.children("/") == ["config.json", "layers"]
    node = tree.lookup("/layers/model.layers.0.safetensors")
    assert node.file is vf and node.size == 108
    with pytest.raises(NotFound):
        tree.lookup("/sub/x.txt")  # a source file the view does not pass through


def test_data_nodes_carry_their_content():
    node = data_node(b"f" * 40, fresh=True)
    assert node.kind == "data" and node.size == 40 and node.fresh


# -- the FUSE face over a namespace ------------------------------------------------------------

@pytest.fixture(scope="module")
def fs_module():
    from netmount.mounting import fs

    return fs


class Answers:
    """A namespace that answers what it is told: a fake for the FUSE face's side."""

    def __init__(self, nodes: dict, listings: dict, failing: set = frozenset()):
        self.nodes, self.listings, self.failing = nodes, listings, failing

    def lookup(self, path):
        if path in self.failing:
            raise Unavailable(path)
        if path not in self.nodes:
            raise NotFound(path)
        return self.nodes[path]

    def children(self, path):
        if path in self.failing:
            raise Unavailable(path)
        if path not in self.listings:
            raise NotAFolder(path) if path in self.nodes else NotFound(path)
        return self.listings[path]


def make_fs(fs_module, namespace=None, view=None, controls=None, on_drop=None):
    reader = SimpleNamespace(store=SimpleNamespace(cached_bytes=lambda cid: 0))
    return fs_module.NetmountFS(SNAP, reader, controls or {}, on_drop=on_drop, view=view, namespace=namespace)


def fuse_errno(fs_module, call, *args):
    with pytest.raises(fs_module.FuseOSError) as caught:
        call(*args)
    return caught.value.errno


def test_the_face_serves_a_plain_mount_from_its_namespace(fs_module):
    ops = make_fs(fs_module, controls={fs_module.STATS_FILE: lambda: b"{}"})
    assert stat.S_ISDIR(ops.getattr("/")["st_mode"]) and stat.S_ISDIR(ops.getattr("/sub")["st_mode"])
    st = ops.getattr("/sub/deeper/w.safetensors")
    assert stat.S_ISREG(st["st_mode"]) and st["st_size"] == 5000 and st["st_mode"] & 0o777 == 0o444
    assert ops.readdir("/", None) == [".", "..", "config.json", "empty", "sub"]  # no .netmount listed
    assert ops.readdir("/.netmount/raw/sub", None) == [".", "..", "deeper", "x.txt"]
    assert ops.getattr("/.netmount/raw/config.json")["st_size"] == 10
    assert fuse_errno(fs_module, ops.getattr, "/nope") == errno.ENOENT
    assert fuse_errno(fs_module, ops.readdir, "/config.json", None) == errno.ENOTDIR
    assert fuse_errno(fs_module, ops.getattr, "/.netmount/raw/.netmount/stats.json") == errno.ENOENT
    assert ops.getattr(fs_module.STATS_FILE)["st_size"] == 0 and stat.S_ISDIR(ops.getattr("/.netmount")["st_mode"])
    fi = SimpleNamespace(flags=os.O_RDONLY, fh=0, direct_io=0, keep_cache=0)
    assert ops.open("/config.json", fi) == 0 and fi.keep_cache == 1 and fi.fh > 0
    assert fuse_errno(fs_module, ops.open, "/sub", SimpleNamespace(flags=os.O_RDONLY)) == errno.EISDIR
    assert fuse_errno(fs_module, ops.open, "/nope", SimpleNamespace(flags=os.O_RDONLY)) == errno.ENOENT
    assert fuse_errno(fs_module, ops.open, "/config.json", SimpleNamespace(flags=os.O_RDWR)) == errno.EROFS
    assert ops.access("/sub", os.R_OK) == 0
    assert fuse_errno(fs_module, ops.access, "/sub", os.W_OK) == errno.EROFS
    assert fuse_errno(fs_module, ops.access, "/nope", os.R_OK) == errno.ENOENT


def test_drop_names_the_repo_files_even_under_a_view(fs_module):
    vf = ViewFile("v.safetensors", (Piece(8, data=b"\0" * 8),))
    view = SimpleNamespace(passthrough=[], files={vf.path: vf})
    dropped = []
    ops = make_fs(fs_module, view=view, on_drop=lambda f: dropped.append(f.path) or b"dropped\n")
    assert ops.readdir("/", None) == [".", "..", "v.safetensors"]
    assert fuse_errno(fs_module, ops.getattr, "/config.json") == errno.ENOENT
    assert stat.S_ISDIR(ops.getattr("/.netmount/drop/sub/deeper")["st_mode"])
    assert ops.getattr("/.netmount/drop/sub/x.txt")["st_size"] == 0
    assert fuse_errno(fs_module, ops.getattr, "/.netmount/drop/v.safetensors") == errno.ENOENT
    fi = SimpleNamespace(flags=os.O_RDONLY, fh=0, direct_io=0, keep_cache=0)
    ops.open("/.netmount/drop/sub/x.txt", fi)
    assert dropped == ["sub/x.txt"] and fi.direct_io == 1
    assert ops.read("/.netmount/drop/sub/x.txt", 100, 0, fi) == b"dropped\n"
    raw = SimpleNamespace(flags=os.O_RDONLY, fh=0, direct_io=0, keep_cache=0)
    ops.open("/.netmount/raw/v.safetensors", raw)
    assert raw.direct_io == 1  # a view file's raw reads arrive as asked


def test_a_namespace_given_decides_every_answer(fs_module):
    ref = data_node(b"f" * 40, fresh=True)
    tree_json = data_node(b'{"files": {}}')
    ns = Answers({"/": DIR, "/models--a--b": DIR, "/models--a--b/refs/main": ref, "/trees.json": tree_json,
                  "/models--a--b/snapshots/x/w": plain_namespace(SNAP).lookup("/sub/deeper/w.safetensors")},
                 {"/": ["models--a--b"]}, failing={"/models--slow--repo"})
    ops = make_fs(fs_module, namespace=ns)
    assert ops.readdir("/", None) == [".", "..", "models--a--b"]
    assert ops.getattr("/models--a--b/refs/main")["st_size"] == 40
    assert ops.getattr("/models--a--b/snapshots/x/w")["st_size"] == 5000
    assert fuse_errno(fs_module, ops.getattr, "/models--slow--repo") == errno.EIO
    assert fuse_errno(fs_module, ops.readdir, "/models--slow--repo", None) == errno.EIO
    assert fuse_errno(fs_module, ops.getattr, "/config.json") == errno.ENOENT  # the snapshot's files are not shown
    fresh = SimpleNamespace(flags=os.O_RDONLY, fh=0, direct_io=0, keep_cache=0)
    ops.open("/models--a--b/refs/main", fresh)
    assert fresh.direct_io == 1 and ops.read("/models--a--b/refs/main", 4096, 0, fresh) == b"f" * 40
    fixed = SimpleNamespace(flags=os.O_RDONLY, fh=0, direct_io=0, keep_cache=0)
    ops.open("/trees.json", fixed)
    assert fixed.keep_cache == 1 and fixed.direct_io == 0
    assert ops.read("/trees.json", 5, 2, fixed) == b'files'
    ops.release("/trees.json", fixed)
    assert fuse_errno(fs_module, ops.read, "/trees.json", 5, 2, fixed) == errno.EBADF
