"""The daemon's one cache of layouts (read/metadata.py): parsed once whoever asks, bounded,
never fetched by stats; and what a listing's folders say (order, header-only shards)."""

from __future__ import annotations

import json
import struct

import pytest

from cache import MemoryBlockStore
from netmount.mounting.stats import HeaderCache
from netmount.read.metadata import Folders, Layout, NotLocal, TensorMaps, parse
from netmount.read.tensormap import TensorMap

from fakes import make_bytes, remote


def safetensors_bytes(sizes: list[int]) -> bytes:
    header = {}
    pos = 0
    for i, n in enumerate(sizes):
        header[f"t{i}"] = {"dtype": "U8", "shape": [n], "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + make_bytes(pos)


def test_a_layout_is_parsed_once_whoever_asks():
    data = safetensors_bytes([100, 0, 300])
    f = remote("m.safetensors", data)
    maps, reads = TensorMaps(), []

    def read(a, b):
        reads.append((a, b))
        return data[a:b]

    got = maps.layout(f.content_id, f.path, f.size, read, 64)
    assert [n for n, _, _ in got.names] == ["t0", "t1", "t2"]  # every tensor, the empty one too
    assert got.tmap.ranges == [(s, e) for _, s, e in got.names if e > s]
    assert maps.layout(f.content_id, f.path, f.size, lambda a, b: pytest.fail("read again"), 64) is got
    assert len(reads) == 2  # the first 64 bytes, then the rest of the header


def test_not_local_is_not_kept_and_a_bad_header_is_kept_as_no_map(caplog):
    maps = TensorMaps()

    def nowhere(a, b):
        raise NotLocal

    assert maps.layout("cid", "m.safetensors", 1000, nowhere, 64) is None
    assert maps.get("cid") is None  # asked again next time
    bad = b"\xff" * 100
    got = maps.layout("cid", "m.safetensors", len(bad), lambda a, b: bad[a:b], 64)
    assert got == Layout(None) and maps.get("cid") == Layout(None)


def test_the_cache_is_bounded_by_tensors_least_recently_used_first():
    maps = TensorMaps(max_tensors=25)
    ten = Layout(TensorMap([(k, k + 1) for k in range(10)]))  # weighs 11
    maps.put("a", ten)
    maps.put("b", ten)
    assert maps.get("a") is ten  # (a is now the most recently used)
    maps.put("c", ten)
    assert maps.get("b") is None and maps.get("a") is ten and maps.get("c") is ten
    maps.forget("a")
    assert maps.get("a") is None


def test_stats_lists_the_tensors_the_prefetcher_parsed_and_parses_only_local_bytes():
    data = safetensors_bytes([5000, 7000])
    f = remote("m.safetensors", data)
    store = MemoryBlockStore(4096)
    maps = TensorMaps()
    stats = HeaderCache(store, maps)
    assert stats.tensors(f) is None  # nothing local: not known (and not fetched)
    maps.layout(f.content_id, f.path, f.size, lambda a, b: data[a:b], 64)  # the prefetcher read it
    assert [n for n, _, _ in stats.tensors(f)] == ["t0", "t1"]
    stats.forget(f)  # (verify dropped its blocks)
    assert maps.get(f.content_id) is None
    for i in range(3):
        store.put(f.content_id, i, data[i * 4096:(i + 1) * 4096])
    assert [n for n, _, _ in stats.tensors(f)] == ["t0", "t1"]  # from the store


def test_parse_maps_a_parquet_footer_as_columnar():
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"a": list(range(1000)), "b": [str(k) for k in range(1000)]}), out, row_group_size=250)
    data = out.getvalue()
    got = parse("d.parquet", len(data), lambda a, b: data[a:b], 64)
    assert got.tmap.columnar and got.names is None
    assert got.tmap.ranges[0][0] == 0 and got.tmap.ranges[-1][1] == len(data)  # (the magic, the footer)
    assert len(got.tmap.ranges) == 4 * 2 + 1  # a chunk per column and row group, then the footer
    bad = b"PAR1" + b"\0" * 100 + b"NOPE"
    assert parse("d.parquet", len(bad), lambda a, b: bad[a:b], 64) == Layout(None)


@pytest.mark.parametrize("paths, index, config, order, header_only", [
    # a DeepSeek-like folder: the MTP layer's shard is opened for its header only, and left
    # out of a loader's order
    (["m/a.safetensors", "m/b.safetensors", "m/mtp.safetensors", "m/config.json", "m/x.safetensors.index.json"],
     {"model.layers.0.w": "a.safetensors", "model.layers.1.w": "b.safetensors", "lm_head.weight": "b.safetensors",
      "model.layers.2.w": "mtp.safetensors"}, {"num_hidden_layers": 2},
     ["m/b.safetensors", "m/a.safetensors"], {"m/mtp.safetensors"}),
    # no index: by name, none header-only
    (["a.safetensors", "b.safetensors"], None, None, ["a.safetensors", "b.safetensors"], set()),
    # an unreadable index: the same
    (["a.safetensors", "b.safetensors", "model.safetensors.index.json"], "not json", None,
     ["a.safetensors", "b.safetensors"], set()),
])
def test_folders(paths, index, config, order, header_only):
    files = {}
    for p in paths:
        if p.endswith(".index.json"):
            files[p] = index if isinstance(index, str) else json.dumps({"weight_map": index})
        elif p.endswith("config.json"):
            files[p] = json.dumps(config)
    asked = []

    def read(p):
        asked.append(p)
        return files.get(p, "").encode() or None

    folders = Folders(paths, read)
    folder = paths[0].rpartition("/")[0]
    assert folders.order(folder) == order
    assert {p for p in paths if folders.header_only(p)} == header_only
    assert folders.shards(folder) == sorted(p for p in paths if p.endswith(".safetensors"))
    n = len(asked)
    folders.order(folder)
    assert len(asked) == n  # read once per folder
