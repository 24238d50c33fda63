"""The test hub in a child process, with the same query API as ``TestHub``.

Why: a program that reads a FUSE mount through ``mmap`` (safetensors, transformers) takes
the page fault while holding its GIL.  A hub served by a thread of that same process
could then never answer, and the read would stall until it times out.  So tests that
mmap run the hub here, and read its request log over a small control port.

    python tests/hubproc.py '<json kwargs for TestHub>'   # prints "<url> <cdn_url> <control_url>"
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubProcess:
    """Start with ``HubProcess(root, **TestHub kwargs).start()``; ``stop()`` ends the child."""

    def __init__(self, root: Path | None, **kwargs):
        self.kwargs = {"root": str(root) if root else None,
                       **{k: (sorted(v) if isinstance(v, (set, frozenset, tuple)) else v)
                          for k, v in kwargs.items()}}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "HubProcess":
        from conftest import require_fuse_marker

        require_fuse_marker()
        # stdin is a pipe the child reads until EOF: if the tests die, the hub goes too
        self.proc = subprocess.Popen([sys.executable, __file__, json.dumps(self.kwargs)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 3:
            self.stop()
            raise RuntimeError("the test hub process did not start")
        self.url, self.cdn_url, self._control = line
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the TestHub query API, over the control port --------------------------------------
    def _get(self, what: str):
        with urllib.request.urlopen(f"{self._control}/{what}", timeout=30) as resp:
            return json.loads(resp.read())

    @property
    def log(self):
        from netmount.dev.testhub import RequestRecord

        return [RequestRecord(**r) for r in self._get("log")]

    def reset_log(self) -> None:
        self._get("reset")

    def requests(self, server=None, method=None, path_contains=None):
        from netmount.dev.testhub.records import select

        return select(self.log, server, method, path_contains)

    def bytes_sent(self, server="cdn", path_contains=None) -> int:
        return sum(r.body_bytes for r in self.requests(server, None, path_contains))

    def commit_sha(self, repo_id: str) -> str:
        return self._get(f"sha?repo={repo_id}")["sha"]

    # -- fault injection (netmount/testhub/faults.py), switched at runtime ------------------
    def set_faults(self, rules: list[dict]) -> None:
        """Replace the hub's fault rules: each a dict with ``kind`` and its options."""
        req = urllib.request.Request(f"{self._control}/faults", data=json.dumps(rules).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()

    def add_fault(self, kind: str, **options) -> None:
        """Append one rule (the others are kept, their ``hits`` restart from 0)."""
        keep = [{k: v for k, v in r.items() if k not in ("hits", "seen")} for r in self.faults()]
        self.set_faults(keep + [{"kind": kind, **options}])

    def clear_faults(self) -> None:
        self.set_faults([])

    def expire_signed_urls(self) -> None:
        """Every CDN URL signed so far answers 403 "Request has expired" from now on."""
        req = urllib.request.Request(f"{self._control}/expire-urls", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()

    def faults(self) -> list[dict]:
        """The rules with their ``hits`` counts."""
        return self._get("faults")

    def wait_hits(self, rule: int, hits: int = 1, timeout: float = 30.0) -> bool:
        """Wait (no polling: the hub answers when it happens) until fault rule ``rule`` has
        fired ``hits`` times; False after ``timeout`` seconds."""
        with urllib.request.urlopen(f"{self._control}/wait-hits?rule={rule}&hits={hits}&timeout={timeout}",
                                    timeout=timeout + 30) as resp:
            return json.loads(resp.read())["ok"]


def _serve(kwargs: dict) -> None:
    from netmount.dev.testhub import TestHub
    from netmount.dev.testhub.faults import FaultRules

    root = kwargs.pop("root")
    hub = TestHub(Path(root) if root else None, **kwargs).start()
    faults = FaultRules(hub)
    hub.faults.append(faults)

    class Control(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/log":
                hub.wait_idle()
                body = [dataclasses.asdict(r) for r in list(hub.log)]
            elif self.path == "/reset":
                hub.wait_idle()
                hub.reset_log()
                body = {}
            elif self.path.startswith("/sha?repo="):
                body = {"sha": hub.commit_sha(self.path.split("=", 1)[1])}
            elif self.path == "/faults":
                body = faults.rules()
            elif self.path.startswith("/wait-hits?"):
                q = {k: float(v[0]) for k, v in urllib.parse.parse_qs(self.path.partition("?")[2]).items()}
                body = {"ok": faults.wait_hits(int(q["rule"]), int(q["hits"]), q["timeout"])}
            else:
                self.send_error(404)
                return
            self._answer(body)

        def do_POST(self):
            if self.path == "/expire-urls":
                hub.expire_signed_urls()
                self._answer({})
                return
            if self.path != "/faults":
                self.send_error(404)
                return
            rules = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            try:
                faults.set(rules)
            except (ValueError, KeyError, TypeError) as exc:
                self.send_error(400, str(exc))
                return
            self._answer({})

        def _answer(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    print(hub.url, hub.cdn_url, f"http://127.0.0.1:{control.server_address[1]}", flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    _serve(json.loads(sys.argv[1]))
