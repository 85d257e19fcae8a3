"""The gate through the real CLI: every exit code, every status, waivers, --report-only, --jobs.

These use the size-heuristic guard, which runs on any file, so the gate's own rules are tested
apart from the format readers (their own tests gate real exported artifacts).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import FIXTURES, run_cli, run_json

# 1000 bytes over 1000 params = 8 bits per weight
ARTIFACT_BYTES = 1000
PARAMS = 1000


def make_release(tmp: Path, names: tuple[str, ...] = ("a.gguf",)) -> Path:
    release = tmp / "release"
    release.mkdir()
    for name in names:
        (release / name).write_bytes(b"\x01" * ARTIFACT_BYTES)
    return release


def write_policy(tmp: Path, body: str) -> Path:
    path = tmp / "quantgate.toml"
    path.write_text(body, encoding="utf-8")
    return path


SIZE_POLICY = """
[quantgate]
version = 1

[guards.size-heuristic]
params = {{ params = PARAMS }}
require = ["bits_per_weight <= {fail}"]
warn = ["bits_per_weight <= {warn}"]
""".replace("PARAMS", str(PARAMS))


def policy_with(tmp: Path, fail: float = 9, warn: float = 9, extra: str = "") -> Path:
    return write_policy(tmp, SIZE_POLICY.format(fail=fail, warn=warn) + extra)


def gate(tmp: Path, *args: str) -> tuple[int, dict]:
    return run_json("run", "--format", "json", "--guards", "size-heuristic", *args, cwd=tmp)


def only_result(report: dict) -> dict:
    assert len(report["results"]) == 1, report["results"]
    return report["results"][0]


def test_exit_0_pass(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    code, report = gate(tmp_path, str(release), "--policy", str(policy_with(tmp_path)))
    assert code == 0
    result = only_result(report)
    assert (result["status"], result["gate_status"]) == ("PASS", "PASS")
    assert result["metrics"]["bits_per_weight"] == 8.0
    assert result["metrics"]["params_source"] == "param"
    assert report["verdict"] == "PASS" and report["exit_code"] == 0
    assert report["summary"] == {
        "artifacts": 1,
        "results": 1,
        "PASS": 1,
        "FAIL": 0,
        "WARN": 0,
        "SKIP": 0,
        "ERROR": 0,
        "waived": 0,
        "not_applicable": 0,
    }


def test_exit_1_fail_names_the_bound(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    code, report = gate(tmp_path, str(release), "--policy", str(policy_with(tmp_path, fail=4.5)))
    assert code == 1
    result = only_result(report)
    assert result["status"] == "FAIL"
    assert result["message"] == "bits_per_weight 8 > 4.5 (required)"
    assert result["bounds"][0] == {
        "metric": "bits_per_weight",
        "op": "<=",
        "value": 4.5,
        "actual": 8.0,
        "level": "fail",
        "outcome": "broken",
    }
    assert report["verdict"] == "FAIL"


def test_warn_passes_unless_fail_on_warn(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    policy = str(policy_with(tmp_path, fail=9, warn=6))
    code, report = gate(tmp_path, str(release), "--policy", policy)
    assert code == 0
    assert only_result(report)["status"] == "WARN"
    assert report["summary"]["WARN"] == 1
    code, report = gate(tmp_path, str(release), "--policy", policy, "--fail-on", "warn")
    assert code == 1
    result = only_result(report)
    assert (result["status"], result["gate_status"]) == ("WARN", "FAIL")


def test_exit_2_missing_metric_is_error(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    policy = write_policy(
        tmp_path,
        f"""
