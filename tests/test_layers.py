"""The package's import graph is layered, with no circle, at module level and inside functions.

Layers, lowest first: a module may import its own layer and the ones below, never one above.
``evaluation.metrics`` (pure functions of outputs and labels) sits low: training's selection
criterion uses it. ``benchmark.cli`` is the benchmark's part of the ``ltu`` command and sits with
``cli``. The package's ``__init__`` (lazy re-exports) is the one module above every layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "ltu_lightning"
LAYERS = [
    {"errors", "utils", "data", "models", "networks"},
    {"audit", "optim", "evaluation.metrics"},
    {"modules", "tracking", "callbacks", "quiet"},
    {"evaluation"},
    {"runner", "benchmark"},
    {"cli", "benchmark.cli", "__main__"},
]


def _modules() -> dict[str, Path]:
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    names = {}
    for path in files:
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import of the package that runs
    (``if TYPE_CHECKING:`` blocks never do)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((base, child.lineno, in_function))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return [f for f in found if f[0] == PACKAGE or f[0].startswith(PACKAGE + ".")]


def layer_of(module: str) -> int:
    """The layer of ``ltu_lightning.<x>[.<y>...]``: the most specific entry of LAYERS."""
    parts = module.split(".")[1:]
    for depth in range(len(parts), 0, -1):
        key = ".".join(parts[:depth])
        for level, names in enumerate(LAYERS):
            if key in names:
                return level
    raise AssertionError(
        f"{module} is in no layer: add its top-level name to LAYERS in tests/test_layers.py"
    )


def _owner(imported: str, modules: dict[str, Path]) -> str:
    """The package module an import loads (``from a.b import c`` loads a.b, or a.b.c)."""
    while imported not in modules and "." in imported:
        imported = imported.rpartition(".")[0]
    return imported


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_every_import_goes_down_the_layers() -> None:
    modules = _modules()
    upward = []
    for name, path in modules.items():
        if name == PACKAGE:
            continue
        for imported, line, in_function in _imports(name, path):
            target = _owner(imported, modules)
            if target != PACKAGE and layer_of(target) > layer_of(name):
                where = "inside a function" if in_function else "at module level"
                upward.append(f"{path.relative_to(SRC)}:{line} imports {target} {where}")
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_the_import_graph_has_no_circle() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == PACKAGE:
            continue
        own = _ancestors(name)
        # importing a.b.c runs a.b's __init__ first, unless the importer is inside a.b
        graph[name] = {
            loaded
            for imported, _, _ in _imports(name, path)
            for loaded in {_owner(imported, modules), *_ancestors(_owner(imported, modules))}
            if loaded not in own and loaded != name
        }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path: Path) -> None:
    """The parser behind both tests finds a function-level import and ranks it above its layer."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from ltu_lightning.cli import main\n    return main\n")
    found = _imports("ltu_lightning.data.mod", source)
    assert found == [("ltu_lightning.cli", 2, True)]
    assert layer_of("ltu_lightning.cli") > layer_of("ltu_lightning.data.mod")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("ltu_lightning.somewhere_new")


def test_no_private_name_is_imported_across_modules() -> None:
    """Helpers shared by several modules are public (``ltu_lightning.utils`` holds most)."""
    private = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ltu_lightning"):
                private += [
                    f"{name} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and node.module != name
                ]
    assert not private, private
