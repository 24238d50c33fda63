"""Block arithmetic: table-driven edges, then randomized cases against a per-byte model."""

import random

import pytest

from netmount.core.blocks import block_count, block_range, block_span, coalesce, slice_blocks

# (offset, size, file_size, block_size) -> expected block indices
RANGE_CASES = [
    ((0, 0, 100, 10), []),            # zero size
    ((5, -3, 100, 10), []),           # negative size
    ((100, 10, 100, 10), []),         # offset at EOF
    ((150, 10, 100, 10), []),         # past EOF
    ((0, 10, 0, 10), []),             # empty file
    ((0, 1, 100, 10), [0]),
    ((0, 10, 100, 10), [0]),          # exactly one block
    ((0, 11, 100, 10), [0, 1]),       # one byte into the next block
    ((9, 2, 100, 10), [0, 1]),        # straddles a boundary
    ((10, 10, 100, 10), [1]),         # starts on a boundary
    ((95, 100, 100, 10), [9]),        # clipped at EOF
    ((0, 1000, 95, 10), list(range(10))),  # last block short (5 bytes)
    ((94, 1, 95, 10), [9]),           # last byte of a short last block
    ((0, 100, 3, 10), [0]),           # file smaller than a block
    ((2, 1, 3, 10), [0]),
    ((3, 1, 3, 10), []),
]


@pytest.mark.parametrize("args, expected", RANGE_CASES)
def test_block_range_table(args, expected):
    assert list(block_range(*args)) == expected


SPAN_CASES = [
    ((0, 10, 100), (0, 10)),
    ((9, 10, 100), (90, 100)),
    ((9, 10, 95), (90, 95)),   # short last block
    ((0, 10, 3), (0, 3)),      # file smaller than a block
    ((0, 1, 1), (0, 1)),
]


@pytest.mark.parametrize("args, expected", SPAN_CASES)
def test_block_span_table(args, expected):
    assert block_span(*args) == expected


@pytest.mark.parametrize("args", [(10, 10, 100), (-1, 10, 100), (0, 10, 0), (1, 10, 3)])
def test_block_span_outside_file(args):
    with pytest.raises(IndexError):
        block_span(*args)


@pytest.mark.parametrize("bad", [0, -4])
def test_nonpositive_block_size_rejected(bad):
    with pytest.raises(ValueError):
        block_range(0, 1, 10, bad)
    with pytest.raises(ValueError):
        block_span(0, bad, 10)


def test_negative_offset_rejected():
    with pytest.raises(ValueError):
        block_range(-1, 5, 10, 4)


@pytest.mark.parametrize("file_size, block_size, n", [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2)])
def test_block_count(file_size, block_size, n):
    assert block_count(file_size, block_size) == n


COALESCE_CASES = [
    (([], None), []),
    (([3], None), [(3, 3)]),
    (([1, 2, 3], None), [(1, 3)]),
    (([3, 1, 2, 2, 1], None), [(1, 3)]),         # unsorted, duplicates
    (([1, 2, 4, 5, 7], None), [(1, 2), (4, 5), (7, 7)]),
    (([0, 1, 2, 3, 4], 2), [(0, 1), (2, 3), (4, 4)]),
    (([0, 1, 2, 3], 1), [(0, 0), (1, 1), (2, 2), (3, 3)]),
    (([0, 1, 2, 5, 6], 3), [(0, 2), (5, 6)]),
]


@pytest.mark.parametrize("args, expected", COALESCE_CASES)
def test_coalesce_table(args, expected):
    assert coalesce(*args) == expected


def test_coalesce_rejects_zero_max():
    with pytest.raises(ValueError):
        coalesce([1], 0)


def _blocks_of(content: bytes, block_size: int) -> dict[int, bytes]:
    return {i: content[i * block_size:(i + 1) * block_size] for i in range(block_count(len(content), block_size))}


SLICE_CASES = [
    (0, 0), (0, 1), (0, 10), (3, 4), (9, 2), (10, 10), (0, 95), (90, 100), (94, 1), (95, 1), (200, 5),
]


@pytest.mark.parametrize("offset, size", SLICE_CASES)
def test_slice_blocks_table(offset, size):
    content = bytes(range(95))
    assert slice_blocks(_blocks_of(content, 10), offset, size, 95, 10) == content[offset:offset + size]