[guards.size-heuristic]
params = {{ params = {PARAMS} }}
require = ["coverage.ops.int8 >= 0.9"]
""",
    )
    code, report = gate(tmp_path, str(release), "--policy", str(policy))
    assert code == 2
    result = only_result(report)
    assert result["status"] == "ERROR"
    assert result["error"]["type"] == "missing_metric"
    assert "coverage.ops.int8 was not measured" in result["message"]


@pytest.mark.parametrize(
    ("reason", "required", "gate_status"),
    [
        ("dependency_missing", True, "ERROR"),
        ("no_input", True, "ERROR"),
        ("dependency_missing", False, "SKIP"),
        ("not_applicable", True, "SKIP"),
        ("blocked_by:integrity", True, "SKIP"),
        ("disabled", False, "SKIP"),
    ],
)
def test_required_guard_that_cannot_run_is_error(reason: str, required: bool, gate_status: str) -> None:
    from quantgate.gate.evaluate import gate_decision

    result = {"status": "SKIP", "skip": {"reason": reason, "detail": "x"}}
    decided = gate_decision(result, required=required, fail_on="fail", waivers=[], sha256=None, today=dt.date.today())
    assert decided["gate_status"] == gate_status
    assert decided["required"] is required


def test_optional_skip_alone_is_no_input(tmp_path: Path) -> None:
    # an unrecognisable file fails integrity; with only size-heuristic selected and no parameter
    # count, the guard is blocked by integrity: nothing reached a verdict
    release = make_release(tmp_path)
    code, report = gate(tmp_path, str(release), "--policy", str(write_policy(tmp_path, "")))
    assert code == 0
    result = only_result(report)
    assert (result["status"], result["gate_status"]) == ("SKIP", "SKIP")
    assert result["skip"]["reason"] == "blocked_by:integrity"


def test_error_beats_fail(tmp_path: Path) -> None:
    release = make_release(tmp_path, ("a.gguf", "b.gguf"))
    policy = policy_with(tmp_path, fail=4)
    (release / "b.gguf").unlink()
    (release / "b.gguf").mkdir()  # a folder named like a model: not an artifact, so use an LFS pointer
    (release / "c.onnx").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 10\n", encoding="utf-8"
    )
    code, report = run_json("run", "--format", "json", str(release), "--policy", str(policy), cwd=tmp_path)
    statuses = {(r["artifact"]["path"].split("/")[-1], r["guard"]): r["gate_status"] for r in report["results"]}
    assert statuses[("a.gguf", "size-heuristic")] == "FAIL"
    assert statuses[("c.onnx", "integrity")] == "ERROR"
    assert code == 2 and report["verdict"] == "ERROR"


def test_exit_3_no_artifacts(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("not a model\n", encoding="utf-8")
    proc = run_cli("run", str(empty), cwd=tmp_path)
    assert proc.returncode == 3
    assert proc.stdout.strip().splitlines()[-1].startswith("quantgate: NO_INPUT — 0 artifacts")
    code, report = run_json("run", "--format", "json", str(empty), cwd=tmp_path)
    assert code == 3 and report["verdict"] == "NO_INPUT" and report["results"] == []


def test_exit_3_when_no_guard_applies(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    policy = write_policy(tmp_path, "[guards.size-heuristic]\nenabled = false\n")
    code, report = gate(tmp_path, str(release), "--policy", str(policy))
    assert code == 3
    assert only_result(report)["skip"]["reason"] == "disabled"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--format", "yaml", "."], "invalid choice: 'yaml'"),
        (["run", "--jobs", "0", "."], "--jobs must be at least 1"),
        (["run", "--guards", "nope", "."], "unknown guard(s): nope"),
        (["run", "does-not-exist"], "path not found: does-not-exist"),
        (["run", "--policy", "missing.toml", "."], "policy file not found: missing.toml"),
        (["run", "--output", "pdf=x.pdf", "."], "unknown report format 'pdf'"),
        (["guard", "nope", "x"], "unknown guard 'nope'"),
        (["guard", "integrity", "missing.bin"], "path not found: missing.bin"),
        (["guard", "size-heuristic", "a.bin", "--require", "bpw >> 3"], "malformed bound 'bpw >> 3'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        ([], "usage: quantgate"),
    ],
)
def test_exit_4_usage(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "a.bin").write_bytes(b"x")
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert needle in proc.stderr
    assert proc.stdout == ""


def test_report_only_maps_only_1_to_0(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    failing = str(policy_with(tmp_path, fail=4))
    code, report = gate(tmp_path, str(release), "--policy", failing, "--report-only")
    assert code == 0
    assert report["verdict"] == "FAIL" and report["exit_code"] == 0 and report["report_only"] is True
    erroring = policy_with(tmp_path)
    erroring.write_text(erroring.read_text().replace("bits_per_weight <= 9", "coverage.ops.int8 >= 0.9", 1))
    code, _ = gate(tmp_path, str(release), "--policy", str(erroring), "--report-only")
    assert code == 2
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert run_cli("run", str(empty), "--report-only", cwd=tmp_path).returncode == 3
    assert run_cli("run", "--report-only", "--format", "nope", cwd=tmp_path).returncode == 4


def _waiver_policy(tmp: Path, sha256: str, expires: str) -> Path:
    return policy_with(
        tmp,
        fail=4,
        extra=f"""
