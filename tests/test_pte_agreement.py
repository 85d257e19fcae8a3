"""`pte-inspector` (the program run by the ExecuTorch runtime) agrees with `pte-program` (the
flatbuffer read statically) on every delegated fixture: same weight-bearing ops, same ops coverage.

The runtime sees executed operators, not weights, so only the ops basis is comparable.
"""

from __future__ import annotations

import json

import pytest
from tests.conftest import FIXTURES, run_cli

pytest.importorskip("executorch", reason="executorch/torch not installed")

DELEGATED = [
    "int8_xnnpack",
    "int8_xnnpack_inline",
    "dq8_xnnpack",
    "fp32_xnnpack",
    "8da4w_emb4_xnnpack",
    "partial_8da4w_xnnpack",
    "w8_xnnpack",
    "conv_fp32_xnnpack",
    "conv_int8_xnnpack",
]


def _guard(guard: str, name: str) -> dict:
    proc = run_cli("guard", guard, str(FIXTURES / "pte" / f"{name}.pte"), timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", DELEGATED)
def test_inspector_agrees_with_program(name: str) -> None:
    static, runtime = _guard("pte-program", name), _guard("pte-inspector", name)
    assert (static["status"], runtime["status"]) == ("PASS", "PASS")
    s, r = static["metrics"], runtime["metrics"]
    assert r["weight_ops"] == s["weight_ops"]
    assert r["quantized_ops"] == s["quantized_ops"]
    for key in ("quantized", "int8", "int4"):
        assert r["coverage"]["ops"][key] == pytest.approx(s["coverage"]["ops"][key]), key
    assert r["int8_coverage"] == pytest.approx(s["int8_coverage"])
    # what the graph's datatypes promise is what the runtime's kernels ran, whichever kernels this CPU got
    assert r["compute_coverage"]["ops"] == pytest.approx(s["compute_coverage"]["ops"])
