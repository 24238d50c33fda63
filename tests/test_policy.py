"""The prefetch policy, as tables: pure functions over explicit state (read/policy.py,
read/tensormap.py, read/loader.py), and the kernel's requests for the ways programs read a
tensor run through it (readsim.py): reads are bounded by tensors."""

from __future__ import annotations

import pytest
from readsim import Kernel, Sim

from netmount.core.ranges import Ranges
from netmount.read.loader import ahead, loader_blocks, loader_order, loader_seen, speculative_blocks
from netmount.read.policy import FileState, PrefetchConfig, Stream, Verdict, advance, judge, wants
from netmount.read.reader import ExactRead
from netmount.read.tensormap import TensorMap, read_for

KB, MB = 1 << 10, 1 << 20
BS = 1 * MB
CFG = PrefetchConfig()  # the production values


def test_the_defaults_are_the_production_values():
    from netmount.core.settings import DEFAULT_BLOCK_SIZE

    assert CFG.block_size == DEFAULT_BLOCK_SIZE
    assert (CFG.window_max, CFG.lookahead, CFG.load_tails, CFG.load_run) == (64 * MB, 64 * MB, 3, 8)
    assert (CFG.speculative, CFG.ahead_files, CFG.max_extent, CFG.spill) == (MB, 4, 16 * MB, 8)


# -- sequential ---------------------------------------------------------------------------------

