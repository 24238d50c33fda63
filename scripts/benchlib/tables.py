"""The printed tables: issue 21's side by side (ratio = netmount ÷ baseline), and the old rows."""

from __future__ import annotations

from .results import Results, Row, table

I21 = [
    Row("loopback (nginx CDN): cold `cat` of the 448 MB shard", "lo cold cat MB/s", "lo curl file MB/s",
        "`curl` 1 conn → file", "MB/s", "≥ 0.9×"),
    Row("", "lo cold cat MB/s", "lo curl null MB/s", "`curl` 1 conn → /dev/null", "MB/s"),
    Row("", "lo cold cat MB/s", "lo aria2c x16 MB/s", "`aria2c -x16`", "MB/s"),
    Row("loopback: warm `cat` (disk cache, page cache dropped)", "lo warm cat MB/s", "local cat MB/s",
        "`cat` local copy", "MB/s", "≥ 0.8×"),
    Row("loopback: warm `dd bs=4M`", "lo warm dd MB/s", "local dd MB/s", "`dd` local copy", "MB/s"),
    Row("peer rclone `--vfs-cache-mode full`, cold `cat`", "lo cold cat MB/s", "rclone cold cat MB/s",
        "rclone", "MB/s", "> 1×"),
    Row("peer rclone, warm `cat`", "lo warm cat MB/s", "rclone warm cat MB/s", "rclone", "MB/s", "> 1×"),
    Row("peer httpdirfs `--cache`, cold `cat`", "lo cold cat MB/s", "httpdirfs cold cat MB/s", "httpdirfs", "MB/s"),
    Row("peer httpdirfs, warm `cat`", "lo warm cat MB/s", "httpdirfs warm cat MB/s", "httpdirfs", "MB/s"),
    Row("WAN (40 ms, 25 MB/s per connection): cold `cat`", "wan cold cat MB/s", "wan aria2c x16 MB/s",
        "`aria2c -x16`", "MB/s", "≥ 0.9×"),
    Row("", "wan cold cat MB/s", "wan curl file MB/s", "`curl` 1 conn → file", "MB/s"),
    Row("WAN, 1.5 GB model, mount + load (mmap), cold", "big cold mmap s", "big snapshot+load mmap s",
        "`snapshot_download` + load", "s", "≤ 0.7×"),
    Row("WAN, 1.5 GB model, mount + load (`disable_mmap`), cold", "big cold nommap s",
        "big snapshot+load nommap s", "`snapshot_download` + load", "s", "≤ 0.7×"),
    Row("1.5 GB model, warm load (mmap)", "big warm mmap s", "big local mmap s", "local load", "s", "≤ 1.1×"),
    Row("1.5 GB model, warm load (`disable_mmap`)", "big warm nommap s", "big local nommap s", "local load", "s",
        "≤ 1.1×"),
    Row("`fio` warm, 1 MiB sequential", "fio seq MB/s", "fio local seq MB/s", "local file", "MB/s", "≥ 0.8×"),
    Row("`fio` warm, 4 KiB random, 4 jobs", "fio rand IOPS", "fio local rand IOPS", "local file", "IOPS", "≥ 0.3×"),
    Row("", "fio rand lat µs", "fio local rand lat µs", "local file", "µs mean latency"),
    Row("daemon peak RSS, cold 1.5 GB load (mmap)", "big cold mmap RSS MiB", "", "", "MiB", "≤ 300 MiB"),
    Row("daemon peak RSS, cold 1.5 GB load (`disable_mmap`)", "big cold nommap RSS MiB", "", "", "MiB", "≤ 300 MiB"),
]

CPU = [  # daemon CPU seconds per 10^9 bytes read (peers: their process)
    ("loopback cold `cat`", "lo cold cat CPU s/GB"), ("loopback warm `cat`", "lo warm cat CPU s/GB"),
    ("loopback warm `dd`", "lo warm dd CPU s/GB"), ("WAN cold `cat`", "wan cold cat CPU s/GB"),
    ("1.5 GB cold load, mmap", "big cold mmap CPU s/GB"),
    ("1.5 GB cold load, disable_mmap", "big cold nommap CPU s/GB"),
    ("1.5 GB warm load, mmap", "big warm mmap CPU s/GB"),
    ("1.5 GB warm load, disable_mmap", "big warm nommap CPU s/GB"),
    ("rclone cold / warm `cat`", "rclone cold cat CPU s/GB", "rclone warm cat CPU s/GB"),
    ("httpdirfs cold / warm `cat`", "httpdirfs cold cat CPU s/GB", "httpdirfs warm cat CPU s/GB"),
]


