"""The prefetch policy, as tables: pure functions over explicit state (read/policy.py)."""

from __future__ import annotations

import pytest

from netmount.read.policy import (
    FileState,
    PrefetchConfig,
    Stream,
    TensorMap,
    TensorWants,
    advance,
    exact_read,
    merge_wants,
    next_shard,
    tensor_wants,
)
from netmount.read.reader import ExactRead

KB, MB = 1 << 10, 1 << 20
BS = 1 * MB
CFG = PrefetchConfig()  # the production values


def test_the_defaults_are_the_production_values():
    from netmount.core.settings import DEFAULT_BLOCK_SIZE

    assert CFG.block_size == DEFAULT_BLOCK_SIZE
    assert (CFG.window_max, CFG.lookahead, CFG.load_tensors) == (64 * MB, 64 * MB, 4)


# -- sequential ---------------------------------------------------------------------------------

@pytest.mark.parametrize("before, offset, size, after, window, streak", [
    # first read of a handle: a jump, no window
    (None, 0, 128 * KB, Stream(128 * KB, 0, 0), [], None),
    # continuing: the window opens at 2 blocks, from where the read ended
    (Stream(128 * KB, 0, 0), 128 * KB, 128 * KB, Stream(256 * KB, 2 * MB, 0), [0, 1, 2], 0),
    # and doubles
    (Stream(256 * KB, 2 * MB, 0), 256 * KB, 128 * KB, Stream(384 * KB, 4 * MB, 0), [0, 1, 2, 3, 4], 0),
    # a little out of order (within a block) still continues
    (Stream(10 * MB, 2 * MB, 0), 10 * MB + 512 * KB, 128 * KB, Stream(10 * MB + 640 * KB, 4 * MB, 0),
     list(range(10, 15)), 0),
    # a jump resets it, and the streak starts at the jump
    (Stream(10 * MB, 8 * MB, 0), 50 * MB, 128 * KB, Stream(50 * MB + 128 * KB, 0, 50 * MB), [], None),
    # capped at window_max
    (Stream(MB, 64 * MB, 0), MB, 4 * KB, Stream(MB + 4 * KB, 64 * MB, 0), list(range(1, 66)), 0),
])
def test_advance(before, offset, size, after, window, streak):
    got, blocks, s = advance(before, offset, size, 100 * MB, CFG)
    assert (got, blocks, s) == (after, window, streak)


def test_advance_stops_at_the_end_of_the_file():
    got, blocks, _ = advance(Stream(MB, 2 * MB, 0), MB, 4 * KB, MB + 5 * KB, CFG)
    assert blocks == [1]
    got, blocks, _ = advance(Stream(MB, 2 * MB, 0), MB, 4 * KB, MB + 4 * KB, CFG)
    assert blocks == []  # the read reached EOF


# -- a file of tensors --------------------------------------------------------------------------

DATA = 64 * KB  # where tensor data starts (after the header)
SIZES = [2 * KB, 3 * MB, 100 * KB, 20 * MB, 8 * MB, 4 * KB, 5 * MB]


def layout(sizes=SIZES):
    ranges, pos = [], DATA
    for n in sizes:
        ranges.append((pos, pos + n))
        pos += n
    return TensorMap(ranges), pos


TMAP, SIZE = layout()
R = TMAP.ranges


@pytest.mark.parametrize("name, state, stream, offset, size, near, folder, want, triggered", [
    ("the header is never exact", FileState(), None, 0, 4 * KB, False, False, None, set()),
    ("a far jump to a small tensor's start: the tensor", FileState(), None, R[1][0], 4 * KB, False, False,
     ExactRead(R[1]), {1}),
    ("a read-around starting just before a small tensor", FileState(), None, R[2][0] - 64 * KB, 128 * KB,
     False, False, ExactRead(R[2]), {2}),
    ("its first page's read-around ending just before it", FileState(), None, R[5][0] - 64 * KB, 60 * KB,
     False, False, ExactRead(R[5]), {5}),
    ("a tensor over max_extent: blocks", FileState(), None, R[3][0], 4 * KB, False, False, None, set()),
    ("the middle of a tensor (a loader's first look): blocks", FileState(), None, R[4][0] + 2 * MB, 4 * KB,
     False, False, None, set()),
    ("near a lone tensor's extent: its pages exactly", FileState(), None, R[4][0] + 2 * MB, 4 * KB, True,
     False, ExactRead(), set()),
    ("a file being loaded: blocks", FileState(loading=True), None, R[1][0], 4 * KB, True, False, None, set()),
    ("a folder being loaded: blocks", FileState(), None, R[1][0], 4 * KB, False, True, None, set()),
    ("continuing a run read in blocks: blocks", FileState(), Stream(R[1][0] - MB, 2 * MB, 0), R[1][0],
     4 * KB, False, False, None, set()),
])
def test_exact_read(name, state, stream, offset, size, near, folder, want, triggered):
    got, new = exact_read(TMAP, state, stream, offset, size, SIZE, near_anchor=near, folder_loading=folder, cfg=CFG)
    assert got == want, name
    assert new.triggered == frozenset(triggered), name


