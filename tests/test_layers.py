"""The architecture, enforced: who may import whom, read from the source with ``ast``.

Every import statement counts, at module level or inside a function (lazy imports are still
dependencies).  The rules, from DESIGN.md:

- ``cache/`` is a library of its own: it imports nothing of ``netmount``.
- Only the FUSE face (``netmount/mounting/fs.py``) imports the FUSE binding (``fuse``, ``mfusepy``).
- Only the test hub (``netmount/dev/testhub/``) imports ``aiohttp``: the daemon's fetcher runs
  on blocking sockets in threads (``netmount/remote/links.py``), and must not pay its import.
- Only ``netmount/__main__.py`` imports the CLI (``netmount.commands.cli``).
- Layers: core 0, remote 1, read 2, views 2, mounting 3, proxy 3, dev 4, commands 5.  A module imports
  its own package and lower ranks only (calls go down).  ``netmount/__init__.py``, the lazy
  public API, is exempt; importing it (``import netmount``) counts as importing the top.
- ``netmount/dev/testhub/`` is a server that runs on its own: of netmount it imports only
  itself and ``core``.
- No import cycle between netmount modules (every import counts, lazy ones included; an
  import names the module it loads, not its parent packages).

And sizes (issue 20): no class over ``MAX_CLASS`` lines and no function over ``MAX_FUNCTION``
in ``netmount/``, outside the template modules (``TEMPLATES``); ``OVERSIZE`` lists, by
name, the offenders that were there when the rule came, to be emptied as they are split.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RANKS = {"core": 0, "remote": 1, "read": 2, "views": 2, "mounting": 3, "proxy": 3, "dev": 4, "commands": 5}
TOP = 6  # ``netmount`` itself (the public API) and ``netmount/__main__.py``
FUSE_BINDINGS = {"fuse", "mfusepy"}
FUSE_FACE = "netmount/mounting/fs.py"
AIOHTTP_USERS = ("netmount/dev/testhub/",)
CLI = "netmount.commands.cli"
CLI_USERS = ("netmount/__main__.py",)
TESTHUB = "netmount/dev/testhub/"

MAX_CLASS, MAX_FUNCTION = 250, 50  # lines, docstrings included
TEMPLATES = ("netmount/proxy/nginx_config.py",)  # a config file written as one f-string
# Offenders when the size rule came (issue 20), each to leave this list when it is split;
# nothing new may join it.
OVERSIZE = {
    "netmount/dev/testhub/server.py:HubServer",  # the test hub's routes
    "netmount/dev/testhub/server.py:HubServer.model_info",
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the root, with forward slashes
    line: int
    module: str  # absolute dotted name imported


def module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(rel: str, source: str) -> list[Import]:
    """Every import in ``source`` (the module at ``rel``), relative ones made absolute."""
    tree = ast.parse(source, filename=rel)
    package = module_name(rel) if rel.endswith("__init__.py") else module_name(rel).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(Import(rel, node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # each name as ``mod.name``: ``from netmount.commands import cli`` imports the CLI,
            # and ``from netmount import mount`` the public API (no layer: the top)
            out.extend(Import(rel, node.lineno, mod if a.name == "*" else f"{mod}.{a.name}")
                       for a in node.names)
    return out


def layer_of(module: str) -> tuple[str, int] | None:
    """``(package, rank)`` of a netmount module; None if it is not netmount's.  Anything of
    netmount outside the layer packages (``netmount`` itself, its lazy API names,
    ``netmount.__main__``) is the top."""
    parts = module.split(".")
    if parts[0] != "netmount":
        return None
    if len(parts) > 1 and parts[1] in RANKS:
        return parts[1], RANKS[parts[1]]
    return "netmount", TOP


def _under(rel: str, prefixes) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in prefixes)


def violations(imports: list[Import]) -> list[str]:
    """One line per broken rule: ``file:line: imports X: rule``."""
    out = []
    for imp in imports:
        rel, mod = imp.file, imp.module
        top = mod.split(".")[0]

        def bad(rule: str) -> None:
            out.append(f"{rel}:{imp.line}: imports {mod}: {rule}")

        if rel.startswith("cache/") and top == "netmount":
            bad("cache/ is a library of its own and must not import netmount")
        if top in FUSE_BINDINGS and rel != FUSE_FACE:
            bad(f"only {FUSE_FACE} (the FUSE face) may import the FUSE binding")
        if top == "aiohttp" and not _under(rel, AIOHTTP_USERS):
            bad("only netmount/dev/testhub/ may import aiohttp")
        if (mod == CLI or mod.startswith(CLI + ".")) and rel not in CLI_USERS:
            bad("only netmount/__main__.py may import the CLI")
        if not rel.startswith("netmount/") or rel == "netmount/__init__.py":
            continue
        if rel.startswith(TESTHUB) and top == "netmount" and not (
                mod.startswith("netmount.dev.testhub") or mod.startswith("netmount.core")):
            bad("netmount/dev/testhub/ may import only itself and netmount.core")
        target = layer_of(mod)
        if target is None:
            continue
        own_pkg, own_rank = layer_of(module_name(rel))
        if own_pkg == "netmount" and rel != "netmount/__main__.py":
            bad(f"{rel} is in no layer: put it in a layer package or add one to RANKS in tests/test_layers.py")
            continue
        pkg, rank = target
        if pkg != own_pkg and rank >= own_rank:
            bad(f"layer {own_pkg} (rank {own_rank}) may import only lower layers, "
                f"not {pkg} (rank {rank})")
    return out


def module_of(name: str, modules: set[str]) -> str | None:
    """The module an import of ``name`` loads: ``name`` itself, or for ``from m import x`` of
    a name in ``m``, the longest known prefix of it; None if it is not one of ours."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def cycles(files: list[str], imports: list[Import]) -> list[str]:
    """One line per import cycle between the modules of ``files`` (each a strongly connected
    set of two or more modules), naming every import that closes it."""
    names = {module_name(rel) for rel in files}
    edges: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in imports:
        target = module_of(imp.module, names)
        source = module_name(imp.file)
        if target is not None and target != source:
            edges[source].setdefault(target, imp)
    out = []
    for group in _strongly_connected(sorted(names), edges):
        where = sorted(f"{imp.file}:{imp.line} imports {t}" for s in group for t, imp in edges[s].items()
                       if t in group)
        out.append(f"import cycle between {', '.join(sorted(group))}: " + "; ".join(where))
    return sorted(out)


