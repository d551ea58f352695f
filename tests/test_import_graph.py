"""The package's modules import one another without a circle: every ``import`` of bogc_cli (at the top of
a module or inside a function; ``if TYPE_CHECKING:`` blocks aside), plus the method modules that
``bogc_cli.fusion`` loads by name, form a graph with no cycle. A circle (e.g. recipe.py validating with
the method registry while a method imports its base class from recipe.py) makes the import order matter
and forces imports into functions to dodge it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bogc_cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """The bogc_cli modules ``tree`` imports, with the packages above them (importing a submodule runs
    its package's ``__init__``)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {m for m in found if m in modules}


def _ancestors(name: str) -> set[str]:
    """The packages a module lies in: always initialised before it, so no edge of its own."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imported(ast.parse(path.read_text()), set(files)) - _ancestors(name)
             for name, path in files.items()}
    from bogc_cli.fusion import METHOD_MODULES  # imported by name (importlib) in fusion/__init__.py

    graph["bogc_cli.fusion"] |= {f"bogc_cli.fusion.{m}" for m in METHOD_MODULES} & set(files)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "bogc_cli.fusion.bogc" in graph["bogc_cli.fusion"] and "bogc_cli.schema" in graph["bogc_cli.recipe"]
    assert cycles(graph) == []


def test_recipe_validation_reaches_the_option_models_one_way():
    graph = import_graph()
    assert {"bogc_cli.data.options", "bogc_cli.fusion"} <= graph["bogc_cli.recipe"]
    for module in ("bogc_cli.data.options", "bogc_cli.fusion", "bogc_cli.fusion.base", "bogc_cli.data.synthetic"):
        assert "bogc_cli.recipe" not in graph[module], module
