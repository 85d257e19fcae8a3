"""Start-up budget: `quantgate guard gguf-dtypes` on a small GGUF against a bare interpreter start.

CI runs `quantgate guard` once per file, so what the command costs before it reads anything (interpreter,
imports, argument parsing, the report) is paid per file. This is measured here as a budget instead of
forbidding imports module by module: the guard command on fixtures/gguf/model_q8_0.gguf (175 KB) must stay
within BUDGET_MS of a bare `python -c pass`, best of RUNS whole processes each. The heavy libraries (torch,
executorch, onnx, numpy) must not be imported at all (tests/test_import_cost.py checks that too).
Exits 1 when the budget is exceeded, so `make bench` reports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
FILE = HERE.parent / "fixtures" / "gguf" / "model_q8_0.gguf"
RUNS = 15
BUDGET_MS = 150  # above a bare interpreter, best of RUNS; 95-113 ms when set (RESULTS.md, a shared 2-core machine)
HEAVY = ("torch", "executorch", "onnx", "numpy")
ENV = {**os.environ, "PYTHONPATH": str(SRC)}
GUARD = [sys.executable, "-m", "quantgate", "guard", "gguf-dtypes", str(FILE)]
BARE = [sys.executable, "-c", "pass"]


def best_of(cmd: list[str], ok: tuple[int, ...] = (0,)) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, env=ENV)
        elapsed = time.perf_counter() - started
        if proc.returncode not in ok:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
        best = min(best, elapsed)
    return best


def imported(cmd: list[str]) -> list[str]:
    """The modules the command imports, from `python -X importtime` (the interpreter's own included)."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=ENV)
    return [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
            and not line.rstrip().endswith("| imported package")]


def main() -> int:
    bare = best_of(BARE)
    guard = best_of(GUARD, ok=(0, 1))
    modules = imported(GUARD)
    bare_modules = imported(BARE)
    heavy = sorted({m.split(".")[0] for m in modules} & set(HEAVY))
    overhead_ms = (guard - bare) * 1000
    within = overhead_ms <= BUDGET_MS and not heavy
    print("## startup\n")
    print(f"`quantgate guard gguf-dtypes` on {FILE.name} ({FILE.stat().st_size:,} bytes) against a bare "
          f"interpreter start, whole processes, best of {RUNS}. The budget replaces per-module import bans: "
          f"what the command imports is free as long as the whole stays within it.\n")
    print("| command | time | modules imported |")
    print("|---|---:|---:|")
    print(f"| `python -c pass` | {bare * 1000:.0f} ms | {len(bare_modules)} |")
    print(f"| `quantgate guard gguf-dtypes` | {guard * 1000:.0f} ms | {len(modules)} |")
    print()
    print(f"- above the bare interpreter: **{overhead_ms:.0f} ms**; budget {BUDGET_MS} ms: "
          f"{'within' if overhead_ms <= BUDGET_MS else '**over**'}")
    print(f"- heavy libraries imported ({', '.join(HEAVY)}): {', '.join(heavy) or 'none'}")
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())
