"""Mount and unmount, as library functions the CLI and Python users share.

``mount`` checks everything it can (mountpoint, FUSE, the repo and revision) *before* it
hands a daemon its configuration, so bad input costs one line and leaves nothing mounted
(the daemon, started first so that its imports overlap these checks, is killed); it
returns only once the kernel mount is live.  Every path it hands the daemon (mountpoint, cache
dir, log file) is absolute: the daemon runs in ``/``, where a relative path means
something else.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from netmount.core import errors, procs, settings
from netmount.core.units import parse_size
from netmount.mounting import mounts
from netmount.mounting.daemon import DaemonConfig
from netmount.mounting.libfuse import APT_FUSE, libfuse3_path
from netmount.remote import hub

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # seconds a stopped daemon may take to fail its reads and unmount (and to exit)


class Mount:
    """A live mount; a context manager that unmounts (and removes a temp mountpoint) on exit.
    ``snapshot``: the repo mounted (None for an hf-cache mount: the whole Hub)."""

    def __init__(self, path: str, snapshot: hub.Snapshot | None, process: subprocess.Popen | None,
                 log_file: str, owns_dir: bool = False, view=None, pinned=()):
        self.path, self.snapshot, self.process, self.log_file = path, snapshot, process, log_file
        self.view = view  # the planned views.model.View of a view mount, else None
        self.pinned = list(pinned)  # an hf-cache mount's --repo snapshots (its snapshot is None)
        self._owns_dir = owns_dir

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc) -> None:
        self.unmount()

    def unmount(self) -> None:
        """Unmount; if programs still hold files open (a model's tensors are views into
        mmaps of them), detach lazily: the kernel finishes the unmount when they let go."""
        mounts.unmount_retrying(self.path)
        if self.process is not None:
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill(self.process)
        if self._owns_dir:
            shutil.rmtree(self.path, ignore_errors=True)
            self._owns_dir = False


def check_block_size(value: int | str) -> int:
    try:
        size = parse_size(value) if isinstance(value, str) else int(value)
    except ValueError as exc:
        raise errors.BadInput(f"invalid --block-size: {exc}") from None
    if size < (64 << 10) or size > (64 << 20) or size & (size - 1):
        raise errors.BadInput(f"invalid --block-size {value!r}: a power of two from 64K to 64M")
    return size


def check_cache_size(value: int | str) -> int:
    try:
        size = parse_size(value) if isinstance(value, str) else int(value)
    except ValueError as exc:
        raise errors.BadInput(f"invalid --cache-size: {exc}") from None
    if size < (1 << 20):
        raise errors.BadInput(f"invalid --cache-size {value!r}: at least 1M")
    return size


FUSE_DEVICE = "/dev/fuse"
_CONTAINER_HINT = "in a container run with --device /dev/fuse --cap-add SYS_ADMIN"


def check_fuse() -> None:
    if not os.path.exists(FUSE_DEVICE):
        raise errors.FuseUnavailable(
            f"FUSE is not available: {FUSE_DEVICE} is missing ({APT_FUSE}; {_CONTAINER_HINT})")
    try:
        os.close(os.open(FUSE_DEVICE, os.O_RDWR))
    except OSError as exc:
        raise errors.FuseUnavailable(
            f"FUSE is not available: cannot open {FUSE_DEVICE} ({exc.strerror}; {_CONTAINER_HINT})"
        ) from None
    if mounts.fusermount() is None:
        raise errors.FuseUnavailable(f"fusermount not found: install fuse3 ({APT_FUSE})")
    libfuse3_path()


def check_readahead(value: int | str | None) -> int | None:
    """``--readahead KB``: a fixed kernel readahead for the mount; 0 leaves the kernel's (128 KiB);
    None (the default) switches it per open: large for a loader's files (readahead.py)."""
    if value is None:
        return None
    try:
        kb = int(value)
    except (TypeError, ValueError):
        raise errors.BadInput(f"invalid --readahead {value!r}: kibibytes, e.g. 1024") from None
    if kb < 0 or kb > settings.MAX_READAHEAD_KB:
        raise errors.BadInput(
            f"invalid --readahead {value!r}: 0 (the kernel's default) to {settings.MAX_READAHEAD_KB} KiB")
    return kb


def check_mountpoint(path: str) -> str:
    """An existing, empty directory that is not mounted; a dead netmount is cleaned first."""
    path = os.path.abspath(path)
    if mounts.is_dead(path):
        if not mounts.force_unmount(path, lazy=True):
            raise errors.MountpointError(
                f"{path}: a dead mount is in the way; run: fusermount -u {path}")
    if mounts.find_mount(path) or os.path.ismount(path):
        raise errors.MountpointError(f"{path} is already mounted (netmount unmount {path})")
    if not os.path.exists(path):
        raise errors.MountpointError(f"mountpoint {path} does not exist (mkdir -p {path})")
    if not os.path.isdir(path):
        raise errors.MountpointError(f"mountpoint {path} is not a directory")
    if os.listdir(path):
        raise errors.MountpointError(f"mountpoint {path} is not empty")
    return path


