"""The package's import structure: no cycles, and no private names taken across packages.

Every import counts, including those inside functions (a function-level import hides a cycle
from the interpreter, not from a reader).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "thinkfast").rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(mods: dict[str, Path]):
    """(importer, imported module, names) for every thinkfast import of every module."""
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        yield name, a.name, ()
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = tuple(a.name for a in node.names)
                if target in mods:
                    yield name, target, names
                for n in names:  # "from . import x" imports the module x
                    if f"{target}.{n}" in mods:
                        yield name, f"{target}.{n}", ()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules_or_packages():
    mods = _modules()
    modules, packages = defaultdict(set), defaultdict(set)
    for a, b, _ in _imports(mods):
        if a != b:
            modules[a].add(b)
        if _package(a) != _package(b):
            packages[_package(a)].add(_package(b))
    assert _cycles(modules) == []
    assert _cycles(packages) == []


def test_no_private_name_is_imported_from_another_package():
    found = [(a, b, n) for a, b, names in _imports(_modules()) for n in names
             if n.startswith("_") and not n.startswith("__") and _package(a) != _package(b)]
    assert found == []


def test_the_checker_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
