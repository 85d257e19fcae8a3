"""The safetensors reader's modules import one way: safetensors -> safetensors_layouts ->
safetensors_header (and safetensors_scales -> layouts, header), never back, not even inside a function."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env

FORMATS = Path(__file__).resolve().parent.parent / "src" / "quantgate" / "formats"
MODULES = ("safetensors", "safetensors_layouts", "safetensors_header", "safetensors_scales")
# module -> the reader modules it must not import (those above it)
BELOW = {
    "safetensors_header": {"safetensors", "safetensors_layouts", "safetensors_scales"},
    "safetensors_layouts": {"safetensors", "safetensors_scales"},
    "safetensors_scales": {"safetensors"},
}


def _imported(module: str) -> set[str]:
    """Every quantgate.formats.safetensors.reader* module `module` imports, at the top or in a function."""
    tree = ast.parse((FORMATS / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from quantgate.formats.safetensors import layouts as safetensors_layouts` names the module as an alias
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n.rsplit(".", 1)[-1] for n in names if n.startswith("quantgate.formats.safetensors.reader"))
        found.update(n.rsplit(".", 1)[-1] for n in names
                     if n.startswith("quantgate.formats.") and n.rsplit(".", 1)[-1] in MODULES)
    return found


@pytest.mark.parametrize("module", sorted(BELOW))
def test_imports_go_one_way(module: str) -> None:
    assert _imported(module) & BELOW[module] == set()


def test_the_ast_check_sees_the_readers_own_imports() -> None:
    # the check itself: the reader's entry point does import the layouts (at the top)
    assert {"safetensors_layouts", "safetensors_header"} <= _imported("safetensors")


@pytest.mark.parametrize("order", list(itertools.permutations(MODULES)), ids="-".join)
def test_modules_import_fresh_in_any_order(order: tuple[str, ...]) -> None:
    code = "; ".join(f"import quantgate.formats.{m}" for m in order) + "; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, "ok"), out.stderr
