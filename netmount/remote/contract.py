"""The one fetch contract every byte of file content comes through.

Two implementations follow it exactly, and one conformance suite
(``tests/test_fetch_contract.py``) runs against both: ``remote.fetch.RangeFetcher`` (HTTP
range requests to the Hub/CDN) and ``remote.memory.MemoryFetcher`` (in-memory, with faults
on demand, for unit tests of everything above it).

    fetcher.fetch(file, start, end, on_part, part_size=0, prefetch=False) -> Future[int]

- The bytes ``[start, end)`` of ``file`` (``0 <= start < end <= file.size``, else
  ``FetchError`` at once) — of the repo and commit the file names (``file.repo``; one
  fetcher serves files of many repos) — are handed to ``on_part(offset, data)`` in *pieces*: piece ``k``
  is ``[start + k * part_size, min(end, start + (k + 1) * part_size))``, and with
  ``part_size`` 0 (or at least ``end - start``) the whole range is one piece.  A piece is
  never joined with another and never split: a reader that asks for block-sized pieces of
  a run of blocks gets exactly one call per block, the short last block included.
- ``data`` is bytes-like (``RangeFetcher`` hands over the ``bytearray`` its socket read the
  piece into; ``MemoryFetcher`` slices of ``bytes``) and immutable by convention: the fetcher
  never writes it again once handed over, and a consumer keeps it, slices it (a
  ``memoryview``) or stores it as it is, but never changes it: nothing copies it to be safe.
- ``on_part`` runs on a thread of the fetcher's (keep it short, never block on I/O or on
  another fetch), in any order, and only with bytes already verified (206, exact
  Content-Range, exact length).
- A try that fails midway may have delivered some pieces; a retry may deliver them again
  (the same bytes: ``MemoryFetcher.retry_midway`` does; ``RangeFetcher`` resumes at the first
  piece not delivered, so it never does).  Consumers must accept a piece twice.
- The future's result is always ``end - start`` (an ``int``: the body is never held twice),
  once every piece has been delivered; on failure it raises ``FetchError`` (after the
  fetcher's own retries).  There is no partial success, and no piece after the future is done.
- ``prefetch=True`` marks a request no reader waits for yet: a fetcher may hold it back so
  that reads never queue behind it.

``fetch_bytes`` is the convenience on top for callers that want the bytes themselves.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Protocol, Union

from netmount.core.errors import FetchError
from netmount.remote.hub import RemoteFile

Bytes = Union[bytes, bytearray, memoryview]  # bytes-like, never changed once handed over
OnPart = Callable[[int, Bytes], None]


class Fetcher(Protocol):
    def fetch(self, file: RemoteFile, start: int, end: int, on_part: OnPart, *,
              part_size: int = 0, prefetch: bool = False) -> concurrent.futures.Future:
        """See the module docstring: pieces to ``on_part``, then ``Future[int]`` = end - start."""
        ...


def pieces(start: int, end: int, part_size: int) -> list[tuple[int, int]]:
    """The pieces ``[a, b)`` of ``[start, end)`` the contract delivers, in order."""
    if part_size <= 0 or part_size >= end - start:
        return [(start, end)]
    return [(a, min(end, a + part_size)) for a in range(start, end, part_size)]


def fetch_bytes(fetcher: Fetcher, file: RemoteFile, start: int, end: int, *,
                prefetch: bool = False) -> concurrent.futures.Future:
    """``Future[bytes]`` of exactly ``[start, end)`` of ``file``, assembled from the pieces."""
    got: list = [None]  # the one whole-range piece (kept, not copied), else a bytearray
    out: concurrent.futures.Future = concurrent.futures.Future()

    def on_part(offset: int, data: Bytes) -> None:
        if offset == start and len(data) == end - start:
            got[0] = data
        else:
            if not isinstance(got[0], bytearray):
                got[0] = bytearray(end - start)
            got[0][offset - start : offset - start + len(data)] = data

    def done(run: concurrent.futures.Future) -> None:
        if run.cancelled():  # (a fetcher shutting down): fail, never leave the caller waiting
            out.set_exception(FetchError(f"{file.path} [{start}, {end}): cancelled"))
            return
        exc = run.exception()
        if exc is not None:
            out.set_exception(exc if isinstance(exc, FetchError) else FetchError(f"{file.path}: {exc}"))
        elif run.result() != end - start:
            out.set_exception(FetchError(f"{file.path}: {run.result()} of {end - start} bytes"))
        else:
            out.set_result(bytes(got[0]))

    fetcher.fetch(file, start, end, on_part, prefetch=prefetch).add_done_callback(done)
    return out
