"""docs/layout.md lists every module of src/thinkfast, and nothing that is gone.

The layout is the first fenced block of the page: a tree indented two spaces per level, a
directory ending in "/", each entry followed by what it holds. A package's ``__init__.py`` is
covered by its directory's line (the top-level one is listed, as it holds the Python API).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "thinkfast"
LAYOUT = ROOT / "docs" / "layout.md"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def documented() -> tuple[set[str], dict[str, str]]:
    """(paths under src/thinkfast the tree names, path -> its description)."""
    block = FENCE.search(LAYOUT.read_text(encoding="utf-8")).group(1)
    lines = block.splitlines()
    assert lines[0].strip() == "src/thinkfast/", "the tree starts at src/thinkfast/"
    stack: list[str] = []
    paths, described = set(), {}
    for line in lines[1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0 and indent >= 2, f"indent of {line!r} is not two spaces per level"
        level = indent // 2 - 1
        assert level <= len(stack), f"{line!r} is nested under no directory"
        name, _, text = line.strip().partition(" ")
        del stack[level:]
        path = "/".join([*stack, name.rstrip("/")])
        paths.add(path)
        described[path] = text.strip()
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths, described


def modules() -> set[str]:
    """Every module and package directory under src/thinkfast (``__init__.py`` files but the
    top-level one are their directory's entry)."""
    out = set()
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE)
        if "__pycache__" in rel.parts:
            continue
        out.update("/".join(rel.parts[:i]) for i in range(1, len(rel.parts)))  # its directories
        if p.name != "__init__.py" or rel == Path("__init__.py"):
            out.add(rel.as_posix())
    return out


def test_every_module_is_in_the_layout_and_nothing_else():
    paths, _ = documented()
    assert sorted(modules() - paths) == [], "modules missing from docs/layout.md"
    stale = {p for p in paths if not (PACKAGE / p).exists()}
    assert sorted(stale) == [], "docs/layout.md lists paths that do not exist"


def test_every_entry_says_what_it_holds():
    _, described = documented()
    assert [p for p, text in described.items() if not text] == []


def test_the_checker_sees_a_missing_module(tmp_path, monkeypatch):
    """The check is not vacuous: a layout without one module's line fails it."""
    import sys

    text = LAYOUT.read_text(encoding="utf-8")
    cut = tmp_path / "layout.md"
    cut.write_text("\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("sampling.py")))
    monkeypatch.setattr(sys.modules[__name__], "LAYOUT", cut)
    paths, _ = documented()
    assert {"eval/sampling.py", "demo/sampling.py"} <= modules() - paths


def test_the_readme_and_the_docs_index_link_the_layout():
    assert "docs/layout.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(layout.md)" in (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
