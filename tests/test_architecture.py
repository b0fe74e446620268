"""The import contract: slmctl's layers import downward only, and no module imports itself back.

Every ``import`` statement counts, at module level or inside a function (a function-level import is how
an upward dependency hides). Static (AST) analysis: nothing is imported and each file is parsed once per
session (about a second on a quiet machine). The picture and the reasons are in docs/architecture.md;
LAYERS below is the one list of layers.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "slmctl"

# Top to bottom. A module may import its own layer's packages and any layer below, never one above.
# Names are the first component under slmctl (a package or a top-level module). Within a layer the
# packages may import each other, as long as no cycle forms (test_no_import_cycle).
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("api",),
    ("pipelines",),
    ("methods", "surgery", "eval", "targets", "profiling", "layerwise"),
    ("io", "arch", "calib", "calib_chat", "hf", "device", "provenance"),
    ("errors", "registry", "recipe", "paths", "__init__"),
]


@functools.lru_cache(maxsize=1)
def _modules() -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is a package __init__)} for every module of slmctl."""
    mods = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def _targets(mod: str, is_pkg: bool, node: ast.AST, mods) -> list[str]:
    """The slmctl modules an import statement reaches (``from pkg import name`` reaches pkg.name if a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".")[: len(mod.split(".")) + (1 if is_pkg else 0) - node.level]
            pkg = ".".join(base + ([node.module] if node.module else []))
        else:
            pkg = node.module or ""
        names = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in mods else pkg for a in node.names]
    out = []
    for name in names:
        if name.split(".")[0] != "slmctl":
            continue
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        if name != mod:
            out.append(name)
    return out


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, dict[str, int]]:
    """{module: {imported slmctl module: line of the first such import}}, function-level imports included."""
    mods = _modules()
    graph: dict[str, dict[str, int]] = {}
    for mod, (path, is_pkg) in mods.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(mod, is_pkg, node, mods):
                    edges.setdefault(t, node.lineno)
        graph[mod] = edges
    return graph


def layer_of(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{mod}: slmctl/{top} is in no layer; add it to LAYERS in tests/test_architecture.py "
                         "and to the picture in docs/architecture.md")


def _where(mod: str) -> str:
    path, is_pkg = _modules()[mod]
    return str(path.relative_to(ROOT.parent))


def upward_imports(graph) -> list[str]:
    bad = []
    for mod, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            if layer_of(target) < layer_of(mod):
                bad.append(f"{_where(mod)}:{line} imports {target} (layer {LAYERS[layer_of(target)]}, above "
                           f"{LAYERS[layer_of(mod)]})")
    return bad


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # iterative enough: slmctl's depth is far below the recursion limit
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer():
    for mod in _modules():
        layer_of(mod)


def test_imports_go_downward_only():
    bad = upward_imports(import_graph())
    assert not bad, "upward imports (see docs/architecture.md for where code goes):\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles between modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_what_they_should():
    """The checker itself: an upward function-level import and a two-module cycle are both found."""
    graph = {"slmctl.io.x": {"slmctl.api": 3}, "slmctl.api": {"slmctl.io.x": 1}}
    assert layer_of("slmctl.api") < layer_of("slmctl.io.x")
    assert cycles(graph) == [["slmctl.api", "slmctl.io.x"]]
    mods = {"slmctl.io.x": None, "slmctl.api": None, "slmctl.io": None, "slmctl": None}
    tree = ast.parse("def f():\n    from ..api import export\n    from .. import api\n    import slmctl.api\n")
    found = [t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             for t in _targets("slmctl.io.x", False, node, mods)]
    assert found == ["slmctl.api"] * 3


def test_api_reexports_real_signatures():
    """slmctl.api is a face: its verbs are the pipelines' own functions, not *args/**kwargs forwarders."""
    import inspect

    from slmctl import api

    for name in api.__all__:
        obj = getattr(api, name)
        if not callable(obj) or isinstance(obj, type) or not hasattr(obj, "__module__"):
            continue
        if inspect.isfunction(obj):
            assert obj.__module__ != "slmctl.api", f"api.{name} is defined in api.py; define it in a pipeline"
            params = inspect.signature(obj).parameters.values()
            assert not any(p.kind is p.VAR_POSITIONAL for p in params), f"api.{name} takes *args"


# Pairs allowed to share a file name (none: methods/prune/width.py became width_importance.py); a new pair fails.
KNOWN_SHARED_NAMES: dict[str, set[str]] = {}


def test_module_names_are_unique():
    """One name, one module: two modules of the same file name at two levels (slmctl/imatrix.py beside
    io/imatrix.py, llamacpp.py beside targets/llamacpp.py) read as one thing and are two."""
    by_name: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in _modules().items():
        if not is_pkg:
            by_name.setdefault(path.name, set()).add(str(path.relative_to(ROOT.parent)))
        elif path.parent.parent == ROOT:  # a top-level package (slmctl/profile/ beside pipelines/profile.py);
            # methods/<verb>/ beside pipelines/<verb>.py is the layout DESIGN.md draws
            by_name.setdefault(path.parent.name + ".py", set()).add(str(path.parent.relative_to(ROOT.parent)) + "/")
    shared = {n: p for n, p in by_name.items() if len(p) > 1 and KNOWN_SHARED_NAMES.get(n) != p}
    lines = [f"{n}: {sorted(p)}" for n, p in sorted(shared.items())]
    assert not shared, "modules that share a name:\n" + "\n".join(lines)
    for old in ("imatrix.py", "llamacpp.py", "profile.py", "layerwise.py"):  # the pairs issue 17 named
        assert len(by_name.get(old, ())) <= 1, by_name[old]
