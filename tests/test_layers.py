"""The package's imports point down the design's layer list and close no cycle.

Read from the source (every ``import``, also those inside functions), so a lazy
import cannot hide an upward edge. Layers, bottom first (shared/DESIGN.md):
neutral helpers -> patterns -> attention -> models -> objectives / data ->
training -> analysis / bench -> cli. Packages on one level do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ernie_sparse"

# Package (first name under ernie_sparse) -> level; a module may import its own
# package and any package on a lower level.
LEVELS = {
    "safety": 0,
    "files": 0,
    "cli_args": 0,
    "plotting": 0,
    "patterns": 1,
    "attention": 2,
    "models": 3,
    "objectives": 4,
    "data": 4,
    "training": 5,
    "analysis": 6,
    "bench": 6,
    "(top)": 7,  # ernie_sparse/__init__.py, __main__.py and cli.py
}
TOP_MODULES = {"ernie_sparse", "ernie_sparse.__main__", "ernie_sparse.cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """ernie_sparse modules that ``path`` imports, resolved to module names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ernie_sparse")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("ernie_sparse"):
                continue
            found.add(target)
            for alias in node.names:  # "from . import x" names a module x
                if _is_module(f"{target}.{alias.name}"):
                    found.add(f"{target}.{alias.name}")
    found.discard(name)
    return found


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


def level_of(module: str) -> tuple[str, int]:
    top = "(top)" if module in TOP_MODULES else module.split(".")[1]
    if top not in LEVELS:
        raise AssertionError(f"module {module} is in no layer; add {top!r} to LEVELS")
    return top, LEVELS[top]


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        package, level = level_of(module)
        for target in sorted(targets):
            target_package, target_level = level_of(target)
            if target_package == package:
                continue
            if target_level >= level:
                found.append(f"{module} (level {level}) imports {target} (level {target_level})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules, ignoring a package's ``__init__`` re-exports of its own
    modules (an ``__init__`` importing its children is not a cycle of the design)."""
    trimmed = {
        module: {t for t in targets if not _reexport(module, t) and not _reexport(t, module)}
        for module, targets in graph.items()
    }
    return cycles(trimmed)


def _reexport(package: str, module: str) -> bool:
    return (
        module.startswith(package + ".") and (PACKAGE.parent / package.replace(".", "/")).is_dir()
    )


def test_every_module_is_in_a_layer() -> None:
    for module in import_graph():
        level_of(module)


def test_imports_only_point_down_the_layer_list() -> None:
    assert upward_imports(import_graph()) == []


def test_no_import_cycle() -> None:
    assert package_cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    graph = {
        "ernie_sparse.patterns.a": {"ernie_sparse.training.loop"},
        "ernie_sparse.training.loop": {"ernie_sparse.training.config"},
        "ernie_sparse.training.config": {"ernie_sparse.training.loop"},
        "ernie_sparse.analysis.x": {"ernie_sparse.bench.common"},
    }
    assert upward_imports(graph) == [
        "ernie_sparse.patterns.a (level 1) imports ernie_sparse.training.loop (level 5)",
        "ernie_sparse.analysis.x (level 6) imports ernie_sparse.bench.common (level 6)",
    ]
    assert cycles(graph) == [["ernie_sparse.training.config", "ernie_sparse.training.loop"]]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..attention import sparse_attention", "ernie_sparse.attention"),
        ("from . import reachability", "ernie_sparse.models.reachability"),
        ("import ernie_sparse.patterns", "ernie_sparse.patterns"),
    ],
)
def test_relative_imports_are_resolved(tmp_path, monkeypatch, source, expected) -> None:
    path = PACKAGE / "models" / "_probe_for_layers_test.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert expected in imported_modules(path)
