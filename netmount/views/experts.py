"""``--experts SPEC``: a mixture-of-experts checkpoint with fewer routed experts (issue 12).

Kept experts are renumbered 0..k-1 in ascending order of their old numbers, every router
tensor keeps the kept experts' rows (in that order), and ``config.json`` is rewritten so stock
transformers builds the smaller model.  Architectures are told apart by their expert-count
key, which is also the key to rewrite:

- ``n_routed_experts`` (DeepSeek-V3): router ``mlp.gate.weight`` [n, hidden] and
  ``mlp.gate.e_score_correction_bias`` [n]; group routing: when the kept experts are whole
  groups (``n / n_group`` consecutive experts each), ``n_group`` = kept groups and
  ``topk_group = min(old, n_group)``, otherwise ``n_group = topk_group = 1``.
- ``num_local_experts`` (Mixtral): router ``block_sparse_moe.gate.weight``.
- ``num_experts`` (Qwen-MoE): router ``mlp.gate.weight``.

``num_experts_per_tok`` becomes ``min(old, k)`` for all three.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from netmount.core import errors

MAX_SPEC_EXPERTS = 1 << 16  # far past any real model; bounds what a typo like 0-99999999999 allocates
_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Moe:
    """What ``--experts`` needs to know about an architecture."""

    family: str  # for messages
    count_key: str  # config key holding the routed-expert count
    count: int
    routers: tuple[str, ...]  # router tensor names after "layers.<N>."

    def router_pattern(self) -> re.Pattern:
        alts = "|".join(re.escape(r) for r in self.routers)
        return re.compile(r"^((?:.*\.)?layers\.\d+\.)(?:%s)$" % alts)


ARCHS = (
    ("n_routed_experts", "DeepSeek-V3", ("mlp.gate.weight", "mlp.gate.e_score_correction_bias")),
    ("num_local_experts", "Mixtral", ("block_sparse_moe.gate.weight",)),
    ("num_experts", "Qwen-MoE", ("mlp.gate.weight",)),
)


def parse_experts(spec: str) -> tuple[int, ...]:
    """``"0-31"``, ``"0,5,9"``, ``"0-7,64-71"`` -> sorted expert numbers (repeats merged)."""
    text = (spec or "").strip()
    if not text:
        raise errors.BadInput("--experts: empty spec; expected e.g. 0-31, 0,5,9 or 0-7,64-71")
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        lo, hi = lo.strip(), hi.strip()
        if not _NUMBER.fullmatch(lo) or (dash and not _NUMBER.fullmatch(hi)):
            raise errors.BadInput(f"--experts: bad item {part!r} in {spec!r}; expected N or N-M "
                                  "with non-negative numbers, e.g. 0-7,64-71")
        a = int(lo)
        b = int(hi) if dash else a
        if b < a:
            raise errors.BadInput(f"--experts: range {part!r} goes down; write {b}-{a}")
        if b - a + 1 + len(out) > MAX_SPEC_EXPERTS:
            raise errors.BadInput(f"--experts: {spec!r} names more than {MAX_SPEC_EXPERTS} experts")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


def detect(config: dict) -> Moe:
    """The MoE architecture of a parsed ``config.json``; BadInput naming the keys it needs."""
    for key, family, routers in ARCHS:
        if key in config:
            n = config[key]
            if type(n) is not int or n < 1:
                raise errors.BadInput(f"--experts: config.json has {key}={n!r}, not a positive count")
            return Moe(family, key, n, routers)
    keys = ", ".join(f"{k} ({f})" for k, f, _ in ARCHS)
    raise errors.BadInput(f"--experts: config.json is not a mixture-of-experts model this knows; "
                          f"it needs one of {keys}")


def check_experts(kept: tuple[int, ...], moe: Moe) -> None:
    if not kept:
        raise errors.BadInput("--experts: no expert given")
    if kept[-1] >= moe.count:
        raise errors.BadInput(f"--experts: expert {kept[-1]} is past the model's {moe.count} routed "
                              f"experts (0-{moe.count - 1})")
    if moe.count_key == "n_routed_experts" and len(kept) < 2:
        # its router scores each group by the sum of its top 2 experts: a group of one fails
        raise errors.BadInput("--experts: DeepSeek-V3's group routing needs at least 2 experts")


def rewrite_config(config: dict, moe: Moe, kept: tuple[int, ...]) -> dict:
    """A copy of ``config`` describing the model with only ``kept`` experts (see module doc)."""
    k = len(kept)
    out = dict(config)
    out[moe.count_key] = k
    if type(out.get("num_experts_per_tok")) is int:
        out["num_experts_per_tok"] = min(out["num_experts_per_tok"], k)
    if moe.count_key == "n_routed_experts" and "n_group" in out:
        groups = whole_groups(kept, moe.count, out["n_group"])
        if groups is None:
            out["n_group"] = 1
            if "topk_group" in out:
                out["topk_group"] = 1
        else:
            out["n_group"] = groups
            if type(out.get("topk_group")) is int:
                out["topk_group"] = min(out["topk_group"], groups)
    return out


def whole_groups(kept: tuple[int, ...], count: int, n_group) -> int | None:
    """How many routing groups ``kept`` is made of, or None if it is not whole groups."""
    if type(n_group) is not int or n_group < 1 or count % n_group:
        return None
    size = count // n_group
    groups = {e // size for e in kept}
    return len(groups) if len(kept) == len(groups) * size else None


def config_bytes(config: dict) -> bytes:
    """As transformers writes config.json: 2-space indent, a final newline (key order kept)."""
    return (json.dumps(config, indent=2) + "\n").encode()
