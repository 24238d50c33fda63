"""Randomized: sequences of puts (any range, batches, whole blocks) and reads against a
simple model of what must be held — the content's bytes and a bytearray of held flags —
on both stores, as rclone's lib/ranges tests its range arithmetic; plus the pure range
helpers against brute force."""

from __future__ import annotations

import random

import pytest

from cache import DiskBlockStore, MemoryBlockStore
from cache import spans as S
from cache.store import join_segments

BS = 64  # small blocks: many edges


class Model:
    def __init__(self, size: int, seed: int) -> None:
        self.data = random.Random(seed).randbytes(size)
        self.held = bytearray(size)

    def put(self, a: int, b: int) -> None:
        self.held[a:b] = b"\x01" * (b - a)

    def spans(self) -> list[tuple[int, int]]:
        out, start = [], None
        for i, h in enumerate(self.held + b"\x00"):
            if h and start is None:
                start = i
            elif not h and start is not None:
                out.append((start, i))
                start = None
        return out

    def whole_blocks(self) -> list[int]:
        n = -(-len(self.data) // BS)
        return [i for i in range(n) if all(self.held[i * BS : (i + 1) * BS])]


def random_range(rng: random.Random, size: int) -> tuple[int, int]:
    a = rng.choice([rng.randrange(size), rng.randrange(0, size, BS), size - 1, 0])
    b = min(size, a + rng.choice([1, rng.randint(1, BS), BS, rng.randint(1, 4 * BS), BS - a % BS]))
    return a, b


def check(store, cid: str, m: Model, rng: random.Random) -> None:
    size = len(m.data)
    want = m.spans()
    assert store.held(cid) == want
    assert store.cached_ranges(cid) == want
    assert store.cached_bytes(cid) == sum(b - a for a, b in want)  # objects never overlap
    assert store.cached_indices(cid) == m.whole_blocks()  # covered blocks are whole blocks
    for _ in range(4):
        a, b = random_range(rng, size)
        held = all(m.held[a:b])
        got = store.read(cid, a, b - a, size)
        assert got == (m.data[a:b] if held else None), (a, b)
        segs = store.segments(cid, a, b - a + rng.choice([0, 0, 5 * BS]), size)
        if not held:
            assert segs is None
        elif segs is not None:  # a longer read may run past what is held
            assert join_segments(segs) == m.data[a : a + sum(s.length for s in segs)]


@pytest.mark.parametrize("kind", ["memory", "disk"])
@pytest.mark.parametrize("seed", range(6))
def test_random_puts_and_reads_against_a_model(tmp_path, kind, seed):
    rng = random.Random(seed)
    sizes = {"a": 20 * BS + rng.randint(1, BS - 1), "b": 7 * BS, "c": rng.randint(1, 3 * BS)}
    models = {cid: Model(size, seed * 10 + n) for n, (cid, size) in enumerate(sizes.items())}

    def opened():
        if kind == "memory":
            return MemoryBlockStore(BS)
        return DiskBlockStore(tmp_path / "s", BS, 1 << 30)

    store = opened()
    try:
        for step in range(250):
            cid = rng.choice(list(models))
            m = models[cid]
            size = len(m.data)
            roll = rng.random()
            if roll < 0.45:
                a, b = random_range(rng, size)
                store.put_range(cid, a, m.data[a:b], size)
                m.put(a, b)
            elif roll < 0.65:
                batch = [random_range(rng, size) for _ in range(rng.randint(1, 4))]
                store.put_ranges([(cid, a, m.data[a:b], size) for a, b in batch])
                for a, b in batch:
                    m.put(a, b)
            elif roll < 0.72:
                i = rng.randrange(-(-size // BS))
                store.put(cid, i, m.data[i * BS : (i + 1) * BS])
                m.put(i * BS, min(size, (i + 1) * BS))
            elif roll < 0.75 and kind == "disk":
                store.close()
                store = opened()  # a remount: everything still there, checked anew
            check(store, cid, m, rng)
        for cid, m in models.items():
            check(store, cid, m, rng)
    finally:
        store.close()


def test_spans_helpers_against_brute_force():
    rng = random.Random(7)

    class O:
        def __init__(self, a, b):
            self.start, self.end = a, b

    for _ in range(2000):
        n = 40
        pairs = [(a, a + rng.randint(0, 8)) for a in (rng.randrange(n) for _ in range(rng.randint(0, 6)))]
        flags = [any(a <= x < b for a, b in pairs) for x in range(n + 10)]
        merged = S.merge(pairs)
        assert [any(a <= x < b for a, b in merged) for x in range(n + 10)] == flags
        assert all(merged[i][1] < merged[i + 1][0] for i in range(len(merged) - 1))  # touching ones joined
        added: list[tuple[int, int]] = []
        for a, b in pairs:
            S.add(added, a, b)
        assert added == merged
        a = rng.randrange(n)
        b = a + rng.randint(0, 10)
        assert S.covers(merged, a, b) == all(flags[a:b])
        objs = sorted((O(x, y) for x, y in pairs if x < y), key=lambda o: o.start)
        cover = S.cover(objs, a, b)
        if a < b and not all(flags[a:b]):
            assert cover is None
        else:
            assert cover is not None
            pos = a
            for o, x, y in cover:
                assert x == pos and o.start <= x < y <= o.end
                pos = y
            assert pos == max(a, b) or (a >= b and cover == [])


def test_block_cuts():
    assert list(S.block_cuts(0, 0, 100, 10)) == []
    assert list(S.block_cuts(5, 25, 100, 10)) == [(0, 0, 10, 5, 10), (1, 10, 20, 10, 20), (2, 20, 30, 20, 25)]
    assert list(S.block_cuts(95, 97, 97, 10)) == [(9, 90, 97, 95, 97)]
