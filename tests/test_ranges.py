"""Ranges: table-driven edges, then random operations against a plain set-of-integers model."""

from __future__ import annotations

import random

import pytest

from netmount.core.ranges import Ranges, aligned_within, overlaps


@pytest.mark.parametrize("adds, expect", [
    ([], []),
    ([(5, 5)], []),  # empty
    ([(7, 3)], []),  # backwards: empty
    ([(0, 4)], [(0, 4)]),
    ([(0, 4), (4, 8)], [(0, 8)]),  # touching merge
    ([(4, 8), (0, 4)], [(0, 8)]),
    ([(0, 4), (5, 8)], [(0, 4), (5, 8)]),  # a gap of one stays
    ([(0, 4), (5, 8), (4, 5)], [(0, 8)]),  # filling the gap joins both
    ([(0, 2), (4, 6), (8, 10), (1, 9)], [(0, 10)]),  # one add swallows several
    ([(10, 20), (12, 15)], [(10, 20)]),  # inside
    ([(10, 20), (5, 25)], [(5, 25)]),  # around
    ([(10, 20), (30, 40), (0, 5)], [(0, 5), (10, 20), (30, 40)]),  # before all
])
def test_add(adds, expect):
    r = Ranges()
    for a in adds:
        r.add(*a)
    assert list(r) == expect
    assert r == Ranges(adds)


@pytest.mark.parametrize("have, query, missing, inter", [
    ([], (0, 10), [(0, 10)], []),
    ([(0, 10)], (0, 10), [], [(0, 10)]),
    ([(2, 4), (6, 8)], (0, 10), [(0, 2), (4, 6), (8, 10)], [(2, 4), (6, 8)]),
    ([(2, 4), (6, 8)], (3, 7), [(4, 6)], [(3, 4), (6, 7)]),
    ([(2, 4)], (4, 6), [(4, 6)], []),  # half-open: 4 is not in [2, 4)
    ([(2, 4)], (0, 2), [(0, 2)], []),
    ([(2, 4)], (5, 5), [], []),  # empty query
])
def test_missing_and_intersect(have, query, missing, inter):
    r = Ranges(have)
    assert r.missing(*query) == missing
    assert r.intersect(*query) == inter
    assert r.covered(*query) == sum(e - s for s, e in inter)
    assert r.contains(*query) == (missing == [])


def test_runs_round_trip_and_total():
    r = Ranges.from_runs([(0, 0), (1, 3), (7, 9)])
    assert list(r) == [(0, 4), (7, 10)]
    assert r.runs() == [(0, 3), (7, 9)]
    assert r.total == 7 and len(r) == 2 and r


def _random_ops(rng: random.Random, n: int) -> None:
    size = rng.choice([8, 30, 200])
    r, model = Ranges(), set()
    for _ in range(n):
        a = rng.randrange(-2, size + 2)
        b = a + rng.randrange(-1, size // 3 + 2)
        if rng.random() < 0.6:
            r.add(a, b)
            model.update(range(a, b))
        q0 = rng.randrange(-2, size + 2)
        q1 = q0 + rng.randrange(0, size // 2 + 2)
        want = [x for x in range(q0, q1) if x not in model]
        got = [x for s, e in r.missing(q0, q1) for x in range(s, e)]
        assert got == want
        assert [x for s, e in r.intersect(q0, q1) for x in range(s, e)] == sorted(model & set(range(q0, q1)))
        assert r.covered(q0, q1) == len(model & set(range(q0, q1)))
        assert r.contains(q0, q1) == (not want)
        # invariants: sorted, disjoint, never touching, no empties; the same integers as the model
        ivs = list(r)
        assert all(s < e for s, e in ivs)
        assert all(e1 < s2 for (_, e1), (s2, _) in zip(ivs, ivs[1:]))
        assert {x for s, e in ivs for x in range(s, e)} == model
        assert r.total == len(model)


@pytest.mark.parametrize("seed", range(200))
def test_random_against_a_set(seed):
    _random_ops(random.Random(seed), 40)



@pytest.mark.parametrize("start, end, unit, want", [
    (0, 10, 4, (0, 8)),
    (1, 10, 4, (4, 8)),
    (5, 7, 4, (8, 8)),  # no whole unit inside: empty
    (4, 8, 4, (4, 8)),
])
def test_aligned_within(start, end, unit, want):
    assert aligned_within(start, end, unit) == want


@pytest.mark.parametrize("a, b, want", [((0, 5), (5, 9), False), ((0, 6), (5, 9), True), ((3, 4), (0, 9), True)])
def test_overlaps(a, b, want):
    assert overlaps(a, b) is want and overlaps(b, a) is want
