"""Plan a view: (repo listing, safetensors headers, config/index bytes, options) -> ``View``.

Pure: no I/O, so the mount calls it once at mount time with the headers it read (all shards
in parallel) and tests call it on files in a tmp dir.  What the mount passes:

- ``files``: the repo listing (``RemoteFile``; only ``path`` is used);
- ``headers``: ``{path: core.safetensors.Header}`` for every path ``sources(files, small)``
  returns (``read_header_full`` reads one);
- ``small``: the bytes of ``config.json`` and ``model.safetensors.index.json`` when the repo
  has them (``SMALL_FILES``).

Choices:
- The view re-cuts the model the index describes (the shards its ``weight_map`` names), or,
  without an index, the top-level ``*.safetensors`` files.  Every other file passes through,
  so a ``consolidated.safetensors`` next to an index, or a subfolder's model, is shown as is.
- Tensors keep the source order ((shard order, offset)), so a loader reading a view file front
  to back reads each source front to back; consecutive source ranges become one ``Piece``.
- ``--only`` globs match the names the view shows (after ``--experts`` renumbering).
- A view file name that would not be a plain top-level name (a tensor named ``a/b`` or
  ``.x``) is refused rather than cleaned up: a header decides it, and headers are input.
"""

from __future__ import annotations

import json
import math
from fnmatch import fnmatchcase
from json.encoder import encode_basestring_ascii as quote
from operator import attrgetter

from netmount.core import errors
from netmount.core.safetensors import Header, TensorInfo
from netmount.remote.hub import RemoteFile
from netmount.views import experts as ex
from netmount.views.experts import parse_experts
from netmount.views.header import encode_header
from netmount.views.model import Piece, View, ViewFile, ViewSpec, no_gc
from netmount.views.names import expert_of, file_for

__all__ = ["CONFIG", "INDEX", "RESHARD_MODES", "SMALL_FILES", "make_spec", "parse_experts", "plan_view",
           "sources"]

INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
SMALL_FILES = (CONFIG, INDEX)
RESHARD_MODES = ("layer", "expert")
NAME_MAX = 255  # bytes in one file name (Linux NAME_MAX)
SINGLE = "model.safetensors"  # the one file transformers loads without an index


