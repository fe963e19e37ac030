"""The package's import structure: no cycle between its packages (lazy imports inside
functions count too), and the kernel stack imports one way (``nn -> kernels ->
tvm_schedules``, ``deploy -> tvm_schedules``)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adderize"


def _unit(module: str) -> str:
    """The package (``adderize.train``) or top-level module (``adderize._api``) of a module."""
    return ".".join(module.split(".")[:2])


def _imports() -> dict[str, dict[str, str]]:
    """``{unit: {imported unit: a file that imports it}}`` over every import statement."""
    graph: dict[str, dict[str, str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        me = _unit(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                names = [f"{base}.{a.name}" for a in node.names] if base == "adderize" else [base]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("adderize.") and _unit(name) != me:
                    graph.setdefault(me, {}).setdefault(_unit(name), str(path))
    return graph


def test_no_import_cycle_between_packages():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in itertools.pairwise(cycle)]
                raise AssertionError("import cycle: " + "; ".join(steps))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_kernel_stack_imports_one_way():
    graph = _imports()
    assert not set(graph.get("adderize.tvm_schedules", {})) & {
        "adderize.nn", "adderize.kernels", "adderize.deploy"
    }, graph.get("adderize.tvm_schedules")  # fmt: skip
    assert "adderize.deploy" not in graph.get("adderize.kernels", {})
    assert "adderize.deploy" not in graph.get("adderize.nn", {})