def mount(
    repo: str,
    mountpoint: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_size: int | str = settings.DEFAULT_CACHE_SIZE,
    block_size: int | str = settings.DEFAULT_BLOCK_SIZE,
    connections: int = settings.DEFAULT_CONNECTIONS,
    readahead: int | None = None,
    allow_other: bool = False,
    foreground: bool = False,
    debug: bool = False,
    cache_proxy: str | None = None,
    reshard: str | None = None,
    only: list[str] | tuple[str, ...] = (),
    experts: str | None = None,
    repo_type: str | None = None,
) -> Mount:
    """Mount ``repo`` (``[datasets/|spaces/]org/name[@rev]``; or ``org/name`` with
    ``repo_type="dataset"``, as huggingface_hub spells it) read-only at ``mountpoint``
    (a new temp dir if None).

    Returns once the mount is live (or, with ``foreground``, once it has been unmounted).
    ``token=False`` mounts anonymously; ``None`` looks up $HF_TOKEN / the token file.
    ``cache_proxy`` (else $NETMOUNT_CACHE_PROXY) sends file content requests through a
    ``netmount cache-proxy``; the origin stays the fallback.
    ``readahead`` (KiB) fixes the mount's kernel readahead when the daemon may (root); 0 keeps
    the kernel's 128 KiB; None (default) switches it: 1 MiB for files a loader opens, else 128 KiB.
    ``reshard`` (``"layer"``/``"expert"``), ``only`` (tensor-name globs) and ``experts``
    (``"0-31"``) mount a view of the checkpoint instead (``mounting/viewsetup.py``): its
    headers are read and the view planned here, before the daemon gets its configuration.
    Raises a ``netmount.core.errors.NetmountError`` subclass for every known failure.
    """
    return _with_daemon(foreground, _mount, dict(locals()))


def mount_hf_cache(mountpoint: str | os.PathLike | None = None, *, repos: list[str] | tuple[str, ...] = (),
                   refs_ttl: float | str | None = None, **options) -> Mount:
    """Mount the Hub at ``mountpoint`` (a new temp dir if None) as a read-only Hugging Face
    cache: ``HF_HUB_CACHE=<mountpoint> HF_HUB_OFFLINE=1`` then loads any repo by id, resolved
    on first use (``mounting/hfcache/``).  ``repos`` (``[datasets/|spaces/]org/name[@rev]``)
    are resolved here first — a missing one fails the mount — and listed from the start;
    ``refs_ttl`` (seconds, or ``"10m"``; default 600) is how long ``refs/<branch>`` is trusted.
    ``options``: ``mount``'s ``endpoint token cache_dir cache_size block_size connections
    readahead allow_other foreground debug cache_proxy``, with its defaults.  Returns once the
    mount is live; ``Mount.snapshot`` is None, ``Mount.pinned`` the repos' snapshots."""
    args = {"mountpoint": mountpoint, "repos": repos, "refs_ttl": refs_ttl, **options}
    return _with_daemon(options.get("foreground", False), _mount_hf_cache, args)


def _with_daemon(foreground: bool, work, args: dict) -> Mount:
    """``work(proc, **args)`` with a daemon started first (None: ``foreground``): its imports
    (~0.7 s of CPU) run on the other core while this process checks its input and asks the
    Hub; it waits for its configuration, killed if anything fails."""
    proc = None if foreground else start_daemon()
    try:
        from netmount.views.model import no_gc

        # cyclic GC off until the mount is live (huggingface_hub's imports: ~80 collections, ~0.09 s)
        with contextlib.nullcontext() if foreground else no_gc():
            return work(proc, **args)
    except BaseException:
        if proc is not None:
            _stop(proc)
        raise


