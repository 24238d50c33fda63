"""Read coverage: the bitmap against a plain set-of-pages model, and its memory bound."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from netmount.read.coverage import PAGE, Coverage, FileCoverage

CHUNK = 32768 * PAGE  # bytes of file per bitmap chunk


class Model:
    """The obvious implementation: a set of page numbers."""

    def __init__(self, size):
        self.size, self.pages = size, set()

    def add(self, offset, length):
        end = min(offset + length, self.size)
        if length > 0 and offset < end:
            self.pages.update(range(offset // PAGE, (end - 1) // PAGE + 1))

    def covered(self, start, end):
        end = min(end, self.size)
        n = 0
        for p in range(start // PAGE, (max(end, 1) - 1) // PAGE + 1) if start < end else ():
            if p in self.pages:
                n += min(end, (p + 1) * PAGE) - max(start, p * PAGE)
        return n


@pytest.mark.parametrize("seed", range(6))
def test_randomized_against_a_set_of_pages(seed):
    rnd = random.Random(seed)
    size = rnd.choice([3 * CHUNK + 12345, CHUNK, 5 * PAGE + 1, 2 * CHUNK - 1])
    fc, model = FileCoverage(size), Model(size)
    hot = [0, CHUNK, 2 * CHUNK, size]  # reads around chunk and file edges

    def offset():
        return max(0, min(size, rnd.choice(hot) + rnd.randrange(-3 * PAGE, 3 * PAGE))) \
            if rnd.random() < 0.5 else rnd.randrange(size)

    for _ in range(150):
        off, length = offset(), rnd.choice([1, 100, PAGE, 128 << 10, 3 * PAGE + 7, 20 * PAGE])
        fc.add(off, length)
        model.add(off, length)
        assert fc.pages == len(model.pages)
        a = offset()
        b = min(size, a + rnd.choice([0, 1, 5000, PAGE, 1 << 20, size]))
        assert fc.covered_bytes(a, b) == model.covered(a, b), (a, b)
    assert fc.covered_bytes() == model.covered(0, size)


def test_edges():
    fc = FileCoverage(10 * PAGE + 100)
    assert fc.covered_bytes() == 0
    fc.add(10 * PAGE, 1 << 20)  # the short last page, read past EOF
    assert fc.covered_bytes() == 100
    fc.add(PAGE + 10, 1)  # one byte marks its whole page
    assert fc.covered_bytes() == PAGE + 100
    assert fc.covered_bytes(PAGE + 1000, PAGE + 1010) == 10
    fc.add(0, 0)
    fc.add(20 * PAGE, 5)  # past EOF: nothing
    assert fc.pages == 2
    fc.add(0, 10 * PAGE + 100)
    assert fc.covered_bytes() == 10 * PAGE + 100 and fc.pages == 11


def test_memory_is_bounded_for_a_688_gb_file():
    size = 688 << 30
    fc = FileCoverage(size)
    rnd = random.Random(1)
    for _ in range(20000):  # scattered 128 KiB reads over the whole file
        fc.add(rnd.randrange(size // PAGE) * PAGE, 128 << 10)
    assert fc.memory() <= size // 32768 + 4096  # one bit per page
    assert fc.pages == pytest.approx(20000 * 32, rel=0.01)
    assert fc.covered_bytes() == fc.pages * PAGE


def test_coverage_by_file_and_ranges():
    cov = Coverage()
    a, b = SimpleNamespace(path="a", size=10 * PAGE), SimpleNamespace(path="b", size=100)
    cov.record(a, 0, 2 * PAGE)
    cov.record(b, 50, 10)
    assert cov.covered_bytes("a") == 2 * PAGE
    assert cov.covered_bytes("b") == 100  # the whole (only, short) page
    assert cov.covered_bytes("missing") == 0
    assert cov.touched("a", [(0, 10), (PAGE, 3 * PAGE), (5 * PAGE, 6 * PAGE)]) == [10, PAGE, 0]
    assert cov.total_bytes() == 2 * PAGE + 100
