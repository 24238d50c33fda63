"""``--profile DIR``: ``py-spy record`` of the mount daemon during one scenario, as a flame graph.

py-spy samples only the thread that holds the GIL (``--gil``): where the daemon's Python
time goes, one thread at a time — the GIL is what a Python daemon on 2 cores queues on.  Its
idle-thread filter is not used: on this machine it let threads parked in
``Condition.wait``, an executor's queue or ``Event.wait`` through in both its modes (the
non-blocking one falls back to a heuristic: py-spy issue 480), so half the samples were
sleeping threads.  Samples ÷ (rate × seconds) is then how busy the GIL was ("GIL held").
Time in C with the GIL released (``pread``, ``pwrite``, SQLite, sockets) is not in it.

py-spy writes collapsed stacks (``--format raw``: ``frame;frame;... count`` per line, the
input of every flame-graph tool and of speedscope); this module draws them as a small SVG
(one rectangle per frame, width = samples, hover for the numbers) and lists the functions
with the most samples, on top of the stack (self) and anywhere in it (total).  A profiled
run is never a timed one: the bench runs it after its timed runs.
"""

from __future__ import annotations

import collections
import html
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

RATE = 200
PLUMBING = {"Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run"}  # at the root of every thread's stack
_LINE = re.compile(r" \((?P<file>[^()]*):\d+\)$")  # "func (file.py:123)" -> by function, not line


class Spy:
    """``with Spy(pid, DIR / "name")``: record while the block runs; then name.txt, name.svg."""

    def __init__(self, pid: int, out: Path):
        self.pid, self.out = pid, out
        self.proc = None

    def __enter__(self) -> "Spy":
        beside = Path(sys.executable).with_name("py-spy")  # the venv's, when its bin is not on PATH
        spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if spy is None:
            print("  py-spy: not installed, no profile (pip install py-spy)", flush=True)
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([spy, "record", "-p", str(self.pid), "-f", "raw", "-r", str(RATE), "--gil",
                                      "--nonblocking", "-o", str(self.out.with_suffix(".txt"))],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        seconds = time.monotonic() - self.t0
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        _, err = self.proc.communicate(timeout=60)
        raw = self.out.with_suffix(".txt")
        if not raw.exists():
            print(f"  py-spy wrote nothing: {err.decode(errors='replace')[-300:]}", flush=True)
            return
        stacks = read_collapsed(raw.read_text())
        self.out.with_suffix(".svg").write_text(flame_svg(stacks, title=self.out.stem))
        held = sum(stacks.values()) / (RATE * seconds)
        print(f"  profile {self.out.with_suffix('.svg')}: {seconds:.1f} s, GIL held {100 * held:.0f}%\n"
              f"{top_table(stacks)}", flush=True)


def read_collapsed(text: str) -> dict[tuple[str, ...], int]:
    """``frame;frame;... count`` lines -> {stack (root first): samples}, lines merged by function."""
    out: dict[tuple[str, ...], int] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out[tuple(_LINE.sub(r" (\g<file>)", f) for f in stack.split(";"))] += int(count)
    return dict(out)


def top(stacks: dict[tuple[str, ...], int], n: int = 15) -> tuple[list, list, int]:
    """([(function, self samples)], [(function, total samples)], all samples), most first
    (total: ``n`` beyond the thread plumbing every stack starts with)."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    for stack, count in stacks.items():
        own[stack[-1]] += count
        for frame in set(stack):
            total[frame] += count
    return own.most_common(n), total.most_common(n + len(PLUMBING)), sum(stacks.values())


def top_table(stacks: dict[tuple[str, ...], int], n: int = 15) -> str:
    own, total, all_ = top(stacks, n)
    pct = lambda c: f"{100 * c / max(all_, 1):5.1f}%"  # noqa: E731
    lines = [f"    {all_} samples with the GIL; self (on top of the stack):"]
    lines += [f"    {pct(c)}  {f}" for f, c in own]
    lines += ["    total (anywhere in the stack):"]
    lines += [f"    {pct(c)}  {f}" for f, c in total if f.split(" (")[0] not in PLUMBING]
    return "\n".join(lines)


def flame_svg(stacks: dict[tuple[str, ...], int], title: str = "", width: int = 1200, row: int = 16) -> str:
    """A flame graph: the root at the bottom, a frame's children above it, widths by samples."""
    tree: dict = {}
    for stack, count in stacks.items():
        node = tree
        for frame in stack:
            entry = node.setdefault(frame, [0, {}])
            entry[0] += count
            node = entry[1]
    all_ = sum(stacks.values()) or 1
    depth = max((len(s) for s in stacks), default=0)
    height = (depth + 2) * row
    rects: list[str] = []

    def draw(node: dict, x: float, level: int) -> None:
        for name, (count, children) in sorted(node.items()):
            w = width * count / all_
            y = height - (level + 1) * row
            hue = 20 + zlib.crc32(name.split(" (")[-1].encode()) % 40  # by file: stable colours
            label = html.escape(name if len(name) * 7 < w else name[: max(0, int(w / 7) - 2)] + "..")
            tip = html.escape(f"{name}: {count} samples, {100 * count / all_:.1f}%")
            rects.append(f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{max(w, 0.1):.1f}" '
                         f'height="{row - 1}" fill="hsl({hue},90%,60%)"/>'
                         + (f'<text x="{x + 2:.1f}" y="{y + row - 4}">{label}</text>' if w > 21 else "") + "</g>")
            draw(children, x, level + 1)
            x += w

    draw(tree, 0.0, 0)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
            f'font-size="11"><text x="4" y="12">{html.escape(title)}: {all_} samples holding the GIL '
            f'(py-spy --gil, {RATE} Hz)</text>'
            + "".join(rects) + "</svg>\n")
