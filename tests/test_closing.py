"""mounting/closing.py: a daemon's parts close in one order, each wait bounded (pure: fake
parts that record what is called; the real daemon's close is exercised by every unmount,
and under a stalled server by test_shutdown.py)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from netmount.mounting.closing import Waits, bounded, close_parts

from conftest import within

QUICK = Waits(prefetcher=0.2, drain=0.2, close=0.2)  # bounds a hung fake meets; the rest answer at once


class Part:
    """Records its calls in ``log``; ``hang`` names a method that blocks until ``release``."""

    def __init__(self, name: str, log: list, hang: str = "", answer=True) -> None:
        self.name, self.log, self.hang, self.answer = name, log, hang, answer
        self.release = threading.Event()

    def __getattr__(self, method):
        def call(*args):
            self.log.append(f"{self.name}.{method}")
            if method == self.hang:
                self.release.wait(60)
            return self.answer

        return call


def parts(log, **special):
    names = ("fetcher", "prefetcher", "reader", "stats", "store")
    return SimpleNamespace(**{n: special.get(n) or Part(n, log) for n in names})


def test_the_order_stop_fetching_then_the_prefetcher_then_drain_then_pools():
    log = []
    assert within(30, close_parts, parts(log), QUICK)
    assert log == ["fetcher.abort", "prefetcher.close", "reader.drain", "reader.close", "fetcher.close",
                   "stats.close", "store.close"]


def test_parts_not_built_are_skipped():
    log = []
    p = parts(log)
    p.prefetcher = p.reader = p.stats = None  # a start that failed early, or no prefetch
    assert within(30, close_parts, p, QUICK)
    assert log == ["fetcher.abort", "fetcher.close", "store.close"]


def test_a_prefetcher_that_does_not_stop_keeps_the_reader_and_store_open():
    """Its threads read through the reader: they must never meet a closed one."""
    log = []
    assert not within(30, close_parts, parts(log, prefetcher=Part("prefetcher", log, answer=False)), QUICK)
    assert log == ["fetcher.abort", "prefetcher.close", "fetcher.close", "stats.close"]


def test_a_reader_that_hangs_in_close_is_left_after_its_bound_and_the_store_stays_open():
    log = []
    reader = Part("reader", log, hang="close")
    try:
        assert not within(30, close_parts, parts(log, reader=reader), QUICK)
        assert log == ["fetcher.abort", "prefetcher.close", "reader.drain", "reader.close", "fetcher.close",
                       "stats.close"]
    finally:
        reader.release.set()


def test_bounded_says_whether_the_call_ended_and_survives_its_exception():
    gate = threading.Event()
    assert not bounded("a hung thing", 0.05, lambda: gate.wait(60))
    gate.set()
    assert bounded("a failing thing", 30, lambda: 1 / 0)
    assert bounded("a quick thing", 30, lambda: None)
