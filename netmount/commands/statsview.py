"""Text for people from stats dicts: the summary table, the cache map, ``--watch``.

Pure functions of the stats (``stats.py`` documents the keys) and a width, so they are
tested without a mount or a terminal; only ``watch`` touches the screen.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from netmount.core.blocks import block_count
from netmount.core.ranges import Ranges
from netmount.core.units import format_size

SHADES = "·░▒▓█"  # no block cached, some, about half, most, all


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_summary(s: dict) -> str:
    """A few aligned lines for one mount."""
    hits, misses = s.get("cache_hits", 0), s.get("cache_misses", 0)
    amp = s.get("amplification")
    rows = [
        ("served", f"{format_size(s['bytes_served'])} to programs"
                   f" ({format_size(s.get('bytes_read', 0))} distinct)"),
        ("fetched", f"{format_size(s['bytes_fetched'])} from the network"
                    f"   amplification {'-' if amp is None else f'{amp:.2f}'}"),
        ("cache", f"{_pct(hits, hits + misses)} block hits ({hits} hits, {misses} misses)"),
        ("cached", f"{format_size(s['cached_bytes'])} of {format_size(s.get('total_bytes', 0))}"
                   f" ({_pct(s['cached_bytes'], s.get('total_bytes', 0))}),"
                   f" {s.get('verified_files', 0)} files verified"),
        ("http", f"{s['requests']} requests, {s['retries']} retries, {s['errors']} errors"),
        ("rate", f"serving {format_size(s.get('serve_rate', 0))}/s now; fetching"
                 f" {format_size(s.get('download_rate', 0))}/s now,"
                 f" {format_size(s.get('download_rate_avg', 0))}/s on average"),
    ]
    if s.get("view_files") is not None:
        sources = {p for f in s["view_files"] for p in f.get("sources", ())}
        rows.append(("view", f"{len(s['view_files'])} files, {format_size(s.get('view_bytes', 0))},"
                             f" cut from {len(sources)} repo files"))
    px = s.get("proxy")
    if px:
        rows.append(("proxy", f"{px['url']} {px['state']}: {px['hits']} hits, {px['misses']} misses,"
                              f" {px['bypass']} bypass, {px['fallbacks']} fallbacks,"
                              f" {format_size(px['bytes'])}"))
    hub = s.get("hf_cache")
    if hub:
        shared = s["shared"]
        rows.append(("repos", f"{hub['repos']} held, {hub['names']} listed, {hub['resolving']} being resolved;"
                              f" refs trusted {hub['refs_ttl']:g} s"))
        rows.append(("shared", f"{shared['files']} files share {shared['contents']} contents:"
                               f" {format_size(shared['bytes'])} fetched and stored once, not again"
                     if shared["files"] else "no content shared by the files read"))
    lines = [title(s)] + [f"  {k:<8} {v}" for k, v in rows]
    return "\n".join(lines + (render_repos(s["repos"]) if hub else []))


def title(s: dict) -> str:
    """What a stats record is of: a repo@commit on a mountpoint, or an hf-cache mount (or one
    snapshot of it)."""
    if s.get("mode") == "hf-cache" and s.get("root") is None:
        return f"the Hub at {s['endpoint']} as a Hugging Face cache on {s['mountpoint']}"
    where = f"{s['mountpoint']}/{s['root']}" if s.get("root") else s["mountpoint"]
    return f"{s['repo']}@{s['revision'][:12]} on {where}"


def render_repos(repos: list[dict], limit: int = 20) -> list[str]:
    """An hf-cache mount's repos with files read, most served first (``limit`` of them)."""
    used = sorted((r for r in repos if r["files"] or r["bytes_fetched"]), key=lambda r: -r["bytes_served"])
    if not used:
        return []
    width = max(len(r["repo"]) for r in used[:limit])
    out = [f"  {'repo':<{width}} {'files':>6} {'fetched':>10} {'served':>10} {'cached':>10} {'shared':>10}"]
    out += [f"  {r['repo']:<{width}} {r['files']:>6} {format_size(r['bytes_fetched']):>10}"
            f" {format_size(r['bytes_served']):>10} {format_size(r['cached_bytes']):>10}"
            f" {format_size(r['shared_bytes']):>10}" for r in used[:limit]]
    if len(used) > limit:
        out.append(f"  ... and {len(used) - limit} more (netmount stats --json)")
    return out


def render_table(stats: list[dict]) -> str:
    if not stats:
        return "no live netmount mounts"
    return "\n\n".join(render_summary(s) for s in stats)


def bar(runs, nblocks: int, width: int) -> str:
    """``width`` cells over ``nblocks`` blocks; each cell's shade is the cached fraction."""
    if nblocks <= 0 or width <= 0:
        return " " * max(width, 0)
    cached = Ranges.from_runs(runs)
    cells = []
    for c in range(width):
        a = c * nblocks // width
        b = max(a + 1, (c + 1) * nblocks // width)
        frac = cached.covered(a, b) / (b - a)
        if frac <= 0:
            cells.append(SHADES[0])
        elif frac >= 1:
            cells.append(SHADES[4])
        else:
            cells.append(SHADES[1 + min(2, int(frac * 3))])
    return "".join(cells)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def render_map(s: dict, width: int) -> str:
    """One bar per file of which blocks are cached, fitted to ``width`` columns."""
    bs = s["block_size"]
    files = s["view_files"] if s.get("view_files") is not None else s["files"]  # what the mount shows
    root = s.get("root")  # one snapshot of an hf-cache mount: its files' paths in it
    names = [f["path"][len(root) + 1:] if root else f["path"] for f in files]
    name_w = min(max((len(n) for n in names), default=4), max(12, width // 3))
    bar_w = max(10, width - name_w - 10)
    lines = [f"{title(s)}: cached blocks "
             f"({SHADES[4]} all {SHADES[3]} most {SHADES[2]} half {SHADES[1]} some {SHADES[0]} none)"]
    for f, name in zip(files, names):
        n = block_count(f["size"], bs)
        pct = f"{100 * f['cached_bytes'] / f['size']:5.1f}%" if f["size"] else "   -  "
        lines.append(f"{_fit(name, name_w):<{name_w}} {bar(f.get('cached_runs', []), n, bar_w)} {pct}")
    return "\n".join(lines)


def watch(fetch: Callable[[], str], interval: float = 1.0, out=None) -> None:
    """Redraw ``fetch()`` in place every ``interval`` seconds until Ctrl-C."""
    out = out or sys.stdout
    try:
        while True:
            text = fetch()
            out.write("\x1b[H\x1b[2J" + text + "\n")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        out.write("\n")
