"""Issue 13, items 5 and 6: never PASS on a check that did not run; reports are written safely.

Every test here drives the real CLI in a subprocess and asserts exit codes to the digit.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from tests.conftest import FIXTURES, ROOT, SRC, cli_env, run_cli, run_json

ARTIFACT_BYTES = 1000  # over PARAMS = 1000: 8 bits per weight
SIZE_POLICY = """
[quantgate]
version = 1

[guards.size-heuristic]
params = { params = 1000 }
require = ["bits_per_weight <= 9"]
"""


def _release(tmp: Path, count: int = 3) -> Path:
    release = tmp / "release"
    release.mkdir()
    for i in range(count):
        (release / f"m{i}.gguf").write_bytes(b"\x01" * ARTIFACT_BYTES)
    return release


def _policy(tmp: Path, body: str = SIZE_POLICY, name: str = "quantgate.toml") -> Path:
    path = tmp / name
    path.write_text(body, encoding="utf-8")
    return path


def _shard(tmp: Path, release: Path, policy: Path, k: int, n: int, name: str | None = None) -> str:
    out = tmp / (name or f"shard{k}.json")
    proc = run_cli(
        "run", str(release), "--guards", "size-heuristic", "--policy", str(policy),
        "--shard", f"{k}/{n}", "--output", f"json={out}", cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr
    return str(out)


# ---------------------------------------------------------------------------------------------
# merge refuses an incomplete shard set


def test_shard_report_records_inputs_and_shard(tmp_path: Path) -> None:
    release = _release(tmp_path)
    path = _shard(tmp_path, release, _policy(tmp_path), 2, 3)
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    assert report["shard"] == "2/3"
    assert report["inputs"] == {"paths": ["release"], "artifacts_total": 3}
    assert [a["path"] for a in report["artifacts"]] == ["release/m1.gguf"]


def test_merge_of_the_last_shard_alone_is_an_error(tmp_path: Path) -> None:
    release = _release(tmp_path)
    third = _shard(tmp_path, release, _policy(tmp_path), 3, 3)
    proc = run_cli("merge", "--format", "json", third, cwd=tmp_path)
    merged = json.loads(proc.stdout)
    assert proc.returncode == 2
    assert (merged["verdict"], merged["exit_code"]) == ("ERROR", 2)
    assert merged["merge"]["missing"] == [1, 2] and merged["merge"]["present"] == [3]
    assert "shard(s) 1, 2 of 3 missing" in proc.stderr

    proc = run_cli("merge", "--format", "json", "--allow-partial", third, cwd=tmp_path)
    merged = json.loads(proc.stdout)
    assert proc.returncode == 0 and merged["verdict"] == "PASS"
    assert merged["merge"]["missing"] == [1, 2] and merged["merge"]["allow_partial"] is True
    assert merged["merge"]["problems"] == []
    text = run_cli("merge", "--allow-partial", third, cwd=tmp_path)
    assert text.returncode == 0
    assert "merge: partial (--allow-partial): shard(s) 1, 2 of 3 missing, not gated" in text.stdout
    from quantgate.core.jsonschemas import validate

    assert validate(merged, "report") == []


def test_merge_of_the_whole_set_passes(tmp_path: Path) -> None:
    release = _release(tmp_path)
    policy = _policy(tmp_path)
    paths = [_shard(tmp_path, release, policy, k, 3) for k in (1, 2, 3)]
    code, merged = run_json("merge", "--format", "json", *paths, cwd=tmp_path)
    assert code == 0 and merged["verdict"] == "PASS"
    assert merged["merge"] == {
        "shards": 3, "present": [1, 2, 3], "missing": [], "duplicated": [], "allow_partial": False, "problems": [],
    }
    assert merged["summary"]["artifacts"] == 3 and merged["summary"]["PASS"] == 3


def test_merge_of_a_duplicated_shard_is_an_error(tmp_path: Path) -> None:
    release = _release(tmp_path)
    policy = _policy(tmp_path)
    first, second = _shard(tmp_path, release, policy, 1, 2), _shard(tmp_path, release, policy, 2, 2)
    again = _shard(tmp_path, release, policy, 1, 2, name="again.json")
    for args in ([first, second, again], ["--allow-partial", first, second, again]):
        code, merged = run_json("merge", "--format", "json", *args, cwd=tmp_path)
        assert code == 2 and merged["verdict"] == "ERROR"
        assert merged["merge"]["duplicated"] == [1]
        assert merged["summary"]["artifacts"] == 3  # the duplicate is not counted twice


def test_merge_of_shards_under_different_policies_is_an_error(tmp_path: Path) -> None:
    release = _release(tmp_path)
    one = _policy(tmp_path, name="one.toml")
    two = _policy(tmp_path, SIZE_POLICY + "# another revision\n", name="two.toml")
    first, second = _shard(tmp_path, release, one, 1, 2), _shard(tmp_path, release, two, 2, 2)
    for args in ([first, second], ["--allow-partial", first, second]):
        proc = run_cli("merge", "--format", "json", *args, cwd=tmp_path)
        assert proc.returncode == 2 and json.loads(proc.stdout)["verdict"] == "ERROR"
        assert "different policies" in proc.stderr


def test_merge_of_shards_of_different_inputs_is_an_error(tmp_path: Path) -> None:
    release = _release(tmp_path)
    policy = _policy(tmp_path)
    first = _shard(tmp_path, release, policy, 1, 2)
    (release / "m3.gguf").write_bytes(b"\x01" * ARTIFACT_BYTES)  # the list changed between the runs
    second = _shard(tmp_path, release, policy, 2, 2)
    proc = run_cli("merge", "--format", "json", first, second, cwd=tmp_path)
    assert proc.returncode == 2 and json.loads(proc.stdout)["verdict"] == "ERROR"
    assert "different inputs" in proc.stderr


# ---------------------------------------------------------------------------------------------
# a bounded guard that cannot run is an ERROR, not a SKIP


def _hide(tmp: Path, module: str) -> dict[str, str]:
    """An environment in which `module` cannot be imported: the core install, without the extra."""
    hide = tmp / "hide"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n", encoding="utf-8")
    return {"PYTHONPATH": f"{SRC}{os.pathsep}{hide}"}


def test_bounded_guard_without_its_extra_is_an_error(tmp_path: Path) -> None:
    env = _hide(tmp_path, "numpy")
    artifact = str(FIXTURES / "release" / "tiny-llama-q8_0.gguf")
    bounded = _policy(tmp_path, '[guards.fidelity]\nreference = "x.gguf"\nrequire = ["weights.cosine.min >= 0.99"]\n')
    proc = run_cli("run", "--format", "json", "--guards", "integrity,fidelity", artifact,
                   "--policy", str(bounded), cwd=tmp_path, env=env)
    report = json.loads(proc.stdout)
    fidelity = next(r for r in report["results"] if r["guard"] == "fidelity")
    assert (fidelity["status"], fidelity["gate_status"]) == ("SKIP", "ERROR")
    assert fidelity["skip"]["reason"] == "dependency_missing"
    assert "pip install 'quantgate[fidelity]'" in fidelity["message"]
    assert proc.returncode == 2 and report["verdict"] == "ERROR"
    # a warn bound asks for the numbers too
    warned = _policy(tmp_path, '[guards.fidelity]\nreference = "x.gguf"\nwarn = ["size_ratio >= 1.5"]\n')
    proc = run_cli("run", "--format", "json", "--guards", "integrity,fidelity", artifact,
                   "--policy", str(warned), cwd=tmp_path, env=env)
    assert proc.returncode == 2
    # `quantgate guard` with a bound: exit 2 and the hint on stderr; without one a skip exits 0
    proc = run_cli("guard", "fidelity", artifact, "--require", "size_ratio>=1", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and json.loads(proc.stdout)["status"] == "SKIP"
    assert "fidelity cannot run here: numpy is not installed: pip install 'quantgate[fidelity]'" in proc.stderr
    assert run_cli("guard", "fidelity", artifact, cwd=tmp_path, env=env).returncode == 0
    # unbounded and not required: the skip stays a skip
    unbounded = _policy(tmp_path, '[guards.fidelity]\nreference = "x.gguf"\n')
    proc = run_cli("run", "--format", "json", "--guards", "integrity,fidelity", artifact,
                   "--policy", str(unbounded), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_bounded_error_skips_are_defined_once() -> None:
    """`run` (gate/evaluate) and `guard` (cli/main) make a bounded guard's skip an ERROR by one list,
    gate.BOUNDED_ERROR_SKIPS: no module spells a skip reason itself (core/result.py names them)."""
    import ast

    from quantgate.core import result

    reasons = {result.NOT_APPLICABLE, result.DISABLED, result.DEPENDENCY_MISSING, result.NO_INPUT,
               result.BLOCKED_BY_INTEGRITY}
    spelled = sorted(
        {str(path.relative_to(SRC)) for path in (SRC / "quantgate").rglob("*.py")
         for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
         if isinstance(node, ast.Constant) and node.value in reasons}
    )
    assert spelled == ["quantgate/core/result.py"]
    from quantgate.gate import BOUNDED_ERROR_SKIPS

    assert BOUNDED_ERROR_SKIPS == ("dependency_missing",)


def test_repository_policy_in_a_core_install_is_an_error(tmp_path: Path) -> None:
    """The issue's case: the repository's own policy bounds fidelity; without numpy it cannot PASS."""
    proc = run_cli("run", "--format", "json", "--policy", str(ROOT / "quantgate.toml"),
                   cwd=ROOT, env=_hide(tmp_path, "numpy"), timeout=300)
    report = json.loads(proc.stdout)
    assert proc.returncode == 2 and report["verdict"] == "ERROR"
    fidelity = [r for r in report["results"] if r["guard"] == "fidelity" and r["gate_status"] == "ERROR"]
    assert len(fidelity) == 4  # the four quantized artifacts of the sample release (not the manifest)


def test_extras_names_what_the_policy_needs(tmp_path: Path) -> None:
    proc = run_cli("extras", "--policy", str(ROOT / "quantgate.toml"), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "fidelity\n")
    both = _policy(tmp_path, '[guards.fidelity]\nwarn = ["size_ratio >= 1"]\n[guards.pte-inspector]\nrequired = true\n')
    proc = run_cli("extras", "--policy", str(both), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "executorch,fidelity\n")
    proc = run_cli("extras", "--policy", str(_policy(tmp_path)), cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "\n")


# ---------------------------------------------------------------------------------------------
# metric names and guard ids: typos get a suggestion


def test_check_policy_suggests_the_metric_name(tmp_path: Path) -> None:
    policy = _policy(tmp_path, '[guards.onnx-dtypes]\nrequire = ["coverage.parms.int8 >= 0.9"]\n')
    proc = run_cli("check-policy", str(policy), cwd=tmp_path)
    assert proc.returncode == 4
    assert (
        f"{policy}: guards.onnx-dtypes.require (line 2): onnx-dtypes never produces the metric "
        "coverage.parms.int8; did you mean coverage.params.int8?"
    ) in proc.stderr
    assert run_cli("check-policy", str(ROOT / "quantgate.toml"), cwd=tmp_path).returncode == 0
    wildcard = _policy(tmp_path, '[guards.pte-program]\nrequire = ["coverage.ops.by_bits.4 >= 0.5"]\n')
    assert run_cli("check-policy", str(wildcard), cwd=tmp_path).returncode == 0


def test_guards_typo_gets_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"\x01" * 10)
    proc = run_cli("run", str(tmp_path / "a.gguf"), "--guards", "gguf-dtype", cwd=tmp_path)
    assert proc.returncode == 4
    assert "unknown guard(s): gguf-dtype; did you mean gguf-dtypes?" in proc.stderr
    proc = run_cli("guard", "gguf-dtype", str(tmp_path / "a.gguf"), cwd=tmp_path)
    assert proc.returncode == 4 and "unknown guard 'gguf-dtype'; did you mean gguf-dtypes?" in proc.stderr


def test_missing_metric_hint_says_why(tmp_path: Path) -> None:
    onnx = str(FIXTURES / "release" / "attn-block-int8-qdq.onnx")
    proc = run_cli("guard", "onnx-dtypes", onnx, "--require", "coverage.parms.int8>=0.9", cwd=tmp_path)
    result = json.loads(proc.stdout)
    assert proc.returncode == 2 and result["status"] == "ERROR"
    assert result["error"]["hint"] == (
        "onnx-dtypes never produces coverage.parms.int8; did you mean coverage.params.int8?"
    )
    # a safetensors file holding only a bias: nothing weight-bearing to measure
    header = json.dumps({"b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    bias = tmp_path / "bias.safetensors"
    bias.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    proc = run_cli("guard", "safetensors-dtypes", str(bias), "--require", "coverage.ops.int8>=0.9", cwd=tmp_path)
    result = json.loads(proc.stdout)
    assert proc.returncode == 2 and result["status"] == "ERROR"
    assert result["error"]["hint"] == (
        "safetensors-dtypes found no weight-bearing layers in this artifact, so it has no coverage.ops.int8"
    )


# ---------------------------------------------------------------------------------------------
# --output is written safely


def test_output_replaces_a_symlink_and_leaves_its_target(tmp_path: Path) -> None:
    release = _release(tmp_path, 1)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    reports = tmp_path / "quantgate-reports"
    reports.mkdir()
    (reports / "report.json").symlink_to(victim)
    proc = run_cli("run", str(release), "--guards", "size-heuristic", "--policy", str(_policy(tmp_path)),
                   "--output", f"json={reports / 'report.json'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text(encoding="utf-8") == "precious\n"
    written = reports / "report.json"
    assert not written.is_symlink() and written.is_file()
    assert json.loads(written.read_text(encoding="utf-8"))["verdict"] == "PASS"
    assert sorted(p.name for p in reports.iterdir()) == ["report.json"]  # no temporary file left


def test_unwritable_output_keeps_the_verdict(tmp_path: Path) -> None:
    release = _release(tmp_path, 1)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be\n", encoding="utf-8")
    out = f"json={blocker / 'sub' / 'report.json'}"
    passing = _policy(tmp_path)
    proc = run_cli("run", str(release), "--guards", "size-heuristic", "--policy", str(passing),
                   "--format", "json", "--output", out, cwd=tmp_path)
    assert json.loads(proc.stdout)["verdict"] == "PASS"  # the report still reaches stdout
    assert proc.returncode == 2  # a pass whose report could not be written does not look green
    assert f"quantgate: error: cannot write --output {out}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    failing = _policy(tmp_path, SIZE_POLICY.replace("<= 9", "<= 4"), name="failing.toml")
    proc = run_cli("run", str(release), "--guards", "size-heuristic", "--policy", str(failing),
                   "--format", "json", "--output", out, cwd=tmp_path)
    assert json.loads(proc.stdout)["verdict"] == "FAIL"
    assert proc.returncode == 1  # the verdict's own code when it already fails


def test_unwritable_step_summary_keeps_the_verdict(tmp_path: Path) -> None:
    release = _release(tmp_path, 1)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be\n", encoding="utf-8")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(blocker / "summary.md")}
    proc = run_cli("run", str(release), "--guards", "size-heuristic", "--policy", str(_policy(tmp_path)),
                   "--format", "json", cwd=tmp_path, env=env)
    assert json.loads(proc.stdout)["verdict"] == "PASS"
    assert proc.returncode == 2
    assert "quantgate: error: cannot write the GitHub step summary or outputs" in proc.stderr


def test_action_installs_the_extras_the_policy_needs(tmp_path: Path) -> None:
    """action/run.sh on a runner: a stub `python3` whose venv logs every pip install and runs
    quantgate from src/; a policy bounding fidelity makes the action install `quantgate[fidelity]`."""
    import subprocess
    import sys

    log = tmp_path / "pip.log"
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    venv_python = (
        "#!/bin/bash\n"
        f'if [ "$1" = -m ] && [ "$2" = pip ]; then shift 2; echo "$*" >> {log}; exit 0; fi\n'
        f'PYTHONPATH={SRC} exec {sys.executable} "$@"\n'
    )
    (stubs / "python3").write_text(
        "#!/bin/bash\n"
        'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"; cat > "$3/bin/python" <<\'EOF\'\n'
        + venv_python + "EOF\nchmod +x \"$3/bin/python\"; exit 0; fi\nexit 1\n",
        encoding="utf-8",
    )
    (stubs / "python3").chmod(0o755)
    release = _release(tmp_path, 1)
    policy = _policy(tmp_path, SIZE_POLICY + '\n[guards.fidelity]\nwarn = ["size_ratio >= 1"]\n')
    env = {
        "PATH": f"{stubs}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "RUNNER_TEMP": str(tmp_path / "runner"),
        "GITHUB_ACTION_PATH": str(ROOT),
        "GITHUB_OUTPUT": str(tmp_path / "github_output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step_summary"),
        "QG_PATHS": str(release),
        "QG_POLICY": str(policy),
        "QG_GUARDS": "size-heuristic,fidelity",
        "QG_OUTPUTS": "json",
        "QG_INSTALL": "true",
    }
    proc = subprocess.run(["bash", str(ROOT / "action" / "run.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    installs = log.read_text(encoding="utf-8").splitlines()
    assert installs == [
        f"install --quiet --disable-pip-version-check {ROOT}",
        f"install --quiet --disable-pip-version-check {ROOT}[fidelity]",
    ]
    assert "the policy's guards need the extra(s) fidelity" in proc.stderr


def test_pytest_plugin_report_replaces_a_symlink_and_leaves_its_target(tmp_path: Path) -> None:
    """`--quantgate-report` is written like every --output: a link at the target is replaced."""
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(FIXTURES / "release" / "tiny-llama-q8_0.gguf", release)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n", encoding="utf-8")
    report = tmp_path / "reports" / "report.json"
    report.parent.mkdir()
    report.symlink_to(victim)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "--quantgate", str(release), "--quantgate-report", str(report), "--quantgate-guards", "integrity"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert victim.read_text(encoding="utf-8") == "keep me\n"
    assert not report.is_symlink()
    assert json.loads(report.read_text(encoding="utf-8"))["verdict"] == "PASS"
