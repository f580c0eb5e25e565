"""The code stays readable as it grows: no function in the library or the trainer runs past 60
lines (its docstring not counted). A longer one is a sign that it does several things; split it
into helpers named for what each does (docs/architecture.md, "Where new things go")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prefcurate", "trainers")
MAX_LINES = 60


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            return first.end_lineno - first.lineno + 1
    return 0


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(name, line, length) of every function and method, the signature included, the docstring
    not."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
            found.append((node.name, node.lineno, length))
    return found


def test_the_measure_counts_the_signature_and_the_body_but_not_the_docstring():
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    source = f'def f(\n    a,\n):\n    """Why.\n\n    More.\n    """\n{body}'
    assert function_lengths(source) == [("f", 1, 3 + 59)]


def test_no_function_runs_past_sixty_lines():
    long = [
        f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, line, length in function_lengths(path.read_text(encoding="utf-8"))
        if length > MAX_LINES
    ]
    assert not long, "split these into named helpers:\n" + "\n".join(long)
