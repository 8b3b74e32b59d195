"""The source tree's import graph, computed from the code: no cycle, and no import that points
up a layer. common is below frontend and worker (siblings, which never import each other),
and the instance layer sits above both (docs/design.md, "Layers")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
RANK = {"common": 0, "frontend": 1, "worker": 1, "instance": 2}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["mxserve", *parts])


def _imports(path: Path, name: str) -> set[str]:
    """Every mxserve module this file imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {imported for imported in found if imported.startswith("mxserve.")}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for layer in RANK for path in (ROOT / layer).rglob("*.py")}
    return {name: {imported for imported in _imports(path, name) if imported in files}
            for name, path in files.items()}


GRAPH = _graph()


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_the_graph_covers_every_layer():
    assert {_layer(module) for module in GRAPH} == set(RANK)
    assert sum(len(edges) for edges in GRAPH.values()) > 100  # the parser sees the imports


@pytest.mark.parametrize("layer", sorted(RANK))
def test_no_import_points_up_or_sideways(layer):
    wrong = sorted(f"{module} -> {imported}"
                   for module, edges in GRAPH.items() if _layer(module) == layer
                   for imported in edges
                   if _layer(imported) != layer and RANK[_layer(imported)] >= RANK[layer])
    assert wrong == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


MAX_LINES = 400  # past this a module holds more than one concept; split it


def test_no_source_file_is_over_400_lines():
    folders = [*RANK, "tests", "scripts", "benchmarks", "examples"]
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
             for folder in folders for path in (ROOT / folder).rglob("*.py")}
    assert len(sizes) > 100
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}
