"""The --hf-cache namespace, pure: the layout, resolution on lookup, negative answers, TTLs,
single flight, bounded waits and bounded memory.  A fake resolver and an injected clock; no
sleeps (the one bounded wait that must elapse is injected as already elapsed)."""

from __future__ import annotations

import hashlib
import json
import threading
import tracemalloc

import pytest

from netmount.core import errors
from netmount.mounting.hfcache import HfCacheNamespace, RepoKey, parse_folder
from netmount.mounting.hfcache.catalog import Catalog
from netmount.mounting.hfcache.flights import Workers
from netmount.mounting.hfcache.layout import lfs_pointer_oid, tree_json
from netmount.mounting.namespace import DIR, NotAFolder, NotFound, Unavailable
from netmount.remote.hub import RemoteFile, Snapshot

from conftest import within

MODEL = RepoKey("model", "org/model")
DATA = RepoKey("dataset", "org/data")


def sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def files_of(tag: str) -> list[RemoteFile]:
    return [RemoteFile("config.json", 12, sha(tag + "config")),
            RemoteFile("model.safetensors", 4096, hashlib.sha256(tag.encode()).hexdigest(), True),
            RemoteFile("sub/deep/tokenizer.json", 100, sha("shared tokenizer"))]


class FakeHub:
    """Repos by key: branches -> sha, commits -> files.  Counts what it is asked; can hold
    every answer until ``release`` is set, or fail with ``failure``."""

    def __init__(self) -> None:
        self.repos: dict[RepoKey, dict] = {}
        self.calls: list[tuple[RepoKey, str]] = []
        self.hold: threading.Event | None = None
        self.asked = threading.Event()
        self.failure: Exception | None = None

    def add(self, key: RepoKey, tag: str, branch: str = "main", gated: bool = False) -> str:
        commit = sha(f"{key}{tag}")
        repo = self.repos.setdefault(key, {"branches": {}, "commits": {}, "gated": gated})
        repo["commits"][commit] = files_of(tag)
        repo["branches"][branch] = commit
        return commit

    def __call__(self, key: RepoKey, revision: str) -> Snapshot:
        self.calls.append((key, revision))
        self.asked.set()
        if self.hold is not None:
            assert self.hold.wait(30), "the test never released the fake hub"
        if self.failure is not None:
            raise self.failure
        repo = self.repos.get(key)
        if repo is None:
            raise errors.RepoNotFound(f"repository {key.repo_id} not found")
        if repo["gated"]:
            raise errors.GatedRepo(f"{key.repo_id} is gated")
        commit = repo["branches"].get(revision, revision if revision in repo["commits"] else None)
        if commit is None:
            raise errors.RevisionNotFound(f"revision {revision!r} not found")
        return Snapshot(key.repo_id, revision, commit, "http://127.0.0.1:9", repo["commits"][commit], key.repo_type)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def inline(call):  # run a resolve on the caller's thread: deterministic single-threaded tests
    call()


@pytest.fixture
def hub():
    return FakeHub()


@pytest.fixture
def clock():
    return Clock()


def make(hub, clock, **kw) -> HfCacheNamespace:
    kw.setdefault("submit", inline)
    return HfCacheNamespace(hub, clock=clock, **kw)


# -- layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, key", [
    ("models--org--name", RepoKey("model", "org/name")),
    ("datasets--HuggingFaceFW--fineweb-edu", RepoKey("dataset", "HuggingFaceFW/fineweb-edu")),
    ("spaces--a--b.c_d", RepoKey("space", "a/b.c_d")),
    ("models--gpt2", RepoKey("model", "gpt2")),
    ("models--a--b--c", None), ("kernels--a--b", None), ("models--", None), ("models--a..b--c", None),
    ("blobs", None), (".locks", None), ("CACHEDIR.TAG", None), ("models---a--b", None), ("models--a--b.git", None),
])
def test_folder_names_parse_as_huggingface_hub_makes_them(name, key):
    from huggingface_hub.file_download import repo_folder_name

    assert parse_folder(name) == key
    if key is not None:
        assert key.folder == name == repo_folder_name(repo_id=key.repo_id, repo_type=key.repo_type)


