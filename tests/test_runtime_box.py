"""The runtime box: runtime children under a memory limit, in their own process group, dying with the gate.

The memory fixture `fixtures/pte/memory/big_activation_portable.pte` (made by
fixtures/pte/make_memory_fixtures.py with the real exporter) plans 1,073,741,840 bytes of activations
(executorch's own deserializer: sum of execution_plan[0].non_const_buffer_sizes) and touches them
when it runs (1.38 GB peak RSS), while the file is 1.9 KB.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, cli_env, run_json
from quantgate.core.jsonschemas import validate
from quantgate.formats.pte import reader as pte
from quantgate.guards.pte_inspector import run_runner
from quantgate.runtime.child import run_json_child

PTE = FIXTURES / "pte"
BIG = PTE / "memory" / "big_activation_portable.pte"
BIG_PLANNED = 1_073_741_840  # executorch's deserialize_pte_binary: non_const_buffer_sizes [0, 1073741840]
BIG_CONSTANT = 8  # one inline constant buffer of 8 bytes (entry 0 is the reserved empty one)
HAVE_RUNTIME = all(importlib.util.find_spec(m) is not None for m in ("executorch", "torch"))
needs_runtime = pytest.mark.skipif(not HAVE_RUNTIME, reason="executorch/torch not installed")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (a container's init may be slow to): either way not running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _wait_dead(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = [p for p in pids if not _dead(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if not _dead(p)]
    return alive


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children") as fh:
                    kids = [int(x) for x in fh.read().split()]
                out.extend(kids)
                todo.extend(kids)
        except (OSError, ValueError):
            continue
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# --- planned memory (pte-program) ---------------------------------------------------------------


def test_planned_memory_is_read_from_the_plan() -> None:
    memory = pte.read(str(BIG)).metrics["memory"]
    assert memory == {"planned_bytes": BIG_PLANNED, "constant_bytes": BIG_CONSTANT}
    assert BIG.stat().st_size < 4096


@needs_runtime
def test_planned_memory_agrees_with_executorch_on_every_fixture() -> None:
    from executorch.exir._serialize._program import deserialize_pte_binary

    checked = 0
    for path in sorted(PTE.rglob("*.pte")):
        program = deserialize_pte_binary(path.read_bytes())
        program = getattr(program, "program", program)
        planned = max(sum(plan.non_const_buffer_sizes[1:]) for plan in program.execution_plan)
        constant = sum(len(buf.storage) for buf in program.constant_buffer)
        seg = program.constant_segment
        if seg is not None and seg.segment_index < len(program.segments):
            constant += program.segments[seg.segment_index].size
        assert pte.read(str(path)).metrics["memory"] == {"planned_bytes": planned, "constant_bytes": constant}, path
        checked += 1
    assert checked >= 26


def test_pte_program_reports_and_bounds_planned_memory() -> None:
    code, result = run_json("guard", "pte-program", str(BIG))
    assert (code, result["status"]) == (0, "PASS"), result
    assert result["metrics"]["memory"] == {"planned_bytes": BIG_PLANNED, "constant_bytes": BIG_CONSTANT}
    code, result = run_json("guard", "pte-program", str(BIG), "--require", "memory.planned_bytes<=1000000000")
    assert (code, result["status"]) == (1, "FAIL"), result


# --- the memory limit ------------------------------------------------------------------------------


@needs_runtime
def test_inspector_fails_a_program_planning_more_than_the_limit() -> None:
    code, result = run_json("guard", "pte-inspector", str(BIG), "--param", "max_rss_mb=512", timeout=120)
    assert (code, result["status"]) == (1, "FAIL"), result
    assert [f["code"] for f in result["findings"]] == ["RUNTIME_MEMORY_LIMIT"]
    message = result["findings"][0]["message"]
    assert "512 MiB memory limit" in message and "max_rss_mb=N" in message
    assert result["metrics"]["memory"]["planned_bytes"] == BIG_PLANNED
    assert result["metrics"]["runtime"]["box"] == {"max_rss_mb": 512}
    assert validate(result, "guard-result") == []


@needs_runtime
def test_inspector_runs_it_under_the_default_limit() -> None:
    code, result = run_json("guard", "pte-inspector", str(BIG), timeout=180)
    assert (code, result["status"]) == (0, "PASS"), result
    box = result["metrics"]["runtime"]["box"]
    assert box["max_rss_mb"] == 4096
    # the run touched the planned GiB: the watchdog saw it resident
    assert BIG_PLANNED < box["peak_rss_bytes"] < 4096 << 20
    assert validate(result, "guard-result") == []


@needs_runtime
@linux_only
def test_watchdog_kills_the_real_runtime_over_the_limit() -> None:
    # run_runner has no static pre-check: this is the watchdog on the running ExecuTorch runtime
    run = run_runner([str(BIG)], timeout_s=120, max_rss_mb=512)
    assert set(run) == {"memory"}, run
    assert run["memory"].startswith("the ExecuTorch runtime needed more than the 512 MiB memory limit and was killed")


@needs_runtime
@linux_only
def test_inspector_child_over_memory_is_a_fail() -> None:
    code, result = run_json("guard", "pte-inspector", str(PTE / "int8_xnnpack.pte"), "--param", "_fault=memory",
                            "--param", "max_rss_mb=256", timeout=120)
    assert (code, result["status"]) == (1, "FAIL"), result
    assert [f["code"] for f in result["findings"]] == ["RUNTIME_MEMORY_LIMIT"]
    assert "256 MiB memory limit" in result["findings"][0]["message"]


@linux_only
def test_json_child_over_memory_is_a_memory_finding() -> None:
    hog = "import time; b = b'\\x01' * (512 << 20); time.sleep(30)"
    started = time.monotonic()
    run = run_json_child([sys.executable, "-c", hog], "rt", 60, max_rss_mb=128)
    assert run["finding"][0] == "RUNTIME_MEMORY_LIMIT", run
    assert run["finding"][1].startswith("rt needed more than the 128 MiB memory limit and was killed")
    assert time.monotonic() - started < 20


@needs_runtime
@linux_only
def test_fidelity_output_run_over_memory_is_a_fail() -> None:
    code, result = run_json("guard", "fidelity", str(PTE / "int8_xnnpack.pte"), "--param",
                            f"reference={PTE / 'fp32_xnnpack.pte'}", "--param", "weights=false",
                            "--param", "max_rss_mb=128", timeout=120)
    assert (code, result["status"]) == (1, "FAIL"), result
    assert [f["code"] for f in result["findings"]] == ["RUNTIME_MEMORY_LIMIT"]
    assert result["findings"][0]["message"].startswith(
        "the ExecuTorch runtime needed more than the 128 MiB memory limit and was killed")


@pytest.mark.parametrize("value", ["0", "-3", "lots", "1.5"])
def test_inspector_rejects_a_bad_max_rss_mb(value: str) -> None:
    code, result = run_json("guard", "pte-inspector", str(PTE / "int8_xnnpack.pte"), "--param", f"max_rss_mb={value}")
    if result["status"] == "SKIP":
        pytest.skip("executorch/torch not installed")
    assert (code, result["status"]) == (2, "ERROR"), result
    assert result["error"]["type"] == "bad_param"


def test_fidelity_rejects_a_bad_max_rss_mb(tmp_path: Path) -> None:
    code, result = run_json("guard", "fidelity", str(PTE / "int8_xnnpack.pte"), "--param",
                            f"reference={PTE / 'fp32_xnnpack.pte'}", "--param", "max_rss_mb=-3")
    assert (code, result["status"]) == (2, "ERROR"), result
    assert result["error"]["type"] == "bad_param"


# --- the process group ---------------------------------------------------------------------------


@linux_only
@pytest.mark.parametrize(("fault", "timeout", "etype"),
                         [("grandchild", 3, "timeout"), ("orphan", 30, "runtime_output")])
def test_no_grandchild_outlives_the_child(tmp_path: Path, fault: str, timeout: float, etype: str) -> None:
    run = run_runner(["unused.pte"], timeout_s=timeout, fault=fault, workdir=str(tmp_path))
    assert run["error"][0] == etype, run
    child, grandchild = (int(x) for x in (tmp_path / "pids").read_text().split())
    assert _wait_dead([child, grandchild], 5) == []


@linux_only
@pytest.mark.parametrize(("then", "timeout"), [("import time; time.sleep(60)", 2), ("pass", 30)])
def test_json_child_takes_its_grandchild_along(tmp_path: Path, then: str, timeout: float) -> None:
    pids = tmp_path / "pids"
    script = ("import os, subprocess, sys\n"
              "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], stdin=subprocess.DEVNULL, "
              "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
              f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}')\n{then}\n")
    run = run_json_child([sys.executable, "-c", script], "rt", timeout)
    assert run["finding"][0] == "FIDELITY_RUNTIME_FAILED", run
    child, grandchild = (int(x) for x in pids.read_text().split())
    assert _wait_dead([child, grandchild], 5) == []


# --- --jobs workers die with the gate ----------------------------------------------------------------


@needs_runtime
@linux_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_jobs_workers_die_with_the_gate(tmp_path: Path, sig: signal.Signals) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a", "b"):
        (models / f"{name}.pte").write_bytes((PTE / "int8_xnnpack.pte").read_bytes())
    policy = tmp_path / "quantgate.toml"
    policy.write_text('[guards.pte-inspector]\nenabled = true\ntimeout_s = 600\n'
                      'params = { _fault = "hang", timeout = 600 }\n')
    gate = subprocess.Popen([sys.executable, "-m", "quantgate", "run", str(models), "--policy", str(policy),
                             "--jobs", "2", "--guards", "pte-inspector", "--format", "json"],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        family: list[int] = []
        while time.monotonic() < deadline:
            family = _descendants(gate.pid)
            if sum("quantgate.runtime.pte_runner" in _cmdline(p) for p in family) >= 2:
                break
            time.sleep(0.2)
        runners = [p for p in family if "quantgate.runtime.pte_runner" in _cmdline(p)]
        assert len(runners) == 2, [(p, _cmdline(p)) for p in family]
        workers = _descendants(gate.pid)
        gate.send_signal(sig)
        code = gate.wait(30)
        # SIGTERM keeps its meaning once the workers are gone (death by the signal); SIGINT is quantgate's 130;
        # SIGKILL cannot be handled: the workers' parent-death signal stops them
        assert code == {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}[sig]
        assert _wait_dead(sorted(set(workers) | set(runners)), 10) == []
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()
