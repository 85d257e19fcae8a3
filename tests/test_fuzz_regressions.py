"""Every input the fuzz campaign ever found crashing a reader, replayed: findings only, forever."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import FIXTURES

from quantgate.formats import read_inventory
from quantgate.formats.sniff import sniff

KEPT = sorted(p for p in (FIXTURES / "fuzz-regressions").rglob("*") if p.is_file() and p.name != "README.md")


@pytest.mark.parametrize("path", KEPT, ids=[p.name for p in KEPT])
def test_kept_input_reads_without_exception(path: Path) -> None:
    fmt = path.parent.name
    assert sniff(path).format in (fmt, "unknown", "empty", "unsupported", "lfs-pointer", "manifest", "ptd")
    read_inventory(str(path), fmt)  # must not raise
