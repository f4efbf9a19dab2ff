"""The architecture as tools see it: the import graph has no cycles, and a type checker resolves the packages.

Module names follow pyproject's package-dir mapping (``edgeseg.runtime`` is ``runtime/``). Every import of an
``edgeseg`` module counts, also inside functions: a cycle dodged by a function-level import is still a cycle.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"edgeseg": REPO / "edgeseg", "edgeseg.bundle": REPO / "bundle", "edgeseg.runtime": REPO / "runtime",
           "edgeseg.export": REPO / "export"}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _from_target(node: ast.ImportFrom, base: str) -> str:
    """The module a ``from ... import`` names, relative imports resolved against the package ``base``."""
    if not node.level:
        return node.module or ""
    anchor = base.split(".")
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    base = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(node, base)
            names = [f"{target}.{a.name}" for a in node.names] + [target]
        for name in names:
            # the most specific known module the import names (a symbol import names its module)
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {m: _imports(p, m, known) for m, p in modules.items()}
    # a package's __init__ that re-exports its own submodules is not a design edge back up
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not m.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_import_graph_has_no_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_runtime_never_imports_the_export_side():
    graph = import_graph()
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith(("edgeseg.runtime", "edgeseg.bundle"))
                 for d in deps if d.startswith("edgeseg.export"))
    assert not bad, bad


def _package_of(module: str, path: Path) -> str:
    """The package a module belongs to: its folder (a package's ``__init__`` is the package itself)."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def private_imports() -> set[tuple[str, str]]:
    """(importer, name) for each ``from X import _name`` (a function, class, constant or submodule) where X is an
    edgeseg module of another package than the importer's (``edgeseg.runtime.oneshot`` and
    ``edgeseg.runtime.watch`` are different packages). Private modules on the import path, such as
    ``edgeseg._deps``, are the top package's shared helpers and not counted."""
    modules = _modules()
    found: set[tuple[str, str]] = set()
    for module, path in modules.items():
        base = _package_of(module, path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _from_target(node, base)
            if target not in modules or _package_of(target, modules[target]) == base:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add((module, f"{target}.{alias.name}"))
    return found


def test_no_module_imports_a_private_name_of_another_package():
    bad = sorted(f"{m} imports {name}" for m, name in private_imports())
    assert not bad, "private names imported across packages (make them public or move the code):\n" + "\n".join(bad)



def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_type_checker_passes_on_the_runtime_and_the_export_side():
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "typecheck.py"), "--with-export"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_checkout_imports_the_packages_without_installing(tmp_path):
    """`import edgeseg.runtime` from a checkout on sys.path, with no editable-install finder (.pth not run)."""
    import sysconfig

    code = ("import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]); "
            "import edgeseg.runtime, edgeseg.bundle, edgeseg.runtime.segment; print(edgeseg.runtime.__file__)")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(REPO), sysconfig.get_paths()["purelib"]],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()) == REPO / "runtime" / "__init__.py"
