"""`python -m build` makes an sdist and a wheel that `twine check` accepts, holding what quantgate needs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_build_makes_a_wheel_and_sdist_twine_accepts(tmp_path: Path) -> None:
    for module in ("build", "twine"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install -e '.[dev]')")
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (wheel,) = dist.glob("quantgate-*.whl")
    (sdist,) = dist.glob("quantgate-*.tar.gz")
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        schemas = [n for n in names if n.startswith("quantgate/schemas/") and n.endswith(".json")]
        assert schemas, names
        assert not [n for n in names if n.startswith(("tests/", "fixtures/")) or "/fixtures/" in n]
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert "[pytest11]" in text