def blocks(a, b):
    return list(range(a // BS, (b - 1) // BS + 1))


def test_a_lone_read_inside_a_big_tensor_wants_that_tensor_in_blocks():
    offset = R[3][0] + 5 * MB  # well inside the 20 MiB tensor
    w = tensor_wants(TMAP, FileState(), offset, None, SIZE, folder_loading=False, cfg=CFG)
    assert w.blocks == blocks(*R[3]) and w.limit == R[3][1]
    assert w.state == FileState(frozenset({3}), frozenset({3}), False)
    again = tensor_wants(TMAP, w.state, offset + MB, None, SIZE, folder_loading=False, cfg=CFG)
    assert again.blocks == []  # wanted once


def test_a_read_near_a_tensors_edge_wants_nothing_and_limits_the_window():
    w = tensor_wants(TMAP, FileState(), R[3][0] + 4 * KB, None, SIZE, folder_loading=False, cfg=CFG)
    assert w.blocks == [] and w.limit == R[3][0] + 4 * KB + CFG.guard


def test_jumps_into_load_tensors_tensors_make_a_loader_which_wants_ahead_and_behind():
    state = FileState()
    for i in (0, 1, 2):
        w = tensor_wants(TMAP, state, R[i][0], None, SIZE, folder_loading=False, cfg=CFG)
        state = w.state
        assert not state.loading
    w = tensor_wants(TMAP, state, R[4][1] - 4 * KB, None, SIZE, folder_loading=False, cfg=CFG)
    assert w.state.loading and w.limit == SIZE
    ahead = blocks(R[4][0], R[6][1])
    assert w.blocks[: len(ahead)] == ahead
    behind = w.blocks[len(ahead):]
    assert behind and behind == sorted(behind, reverse=True) and max(behind) < ahead[0]


def test_a_sequential_run_does_not_touch_tensors():
    w = tensor_wants(TMAP, FileState(), R[2][0], R[1][0], SIZE, folder_loading=False, cfg=CFG)
    assert w.state.touched == frozenset()


def test_a_stream_from_byte_zero_gets_no_limit():
    offset = DATA + CFG.stream_bytes + 4 * KB  # inside tensor 1, streamed from 0
    w = tensor_wants(TMAP, FileState(), offset, 0, SIZE, folder_loading=False, cfg=CFG)
    assert w.limit == SIZE and not w.state.loading


def test_a_read_in_a_loading_folder_is_a_loader_read():
    w = tensor_wants(TMAP, FileState(), R[5][0], None, SIZE, folder_loading=True, cfg=CFG)
    assert w.state.loading and w.blocks[0] == R[5][0] // BS


def test_merge_wants():
    w = TensorWants([7, 8], 9 * BS, FileState())
    assert merge_wants([8, 9, 10], w, near_anchor=False, block_size=BS) == [7, 8]
    assert merge_wants([9, 10], TensorWants([], 100 * BS), near_anchor=False, block_size=BS) == [9, 10]
    assert merge_wants([9, 10], TensorWants([], 100 * BS), near_anchor=True, block_size=BS) == []


@pytest.mark.parametrize("read, path, chained, want", [
    (["a/m-1.safetensors", "a/m-2.safetensors", "a/m-3.safetensors"], "a/m-1.safetensors", set(), "a/m-2.safetensors"),
    (["a/m-1.safetensors", "a/m-3.safetensors"], "a/m-1.safetensors", set(), "a/m-3.safetensors"),  # 2 unread
    (["a/m-1.safetensors", "a/m-2.safetensors"], "a/m-1.safetensors", {"a/m-2.safetensors"}, None),
    (["a/m-1.safetensors", "a/x.json"], "a/m-1.safetensors", set(), None),
    (["a/m-2.safetensors", "a/m-1.safetensors"], "a/m-2.safetensors", set(), None),
])
def test_next_shard(read, path, chained, want):
    assert next_shard(read, path, frozenset(chained)) == want
