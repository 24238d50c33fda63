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
    ahead,
    exact_read,
    loader_blocks,
    loader_order,
    loader_seen,
    merge_wants,
    read_for,
    speculative_blocks,
    tensor_wants,
)
from netmount.read.reader import ExactRead

KB, MB = 1 << 10, 1 << 20
BS = 1 * MB
CFG = PrefetchConfig()  # the production values


def test_the_defaults_are_the_production_values():
    from netmount.core.settings import DEFAULT_BLOCK_SIZE

    assert CFG.block_size == DEFAULT_BLOCK_SIZE
    assert (CFG.window_max, CFG.lookahead, CFG.load_tails, CFG.load_run) == (64 * MB, 64 * MB, 3, 8)
    assert (CFG.speculative, CFG.ahead_files) == (MB, 4)


# -- sequential ---------------------------------------------------------------------------------

@pytest.mark.parametrize("before, offset, size, after, window, streak", [
    # first read of a handle: a jump, no window
    (None, 0, 128 * KB, Stream(128 * KB, 0, 0, True), [], None),
    # continuing: the window opens at 2 blocks, from where the read ended
    (Stream(128 * KB, 0, 0), 128 * KB, 128 * KB, Stream(256 * KB, 2 * MB, 0), [0, 1, 2], 0),
    # and doubles
    (Stream(256 * KB, 2 * MB, 0), 256 * KB, 128 * KB, Stream(384 * KB, 4 * MB, 0), [0, 1, 2, 3, 4], 0),
    # a little out of order (within a block) still continues
    (Stream(10 * MB, 2 * MB, 0), 10 * MB + 512 * KB, 128 * KB, Stream(10 * MB + 640 * KB, 4 * MB, 0),
     list(range(10, 15)), 0),
    # a jump resets it, and the streak starts at the jump (the run it left is kept)
    (Stream(10 * MB, 8 * MB, 0), 50 * MB, 128 * KB,
     Stream(50 * MB + 128 * KB, 0, 50 * MB, True, (Stream(10 * MB, 8 * MB, 0),)), [], None),
    # a near one (within ``far``) too, but the run is not marked far
    (Stream(10 * MB, 8 * MB, 0), 11 * MB + 4 * KB, 128 * KB,
     Stream(11 * MB + 132 * KB, 0, 11 * MB + 4 * KB, False, (Stream(10 * MB, 8 * MB, 0),)), [], None),
    # a read continuing another run of the handle (another thread's) continues that one
    (Stream(50 * MB, 0, 49 * MB, True, (Stream(10 * MB, 2 * MB, 9 * MB, True),)), 10 * MB, 64 * KB,
     Stream(10 * MB + 64 * KB, 4 * MB, 9 * MB, True, (Stream(50 * MB, 0, 49 * MB, True),)), list(range(10, 15)),
     9 * MB),
    # capped at window_max
    (Stream(MB, 64 * MB, 0), MB, 4 * KB, Stream(MB + 4 * KB, 64 * MB, 0), list(range(1, 66)), 0),
])
def test_advance(before, offset, size, after, window, streak):
    got, blocks, s = advance(before, offset, size, 100 * MB, CFG)
    assert (got, blocks, s) == (after, window, streak)