def test_the_tree_listing_is_what_huggingface_hub_reads(tmp_path):
    from huggingface_hub._tree_cache import read_tree_cache

    files = files_of("x")
    (tmp_path / "trees").mkdir()
    (tmp_path / "trees" / f"{'a' * 40}.json").write_bytes(tree_json(files))
    entries = read_tree_cache(str(tmp_path), "a" * 40)
    assert set(entries) == {f.path for f in files}
    lfs = entries["model.safetensors"]
    assert lfs.lfs_sha256 == files[1].content_id and lfs.lfs_size == 4096 and lfs.xet_hash is None
    assert lfs.blob_id == lfs_pointer_oid(files[1].content_id, 4096)
    assert entries["config.json"].blob_id == files[0].content_id and entries["config.json"].lfs_sha256 is None


def test_an_lfs_pointer_oid_is_git_blob_id_of_the_pointer():
    from netmount.dev.testhub.repo import Entry

    entry = Entry.make("w.safetensors", 123456, sha256="ab" * 32)  # the test hub lists what the Hub lists
    assert lfs_pointer_oid("ab" * 32, 123456) == entry.oid


# -- lookups ------------------------------------------------------------------------------------

def test_a_repo_appears_on_first_lookup_with_refs_snapshots_trees(hub, clock):
    main = hub.add(MODEL, "v1")
    ns = make(hub, clock)
    assert ns.children("/") == []
    assert ns.lookup("/models--org--model") is DIR
    assert hub.calls == [(MODEL, "main")]
    assert ns.children("/") == ["models--org--model"]
    assert ns.children("/models--org--model") == [".no_exist", "refs", "snapshots", "trees"]
    ref = ns.lookup("/models--org--model/refs/main")
    assert ref.kind == "data" and ref.data == main.encode() and ref.size == 40 and ref.fresh
    assert ns.children("/models--org--model/refs") == ["main"]
    assert ns.children("/models--org--model/snapshots") == [main]
    base = f"/models--org--model/snapshots/{main}"
    assert ns.children(base) == ["config.json", "model.safetensors", "sub"]
    node = ns.lookup(base + "/sub/deep/tokenizer.json")
    assert node.kind == "file" and node.size == 100 and node.file.path == "sub/deep/tokenizer.json"
    assert ns.lookup(base + "/sub") is DIR
    listing = json.loads(ns.lookup(f"/models--org--model/trees/{main}.json").data)
    assert listing["format_version"] == 1 and set(listing["files"]) == {f.path for f in files_of("v1")}
    assert ns.children("/models--org--model/trees") == [f"{main}.json"]
    assert hub.calls == [(MODEL, "main")]  # everything since came from what was resolved
    with pytest.raises(NotAFolder):
        ns.children(base + "/config.json")
    for missing in (base + "/nope", "/models--org--model/blobs", "/models--org--model/snapshots/main",
                    f"/models--org--model/trees/{main}", f"/models--org--model/trees/{main}.json/x"):
        with pytest.raises(NotFound):
            ns.lookup(missing)
    assert hub.calls == [(MODEL, "main")]


def test_no_exist_marks_what_a_commit_lacks(hub, clock):
    main = hub.add(MODEL, "v1")
    ns = make(hub, clock)
    base = f"/models--org--model/.no_exist/{main}"
    assert ns.lookup(base) is DIR and ns.children(base) == []
    marker = ns.lookup(base + "/adapter_config.json")
    assert marker.kind == "data" and marker.data == b"" and not marker.fresh
    assert ns.lookup(base + "/sub") is DIR  # a folder the commit has: the path goes on
    assert ns.lookup(base + "/sub/deep/missing.txt").kind == "data"
    for present in ("/config.json", "/sub/deep/tokenizer.json", "/config.json/x", "/nope/x"):
        with pytest.raises(NotFound):
            ns.lookup(base + present)
    assert ns.children("/models--org--model/.no_exist") == [main]


