"""The composite GitHub Action: action.yml's wiring, and action/run.sh driven as the runner would.

The run script gets its inputs exactly as action.yml hands them over (the `env:` mapping of the
gate step, with the inputs' defaults), GITHUB_OUTPUT / GITHUB_STEP_SUMMARY point at temp files,
and quantgate runs from src/ (QUANTGATE_ACTION_SKIP_INSTALL=1).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import ROOT, SRC
from tests.test_gate_cli import make_release, policy_with

ACTION = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
GATE_STEP = next(s for s in ACTION["runs"]["steps"] if s.get("id") == "gate")
ENV_OF_INPUT = {
    re.fullmatch(r"\$\{\{ inputs\.([a-z0-9-]+) \}\}", v).group(1): k  # type: ignore[union-attr]
    for k, v in GATE_STEP["env"].items()
}
COUNT_KEYS = ("artifacts", "passed", "failed", "warned", "errors", "skipped", "waived")


def parse_outputs(text: str) -> dict[str, str]:
    """$GITHUB_OUTPUT as the runner reads it (name=value and name<<DELIM heredocs); no key twice."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delimiter = line.split("<<", 1)
            value = []
            for body in lines:
                if body == delimiter:
                    break
                value.append(body)
            pair = (key, "\n".join(value))
        else:
            key, _, val = line.partition("=")
            pair = (key, val)
        assert pair[0] not in out, f"output {pair[0]!r} written twice:\n{text}"
        out[pair[0]] = pair[1]
    return out


def run_action(cwd: Path, **inputs: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str], str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "PYTHONPATH": str(SRC),
        "QUANTGATE_ACTION_SKIP_INSTALL": "1",
        "QUANTGATE_PYTHON": sys.executable,
        "GITHUB_ACTIONS": "true",
        "GITHUB_ACTION_PATH": str(ROOT),
        "GITHUB_OUTPUT": str(cwd / "github_output"),
        "GITHUB_STEP_SUMMARY": str(cwd / "step_summary"),
    }
    for name, spec in ACTION["inputs"].items():
        if name not in ENV_OF_INPUT:
            continue
        env[ENV_OF_INPUT[name]] = inputs.get(name.replace("-", "_"), spec.get("default", ""))
    (cwd / "github_output").write_text("")
    (cwd / "step_summary").write_text("")
    proc = subprocess.run(
        ["bash", str(ROOT / "action" / "run.sh")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outputs = parse_outputs((cwd / "github_output").read_text())
    return proc, outputs, (cwd / "step_summary").read_text()


# ---------------------------------------------------------------------------------------------
# action.yml


def test_every_input_reaches_the_script_through_env_only() -> None:
    # the two inputs not in the env are only used in non-script fields (setup-python's `with:`,
    # the step's `working-directory:`)
    not_env = {"python-version", "working-directory"}
    assert set(ENV_OF_INPUT) == set(ACTION["inputs"]) - not_env
    for step in ACTION["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"], f"expression spliced into a script: {step['run']!r}"
            assert step.get("shell") == "bash"
    assert GATE_STEP["run"] == 'bash "$GITHUB_ACTION_PATH/action/run.sh"'
    assert ACTION["runs"]["using"] == "composite"
    assert {"paths", "policy", "fail-on", "report-only", "outputs", "output-dir", "version", "extras"} <= set(
        ACTION["inputs"]
    )
    assert ACTION["inputs"]["outputs"]["default"] == "json,junit,markdown"
    assert ACTION["inputs"]["output-dir"]["default"] == "quantgate-reports"


def test_every_output_is_mapped_from_the_gate_step() -> None:
    for name, spec in ACTION["outputs"].items():
        assert spec["value"] == f"${{{{ steps.gate.outputs.{name} }}}}"
    assert {"verdict", "exit-code", "report-json", "report-junit", *COUNT_KEYS} <= set(ACTION["outputs"])


def test_example_workflow_runs_the_action_on_the_fixtures() -> None:
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "action-example.yml").read_text(encoding="utf-8"))
    steps = flow["jobs"]["gate"]["steps"]
    uses = [s for s in steps if s.get("uses") == "./"]
    assert {s["with"]["paths"] for s in uses} == {"fixtures/release", "fixtures"}
    audit = next(s for s in uses if s["with"]["paths"] == "fixtures")
    assert audit["with"]["report-only"] == "true"
    for step in steps:
        assert "${{" not in step.get("run", ""), "workflow scripts read outputs through env"


# ---------------------------------------------------------------------------------------------
# run.sh


def test_failing_gate_writes_outputs_reports_and_exits_1(tmp_path: Path) -> None:
    release = make_release(tmp_path, ("ok.gguf", "fat.gguf"))
    (release / "fat.gguf").write_bytes(b"\x01" * 4000)
    policy = policy_with(tmp_path, fail=9, warn=9)
    proc, out, summary = run_action(
        tmp_path,
        paths="release",
        policy=str(policy),
        guards="size-heuristic",
        outputs="json,junit,markdown,html",
    )
    assert proc.returncode == 1, proc.stderr
    assert out["verdict"] == "FAIL" and out["exit-code"] == "1"
    assert {k: out[k] for k in COUNT_KEYS} == {
        "artifacts": "2",
        "passed": "1",
        "failed": "1",
        "warned": "0",
        "errors": "0",
        "skipped": "0",
        "waived": "0",
    }
    # absolute, so later steps (upload-artifact, upload-sarif) find them from any folder
    assert Path(out["output-dir"]).is_absolute()
    assert Path(out["output-dir"]).resolve() == (tmp_path / "quantgate-reports").resolve()
    for fmt, name in (
        ("json", "report.json"),
        ("junit", "report.xml"),
        ("markdown", "report.md"),
        ("html", "report.html"),
    ):
        assert out[f"report-{fmt}"] == f"{out['output-dir']}/{name}"
        assert (tmp_path / "quantgate-reports" / name).stat().st_size > 0
    assert summary.startswith("## ❌ quantgate: FAIL")
    # annotations reach the log (stderr) as workflow commands
    assert "::error file=release/fat.gguf,title=quantgate size-heuristic%3A FAIL::" in proc.stderr
    assert "quantgate: FAIL" in proc.stdout


