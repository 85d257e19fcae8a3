"""No function over 80 lines anywhere in the package: a long function is split into named steps."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "quantgate"
MAX_LINES = 80
ALL = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def long_functions(relative: str) -> list[str]:
    tree = ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))
    return [
        f"{relative}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]


def test_no_long_function_in_the_package() -> None:
    assert len(ALL) > 80  # the walk found the package
    assert [f for relative in ALL for f in long_functions(relative)] == []