def test_names_that_are_no_repo_never_reach_the_hub(hub, clock):
    ns = make(hub, clock)
    for name in ("/blobs", "/.locks", "/CACHEDIR.TAG", "/kernels--a--b", "/models--a--b--c", "/models--bad..id",
                 "/.netmount"):
        with pytest.raises(NotFound):
            ns.lookup(name)
    assert hub.calls == []


def test_a_missing_repo_is_enoent_remembered_for_a_while(hub, clock):
    ns = make(hub, clock, negative_ttl=60)
    for _ in range(5):
        with pytest.raises(NotFound):
            ns.lookup("/models--org--nothing/refs/main")
    assert hub.calls == [(RepoKey("model", "org/nothing"), "main")]
    clock.now += 61
    hub.add(RepoKey("model", "org/nothing"), "late")  # created meanwhile
    assert ns.lookup("/models--org--nothing") is DIR
    assert len(hub.calls) == 2 and ns.children("/") == ["models--org--nothing"]


def test_a_gated_repo_without_access_is_not_there(hub, clock):
    hub.add(MODEL, "v1", gated=True)
    hub.add(DATA, "d1")
    ns = make(hub, clock)
    with pytest.raises(NotFound):
        ns.lookup("/models--org--model")
    assert ns.lookup("/datasets--org--data") is DIR
    assert ns.children("/") == ["datasets--org--data"]
    with pytest.raises(NotFound):
        ns.lookup("/models--org--model")
    assert hub.calls.count((MODEL, "main")) == 1


def test_a_repo_without_main_is_a_folder_and_its_other_refs_resolve(hub, clock):
    v2 = hub.add(MODEL, "v2", branch="v2.0")
    ns = make(hub, clock)
    assert ns.lookup("/models--org--model") is DIR
    with pytest.raises(NotFound):
        ns.lookup("/models--org--model/refs/main")
    assert ns.lookup("/models--org--model/refs/v2.0").data == v2.encode()
    assert ns.children("/models--org--model/refs") == ["v2.0"]
    assert hub.calls == [(MODEL, "main"), (MODEL, "v2.0")]  # main's absence was remembered


def test_a_commit_not_seen_yet_is_resolved_by_its_sha_and_kept(hub, clock):
    old = hub.add(MODEL, "v1")
    new = hub.add(MODEL, "v2")  # main moved on; v1 is still a commit of the repo
    ns = make(hub, clock)
    assert ns.lookup(f"/models--org--model/snapshots/{old}/config.json").size == 12
    assert hub.calls == [(MODEL, "main"), (MODEL, old)]
    assert ns.children("/models--org--model/snapshots") == sorted([old, new])
    assert ns.children("/models--org--model/refs") == ["main"]  # a sha is no ref
    with pytest.raises(NotFound):
        ns.lookup(f"/models--org--model/snapshots/{'0' * 40}")
    with pytest.raises(NotFound):
        ns.lookup(f"/models--org--model/snapshots/{'0' * 40}/config.json")
    assert hub.calls[-1] == (MODEL, "0" * 40) and len(hub.calls) == 3
    ns.lookup(f"/models--org--model/snapshots/{old}/config.json")
    assert len(hub.calls) == 3


def test_a_branch_follows_the_hub_after_the_ttl_and_snapshots_never_change(hub, clock):
    v1 = hub.add(MODEL, "v1")
    ns = make(hub, clock, refs_ttl=600)
    assert ns.lookup("/models--org--model/refs/main").data == v1.encode()
    v2 = hub.add(MODEL, "v2")
    clock.now += 599
    assert ns.lookup("/models--org--model/refs/main").data == v1.encode()  # within the TTL: as it was
    assert len(hub.calls) == 1
    clock.now += 2
    assert ns.lookup("/models--org--model/refs/main").data == v2.encode()
    assert len(hub.calls) == 2
    assert ns.children("/models--org--model/snapshots") == sorted([v1, v2])
    assert ns.lookup(f"/models--org--model/snapshots/{v1}/model.safetensors").file.content_id == \
        hashlib.sha256(b"v1").hexdigest()


