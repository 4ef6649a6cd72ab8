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
