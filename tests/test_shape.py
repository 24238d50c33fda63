"""Which bytes a read that misses fetches (read/shape.py), and how gaps become requests
(read/runs.py ``cut_runs``): pure tables."""

import pytest

from netmount.core.blocks import PAGE
from netmount.core.ranges import Ranges
from netmount.read.reader import ExactRead
from netmount.read.runs import cut_runs
from netmount.read.shape import pages, wanted

MiB = 1 << 20
HEAD = 128 << 10
SIZE = 10 * MiB + 123


@pytest.mark.parametrize("path, offset, end, have, exact, want", [
    # blocks: the whole blocks the read touches, clipped to the file
    ("a.bin", 5, 10, [], None, [(0, MiB)]),
    ("a.bin", MiB - 1, MiB + 1, [], None, [(0, 2 * MiB)]),
    ("a.bin", 10 * MiB, SIZE, [], None, [(10 * MiB, SIZE)]),
    # exact: the read's pages; the extent first
    ("a.bin", 5000, 5001, [], ExactRead(), [(PAGE, 2 * PAGE)]),
    ("a.bin", SIZE - 3, SIZE, [], ExactRead(), [(SIZE // PAGE * PAGE, SIZE)]),
    ("a.bin", 5000, 5001, [], ExactRead((3 * MiB + 1, 4 * MiB)), [(3 * MiB, 4 * MiB), (PAGE, 2 * PAGE)]),
    # a header read of a safetensors file: from 0 to the read's last page, not the block...
    ("m.safetensors", 0, 8, [], None, [(0, PAGE)]),
    ("m.safetensors", 0, 32 << 10, [], None, [(0, 32 << 10)]),
    ("m.safetensors", 64 << 10, 96 << 10, [], None, [(0, 96 << 10)]),
    # ... then, with some of the head here or coming, the rest of the head at once
    ("m.safetensors", 8, 9000, [(0, PAGE)], None, [(0, HEAD)]),
    # past the head, or not safetensors, or a file no bigger than the head: blocks
    ("m.safetensors", 100 << 10, 200 << 10, [], None, [(0, MiB)]),
    ("m.parquet", 0, 8, [], None, [(0, MiB)]),
])
def test_what_a_miss_fetches(path, offset, end, have, exact, want):
    assert wanted(path, SIZE, offset, end, MiB, have=Ranges(have), exact=exact, head_bytes=HEAD) == want


def test_a_small_file_is_read_in_blocks_not_as_a_head():
    assert wanted("s.safetensors", 100 << 10, 0, 8, MiB, have=Ranges(), exact=None, head_bytes=HEAD) == [
        (0, 100 << 10)]


def test_pages_clip_to_the_file():
    assert pages(1, 2, 10) == (0, 10)
    assert pages(PAGE, PAGE + 1, 3 * PAGE) == (PAGE, 2 * PAGE)


@pytest.mark.parametrize("gaps, cap, runs", [
    ([(0, 10)], 100, [(0, 10)]),
    ([(0, 10), (10, 20)], 100, [(0, 20)]),  # touching gaps are one request
    ([(0, 10), (11, 20)], 100, [(0, 10), (11, 20)]),  # a held byte between: two
    ([(0, 350)], 100, [(0, 100), (100, 200), (200, 300), (300, 350)]),
    ([(5, 350)], 100, [(5, 100), (100, 200), (200, 300), (300, 350)]),  # cut at block edges
    ([(5, 350)], 150, [(5, 100), (100, 200), (200, 350)]),
    ([(5, 60)], 30, [(5, 35), (35, 60)]),  # no block edge inside: cut where the size says
])
def test_gaps_become_requests_cut_at_block_edges(gaps, cap, runs):
    assert cut_runs(gaps, cap, 100) == runs
