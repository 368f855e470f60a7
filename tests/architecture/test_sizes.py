"""Functions that read in one screen, modules a newcomer can hold: measured, not promised."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 400


def _sources() -> list[Path]:
    return sorted((ROOT / "serving").rglob("*.py"))


def test_no_function_is_longer_than_a_screen() -> None:
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def test_no_module_is_longer_than_400_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)} ({n})"
        for path in _sources()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


def test_every_module_says_what_it_is_for() -> None:
    silent = [
        str(path.relative_to(ROOT))
        for path in _sources()
        if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert silent == []
