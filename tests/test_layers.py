"""The package's import graph, read from the source with ``ast`` (STYLE.md 15).

Every import counts, including those inside functions: a lazy import is still a dependency.
Imports under ``if TYPE_CHECKING:`` are kept in a second graph, so a cycle that exists only for
annotations is found too. The test fails naming the cycle or the edge that breaks a layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cave"

LOWER_LAYERS = ("runtime", "agent", "models", "security", "approvals", "checkpoint")
FORBIDDEN = [
    *((f"cave.{layer}", "cave.kernel") for layer in LOWER_LAYERS),
    ("cave.models", "cave.runtime"),
    ("cave.security", "cave.agent"),
    ("cave.approvals", "cave.runtime"),
    ("cave.approvals", "cave.agent"),
    ("cave.approvals", "cave._session"),
    ("cave.checkpoint", "cave.agent"),
]
"""(importer prefix, imported prefix) pairs that DESIGN.md's layering rules out."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    typing_only: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, typing_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), typing_only)
        else:
            yield from _imports(node, typing_only)


def _known_modules() -> set[str]:
    return {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *(filter(None, [node.module]))])


def edges() -> list[Edge]:
    known = _known_modules()
    found: list[Edge] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        for node, typing_only in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in known else base)
            for target in targets:
                # "import cave.x.y" means cave.x.y; walk up to the nearest module we have.
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target.startswith("cave") and target != module:
                    found.append(Edge(module, target, node.lineno, typing_only))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def _graph(include_typing: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges():
        if include_typing or not e.typing_only:
            # A package's __init__ re-exporting its own submodules is not a dependency
            # of the submodule on the package.
            if e.target == e.source.rpartition(".")[0] and e.source.startswith(e.target):
                continue
            graph.setdefault(e.source, set()).add(e.target)
    return graph


def _describe(cycle: list[str]) -> str:
    members = set(cycle)
    lines = [
        f"  {e.source}:{e.line} -> {e.target}{' (typing only)' if e.typing_only else ''}"
        for e in edges()
        if e.source in members and e.target in members
    ]
    return "import cycle between " + ", ".join(cycle) + ":\n" + "\n".join(lines)


@pytest.mark.parametrize("include_typing", [False, True], ids=["run-time", "with-typing"])
def test_no_import_cycles(include_typing: bool) -> None:
    cycles = _cycles(_graph(include_typing))
    assert not cycles, "\n\n".join(_describe(c) for c in cycles)


def test_layers_point_down() -> None:
    wrong = [
        f"{e.source}:{e.line} imports {e.target}"
        for e in edges()
        for importer, imported in FORBIDDEN
        if (e.source == importer or e.source.startswith(importer + "."))
        and (e.target == imported or e.target.startswith(imported + "."))
    ]
    assert not wrong, "layering broken (DESIGN.md section 2):\n" + "\n".join(wrong)


def test_the_graph_sees_imports_inside_functions() -> None:
    """A guard against the test going blind: known lazy imports must be in the graph."""
    found = {(e.source, e.target) for e in edges()}
    assert ("cave._session", "cave.runtime._namespace") in found


MAX_LINES = 500
"""STYLE.md 13: one concept per module, under 500 lines; split a bigger one along a seam."""


def test_no_module_over_500_lines() -> None:
    too_long = sorted(
        (n, str(path.relative_to(PACKAGE.parent)))
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    )
    assert not too_long, f"modules over {MAX_LINES} lines (STYLE.md 13):\n" + "\n".join(
        f"  {name}: {n} lines" for n, name in too_long
    )