def test_the_hub_unreachable_is_eio_briefly_and_a_known_ref_stays(hub, clock):
    v1 = hub.add(MODEL, "v1")
    ns = make(hub, clock, refs_ttl=10, retry_ttl=5)
    ns.lookup("/models--org--model/refs/main")
    hub.failure = errors.EndpointUnreachable("cannot reach http://127.0.0.1:9")
    clock.now += 11
    assert ns.lookup("/models--org--model/refs/main").data == v1.encode()  # stale beats nothing
    with pytest.raises(Unavailable):
        ns.lookup("/datasets--org--data")
    with pytest.raises(Unavailable):
        ns.lookup("/datasets--org--data")
    assert hub.calls.count((DATA, "main")) == 1  # the failure is remembered a few seconds
    hub.failure = None
    hub.add(DATA, "d1")
    clock.now += 6
    assert ns.lookup("/datasets--org--data") is DIR


def test_refs_with_slashes_are_folders_of_refs(hub, clock):
    v1 = hub.add(MODEL, "v1")
    pr = hub.add(MODEL, "pr", branch="refs/pr/1")
    ns = make(hub, clock)
    assert ns.lookup("/models--org--model/refs/refs") is DIR
    assert ns.lookup("/models--org--model/refs/refs/pr") is DIR
    assert ns.lookup("/models--org--model/refs/refs/pr/1").data == pr.encode()
    assert ns.children("/models--org--model/refs") == ["main", "refs"]
    assert ns.children("/models--org--model/refs/refs") == ["pr"]
    assert ns.children("/models--org--model/refs/refs/pr") == ["1"]
    assert ns.lookup("/models--org--model/refs/main").data == v1.encode()
    before = len(hub.calls)
    for bad in (".hidden", "a..b", "x.lock", v1, "we ird", "-x", "main.1a2b3c4d.tmp"):  # (huggingface_hub's temp file)
        with pytest.raises(NotFound):
            ns.lookup(f"/models--org--model/refs/{bad}")
    assert len(hub.calls) == before  # not a ref name: never asked


def test_a_pinned_repo_is_listed_at_once_and_never_evicted(hub, clock):
    pinned = hub.add(MODEL, "v1", branch="v1.0")
    ns = make(hub, clock, catalog=Catalog(max_repos=3))
    ns.pin(MODEL, "v1.0", hub(MODEL, "v1.0"))
    hub.calls.clear()
    assert ns.children("/") == ["models--org--model"]
    for n in range(20):
        hub.add(RepoKey("model", f"many/r{n}"), f"r{n}")
        ns.lookup(f"/models--many--r{n}")
    assert ns.catalog.usage()["repos"] == 3
    assert ns.lookup("/models--org--model/refs/v1.0").data == pinned.encode()
    assert (MODEL, "v1.0") not in hub.calls


# -- bounds --------------------------------------------------------------------------------------

def test_thousands_of_repos_keep_the_metadata_bounded(hub, clock):
    ns = make(hub, clock, catalog=Catalog(max_repos=64, max_entries=2000, max_names=500))

    def look(n: int) -> None:
        key = RepoKey("model", f"synthetic/repo-{n}")
        hub.add(key, f"t{n}")
        sha_ = hub.repos[key]["branches"]["main"]
        assert ns.lookup(f"/{key.folder}/snapshots/{sha_}/config.json").size == 12

    tracemalloc.start()
    try:
        for n in range(1000):
            look(n)
        before = tracemalloc.take_snapshot()
        for n in range(1000, 4000):
            look(n)
        hub.repos.clear()  # the fake hub's own records are not the namespace's
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename")
                if "netmount/mounting" in s.traceback[0].filename)
    usage = ns.catalog.usage()
    assert usage["repos"] <= 64 and usage["entries"] <= 2000 and usage["names"] <= 500
    assert len(ns.children("/")) <= 500 + 64
    assert grown < 200_000, f"3,000 more repos grew the namespace by {grown} bytes"


