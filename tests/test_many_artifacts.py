"""A release of many artifacts: the runtime's start-up paid once per run (or per --jobs worker), one
failing program costing only itself, --jobs batching small artifacts, and the audit's own cost reported.

No timings are asserted (they depend on the machine): the number of runtime start-ups, restarts,
worker processes and batches is, and those are what make the timings (benchmarks/bench_many.py).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURES, run_cli, run_json
from quantgate.core.jsonschemas import validate

PTE = FIXTURES / "pte"
PROGRAMS = ("a_int8_xnnpack", "b_fp32_portable", "c_dq8_xnnpack", "d_int8_portable")
HAVE_RUNTIME = all(importlib.util.find_spec(m) is not None for m in ("executorch", "torch"))
needs_runtime = pytest.mark.skipif(not HAVE_RUNTIME, reason="executorch/torch not installed")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc (the memory watchdog)")


def _folder(tmp_path: Path, policy_params: str = "") -> tuple[Path, Path]:
    """The four committed programs in one folder, named so they run in this order; the policy enables
    pte-inspector (off by default)."""
    models = tmp_path / "models"
    models.mkdir()
    for name in PROGRAMS:
        shutil.copyfile(PTE / f"{name.split('_', 1)[1]}.pte", models / f"{name}.pte")
    policy = tmp_path / "quantgate.toml"
    policy.write_text("[guards.pte-inspector]\nenabled = true\n" + (f"params = {{ {policy_params} }}\n"
                                                                   if policy_params else ""))
    return models, policy


def _stable(value: Any) -> Any:
    """A result's metrics without what changes from run to run (times, the runner's imports, memory peaks)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in ("time_ns", "runtime")}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _key(result: dict[str, Any]) -> tuple[Any, ...]:
    return (result["status"], result["message"].split("; method ran in")[0],
            [f["code"] for f in result["findings"]], _stable(result["metrics"]))


def _gate(models: Path, policy: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    code, report = run_json("run", str(models), "--policy", str(policy), "--guards", "pte-inspector",
                            "--format", "json", *extra, env=env, timeout=300)
    assert validate(report, "report") == [], report.get("cost")
    return code, report


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {Path(r["artifact"]["path"]).stem: r for r in report["results"]}


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, ...]]:
    """Each program gated on its own (`quantgate guard`, a runtime of its own)."""
    if not HAVE_RUNTIME:
        pytest.skip("executorch/torch not installed")
    out = {}
    for name in PROGRAMS:
        code, result = run_json("guard", "pte-inspector", str(PTE / f"{name.split('_', 1)[1]}.pte"), timeout=180)
        assert (code, result["status"]) == (0, "PASS"), result
        out[name] = _key(result)
    return out


@needs_runtime
def test_one_runtime_start_for_a_folder_of_programs(tmp_path: Path, alone: dict[str, tuple[Any, ...]]) -> None:
    models, policy = _folder(tmp_path)
    code, report = _gate(models, policy, "--jobs", "1")
    assert code == 0, report["summary"]
    cost = report["cost"]
    assert (cost["runtime_startups"], cost["runtime_restarts"], cost["jobs"], cost["workers"]) == (1, 0, 1, 0)
    assert cost["by_guard"]["pte-inspector"]["count"] == 4
    results = _by_name(report)
    assert sorted(results) == list(PROGRAMS)
    for name in PROGRAMS:  # the served runner answers exactly as a runtime of the program's own
        assert _key(results[name]) == alone[name], name
        assert results[name]["metrics"]["runtime"]["runner"]["served"] is True


@needs_runtime
@linux_only
@pytest.mark.parametrize(("fault", "params", "status", "what"), [
    ("segv", "", "ERROR", "runtime_crash"),
    ("abort", "", "ERROR", "runtime_crash"),
    ("memory", "max_rss_mb = 1024", "FAIL", "RUNTIME_MEMORY_LIMIT"),
])
def test_a_failing_program_costs_only_itself(tmp_path: Path, alone: dict[str, tuple[Any, ...]], fault: str,
                                             params: str, status: str, what: str) -> None:
    # the runner fails (crash, or 1 GiB over a 1 GiB limit) on the second program only
    models, policy = _folder(tmp_path, params)
    code, report = _gate(models, policy, "--jobs", "1", env={"QUANTGATE_RUNNER_FAULT": f"{fault}:{PROGRAMS[1]}.pte"})
    assert code == {"ERROR": 2, "FAIL": 1}[status]
    results = _by_name(report)
    bad = results[PROGRAMS[1]]
    assert bad["status"] == status
    if status == "ERROR":
        assert bad["error"]["type"] == what
        signame = {"segv": "SIGSEGV", "abort": "SIGABRT"}[fault]
        assert bad["error"]["message"].startswith(f"the ExecuTorch runtime crashed with {signame} "), bad["error"]
    else:
        assert [f["code"] for f in bad["findings"]] == [what]
        assert bad["findings"][0]["message"].startswith("the ExecuTorch runtime needed more than the 1024 MiB")
    # the programs before and after it: as if run alone, the later ones by a fresh runner
    for name in (PROGRAMS[0], *PROGRAMS[2:]):
        assert _key(results[name]) == alone[name], name
    assert (report["cost"]["runtime_startups"], report["cost"]["runtime_restarts"]) == (2, 1)


