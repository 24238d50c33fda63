"""Dataset (and space) repos through the test hub and a real mount; parquet column reads
that stay columnar.  The dataset is made here with pyarrow: several files, several row
groups, a few columns of different widths.  Bytes are counted in the hub's request log."""

from __future__ import annotations

import json
import os

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from conftest import Mounter, run_cli, settle, sha256_file  # noqa: E402
from hubproc import HubProcess  # noqa: E402
from proxykit import origin, start_proxy  # noqa: E402,F401 (fixtures)

pytestmark = pytest.mark.fuse

DATASET = "tests/tables"
FILES = [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)]


def write_dataset(folder, seed: int = 0) -> None:
    """Three parquet files of 4 row groups; columns of ~400 KB (ids, floats), ~600 KB (text)
    and a small dictionary-encoded one (~25 KB a chunk)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    (folder / "data").mkdir(parents=True)
    for i, name in enumerate(FILES):
        n = 200_000
        table = pa.table({
            "id": rng.integers(0, 1 << 62, n),
            "x": rng.standard_normal(n),
            "label": pa.array([f"class-{v}" for v in rng.integers(0, 20, n)]),
            "text": pa.array([f"row {i}-{j} " + "abcdefgh"[: j % 8] * (j % 5) for j in range(n)]),
        })
        pq.write_table(table, folder / name, row_group_size=50_000, use_dictionary=["label"])
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tables\n")


def write_wide(folder, seed: int = 1) -> None:
    """One ~32 MB file of 4 row groups, 8 float columns of ~1 MB a chunk (for full scans),
    and a ~4 MB one of 20 row groups."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    n = 500_000
    table = pa.table({f"c{k}": rng.standard_normal(n) for k in range(8)})
    pq.write_table(table, folder / "wide.parquet", row_group_size=n // 4, use_dictionary=False)
    # 20 small row groups: a column's chunks (~100 KB) lie ~100 KB apart, less than a block
    n = 200_000
    table = pa.table({"flag": rng.integers(0, 2, n).astype(bool), "x": rng.standard_normal(n),
                      "y": rng.standard_normal(n)})
    pq.write_table(table, folder / "narrow.parquet", row_group_size=n // 20)


@pytest.fixture(scope="module")
def ds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsroot")
    write_dataset(root / "datasets" / DATASET)
    write_wide(root / "datasets" / "tests" / "wide")
    space = root / "spaces" / "tests" / "app"
    space.mkdir(parents=True)
    (space / "app.py").write_text("print('hello')\n")
    gated = root / "datasets" / "tests" / "gated"
    gated.mkdir(parents=True)
    (gated / "x.parquet").write_bytes((root / "datasets" / DATASET / FILES[0]).read_bytes())
    (gated / ".gated").write_text("")
    # a model of the same name: the types must not mix
    model = root / "tests" / "tables"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def dshub(ds_root):
    with HubProcess(ds_root, page_size=2, tokens={"good-token"}) as server:
        yield server


@pytest.fixture
def dsmounter(tmp_path, dshub):
    m = Mounter(tmp_path, dshub.url)
    yield m
    m.cleanup()


def source(ds_root, path: str):
    return ds_root / "datasets" / DATASET / path


def cdn_bytes(hub, local) -> tuple[int, int]:
    """(bytes, GET requests) the CDN sent of this file (LFS: the CDN path is its sha256)."""
    recs = hub.requests(server="cdn", method="GET", path_contains=sha256_file(local))
    return sum(r.body_bytes for r in recs), len(recs)


def chunk_bytes(local, column: str) -> tuple[int, int]:
    """(bytes of the column's chunks, bytes of the footer incl. its 8-byte tail)."""
    md = pq.ParquetFile(local).metadata
    total = 0
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            cc = md.row_group(g).column(c)
            if cc.path_in_schema == column:
                total += cc.total_compressed_size
    return total, md.serialized_size + 8


def test_huggingface_hub_speaks_to_the_dataset_routes(dshub, ds_root, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=dshub.url, token=False)
    info = api.dataset_info(DATASET, files_metadata=True)
    assert info.id == DATASET and len(info.sha) == 40
    assert sorted(s.rfilename for s in info.siblings) == sorted(["README.md", *FILES])
    assert {s.rfilename: s.size for s in info.siblings}[FILES[1]] == source(ds_root, FILES[1]).stat().st_size
    assert api.dataset_info(DATASET, revision=info.sha).sha == info.sha
    tree = list(api.list_repo_tree(DATASET, repo_type="dataset", recursive=True))  # paginated (page_size=2)
    files = {e.path: e for e in tree if hasattr(e, "size") and e.__class__.__name__ == "RepoFile"}
    assert sorted(files) == sorted(["README.md", *FILES])
    assert files[FILES[0]].lfs.sha256 == sha256_file(source(ds_root, FILES[0]))
    got = hf_hub_download(DATASET, FILES[2], repo_type="dataset", endpoint=dshub.url, token=False,
                          cache_dir=tmp_path / "hf")
    assert sha256_file(got) == sha256_file(source(ds_root, FILES[2]))
    # the same name as a model is another repo; a space is a repo of its own type
    assert [s.rfilename for s in api.model_info(DATASET).siblings] == ["config.json"]
    assert [s.rfilename for s in api.space_info("tests/app").siblings] == ["app.py"]
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("tests/app")


def test_mount_a_dataset_byte_identical_and_stats(dsmounter, ds_root):
    mp = dsmounter.mount(f"datasets/{DATASET}")
    assert sorted(os.listdir(mp / "data")) == sorted(p.rsplit("/", 1)[1] for p in FILES)
    for path in ["README.md", *FILES]:
        assert sha256_file(mp / path) == sha256_file(source(ds_root, path)), path
    stats = dsmounter.stats(mp)
    assert stats["repo"] == f"datasets/{DATASET}"
    done = run_cli("stats", str(mp), "--map")
    assert done.returncode == 0, done.stderr
    assert FILES[0] in done.stdout


COLUMN_CASES = [(DATASET, f, c) for f in FILES for c in ("id", "x", "text", "label")] + [
    ("tests/wide", "wide.parquet", c) for c in ("c0", "c5", "c7")] + [
    ("tests/wide", "narrow.parquet", c) for c in ("x", "y")]


@pytest.mark.parametrize("repo, path, column", COLUMN_CASES)
def test_a_column_read_fetches_that_column(dsmounter, dshub, ds_root, repo, path, column):
    """pq.read_table(columns=[c]): at most 2x the column's chunks + the footer cross the
    network, however many row groups it jumps through (each a jump to a new chunk)."""
    mp = dsmounter.mount(f"datasets/{repo}")
    dshub.reset_log()
    local = ds_root / "datasets" / repo / path
    got = pq.read_table(mp / path, columns=[column])
    assert got.equals(pq.read_table(local, columns=[column]))
    chunks, footer = chunk_bytes(local, column)
    settle(mp)
    sent, nreq = cdn_bytes(dshub, local)
    print(json.dumps({"file": path, "column": column, "chunks": chunks, "footer": footer, "sent": sent,
                      "requests": nreq, "ratio": round(sent / (chunks + footer), 2)}))
    assert chunks + footer - (4 << 10) <= sent <= 2 * (chunks + footer), (sent, chunks, footer)


@pytest.mark.parametrize("how", ["read_table", "cat"])
def test_a_full_read_is_a_stream_of_large_requests(dsmounter, dshub, ds_root, how):
    """A whole file read (pyarrow, all columns; or cat) ramps up to large requests: most
    bytes arrive in requests of a MiB or more, and nothing is fetched twice but the
    footer (read exactly first, then again inside the last block)."""
    mp = dsmounter.mount("datasets/tests/wide")
    local = ds_root / "datasets" / "tests" / "wide" / "wide.parquet"
    dshub.reset_log()
    if how == "read_table":
        assert pq.read_table(mp / "wide.parquet").equals(pq.read_table(local))
    else:
        assert sha256_file(mp / "wide.parquet") == sha256_file(local)
    size = local.stat().st_size
    settle(mp)
    recs = dshub.requests(server="cdn", method="GET", path_contains=sha256_file(local))
    sent = sum(r.body_bytes for r in recs)
    large = sum(r.body_bytes for r in recs if r.body_bytes >= 1 << 20)
    print(json.dumps({"how": how, "size": size, "sent": sent, "requests": len(recs), "in_large": large}))
    assert size <= sent <= size * 1.05 + (64 << 10)
    assert large >= 0.8 * size
    assert len(recs) < size // (128 << 10) // 4  # far fewer than the kernel's 128 KiB reads


def test_python_api_with_repo_type(dshub, ds_root, tmp_path):
    import netmount

    for repo, kind in ((DATASET, "dataset"), (f"datasets/{DATASET}", None)):
        with netmount.mount(repo, repo_type=kind, endpoint=dshub.url, token=False,
                            cache_dir=tmp_path / "cache") as path:
            assert sorted(os.listdir(path)) == ["README.md", "data"]
            assert pq.read_table(os.path.join(path, FILES[0]), columns=["x"]).equals(
                pq.read_table(source(ds_root, FILES[0]), columns=["x"]))
    with netmount.mount("tests/app", repo_type="space", endpoint=dshub.url, token=False,
                        cache_dir=tmp_path / "cache") as path:
        assert open(os.path.join(path, "app.py")).read() == "print('hello')\n"
    with pytest.raises(netmount.NetmountError, match="not found"):
        netmount.mount("tests/wide", endpoint=dshub.url, token=False, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("spec, message", [
    ("datasets/onlyorg", "expected 'datasets/org/name'"),
    ("models/a/b/c", "invalid repo id"),
    ("foo/a/b", "unknown repo type"),
    ("datasets/tests/missing", "datasets/tests/missing not found"),
    ("datasets/tests/gated", "gated"),
])
def test_bad_dataset_ids_are_one_line_errors(dsmounter, tmp_path, spec, message):
    mp = tmp_path / "mnt"
    mp.mkdir()
    done = run_cli("mount", spec, str(mp), env=dsmounter.env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.ismount(mp)


def test_gated_dataset_with_a_token(dsmounter, ds_root):
    mp = dsmounter.mount("datasets/tests/gated", env={"HF_TOKEN": "good-token"})
    assert sha256_file(mp / "x.parquet") == sha256_file(source(ds_root, FILES[0]))


def test_prefetch_match_warms_whole_parquet_files(dsmounter, dshub, ds_root):
    mp = dsmounter.mount(f"datasets/{DATASET}")
    dshub.reset_log()
    done = run_cli("prefetch", str(mp), "--match", "data/*.parquet")
    assert done.returncode == 0, done.stderr
    assert "3 whole files" in done.stdout
    settle(mp)
    total = sum(source(ds_root, p).stat().st_size for p in FILES)
    assert sum(r.body_bytes for r in dshub.requests(server="cdn", method="GET")) <= total * 1.05
    dshub.reset_log()
    for path in FILES:  # now local: no byte crosses the network
        assert sha256_file(mp / path) == sha256_file(source(ds_root, path))
    settle(mp)
    assert dshub.requests(server="cdn", method="GET") == []


@pytest.fixture(scope="module")
def proxy_root(ds_root):
    """proxykit's ``origin`` hub serves this module's dataset root."""
    return ds_root


def test_a_dataset_through_the_cache_proxy(start_proxy, origin, ds_root, tmp_path):
    """The proxy's route takes /datasets/org/name/resolve/..: a second node reads the column
    from the proxy alone (only metadata reaches the origin)."""
    proxy = start_proxy()
    want = pq.read_table(source(ds_root, FILES[0]), columns=["text"])
    for node in ("node1", "node2"):
        (tmp_path / node).mkdir()
        m = Mounter(tmp_path / node, origin.url)
        try:
            origin.reset_log()
            mp = m.mount(f"datasets/{DATASET}", "--cache-proxy", proxy.url)
            assert pq.read_table(mp / FILES[0], columns=["text"]).equals(want)
            s = m.stats(mp)["proxy"]
            assert s["fallbacks"] == 0 and s["requests"] > 0, s
            data = [r for r in origin.log if r.server == "cdn" or "/resolve/" in r.path]
            if node == "node1":
                assert data and all("/datasets/tests/tables/resolve/" in r.path for r in data if r.server == "hub")
            else:
                assert data == [] and s["hits"] > 0
        finally:
            m.cleanup()
