"""Import cycles in the robustlab package: strongly connected components of the module graph and of the package graph.

Every import counts, lazy ones inside functions included (a cycle broken only by a lazy import is still a cycle in
the design). A package is the first two dotted parts (``robustlab.eval``; a top-level module is its own package).
Run ``python3 scripts/cycles.py [PACKAGE_FOLDER]``; ``tests/test_structure.py`` imports :func:`cycles`.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(package: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of every module under ``package`` (a package is named by its ``__init__.py``)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imported(module: str, node: ast.Import | ast.ImportFrom, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The modules of ``known`` that one import statement names (``from pkg import mod`` names ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level else []
    source = ".".join(base + ([node.module] if node.module else []))
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]


def import_graph(package: Path = ROOT / "robustlab") -> dict[str, set[str]]:
    """``{module: modules it imports}`` within ``package``, every import statement included (top-level or lazy)."""
    known = modules(package)
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                is_package = path.name == "__init__.py"
                edges[name] |= {t for t in _imported(name, node, is_package, known) if t in known and t != name}
    return dict(edges)


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node (each one cycle or several), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
            found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for v in sorted(nodes):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(c for c in found if len(c) > 1)


def package_of(module: str) -> str:
    """``robustlab.eval.run`` -> ``robustlab.eval``; ``robustlab.io`` is its own package."""
    return ".".join(module.split(".")[:2])


def cycles(package: Path = ROOT / "robustlab") -> tuple[list[list[str]], list[list[str]]]:
    """(module cycles, package cycles) of ``package``, each a list of strongly connected components."""
    edges = import_graph(package)
    nodes = list(modules(package))
    between: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        between[package_of(a)] |= {package_of(b) for b in targets if package_of(b) != package_of(a)}
    return strongly_connected(nodes, edges), strongly_connected(sorted({package_of(m) for m in nodes}), between)


def main() -> int:
    """Print the cycles; exit status 1 when there is any."""
    module_cycles, package_cycles = cycles(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "robustlab")
    print("module cycles (SCCs):", len(module_cycles))
    for component in module_cycles:
        print("  ", component)
    print("package cycles:", len(package_cycles))
    for component in package_cycles:
        print("  ", component)
    return 1 if module_cycles or package_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
