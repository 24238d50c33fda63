"""What an --hf-cache daemon keeps per (repo, commit, path), in unit tests (fakes, no mount):
two repos holding the same path are two files to the listing, the prefetcher, its pump, the
read coverage and the per-file tally; what several files share is said once; the per-file and
per-folder state stays bounded.  The live mount: test_hfcache_mount.py."""

from __future__ import annotations

import threading

from test_prefetch import BS, read, safetensors_bytes

from cache import MemoryBlockStore
from netmount.core.recent import Recent
from netmount.mounting.hfcache.catalog import Catalog
from netmount.mounting.hfcache.hubstats import _share
from netmount.mounting.hfcache.layout import RepoKey
from netmount.mounting.hfcache.listing import HubListing, name_of, split_name
from netmount.mounting.hfcache.tally import FileTally
from netmount.mounting.namespace import TreeNamespace
from netmount.read.coverage import Coverage
from netmount.read.metadata import Folders
from netmount.read.policy import PrefetchConfig
from netmount.read.prefetch import Prefetcher
from netmount.read.reader import BlockReader
from netmount.remote.contract import fetch_bytes
from netmount.remote.hub import RemoteFile, RepoRef

from fakes import MemoryFetcher

A, B = RepoKey("model", "org/a"), RepoKey("model", "org/b")
SHA_A, SHA_B = "a" * 40, "b" * 40


def files_of(key: RepoKey, sha: str, contents: dict[str, bytes]) -> list[RemoteFile]:
    ref = RepoRef(key.repo_id, key.repo_type, sha)
    return [RemoteFile(p, len(d), f"cid-{sha[:4]}-{p}", True, ref) for p, d in contents.items()]


def catalog_of(*repos) -> Catalog:
    catalog = Catalog()
    for key, sha, files in repos:
        catalog.record(key, "main", sha, lambda files=files: TreeNamespace(files), now=0.0)
    return catalog


def test_a_file_is_named_by_its_path_in_the_mount_and_found_again():
    [fa] = files_of(A, SHA_A, {"sub/model.safetensors": b"x"})
    [fb] = files_of(B, SHA_B, {"sub/model.safetensors": b"y"})
    listing = HubListing(catalog_of((A, SHA_A, [fa]), (B, SHA_B, [fb])))
    assert listing.name(fa) == f"models--org--a/snapshots/{SHA_A}/sub/model.safetensors" != listing.name(fb)
    assert listing.file(name_of(fa)) is fa and listing.file(name_of(fb)) is fb
    assert listing.folder(f"models--org--a/snapshots/{SHA_A}/sub") == [name_of(fa)]
    assert listing.folder(f"models--org--a/snapshots/{SHA_A}") == []  # a folder, no file
    assert split_name(name_of(fa)) == (A, SHA_A, "sub/model.safetensors")
    for other in ("models--org--a/refs/main", f"models--org--a/snapshots/{SHA_B}/sub/model.safetensors",
                  "blobs/x", f"models--org--a/snapshots/{SHA_A[:39]}/x"):
        assert listing.file(other) is None  # not a snapshot file, or a commit not held


def test_two_repos_with_one_path_are_two_files_to_the_prefetcher():
    """A loader in repo A's folder: A's shard is being read, B's (same path, other content) not;
    each repo's folder has its own index (A's makes ``mtp.safetensors`` a shard a loader opens
    for its header only, B has none); the pump keeps both repos' wants of one path."""
    shards = {"model.safetensors": safetensors_bytes([3 * BS] * 8), "mtp.safetensors": safetensors_bytes([BS])}
    index = b'{"weight_map": {"model.layers.0.w": "model.safetensors", "model.layers.1.w": "mtp.safetensors"}}'
    small = {"model.safetensors.index.json": index, "config.json": b'{"num_hidden_layers": 1}'}
    fa, fb = files_of(A, SHA_A, {**shards, **small}), files_of(B, SHA_B, shards)
    fetch = MemoryFetcher({(f.repo, f.path): {**shards, **small}[f.path] for f in fa + fb})
    run_done = threading.Event()
    reader = BlockReader(MemoryBlockStore(BS), fetch, max_request_bytes=4 * BS, on_run_done=run_done.set)
    cfg = PrefetchConfig(block_size=BS, window_max=16 * BS, lookahead=32 * BS)
    listing = HubListing(catalog_of((A, SHA_A, fa), (B, SHA_B, fb)))
    pre = Prefetcher(reader, run_done, budget=8 * BS, connections=4, config=cfg, listing=listing)
    try:
        shard_a, shard_b = fa[0], fb[0]
        for _start, end in pre.tensor_map(shard_a).ranges[:6]:  # a loader: tensor after tensor
            read(pre, reader, shard_a, end - 4096, 4096)
        assert pre.drain(30)
        assert pre.data_read(name_of(shard_a)) and not pre.data_read(name_of(shard_b))
        assert pre.header_only(name_of(fa[1])) and not pre.header_only(name_of(fb[1]))
        assert pre.close()  # (its pump's thread ends: what it is handed now stays)
        pre.pump.want(shard_a, [7])
        pre.pump.want(shard_b, [7])
        assert len(pre.pump._pending) == 2  # the same path in two repos: two wants
    finally:
        pre.close()
        reader.close()


