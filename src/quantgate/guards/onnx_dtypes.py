"""`onnx-dtypes`: initializer dtypes and quantization ops (QDQ, QOperator, integer ops, MatMulNBits...)
-> coverage, bits per weight and the quantization consistency findings of the ONNX reader."""

from __future__ import annotations

from quantgate.core.inventory import Inventory
from quantgate.guards.base import GuardConfig, Outcome
from quantgate.guards.coverage_guard import COVERAGE_METRICS, CoverageGuard


class ONNXDtypesGuard(CoverageGuard):
    id = "onnx-dtypes"
    metric_names = (*COVERAGE_METRICS, "quant_ops.*", "quant_representations")
    description = (
        "initializer dtypes and quantization ops (QDQ, QOperator, integer ops, MatMulNBits…) → coverage"
    )
    formats = ("onnx",)

    def extra(self, inventory: Inventory, config: GuardConfig, outcome: Outcome) -> None:
        # the representations found (QDQ, QOperator, integer, MatMulNBits...) say how it was quantized
        reps = inventory.metrics.get("quant_representations") or []
        if reps and outcome.metrics.get("weight_ops"):
            from quantgate.guards.coverage_guard import coverage_summary

            outcome.summary = f"{coverage_summary(outcome.metrics)} ({', '.join(reps)})"


GUARD = ONNXDtypesGuard()