def _strongly_connected(nodes: list[str], edges) -> list[set[str]]:
    """Tarjan's algorithm, iterative: the groups of two or more nodes that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def scan(root: Path) -> tuple[list[str], list[Import]]:
    """The modules under ``root``'s netmount/ and cache/, and all their imports."""
    files = sorted(p for d in ("netmount", "cache") for p in (root / d).rglob("*.py"))
    modules, imports = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        modules.append(rel)
        imports.extend(imports_of(rel, path.read_text()))
    return modules, imports


def oversize(root: Path) -> list[str]:
    """``file:Qualified.name (N lines)`` of every class over ``MAX_CLASS`` and function over
    ``MAX_FUNCTION`` lines in ``root``'s netmount/, templates left out."""
    out = []
    for path in sorted((root / "netmount").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in TEMPLATES:
            continue
        out.extend(_oversize_in(rel, ast.parse(path.read_text(), filename=rel), ""))
    return out


def _oversize_in(rel: str, node: ast.AST, prefix: str) -> list[str]:
    out = []
    for child in ast.iter_child_nodes(node):
        is_class = isinstance(child, ast.ClassDef)
        if is_class or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + child.name
            lines = child.end_lineno - child.lineno + 1
            if lines > (MAX_CLASS if is_class else MAX_FUNCTION):
                out.append(f"{rel}:{name} ({lines} lines)")
            out.extend(_oversize_in(rel, child, name + "."))
        else:
            out.extend(_oversize_in(rel, child, prefix))
    return out


def test_no_class_or_function_is_too_big():
    found = oversize(ROOT)
    new = [f for f in found if f.rpartition(" (")[0] not in OVERSIZE]
    assert not new, (f"over {MAX_CLASS} lines a class, {MAX_FUNCTION} a function "
                     f"(split it along its seams):\n" + "\n".join(new))
    gone = OVERSIZE - {f.rpartition(" (")[0] for f in found}
    assert not gone, f"no longer too big: take them off OVERSIZE in tests/test_layers.py: {sorted(gone)}"


def test_the_size_check_sees_nested_functions_and_methods(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))
    method = "\n".join(f"        y{i} = {i}" for i in range(MAX_FUNCTION - 1))
    inner = "\n".join(f"            z{i} = {i}" for i in range(MAX_FUNCTION))
    src = (f"def big():\n{body}\n\n\ndef small():\n    return 1\n\n\n"
           f"class C:\n    def m(self):\n{method}\n\n    def n(self):\n        def inner():\n{inner}\n")
    (tmp_path / "netmount" / "core").mkdir(parents=True)
    (tmp_path / "netmount" / "core" / "x.py").write_text(src)
    (tmp_path / "netmount" / "proxy").mkdir()
    (tmp_path / TEMPLATES[0]).write_text(f"def render():\n{body}\n")  # a template: never flagged
    assert oversize(tmp_path) == [f"netmount/core/x.py:big ({MAX_FUNCTION + 1} lines)",  # m: just fits
                                  f"netmount/core/x.py:C.n ({MAX_FUNCTION + 2} lines)",  # with inner
                                  f"netmount/core/x.py:C.n.inner ({MAX_FUNCTION + 1} lines)"]


