"""Byte ranges being fetched: one ``Piece`` each (single-flight), their bytes counted (the
budget), and a way to wait until there are none (``drain``).

A piece is *in flight* from the moment a reader or prefetch claims it until its bytes are
in the store (or it failed) — not merely until they arrive: a range whose waiters have been
woken but that is not yet on disk must neither be fetched again nor be missed by a reader
that looks in the store meanwhile.  A piece's bytes stay on the piece (``data``) from the
moment they land, so a reader that waited on it answers from them whatever the store does.

Claims are atomic: the gaps of a wanted range are computed and registered under one lock,
against both the pieces in flight and what the store holds (``held``, read under that lock:
the store marks bytes held *before* their piece leaves here, so a range is always either in
flight or held once fetched — never neither, which would fetch it twice).

Budget: bytes claimed and not yet landed are ``net`` (on the network); landed and not yet
stored are ``landed`` (in memory).  Prefetch claims only while ``net`` — plus ``landed``
beyond one budget, so a slow disk cannot let memory grow without bound — stays within its
budget; demand reads always claim.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import threading
from typing import Callable, Iterable

from netmount.core.ranges import Interval, Ranges


class Piece:
    """``[start, end)`` of one content, fetched by one request; ``future`` gives its bytes."""

    __slots__ = ("cid", "start", "end", "future", "data", "prefetch")

    def __init__(self, cid: str, start: int, end: int, prefetch: bool) -> None:
        self.cid, self.start, self.end, self.prefetch = cid, start, end, prefetch
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.data: bytes | None = None

    def __len__(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return f"Piece({self.cid[:8]}, {self.start}, {self.end})"


class Request:
    """One ranged request: ``[start, end)`` of one content, delivered as ``pieces``."""

    __slots__ = ("start", "end", "pieces")

    def __init__(self, start: int, end: int, pieces: list[Piece]) -> None:
        self.start, self.end, self.pieces = start, end, pieces


Planner = Callable[[str, list[Interval], bool], list[tuple[int, int, list[tuple[int, int]]]]]


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pieces: dict[str, list[Piece]] = {}  # content id -> pieces sorted by start, disjoint
        self._starts: dict[str, list[int]] = {}  # the same pieces' starts (bisect)
        self.net = 0  # bytes claimed, not landed
        self.landed = 0  # bytes landed, not stored
        self._busy = 0  # other work drain waits for (writes queued, lifts)
        self.max_net = 0

    # -- looking --------------------------------------------------------------------------
    def overlapping(self, cid: str, start: int, end: int) -> list[Piece]:
        with self._lock:
            return self._overlapping(cid, start, end)

    def _overlapping(self, cid: str, start: int, end: int) -> list[Piece]:
        pieces = self._pieces.get(cid)
        if not pieces:
            return []
        starts = self._starts[cid]
        k = max(0, bisect.bisect_right(starts, start) - 1)
        out = []
        while k < len(pieces) and pieces[k].start < end:
            if pieces[k].end > start:
                out.append(pieces[k])
            k += 1
        return out

    def spans(self, cid: str) -> Ranges:
        with self._lock:
            return Ranges((p.start, p.end) for p in self._pieces.get(cid, ()))

    def empty(self) -> bool:
        with self._lock:
            return not self._pieces and not self._busy

    # -- claiming ----------------------------------------------------------------------------
    def claim(self, cid: str, wanted: Iterable[Interval], held: Callable[[], Ranges], plan: Planner, *,
              prefetch: bool = False, budget: int | None = None,
              block: int = 1) -> tuple[list[Piece], list[Request], int]:
        """Pieces in flight that overlap ``wanted`` (to join), and new requests for its gaps —
        not held (``held()``, called under the lock), not in flight — cut by ``plan(cid, gaps,
        prefetch)`` into ``(start, end, [(piece_start, piece_end), ...])``.  With a ``budget``
        (prefetch), the gaps are taken in order while they fit (``_within``: the first that does
        not is cut at a ``block`` edge).  Returns (joined, new requests, bytes of gaps left for
        lack of room)."""
        with self._lock:
            have = held()
            joined: list[Piece] = []
            per_want: list[list[Interval]] = []
            for a, b in wanted:
                ours = self._overlapping(cid, a, b)
                joined.extend(ours)
                busy = Ranges((p.start, p.end) for p in ours)
                per_want.append([g for s, e in have.missing(a, b) for g in busy.missing(s, e)])
            gaps, left = self._within(per_want, budget, block)
            requests = []
            for start, end, cuts in plan(cid, gaps, prefetch) if gaps else ():
                pieces = [Piece(cid, s, e, prefetch) for s, e in cuts]
                for p in pieces:
                    self._add(p)
                requests.append(Request(start, end, pieces))
            self.net += sum(e - s for s, e in gaps)
            self.max_net = max(self.max_net, self.net)
        return list(dict.fromkeys(joined)), requests, left

    def _within(self, per_want: list[list[Interval]], budget: int | None, block: int) -> tuple[list[Interval], int]:
        """The gaps to claim, in order, and the bytes left out for lack of room: gaps are
        taken while they fit, the one that does not is cut at a ``block`` edge to fill the
        room (a block at least, when nothing else is in flight: it could never start else)."""
        gaps = [g for want in per_want for g in want]
        if budget is None:
            return gaps, 0
        room = budget - self.net - max(0, self.landed - budget)
        taken: list[Interval] = []
        for n, (s, e) in enumerate(gaps):
            if e - s <= room:
                taken.append((s, e))
                room -= e - s
                continue
            cut = (s + max(0, room)) // block * block
            if cut <= s and not (taken or self.net or self.landed):
                cut = min(e, (s // block + 1) * block)
            if cut > s:
                taken.append((s, cut))
                s = cut
            return taken, (e - s) + sum(b - a for a, b in gaps[n + 1:])
        return taken, 0

    def _add(self, p: Piece) -> None:
        pieces = self._pieces.setdefault(p.cid, [])
        starts = self._starts.setdefault(p.cid, [])
        k = bisect.bisect_left(starts, p.start)
        pieces.insert(k, p)
        starts.insert(k, p.start)

    # -- news -------------------------------------------------------------------------------
    def land(self, p: Piece, data: bytes) -> bool:
        """``p``'s bytes arrived: to its waiters, and from the network's budget to memory's.
        False if it had landed already (a retry delivers pieces again) or failed."""
        with self._changed:
            if p.data is not None or p.future.done():
                return False
            p.data = data
            self.net -= len(p)
            self.landed += len(p)
            self._changed.notify_all()
        p.future.set_result(data)
        return True

    def release(self, pieces: Iterable[Piece], error: BaseException | None = None) -> None:
        """These pieces are stored (their bytes held by the store) or failed (``error`` goes
        to their waiters): no longer in flight."""
        failed = []
        with self._changed:
            for p in pieces:
                group = self._pieces.get(p.cid)
                if group is None or p not in group:
                    continue
                k = group.index(p)
                del group[k]
                del self._starts[p.cid][k]
                if not group:
                    del self._pieces[p.cid]
                    del self._starts[p.cid]
                if p.data is not None:
                    self.landed -= len(p)
                else:
                    self.net -= len(p)
                    failed.append(p)
            self._changed.notify_all()
        for p in failed:
            if not p.future.done():
                p.future.set_exception(error or RuntimeError("released before its bytes came"))

    def busy(self, n: int) -> None:
        """``n`` more (or, negative, fewer) jobs that ``drain`` must wait for."""
        with self._changed:
            self._busy += n
            self._changed.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight and no job is pending; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pieces and not self._busy, timeout)