[[waivers]]
guard = "size-heuristic"
artifact = "release/a.gguf"
sha256 = "{sha256}"
reason = "size measured before the embedding was packed"
expires = {expires}
""",
    )


def test_waiver_valid_keeps_fail_visible(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    sha = hashlib.sha256((release / "a.gguf").read_bytes()).hexdigest()
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    code, report = gate(tmp_path, str(release), "--policy", str(_waiver_policy(tmp_path, sha, tomorrow)))
    assert code == 0
    result = only_result(report)
    assert (result["status"], result["gate_status"]) == ("FAIL", "PASS")
    assert result["waiver"]["reason"] == "size measured before the embedding was packed"
    assert result["artifact"]["sha256"] == sha
    assert report["summary"]["waived"] == 1
    text = run_cli(
        "run",
        str(release),
        "--guards",
        "size-heuristic",
        "--policy",
        str(tmp_path / "quantgate.toml"),
        cwd=tmp_path,
    ).stdout
    assert "PASS*" in text and f"waived until {tomorrow}" in text


def test_waiver_wrong_sha256_does_not_apply(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    code, report = gate(tmp_path, str(release), "--policy", str(_waiver_policy(tmp_path, "0" * 64, tomorrow)))
    assert code == 1
    result = only_result(report)
    assert result["gate_status"] == "FAIL" and "waiver" not in result
    assert result["waiver_rejected"]["reason"].startswith("sha256 does not match")


def test_waiver_expired_does_not_apply(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    sha = hashlib.sha256((release / "a.gguf").read_bytes()).hexdigest()
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    code, report = gate(tmp_path, str(release), "--policy", str(_waiver_policy(tmp_path, sha, yesterday)))
    assert code == 1
    result = only_result(report)
    assert result["gate_status"] == "FAIL"
    assert result["waiver_rejected"]["reason"] == f"expired on {yesterday}"


def test_jobs_parallel_same_results(tmp_path: Path) -> None:
    release = make_release(tmp_path, tuple(f"m{i}.gguf" for i in range(6)))
    (release / "m3.gguf").write_bytes(b"\x01" * 4000)  # 32 bits per weight: fails
    policy = str(policy_with(tmp_path, fail=9))
    serial = gate(tmp_path, str(release), "--policy", policy)
    parallel = gate(tmp_path, str(release), "--policy", policy, "--jobs", "3")
    assert serial[0] == parallel[0] == 1

    def key(report: dict) -> list[tuple[str, str, str]]:
        return [(r["artifact"]["path"], r["guard"], r["gate_status"]) for r in report["results"]]

    assert key(serial[1]) == key(parallel[1])
    assert [r["gate_status"] for r in parallel[1]["results"]].count("FAIL") == 1


def test_shard_splits_artifacts(tmp_path: Path) -> None:
    release = make_release(tmp_path, tuple(f"m{i}.gguf" for i in range(5)))
    policy = str(policy_with(tmp_path))
    seen = []
    for k in (1, 2):
        code, report = gate(tmp_path, str(release), "--policy", policy, "--shard", f"{k}/2")
        assert code == 0 and report["shard"] == f"{k}/2"
        seen += [a["path"] for a in report["artifacts"]]
    assert sorted(seen) == [f"release/m{i}.gguf" for i in range(5)]


def test_timeout_is_error_never_pass(tmp_path: Path) -> None:
    import time

    from quantgate.formats.sniff import sniff
    from quantgate.guards.base import Guard, GuardConfig, GuardContext, Outcome, run_guard

    class SlowGuard(Guard):
        id = "slow"
        needs_structure = False

        def measure(self, ctx: GuardContext, config: GuardConfig) -> Outcome:
            time.sleep(5)
            return Outcome(summary="finished")

    artifact = make_release(tmp_path) / "a.gguf"
    ctx = GuardContext(str(artifact), sniff(artifact), ARTIFACT_BYTES)
    started = time.monotonic()
    result = run_guard(SlowGuard(), ctx, GuardConfig(timeout_s=0.3))
    assert time.monotonic() - started < 2
    assert result.status == "ERROR"
    assert result.error["type"] == "timeout"
    assert result.message.startswith("slow exceeded its time budget of 0.3 s")


def test_stdout_is_only_json(tmp_path: Path) -> None:
    release = make_release(tmp_path, ("a.gguf", "b.gguf"))
    proc = run_cli(
        "run",
        "--format",
        "json",
        str(release),
        "--guards",
        "size-heuristic",
        "--policy",
        str(policy_with(tmp_path)),
        cwd=tmp_path,
    )
    json.loads(proc.stdout)  # nothing but JSON
    assert "[2/2]" in proc.stderr  # progress went to stderr


def test_default_subcommand_is_run(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    policy = str(policy_with(tmp_path))
    proc = run_cli(str(release), "--guards", "size-heuristic", "--policy", policy, cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[-1].startswith("quantgate: PASS — 1 artifact, 1 passed")


def test_policy_paths_used_when_no_path_given(tmp_path: Path) -> None:
    make_release(tmp_path)
    write_policy(
        tmp_path,
        SIZE_POLICY.format(fail=9, warn=9).replace("version = 1", 'version = 1\npaths = ["release"]'),
    )
    code, report = run_json("run", "--format", "json", "--guards", "size-heuristic", cwd=tmp_path)
    assert code == 0 and [a["path"] for a in report["artifacts"]] == ["release/a.gguf"]


def test_merge_shard_reports_into_one_verdict(tmp_path: Path) -> None:
    release = make_release(tmp_path, tuple(f"m{i}.gguf" for i in range(5)))
    (release / "m2.gguf").write_bytes(b"\x01" * 4000)  # 32 bits per weight: fails
    policy = str(policy_with(tmp_path, fail=9))
    paths = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}.json"
        proc = run_cli(
            "run",
            str(release),
            "--guards",
            "size-heuristic",
            "--policy",
            policy,
            "--shard",
            f"{k}/3",
            "--output",
            f"json={out}",
            cwd=tmp_path,
        )
        assert proc.returncode in (0, 1)
        paths.append(str(out))
    code, merged = run_json("merge", "--format", "json", *paths, cwd=tmp_path)
    whole_code, whole = gate(tmp_path, str(release), "--policy", policy)
    assert code == whole_code == 1
    assert merged["verdict"] == whole["verdict"] == "FAIL"
    assert merged["summary"] == whole["summary"]
    assert [a["path"] for a in merged["artifacts"]] == [a["path"] for a in whole["artifacts"]]
    assert [m["shard"] for m in merged["merged_from"]] == ["1/3", "2/3", "3/3"]
    from quantgate.core.jsonschemas import validate

    assert validate(merged, "report") == []
    # the same shard twice is an error of the matrix, not a double count
    proc = run_cli("merge", paths[0], paths[0], cwd=tmp_path)
    assert proc.returncode == 2 and "shard 1/3 is given twice" in proc.stderr
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    proc = run_cli("merge", str(tmp_path / "bad.json"), cwd=tmp_path)
    assert proc.returncode == 4 and "is not a quantgate report" in proc.stderr


def test_required_guard_missing_its_dependency_exits_2(tmp_path: Path) -> None:
    """pte-inspector needs the executorch extra: hidden here, a required inspector is an ERROR (exit 2)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['executorch'] = None\n", encoding="utf-8")
    from tests.conftest import FIXTURES, SRC

    env = {"PYTHONPATH": f"{SRC}{os.pathsep}{hide}"}
    program = str(FIXTURES / "pte" / "int8_xnnpack.pte")
    required = write_policy(tmp_path, "[guards.pte-inspector]\nrequired = true\n")
    proc = run_cli("run", "--format", "json", program, "--policy", str(required), cwd=tmp_path, env=env)
    report = json.loads(proc.stdout)
    inspector = next(r for r in report["results"] if r["guard"] == "pte-inspector")
    assert (inspector["status"], inspector["gate_status"]) == ("SKIP", "ERROR")
    assert inspector["skip"]["reason"] == "dependency_missing"
    assert "pip install 'quantgate[executorch]'" in inspector["skip"]["detail"]
    assert proc.returncode == 2 and report["verdict"] == "ERROR"
    optional = write_policy(tmp_path, "[guards.pte-inspector]\nrequired = false\n")
    proc = run_cli("run", "--format", "json", program, "--policy", str(optional), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:]


