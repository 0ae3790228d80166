"""The application's modules import each other without a cycle, counting imports under TYPE_CHECKING.

A cycle makes import order matter and ties modules that should be apart (the bus knows the
hub only through ``sentri.bus.Deliveries``, a stream its hub only through ``StreamOwner``).
"""

import ast
import pathlib
from typing import Dict, List, Set

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("sentri", "handlers")


def modules() -> Dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported_names(name: str, path: pathlib.Path) -> Set[str]:
    """Every dotted name an import statement in the module could load, with its parent packages."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    with_parents = set(names)
    for dotted in names:
        parts = dotted.split(".")
        with_parents.update(".".join(parts[:end]) for end in range(1, len(parts)))
    return with_parents


def import_graph() -> Dict[str, Set[str]]:
    found = modules()
    return {name: (imported_names(name, path) & found.keys()) - {name} for name, path in found.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = stack[stack.index(module):]
            del stack[stack.index(module):]
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_application_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    assert "sentri.hub" in graph and "handlers.events" in graph
    assert cycles(graph) == []


def test_a_cycle_between_two_modules_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
