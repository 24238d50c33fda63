"""Every measured value by name, printed as it comes; medians and side-by-side tables at the end."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

NAN = float("nan")


class Results:
    def __init__(self) -> None:
        self.runs: dict[str, list[float]] = {}

    def add(self, key: str, value: float) -> None:
        self.runs.setdefault(key, []).append(value)
        print(f"  {key}: {value:.3f}", flush=True)

    def med(self, key: str) -> float:
        xs = self.runs.get(key)
        return statistics.median(xs) if xs else NAN

    def __contains__(self, key: str) -> bool:
        return bool(self.runs.get(key))

    def dump(self) -> str:
        return json.dumps({k: [round(x, 3) for x in v] for k, v in self.runs.items()})


@dataclass
class Row:
    """One comparison: netmount's value beside a baseline's, as netmount ÷ baseline."""

    title: str
    ours: str  # result key
    base: str  # result key, or "" for a row without a baseline
    base_name: str
    unit: str  # "MB/s" (more is better) or "s" (less is better), ...
    target: str = ""

    def cells(self, res: Results) -> str | None:
        if self.ours not in res or (self.base and self.base not in res):
            return None
        a, b = res.med(self.ours), res.med(self.base) if self.base else NAN
        ratio = f"{a / b:.2f}×" if self.base in res and b else ""
        fmt = (lambda x: f"{x:,.0f}") if self.unit in ("MB/s", "IOPS", "MiB") else (lambda x: f"{x:.2f}")
        base = f"{self.base_name} {fmt(b)}" if self.base in res else self.base_name
        return f"| {self.title} | {fmt(a)} {self.unit} | {base} | {ratio} | {self.target} |"


def table(rows: list[Row], res: Results) -> list[str]:
    lines = [c for c in (r.cells(res) for r in rows) if c is not None]
    if not lines:
        return []
    return ["| scenario | netmount | baseline | ratio | target |", "|---|---|---|---|---|", *lines]