@pytest.mark.parametrize("before, offset, size, after, window, streak", [
    # first read of a handle: a jump, no window
    (None, 0, 128 * KB, Stream(128 * KB, 0, 0, reach=128 * KB), [], None),
    # continuing: the window opens at 2 blocks, from where the read ended
    (Stream(128 * KB, 0, 0), 128 * KB, 128 * KB, Stream(256 * KB, 2 * MB, 0, reach=128 * KB), [0, 1, 2], 0),
    # and doubles
    (Stream(256 * KB, 2 * MB, 0), 256 * KB, 128 * KB, Stream(384 * KB, 4 * MB, 0, reach=128 * KB), [0, 1, 2, 3, 4], 0),
    # a little out of order (within two of the run's requests) still continues
    (Stream(10 * MB, 2 * MB, 0, reach=256 * KB), 10 * MB + 512 * KB, 128 * KB,
     Stream(10 * MB + 640 * KB, 4 * MB, 0, reach=256 * KB), list(range(10, 15)), 0),
    # further, a jump (the run it left is kept)
    (Stream(10 * MB, 2 * MB, 0, reach=128 * KB), 10 * MB + 512 * KB, 128 * KB,
     Stream(10 * MB + 640 * KB, 0, 10 * MB + 512 * KB, (Stream(10 * MB, 2 * MB, 0, reach=128 * KB),), reach=128 * KB),
     [], None),
    # a window served before the one before it (within the run's span) continues it too
    (Stream(10 * MB, 2 * MB, 8 * MB), 9 * MB, 128 * KB, Stream(10 * MB, 4 * MB, 8 * MB, reach=128 * KB),
     list(range(9, 14)), 8 * MB),
    # a jump resets it, and the streak starts at the jump (the run it left is kept)
    (Stream(10 * MB, 8 * MB, 0), 50 * MB, 128 * KB,
     Stream(50 * MB + 128 * KB, 0, 50 * MB, (Stream(10 * MB, 8 * MB, 0),), reach=128 * KB), [], None),
    # a read continuing another run of the handle (another thread's) continues that one, its target kept
    (Stream(50 * MB, 0, 49 * MB, (Stream(10 * MB, 2 * MB, 9 * MB, target=3),)), 10 * MB, 64 * KB,
     Stream(10 * MB + 64 * KB, 4 * MB, 9 * MB, (Stream(50 * MB, 0, 49 * MB),), target=3, reach=64 * KB),
     list(range(10, 15)), 9 * MB),
    # capped at window_max
    (Stream(MB, 64 * MB, 0), MB, 4 * KB, Stream(MB + 4 * KB, 64 * MB, 0, reach=4 * KB), list(range(1, 66)), 0),
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


# -- one read of a file of tensors ----------------------------------------------------------------

DATA = 64 * KB  # where tensor data starts (after the header)
SIZES = [2 * KB, 3 * MB, 100 * KB, 20 * MB, 8 * MB, 4 * KB, 5 * MB]


def layout(sizes=SIZES, data=DATA):
    ranges, pos = [], data
    for n in sizes:
        ranges.append((pos, pos + n))
        pos += n
    return TensorMap(ranges), pos


TMAP, SIZE = layout()
R = TMAP.ranges


def now(verdict: Verdict, bs: int = BS) -> list[tuple[int, int]]:
    """What a verdict has fetched exactly now, with the read: its extent, the blocks it
    starts first and its pieces (a tensor fetched exactly: ``policy._fetch``)."""
    got = Ranges([verdict.exact.extent] if verdict.exact and verdict.exact.extent else [])
    for b in verdict.first:
        got.add(b * bs, (b + 1) * bs)
    for a, b in verdict.pieces:
        got.add(a, b)
    return list(got)


def seen(verdict: Verdict) -> tuple:
    """A verdict as the tables write it: ExactRead(extent) for a tensor fetched exactly now,
    ExactRead() for the read's pages, None for its blocks."""
    if verdict.exact is None:
        return None, now(verdict)
    return ExactRead(now(verdict)[0] if now(verdict) else None), now(verdict)[1:]


def judged(tmap, state, stream, offset, size, file_size, folder=False, cfg=CFG) -> tuple[Verdict, Stream]:
    """What the prefetcher does before a read: advance the handle's runs, ask the policy."""
    run, _, streak = advance(stream, offset, size, file_size, cfg)
    verdict = judge(tmap, state, run, streak, offset, size, file_size, folder_loading=folder, cfg=cfg)
    return verdict, Stream(**{**run.__dict__, "target": verdict.target})


AFTER_3 = Stream(R[3][0] + 2 * MB, 0, R[3][0] - 64 * KB, target=3, reach=128 * KB)  # a run in tensor 3


@pytest.mark.parametrize("name, state, stream, offset, size, folder, exact, target", [
    ("a header read within the head: the head", FileState(), None, 0, 32 * KB, False, None, -1),
    ("a header read in a large request (a large readahead): its block", FileState(), None, 0, MB, False, None, -1),
    ("a far jump to a small tensor's start: the tensor", FileState(), None, R[1][0], 4 * KB, False,
     ExactRead(R[1]), 1),
    ("a read-around starting just before a small tensor: the tensor", FileState(), None, R[2][0] - 64 * KB,
     128 * KB, False, ExactRead(R[2]), 2),
    ("a jump into the middle of a small tensor (torch's second thread first): the tensor", FileState(), None,
     R[4][0] + 4 * MB, 64 * KB, False, ExactRead(R[4]), 4),
    ("the same, once the tensor is fetched exactly: in its whole blocks, those blocks (coming)",
     FileState(extents=frozenset({4})), None, R[4][0] + 4 * MB, 64 * KB, False, None, 4),
    ("... at its ends, its pages (joined)", FileState(extents=frozenset({4})), None, R[4][0], 64 * KB, False,
     ExactRead(), 4),
    ("a first look at a tensor's tail (a loader's?): its pages, not the tensor", FileState(), None,
     R[4][1] - 256 * KB, 128 * KB, False, ExactRead(), 4),
    ("a jump to a tensor over max_extent: its pages (its first block holds another's bytes)", FileState(),
     None, R[3][0], 4 * KB, False, ExactRead(), 3),
    ("a jump into a big tensor's whole blocks: blocks", FileState(), None, R[3][0] + 5 * MB, 64 * KB, False,
     None, 3),
    ("a run on in a big tensor's whole blocks: blocks", FileState(), AFTER_3, AFTER_3.expected, 64 * KB, False,
     None, 3),
    ("a run into a big tensor's last block (another's bytes): its pages", FileState(), AFTER_3,
     R[3][1] - 64 * KB, 64 * KB, False, ExactRead(), 3),
    ("a file being loaded: blocks", FileState(loading=True, wanted=frozenset({1})), None, R[1][0], 4 * KB,
     False, None, -1),
    ("a folder being loaded: blocks", FileState(), None, R[1][0], 4 * KB, True, None, -1),
    ("a run from byte 0 into data: the kernel reading on past a header, its pages", FileState(),
     Stream(128 * KB, 0, 0), 128 * KB, 64 * KB, False, ExactRead(), -1),
    ("... in requests as long as cat's: its block", FileState(),
     Stream(128 * KB, 0, 0), 128 * KB, 128 * KB, False, None, -1),
    ("... past spill of its requests (to a block's end), the program's (cat): blocks", FileState(),
     Stream(2 * MB, 0, 0, reach=128 * KB), 2 * MB, 128 * KB, False, None, -1),
])
def test_judge(name, state, stream, offset, size, folder, exact, target):
    verdict, _ = judged(TMAP, state, stream, offset, size, SIZE, folder)
    assert (seen(verdict), verdict.target) == ((exact, []), target), name


# A run that read a tensor to its end goes on: the kernel's readahead (a few of the run's
# requests), or the program reading on.
ON_MAP, ON_SIZE = layout([3 * MB, 6 * MB, 40 * MB] + [MB] * 8)
ON = ON_MAP.ranges
E0 = ON[0][1]


def ran(reach, target=0, streak=ON[0][0] + 4 * KB):
    return Stream(E0, 0, streak, target=target, reach=reach)


@pytest.mark.parametrize("name, stream, offset, exact, target, window", [
    ("the kernel reading on past the tensor: its pages, never the next tensor",
     ran(128 * KB), E0, ExactRead(), 0, (0, 0)),
    ("... up to spill of the run's requests past it", ran(128 * KB), E0 + MB - 4 * KB, ExactRead(), 0, (0, 0)),
    ("... of 1 MiB requests: 8 MiB (traced: 4 windows in flight)", ran(MB), E0 + 4 * MB, ExactRead(), 0, (0, 0)),
    ("past that (to a block's end), the program reads on: the rest of the tensor it is in, exactly",
     ran(128 * KB), 5 * MB, ExactRead((5 * MB, ON[1][1])), 1, (0, 0)),
    ("... a big one: its whole blocks as the run goes on", ran(128 * KB, 1, ON[1][0]), ON[2][0] + 2 * MB,
     None, 2, ON_MAP.whole_blocks(2, BS, ON_SIZE)),
    ("through 3 whole tensors past its tensor: a stream", ran(128 * KB, 3, ON[3][0]), ON[7][0],
     None, 3, (0, ON_SIZE)),
])
def test_reading_on_past_the_runs_tensor(name, stream, offset, exact, target, window):
    stream = Stream(offset, 0, stream.streak, target=stream.target, reach=stream.reach)  # (continuing)
    verdict = judge(ON_MAP, FileState(), stream, stream.streak, offset, 128 * KB, ON_SIZE, folder_loading=False,
                    cfg=CFG)
    assert (seen(verdict), verdict.target, verdict.window) == ((exact, []), target, window), name


# The kernel's read around an mmap fault at page P is [P - R, P + R) for a readahead of R
# (traced on libfuse3 at 32 and 128 KiB), cut at the file's ends, in requests of at most
# max_read from its start: one centred request, or halves that end and start at P.  The rules
# must find the faulting tensor whatever R: the mount's small readahead, a fixed --readahead,
# the kernel's 128 KiB when not root, 1 MiB for a loader's folder.
HEADER = 2600  # an unaligned data start, as in real files
# a 1920-byte norm shares a page with two big ones; 12 scales of 3584 bytes before a 14 MiB expert weight
ODD = [3 * MB + 100, 1920, 5 * MB, 100 * KB, 20 * MB, 3 * MB] + [3584] * 12 + [14 * MB, 28]
ODD_MAP, ODD_SIZE = layout(ODD, HEADER)
ODD_RANGES = ODD_MAP.ranges


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
    ("a tensor over max_extent: its pages", ODD_RANGES[4][0], None),
    ("1 MiB into a 5 MiB tensor (a second thread, or a slice): it", ODD_RANGES[2][0] + MB, 2),
    ("an expert weight after its dense small scales: it, not a scale", ODD_RANGES[18][0], 18),
    ("the last tensor, 28 bytes (the read-around cut at the end of the file): it", ODD_RANGES[19][0], 19),
])
def test_a_jump_finds_the_faulting_tensor_whatever_the_readahead(r, form, what, fault, want):
    offset, size = read_around(fault, r, form)
    verdict, _ = judged(ODD_MAP, FileState(), None, offset, size, ODD_SIZE)
    if want is None:
        assert seen(verdict) == (ExactRead(), []) and verdict.state.extents == frozenset(), what
    else:
        assert seen(verdict) == (ExactRead(ODD_RANGES[want]), []) and verdict.state.extents == {want}, what