def test_one_repo_keeps_a_bounded_number_of_commits_and_consistent_refs(hub, clock):
    shas = [hub.add(MODEL, f"v{i}", branch=f"b{i}") for i in range(12)]
    ns = make(hub, clock, catalog=Catalog(max_commits=4))
    for i in range(12):
        ns.lookup(f"/models--org--model/refs/b{i}")
    held = ns.children("/models--org--model/snapshots")
    assert held == sorted(shas[-4:])
    refs = ns.children("/models--org--model/refs")
    assert refs == sorted(f"b{i}" for i in range(8, 12))  # every ref names a held commit
    assert ns.lookup(f"/models--org--model/snapshots/{shas[0]}/config.json").size == 12  # asked again


# -- concurrency ---------------------------------------------------------------------------------

def test_one_question_per_repo_and_other_repos_do_not_wait_behind_it(hub, clock):
    hub.add(MODEL, "v1")
    other = FakeHub()
    other.add(DATA, "d1")
    slow = threading.Event()
    pool = Workers(4)

    def resolve(key, revision):
        return (hub if key == MODEL else other)(key, revision)

    hub.hold = slow
    ns = HfCacheNamespace(resolve, clock=clock, submit=pool.submit, wait_seconds=60)
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(ns.lookup("/models--org--model")))
                   for _ in range(8)]
        for t in threads:
            t.start()
        assert hub.asked.wait(30)
        # the model's resolve is held; a lookup of another repo (and of the root) is answered meanwhile
        assert within(30, ns.lookup, "/datasets--org--data") is DIR
        assert within(30, ns.children, "/") == ["datasets--org--data"]  # the model: not resolved yet
        slow.set()
        for t in threads:
            t.join(30)
        assert results == [DIR] * 8
        assert ns.children("/") == ["datasets--org--data", "models--org--model"]
        assert hub.calls == [(MODEL, "main")]
    finally:
        slow.set()
        ns.close()
        pool.close()


def test_a_slow_hub_is_eio_after_the_wait_and_its_answer_is_kept(hub, clock):
    main = hub.add(MODEL, "v1")
    hub.hold = threading.Event()
    pool = Workers(1)
    gave_up = []

    def wait(event, seconds):  # the first wait: its bound elapsed at once (no test waits on time)
        gave_up.append(seconds)
        return event.is_set() if len(gave_up) == 1 else event.wait(seconds)

    ns = HfCacheNamespace(hub, clock=clock, submit=pool.submit, wait=wait, wait_seconds=30)
    try:
        with pytest.raises(Unavailable, match="within 30 s"):
            ns.lookup("/models--org--model")
        assert gave_up == [30]
        hub.hold.set()  # the answer comes: the next lookup joins the same call, or finds it kept
        assert within(60, ns.lookup, f"/models--org--model/snapshots/{main}") is DIR
        assert hub.calls == [(MODEL, "main")]
    finally:
        hub.hold.set()
        ns.close()
        pool.close()


def test_closing_answers_every_waiter(hub, clock):
    hub.add(MODEL, "v1")
    hub.hold = threading.Event()
    ns = HfCacheNamespace(hub, clock=clock, workers=1, wait_seconds=60)
    try:
        errors_seen = []

        def look():
            try:
                ns.lookup("/models--org--model")
            except Unavailable as exc:
                errors_seen.append(str(exc))

        t = threading.Thread(target=look)
        t.start()
        assert hub.asked.wait(30)
        ns.close()
        t.join(30)
        assert not t.is_alive() and errors_seen and "closing" in errors_seen[0]
        with pytest.raises(Unavailable):
            ns.lookup("/datasets--org--data")
    finally:
        hub.hold.set()


def test_a_commit_answered_with_another_commit_is_not_there(hub, clock):
    main = hub.add(MODEL, "v1")

    def liar(key, revision):  # a server that answers any revision with main
        return hub(key, "main")

    ns = make(liar, clock)
    with pytest.raises(NotFound):
        ns.lookup(f"/models--org--model/snapshots/{'1' * 40}")
    assert ns.children("/models--org--model/refs") == ["main"]
    assert ns.children("/models--org--model/snapshots") == [main]
