"""Dataset repos without a mount: repo ids with a type, the parquet footer reader (checked
against pyarrow's own metadata) and the columnar policy (tables, as in test_policy.py)."""

from __future__ import annotations

import io
import struct

import pytest

from netmount.core import errors
from netmount.read.parquet import ParquetError, read_layout
from netmount.read.policy import FileState, PrefetchConfig, TensorMap, advance, judge, wants
from netmount.read.reader import ExactRead
from netmount.remote.hub import RepoSpec, Snapshot, parse_repo_spec, url_path

# -- repo ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, revision, repo_type, want", [
    ("org/name", None, None, ("org/name", "main", "model")),
    ("models/org/name", None, None, ("org/name", "main", "model")),
    ("datasets/org/name", None, None, ("org/name", "main", "dataset")),
    ("datasets/org/name@v1", None, None, ("org/name", "v1", "dataset")),
    ("spaces/org/app", "abc", None, ("org/app", "abc", "space")),
    ("org/name", None, "dataset", ("org/name", "main", "dataset")),
    ("datasets/org/name", None, "dataset", ("org/name", "main", "dataset")),
])
def test_repo_specs(spec, revision, repo_type, want):
    assert parse_repo_spec(spec, revision, repo_type) == RepoSpec(*want)


@pytest.mark.parametrize("spec, repo_type, message", [
    ("datasets/onlyorg", None, "expected 'datasets/org/name'"),
    ("models/a/b/c", None, "invalid repo id"),
    ("foo/a/b", None, "unknown repo type 'foo'"),
    ("datasets/org/name", "space", "repo type given twice"),
    ("org/name", "buckets", "invalid repo type"),
    ("datasets/org/na me", None, "invalid repo id"),
    ("datasets/org/name@", None, "nothing after '@'"),
])
def test_bad_repo_specs_are_one_line_bad_input(spec, repo_type, message):
    with pytest.raises(errors.BadInput) as info:
        parse_repo_spec(spec, None, repo_type)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_urls_and_names_carry_the_type():
    assert url_path("org/name") == "org/name"
    assert url_path("org/name", "dataset") == "datasets/org/name"
    assert url_path("org/app", "space") == "spaces/org/app"
    snap = Snapshot("org/name", "main", "0" * 40, "http://h", [], "dataset")
    assert snap.name == "datasets/org/name"
    assert Snapshot.from_json(snap.to_json()).repo_type == "dataset"
    # a snapshot written before repo types (a running daemon's config) is a model's
    old = '{"repo_id": "o/n", "revision": "main", "sha": "%s", "endpoint": "h", "files": []}' % ("0" * 40)
    assert Snapshot.from_json(old).name == "o/n"


def test_fetcher_urls_name_the_dataset():
    from netmount.remote.fetch import RangeFetcher

    f = RangeFetcher("http://hub", "org/name", "a" * 40, proxy="http://proxy", repo_type="dataset")
    assert (f.resolver.resolve_url(f.repo, "data/x 1.parquet")
            == f"http://hub/datasets/org/name/resolve/{'a' * 40}/data/x%201.parquet")
    model = RangeFetcher("http://hub", "org/name", "a" * 40)
    assert (model.resolver.resolve_url(model.repo, "m.safetensors")
            == f"http://hub/org/name/resolve/{'a' * 40}/m.safetensors")