def test_the_code_keeps_the_layers():
    modules, imports = scan(ROOT)
    assert len(modules) > 20 and len(imports) > 100, (len(modules), len(imports))
    # the scan sees what it must judge: lazy imports inside functions, and the FUSE binding
    seen = {(i.file, i.module) for i in imports}
    assert ("netmount/mounting/fs.py", "mfusepy") in seen  # imported inside _bind_libfuse3()
    assert ("netmount/mounting/daemon.py", "netmount.mounting.owner.Daemon") in seen  # inside run()
    problems = violations(imports) + cycles(modules, imports)
    assert not problems, "layering rules broken:\n" + "\n".join(problems)


SYNTHETIC = {
    "cache/disk.py": "from netmount.core import errors\n",
    "netmount/core/units.py": "def f():\n    from netmount.read import reader\n",  # lazy, still up
    "netmount/remote/hub.py": "import fuse\n",
    "netmount/read/reader.py": "from ..remote import fetch\nimport aiohttp\n",  # down: fine; aiohttp: not
    "netmount/mounting/daemon.py": "from netmount.commands import cli\n",
    "netmount/mounting/mounts.py": "from netmount import mount\n",  # the public API is the top
    "netmount/mounting/fs.py": "import mfusepy\nfrom netmount.proxy import nginx\n",  # same rank, other package
    "netmount/dev/testhub/server.py": "import aiohttp\nfrom netmount.remote import hub\n",
    "netmount/dev/demo.py": "from netmount.mounting import lifecycle\n",  # fine
    "netmount/commands/warm.py": "from . import tensorlist\nfrom netmount.dev import demo\n",  # fine
    "netmount/__init__.py": "from netmount.commands import tensorlist\n",  # exempt from ranks
    "netmount/__main__.py": "from netmount.commands.cli import main\n",  # fine
    "netmount/extra/thing.py": "from netmount.core import units\n",  # a package in no layer
    # a cycle through a lazy import: mounting.lifecycle -> mounting.stats -> mounting.lifecycle
    "netmount/mounting/lifecycle.py": "from netmount.mounting.stats import read_stats\n",
    "netmount/mounting/stats.py": "def f():\n    from netmount.mounting import lifecycle\n",
}


def test_the_checker_flags_violations(tmp_path):
    for rel, text in SYNTHETIC.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules, imports = scan(tmp_path)
    assert len(modules) == len(SYNTHETIC)
    found = violations(imports)
    expected = [
        ("cache/disk.py:1:", "must not import netmount"),
        ("netmount/core/units.py:2:", "not read (rank 2)"),
        ("netmount/remote/hub.py:1:", "FUSE binding"),
        ("netmount/read/reader.py:2:", "aiohttp"),
        ("netmount/mounting/daemon.py:1:", "only netmount/__main__.py may import the CLI"),
        ("netmount/mounting/daemon.py:1:", "not commands (rank 5)"),
        ("netmount/mounting/mounts.py:1:", "not netmount (rank 6)"),
        ("netmount/mounting/fs.py:2:", "not proxy (rank 3)"),
        ("netmount/dev/testhub/server.py:2:", "only itself and netmount.core"),
        ("netmount/extra/thing.py:1:", "in no layer"),
    ]
    for where, what in expected:
        assert any(v.startswith(where) and what in v for v in found), (where, what, found)
    assert len(found) == len(expected), "\n".join(found)
    (cycle,) = cycles(modules, imports)  # and only that one: down the layers is no cycle
    assert cycle.startswith("import cycle between netmount.mounting.lifecycle, netmount.mounting.stats:")
    assert "netmount/mounting/stats.py:2 imports netmount.mounting.lifecycle" in cycle, cycle
    assert "netmount/mounting/lifecycle.py:1 imports netmount.mounting.stats" in cycle, cycle


def test_the_cycle_finder_sees_long_cycles_and_only_cycles():
    imps = [Import(f"netmount/core/{a}.py", 1, f"netmount.core.{b}")
            for a, b in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("f", "a")]]
    files = [f"netmount/core/{n}.py" for n in "abcdef"]
    found = cycles(files, imps)
    assert len(found) == 2, found
    assert found[0].startswith("import cycle between netmount.core.a, netmount.core.b, netmount.core.c:")
    assert found[1].startswith("import cycle between netmount.core.d, netmount.core.e:")