class _Item:
    """One tensor as the view shows it: its name there, where its bytes come from, and
    ``rows``: for a router, only these rows of dim 0, in this order."""

    __slots__ = ("name", "source", "tensor", "rows", "entry")

    def __init__(self, name: str, source: str, tensor: TensorInfo, rows: tuple[int, ...] | None = None):
        self.name, self.source, self.tensor, self.rows = name, source, tensor, rows
        t = tensor
        if rows is None:
            self.entry = (name, t.dtype, t.shape, t.nbytes)  # an Entry, as a plain tuple: cheaper
        else:
            n = len(rows)
            self.entry = (name, t.dtype, (n,) + t.shape[1:], n * (t.nbytes // t.shape[0]))

    def ranges(self):
        """(offset, length) source ranges: one per maximal run of consecutive kept rows."""
        t = self.tensor
        if self.rows is None:
            return ((t.start, t.nbytes),)
        row, rows, out = t.nbytes // t.shape[0], self.rows, []
        i = 0
        while i < len(rows):
            j = i
            while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
                j += 1
            out.append((t.start + rows[i] * row, (j - i + 1) * row))
            i = j + 1
        return out


def make_spec(reshard: str | None = None, only=(), experts=None) -> ViewSpec:
    """A checked ``ViewSpec`` from what a user typed (CLI or ``netmount.mount(...)``):
    ``reshard`` None/"layer"/"expert", ``only`` a glob or globs, ``experts`` a spec string
    such as "0-7,64-71" or expert numbers.  BadInput before anything is mounted; the checks
    that need the repo (an expert past the count, a glob matching nothing) are plan_view's."""
    if reshard is not None and reshard not in RESHARD_MODES:
        raise errors.BadInput(f"--reshard {reshard!r}: expected one of {', '.join(RESHARD_MODES)}")
    globs = (only,) if isinstance(only, str) else tuple(only or ())
    for g in globs:
        if not isinstance(g, str) or not g:
            raise errors.BadInput(f"--only {g!r}: expected a non-empty glob over tensor names")
    if experts is None:
        kept = None
    elif isinstance(experts, str):
        kept = parse_experts(experts)
    else:
        given = tuple(experts)
        if not given or not all(type(e) is int and e >= 0 for e in given):
            raise errors.BadInput(f"--experts {list(given)!r}: expected non-negative expert numbers")
        kept = tuple(sorted(set(given)))
    return ViewSpec(reshard=reshard, only=globs, experts=kept)


def sources(files: list[RemoteFile], small: dict[str, bytes]) -> list[str]:
    """The safetensors files a view re-cuts, in shard order (see the module doc)."""
    return _sources(files, _index_json(files, small))


def _index_json(files: list[RemoteFile], small: dict[str, bytes]) -> dict | None:
    if not any(f.path == INDEX for f in files):
        return None
    if INDEX not in small:
        raise ValueError(f"plan: pass the bytes of {INDEX} in small")
    return _json(small[INDEX], INDEX)


def _sources(files: list[RemoteFile], index: dict | None) -> list[str]:
    paths = {f.path for f in files}
    if index is not None:
        wm = index.get("weight_map")
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise errors.BadInput(f"{INDEX} has no weight_map of tensor name -> file")
        missing = sorted(set(wm.values()) - paths)
        if missing:
            raise errors.BadInput(f"{INDEX} names {missing[0]!r}, which the repo does not have")
        return sorted(set(wm.values()))
    return sorted(p for p in paths if "/" not in p and p.endswith(".safetensors"))


def plan_view(spec: ViewSpec, files: list[RemoteFile], headers: dict[str, Header],
              small: dict[str, bytes]) -> View:
    """The mount's tree under ``spec`` (module doc); BadInput with one line for what cannot be."""
    with no_gc():  # ~200k small acyclic objects: GC passes would walk them again and again (1.9 -> 1.0 s)
        return _plan(spec, files, headers, small)


def _plan(spec: ViewSpec, files: list[RemoteFile], headers: dict[str, Header],
          small: dict[str, bytes]) -> View:
    all_paths = sorted(f.path for f in files)
    if not spec.active:
        return View(files=(), passthrough=tuple(all_paths))
    if spec.reshard is not None and spec.reshard not in RESHARD_MODES:
        raise errors.BadInput(f"--reshard {spec.reshard!r}: expected one of {', '.join(RESHARD_MODES)}")
    index = _index_json(files, small)
    srcs = _sources(files, index)
    if not srcs:
        what = f"--reshard {spec.reshard}" if spec.reshard else "--only/--experts"
        raise errors.BadInput(f"{what}: this repo has no safetensors weights to re-cut")

    items = _items(srcs, headers)
    config_file = None
    if spec.experts is not None:
        items, config_file = _keep_experts(items, tuple(sorted(set(spec.experts))), small)
    if spec.only:
        items = [it for it in items if any(fnmatchcase(it.name, g) for g in spec.only)]
        if not items:
            globs = " ".join(f"--only {g!r}" for g in spec.only)
            raise errors.BadInput(f"{globs}: no tensor matches")

    by_file: dict[str, list[_Item]] = {}
    if spec.reshard:
        # A tensor's file is decided by its name up to its last dot (names.py matches whole
        # dotted parts), which it shares with its siblings (weight, scale): looked up once.
        file_of: dict[str, str] = {}
        for it in items:
            name = it.name
            dot = name.rfind(".")
            key = name[:dot + 1] if dot > 0 else name  # ".x": its file is named after it all
            path = file_of.get(key)
            if path is None:
                path = file_of[key] = file_for(name, spec.reshard)
            by_file.setdefault(path, []).append(it)
    else:
        for it in items:
            by_file.setdefault(it.source, []).append(it)
    hidden = set(srcs) | {INDEX} | ({CONFIG} if config_file else set())
    passthrough = [p for p in all_paths if p not in hidden]
    _check_names(list(by_file), passthrough, spec.reshard is not None)

    out = [_view_file(path, its, headers[its[0].source].metadata) for path, its in by_file.items()]
    if INDEX in all_paths or list(by_file) != [SINGLE]:
        out.append(_index(by_file, index))
    if config_file:
        out.append(config_file)
    return View(files=tuple(out), passthrough=tuple(passthrough))


def _json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.BadInput(f"{what} is not valid JSON: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(obj, dict):
        raise errors.BadInput(f"{what} is not a JSON object")
    return obj


def _items(srcs: list[str], headers: dict[str, Header]) -> list[_Item]:
    items, seen = [], {}
    for src in srcs:
        h = headers.get(src)
        if h is None:
            raise errors.BadInput(f"{src}: its safetensors header could not be read, so no view "
                                  "can be made of it")
        for t in sorted(h.tensors, key=attrgetter("start")):
            if t.name in seen:
                raise errors.BadInput(f"tensor {t.name!r} is in both {seen[t.name]} and {src}")
            seen[t.name] = src
            items.append(_Item(t.name, src, t))
    return items


def _keep_experts(items: list[_Item], kept: tuple[int, ...], small: dict[str, bytes]):
    """Drop the experts not kept, renumber the rest, slice the routers; -> (items, config file)."""
    if CONFIG not in small:
        raise errors.BadInput("--experts: the repo has no config.json to tell the architecture")
    config = _json(small[CONFIG], CONFIG)
    moe = ex.detect(config)
    ex.check_experts(kept, moe)
    new_number = {old: new for new, old in enumerate(kept)}
    router = moe.router_pattern()
    out, expert_layers, router_layers = [], set(), set()
    for it in items:
        e = expert_of(it.name)
        if e is not None:
            head, old, rest = e
            expert_layers.add(head.rsplit(".", 3)[0] + ".")  # "<...>layers.<N>."
            if old in new_number:
                out.append(_Item(f"{head}{new_number[old]}.{rest}", it.source, it.tensor))
            continue
        m = router.match(it.name)
        if m is not None:
            t = it.tensor
            if not t.shape or t.shape[0] != moe.count or t.nbytes % moe.count:
                raise errors.BadInput(f"--experts: router {t.name!r} has shape {list(t.shape)}, "
                                      f"not [{moe.count}, ...] as {moe.count_key}={moe.count} says")
            router_layers.add(m.group(1))
            out.append(_Item(it.name, it.source, t, rows=kept))
            continue
        out.append(it)
    if not expert_layers:
        raise errors.BadInput(f"--experts: no per-expert tensors (<prefix>.layers.<N>.mlp.experts.<E>.* "
                              f"or ...block_sparse_moe.experts.<E>.*) in this {moe.family} checkpoint")
    lacking = sorted(expert_layers - router_layers)
    if lacking:
        raise errors.BadInput(f"--experts: {lacking[0]} has experts but no router "
                              f"({' or '.join(moe.routers)}) to slice")
    data = ex.config_bytes(ex.rewrite_config(config, moe, kept))
    return out, ViewFile(CONFIG, (Piece(len(data), data=data),))


def _view_file(path: str, items: list[_Item], metadata: dict[str, str] | None) -> ViewFile:
    head = encode_header([it.entry for it in items], metadata)
    pieces = [Piece(len(head), data=head)]
    src, start, end = None, 0, 0  # the source range being extended
    for it in items:
        t = it.tensor
        for off, n in ((t.start, t.end - t.start),) if it.rows is None else it.ranges():
            if n == 0:
                continue
            if it.source == src and off == end:
                end += n
                continue
            if src is not None:
                pieces.append(Piece(end - start, source=src, offset=start))
            src, start, end = it.source, off, off + n
    if src is not None:
        pieces.append(Piece(end - start, source=src, offset=start))
    return ViewFile(path, tuple(pieces))


def _index(by_file: dict[str, list[_Item]], old: dict | None) -> ViewFile:
    """``model.safetensors.index.json`` of the view: kept tensors -> view file, their bytes.
    Written line by line in the layout transformers writes (2-space indent, names sorted):
    ``json.dumps(indent=...)`` takes the pure-Python encoder, seconds for DeepSeek-V3's 92k names."""
    meta = dict(old["metadata"]) if old is not None and isinstance(old.get("metadata"), dict) else {}
    entries = [it.entry for its in by_file.values() for it in its]
    meta["total_size"] = sum(e[3] for e in entries)
    if "total_parameters" in meta:
        meta["total_parameters"] = sum(math.prod(e[2]) for e in entries)
    weight_map = sorted((it.name, path) for path, its in by_file.items() for it in its)
    head = json.dumps({"metadata": meta}, indent=2)[:-2]  # without the closing "\n}"
    lines = ",\n".join(f"    {quote(name)}: {quote(path)}" for name, path in weight_map)
    data = f'{head},\n  "weight_map": {{\n{lines}\n  }}\n}}\n'.encode()
    return ViewFile(INDEX, (Piece(len(data), data=data),))


def _check_names(view_paths: list[str], passthrough: list[str], made: bool) -> None:
    """Refuse file names a header made up that are unsafe or hide a file of the repo."""
    shown = set(passthrough)
    folders = {q.rsplit("/", k)[0] for q in passthrough for k in range(1, q.count("/") + 1)}
    for p in view_paths:
        if made and ("/" in p or "\\" in p or "\0" in p or p.startswith(".")):
            raise errors.UnsafeListing(f"a tensor name would make the unsafe file name {p[:200]!r}; "
                                       "refusing to build the view")
        if made and len(p.encode()) > NAME_MAX:
            raise errors.BadInput(f"a tensor name would make a file name longer than {NAME_MAX} bytes: "
                                  f"{p[:80]!r}...")
        if p in shown or p in folders or p in (INDEX, CONFIG):
            raise errors.BadInput(f"view file {p!r} would hide the repo's own {p!r}")
