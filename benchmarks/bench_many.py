"""Benchmark: a release of many artifacts, what the audit itself costs.

    python benchmarks/bench_many.py [--runs 3] [--small 400]

1. The runtime guard (pte-inspector) on a folder of N committed programs (N = 1, 4, 8; the four small
   fixtures cycled), serial (`--jobs 1`): one long-lived runtime child serves every program, so N
   programs should cost start-up + N x run, not N x (start-up + run). The marginal cost per program
   is (time(8) - time(1)) / 7; "a runtime per program" is N x time(1), what one child per program costs.
2. `--jobs 1` against `--jobs 2` (and the default, `auto`) on `--small` tiny artifacts (a 1 KB
   safetensors fixture copied), where only header scans apply: workers take batches, so --jobs 2
   must not be slower than serial.

Every measurement is a whole fresh `quantgate run` process (wall time, as a CI step pays it; least
of `--runs`, the commands' runs interleaved so the shared cores' slow spells fall on all alike).
Each run's JSON report is checked: verdict, and the report's own `cost` (runtime start-ups,
workers, batches) printed beside the times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from results import least_cost_interleaved, run_measured  # beside this script

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "many"
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore")
PROGRAMS = ("int8_xnnpack", "fp32_portable", "dq8_xnnpack", "int8_portable")
SMALL = ROOT / "fixtures" / "safetensors" / "broken" / "f4_odd.safetensors"


def _programs(count: int) -> Path:
    folder = WORK / f"pte{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(count):
        name = PROGRAMS[i % len(PROGRAMS)]
        shutil.copyfile(ROOT / "fixtures" / "pte" / f"{name}.pte", folder / f"{i:02d}_{name}.pte")
    return folder


def _small(count: int) -> Path:
    folder = WORK / f"small{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    data = SMALL.read_bytes()
    for i in range(count):
        (folder / f"m{i:04d}.safetensors").write_bytes(data)
    return folder


def _gate(folder: Path, *extra: str) -> list[str]:
    return [PY, "-m", "quantgate", "run", str(folder), "--format", "json", "--no-github", *extra]


def _costs(cmd: list[str]) -> dict:
    """One more run of cmd, for its report's verdict and `cost` (the timed runs are checked alike)."""
    run = run_measured(cmd, env=ENV)
    report = json.loads(run["stdout"])
    return {"verdict": report["verdict"], **report["cost"]}


def _check(verdicts: tuple[str, ...]):
    def check(run: dict) -> None:
        try:
            verdict = json.loads(run["stdout"])["verdict"]
        except (ValueError, KeyError):
            raise SystemExit(f"no report: {run['stderr'][-800:]}") from None
        if verdict not in verdicts:
            raise SystemExit(f"unexpected verdict {verdict}: {run['stderr'][-800:]}")
    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=int, default=400)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    policy = WORK / "quantgate.toml"
    policy.write_text("[guards.pte-inspector]\nenabled = true\n")
    out = ["## many", "",
           "A release of many artifacts: what the audit itself costs (whole `quantgate run` processes, wall time, "
           f"least of {args.runs} interleaved runs; the counts come from the report's own `cost`).", ""]

    # 1. the runtime guard on N programs
    sizes = (1, 4, 8)
    cmds = {n: _gate(_programs(n), "--policy", str(policy), "--guards", "pte-inspector", "--jobs", "1")
            for n in sizes}
    best = least_cost_interleaved({str(n): c for n, c in cmds.items()}, args.runs,
                                  checks={str(n): _check(("PASS", "FAIL")) for n in sizes}, env=ENV)
    walls = {n: best[str(n)]["wall"] for n in sizes}
    marginal = (walls[8] - walls[1]) / 7
    out += ["### pte-inspector on N programs (serial)", "",
            "| programs | time | runtime start-ups | a runtime per program (N × time(1)) | saved |",
            "|---:|---:|---:|---:|---:|"]
    for n in sizes:
        cost = _costs(cmds[n])
        per_program = n * walls[1]
        out.append(f"| {n} | {walls[n]:.2f} s | {cost['runtime_startups']} | {per_program:.2f} s | "
                   f"{per_program / walls[n]:.2f}× |")
    out += ["", f"Start-up (time(1) less one program's run) ≈ {walls[1] - marginal:.2f} s; each further program "
            f"≈ {marginal:.3f} s ((time(8) − time(1)) / 7).", ""]

    # 2. --jobs on many small artifacts
    folder = _small(args.small)
    jobs = {"--jobs 1": _gate(folder, "--jobs", "1"), "--jobs 2": _gate(folder, "--jobs", "2"),
            "--jobs auto (default)": _gate(folder)}
    best = least_cost_interleaved(jobs, args.runs, checks={k: _check(("PASS", "FAIL", "ERROR")) for k in jobs},
                                  env=ENV)
    serial = best["--jobs 1"]["wall"]
    out += [f"### --jobs on {args.small} small artifacts (header scans only)", "",
            "| run | time | vs --jobs 1 | jobs | worker processes | batches |", "|---|---:|---:|---:|---:|---:|"]
    for label, cmd in jobs.items():
        cost = _costs(cmd)
        wall = best[label]["wall"]
        out.append(f"| {label} | {wall:.2f} s | {serial / wall:.2f}× | {cost['jobs']} | {cost['workers']} | "
                   f"{cost['batches']} |")
    out += ["", "Above 1× the run is faster than serial. On a 2-core machine shared with other jobs --jobs 2 "
            "gains little on header scans; what matters is that it no longer loses (a process per artifact did).",
            ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