@needs_runtime
def test_jobs_workers_keep_their_runner(tmp_path: Path) -> None:
    # auto: one worker per program up to the cores; each worker starts one runner for all its programs
    models, policy = _folder(tmp_path)
    code, report = _gate(models, policy, "--jobs", "2")
    assert code == 0
    cost = report["cost"]
    assert (cost["jobs"], cost["workers"], cost["batches"]) == (2, 2, 4)
    assert cost["runtime_startups"] == 2
    assert [r["status"] for r in report["results"]] == ["PASS"] * 4


# --- --jobs on many small artifacts ------------------------------------------------------------------

SMALL = FIXTURES / "safetensors" / "broken" / "f4_odd.safetensors"


def _small_release(tmp_path: Path, count: int) -> Path:
    release = tmp_path / "release"
    release.mkdir()
    data = SMALL.read_bytes()
    for i in range(count):
        (release / f"m{i:03d}.safetensors").write_bytes(data)
    return release


def _statuses(report: dict[str, Any]) -> list[tuple[str, str, str, list[str]]]:
    return [(r["artifact"]["path"], r["guard"], r["gate_status"], [f["code"] for f in r["findings"]])
            for r in report["results"]]


def test_jobs_batches_small_artifacts(tmp_path: Path) -> None:
    release = _small_release(tmp_path, 200)
    serial_code, serial = run_json("run", str(release), "--format", "json", "--jobs", "1", cwd=tmp_path)
    code, parallel = run_json("run", str(release), "--format", "json", "--jobs", "2", cwd=tmp_path)
    assert code == serial_code
    assert _statuses(parallel) == _statuses(serial)
    # two worker processes, fed 8 batches of 25 artifacts: not 200 processes (their start-up was what
    # made --jobs 2 six times slower than serial)
    cost = parallel["cost"]
    assert (cost["jobs"], cost["workers"], cost["batches"], cost["runtime_startups"]) == (2, 2, 8, 0)
    assert (serial["cost"]["workers"], serial["cost"]["batches"]) == (0, 0)
    assert validate(parallel, "report") == []


def test_jobs_auto_is_serial_for_header_scans(tmp_path: Path) -> None:
    release = _small_release(tmp_path, 12)
    _, report = run_json("run", str(release), "--format", "json", cwd=tmp_path)
    cost = report["cost"]
    assert (cost["jobs"], cost["workers"], cost["batches"]) == (1, 0, 0)
    guards = {r["guard"] for r in report["results"] if r["skip"] is None or r["skip"]["reason"] != "not_applicable"}
    assert sorted(cost["by_guard"]) == sorted(guards)
    assert all(row["count"] == 12 for row in cost["by_guard"].values())
    assert cost["wall_s"] == report["duration_s"]


def test_bad_jobs_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("run", "--jobs", "many", str(tmp_path))
    assert (proc.returncode, proc.stdout) == (4, "")
    assert "invalid --jobs 'many': a whole number or auto" in proc.stderr


def test_text_report_shows_the_cost(tmp_path: Path) -> None:
    release = _small_release(tmp_path, 3)
    proc = run_cli("run", str(release), "--jobs", "1", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("quantgate: ")
    assert lines[-2].startswith("cost: ") and " s wall; guards " in lines[-2]
    report = json.loads(run_cli("run", str(release), "--jobs", "1", "--format", "json", cwd=tmp_path).stdout)
    assert f"({report['cost']['by_guard']['integrity']['count']})" in lines[-2]


@needs_runtime
def test_fidelity_output_runs_share_one_runtime(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a", "b", "c"):
        shutil.copyfile(PTE / "int8_xnnpack.pte", models / f"{name}.pte")
    policy = tmp_path / "quantgate.toml"
    policy.write_text(f'[guards.fidelity]\nreference = "{PTE / "fp32_xnnpack.pte"}"\nparams = {{ weights = false }}\n')
    _, report = run_json("run", str(models), "--policy", str(policy), "--guards", "fidelity", "--jobs", "1",
                            "--format", "json", timeout=300)
    assert validate(report, "report") == []
    results = report["results"]
    assert [r["status"] for r in results] == ["PASS"] * 3, [r["message"] for r in results]
    # the three pairs ran the same inputs through one runtime: the same numbers, one start-up
    assert len({json.dumps(r["metrics"]["outputs"], sort_keys=True) for r in results}) == 1
    assert report["cost"]["runtime_startups"] == 1
    assert report["cost"]["by_guard"]["fidelity"]["count"] == 3
