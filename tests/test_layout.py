"""The package's shape: no import cycle anywhere, leaf modules import nothing of rotafx, the stage runtime no profiler.

The imports are read from the source (every ``import`` and ``from ... import`` of every module,
those inside functions and under ``TYPE_CHECKING`` too), so a cycle held together by an import
inside a function is found as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rotafx"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The rotafx modules ``name`` imports (a name imported from a package counts when it is a module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            targets = [src] + [f"{src}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out - {"rotafx"}  # the package face imports everything; nothing imports it back


GRAPH = {m: _imports(m) for m in MODULES if m != "rotafx"}


def _closure(start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        m = stack.pop()
        for n in GRAPH.get(m, ()):
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return seen


def test_the_graph_was_read() -> None:
    assert "rotafx.layers" in GRAPH["rotafx.profile"] and "rotafx.wire" in GRAPH["rotafx.ops"]
    assert "rotafx.frontends.pytorch.annotate" in GRAPH["rotafx.frontends.pytorch.graph"]


def test_no_import_cycle() -> None:
    cycles = sorted(" -> ".join([m, *path]) for m in GRAPH for path in _paths_back(m))
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:10])


def _paths_back(start: str) -> list[list[str]]:
    """One import path from ``start`` back to itself, if any."""
    stack, seen = [(start, [])], set()
    while stack:
        m, path = stack.pop()
        for n in GRAPH.get(m, ()):
            if n == start:
                return [[*path, n]]
            if n not in seen:
                seen.add(n)
                stack.append((n, [*path, n]))
    return []


@pytest.mark.parametrize("leaf", ["rotafx.wire", "rotafx.units", "rotafx.objective"])
def test_leaf_modules_import_nothing_of_rotafx(leaf: str) -> None:
    assert GRAPH[leaf] == set(), f"{leaf} imports {sorted(GRAPH[leaf])}"


@pytest.mark.parametrize("module", ["rotafx.runtime.distributed.stage", "rotafx.runtime.distributed.driver",
                                    "rotafx.plan.load", "rotafx.ops", "rotafx.runtime.loaded"])
def test_the_stage_runtime_imports_no_profiler_or_solver(module: str) -> None:
    reached = _closure(module)
    banned = [m for m in reached if m.startswith(("rotafx.profile", "rotafx.layers", "rotafx.frontends",
                                                  "rotafx.solve", "rotafx.costmodel", "rotafx.backend",
                                                  "rotafx.topology", "rotafx.estimate", "rotafx.plan.write"))]
    assert not banned, f"{module} reaches {sorted(banned)}"
