"""The size and import limits of issue 14, checked on the source tree.

No module in ``src/fastimg`` over 900 lines, no class over 600 lines, and no cycle among the
imports each module runs when it is imported (module level, outside ``if TYPE_CHECKING``;
imports inside functions are the documented way to keep heavy modules lazy and are not
counted). A package's ``__init__`` is not counted as imported by its own submodules (Python
runs it first whatever they import), so a cycle means two modules that need each other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "fastimg"
MAX_MODULE_LINES = 900
MAX_CLASS_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = ("fastimg",) + p.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(name: str, tree: ast.Module) -> set[str]:
    """The fastimg modules ``name`` imports when it is imported."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
            elif isinstance(node, ast.If) and not _is_type_checking(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    deps = {m for m in found if m in MODULES and m != name}
    # a submodule does not "import" the packages it lives in: Python runs them first anyway
    return {m for m in deps if not name.startswith(m + ".")}


def test_no_module_over_900_lines():
    long = {n: p.read_text().count("\n") for n, p in MODULES.items()}
    assert {n: c for n, c in long.items() if c > MAX_MODULE_LINES} == {}


def test_no_class_over_600_lines():
    found = {}
    for n, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    found[f"{n}.{node.name}"] = size
    assert found == {}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    # the checker itself, on a hand-made graph: a -> b -> c -> a is one cycle, d is alone
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_cycle():
    graph = {n: _top_level_imports(n, ast.parse(p.read_text())) for n, p in MODULES.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("source, expected", [
    ("from fastimg.index.store import Store\n", {"fastimg.index.store"}),
    ("from . import store\n", {"fastimg.index.store"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fastimg.index.store import Store\n", set()),
    ("def f():\n    from fastimg.index.store import Store\n", set()),
])
def test_import_reader_counts_what_runs_at_import(source, expected):
    assert _top_level_imports("fastimg.index.caches", ast.parse(source)) == expected
