"""``netmount demo``: the whole story on one machine, with no internet.

1. Build (once, cached under ``<cache-dir>/models``) a tiny DeepSeek-V3 checkpoint with
   transformers: sharded, routed experts, and an extra shard holding the multi-token-prediction
   layer ``model.layers.N`` that transformers lists in the index but never loads.
2. Serve it as ``deepseek-ai/DeepSeek-V3-tiny`` from the project's Hub-compatible test server,
   started as a **separate process**: transformers reads the mount through mmap, and a page
   fault holds the GIL of the faulting process while the kernel waits for FUSE — a hub running
   as a thread of this process could then never answer, and the load would deadlock.
3. Mount it with a fresh, empty block cache (so the numbers are real, not a warm cache), load
   it with stock ``AutoModelForCausalLM.from_pretrained(mountpoint)``, generate a few tokens.
4. Print what crossed the network from the mount's ``/.netmount/stats.json``: bytes fetched vs
   repo size, per-file coverage, and whether the MTP shard was fetched no further than the
   block(s) holding its safetensors header (the header length is read from the source file).
   If that is not true the demo says so and exits 1: a demo must not claim what did not happen.

Blocks are 128 KiB here, not the default 1 MiB: the demo's shards are a few hundred KiB,
and with 1 MiB blocks reading the MTP shard's header would fetch the whole (0.9 MiB) file.
128 KiB is also the size of the kernel's read around an mmap page fault (``max_readahead``
in fs.py), so the header read is exactly one block.

Everything lives under ``<cache-dir>/demo/`` (``hub/`` the served root, ``mnt/`` the
mountpoint, ``cache/`` the per-run block cache and its logs, ``state.json`` the hub's pid).
A lock file keeps two demos on one cache dir apart, and each run first removes whatever an
earlier run left (a ``--keep`` run, or one that was killed), so running it twice is safe.
Ctrl-C and SIGTERM unmount and stop the hub; they are held back for the second or so it
takes to start a process or a mount, so nothing can start behind the cleanup's back.
``--keep`` leaves the mount and the hub running; ``netmount demo --stop`` removes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from netmount.core import errors, procs, settings
from netmount.core.safetensors import header_size, read_header
from netmount.core.units import format_size
from netmount.mounting import mounts

REPO_ID = "deepseek-ai/DeepSeek-V3-tiny"
BLOCK_SIZE = 128 << 10
PROMPT = "The quick brown fox"
NEW_TOKENS = 8
HUB_START_TIMEOUT = 60.0
BAR_WIDTH = 20


class DemoError(errors.NetmountError):
    pass


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="serve a tiny DeepSeek-V3 locally, mount it, load it with transformers, "
                     "and show what crossed the network (no internet needed)")
    p.add_argument("--keep", action="store_true",
                   help="leave it mounted (and the local hub running) to explore; "
                        "remove with: netmount demo --stop")
    p.add_argument("--stop", action="store_true",
                   help="unmount and stop what an earlier `netmount demo --keep` left running")
    p.add_argument("--cache-dir",
                   help="where the built model and the demo's files go "
                        "(default: $NETMOUNT_CACHE_DIR or ~/.cache/netmount)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    if args.stop:
        if args.keep:
            raise errors.BadInput("--stop and --keep do not go together")
        stopped = stop_demo(args.cache_dir)
        say("stopped the kept demo" if stopped else "no demo was running")
        return 0
    result = run_demo(args.cache_dir, keep=args.keep)
    return 0 if result.mtp_ok else 1


def say(msg: str) -> None:
    try:
        print(f"[demo] {msg}", file=sys.stderr, flush=True)
    except OSError:  # stderr closed (`netmount demo 2>&1 | head`): the cleanup must still run
        pass


# --------------------------------------------------------------------------- the model


@dataclass
class MtpShard:
    path: str  # relative to the repo
    layer: int
    header_len: int  # 8 + N: everything a reader must fetch to know the tensors
    tensors: int
    size: int


def find_mtp_shard(model_dir: Path) -> MtpShard:
    """The shard holding layer ``num_hidden_layers`` (DeepSeek's MTP layer), from the source files."""
    config = json.loads((model_dir / "config.json").read_text())
    layer = int(config["num_hidden_layers"])
    weight_map = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    prefix = f"model.layers.{layer}."
    shards = {f for k, f in weight_map.items() if k.startswith(prefix)}
    if len(shards) != 1:
        raise DemoError(f"expected the MTP layer {layer} in one shard, found {sorted(shards)}")
    name = shards.pop()
    with open(model_dir / name, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        tensors = read_header(lambda start, end: os.pread(fh.fileno(), end - start, start), size)
        header_len = header_size(os.pread(fh.fileno(), 8, 0), size)
    return MtpShard(name, layer, header_len, len(tensors), size)


def build_model(cache_dir: Path) -> Path:
    from netmount.dev.testmodels import cached_model

    _quiet_transformers()
    return cached_model("tiny-deepseek-v3", cache_root=cache_dir / "models")


def _quiet_transformers() -> None:
    """No log tables, warnings or progress bars from transformers/huggingface_hub on our output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with contextlib.suppress(Exception):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


# --------------------------------------------------------------------------- signals


class _Interrupted(BaseException):
    """SIGINT or SIGTERM while the demo runs; ``run_demo`` turns it into KeyboardInterrupt
    once it has cleaned up.  Not KeyboardInterrupt itself: raised while the main thread runs
    code compiled from a string (transformers' lazy imports ``exec`` them), a
    KeyboardInterrupt leaving that code marks the interpreter, and ``python -m`` then ends
    by SIGINT (exit -2) however the exception was caught later.  (BaseException: library
    code that catches Exception must not swallow it.)"""


class _Signals:
    """While the demo runs, SIGINT and SIGTERM raise ``_Interrupted`` (so ``finally`` cleans
    up), and ``held()`` delays both for the short spans where a process or mount is being
    started."""

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self._pending: list[int] = []
        self._holding = False
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if self._holding:
            self._pending.append(signum)
            return
        raise _Interrupted

    def __enter__(self) -> "_Signals":
        if self.active:
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    @contextlib.contextmanager
    def held(self):
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending:
            self._pending.clear()
            raise _Interrupted


def _die_with_parent() -> None:  # preexec_fn: the hub gets SIGTERM if the demo dies, even by SIGKILL
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# --------------------------------------------------------------------------- the demo's files


@dataclass
class DemoPaths:
    base: Path

    @property
    def hub_root(self) -> Path:
        return self.base / "hub"

    @property
    def mountpoint(self) -> Path:
        return self.base / "mnt"

    @property
    def cache(self) -> Path:
        return self.base / "cache"

    @property
    def state(self) -> Path:
        return self.base / "state.json"

    @property
    def hub_url_file(self) -> Path:
        return self.base / "hub.url"

    @property
    def hub_log(self) -> Path:
        return self.base / "hub.log"


@contextlib.contextmanager
def _locked(paths: DemoPaths):
    paths.base.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(paths.base / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(f"another `netmount demo` is running with {paths.base}") from None
        yield


def _is_our_hub(pid: int, paths: DemoPaths) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"netmount.dev.testhub" in args and str(paths.hub_root).encode() in args


def _stop_hub(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop a hub left by an earlier run (not our child: its exit is reaped by init)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if procs.wait_exit(pid, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _clean(paths: DemoPaths) -> bool:
    """Remove what an earlier run left: its mount, its hub, its files. True if anything ran."""
    found = False
    p = str(paths.mountpoint)
    if mounts.find_mount(p) or mounts.is_dead(p):
        found = True
        mounts.unmount_retrying(p)
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        state = {}
    pid = state.get("hub_pid")
    if isinstance(pid, int) and _is_our_hub(pid, paths):
        found = True
        _stop_pid(pid)
    for f in (paths.state, paths.hub_url_file):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    import shutil

    shutil.rmtree(paths.hub_root, ignore_errors=True)
    shutil.rmtree(paths.cache, ignore_errors=True)
    with contextlib.suppress(OSError):
        paths.mountpoint.rmdir()
    return found


def stop_demo(cache_dir: str | os.PathLike | None = None) -> bool:
    """Unmount and stop what ``run_demo(keep=True)`` left; True if something was running."""
    paths = DemoPaths(settings.cache_dir(os.fspath(cache_dir) if cache_dir else None) / "demo")
    with _locked(paths):
        return _clean(paths)


# --------------------------------------------------------------------------- the hub


def _start_hub(paths: DemoPaths, sig: _Signals, detach: bool) -> tuple[subprocess.Popen, str]:
    args = ("--root", str(paths.hub_root), "--host", "127.0.0.1", "--port", "0")
    with sig.held(), open(paths.hub_url_file, "wb") as out, open(paths.hub_log, "ab") as log:
        proc = procs.spawn_python("netmount.dev.testhub", *args, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=log, start_new_session=True,
                                  preexec_fn=None if detach else _die_with_parent)
        paths.state.write_text(json.dumps({"hub_pid": proc.pid}))
    deadline = time.monotonic() + HUB_START_TIMEOUT
    while time.monotonic() < deadline:
        text = paths.hub_url_file.read_text(errors="replace")
        if "\n" in text:
            url = text.splitlines()[0].strip()
            if not url.startswith("http://"):
                raise DemoError(f"test hub printed {url!r} instead of its URL (log: {paths.hub_log})")
            return proc, url
        if proc.poll() is not None:
            tail = paths.hub_log.read_text(errors="replace").strip().splitlines()[-1:]
            raise DemoError(f"test hub exited with {proc.returncode}: "
                            f"{tail[0] if tail else 'no output'} (log: {paths.hub_log})")
        time.sleep(0.05)
    raise DemoError(f"test hub did not print its URL in {HUB_START_TIMEOUT:.0f}s (log: {paths.hub_log})")


# --------------------------------------------------------------------------- transformers


@dataclass
class Generation:
    model_class: str
    parameters: int
    prompt: str
    text: str
    load_s: float
    generate_s: float


def load_and_generate(path: str, prompt: str = PROMPT, new_tokens: int = NEW_TOKENS) -> Generation:
    """Stock transformers on the mount: tokenizer, ``from_pretrained``, greedy ``generate``.

    The model is freed before returning: its tensors may be views into mmaps of the mount,
    which would keep the mount busy.
    """
    _quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    load_s = time.monotonic() - t0
    try:
        inputs = tokenizer(prompt, return_tensors="pt")
        t1 = time.monotonic()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        generate_s = time.monotonic() - t1
        text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return Generation(type(model).__name__, sum(p.numel() for p in model.parameters()),
                          prompt, text, load_s, generate_s)
    finally:
        del model
        gc.collect()


# --------------------------------------------------------------------------- the report


@dataclass
class DemoResult:
    stats: dict
    mtp: MtpShard
    generation: Generation
    mountpoint: str
    hub_url: str
    mtp_ok: bool
    kept: bool
    cache_dir: Path
    hub_pid: int | None = None
    timings: dict = field(default_factory=dict)


def _bar(part: int, whole: int) -> str:
    frac = part / whole if whole else 1.0
    filled = round(frac * BAR_WIDTH)
    if part and not filled:
        filled = 1
    if part < whole and filled == BAR_WIDTH:
        filled = BAR_WIDTH - 1
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + f"] {100 * frac:3.0f}%"


def mtp_verdict(stats: dict, mtp: MtpShard) -> tuple[bool, str]:
    """Was the MTP shard fetched no further than the block(s) that hold its header?"""
    entry = next((f for f in stats.get("files", []) if f["path"] == mtp.path), None)
    if entry is None:
        return False, f"MTP shard {mtp.path}: not in the mount's stats"
    block = int(stats.get("block_size") or BLOCK_SIZE)
    limit = min(-(-mtp.header_len // block) * block, mtp.size)
    fetched = int(entry.get("fetched_bytes", 0))
    what = (f"MTP shard {mtp.path} (layer {mtp.layer}, {mtp.tensors} tensors, "
            f"{format_size(mtp.size)}; transformers does not load it)")
    if fetched <= limit < mtp.size:
        blocks = -(-limit // block)
        where = "the first block" if blocks == 1 else f"the first {blocks} blocks"
        return True, (f"{what}: fetched no further than its header: {format_size(fetched)} fetched, "
                      f"within {where} ({format_size(limit)}) that its {format_size(mtp.header_len)} "
                      f"header needs; the other {format_size(mtp.size - fetched)} never crossed the network")
    if limit >= mtp.size:
        return False, (f"{what}: its {format_size(mtp.header_len)} header needs blocks covering the "
                       f"whole file ({format_size(block)} blocks), so this run cannot show a lazy read")
    return False, (f"{what}: fetched {format_size(fetched)}, MORE than the "
                   f"{format_size(limit)} holding its {format_size(mtp.header_len)} header")


def report(result: DemoResult, out=None) -> None:
    out = out or sys.stdout
    s, g, mtp = result.stats, result.generation, result.mtp
    w = lambda line="": print(line, file=out)  # noqa: E731
    w(f"{REPO_ID}: {len(s['files'])} files, {format_size(s['total_bytes'])}, served by {result.hub_url}, "
      f"mounted on {result.mountpoint}")
    w(f"loaded {g.model_class} ({g.parameters:,} parameters) with stock transformers from the mount "
      f"in {g.load_s:.1f}s")
    w(f"generated {NEW_TOKENS} tokens in {g.generate_s:.1f}s: {g.prompt!r} -> {g.text!r} "
      f"(random weights: gibberish is the expected answer)")
    w()
    fetched, total = s["bytes_fetched"], s["total_bytes"]
    w("What crossed the network (from .netmount/stats.json):")
    extra = []
    if "requests" in s:
        extra.append(f"{s['requests']} HTTP requests")
    amp = s.get("amplification")
    if isinstance(amp, (int, float)) and not isinstance(amp, bool):  # fetched / read, when published
        extra.append(f"amplification {amp:.2f}x")
    extra.append(f"{format_size(int(s.get('block_size') or BLOCK_SIZE))} blocks")
    w(f"  fetched {fetched:,} of {total:,} bytes ({format_size(fetched)} of {format_size(total)}, "
      f"{100 * fetched / total:.0f}%); {', '.join(extra)}")
    width = max(len(f["path"]) for f in s["files"])
    w(f"  {'file':<{width}}  {'size':>9}  {'fetched':>9}  coverage")
    for f in s["files"]:
        note = "  <- MTP layer, unused" if f["path"] == mtp.path else ""
        w(f"  {f['path']:<{width}}  {format_size(f['size']):>9}  {format_size(f['fetched_bytes']):>9}  "
          f"{_bar(f['fetched_bytes'], f['size'])}{note}")
    w()
    w(mtp_verdict(s, mtp)[1])
    t = result.timings
    if t:
        w()
        w("Time: " + ", ".join(f"{k} {t[k]:.1f}s" for k in ("build", "hub", "mount", "load", "generate",
                                                             "cleanup") if k in t))
    if result.kept:
        w()
        w(f"Kept: {result.mountpoint} stays mounted, served by {result.hub_url}. Try:")
        w(f"  ls -l {result.mountpoint}; cat {result.mountpoint}/.netmount/stats.json")
        flag = "" if result.cache_dir == settings.cache_dir() else f" --cache-dir {result.cache_dir}"
        w(f"When done:  netmount demo --stop{flag}")
        w(f"  (the same by hand: netmount unmount {result.mountpoint}; kill {result.hub_pid})")


# --------------------------------------------------------------------------- main


def run_demo(cache_dir: str | os.PathLike | None = None, *, keep: bool = False, out=None) -> DemoResult:
    """Run the demo (see the module docstring); prints the report on ``out`` (stdout).
    Interrupted (SIGINT, SIGTERM): cleans up, then raises KeyboardInterrupt (exit 130)."""
    try:
        return _run_demo(cache_dir, keep, out)
    except _Interrupted:
        raise KeyboardInterrupt from None  # here, out of every exec'd frame (see _Interrupted)


@dataclass
class _Started:
    """What a run has started so far, for its clean-up (filled in as each part starts)."""

    hub: subprocess.Popen | None = None
    url: str = ""
    mount: object = None  # lifecycle.Mount


def _run_demo(cache_dir: str | os.PathLike | None, keep: bool, out) -> DemoResult:
    from netmount.mounting.stats import read_stats

    root = settings.cache_dir(os.fspath(cache_dir) if cache_dir else None).expanduser().absolute()
    paths = DemoPaths(root / "demo")
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    with _Signals() as sig, _locked(paths):
        if _clean(paths):
            say("removed what an earlier demo left running")
        started = _Started()
        ok = False
        try:
            mtp = _start(root, paths, sig, keep, timings, started)
            mount = started.mount
            say("loading with stock transformers: AutoModelForCausalLM.from_pretrained(mountpoint) ...")
            gen = load_and_generate(mount.path)
            timings["load"], timings["generate"] = gen.load_s, gen.generate_s
            stats = read_stats(mount.path, settled=True)  # final: nothing still fetched or stored
            mtp_ok, _ = mtp_verdict(stats, mtp)
            result = DemoResult(stats, mtp, gen, mount.path, started.url, mtp_ok, keep, root,
                                started.hub.pid, timings)
            if not keep:
                say("unmounting and stopping the test hub")
                t = time.monotonic()
                _stop(paths, started)
                timings["cleanup"] = time.monotonic() - t
            timings["total"] = time.monotonic() - t_start
            report(result, out)
            say(f"done in {timings['total']:.1f}s")
            ok = True
            if not mtp_ok:
                say("the MTP shard was fetched beyond its header: that is a bug (see the line above)")
            return result
        finally:
            if not (ok and keep):
                if not ok:
                    say("cleaning up: unmounting and stopping the test hub")
                with sig.held():
                    _stop(paths, started)
                    if ok:  # keep the logs of a failed run for the user to read
                        _clean(paths)


def _start(root: Path, paths: DemoPaths, sig: _Signals, keep: bool, timings: dict,
           started: _Started) -> MtpShard:
    """Build (once) the model, serve it, mount it; each part noted in ``started`` as soon
    as it runs (an interrupt is held back while a process or the mount starts)."""
    from netmount.mounting import lifecycle

    t = time.monotonic()
    say(f"tiny DeepSeek-V3 checkpoint: building it once, cached in {root / 'models'} ...")
    model_dir = build_model(root)
    mtp = find_mtp_shard(model_dir)
    timings["build"] = time.monotonic() - t
    say(f"checkpoint ready in {timings['build']:.1f}s: {model_dir}")

    (paths.hub_root / REPO_ID).parent.mkdir(parents=True)
    os.symlink(model_dir, paths.hub_root / REPO_ID)
    t = time.monotonic()
    started.hub, started.url = _start_hub(paths, sig, detach=keep)
    timings["hub"] = time.monotonic() - t
    say(f"test hub serving {REPO_ID} at {started.url} (pid {started.hub.pid}, log {paths.hub_log})")

    paths.mountpoint.mkdir(exist_ok=True)
    t = time.monotonic()
    with sig.held():
        started.mount = lifecycle.mount(REPO_ID, paths.mountpoint, endpoint=started.url,
                                        cache_dir=paths.cache, block_size=BLOCK_SIZE, cache_size="1G")
    timings["mount"] = time.monotonic() - t
    say(f"mounted on {started.mount.path} with an empty block cache in {timings['mount']:.1f}s "
        f"(daemon log {started.mount.log_file})")
    return mtp


def _stop(paths: DemoPaths, started: _Started) -> None:
    """Unmount (waiting for the daemon to exit) and stop the hub, whatever of them started."""
    mounts.unmount_retrying(str(paths.mountpoint))
    mount = started.mount
    if mount is not None and mount.process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            mount.process.wait(timeout=30)
    if started.hub is not None:
        _stop_hub(started.hub)