def _mount(proc: subprocess.Popen | None, repo, mountpoint, *, revision, endpoint, token, cache_dir,
           cache_size, block_size, connections, readahead, allow_other, foreground, debug, cache_proxy,
           reshard, only, experts, repo_type) -> Mount:
    """``mount``'s work, with the daemon ``proc`` already started (None: ``foreground``)."""
    repo_id, rev, rtype = hub.parse_repo_spec(repo, revision, repo_type)
    options = _daemon_options(cache_size, block_size, connections, readahead, cache_proxy, allow_other, debug)
    spec = None
    if reshard is not None or only or experts is not None:
        from netmount.views.plan import make_spec

        spec = make_spec(reshard, only, experts)
    with _mountpoint(mountpoint) as (path, owns_dir):
        cdir, tok = _cache_dir(cache_dir), _token(token)
        snap = hub.resolve_snapshot(repo_id, rev, settings.endpoint(endpoint), tok, rtype)
        view, fetched = None, []
        if spec is not None:
            from netmount.mounting.viewsetup import build_view
            from netmount.views.model import view_to_bytes

            # seconds, for a big checkpoint
            view = build_view(snap, spec, tok, proxy=options["cache_proxy"], keep=fetched)
        config = DaemonConfig(snap, path, str(cdir), token=tok, log_file=_log_file(cdir, path),
                              view=view_to_bytes(view) if view is not None else None,
                              seed=[(f.path, offset, data) for f, offset, data in fetched], **options)
        return _launch(proc, config, Mount(path, snap, None, config.log_file, owns_dir, view), foreground)


def _mount_hf_cache(proc: subprocess.Popen | None, mountpoint, *, repos, refs_ttl, endpoint=None, token=None,
                    cache_dir=None, cache_size=settings.DEFAULT_CACHE_SIZE, block_size=settings.DEFAULT_BLOCK_SIZE,
                    connections=settings.DEFAULT_CONNECTIONS, readahead=None, allow_other=False, foreground=False,
                    debug=False, cache_proxy=None) -> Mount:
    """``mount_hf_cache``'s work, with the daemon ``proc`` already started (None: ``foreground``)."""
    from netmount.mounting.hfcache.options import check_hf_cache, daemon_spec

    wanted = check_hf_cache(repos=repos, refs_ttl=refs_ttl)
    options = _daemon_options(cache_size, block_size, connections, readahead, cache_proxy, allow_other, debug)
    with _mountpoint(mountpoint) as (path, owns_dir):
        cdir, tok, url = _cache_dir(cache_dir), _token(token), settings.endpoint(endpoint)
        pinned = [(rev, hub.resolve_snapshot(key.repo_id, rev, url, tok, key.repo_type)) for key, rev in wanted.repos]
        config = DaemonConfig(None, path, str(cdir), token=tok, log_file=_log_file(cdir, path),
                              hf_cache=daemon_spec(wanted, url, pinned), **options)
        mounted = Mount(path, None, None, config.log_file, owns_dir, pinned=[snap for _rev, snap in pinned])
        return _launch(proc, config, mounted, foreground)


def _daemon_options(cache_size, block_size, connections, readahead, cache_proxy, allow_other, debug) -> dict:
    """The options every mount's daemon takes, checked (``DaemonConfig``'s names)."""
    bsize, csize = check_block_size(block_size), check_cache_size(cache_size)
    if connections < 1 or connections > 64:
        raise errors.BadInput("invalid --connections: 1 to 64")
    return {"block_size": bsize, "cache_size": csize, "connections": connections,
            "readahead_kb": check_readahead(readahead), "cache_proxy": settings.cache_proxy(cache_proxy),
            "allow_other": allow_other, "debug": debug}


@contextlib.contextmanager
def _mountpoint(mountpoint):
    """(the mountpoint, whether it was made here): FUSE checked, the mountpoint checked or a
    temporary one made — and removed if the mount fails."""
    check_fuse()
    owns_dir = mountpoint is None
    path = tempfile.mkdtemp(prefix="netmount-") if owns_dir else check_mountpoint(os.fspath(mountpoint))
    try:
        yield path, owns_dir
    except BaseException:
        if owns_dir:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _cache_dir(cache_dir) -> Path:
    """Absolute before anything uses it: the daemon runs with cwd "/" (see start_daemon)."""
    return Path(os.path.abspath(settings.cache_dir(os.fspath(cache_dir) if cache_dir else None)))


def _token(token: str | bool | None) -> str | None:
    return None if token is False else settings.token(token or None)


def _launch(proc: subprocess.Popen | None, config: DaemonConfig, mounted: Mount, foreground: bool) -> Mount:
    """Hand ``config`` to the daemon ``proc`` and return ``mounted`` once it is live; or, in the
    foreground (no ``proc``), serve it here until it is unmounted."""
    if foreground:
        from netmount.mounting.daemon import run, setup_logging

        setup_logging("" if config.debug else config.log_file, config.debug)
        run(config)
        return mounted
    mounted.process = spawn_daemon(config, proc)
    return mounted