def test_a_read_around_cut_short_by_the_end_of_the_file_is_for_the_small_last_tensor():
    """A 28-byte tensor after an 11 MiB one, at the end of the file: the fault's read-around
    starts 128 KiB before its page and stops at EOF (not centred on the fault)."""
    tmap, size = layout([4 * MB, 11 * MB, 28])
    small = tmap.ranges[-1]
    offset = small[0] // 4096 * 4096 - 128 * KB
    verdict, _ = judged(tmap, FileState(), None, offset, size - offset, size)
    assert seen(verdict) == (ExactRead(small), []) and verdict.state.extents == {2}


# -- reads bounded by tensors: the kernel's requests for each way of reading one tensor --------------
#
# One tensor read by a program that opened the file and read its header: with mmap
# (``safe_open(...).get_tensor`` and a sum: torch's two threads, from its start and its
# middle), with one thread faulting it in, or with a pread; at a readahead of 16 KiB to 1 MiB
# (requests up to 1 MiB, or up to 128 KiB: the kernel's cap without root); with the kernel's
# read-around before it and its readahead after it (1 to 4 windows).  Every byte fetched is
# the tensor's or one the kernel asked for, and no byte is fetched twice.

EXPERT = layout([3584] * 40 + [14 * MB + 680 * KB] * 3 + [3584] * 40 + [40 * MB, 2 * MB, 3 * MB + 100], 70 * KB)
PICKS = {"a 3.5 KiB scale": 39, "a 14.7 MB expert weight": 41, "a 40 MB tensor (over max_extent)": 83,
         "a 2 MiB tensor after a big one": 84, "the last tensor, at the end of the file": 85}