def test_report_only_passes_the_step_but_keeps_the_verdict(tmp_path: Path) -> None:
    make_release(tmp_path)
    policy = policy_with(tmp_path, fail=4, warn=9)
    proc, out, _ = run_action(
        tmp_path, paths="release", policy=str(policy), guards="size-heuristic", report_only="true"
    )
    assert proc.returncode == 0, proc.stderr
    assert out["verdict"] == "FAIL" and out["exit-code"] == "0" and out["failed"] == "1"


def test_error_is_exit_2_even_with_report_only(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    (release / "lfs.onnx").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "c" * 64 + "\nsize 99\n", encoding="utf-8"
    )
    proc, out, summary = run_action(tmp_path, paths="release/lfs.onnx", report_only="true")
    assert proc.returncode == 2
    assert out["verdict"] == "ERROR" and out["exit-code"] == "2" and out["errors"] == "1"
    assert "LFS" in summary


def test_pass_with_multiline_paths_holding_spaces(tmp_path: Path) -> None:
    make_release(tmp_path)
    spaced = tmp_path / "my models"
    spaced.mkdir()
    (spaced / "b.gguf").write_bytes(b"\x01" * 1000)
    policy = policy_with(tmp_path)
    proc, out, _ = run_action(
        tmp_path,
        paths="release\n  my models/b.gguf  \n",
        policy=str(policy),
        guards="size-heuristic",
        fail_on="warn",
    )
    assert proc.returncode == 0, proc.stderr
    assert out["verdict"] == "PASS" and out["artifacts"] == "2" and out["passed"] == "2"
    assert "--fail-on warn" in proc.stderr


def test_usage_error_still_writes_outputs_and_a_summary(tmp_path: Path) -> None:
    make_release(tmp_path)
    proc, out, summary = run_action(tmp_path, paths="release", policy="missing.toml")
    assert proc.returncode == 4
    assert out == {"verdict": "USAGE", "exit-code": "4", "output-dir": f"{tmp_path}/quantgate-reports"}
    assert "policy file not found: missing.toml" in summary


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"fail_on": "sometimes"}, "fail-on must be fail or warn"),
        ({"report_only": "maybe"}, "expected true or false"),
        ({"outputs": "json,pdf"}, "unknown report format 'pdf'"),
    ],
)
def test_bad_inputs_are_usage_errors(tmp_path: Path, inputs: dict[str, str], message: str) -> None:
    make_release(tmp_path)
    proc, out, _ = run_action(tmp_path, paths="release", **inputs)
    assert proc.returncode == 4 and out["verdict"] == "USAGE" and out["exit-code"] == "4"
    assert message in proc.stderr


def test_no_input_is_exit_3(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc, out, _ = run_action(tmp_path, paths="empty")
    assert proc.returncode == 3 and out["verdict"] == "NO_INPUT" and out["exit-code"] == "3"


def test_inputs_cannot_inject_commands(tmp_path: Path) -> None:
    make_release(tmp_path)
    marker = tmp_path / "pwned"
    proc, out, _ = run_action(tmp_path, paths=f"release $(touch {marker}) `touch {marker}`", guards="integrity")
    assert not marker.exists()
    assert proc.returncode == 4 and out["verdict"] == "USAGE"  # the odd words are just missing paths


def test_sub_actions_are_pinned_by_commit_and_the_install_is_cached() -> None:
    steps = ACTION["runs"]["steps"]
    uses = [step["uses"] for step in steps if "uses" in step]
    assert {u.split("@")[0] for u in uses} == {"actions/setup-python", "actions/cache"}
    # a tag can be moved; a 40-hex commit cannot
    assert all(re.fullmatch(r"[0-9a-f]{40}", u.split("@")[1]) for u in uses), uses
    (cache,) = [step for step in steps if step.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["key"] == "${{ steps.cache-key.outputs.key }}"
    (keystep,) = [step for step in steps if step.get("id") == "cache-key"]
    key = keystep["env"]["QG_KEY"]
    assert "github.action_ref" in key and "inputs.version" in key and "inputs.extras" in key
    # actions/cache rejects a key with a comma; extras are comma-separated, so the key is hashed
    assert "sha256sum" in keystep["run"]
    assert cache["with"]["path"] == "~/.cache/pip"


def test_sarif_input_writes_a_sarif_report(tmp_path: Path) -> None:
    release = make_release(tmp_path, ("ok.gguf", "fat.gguf"))
    (release / "fat.gguf").write_bytes(b"\x01" * 4000)
    policy = policy_with(tmp_path, fail=9, warn=9)
    proc, _, _ = run_action(
        tmp_path, paths="release", policy=str(policy), guards="size-heuristic", outputs="json", sarif="qg.sarif"
    )
    assert proc.returncode == 1, proc.stderr
    log = json.loads((tmp_path / "qg.sarif").read_text(encoding="utf-8"))
    assert log["version"] == "2.1.0" and log["runs"][0]["invocations"][0]["exitCode"] == 1
    levels = [(r["ruleId"], r["level"]) for r in log["runs"][0]["results"]]
    assert levels == [("bound/bits_per_weight", "error"), ("bound/bits_per_weight", "warning")]
