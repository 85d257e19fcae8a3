"""`quantgate guard` runs once per file in CI, so its start-up is paid by every run. The cost is held by a
budget (benchmarks/bench_startup.py, recorded in benchmarks/RESULTS.md), not by banning modules one by one;
what stays a rule is that the heavy libraries are never imported by the command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT, cli_env, run_json
from quantgate.cli import main as cli
from quantgate.core import fastjson
from quantgate.gate import UsageError
from quantgate.gate.discovery import display_path
from quantgate.gate.session import check_file

HEAVY = ("torch", "executorch", "onnx", "onnxruntime", "numpy")
SAFETENSORS = FIXTURES / "safetensors" / "gptq_layout" / "model.safetensors"
GGUF = FIXTURES / "gguf" / "model_q8_0.gguf"
BENCHMARKS = ROOT / "benchmarks"


@pytest.mark.parametrize(("guard", "path"), [("gguf-dtypes", GGUF), ("safetensors-dtypes", SAFETENSORS)])
def test_the_guard_command_imports_no_heavy_library(guard: str, path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "quantgate", "guard", guard, str(path)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["status"] == "PASS"
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "quantgate.cli.main" in imported
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []


def test_the_start_up_budget_is_recorded() -> None:
    """benchmarks/bench_startup.py holds the budget; RESULTS.md records it and that the last run kept it."""
    source = (BENCHMARKS / "bench_startup.py").read_text(encoding="utf-8")
    budget = int(re.search(r"^BUDGET_MS = (\d+)", source, re.M).group(1))
    results = (BENCHMARKS / "RESULTS.md").read_text(encoding="utf-8")
    section = results[results.index("\n## startup\n") :].split("\n## ", 2)[1]
    assert f"budget {budget} ms: within" in section
    assert "heavy libraries imported (torch, executorch, onnx, numpy): none" in section


def test_fastjson_imports_orjson_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("orjson")
    monkeypatch.setattr(fastjson, "orjson", fastjson._NOT_IMPORTED)
    assert fastjson.loads(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert fastjson.orjson is sys.modules["orjson"]
    monkeypatch.setattr(fastjson, "orjson", fastjson._NOT_IMPORTED)
    assert fastjson.dumps_compact_line({"a": [1, None]}) == b'{"a":[1,null]}\n'
    assert fastjson.orjson is sys.modules["orjson"]


def test_fastjson_without_orjson_leaves_json_to_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastjson, "orjson", fastjson._NOT_IMPORTED)
    monkeypatch.setitem(sys.modules, "orjson", None)  # `import orjson` raises ImportError
    assert fastjson.loads(b"{}") is None
    assert fastjson.dumps_compact_line({}) is None
    assert fastjson.orjson is None


def _without_duration(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "duration_s"}


def test_guard_on_a_committed_fixture_end_to_end(tmp_path: Path) -> None:
    """The `guard` command as CI runs it, with the file named the ways a shell may name it."""
    shutil.copytree(SAFETENSORS.parent, tmp_path, dirs_exist_ok=True)  # with the config.json beside it
    rc, result = run_json("guard", "safetensors-dtypes", str(SAFETENSORS))
    assert rc in (0, 1) and result["guard"] == "safetensors-dtypes"
    assert result["status"] in ("PASS", "WARN", "FAIL") and result["metrics"]
    assert result["artifact"]["path"] == str(SAFETENSORS.resolve())  # outside the working directory
    for name in ("model.safetensors", "./model.safetensors", "model.safetensors/", "model.safetensors/."):
        rc_here, here = run_json("guard", "safetensors-dtypes", name, cwd=tmp_path)
        assert rc_here == rc, name
        assert here["artifact"]["path"] == "model.safetensors", name
        assert _without_duration({**here, "artifact": result["artifact"]}) == _without_duration(result), name


@pytest.mark.parametrize(
    "name", ["f", "./f", "f/", "f/.", "f//", "d", "d/", "d/.", "./d/../f", "d/./g", "missing", "missing/", ".", "./"]
)
def test_guard_names_the_file_pathlib_named(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "g").write_bytes(b"y")
    if not Path(name).exists() or Path(name).is_dir():  # not one file: a usage error naming it
        with pytest.raises(UsageError, match="path not found" if not Path(name).exists() else "is a folder"):
            check_file(name)
        return
    path = check_file(name)
    assert os.path.basename(path) == os.path.basename(os.fspath(Path(name)))
    if Path(name).exists():
        assert os.path.realpath(path) == str(Path(name).resolve())
        assert display_path(path) == _pathlib_display_path(Path(name))


def _pathlib_display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def test_display_path_is_relative_only_inside_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "ab").mkdir()
    (tmp_path / "a" / "link").symlink_to(tmp_path / "ab")
    monkeypatch.chdir(tmp_path / "a")
    cases = ["b", ".", "..", "../ab", str(tmp_path / "a" / "b"), "link", "/"]
    for case in cases:
        assert display_path(case) == _pathlib_display_path(Path(case)), case
        assert display_path(Path(case)) == display_path(case), case
    assert display_path("../ab") == str((tmp_path / "ab").resolve())  # shares a prefix, is not inside


def test_a_symlink_loop_in_a_scanned_folder_is_skipped_like_any_symlink(tmp_path: Path) -> None:
    """(pathlib's resolve() raised RuntimeError on a loop before Python 3.13: an internal error.)"""
    shutil.copytree(SAFETENSORS.parent, tmp_path / "d")
    (tmp_path / "d" / "loop").symlink_to("loop")
    rc, report = run_json("run", "d", "--guards", "integrity", "--format", "json", cwd=tmp_path)
    assert rc == 0 and [a["path"] for a in report["artifacts"]] == ["d/model.safetensors"]


def test_internal_error_prints_the_traceback_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "guards", broken)
    monkeypatch.delenv("QUANTGATE_DEBUG", raising=False)
    assert cli.main(["guards"]) == 2
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: a bug" in err and "Traceback" not in err
    monkeypatch.setenv("QUANTGATE_DEBUG", "1")
    assert cli.main(["guards"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ZeroDivisionError("a bug")' in err
