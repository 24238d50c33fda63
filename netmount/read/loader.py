"""Loaders: the evidence that a program is loading a file, and what a loader is given.

Pure (no I/O).  Designed on a read trace of transformers 5.24 loading a 6-shard bf16 Llama
through the mount (BENCHMARKS.md): ``from_pretrained`` reads each shard's header on the main
thread, shard after shard, then threads fault in the *last* ~256 KiB of every tensor,
hopping between shards in key order; the bulk is read later, at first use, in module order.

A file is being loaded (``loader_seen``), decided on evidence, never on one tensor, once the
first jumps into ``load_tails`` big tensors have landed in their *tails*, or the first looks
at ``load_sweep`` tensors in a row went forward through the file (transformers 5 looks at the
page where each tensor ends, in key order), or jumps into a run of ``load_run`` tensors next
to each other in file order (``load_file``, vLLM-style iteration).  A person reading tensors
reads them from their start, a few at a time: one big tensor, one tensor per shard, a routed
expert (3 weights and 3 scales: two runs of 3), 10 random tensors — none of these is evidence.

A loader gets the rest of the whole file (``loader_blocks``), then the next shards in the
order it reads them (``loader_order``, ``ahead``): each only a ``speculative`` window past its
header until the program reads its tensor data.
"""

from __future__ import annotations

from netmount.core.blocks import block_range
from netmount.read.tensormap import TensorMap


def loader_seen(touched: frozenset[int], tails: frozenset[int], cfg, order: tuple[int, ...] = ()) -> bool:
    """Is a loader reading this file?  The evidence: jumps into the tails of ``load_tails``
    big tensors, first looks at ``load_sweep`` tensors in a row going forward through the
    file (each at most ``sweep_gap`` past the one before: transformers in key order), or
    jumps into a run of ``load_run`` neighbouring tensors.  Jumps into a few tensors,
    scattered, out of order or in short runs, are a person's."""
    if len(tails) >= cfg.load_tails:
        return True
    last = order[-cfg.load_sweep:]
    if len(last) >= cfg.load_sweep and all(0 < b - a <= cfg.sweep_gap for a, b in zip(last, last[1:])):
        return True
    run, best, prev = 0, 0, None
    for i in sorted(touched):
        run = run + 1 if prev is not None and i == prev + 1 else 1
        best, prev = max(best, run), i
    return best >= cfg.load_run


def loader_blocks(tmap: TensorMap, i: int, file_size: int, cfg) -> list[int]:
    """A loader read tensor ``i``: the rest of the file, nearest first.  It and the tensors
    after it up to ``lookahead``, then (files sort a layer's tensors by name — k, o, q, v —
    models use them in module order — q, k, v, o) the tensors just before it, up to half the
    lookahead, nearest first; then the rest after, then the rest before (nearest first)."""
    bs = cfg.block_size
    start, end = tmap.ranges[i]
    j, stop = i + 1, end + cfg.lookahead
    while j < len(tmap.ranges) and tmap.ranges[j][0] < stop:
        end = tmap.ranges[j][1]
        j += 1
    k, back = i, start - cfg.lookahead // 2
    while k > 0 and tmap.ranges[k - 1][1] > back:
        k -= 1
    ahead_ = list(block_range(start, end - start, file_size, bs))
    before = tmap.ranges[k][0]
    behind = [b for b in block_range(before, start - before, file_size, bs) if b < ahead_[0]][::-1]
    data_end = tmap.ranges[-1][1]
    rest = [b for b in block_range(end, data_end - end, file_size, bs) if b > ahead_[-1]]
    first = tmap.ranges[0][0]
    low = min(behind[-1] if behind else ahead_[0], ahead_[0])
    earlier = list(block_range(first, low * bs - first, file_size, bs))[::-1] if low * bs > first else []
    return list(dict.fromkeys([*ahead_, *behind, *rest, *earlier]))


def speculative_blocks(tmap: TensorMap, file_size: int, cfg) -> list[int]:
    """A shard ahead of a loader that the program has read no tensor data from yet: the
    ``speculative`` window after its header, no more."""
    if not tmap.ranges:
        return []
    data = tmap.ranges[0][0]
    return list(block_range(data, min(cfg.speculative, file_size - data), file_size, cfg.block_size))


def loader_order(paths: list[str], weight_map: dict[str, str] | None = None) -> list[str]:
    """The safetensors files of a folder in the order a loader reads them: by the first of
    their tensors in key order as the index names them (transformers walks the keys sorted),
    then any the index does not name, by name."""
    shards = sorted(p for p in paths if p.endswith(".safetensors"))
    if not weight_map:
        return shards
    by_name = {p.rpartition("/")[2]: p for p in shards}
    order: list[str] = []
    for key in sorted(weight_map):
        p = by_name.get(weight_map[key])
        if p is not None and p not in order:
            order.append(p)
    return order + [p for p in shards if p not in order]


def ahead(order: list[str], reached: set[str], wanted: frozenset[str], cfg) -> list[str]:
    """Shards to want next for a loader: up to ``ahead_files`` past the furthest one in
    ``order`` that the program has read (``reached``), not wanted already, nearest first."""
    last = max((n for n, p in enumerate(order) if p in reached), default=-1)
    if last < 0:
        return []
    return [p for p in order[last + 1 : last + 1 + cfg.ahead_files] if p not in wanted]
