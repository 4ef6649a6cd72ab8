"""Imports point downwards: nothing in the library's lower layers imports ``quantbalance.tasks``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import quantbalance

PKG = Path(quantbalance.__file__).parent
LOWER = ("formats", "calibration", "nn", "transform", "algorithms", "search", "deploy",
         "evaluate", "report", "frontends", "bench")  # fmt: skip
OPTIONAL = ("exports",)  # walked once it exists
FORBIDDEN = "quantbalance.tasks"


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """Every module an AST imports (absolute, relative resolved against ``package``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def forbidden_imports(root: Path) -> list[str]:
    bad = []
    for layer in (*LOWER, *OPTIONAL):
        for f in sorted((root / layer).rglob("*.py")):
            package = "quantbalance." + ".".join(f.relative_to(root).parent.parts)
            lines = {
                line
                for line, mod in imported_modules(f.read_text(), package)
                if mod == FORBIDDEN or mod.startswith(FORBIDDEN + ".")
            }
            bad += [f"{f.relative_to(root)}:{line} imports {FORBIDDEN}" for line in sorted(lines)]
    return bad


def test_lower_layers_never_import_tasks() -> None:
    assert all((PKG / layer).is_dir() for layer in LOWER)
    assert forbidden_imports(PKG) == []


@pytest.mark.parametrize(
    "code",
    [
        "from quantbalance.tasks import load",
        "import quantbalance.tasks.minilm",
        "from quantbalance import tasks",
        "from ..tasks import base",
        "def f():\n    from quantbalance.tasks.base import Task",
    ],
)
def test_the_walker_catches_every_import_form(tmp_path: Path, code: str) -> None:
    (tmp_path / "search").mkdir()
    for layer in LOWER:
        (tmp_path / layer).mkdir(exist_ok=True)
    (tmp_path / "search" / "x.py").write_text(code + "\n")
    assert len(forbidden_imports(tmp_path)) == 1


# shared/DESIGN.md's layers, bottom (0) to top; a module may import its own layer and below.
RANKS = {
    0: ("errors", "version", "progress", "args", "io", "hardware", "formats", "options", "plan",
        "lowering"),
    1: ("transform", "nn", "calibration"),
    2: ("algorithms", "quantize_steps"),
    3: ("evaluate", "deploy", "analysis", "quantize", "quantize_offload", "qat"),
    4: ("search",),
    5: ("frontends", "exports"),
    6: ("cli", "report", "tasks", "bench", "demo", "__init__", "__main__"),
}  # fmt: skip
RANK = {unit: rank for rank, units in RANKS.items() for unit in units}


def _unit(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def upward_imports(root: Path) -> list[str]:
    """Imports (module- or function-level) from a lower layer of DESIGN.md into a higher one."""
    bad = []
    for f in sorted(root.rglob("*.py")):
        unit = _unit(f, root)
        package = "quantbalance." + ".".join(f.relative_to(root).parent.parts)
        for node in _runtime_imports(ast.parse(f.read_text())):
            targets = {
                mod.split(".")[1]
                for _, mod in imported_modules(ast.unparse(node), package.rstrip("."))
                if mod.startswith("quantbalance.")
            }
            bad += [
                f"{f.relative_to(root)}:{node.lineno} ({unit}, layer {RANK[unit]}) imports "
                f"quantbalance.{t} (layer {RANK[t]})"
                for t in sorted(targets)
                if t in RANK and RANK[t] > RANK[unit]
            ]
    return bad


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {_unit(f, PKG) for f in PKG.rglob("*.py") if "assets" not in f.parts}
    assert units - set(RANK) == set(), "place the new module in RANKS (and DESIGN.md)"


def test_imports_only_point_downwards() -> None:
    assert upward_imports(PKG) == []


@pytest.mark.parametrize(
    ("where", "code", "n"),
    [
        ("search/x.py", "from quantbalance.cli import main", 1),
        ("formats/x.py", "def f():\n    import quantbalance.nn.modules", 1),
        ("nn/x.py", "from ..search import costs", 1),
        ("nn/x.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from quantbalance.search import costs", 0),
        ("search/x.py", "from quantbalance.deploy import kernels", 0),
    ],
)  # fmt: skip
def test_the_layer_walker(tmp_path: Path, where: str, code: str, n: int) -> None:
    (tmp_path / where).parent.mkdir(parents=True)
    (tmp_path / where).write_text(code + "\n")
    assert len(upward_imports(tmp_path)) == n