@pytest.mark.parametrize("argv", [
    ["run", "dist", "--format", "json", "--jobs", "2", "--shard", "1/3"],
    ["guard", "integrity", "a.gguf", "--require", "x>=1", "--param", "k=2"],
    ["inspect", "a.onnx", "--format", "json"],
    ["guards"],
    ["manifest", "a.gguf", "--model-id", "org/m"],
    ["merge", "a.json", "b.json", "--format", "markdown"],
    ["schema", "report"],
    ["render", "r.json", "--format", "html"],
    ["init", "--force"],
    ["check-policy", "q.toml"],
])
def test_one_subcommand_parser_parses_as_the_whole(argv: list[str]) -> None:
    """`main` builds only the parser of the subcommand it was given: it must read the same."""
    from quantgate.cli import main as cli

    assert cli._parser(argv[0]).parse_args(argv) == cli._parser().parse_args(argv)


# --- the process exit ---------------------------------------------------------------------------------

_ATEXIT_PROBE = """
import atexit, sys
atexit.register(lambda: print("atexit ran", file=sys.stderr))
sys.argv = ["quantgate", *sys.argv[1:]]
from quantgate.cli.main import run
run()
"""


@pytest.mark.parametrize(("args", "code"), [
    (["guard", "safetensors-dtypes", "--require", "coverage.ops.int8 >= 0.99"], 1),  # FAIL, one file
    (["guard", "safetensors-dtypes"], 0),
    (["inspect"], 0),
])
def test_a_run_exits_through_the_interpreters_teardown_and_keeps_its_output(args: list[str], code: int) -> None:
    """Every command ends the ordinary way (atexit handlers run; no os._exit shortcut): the report is whole
    and the exit code is the verdict's."""
    artifact = FIXTURES / "safetensors" / "plain_f16" / "model.safetensors"
    proc = subprocess.run([sys.executable, "-c", _ATEXIT_PROBE, *args, str(artifact)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    if args[0] == "guard":
        assert json.loads(proc.stdout)["status"] == ("FAIL" if code else "PASS")
    else:
        assert "model.safetensors" in proc.stdout
    assert "atexit ran" in proc.stderr


def test_report_into_a_closed_pipe_is_an_error_without_noise() -> None:
    """A reader of stdout that went away (`| head -c0`): exit 2, no 'Exception ignored' from the exit."""
    artifact = FIXTURES / "safetensors" / "plain_f16" / "model.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "quantgate", "guard", "safetensors-dtypes", str(artifact)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 2, err
    assert "Exception ignored" not in err and "Traceback" not in err