def test_folders_of_a_listing_that_grows_are_bounded():
    asked = []

    def names(folder: str) -> list[str]:
        asked.append(folder)
        return [f"{folder}/a.safetensors", f"{folder}/b.safetensors"]

    folders = Folders(names, lambda _name: None, max_folders=2)
    for folder in ("x", "y", "z", "x"):
        assert folders.order(folder) == [f"{folder}/a.safetensors", f"{folder}/b.safetensors"]
    assert len(folders._known) == 2 and asked.count("x") == 4  # x forgotten, worked out again


def test_the_tally_counts_per_file_and_per_repo_and_the_counting_fetcher_is_the_contract():
    [fa] = files_of(A, SHA_A, {"config.json": b"{}" * 10})
    [fb] = files_of(B, SHA_B, {"config.json": b"{}" * 10})
    tally = FileTally(name_of, max_files=1)
    fetcher = tally.counting(MemoryFetcher({(fa.repo, fa.path): b"{}" * 10, (fb.repo, fb.path): b"{}" * 10}))
    assert fetch_bytes(fetcher, fa, 0, 20).result(30) == b"{}" * 10
    tally.served(fa, 0, 20)
    assert tally.per_file() == {name_of(fa): {"bytes_fetched": 20, "bytes_served": 20}}
    assert fetch_bytes(fetcher, fb, 5, 9).result(30) == b"}{}{"
    assert tally.per_file() == {name_of(fb): {"bytes_fetched": 4, "bytes_served": 0}}  # one file kept
    repos = tally.repos()
    assert (repos[A.folder].bytes_fetched, repos[A.folder].bytes_served, repos[B.folder].bytes_fetched) == (20, 20, 4)


def test_shared_content_is_named_and_counted_once():
    records = [{"path": "models--o--a/snapshots/1/t.json", "content_id": "c1", "cached_bytes": 10},
               {"path": "models--o--b/snapshots/2/t.json", "content_id": "c1", "cached_bytes": 10},
               {"path": "models--o--c/snapshots/3/t.json", "content_id": "c1", "cached_bytes": 10},
               {"path": "models--o--a/snapshots/1/w.bin", "content_id": "c2", "cached_bytes": 99}]
    assert _share(records) == {"contents": 1, "files": 3, "bytes": 20}
    assert records[0]["shared_with"] == ["models--o--b/snapshots/2/t.json", "models--o--c/snapshots/3/t.json"]
    assert records[3]["shared_with"] == []


def test_coverage_by_name_keeps_the_last_files_and_every_byte_read():
    fs = [RemoteFile("f.bin", 8192, f"cid{i}", repo=RepoRef(f"org/r{i}", "model", "c" * 40)) for i in range(3)]
    cov = Coverage(name_of, max_files=2)
    for f in fs:
        cov.record(f, 0, 4096)
    assert cov.total_bytes() == 3 * 4096
    assert cov.covered_bytes(name_of(fs[0])) == 0 and cov.covered_bytes(name_of(fs[2])) == 4096  # dropped, kept


def test_recent_keeps_the_newest_writes():
    r = Recent(2)
    r["a"], r["b"] = 1, 2
    r["a"] = 3  # written again: the newest
    r.add("c")
    assert list(r.items()) == [("a", 3), ("c", None)]
    r.setdefault("d", 4)
    assert list(r) == ["c", "d"]