def test_slice_blocks_accepts_sequence():
    content = bytes(range(23))
    blocks = [content[i:i + 5] for i in range(0, 23, 5)]
    assert slice_blocks(blocks, 4, 12, 23, 5) == content[4:16]


def test_slice_blocks_missing_block_raises():
    content = bytes(range(30))
    blocks = _blocks_of(content, 10)
    del blocks[1]
    with pytest.raises(ValueError, match="block 1 missing"):
        slice_blocks(blocks, 5, 20, 30, 10)
    # a range that does not need block 1 still works
    assert slice_blocks(blocks, 20, 10, 30, 10) == content[20:]


@pytest.mark.parametrize("bad", [b"", b"x" * 9, b"x" * 11, None])
def test_slice_blocks_wrong_length_raises(bad):
    blocks = _blocks_of(bytes(30), 10)
    blocks[1] = bad
    with pytest.raises(ValueError, match="block 1"):
        slice_blocks(blocks, 0, 30, 30, 10)


def test_slice_blocks_short_last_block_must_be_short():
    blocks = _blocks_of(bytes(25), 10)
    blocks[2] = bytes(10)  # a full-size block where the file ends after 5 bytes
    with pytest.raises(ValueError):
        slice_blocks(blocks, 20, 5, 25, 10)


# -- randomized, against a model: which block holds byte b is b // block_size ----------


def _random_case(rng):
    block_size = rng.choice([1, 2, 3, 7, 8, 16, 64, rng.randint(1, 100)])
    file_size = rng.choice([0, 1, block_size - 1, block_size, block_size + 1, rng.randint(0, 10 * block_size)])
    file_size = max(file_size, 0)
    offset = rng.choice([0, file_size, file_size + 1, rng.randint(0, file_size + 2 * block_size)])
    size = rng.choice([0, -1, 1, block_size, rng.randint(0, 3 * block_size + 5), rng.randint(0, file_size + 5)])
    return offset, size, file_size, block_size


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_block_range_and_slice_random(seed):
    rng = random.Random(seed)
    for _ in range(3000):
        offset, size, file_size, block_size = _random_case(rng)
        content = rng.randbytes(file_size)
        wanted_bytes = [b for b in range(offset, offset + max(size, 0)) if b < file_size]
        model = sorted({b // block_size for b in wanted_bytes})
        got = block_range(offset, size, file_size, block_size)
        assert list(got) == model, (offset, size, file_size, block_size)
        # each block's span contains exactly the bytes the model assigns to it
        for i in got:
            start, end = block_span(i, block_size, file_size)
            assert [b for b in range(file_size) if b // block_size == i] == list(range(start, end))
        # assembling from exactly the covering blocks gives the model's bytes
        blocks = {i: content[slice(*block_span(i, block_size, file_size))] for i in got}
        expected = content[offset:offset + size] if size > 0 else b""
        assert slice_blocks(blocks, offset, size, file_size, block_size) == expected


@pytest.mark.parametrize("seed", [4, 5])
def test_block_spans_tile_the_file_random(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        block_size = rng.randint(1, 50)
        file_size = rng.randint(0, 500)
        spans = [block_span(i, block_size, file_size) for i in range(block_count(file_size, block_size))]
        covered = [b for start, end in spans for b in range(start, end)]
        assert covered == list(range(file_size))
        assert all(end - start == block_size for start, end in spans[:-1])
        assert all(0 < end - start <= block_size for start, end in spans)


@pytest.mark.parametrize("seed", [6, 7])
def test_coalesce_random(seed):
    rng = random.Random(seed)
    for _ in range(3000):
        indices = [rng.randint(0, 40) for _ in range(rng.randint(0, 30))]
        max_blocks = rng.choice([None, 1, 2, 3, rng.randint(1, 10)])
        runs = coalesce(indices, max_blocks)
        # runs cover exactly the unique indices, in order, without overlap
        expanded = [i for first, last in runs for i in range(first, last + 1)]
        assert expanded == sorted(set(indices))
        for first, last in runs:
            assert first <= last
            if max_blocks is not None:
                assert last - first + 1 <= max_blocks
        # a run ends early only at a gap or at the length cap
        for (f1, l1), (f2, _) in zip(runs, runs[1:]):
            assert f2 > l1 + 1 or (max_blocks is not None and l1 - f1 + 1 == max_blocks)