def _log_file(cdir: Path, mountpoint: str) -> str:
    """The daemon's log, in ``<cache dir>/logs``.  A cache dir that cannot be created or
    written (read-only, full, a file in the way) is not fatal: the daemon then caches in
    memory (see daemon.py) and logs to a private folder under the temp dir."""
    name = f"{_slug(mountpoint)}.log"
    try:
        cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (cdir / "logs").mkdir(exist_ok=True, mode=0o700)
        with open(cdir / "logs" / name, "ab"):
            pass
        return str(cdir / "logs" / name)
    except OSError:
        fallback = Path(tempfile.gettempdir()) / f"netmount-logs-{os.getuid()}"
        fallback.mkdir(exist_ok=True, mode=0o700)
        if fallback.is_symlink() or fallback.stat().st_uid != os.getuid():
            raise errors.MountpointError(
                f"cache dir {cdir} is unusable and {fallback} is not ours; set --cache-dir") from None
        return str(fallback / name)


# The daemon gets the token on stdin: it must not sit in its environment either, where
# /proc/<pid>/environ shows it for the daemon's whole life.  Nor does offline mode reach it: an
# hf-cache daemon asks the Hub (through huggingface_hub) for the programs that read offline.
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
_DAEMON_DROPS = (*_SECRET_ENV, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def start_daemon() -> subprocess.Popen:
    """Start ``python -m netmount.mounting.daemon``; it imports what it needs, then waits for
    its configuration on stdin.  Its stderr goes to the log file the configuration names
    (daemon.main): which file that is, is not known yet."""
    return procs.spawn_python("netmount.mounting.daemon", drop_env=_DAEMON_DROPS,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL, and reap it (bounded: a process in uninterruptible sleep may take a while)."""
    proc.kill()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass


def _stop(proc: subprocess.Popen) -> None:
    """Kill a daemon that will not mount, and close our ends of its pipes."""
    _kill(proc)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None and not pipe.closed:
            try:
                pipe.close()
            except OSError:  # BrokenPipe flushing a config it never read
                pass


def spawn_daemon(config: DaemonConfig, proc: subprocess.Popen | None = None) -> subprocess.Popen:
    """Hand ``config`` to a daemon (``proc`` from ``start_daemon``, else a new one); return
    once it is mounted."""
    proc = proc if proc is not None else start_daemon()
    try:
        proc.stdin.write(config.to_bytes())
        proc.stdin.close()
        line = _read_line(proc, READY_TIMEOUT)
    except BaseException:  # Ctrl-C while waiting: no daemon may go on to mount
        _stop(proc)
        if mounts.find_mount(config.mountpoint):
            mounts.force_unmount(config.mountpoint, lazy=True)
        raise
    if line == "ready":
        proc.stdout.close()
        return proc
    _stop(proc)
    if mounts.find_mount(config.mountpoint) or mounts.is_dead(config.mountpoint):
        mounts.force_unmount(config.mountpoint, lazy=True)
    why = line[len("error: "):] if line.startswith("error: ") else _last_fuse_line(config.log_file)
    raise errors.MountpointError(
        f"mount of {config.mountpoint} failed: {why or 'the daemon exited'} (log: {config.log_file})")


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace").strip()


def _last_fuse_line(log_file: str) -> str:
    try:
        lines = Path(log_file).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines[-50:]):
        if line.startswith(("fuse:", "fusermount")):
            return line
    return ""


def _slug(path: str) -> str:
    return path.strip("/").replace("/", "_") or "root"


def unmount(mountpoint: str | os.PathLike, *, stop_daemon: bool = False) -> None:
    """Unmount ``mountpoint``; ``MountpointError`` if it is busy (a program has a file
    open).  With ``stop_daemon`` (``netmount unmount``) a busy mount's daemon is stopped
    instead (SIGTERM): it fails the reads in flight with EIO — a read waiting on a
    stalled server included — and unmounts as it exits, so programs still using the
    mount then get errors.  Not the default for Python callers: a notebook's model may
    be mmapped views of the files (``Mount.unmount`` detaches lazily for them)."""
    path = os.path.abspath(os.fspath(mountpoint))
    if mounts.find_mount(path) is None and not mounts.is_dead(path):
        raise errors.NotAMount(f"{path} is not a netmount mount")
    if mounts.force_unmount(path):
        return
    if stop_daemon and _stop_daemon(path):
        return
    raise errors.MountpointError(
        f"could not unmount {path} (busy? close programs using it, or: fusermount -uz {path})")


def _stop_daemon(path: str) -> bool:
    """SIGTERM the daemon serving ``path`` (its pid from the mount's stats) and wait for
    the mount to go; False if there is no daemon to ask or the mount stays."""
    from netmount.mounting.stats import read_stats

    try:
        pid = int(read_stats(path)["pid"])
        os.kill(pid, signal.SIGTERM)
    except (errors.NetmountError, KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    # the daemon unmounts as it exits: its exit is the event to wait for
    return procs.wait_exit(pid, STOP_TIMEOUT) and mounts.find_mount(path) is None
