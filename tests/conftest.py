"""Shared test helpers: the real CLI in a subprocess, and the committed fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SRC = ROOT / "src"
# the CLI runs from an empty folder unless a test says otherwise, so the repo's own quantgate.toml
# (the sample release policy) never leaks into a test
NEUTRAL_CWD = tempfile.mkdtemp(prefix="quantgate-test-cwd-")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("QUANTGATE_DEBUG", None)
    if extra:
        env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m quantgate ARGS` in a subprocess: the real entry point, real exit codes."""
    return subprocess.run(
        [sys.executable, "-m", "quantgate", *args],
        cwd=NEUTRAL_CWD if cwd is None else cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_json(*args: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    proc = run_cli(*args, **kwargs)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not JSON ({exc}); stderr:\n{proc.stderr}\nstdout:\n{proc.stdout}") from None


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
