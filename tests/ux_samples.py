"""Reports with coverage results for the report/render/plugin tests, built by the real pipeline.

No format reader exists on this branch, so a coverage guard is driven with a hand-made Inventory
(the readers' own tests gate real exports); everything after the Inventory, coverage, bounds,
status, gate decision and report, is the real code.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from quantgate.core.bounds import FAIL_LEVEL, parse_bound
from quantgate.core.inventory import EMBEDDING, FLOAT, INT, LINEAR, Inventory, Layer
from quantgate.formats.sniff import Sniffed
from quantgate.gate import Artifact
from quantgate.gate.evaluate import gate_decision
from quantgate.gate.policy import Policy
from quantgate.gate.verdict import build_report
from quantgate.guards.base import GuardConfig, GuardContext, run_guard
from quantgate.guards.coverage_guard import CoverageGuard

HOSTILE = '<script>alert("x")</script>&"\'`'


class DemoGuard(CoverageGuard):
    id = "demo-dtypes"
    description = "test double of a format's dtype guard"
    formats = ("gguf",)


def layers(hostile: bool = False) -> list[Layer]:
    """4 linear int8 (1000 params each), 1 linear int4 (2000), 1 float embedding (4000), 1 float head."""
    out = [Layer(f"blk.{i}.ffn", LINEAR, (10, 100), "int8", 8, INT, True, 1000, weight_bytes=1040) for i in range(4)]
    out.append(Layer("blk.4.attn", LINEAR, (20, 100), "Q4_0", 4, INT, True, 2000, weight_bytes=1125))
    out.append(Layer("token_embd", EMBEDDING, (40, 100), "F32", 32, FLOAT, False, 4000, weight_bytes=16000))
    name = HOSTILE if hostile else "output"
    out.append(Layer(name, LINEAR, (10, 100), "F32", 32, FLOAT, False, 1000, weight_bytes=4000))
    return out


def coverage_result(
    path: Path, require: tuple[str, ...] = (), hostile: bool = False, layer_list: list[Layer] | None = None
) -> dict[str, Any]:
    sniffed = Sniffed("gguf")
    ctx = GuardContext(str(path), sniffed, path.stat().st_size, path.name)
    inv = Inventory("gguf", str(path), path.stat().st_size, layers=layer_list or layers(hostile))
    ctx._inventory, ctx._inventory_read = inv, True
    config = GuardConfig(require=[parse_bound(b, FAIL_LEVEL) for b in require], expect_unquantized=["kind:embedding"])
    result = run_guard(DemoGuard(), ctx, config).to_dict()
    return gate_decision(result, required=False, fail_on="fail", waivers=[], sha256=None, today=dt.date.today())


def sample_report(tmp: Path, hostile: bool = False) -> dict[str, Any]:
    """Two artifacts: good.gguf passes (no bound), bad.gguf fails `coverage.ops.quantized >= 0.9`."""
    good, bad = tmp / "good.gguf", tmp / "bad.gguf"
    good.write_bytes(b"\x00" * 100)
    bad.write_bytes(b"\x00" * 200)
    results = [
        coverage_result(good),
        coverage_result(bad, require=("coverage.ops.quantized >= 0.9",), hostile=hostile),
    ]
    artifacts = [
        Artifact(str(good), good.name, Sniffed("gguf"), 100),
        Artifact(str(bad), bad.name, Sniffed("gguf"), 200),
    ]
    return build_report(
        policy=Policy(),
        artifacts=artifacts,
        results=results,
        started=time.perf_counter(),
        started_at="2026-11-23T19:00:00+00:00",
        report_only=False,
        fail_on="fail",
    )


# lets a test register the double in the guard registry (GUARD_MODULES maps an id to a module)
GUARD = DemoGuard()
