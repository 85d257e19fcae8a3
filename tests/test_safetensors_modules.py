"""The safetensors reader's modules import one way: reader -> layouts -> header (and scales -> layouts,
header), never back, not even inside a function."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "quantgate" / "formats" / "safetensors"
MODULES = ("reader", "layouts", "header", "scales")
# module -> the reader modules it must not import (those above it)
BELOW = {
    "header": {"reader", "layouts", "scales"},
    "layouts": {"reader", "scales"},
    "scales": {"reader"},
}
PREFIX = "quantgate.formats.safetensors"


def _imported(module: str) -> set[str]:
    """Every module of formats/safetensors/ that `module` imports, at the top or in a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from quantgate.formats.safetensors import layouts` names the module as an imported name
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n[len(PREFIX) + 1 :].split(".")[0] for n in names if n.startswith(PREFIX + "."))
    return found & set(MODULES)


@pytest.mark.parametrize("module", sorted(BELOW))
def test_imports_go_one_way(module: str) -> None:
    assert _imported(module) & BELOW[module] == set()


def test_the_ast_check_sees_the_readers_own_imports() -> None:
    # the check itself: the reader's entry point does import the layouts (at the top)
    assert {"layouts", "header"} <= _imported("reader")


@pytest.mark.parametrize("order", list(itertools.permutations(MODULES)), ids="-".join)
def test_modules_import_fresh_in_any_order(order: tuple[str, ...]) -> None:
    code = "; ".join(f"import {PREFIX}.{m}" for m in order) + "; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr
