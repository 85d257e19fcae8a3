"""The pytest plugin through pytester: outcomes per status, user_properties, the canonical report."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from tests.conftest import SRC, run_json
from tests.ux_samples import sample_report

from quantgate.cli.pytest_plugin import flatten
from quantgate.core.jsonschemas import validate

pytest_plugins = ["pytester"]

LFS = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "c" * 64 + "\nsize 99\n"
POLICY = """
[quantgate]
version = 1

[guards.size-heuristic]
params = { params = 1000 }
require = ["bits_per_weight <= 20"]
warn = ["bits_per_weight <= 9"]
"""


def release(root: Path, policy_extra: str = "") -> Path:
    """ok 8 bpw PASS, mid 16 bpw WARN, fat 32 bpw FAIL (size-heuristic); lfs.onnx integrity ERROR."""
    folder = root / "release"
    folder.mkdir()
    for name, size in (("ok.gguf", 1000), ("mid.gguf", 2000), ("fat.gguf", 4000)):
        (folder / name).write_bytes(b"\x01" * size)
    (folder / "lfs.onnx").write_text(LFS, encoding="utf-8")
    (root / "quantgate.toml").write_text(POLICY + policy_extra, encoding="utf-8")
    return folder


# installed (pip install -e . as `make test` does), the pytest11 entry point loads the plugin
# already, and naming it again with -p would register it twice
INSTALLED = any(ep.value == "quantgate.cli.pytest_plugin" for ep in entry_points(group="pytest11"))
LOAD = () if INSTALLED else ("-p", "quantgate.cli.pytest_plugin")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # in-process: the plugin module is already imported here, hence the rewrite warning filter
    return pytester.runpytest(
        *LOAD,
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        *args,
    )


def test_outcomes_follow_the_gate(pytester: pytest.Pytester) -> None:
    release(pytester.path)
    result = run(pytester, "--quantgate", "release", "-rA")
    # integrity FAILs the three unrecognisable files and ERRORs on the LFS pointer (no reader
    # involved); size-heuristic passes ok, warns on mid, fails fat, skips the pointer
    result.assert_outcomes(passed=2, failed=4, errors=1, skipped=1, warnings=1)
    out = result.stdout.str()
    assert "PASSED release/ok.gguf::size-heuristic" in out
    assert "PASSED release/mid.gguf::size-heuristic" in out
    assert "FAILED release/fat.gguf::size-heuristic" in out
    assert "ERROR release/lfs.onnx::integrity" in out
    assert "SKIPPED [1] release/lfs.onnx:1: blocked_by:integrity" in out
    # the one-line messages, not tracebacks
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of release/lfs.onnx::integrity*",
            "release/lfs.onnx::integrity: release/lfs.onnx is a Git LFS pointer*",
            "release/fat.gguf::size-heuristic: bits_per_weight 32 > 20 (required)",
            "*QuantgateWarning: release/mid.gguf::size-heuristic: bits_per_weight 16 > 9 (warning)",
        ]
    )
    assert "Traceback" not in out and "cli/pytest_plugin.py" not in out
    result.stdout.fnmatch_lines(["quantgate: ERROR — 4 artifacts*exit 2*", "note: pytest exits 1*quantgate run*"])
    assert result.ret == 1  # pytest cannot say ERROR: the reason to gate CI on `quantgate run`


def test_canonical_report_matches_quantgate_run(pytester: pytest.Pytester) -> None:
    release(pytester.path)
    run(pytester, "--quantgate", "release", "--quantgate-report", "out/qg.json")
    report = json.loads((pytester.path / "out" / "qg.json").read_text())
    assert validate(report, "report") == []
    code, cli = run_json("run", "release", "--format", "json", cwd=pytester.path)
    assert code == 2 and report["verdict"] == cli["verdict"] == "ERROR"
    assert report["summary"] == cli["summary"]

    def decided(r: dict) -> tuple:
        return (r["artifact"]["path"], r["guard"], r["status"], r["gate_status"], r["message"])

    assert [decided(r) for r in report["results"]] == [decided(r) for r in cli["results"]]


def test_user_properties_reach_json_report_and_junit(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_jsonreport")
    release(pytester.path)
    run(
        pytester,
        "--quantgate",
        "release",
        "--json-report",
        "--json-report-file=j.json",
        "--junitxml=j.xml",
    )
    tests = {t["nodeid"]: t for t in json.loads((pytester.path / "j.json").read_text())["tests"]}
    props = {k: v for p in tests["release/fat.gguf::size-heuristic"]["user_properties"] for k, v in p.items()}
    assert props["quantgate.status"] == "FAIL" and props["quantgate.gate_status"] == "FAIL"
    assert props["bits_per_weight"] == 32.0 and props["params"] == 1000
    assert tests["release/fat.gguf::size-heuristic"]["outcome"] == "failed"
    assert tests["release/lfs.onnx::integrity"]["outcome"] == "error"
    err_props = {k: v for p in tests["release/lfs.onnx::integrity"]["user_properties"] for k, v in p.items()}
    assert err_props["quantgate.gate_status"] == "ERROR"
    case = next(
        c
        for c in ET.parse(pytester.path / "j.xml").iter("testcase")
        if c.get("name") == "size-heuristic" and c.get("classname", "").endswith("fat.gguf")
    )
    xml_props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert xml_props["bits_per_weight"] == "32.0" and xml_props["quantgate.gate_status"] == "FAIL"


def test_coverage_metrics_flatten_to_dotted_names(tmp_path: Path) -> None:
    result = sample_report(tmp_path)["results"][1]
    props = dict(flatten(result["metrics"]))
    assert props["int8_coverage"] == pytest.approx(4 / 7)
    assert props["coverage.ops.int8"] == pytest.approx(4 / 7)
    assert props["coverage.params.by_bits.32"] == pytest.approx(5000 / 11000)
    assert props["unexpected_unquantized"] == 1
    assert all(not isinstance(v, (dict, list)) for v in props.values())


def test_k_selects_guards_and_the_report_holds_what_ran(pytester: pytest.Pytester) -> None:
    release(pytester.path)
    result = run(pytester, "--quantgate", "release/fat.gguf", "release/ok.gguf", "-k", "size")
    result.assert_outcomes(passed=1, failed=1, deselected=2)
    report = json.loads((pytester.path / "quantgate-reports" / "pytest-report.json").read_text())
    assert [a["path"] for a in report["artifacts"]] == ["release/fat.gguf", "release/ok.gguf"]


def test_waived_fail_passes_with_a_warning(pytester: pytest.Pytester) -> None:
    folder = release(pytester.path)
    sha = hashlib.sha256((folder / "fat.gguf").read_bytes()).hexdigest()
    expires = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    waiver = f"""
[[waivers]]
guard = "size-heuristic"
artifact = "release/fat.gguf"
sha256 = "{sha}"
reason = "fp32 reference build"
expires = {expires}
"""
    result = run(pytester, "--quantgate", "release/fat.gguf", "--quantgate-guards", "size-heuristic")
    result.assert_outcomes(failed=1)
    (pytester.path / "quantgate.toml").write_text(POLICY + waiver, encoding="utf-8")
    result = run(pytester, "--quantgate", "release/fat.gguf", "--quantgate-guards", "size-heuristic")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*QuantgateWarning*waived until*fp32 reference build*"])


def test_usage_errors_exit_4(pytester: pytest.Pytester) -> None:
    release(pytester.path)
    (pytester.path / "bad.toml").write_text("[quantgate]\nversion = 1\nfial_on = 'x'\n", encoding="utf-8")
    result = run(pytester, "--quantgate", "release", "--quantgate-policy", "bad.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown key quantgate.fial_on (line 3); did you mean fail_on?*"])
    result = run(pytester, "--quantgate", "nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result = run(pytester, "--quantgate", "release", "--quantgate-guards", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_inert_without_the_flag(pytester: pytest.Pytester) -> None:
    release(pytester.path)
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()  # (the header may list the installed plugin: that is all)
    assert " quantgate =" not in out and "quantgate:" not in out and "::" not in out
    assert not (pytester.path / "quantgate-reports").exists()
    # and the artifacts join an ordinary test run with the flag
    run(pytester, "--quantgate", "release/ok.gguf").assert_outcomes(passed=2, failed=1)


def test_importing_the_plugin_imports_no_gate_code() -> None:
    code = (
        "import sys; before = set(sys.modules); import quantgate.cli.pytest_plugin; "
        "print(sorted(m for m in set(sys.modules) - before if m.startswith(('quantgate', 'jsonschema'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, check=True
    )
    assert out.stdout.strip() == "['quantgate', 'quantgate.cli', 'quantgate.cli.pytest_plugin']"


def test_entry_point_is_declared() -> None:
    text = (SRC.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points.pytest11]\nquantgate = "quantgate.cli.pytest_plugin"' in text
