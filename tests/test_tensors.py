"""Safetensors header parsing against the safetensors library, and `netmount tensors`."""

from __future__ import annotations

import json
import struct

import pytest

from netmount.tensors import (MAX_HEADER, HeaderError, TensorInfo, header_size, parse_header,
                              read_header)

# -- parse_header against files the safetensors writer produced ----------------------------


def _torch_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=g),
        "b.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.f16": torch.randn(2, 2, 2, generator=g).to(torch.float16),
        "d.fp8": torch.randn(16, 4, generator=g).to(torch.float8_e4m3fn),
        "e.e5m2": torch.randn(3, generator=g).to(torch.float8_e5m2),
        "f.i64": torch.arange(5),
        "g.bool": torch.tensor([True, False, True]),
        "h.u8": torch.arange(11, dtype=torch.uint8),
        "i.scalar": torch.tensor(3.5),
        "j.empty": torch.zeros(0, 4),
        "k.f64": torch.randn(2, generator=g, dtype=torch.float64),
        "l.i8": torch.arange(-3, 3, dtype=torch.int8),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


def test_matches_the_safetensors_library_byte_for_byte(tmp_path):
    import torch
    from safetensors import safe_open

    path, tensors = _torch_file(tmp_path)
    raw = path.read_bytes()
    records = parse_header(raw, len(raw))
    assert {r.name for r in records} == set(tensors)
    with safe_open(str(path), framework="pt") as sf:
        assert set(sf.keys()) == set(tensors)
        for r in records:
            sl = sf.get_slice(r.name)
            assert r.dtype == sl.get_dtype()
            assert list(r.shape) == list(sl.get_shape())
            want = sf.get_tensor(r.name)
            assert r.nbytes == want.numel() * want.element_size()
            assert raw[r.start:r.end] == want.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert records[-1].end == len(raw)  # file order, ending at the end of the file


def test_read_header_reads_only_the_header(tmp_path):
    path, _ = _torch_file(tmp_path)
    raw = path.read_bytes()
    calls = []

    def read(start, end):
        calls.append((start, end))
        return raw[start:end]

    span = header_size(raw)
    assert read_header(read, len(raw), first=16) == parse_header(raw, len(raw))
    assert calls == [(0, 16), (16, span)]  # one speculative read, then the rest of the header
    calls.clear()
    read_header(read, len(raw))
    assert calls == [(0, len(raw))]  # a small file is covered by the first read


def _file(header: dict, data_len: int | None = None, pad: bytes = b"") -> bytes:
    text = json.dumps(header).encode() + pad
    if data_len is None:
        data_len = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                       default=0)
    return struct.pack("<Q", len(text)) + text + b"\0" * data_len


def test_padding_metadata_and_sub_byte_dtypes():
    raw = _file({"__metadata__": {"k": "v"},
                 "w": {"dtype": "F4", "shape": [4, 4], "data_offsets": [0, 8]},
                 "s": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [8, 11]}}, pad=b"   ")
    assert parse_header(raw, len(raw)) == [
        TensorInfo("w", "F4", (4, 4), header_size(raw), header_size(raw) + 8),
        TensorInfo("s", "F6_E2M3", (4,), header_size(raw) + 8, header_size(raw) + 11),
    ]


def test_unknown_dtype_is_accepted_but_must_stay_contiguous():
    raw = _file({"x": {"dtype": "F3_FUTURE", "shape": [5], "data_offsets": [0, 2]}})
    assert parse_header(raw, len(raw))[0].nbytes == 2


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD = {
    "absurd length": struct.pack("<Q", MAX_HEADER + 1) + b"{}",
    "length past file": struct.pack("<Q", 1000) + b"{}",
    "zero length": struct.pack("<Q", 0),
    "too short": b"\x01\x02",
    "not json": struct.pack("<Q", 4) + b"{abc",
    "not utf8": struct.pack("<Q", 4) + b'{"\xff"',
    "not an object": struct.pack("<Q", 2) + b"[]",
    "size mismatch": _file({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}),
    "hole": _file({"x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
    "overlap": _file({"x": T, "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
    "negative shape": _file({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8),
    "bool shape": _file({"x": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}),
    "float offsets": _file({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1.0]}}, 1),
    "reversed offsets": _file({"x": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}, 1),
    "missing key": _file({"x": {"dtype": "U8", "data_offsets": [0, 1]}}, 1),
    "bad dtype": _file({"x": {"dtype": "f32; rm -rf", "shape": [2], "data_offsets": [0, 8]}}),
    "bad metadata": _file({"__metadata__": {"k": 1}, "x": T}),
    "trailing bytes": _file({"x": T}, 9),
    "misaligned F4": _file({"x": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}),
}


@pytest.mark.parametrize("why", sorted(BAD))
def test_corrupt_headers_raise_header_error(why):
    raw = BAD[why]
    with pytest.raises(HeaderError):
        parse_header(raw, len(raw))


def test_duplicate_keys_are_rejected():
    text = b'{"x": %s, "x": %s}' % (json.dumps(T).encode(), json.dumps(T).encode())
    raw = struct.pack("<Q", len(text)) + text + b"\0" * 8
    with pytest.raises(HeaderError, match="duplicate"):
        parse_header(raw, len(raw))


def test_truncated_prefix_is_an_error_not_a_guess():
    raw = _file({"x": T})
    with pytest.raises(HeaderError):
        parse_header(raw[:20], len(raw))