def i21_table(res: Results) -> list[str]:
    lines = table(I21, res)
    cpu = [f"| {title} | " + " / ".join(f"{res.med(k):.2f}" for k in keys) + " |"
           for title, *keys in CPU if keys[0] in res]
    if "fio rand CPU µs/op" in res:
        cpu.append(f"| fio 4 KiB random: daemon CPU per read | {res.med('fio rand CPU µs/op'):.0f} µs |")
    if cpu:
        lines += ["", "| CPU seconds per GB read | s/GB |", "|---|---|", *cpu]
    if "big snapshot_download s" in res:
        lines.append(f"\n`snapshot_download` alone (WAN, 1.5 GB): {res.med('big snapshot_download s'):.2f} s")
    if "big cold mmap fetched/size" in res:
        lines.append("\ncold 1.5 GB load, bytes fetched / safetensors bytes: "
                     f"mmap {res.med('big cold mmap fetched/size'):.3f}, "
                     f"disable_mmap {res.med('big cold nommap fetched/size'):.3f}")
    return lines


def legacy_table(res: Results, peers: list[str]) -> list[str]:
    m = res.med
    ratio = lambda a, b: f"{m(a) / m(b):.2f}x" if a in res and b in res else "-"  # noqa: E731
    rows = [("cold: mount + from_pretrained + touch", "netmount cold", "snapshot+load", "<= 0.8x"),
            ("warm: fresh mount (not timed), disk cache", "netmount warm", "local", "<= 1.2x"),
            ("hot: same mount again", "netmount hot", "local", "<= 1.0x"),
            ("cat one shard vs 16-conn download", "cat via netmount", "16-conn download", "<= 1.25x time")]
    out = ["| scenario | netmount (s) | baseline (s) | ratio | target |", "|---|---|---|---|---|"]
    out += [f"| {t} | {m(a):.2f} | {b}: {m(b):.2f} | {ratio(a, b)} | {tgt} |" for t, a, b, tgt in rows if a in res]
    for pattern, title in [("middle", "middle tensor by name, every shard"),
                           ("median", "median-size tensor, every shard"),
                           ("bigsmall", "largest tensor of one shard, then smallest of every other"),
                           ("random10", "10 random tensors across shards")]:
        if f"partial {pattern}" in res:
            out.append(f"| partial: {title} | amplification {m(f'partial {pattern}'):.3f} "
                       f"| fetched / (tensors + headers) | | <= 1.25 |")
    if "deepseek expert/shard" in res:
        out.append(f"| DeepSeek-V3 (synthetic): one routed expert from each of 10 shards | amplification "
                   f"{m('deepseek expert/shard'):.3f} ({m('deepseek seconds'):.1f} s) "
                   f"| fetched / (experts + headers) | | <= 1.25 |")
    out += [f"| peer {k}: cold load | {m('netmount cold'):.2f} | {k}: {m(k + ' cold'):.2f} "
            f"| {ratio('netmount cold', k + ' cold')} | < 1.0x |" for k in peers if f"{k} cold" in res]
    for title, key in [("snapshot_download alone", "snapshot_download"),
                       ("`netmount mount` (CLI, warm cache)", "netmount mount"),
                       ("cold bytes fetched / repo size", "cold fetched/total"),
                       ("cat: daemon CPU (s)", "cat daemon CPU s"),
                       ("cat: largest FUSE read (KiB)", "cat largest FUSE read KiB"),
                       ("daemon peak RSS (MiB)", "daemon peak RSS MiB")]:
        if key in res:
            out.append(f"| {title} | {m(key):.3f} | | | |")
    return out if len(out) > 2 else []

