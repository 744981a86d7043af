"""No import cycles in baton's modules, counting the imports made inside functions and only
for type checking too; and no module imports another module's private names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import baton

ROOT = Path(baton.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(tree: ast.AST, module: str, known: set[str], runtime_only: bool) -> set[str]:
    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    def walk(node: ast.AST, deferred: bool) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            later = deferred or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            )
            later = later or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom) and not (runtime_only and later):
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    names = [base, *(f"{base}.{a.name}" for a in child.names)]
                for name in names:
                    target = resolve(name) if name.startswith("baton") else None
                    if target is not None and target != module:
                        yield target
            yield from walk(child, later)

    return set(walk(tree, False))


def _cycles(runtime_only: bool) -> list[list[str]]:
    modules = _modules()
    graph = {
        name: _imports(ast.parse(path.read_text()), name, set(modules), runtime_only)
        for name, path in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            strong(v)
    return cycles


def test_no_module_imports_itself_back_at_run_time() -> None:
    assert _cycles(runtime_only=True) == []


def test_no_import_cycle_even_for_type_checking_or_inside_functions() -> None:
    assert _cycles(runtime_only=False) == []


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("baton"):
                private = [
                    a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"
                ]
                found += [f"{name} imports {node.module}.{p}" for p in private]
    assert found == []
