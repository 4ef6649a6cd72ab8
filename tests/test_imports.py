"""Imports of the library: no cycle among its modules, and every import inside a function says why.

Function-level imports count as edges: a cycle they close fails at run time, in whichever order
the modules happen to be imported. An import inside a function is allowed only to defer a heavy
or optional dependency (or an upward layer), and then carries a ``# deferred: why`` comment, on
its own line(s) or just above its run of imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import quantbalance

PKG = Path(quantbalance.__file__).parent


def _module_names(root: Path) -> dict[str, Path]:
    names = {}
    for f in root.rglob("*.py"):
        parts = ["quantbalance", *f.relative_to(root).with_suffix("").parts]
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return names


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool, list[ast.stmt]]]:
    """``(node, inside a function, the statement list holding it)``; TYPE_CHECKING skipped."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for _, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            for child in children:
                if not isinstance(child, ast.AST):
                    continue
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                if isinstance(child, ast.Import | ast.ImportFrom):
                    found.append((child, in_function, children))
                inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                visit(child, inner)

    visit(tree, False)
    return found


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]
) -> list[str]:
    """The modules an import names: ``from p import m`` names ``p.m`` (and ``p`` itself only
    when it takes a name from ``p`` that is not a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    subs = [f"{base}.{a.name}" for a in node.names]
    return [*subs, base] if any(s not in modules for s in subs) else subs


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the library modules it imports, at the top or inside functions.

    ``import a.b.c`` also runs the packages ``a.b`` above it (unless the importer is inside them).
    """
    names = _module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in names}
    for module, f in names.items():
        for node, _, _ in _imports(ast.parse(f.read_text())):
            for target in _targets(node, module, f.name == "__init__.py", names):
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    inside = (module + ".").startswith(dep + ".")
                    if dep in names and dep != module and (not inside or dep == target):
                        graph[module].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (its modules in order, the first repeated at the end), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return []

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return []


def undocumented_deferrals(root: Path) -> dict[str, list[int]]:
    """File -> lines of function-level imports without a ``# deferred`` comment."""
    bad: dict[str, list[int]] = {}
    for f in sorted(root.rglob("*.py")):
        lines = f.read_text().splitlines()
        for node, in_function, siblings in _imports(ast.parse("\n".join(lines))):
            if not in_function:
                continue
            first = node
            i = siblings.index(node)
            while i > 0 and isinstance(siblings[i - 1], ast.Import | ast.ImportFrom):
                i -= 1
                first = siblings[i]  # the start of its run of imports
            span = lines[first.lineno - 2 : node.end_lineno]
            if not any("# deferred" in line for line in span):
                bad.setdefault(f.relative_to(root).as_posix(), []).append(node.lineno)
    return bad


def test_no_import_cycle_even_through_function_level_imports() -> None:
    graph = import_graph(PKG)
    assert len(graph) > 100 and "quantbalance.formats.qtensor" in graph["quantbalance.formats"]
    assert find_cycle(graph) == []


def test_every_function_level_import_says_why_it_is_deferred() -> None:
    assert undocumented_deferrals(PKG) == {}


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"a.py": "import quantbalance.b\n", "b.py": "def f():\n    from quantbalance import a\n"},
         ["quantbalance.a", "quantbalance.b", "quantbalance.a"]),
        ({"a.py": "from quantbalance.p.c import x\n", "p/c.py": "x = 1\n",
          "p/__init__.py": "from quantbalance import a\n"},
         ["quantbalance.a", "quantbalance.p", "quantbalance.a"]),
        ({"a.py": "from . import b\n", "b.py": "x = 1\n"}, []),
        ({"p/__init__.py": "from quantbalance.p.c import x\n", "p/d.py": "x = 1\n",
          "p/c.py": "from quantbalance.p import d\n"}, []),
    ],
)  # fmt: skip
def test_the_cycle_finder(tmp_path: Path, files: dict[str, str], cycle: list[str]) -> None:
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    assert find_cycle(import_graph(tmp_path)) == cycle


def test_the_comment_check(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import os\n"
        "def f():\n    import json\n"
        "def g():\n    import gzip  # deferred: why\n"
        "def h():\n    # deferred: why\n    import bz2\n    import lzma\n\n    return 1\n"
        "def k():\n    x = 1\n    import csv\n"
    )
    assert undocumented_deferrals(tmp_path) == {"m.py": [3, 14]}