# -- the footer reader, against pyarrow ---------------------------------------------------------

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _table(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return pa.table({
        "id": pa.array(np.arange(n)),
        "x": rng.standard_normal(n),
        "label": pa.array([f"c{i % 7}" for i in range(n)]),
        "maybe": pa.array([None if i % 3 else i for i in range(n)], pa.int32()),
        "nested": pa.array([{"a": i, "b": [i, i + 1]} for i in range(n)]),
        "flag": pa.array([i % 2 == 0 for i in range(n)]),
    })


def _pyarrow_chunks(data: bytes) -> list[tuple[int, str, int, int]]:
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    out = []
    for g in range(md.num_row_groups):
        for c in range(md.num_columns):
            cc = md.row_group(g).column(c)
            start = cc.data_page_offset
            if cc.has_dictionary_page and 0 < cc.dictionary_page_offset < start:
                start = cc.dictionary_page_offset
            out.append((g, cc.path_in_schema, start, start + cc.total_compressed_size))
    return sorted(out, key=lambda t: t[2])


@pytest.mark.parametrize("options", [
    {},
    {"compression": "none", "use_dictionary": False},
    {"compression": "zstd", "write_statistics": False},
    {"write_page_index": True, "data_page_size": 4096},
    {"version": "1.0", "use_dictionary": ["label"]},
    {"row_group_size": 37},  # many row groups: a footer much longer than the first read
])
def test_layout_matches_pyarrow(options):
    buf = io.BytesIO()
    pq.write_table(_table(3000), buf, **{"row_group_size": 700, **options})
    data = buf.getvalue()
    reads = []

    def read(a, b):
        reads.append((a, b))
        return data[a:b]

    layout = read_layout(read, len(data), first=4096)
    assert [(c.row_group, c.column, c.start, c.end) for c in layout.chunks] == _pyarrow_chunks(data)
    md = pq.ParquetFile(io.BytesIO(data)).metadata
    assert layout.num_rows == 3000
    assert layout.footer_start == len(data) - 8 - md.serialized_size
    assert reads[0] == (len(data) - 4096, len(data)) and len(reads) <= 2
    assert all(c.end <= layout.footer_start for c in layout.chunks)


def test_not_parquet_is_a_parquet_error():
    with pytest.raises(ParquetError, match="magic"):
        read_layout(lambda a, b: b"x" * (b - a), 100)
    with pytest.raises(ParquetError, match="encrypted"):
        read_layout(lambda a, b: (b"\0" * 100 + struct.pack("<I", 10) + b"PARE")[a:b], 108)
    with pytest.raises(ParquetError, match="does not fit"):
        read_layout(lambda a, b: (b"PAR1" + struct.pack("<I", 999) + b"PAR1")[a:b], 12)
    buf = io.BytesIO()
    pq.write_table(_table(100), buf)
    data = bytearray(buf.getvalue())
    n = struct.unpack("<I", data[-8:-4])[0]
    data[-8 - n: -8 - n // 2] = b"\xff" * (n - n // 2)  # garbage in the metadata's first half
    with pytest.raises(ParquetError):
        read_layout(lambda a, b: bytes(data[a:b]), len(data))


# -- the columnar policy --------------------------------------------------------------------------

BS = 64 << 10
CFG = PrefetchConfig(block_size=BS, window_max=16 * BS, lookahead=32 * BS, guard=2 * BS, stream_bytes=8 * BS,
                     max_extent=64 * BS, near=2 * BS)
# 6 row groups x 3 columns of 5 blocks each, then a footer
CHUNKS = [(4 + k * 5 * BS, 4 + (k + 1) * 5 * BS) for k in range(18)]
SIZE = CHUNKS[-1][1] + BS


def _maps():
    ranges = [*CHUNKS, (CHUNKS[-1][1], SIZE)]
    return TensorMap(ranges), TensorMap(ranges, columnar=True)


def _judged(tmap, state, stream, offset, size, folder=False, cfg=CFG):
    """What the prefetcher does before a read (read/prefetch.py): advance, then ask the policy."""
    slack = tmap.slack(stream.expected, offset, cfg.block_size) if tmap.columnar and stream else None
    run, window, streak = advance(stream, offset, size, SIZE, cfg, slack)
    verdict = judge(tmap, state, run, streak, offset, size, SIZE, folder_loading=folder, cfg=cfg)
    return verdict, run, window


def test_a_column_over_many_row_groups_is_never_a_loader():
    plain, columnar = _maps()
    for tmap, loader in ((plain, True), (columnar, False)):
        state = FileState()
        for g in range(6):  # column 1 of every row group: a jump into a new chunk each time
            start, end = CHUNKS[3 * g + 1]
            verdict, _, window = _judged(tmap, state, None, start + 3 * BS, BS)
            state = verdict.state
            if not loader:  # the chunk read, never past it
                assert all(start // BS <= b <= (end - 1) // BS for b in wants(tmap, verdict, window, SIZE, CFG))
                assert verdict.window[1] <= end
        assert state.loading is loader
    # another file of the folder being loaded does not make a column read a loader either
    verdict, _, _ = _judged(columnar, FileState(), None, CHUNKS[4][0] + 3 * BS, BS, folder=True)
    assert not verdict.state.loading and verdict.window[1] <= CHUNKS[4][1]


def test_a_jump_to_a_chunk_fetches_that_chunk_exactly_even_past_the_fourth():
    _, columnar = _maps()
    state, stream = FileState(), None
    for g in range(6):
        start, end = CHUNKS[3 * g + 2]
        page = start // 4096 * 4096  # the kernel's read starts on the page holding the chunk's start
        verdict, stream, _ = _judged(columnar, state, stream, page, 128 << 10, folder=True)
        state = verdict.state
        assert verdict.exact is not None and verdict.exact.extent == (start, end), g


def test_reads_around_a_chunk_fetched_exactly_are_fetched_exactly():
    """The kernel's readahead past a chunk a column reader pread (up to two windows):
    exactly its pages, not the blocks of the next chunk (another column)."""
    _, columnar = _maps()
    start, end = CHUNKS[4]
    verdict, stream, _ = _judged(columnar, FileState(), None, start, end - start)
    assert verdict.exact.extent == (start, end)
    verdict, _, window = _judged(columnar, verdict.state, stream, end, 128 << 10)
    assert verdict.exact == ExactRead() and wants(columnar, verdict, window, SIZE, CFG) == []


def test_a_full_scan_is_still_a_stream_but_the_first_chunk_alone_is_not():
    plain, columnar = _maps()
    state, stream = FileState(), None
    limits = {}
    for offset in range(0, 20 * BS, BS):  # sequential from byte 0, through several chunks
        verdict, stream, _ = _judged(columnar, state, stream, offset, BS)
        state, limits[offset] = verdict.state, verdict.window[1]
    # a run from byte 0 through stream_bytes is not yet a scan: it may be the first columns'
    # chunks (in a safetensors file it is one)
    assert limits[9 * BS] == CHUNKS[1][1]
    stream = None
    for offset in range(0, 10 * BS, BS):
        verdict, stream, _ = _judged(plain, FileState(), stream, offset, BS)
    assert verdict.window[1] == SIZE
    # through 3 whole chunks it is: read ahead to the end of the file
    assert limits[19 * BS] == SIZE and not state.loading


def test_a_column_read_is_not_a_sequential_run_but_a_scan_is():
    """Chunks of one column lie less than a block apart (the other columns between): with a
    block's slack they would pass for a sequential run.  In a columnar map a read continues
    a run only if no whole chunk lies between it and where the last read ended; a scan's
    reads reordered a little by the kernel still do."""
    plain, columnar = _maps()
    gap_cfg = PrefetchConfig(block_size=16 * BS, window_max=16 * BS)  # chunks (5 blocks) < a block apart
    for tmap, runs in ((plain, True), (columnar, False)):
        stream = None
        for g in range(4):  # column 0 of row groups 0..3, each read whole
            start, end = CHUNKS[3 * g]
            slack = tmap.slack(stream.expected, start, gap_cfg.block_size) if stream else None
            stream, window, streak = advance(stream, start, end - start, SIZE, gap_cfg, slack)
        assert (streak is not None) is runs
    # a scan: chunk after chunk, one read landing a little late
    stream = None
    for offset in [0, BS, 3 * BS, 2 * BS, 4 * BS, 5 * BS + 4, 6 * BS]:
        slack = columnar.slack(stream.expected, offset, gap_cfg.block_size) if stream else None
        stream, window, streak = advance(stream, offset, BS, SIZE, gap_cfg, slack)
        assert offset == 0 or streak == 0


def test_a_column_read_by_concurrent_preads_is_a_jump_per_chunk():
    """pyarrow pre-buffers a column: all its chunks' reads at once, which the prefetcher sees
    in the order they arrive.  Each read, rounded to pages by the kernel, spills into the
    other column's chunk between two of this column's: still a jump to a chunk, fetched
    exactly, never a sequential run that fetches blocks (traced: 1.5-2.2x the column)."""
    x, y = 97633, 97633  # narrow.parquet: a 1.3 KB flag, then x and y, in 20 row groups
    chunks, pos = [], 4
    for _ in range(20):
        for n in (1306, x, y):
            chunks.append((pos, pos + n))
            pos += n
    size = pos + 8192
    columnar = TensorMap([*chunks, (pos, size)], columnar=True)
    cfg = PrefetchConfig(max_extent=64 * BS, near=2 * BS)
    state, stream = FileState(), None
    for g in range(20):
        start, end = chunks[3 * g + 2]
        lo, hi = start // 4096 * 4096, -(-end // 4096) * 4096
        slack = columnar.slack(stream.expected, lo, cfg.block_size) if stream else None
        run, _, streak = advance(stream, lo, hi - lo, size, cfg, slack)
        verdict = judge(columnar, state, run, streak, lo, hi - lo, size, folder_loading=False, cfg=cfg)
        state, stream = verdict.state, run
        # (exactly: the chunk, or, near one fetched exactly, the read's pages, which hold it)
        assert streak is None and verdict.exact in (ExactRead((start, end)), ExactRead()), g
        assert wants(columnar, verdict, [], size, cfg) == []
