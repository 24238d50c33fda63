"""The Hub's HTTP protocol, as huggingface_hub 2.x speaks it, on two aiohttp apps.

``hub`` answers the API (repo info, paginated tree) and ``/resolve/``; ``cdn`` serves LFS
blobs behind signed, expiring URLs on a second port, so a client meets the same
cross-host 302 it meets in production (and must drop Authorization when following it).

Status codes and ``X-Error-Code`` values are chosen for what huggingface_hub's
``hf_raise_for_status`` (utils/_http.py) turns into typed errors: RepoNotFound (401 when
anonymous, 404 with a valid token), GatedRepo (401 anonymous / 403 wrong token),
RevisionNotFound and EntryNotFound (404).  As on today's Hub, a gated repo's info and file
listing are public and only downloads are gated; ``gate_api=True`` also gates the API, as
the Hub did before late 2024.

Extension points for WAN emulation and fault injection, by response phase:
``faults`` (hooks run before any handler, may answer in its place or sleep first),
``send_content`` (status line and headers of file bodies) and ``write_body`` (every body
byte goes out through it: the place for bandwidth caps, stalls and cut connections).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import html
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from . import family, ranges, synthetic
from .records import RequestRecord
from .repo import Entry, FolderRepo, Hasher, Repo, Snapshot, SyntheticRepo
from .wan import Wan

# where a request's RequestRecord lives while it is served
RECORD = web.RequestKey("record", RequestRecord) if hasattr(web, "RequestKey") else "record"

Fault = Callable[[web.Request, RequestRecord], "web.StreamResponse | None"]


class HubError(Exception):
    """An error answer in the Hub's shape: JSON ``{"error": ...}`` + X-Error-Code/-Message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> web.Response:
        headers = {"X-Error-Code": self.code, "X-Error-Message": self.message, **self.headers}
        return web.json_response({"error": self.message}, status=self.status, headers=headers)


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubServer:
    """Routes, handlers and state; ``TestHub`` adds the thread, the ports and the log queries."""

    def __init__(
        self,
        root: Path | None,
        *,
        page_size: int = 1000,
        url_ttl: float = 3600.0,
        tokens: Iterable[str] = (),
        synthetic_deepseek: bool = False,
        synthetic_repos: bool = False,
        gate_api: bool = False,
        wan: Wan | None = None,
        cdn_base: str = "",
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.cdn_base = cdn_base.rstrip("/")  # see external_location
        self.wan = wan or Wan()  # latency and per-connection bandwidth (wan.py); off by default
        self.page_size = page_size
        self.url_ttl = url_ttl
        self.tokens = frozenset(tokens)
        self.gate_api = gate_api
        self.log: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.url = ""  # set once listening
        self.cdn_url = ""
        self._secret = os.urandom(32)
        self._url_clock_skew = 0.0  # added to the clock that signs and checks data URLs
        self._hasher = Hasher()
        self._synthetic = SyntheticRepo() if synthetic_deepseek else None
        self.synthetic_repos = synthetic_repos  # the synthetic/repo-{n} family (family.py)
        self._blobs: dict[str, tuple[Repo, Entry]] = {}  # sha256 -> where the CDN finds it
        self._inflight = 0

    # ---- repos -------------------------------------------------------------------------

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        """Models live in ``root/<org>/<name>``, datasets in ``root/datasets/<org>/<name>``,
        spaces in ``root/spaces/<org>/<name>`` (on the Hub, too, no user is called
        ``datasets`` or ``spaces``)."""
        if repo_type == "model" and self._synthetic is not None and repo_id == synthetic.REPO_ID:
            return self._synthetic
        if repo_type == "model" and self.synthetic_repos and repo_id.startswith(family.ORG + "/"):
            return family.family_repo(repo_id)
        org, _, name = repo_id.partition("/")
        if self.root is None or not org or not name or "/" in name or "." in (org[0], name[0]):
            return None
        if repo_type == "model" and org in TYPE_FOLDERS.values():
            return None
        base = self.root / TYPE_FOLDERS[repo_type] if repo_type != "model" else self.root
        folder = base / org / name
        return FolderRepo(repo_id, folder, self._hasher) if folder.is_dir() else None

    def commit_sha(self, repo_id: str, repo_type: str = "model") -> str:
        repo = self.repo(repo_id, repo_type)
        if repo is None:
            raise KeyError(repo_id)
        return repo.snapshot().sha

    # ---- apps --------------------------------------------------------------------------

    def hub_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("hub")])
        r = app.router
        kinds = "{kind:models|datasets|spaces}"  # /api/datasets/org/name: the repo type, plural
        r.add_get(f"/api/{kinds}/{{org}}/{{name}}", self.model_info)
        r.add_get(f"/api/{kinds}/{{org}}/{{name}}/revision/{{rev}}", self.model_info)
        r.add_get(f"/api/{kinds}/{{org}}/{{name}}/tree/{{rev}}{{path:(/.*)?}}", self.tree)
        r.add_get("/api/agent-harnesses", self.agent_harnesses)
        # downloads: /org/name/resolve/.. for models, /datasets/org/name/resolve/.. for datasets
        for prefix in ("/{kind:datasets|spaces}", ""):
            r.add_get(prefix + "/{org}/{name}/resolve/{rev}", self.index)  # folders: HTML listing
            r.add_get(prefix + "/{org}/{name}/resolve/{rev}/{path:(.*/)?}", self.index)
            r.add_get(prefix + "/{org}/{name}/resolve/{rev}/{path:.+}", self.resolve)  # HEAD too
        return app

    def cdn_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("cdn")])
        app.router.add_get("/blobs/{sha256}", self.cdn_blob)  # HEAD too
        return app

    def _middleware(self, server: str):
        @web.middleware
        async def record(request: web.Request, handler):
            rec = RequestRecord(
                method=request.method,
                server=server,
                path=request.path,
                query=request.query_string,
                range=request.headers.get("Range"),
                has_auth="Authorization" in request.headers,
                t_start=time.monotonic(),
            )
            request[RECORD] = rec
            self.log.append(rec)
            self._inflight += 1
            try:
                await self.wan.first_byte()
                try:
                    resp = await self._run_faults(request, rec) or await handler(request)
                except HubError as e:
                    resp = e.response()
                except web.HTTPException as e:  # e.g. no route: 404/405
                    rec.status = e.status
                    raise
                except Exception:
                    rec.status = rec.status or 500
                    raise
                if not resp.prepared:  # send small bodies here so t_end and body_bytes are true
                    rec.status = resp.status
                    await resp.prepare(request)
                    await resp.write_eof()
                    if request.method != "HEAD" and isinstance(resp, web.Response):
                        rec.body_bytes += len(resp.body or b"")
                return resp
            finally:
                rec.t_end = time.monotonic()
                self._inflight -= 1

        return record

    async def _run_faults(self, request: web.Request, rec: RequestRecord) -> web.StreamResponse | None:
        """Phase 0: each hook may sleep, answer instead of the handler (return a response) or pass."""
        for hook in list(self.faults):
            out = hook(request, rec)
            if inspect.isawaitable(out):
                out = await out
            if out is not None:
                return out
        return None

    # ---- shared lookups ----------------------------------------------------------------

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    async def _lookup(self, request: web.Request, rev: str | None, *, download: bool = False) -> tuple[Repo, Snapshot]:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        kind = repo_type(request)
        token = self._bearer(request)
        authorized = token is not None and token in self.tokens
        repo = self.repo(repo_id, kind)
        if repo is None:
            raise HubError(404 if authorized else 401, "RepoNotFound", "Repository not found")
        if repo.gated and (download or self.gate_api) and not authorized:
            page = repo_id if kind == "model" else f"{TYPE_FOLDERS[kind]}/{repo_id}"
            if token is None:
                raise HubError(401, "GatedRepo", f"Access to {kind} {repo_id} is restricted. You must have access"
                               " to it and be authenticated to access it. Please log in.")
            raise HubError(403, "GatedRepo", f"Access to {kind} {repo_id} is restricted and you are not in the"
                           f" authorized list. Visit {self.url}/{page} to ask for access.")
        snap = await asyncio.to_thread(repo.snapshot)  # first call may hash gigabytes: off the loop
        if rev is not None and rev not in ("main", snap.sha):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo, snap

    # ---- API ---------------------------------------------------------------------------

    async def agent_harnesses(self, request: web.Request) -> web.Response:
        """The registry of AI agent harnesses that huggingface_hub 2.x fetches once per process
        for its User-Agent (utils/_detect_agent.py), here empty.  The client keeps a fetched
        registry for a day ($HF_HOME/.agent_harnesses.json); a 404 is not kept, so without
        this route every process that talks to the hub paid one more round trip."""
        return web.json_response({"standardEnvVars": [], "harnesses": {}})

    async def model_info(self, request: web.Request) -> web.Response:
        repo, snap = await self._lookup(request, request.match_info.get("rev", "main"))
        blobs = request.query.get("blobs", "").lower() in ("true", "1")
        siblings = []
        for e in snap.files:
            s: dict = {"rfilename": e.path}
            if blobs:
                s.update(size=e.size, blobId=e.oid)
                if e.lfs:
                    s["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            siblings.append(s)
        names = [e.path for e in snap.files]
        tags = (["transformers"] if "config.json" in names else []) + (
            ["safetensors"] if any(n.endswith(".safetensors") for n in names) else [])
        org = repo.repo_id.split("/")[0]
        kind = repo_type(request)
        if kind != "model":  # DatasetInfo / SpaceInfo: the same core fields, no model-only ones
            extra = {"sdk": "static", "runtime": {"stage": "RUNNING"}} if kind == "space" else {
                "tags": ["format:parquet"] if any(n.endswith(".parquet") for n in names) else []}
            return web.json_response({
                "_id": hashlib.sha1(f"{kind}/{repo.repo_id}".encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": org,
                "sha": snap.sha,
                "lastModified": _iso(snap.mtime),
                "createdAt": _iso(snap.mtime),
                "private": False,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "likes": 0,
                "siblings": siblings,
                "usedStorage": sum(e.size for e in snap.files),
                **extra,
            })
        return web.json_response({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": org,
            "sha": snap.sha,
            "lastModified": _iso(snap.mtime),
            "createdAt": _iso(snap.mtime),
            "private": False,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "transformers" if "config.json" in names else None,
            "tags": tags,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(e.size for e in snap.files),
        })

    async def tree(self, request: web.Request) -> web.Response:
        rev = request.match_info["rev"]
        repo, snap = await self._lookup(request, rev)
        sub = request.match_info["path"].strip("/")
        if sub and sub not in snap.dirs:
            raise HubError(404, "EntryNotFound", f"{sub} does not exist on \"{rev}\"", {"X-Repo-Commit": snap.sha})
        recursive = request.query.get("recursive", "").lower() in ("true", "1")
        items = _tree_items(snap, sub, recursive)
        after = ""
        if "cursor" in request.query:
            try:
                after = json.loads(base64.urlsafe_b64decode(request.query["cursor"]))["file_name"]
            except (ValueError, KeyError, TypeError):
                raise HubError(400, "BadRequest", "Invalid cursor") from None
        page = [it for it in items if it["path"] > after][: self.page_size]
        headers = {}
        if page and page[-1]["path"] != items[-1]["path"]:
            cursor = base64.urlsafe_b64encode(json.dumps({"file_name": page[-1]["path"]}).encode()).decode()
            headers["Link"] = f'<{request.url.update_query(cursor=cursor)}>; rel="next"'
        return web.json_response(page, headers=headers)

    # ---- downloads ---------------------------------------------------------------------

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo, snap = await self._lookup(request, request.match_info["rev"], download=True)
        entry = snap.by_path.get(request.match_info["path"])
        common = {"X-Repo-Commit": snap.sha}
        if entry is None:
            raise HubError(404, "EntryNotFound", "Entry not found", common)
        if not entry.lfs:
            return await self.send_content(request, repo, entry, {**common, "ETag": f'"{entry.oid}"'})
        self._blobs[entry.sha256] = (repo, entry)
        location = self.external_location(repo, entry) or self.cdn_location(entry.sha256)
        headers = {
            **common,
            "Location": location,
            "ETag": f'"{entry.sha256}"',
            "X-Linked-Etag": f'"{entry.sha256}"',
            "X-Linked-Size": str(entry.size),
        }
        return web.Response(status=302, headers=headers, text=f"Found. Redirecting to {location}")

    async def index(self, request: web.Request) -> web.Response:
        """An HTML listing of a folder at a revision, as plain HTTP file servers give: what
        directory-mounting clients (rclone's http remote, httpdirfs) parse for names."""
        repo, snap = await self._lookup(request, request.match_info["rev"], download=True)
        sub = request.match_info.get("path", "").strip("/")
        if sub and sub not in snap.dirs:
            raise HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": snap.sha})
        names = [it["path"].rsplit("/", 1)[-1] + ("/" if it["type"] == "directory" else "")
                 for it in _tree_items(snap, sub, recursive=False)]
        # relative hrefs, as Apache/nginx autoindex writes them (httpdirfs takes no other kind)
        links = "\n".join(f'<a href="{quote(n)}">{html.escape(n)}</a>' for n in names)
        return web.Response(text=f"<html><body><pre>\n{links}\n</pre></body></html>\n",
                            content_type="text/html", headers={"X-Repo-Commit": snap.sha})

    def _signature(self, path: str, expires: str) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _url_clock(self) -> float:
        return time.time() + self._url_clock_skew

    def expire_signed_urls(self) -> None:
        """A fault switch: every data URL signed so far is expired from now on (the CDN's
        clock jumps past their ``Expires``); URLs signed later are valid as usual.  What a
        client holding a URL across its expiry meets, without a test waiting for it."""
        self._url_clock_skew += max(self.url_ttl, 0.0) + 1.0

    def cdn_location(self, sha256: str) -> str:
        now = self._url_clock()
        expires = math.ceil(now + self.url_ttl) if self.url_ttl > 0 else math.floor(now + self.url_ttl)
        path = f"/blobs/{sha256}"
        return f"{self.cdn_url}{path}?Expires={expires}&Signature={self._signature(path, str(expires))}"

    def external_location(self, repo: Repo, entry: Entry) -> str | None:
        """With ``cdn_base``, a folder repo's LFS file by name under that base (``<base>/<org>/
        <name>/<path>``, datasets under ``datasets/``), signed like ours: what a benchmark points
        at an nginx serving ``root`` so the CDN side runs at C speed.  None without it."""
        if not self.cdn_base or not isinstance(repo, FolderRepo) or self.root is None:
            return None
        rel = os.path.relpath(repo.folder, self.root).replace(os.sep, "/")
        signed = self.cdn_location(entry.sha256)
        return f"{self.cdn_base}/{quote(rel)}/{quote(entry.path)}?{signed.partition('?')[2]}"

    async def cdn_blob(self, request: web.Request) -> web.StreamResponse:
        expires = request.query.get("Expires", "")
        signature = request.query.get("Signature", "")
        if not (expires.isdigit() and hmac.compare_digest(signature, self._signature(request.path, expires))):
            return _s3_error(403, "AccessDenied", "Invalid signature")
        if self._url_clock() >= int(expires):
            return _s3_error(403, "AccessDenied", "Request has expired")
        found = self._blobs.get(request.match_info["sha256"])
        if found is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        repo, entry = found
        name = entry.path.rsplit("/", 1)[-1]
        headers = {
            "ETag": f'"{entry.sha256}"',
            "Content-Type": "binary/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";",
        }
        return await self.send_content(request, repo, entry, headers)

    async def send_content(self, request: web.Request, repo: Repo, entry: Entry,
                           headers: dict[str, str]) -> web.StreamResponse:
        """Phase 1: status and headers of a file body (200 full, 206 one range, 416)."""
        rec: RequestRecord = request[RECORD]
        plan = ranges.plan(request.headers.get("Range"), entry.size)
        if plan.status == 416:
            resp = _s3_error(416, "InvalidRange", "The requested range is not satisfiable")
            resp.headers["Content-Range"] = plan.content_range(entry.size)
            return resp
        resp = web.StreamResponse(status=plan.status, headers={**headers, "Accept-Ranges": "bytes"})
        if plan.status == 206:
            resp.headers["Content-Range"] = plan.content_range(entry.size)
        resp.content_length = plan.end - plan.start
        rec.status = plan.status
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return resp
        with contextlib.closing(repo.read(entry.path, plan.start, plan.end)) as chunks:
            if await self.write_body(request, resp, chunks):
                await resp.write_eof()
        return resp

    async def write_body(self, request: web.Request, resp: web.StreamResponse, chunks: Iterator[bytes]) -> bool:
        """Phase 2: every body byte goes out here.  False if the client went away."""
        rec: RequestRecord = request[RECORD]
        connection = request.transport
        for chunk in chunks:
            for piece in self.wan.slices(chunk):
                await self.wan.pace(connection, len(piece))
                rec.body_bytes += len(piece)  # counted before the await: a client never sees more
                try:
                    await resp.write(piece)
                except ConnectionError:
                    rec.body_bytes -= len(piece)
                    if isinstance(request.transport, asyncio.Transport):
                        request.transport.close()
                    return False
        return True


TYPE_FOLDERS = {"dataset": "datasets", "space": "spaces"}  # repo type -> URL prefix and folder under root


def repo_type(request: web.Request) -> str:
    """"model", "dataset" or "space", from the route's ``kind`` (``datasets``; none: a model)."""
    kind = request.match_info.get("kind", "models")
    return "model" if kind == "models" else kind[:-1]


def _tree_items(snap: Snapshot, sub: str, recursive: bool) -> list[dict]:
    """Tree entries under ``sub`` (direct children, or all descendants), sorted by path."""
    prefix = f"{sub}/" if sub else ""

    def wanted(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix):])

    items = [
        {"type": "directory", "oid": oid, "size": 0, "path": d}
        for d, oid in snap.dirs.items()
        if d and wanted(d)
    ]
    for e in snap.files:
        if wanted(e.path):
            it = {"type": "file", "oid": e.oid, "size": e.size, "path": e.path}
            if e.lfs:
                it["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            items.append(it)
    items.sort(key=lambda it: it["path"])
    return items


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, text=body, content_type="application/xml")