@pytest.mark.parametrize("how", ["get_tensor", "one thread", "pread"])
@pytest.mark.parametrize("r, max_read", [(16 * KB, MB), (32 * KB, MB), (128 * KB, MB), (128 * KB, 128 * KB),
                                         (MB, MB)])
@pytest.mark.parametrize("spill", [1, 4])
@pytest.mark.parametrize("what", list(PICKS))
def test_one_tensor_costs_the_tensor_and_the_pages_the_kernel_asked(how, r, max_read, spill, what):
    tmap, size = EXPERT
    start, end = tmap.ranges[PICKS[what]]
    kernel = Kernel(size, r, max_read, spill)
    sim = Sim(tmap, size, CFG)
    sim.reads(kernel.pread(0, 8), handle=1)  # safe_open: the header, its own handle
    sim.reads(kernel.pread(8, tmap.data), handle=1)
    # the kernel reading on past the header: in requests of 128 KiB or more it cannot be told
    # from cat, whose first block(s) come whole: they cost their blocks
    header = max(b for a, b in kernel.asked) if sim.stream.reach >= CFG.min_split else tmap.data
    reads = {"get_tensor": kernel.get_tensor, "one thread": kernel.faults, "pread": kernel.pread}[how](start, end)
    sim.reads(reads, handle=2)
    allowed = Ranges(kernel.asked)
    allowed.add(start, end)
    allowed.add(0, -(-header // BS) * BS)  # the header's block(s), at most
    outside = [gap for a, b in sim.fetches for gap in allowed.missing(a, b)]
    assert not outside, (outside[:4], sim.verdicts[-3:])
    assert sim.held.contains(start, end)


# -- loaders: the evidence, and what they get -------------------------------------------------------

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
        state = judged(tmap, state, None, offset, n, size)[0].state
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
        state = judged(tmap, state, None, page - r, 2 * r, size)[0].state
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




def blocks(a, b):
    return list(range(a // BS, (b - 1) // BS + 1))


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
    assert got[-1] == DATA // BS


def test_jumps_into_the_tails_of_big_tensors_make_a_loader_which_wants_the_whole_file():
    state = FileState()
    for i in (1, 3):  # transformers' first look: the last ~256 KiB of each tensor
        verdict, _ = judged(TMAP, state, None, R[i][1] - 256 * KB, 128 * KB, SIZE)
        state = verdict.state
        assert not state.loading and verdict.exact == ExactRead()  # (its pages)
    verdict, _ = judged(TMAP, state, None, R[4][1] - 256 * KB, 128 * KB, SIZE)
    assert verdict.state.loading and verdict.state.tails == frozenset({1, 3, 4})
    assert verdict.exact is None and verdict.loader == 4 and verdict.window == (0, SIZE)
    got = wants(TMAP, verdict, [], SIZE, CFG)
    ahead_ = blocks(R[4][0], R[6][1])
    assert got[: len(ahead_)] == ahead_
    behind = got[len(ahead_):]
    assert behind == sorted(behind, reverse=True) and max(behind) < ahead_[0]
    assert sorted(got) == blocks(DATA, SIZE)  # the rest of the whole file, once each
    again, _ = judged(TMAP, verdict.state, None, R[4][0] + MB, 4 * KB, SIZE)
    assert again.loader is None and again.window == (0, SIZE)  # wanted once, from each new tensor


def test_a_jump_into_tensor_data_in_a_loading_folder_is_a_loader_read():
    verdict, _ = judged(TMAP, FileState(), None, R[5][0], 4 * KB, SIZE, folder=True)
    assert verdict.state.loading and verdict.state.data_read and verdict.loader == 5
    assert wants(TMAP, verdict, [], SIZE, CFG)[0] == R[5][0] // BS


def test_a_header_read_in_a_loading_folder_gets_the_speculative_window_only():
    verdict, stream = judged(TMAP, FileState(), None, 0, 128 * KB, SIZE, folder=True)
    assert not verdict.state.loading and not verdict.state.data_read and verdict.loader is None
    assert verdict.window == (0, DATA + CFG.speculative)
    # the kernel's readahead running on from the header into the data is not the program's
    verdict, _ = judged(TMAP, verdict.state, stream, 128 * KB, 128 * KB, SIZE, folder=True)
    assert not verdict.state.loading and not verdict.state.data_read


def test_a_sequential_run_does_not_touch_tensors():
    run = Stream(R[2][0], 0, R[1][0] + 4 * KB, target=2, reach=4 * KB)
    verdict = judge(TMAP, FileState(), run, run.streak, R[2][0], 4 * KB, SIZE, folder_loading=False, cfg=CFG)
    assert verdict.state.touched == frozenset()


def test_speculative_blocks():
    assert speculative_blocks(TMAP, SIZE, CFG) == blocks(DATA, DATA + MB)
    tmap, size = layout([100 * KB])
    assert speculative_blocks(tmap, size, CFG) == [0]
    assert speculative_blocks(TensorMap([]), 4 * KB, CFG) == []


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


# -- loads stay loads, streams stay streams (through the kernel's requests) -------------------------

@pytest.mark.parametrize("r", [32 * KB, MB])
def test_cat_streams_the_whole_file_in_blocks(r):
    tmap, size = EXPERT
    kernel = Kernel(size, r, MB, spill=2)
    sim = Sim(tmap, size, CFG)
    sim.reads(kernel.pread(0, size))
    assert sim.held.contains(0, size) and sim.sent == size  # every byte, once
    stream = [v for v in sim.verdicts if v.window == (CFG.block_size * 2, size) or v.window[1] == size]
    assert stream and sum(b - a for a, b in sim.fetches if b - a == BS) >= size - 4 * MB  # blocks, the start paged


def test_cat_whose_first_two_requests_are_served_out_of_order_still_streams():
    """A large readahead: the kernel sends cat's first requests at once, and the one at 1 MiB
    may be planned before the one at 0.  The run still began at byte 0: a stream, not a run
    in the first tensor that never grows a window (which fetched every MiB in four pieces)."""
    tmap, size = EXPERT
    stream, state, windows = None, FileState(), []
    for offset in [MB, 0, *range(2 * MB, 12 * MB, MB)]:
        verdict, stream = judged(tmap, state, stream, offset, MB, size)
        state = verdict.state
        windows.append(verdict.window)
    assert stream.streak == 0 and windows[-1][1] == size, windows


def test_cat_with_four_large_requests_in_flight_is_one_stream_never_a_loader():
    """cat at a large readahead (doubled by its fadvise): four 1 MiB requests in flight,
    planned in any order.  No read is a jump, so no sweep of jumps makes it a loader (which
    wanted the next shards: cat of one shard fetched 2 MiB of two others, 1 run in 5)."""
    tmap, size = layout([3 * MB] * 12)
    stream, state, jumps = None, FileState(), 0
    order = [k + d for k in range(0, 32, 4) for d in (3, 1, 0, 2)]
    for k in order:
        run, _, streak = advance(stream, k * MB, MB, size, CFG)
        jumps += streak is None
        verdict, stream = judged(tmap, state, stream, k * MB, MB, size)
        state = verdict.state
    assert jumps == 1 and not state.loading and stream.streak == 0  # (the first read: 3 MiB)


def test_transformers_first_looks_then_the_load_fetch_the_whole_file_in_blocks():
    tmap, size = layout([8 * MB] * 12)
    kernel = Kernel(size, 32 * KB, MB)
    sim = Sim(tmap, size, CFG)
    sim.reads(kernel.pread(0, 8))
    for i in (0, 1, 2, 3):  # the last page of each tensor, in key order (transformers 5)
        sim.reads(kernel.faults(tmap.ranges[i][1] - 1, tmap.ranges[i][1]))
    assert sim.state.loading
    assert sim.held.contains(tmap.data, size)  # the loader's want: the rest of the whole file
