"""No function over 80 lines in the modules already split into named steps (manifest checks, the Markdown and
SARIF renderers, the finding-code tables); the rest of the tree follows as it is split."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "quantgate"
MAX_LINES = 80
SPLIT = [
    "core/findings.py",
    "core/codes.py",
    "manifest/check.py",
    "guards/manifest.py",
    "dequant/__init__.py",
    *(str(p.relative_to(PACKAGE)) for p in sorted((PACKAGE / "report").glob("*.py"))),
]


def long_functions(relative: str) -> list[str]:
    tree = ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))
    return [
        f"{relative}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]


def test_no_long_function_in_the_split_modules() -> None:
    assert [f for relative in SPLIT for f in long_functions(relative)] == []