def test_two_threads_reading_one_mmap_are_two_runs_not_jumps():
    """torch's two threads copy a tensor from its start and from its middle, their reads
    interleaved on one handle: after each one's first read, every read continues its run."""
    stream, jumps = None, 0
    a, b = 20 * MB, 23 * MB
    for k in range(40):
        pos = (a if k % 2 == 0 else b) + (k // 2) * 64 * KB
        stream, _, streak = advance(stream, pos, 64 * KB, 100 * MB, CFG)
        jumps += streak is None
    assert jumps == 2
    # at most ``runs`` are kept
    for k in range(10):
        stream, _, _ = advance(stream, k * 4 * MB + 60 * MB, 4 * KB, 100 * MB, CFG)
    assert len(stream.others) == CFG.runs - 1


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
    ("a read ending shortly before a tensor, centred in a big tensor's tail: a fault there, blocks",
     FileState(), None, R[5][0] - 64 * KB, 60 * KB, False, False, None, set()),
    ("a tensor over max_extent: blocks", FileState(), None, R[3][0], 4 * KB, False, False, None, set()),
    ("the middle of a tensor (a loader's first look): blocks", FileState(), None, R[4][0] + 2 * MB, 4 * KB,
     False, False, None, set()),
    ("near a lone tensor's extent: its pages exactly", FileState(), None, R[4][0] + 2 * MB, 4 * KB, True,
     False, ExactRead(), set()),
    ("a file being loaded: blocks", FileState(loading=True), None, R[1][0], 4 * KB, True, False, None, set()),
    ("a folder being loaded: blocks", FileState(), None, R[1][0], 4 * KB, False, True, None, set()),
    ("continuing a run read in blocks: blocks", FileState(), Stream(R[1][0] - MB, 2 * MB, 0), R[1][0],
     4 * KB, False, False, None, set()),
    ("a run from byte 0 (a header's read-around) into data: blocks", FileState(),
     Stream(128 * KB, 0, 0), 128 * KB, 128 * KB, False, False, None, set()),
    ("a read-around split at the faulting page, first half, after a small tensor", FileState(), None,
     R[3][0] // 4096 * 4096 - 128 * KB, 128 * KB, False, False, None, set()),  # tensor 3 is 20 MiB: blocks
    ("the same, before a small tensor: its extent", FileState(), None,
     R[6][0] // 4096 * 4096 - 128 * KB, 128 * KB, False, False, ExactRead(R[6]), {6}),
    ("the same after a near jump (a run read in blocks): blocks", FileState(),
     Stream(R[5][0] // 4096 * 4096, 0, R[5][0] // 4096 * 4096 - 128 * KB, False), R[5][0] // 4096 * 4096,
     128 * KB, False, False, None, set()),
    ("a split read-around's second half, first: the small tensor starting in its first page, not the next",
     FileState(), None, R[5][0] // 4096 * 4096, 128 * KB, False, False, ExactRead(R[5]), {5}),
    ("its second half (the run began one far jump ago): the tensor's extent", FileState(),
     Stream(R[5][0] // 4096 * 4096, 0, R[5][0] // 4096 * 4096 - 128 * KB, True), R[5][0] // 4096 * 4096,
     128 * KB, False, False, ExactRead(R[5]), {5}),
    ("an unsplit read-around (max_read 1 MiB) centred on a small tensor's page: it, not the big next one",
     FileState(), None, R[5][0] // 4096 * 4096 - 128 * KB, 256 * KB, False, False, ExactRead(R[5]), {5}),
])
def test_exact_read(name, state, stream, offset, size, near, folder, want, triggered):
    got, new = exact_read(TMAP, state, stream, offset, size, SIZE, near_anchor=near, folder_loading=folder, cfg=CFG)
    assert got == want, name
    assert new.triggered == frozenset(triggered), name


# The kernel's read around an mmap fault at page P is [P - R, P + R) for a readahead of R
# (traced on libfuse3 at 32 and 128 KiB), cut at the file's ends, in requests of at most
# max_read from its start: one centred request, or halves that end and start at P.  The rules
# must find the faulting tensor whatever R: the mount's small readahead, a fixed --readahead,
# the kernel's 128 KiB when not root, 1 MiB for a loader's folder.
HEADER = 2600  # an unaligned data start, as in real files
# a 1920-byte norm shares a page with two big ones; 12 scales of 3584 bytes before a 14 MiB expert weight
ODD = [3 * MB + 100, 1920, 5 * MB, 100 * KB, 20 * MB, 3 * MB] + [3584] * 12 + [14 * MB, 28]
ODD_RANGES = [(HEADER + sum(ODD[:k]), HEADER + sum(ODD[: k + 1])) for k in range(len(ODD))]
ODD_MAP, ODD_SIZE = TensorMap(ODD_RANGES), HEADER + sum(ODD)


def read_around(fault: int, r: int, form: str) -> tuple[int, int]:
    page = fault // 4096 * 4096
    lo, hi = max(0, page - r), min(ODD_SIZE, page + r)
    return {"centred": (lo, hi - lo), "first half": (lo, page - lo), "second half": (page, hi - page)}[form]


# (max_read is at least 128 KiB: a read-around of up to 128 KiB is one request, never halves)
@pytest.mark.parametrize("r, form", [(r, form) for r in (16 * KB, 32 * KB, 64 * KB, 128 * KB, 512 * KB)
                                     for form in ("centred", "first half", "second half")
                                     if form == "centred" or 2 * r > CFG.min_split])
@pytest.mark.parametrize("what, fault, want", [
    ("a norm in the page where a big tensor ends and the next starts: the norm", ODD_RANGES[1][0], 1),
    ("a 100 KiB tensor between big ones: it", ODD_RANGES[3][0], 3),
    ("a 3 MiB tensor: it", ODD_RANGES[5][0], 5),
    ("a tensor over max_extent: blocks", ODD_RANGES[4][0], None),
    ("1 MiB into a 5 MiB tensor (a second thread, or a slice): blocks", ODD_RANGES[2][0] + MB, None),
    ("an expert weight after its dense small scales: it, not a scale", ODD_RANGES[18][0], 18),
    ("the last tensor, 28 bytes (the read-around cut at the end of the file): it", ODD_RANGES[19][0], 19),
])
def test_exact_read_finds_the_faulting_tensor_whatever_the_readahead(r, form, what, fault, want):
    offset, size = read_around(fault, r, form)
    got, new = exact_read(ODD_MAP, FileState(), None, offset, size, ODD_SIZE, near_anchor=False,
                          folder_loading=False, cfg=CFG)
    if want is None:
        assert got is None and new.triggered == frozenset(), what
    else:
        assert got == ExactRead(ODD_RANGES[want]) and new.triggered == {want}, what


def test_a_read_around_cut_short_by_the_end_of_the_file_is_for_the_small_last_tensor():
    """A 28-byte tensor after an 11 MiB one, at the end of the file: the fault's read-around
    starts 128 KiB before its page and stops at EOF (not centred on the fault)."""
    tmap, size = layout([4 * MB, 11 * MB, 28])
    small = tmap.ranges[-1]
    offset = small[0] // 4096 * 4096 - 128 * KB
    got, new = exact_read(tmap, FileState(), None, offset, size - offset, size, near_anchor=False,
                          folder_loading=False, cfg=CFG)
    assert got == ExactRead(small) and new.triggered == {2}


def blocks(a, b):
    return list(range(a // BS, (b - 1) // BS + 1))


def test_a_lone_read_inside_a_big_tensor_wants_that_tensor_in_blocks():
    offset = R[3][0] + 5 * MB  # well inside the 20 MiB tensor
    w = tensor_wants(TMAP, FileState(), offset, None, SIZE, folder_loading=False, cfg=CFG)
    assert w.blocks == blocks(*R[3]) and w.limit == R[3][1]
    assert w.state == FileState(frozenset({3}), frozenset({3}), False, data_read=True, order=(3,))
    again = tensor_wants(TMAP, w.state, offset + MB, None, SIZE, folder_loading=False, cfg=CFG)
    assert again.blocks == []  # wanted once


def test_a_read_near_a_tensors_edge_wants_nothing_and_limits_the_window():
    w = tensor_wants(TMAP, FileState(), R[3][0] + 4 * KB, None, SIZE, folder_loading=False, cfg=CFG)
    assert w.blocks == [] and w.limit == R[3][0] + 4 * KB + CFG.guard


def test_jumps_into_the_tails_of_big_tensors_make_a_loader_which_wants_the_whole_file():
    state = FileState()
    for i in (1, 3):  # transformers' first look: the last ~256 KiB of each tensor
        w = tensor_wants(TMAP, state, R[i][1] - 256 * KB, None, SIZE, folder_loading=False, cfg=CFG, size=128 * KB)
        state = w.state
        assert not state.loading
    w = tensor_wants(TMAP, state, R[4][1] - 256 * KB, None, SIZE, folder_loading=False, cfg=CFG, size=128 * KB)
    assert w.state.loading and w.limit == SIZE and w.state.tails == frozenset({1, 3, 4})
    ahead_ = blocks(R[4][0], R[6][1])
    assert w.blocks[: len(ahead_)] == ahead_
    behind = w.blocks[len(ahead_):]
    assert behind == sorted(behind, reverse=True) and max(behind) < ahead_[0]
    assert sorted(w.blocks) == blocks(DATA, SIZE)  # the rest of the whole file, once each


def test_loader_blocks_nearest_first_then_the_rest_of_the_file():
    sizes = [4 * MB] * 40  # 160 MiB: past the lookahead both ways
    tmap, size = layout(sizes)
    got = loader_blocks(tmap, 20, size, CFG)
    r = tmap.ranges
    assert got[0] == r[20][0] // BS
    assert sorted(got) == blocks(DATA, size) and len(got) == len(set(got))
    # ahead to the lookahead, then half of it behind (nearest first), then the rest after, then before
    la = got.index(r[20][0] // BS - 1)
    assert got[:la] == list(range(r[20][0] // BS, got[la - 1] + 1))
    assert got[la - 1] * BS >= r[20][1] + CFG.lookahead - 4 * MB
    tail = got[-1]
    assert tail == DATA // BS


# The patterns of issue 11, as the jumps they make into one file.  ``reads`` are (tensor, where,
# size): page faults at "start" (a get_tensor's first), "mid" (the second torch thread's) or
# "tail" (transformers' first look: the last 256 KiB), each read by the kernel as a read-around
# of ``size`` centred on the faulting page (so a fault at a tensor's start reads from the
# neighbour before).
BIG = [8 * MB] * 30  # a shard of 30 big tensors


def jumps(tmap, reads):
    out = []
    for i, where, size in reads:
        s, e = tmap.ranges[i]
        if where.startswith("split"):  # the first half of [fault - size, fault + size)
            fault = {"split": s, "splittail": e - 256 * KB, "splitend": e - 1}[where] // 4096 * 4096
            out.append((fault - size, size))
            continue
        if where == "end":  # the second half, from the faulting page
            out.append(((e - 1) // 4096 * 4096, size))
            continue
        fault = {"start": s, "mid": (s + e) // 2, "tail": e - 256 * KB}[where]
        out.append((max(0, fault - size // 2), size))
    return out


@pytest.mark.parametrize("name, reads, loader", [
    ("one big tensor (two torch threads, read-around)",
     [(10, "start", 128 * KB), (10, "mid", 128 * KB)], False),
    ("one tensor per shard, here its one", [(14, "start", 128 * KB), (14, "mid", 128 * KB)], False),
    ("a routed expert: 3 weights next to each other (and their 3 scales elsewhere)",
     [(i, w, 128 * KB) for i in (20, 21, 22) for w in ("start", "mid")] + [(2, "start", 4 * KB),
                                                                           (3, "start", 4 * KB),
                                                                           (4, "start", 4 * KB)], False),
    ("10 random tensors, four of them in this shard", [(i, w, 128 * KB) for i in (3, 9, 17, 26)
                                                      for w in ("start", "mid")], False),
    ("three big tensors read whole (start, middle, then a jump near the end)",
     [(i, w, 128 * KB) for i in (3, 12, 20) for w in ("start", "mid", "tail")], False),
    ("three big tensors, read-arounds split at the faulting page (first halves in the tails before)",
     [(i, w, 128 * KB) for i in (3, 12, 20) for w in ("split", "mid")], False),
    ("transformers' tails, read-arounds split", [(i, "splittail", 128 * KB) for i in (0, 1, 2)], True),
    ("transformers 5: the page each tensor ends in, split there, in key order (small ones skipped)",
     [(i, w, 128 * KB) for i in (2, 3, 4, 6) for w in ("splitend", "end")], True),
    ("the same look at three (page-aligned) tensors: their tails", [(i, w, 128 * KB) for i in (2, 3, 4)
                                                                     for w in ("splitend", "end")], True),
    ("four tensors read whole, out of file order", [(i, w, 128 * KB) for i in (9, 4, 12, 6)
                                                    for w in ("start", "mid")], False),
    ("a big tensor, then one small one: still partial", [(0, "start", 128 * KB), (0, "mid", 128 * KB),
                                                         (29, "start", 4 * KB)], False),
    ("transformers: tails of tensors in key order", [(i, "tail", 128 * KB) for i in (0, 1, 2)], True),
    ("transformers, with 1 MiB read-arounds", [(i, "tail", 1 * MB) for i in (5, 6, 7)], True),
    ("load_file / vLLM iteration: tensor after tensor, whole",
     [(i, w, 128 * KB) for i in range(8) for w in ("start", "mid")], True),
])
def test_loader_evidence(name, reads, loader):
    tmap, size = layout(BIG)
    state = FileState()
    for offset, n in jumps(tmap, reads):
        state = tensor_wants(tmap, state, offset, None, size, folder_loading=False, cfg=CFG, size=n).state
    assert state.loading == loader, (name, sorted(state.touched), sorted(state.tails))


@pytest.mark.parametrize("r", [16 * KB, 32 * KB, 128 * KB, 512 * KB])
def test_norms_after_big_tensors_are_no_loader(r):
    """A person reads the input norm of three layers: each norm shares its first page with the
    end of the big tensor before it, and the read around its fault (centred there) is for the
    norm, not a first look at that big tensor's tail (three of those make a loader)."""
    sizes = []
    for _ in range(4):  # a layer: 3 big weights, then a 1.9 KB norm
        sizes += [3 * MB + 1000, 3 * MB + 1000, 3 * MB + 1000, 1920]
    tmap, size = layout(sizes)
    state = FileState()
    for i in (3, 7, 11):
        page = tmap.ranges[i][0] // 4096 * 4096
        state = tensor_wants(tmap, state, page - r, None, size, folder_loading=False, cfg=CFG, size=2 * r).state
    assert not state.loading and state.tails == frozenset(), (sorted(state.touched), sorted(state.tails))
    assert state.touched == {3, 7, 11}


@pytest.mark.parametrize("touched, tails, want", [
    (set(), set(), False),
    (set(range(7)), set(), False),  # a run of 7
    (set(range(8)), set(), True),
    ({0, 2, 4, 6, 8, 10, 12, 14, 16}, set(), False),  # many, scattered
    ({1, 2, 3, 10, 11, 12}, set(), False),  # two runs of 3: a routed expert's weights and scales
    ({1, 5}, {1, 5}, False),
    ({1, 5, 9}, {1, 5, 9}, True),
])
def test_loader_seen(touched, tails, want):
    assert loader_seen(frozenset(touched), frozenset(tails), CFG) == want


@pytest.mark.parametrize("order, want", [
    ((2, 3, 4, 6), True),
    ((1, 2, 3, 4, 5), True),
    ((2, 3, 4), False),  # three
    ((2, 3, 4, 9), False),  # a gap of 5
    ((9, 4, 12, 6), False),  # out of order
    ((9, 1, 2, 3, 5), True),  # the last four count
])
def test_loader_seen_on_a_sweep(order, want):
    assert loader_seen(frozenset(order), frozenset(), CFG, tuple(order)) == want


@pytest.mark.parametrize("offset, size, want", [
    (R[2][0] - 64 * KB, 128 * KB, 2),  # a read-around centred on tensor 2's first page
    (R[1][0], 4 * KB, 1),
    (R[6][1] - 4 * KB, 128 * KB, 6),  # past the end: the tensor its start is in
    (0, 4 * KB, None),  # the header
    (R[4][0] // 4096 * 4096 - 128 * KB, 128 * KB, 4),  # a split read-around's first half: the next one
    (R[4][1] - 256 * KB - 128 * KB, 128 * KB, 4),  # ... of a fault 256 KiB before a tensor's end: that one
])
def test_read_for(offset, size, want):
    assert read_for(TMAP, offset, size) == want


def test_a_sequential_run_does_not_touch_tensors():
    w = tensor_wants(TMAP, FileState(), R[2][0], R[1][0], SIZE, folder_loading=False, cfg=CFG)
    assert w.state.touched == frozenset()


def test_a_stream_from_byte_zero_gets_no_limit():
    offset = DATA + CFG.stream_bytes + 4 * KB  # inside tensor 1, streamed from 0
    w = tensor_wants(TMAP, FileState(), offset, 0, SIZE, folder_loading=False, cfg=CFG)
    assert w.limit == SIZE and not w.state.loading


def test_the_kernel_reading_on_through_a_header_fetches_no_block():
    """At a small readahead the kernel reads a long header in several requests, and on a little
    past it: the head tier serves those (read/head.py); no window may fetch block 0 for them."""
    w = tensor_wants(TMAP, FileState(), 32 * KB, 0, SIZE, folder_loading=False, cfg=CFG, size=32 * KB)
    assert w.limit == 0 and merge_wants([0, 1], w, near_anchor=False, block_size=BS) == []
    w = tensor_wants(TMAP, FileState(), 96 * KB, 0, SIZE, folder_loading=False, cfg=CFG, size=32 * KB)
    assert TMAP.find(96 * KB) is not None and w.limit == 0  # in tensor data, within the head
    assert merge_wants([0, 1], w, near_anchor=False, block_size=BS) == []
    # past the head, a run from byte 0 reads on as before (cat)
    w = tensor_wants(TMAP, FileState(), 160 * KB, 0, SIZE, folder_loading=False, cfg=CFG, size=32 * KB)
    assert w.limit > 0 and merge_wants([0, 1], w, near_anchor=False, block_size=BS) == [0]


def test_a_run_into_one_tensor_across_small_ones_before_it_is_no_stream():
    """A lone reader's run begins in the read-around before its tensor, here across 12 small
    scales: that is not 3 whole tensors of a stream; 3 whole tensors of 1 MiB each are."""
    scales = layout([3 * MB] + [3584] * 12 + [14 * MB])
    tmap, size = scales
    start = tmap.ranges[13][0]
    w = tensor_wants(tmap, FileState(), start + 3 * MB, start // 4096 * 4096 - 32 * KB, size,
                     folder_loading=False, cfg=CFG, size=64 * KB)
    assert w.limit == tmap.ranges[13][1]
    tmap, size = layout([MB] * 8)
    r = tmap.ranges
    w = tensor_wants(tmap, FileState(), r[4][0] + 4 * KB, r[0][0], size, folder_loading=False, cfg=CFG, size=64 * KB)
    assert w.limit == size


def test_a_jump_into_tensor_data_in_a_loading_folder_is_a_loader_read():
    w = tensor_wants(TMAP, FileState(), R[5][0], None, SIZE, folder_loading=True, cfg=CFG)
    assert w.state.loading and w.state.data_read and w.blocks[0] == R[5][0] // BS


def test_a_header_read_in_a_loading_folder_gets_the_speculative_window_only():
    w = tensor_wants(TMAP, FileState(), 0, None, SIZE, folder_loading=True, cfg=CFG, size=128 * KB)
    assert not w.state.loading and not w.state.data_read and w.blocks == []
    assert w.limit == DATA + CFG.speculative
    # the kernel's readahead running on from the header into the data is not the program's
    w = tensor_wants(TMAP, w.state, 128 * KB, 0, SIZE, folder_loading=True, cfg=CFG, size=128 * KB)
    assert not w.state.loading and not w.state.data_read


def test_speculative_blocks():
    assert speculative_blocks(TMAP, SIZE, CFG) == blocks(DATA, DATA + MB)
    tmap, size = layout([100 * KB])
    assert speculative_blocks(tmap, size, CFG) == [0]
    assert speculative_blocks(TensorMap([]), 4 * KB, CFG) == []


def test_merge_wants():
    w = TensorWants([7, 8], 9 * BS, FileState())
    assert merge_wants([8, 9, 10], w, near_anchor=False, block_size=BS) == [7, 8]
    assert merge_wants([9, 10], TensorWants([], 100 * BS), near_anchor=False, block_size=BS) == [9, 10]
    assert merge_wants([9, 10], TensorWants([], 100 * BS), near_anchor=True, block_size=BS) == []


def test_loader_order_follows_the_index_keys():
    paths = ["a/model-00001-of-00003.safetensors", "a/model-00002-of-00003.safetensors",
             "a/model-00003-of-00003.safetensors", "a/config.json"]
    assert loader_order(paths) == paths[:3]
    # keys sorted: "lm_head" < "model.embed" < "model.layers.0" ...
    wm = {"model.layers.0.q": "model-00002-of-00003.safetensors", "lm_head.weight": "model-00003-of-00003.safetensors",
          "model.embed_tokens.weight": "model-00001-of-00003.safetensors"}
    assert loader_order(paths, wm) == [paths[2], paths[0], paths[1]]
    # a shard the index does not name (DeepSeek-V3's MTP shard is named; an extra is not) goes last
    assert loader_order(paths, {"x": "model-00002-of-00003.safetensors"}) == [paths[1], paths[0], paths[2]]


@pytest.mark.parametrize("reached, wanted, want", [
    (set(), set(), []),  # the program read no shard: nothing
    ({"s1"}, set(), ["s2", "s3", "s4", "s5"]),  # ahead_files past the furthest read
    ({"s1", "s3"}, set(), ["s4", "s5", "s6"]),
    ({"s1"}, {"s2", "s3"}, ["s4", "s5"]),  # each once
    ({"s6"}, set(), []),  # the last
])
def test_ahead(reached, wanted, want):
    order = [f"s{k}" for k in range(1, 7)]
    assert ahead(order, reached, frozenset(wanted), CFG) == want
