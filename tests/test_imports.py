"""The package's imports go one way: no cycles, none hidden inside functions.

The graph is read from the source (``ast``), every ``import`` statement at module
level, those under ``if TYPE_CHECKING:`` included: a cycle through type hints is a
cycle of the design, even if Python never runs it. A package's ``__init__`` running
before its submodules is not an edge. The layers, lowest first, are drawn in
docs/concepts.md ("How the package is layered").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import torch_blue_pyro

PACKAGE = Path(torch_blue_pyro.__file__).resolve().parent
NAME = "torch_blue_pyro"

#: Modules below ``vi``: what they import must not include ``vi`` or anything in it.
BELOW_VI = (
    "torch_blue_pyro._checks",
    "torch_blue_pyro._pyro_compat",
    "torch_blue_pyro.amp",
    "torch_blue_pyro.functional",
    "torch_blue_pyro.metrics",
    "torch_blue_pyro.plots",
    "torch_blue_pyro.sites",
    "torch_blue_pyro.uncertainty",
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = (NAME, *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's modules an import statement names (a module or a name in one)."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        if node.level:
            is_package = MODULES[module].name == "__init__.py"
            anchor = module.split(".")
            anchor = anchor[: len(anchor) - node.level + is_package]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        # ``from package import submodule`` depends on the submodule (the package's
        # __init__ running first is no edge); any other name, on ``base`` itself.
        candidates = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
            for alias in node.names
        ]
    return [name for name in candidates if name in MODULES and name != module]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_targets(module, node))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_of_the_package_hides_inside_a_function() -> None:
    hidden = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and (
                    _targets(module, node)
                    or (isinstance(node, ast.ImportFrom) and node.level)
                ):
                    hidden.append(f"{module}:{node.lineno}")
    assert hidden == []


@pytest.mark.parametrize("module", BELOW_VI)
def test_the_lower_layers_do_not_import_vi(module: str) -> None:
    graph = _graph()
    reached, frontier = set(), [module]
    while frontier:  # everything the module imports, directly or not
        for successor in graph[frontier.pop()] - reached:
            reached.add(successor)
            frontier.append(successor)
    into_vi = sorted(name for name in reached if name.startswith(f"{NAME}.vi"))
    assert into_vi == [], f"{module} reaches {into_vi}"
