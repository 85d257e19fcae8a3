"""One gate session for every entry point (quantgate.gate.session): the CLI, the pytest plugin and the Python
API gate a release alike; `-k` and pytest-xdist reach the plugin's report; GuardResult's constructors."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import FIXTURES, ROOT, cli_env, run_json
from tests.test_ux_plugin import LOAD, release, run

import quantgate
from quantgate.core.result import ArtifactInfo, GuardResult

# the in-process plugin runs below import numpy (fidelity); pytester then drops every module they
# imported, and numpy cannot be imported twice in one process: load it first so it stays
with contextlib.suppress(ImportError):
    import numpy  # noqa: F401

pytest_plugins = ["pytester"]

RELEASE = FIXTURES / "release"
POLICY = ROOT / "quantgate.toml"  # the policy `make validate` gates the sample release with
GGUF = RELEASE / "tiny-llama-q8_0.gguf"
GGUF_SHOWN = "fixtures/release/tiny-llama-q8_0.gguf"


# what differs between two runs of one gate: times, the machine, the run's cost, and what a runtime
# measured of itself (pte-inspector: per-op time, the runner's timings and memory)
MEASURED = ("duration_s", "started_at", "environment", "cost", "time_ns", "runtime")


def _decided(value: Any) -> Any:
    """The report less what is MEASURED (a method's run time in a message too)."""
    if isinstance(value, dict):
        return {k: _decided(v) for k, v in value.items() if k not in MEASURED}
    if isinstance(value, list):
        return [_decided(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"ran in [0-9.]+ ms", "ran in - ms", value)
    return value


# ---------------------------------------------------------------------------------------------
# the CLI and the plugin


def test_cli_and_plugin_give_the_same_report_on_the_sample_release(pytester: pytest.Pytester) -> None:
    run(pytester, "--quantgate", str(RELEASE), "--quantgate-policy", str(POLICY), "--quantgate-report", "p.json")
    plugin = json.loads((pytester.path / "p.json").read_text())
    code, cli = run_json("run", str(RELEASE), "--policy", str(POLICY), "--format", "json", cwd=pytester.path)
    assert code == cli["exit_code"] == plugin["exit_code"] == 0
    assert cli["verdict"] == plugin["verdict"] == "PASS"
    # the plugin used to skip the manifest's parameter counts: size-heuristic said `artifact` there
    sources = {r["artifact"]["path"]: r["metrics"].get("params_source")
               for r in plugin["results"] if r["guard"] == "size-heuristic" and r["status"] != "SKIP"}
    assert sorted(sources.values()) == ["manifest"] * 4
    assert plugin["summary"] == cli["summary"]
    assert _decided(plugin) == _decided(cli)


def test_k_deselection_reaches_the_plugins_report_and_verdict(pytester: pytest.Pytester) -> None:
    release(pytester.path)
    result = run(pytester, "--quantgate", "release", "-k", "not integrity")
    result.assert_outcomes(passed=2, failed=1, skipped=1, warnings=1, deselected=4)
    report = json.loads((pytester.path / "quantgate-reports" / "pytest-report.json").read_text())
    # the LFS pointer's integrity ERROR was deselected: not gated, not in the verdict
    assert {r["guard"] for r in report["results"] if r["skip"] is None or r["skip"]["reason"] != "not_applicable"} == {
        "size-heuristic"
    }
    assert [r for r in report["results"] if r["guard"] == "integrity"] == []
    assert report["verdict"] == "FAIL" and report["exit_code"] == 1
    assert report["summary"] == {"artifacts": 4, "results": 32, "PASS": 1, "FAIL": 1, "WARN": 1, "SKIP": 1,
                                 "ERROR": 0, "waived": 0, "not_applicable": 28}
    result.stdout.fnmatch_lines(["quantgate: FAIL — 4 artifacts*; 4 quantgate item(s) deselected, not gated*"])


def test_deselecting_every_item_of_an_artifact_leaves_it_out(pytester: pytest.Pytester) -> None:
    release(pytester.path)
    run(pytester, "--quantgate", "release", "--deselect", "release/lfs.onnx::integrity",
        "--deselect", "release/lfs.onnx::size-heuristic")
    report = json.loads((pytester.path / "quantgate-reports" / "pytest-report.json").read_text())
    assert [a["path"] for a in report["artifacts"]] == ["release/fat.gguf", "release/mid.gguf", "release/ok.gguf"]
    assert report["verdict"] == "FAIL" and report["summary"]["ERROR"] == 0


def test_pytest_xdist_workers_report_through_the_controller(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    release(pytester.path)
    serial = run(pytester, "--quantgate", "release", "--quantgate-report", "serial.json")
    serial.assert_outcomes(passed=2, failed=4, errors=1, skipped=1, warnings=1)
    result = pytester.runpytest_subprocess(*LOAD, "-p", "no:cacheprovider", "-n", "2", "--quantgate", "release",
                                           "--quantgate-report", "xdist.json")
    result.assert_outcomes(passed=2, failed=4, errors=1, skipped=1)
    out = result.stdout.str()
    assert "no artifact item ran" not in out
    result.stdout.fnmatch_lines(["quantgate: ERROR — 4 artifacts*exit 2*"])
    whole = json.loads((pytester.path / "serial.json").read_text())
    shared = json.loads((pytester.path / "xdist.json").read_text())
    assert _decided(shared) == _decided(whole)


# ---------------------------------------------------------------------------------------------
# the Python API


def test_run_returns_the_report_and_prints_nothing(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    report = quantgate.run("fixtures/release", policy="quantgate.toml", guards=["integrity", "size-heuristic",
                                                                                 "gguf-dtypes"])
    assert capsys.readouterr() == ("", "")
    assert isinstance(report, quantgate.Report)
    assert report.verdict == "PASS" and report.exit_code == 0
    assert report.summary == {"artifacts": 5, "results": 15, "PASS": 8, "FAIL": 0, "WARN": 1, "SKIP": 0,
                              "ERROR": 0, "waived": 0, "not_applicable": 6}
    size = report.metrics[GGUF_SHOWN]["size-heuristic"]
    assert size["params"] == 155968 and size["params_source"] == "manifest" and size["file_bytes"] == 175040
    assert size["bits_per_weight"] == 175040 * 8 / 155968
    dtypes = report.result(GGUF_SHOWN, "gguf-dtypes")
    assert dtypes["gate_status"] == "PASS" and dtypes["metrics"]["weight_ops"] == 16
    assert dtypes["metrics"]["params_total"] == 155648 and dtypes["metrics"]["bits_per_weight"] == 8.5
    assert report.to_dict()["verdict"] == "PASS" and len(report.results) == 15
    code, cli = run_json("run", "fixtures/release", "--policy", "quantgate.toml", "--guards",
                         "integrity,size-heuristic,gguf-dtypes", "--format", "json", cwd=ROOT)
    assert code == report.exit_code and _decided(cli) == _decided(report.to_dict())


def test_guard_returns_the_result_with_its_exit_code() -> None:
    result = quantgate.guard("gguf-dtypes", GGUF)
    assert isinstance(result, quantgate.GuardResult)
    assert (result.status, result.exit_code) == ("PASS", 0)
    assert result.metrics["file_type"] == "Q8_0" and result.metrics["tensor_count"] == 21
    assert result.metrics["coverage"]["params"]["int8"] == 1.0 and result.metrics["bits_per_weight"] == 8.5
    bounded = quantgate.guard("gguf-dtypes", str(GGUF), require=["bits_per_weight <= 8"])
    assert (bounded.status, bounded.exit_code, bounded.message) == ("FAIL", 1, "bits_per_weight 8.5 > 8 (required)")
    sized = quantgate.guard("size-heuristic", GGUF, params=155968)
    assert sized.metrics["params_source"] == "param" and sized.metrics["bits_per_weight"] == 175040 * 8 / 155968
    assert sized.to_dict()["guard"] == "size-heuristic"


def test_api_usage_errors_raise(tmp_path: Path) -> None:
    with pytest.raises(quantgate.UsageError, match="unknown guard 'gguf-dtype'; did you mean gguf-dtypes"):
        quantgate.guard("gguf-dtype", GGUF)
    with pytest.raises(quantgate.UsageError, match="path not found"):
        quantgate.guard("integrity", tmp_path / "missing.gguf")
    with pytest.raises(quantgate.UsageError, match="path not found"):
        quantgate.run(tmp_path / "missing")
    with pytest.raises(quantgate.UsageError, match="jobs must be at least 1"):
        quantgate.run(tmp_path, jobs=0)


def test_importing_quantgate_loads_the_api_on_first_use() -> None:
    script = (
        "import sys, quantgate; before = 'quantgate.gate.session' in sys.modules; quantgate.run; "
        "print(before, 'quantgate.gate.session' in sys.modules, sorted(set(quantgate.__all__) - set(dir(quantgate))))"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "[]"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        quantgate.nope  # noqa: B018


# ---------------------------------------------------------------------------------------------
# GuardResult's constructors


INFO = ArtifactInfo("m.gguf", "gguf", 10)


def _fields(result: GuardResult) -> dict[str, Any]:
    out = result.to_dict()
    del out["schema_version"], out["duration_s"]
    return out


def test_guard_result_disabled_and_skipped() -> None:
    assert _fields(GuardResult.disabled("fidelity", INFO)) == {
        "guard": "fidelity", "status": "SKIP", "message": "skipped (disabled): disabled by the policy",
        "artifact": {"path": "m.gguf", "format": "gguf", "size_bytes": 10}, "metrics": {}, "bounds": [],
        "unquantized": [], "findings": [], "skip": {"reason": "disabled", "detail": "disabled by the policy"},
        "error": None,
    }
    skipped = GuardResult.skipped("fidelity", INFO, "no_input", "no reference")
    assert (skipped.message, skipped.skip, skipped.exit_code) == (
        "skipped (no_input): no reference", {"reason": "no_input", "detail": "no reference"}, 0)


def test_guard_result_errored_and_crashed() -> None:
    errored = GuardResult.errored("integrity", INFO, "timeout", "integrity ran out of time", "raise timeout_s")
    assert (errored.status, errored.message, errored.exit_code) == (
        "ERROR", "integrity ran out of time (raise timeout_s)", 2)
    assert errored.error == {"type": "timeout", "message": "integrity ran out of time", "hint": "raise timeout_s"}
    crashed = GuardResult.crashed("integrity", INFO, "the worker reading m.gguf was killed by signal 9")
    assert _fields(crashed) == {
        "guard": "integrity", "status": "ERROR", "message": "the worker reading m.gguf was killed by signal 9",
        "artifact": {"path": "m.gguf", "format": "gguf", "size_bytes": 10}, "metrics": {}, "bounds": [],
        "unquantized": [], "findings": [], "skip": None,
        "error": {"type": "crash", "message": "the worker reading m.gguf was killed by signal 9",
                  "hint": "this is a quantgate bug; please report it"},
    }


def test_a_disabled_guard_in_a_run_is_the_disabled_result(tmp_path: Path) -> None:
    (tmp_path / "q.toml").write_text("[quantgate]\nversion = 1\n\n[guards.size-heuristic]\nenabled = false\n")
    report = quantgate.run(GGUF, policy=tmp_path / "q.toml", guards=["size-heuristic"])
    row = report.result(display(GGUF), "size-heuristic")
    expected = GuardResult.disabled("size-heuristic", ArtifactInfo(display(GGUF), "gguf", 175040)).to_dict()
    assert row == {**expected, "required": False, "gate_status": "SKIP"}
    assert report.verdict == "NO_INPUT" and report.exit_code == 3


def display(path: Path) -> str:
    from quantgate.gate.discovery import display_path

    return display_path(path)
