"""The shared body of every format's dtype guard: inventory -> coverage metrics and findings."""

from __future__ import annotations

from typing import Any

from quantgate.core.coverage import coverage_metrics
from quantgate.core.inventory import Inventory
from quantgate.core.result import NOT_APPLICABLE
from quantgate.guards.base import Guard, GuardConfig, GuardContext, Outcome

# the per-layer table in a result is capped so a report stays a few MB even for huge graphs;
# `layers_omitted` says how many were left out (`weight_ops` counts them all)
MAX_LAYERS = 5000

# what coverage_metrics emits for every format (see quantgate.core.coverage)
COVERAGE_METRICS: tuple[str, ...] = (
    *(f"coverage.{basis}.{share}" for basis in ("ops", "params", "flops")
      for share in ("quantized", "int8", "int4", "unknown")),
    "coverage.*.by_bits.*",
    *(f"compute_coverage.{basis}.{share}" for basis in ("ops", "params", "flops") for share in ("integer", "unknown")),
    "coverage_basis",
    "weight_ops",
    "quantized_ops",
    "unknown_ops",
    "params_total",
    "params_quantized",
    "unexpected_unquantized",
    "expected_unquantized",
    "flops_exact",
    "int8_coverage",
    "bits_per_weight",
)


def coverage_summary(metrics: dict[str, Any]) -> str:
    if not metrics.get("weight_ops"):
        return "no weight-bearing ops found"
    basis = metrics.get("coverage_basis", "ops")
    cov = metrics["coverage"].get(basis, {})
    parts = [
        f"{metrics['quantized_ops']}/{metrics['weight_ops']} weight ops quantized",
        f"int8 {cov.get('int8', 0.0):.1%} and quantized {cov.get('quantized', 0.0):.1%} by {basis}",
    ]
    if metrics.get("unexpected_unquantized"):
        parts.append(f"{metrics['unexpected_unquantized']} unexpected float layer(s)")
    if metrics.get("unknown_ops"):
        parts.append(f"{metrics['unknown_ops']} of unknown precision")
    return ", ".join(parts)


class CoverageGuard(Guard):
    """A guard whose measurement is the inventory's coverage plus the reader's semantic checks.

    Formats that need more (a memory estimate from a context length, say) override `extra`.
    """

    metric_names = COVERAGE_METRICS

    def extra(self, inventory: Inventory, config: GuardConfig, outcome: Outcome) -> None:
        """Hook for format-specific metrics and findings; the default adds nothing."""

    def measure(self, ctx: GuardContext, config: GuardConfig) -> Outcome:
        inventory = ctx.inventory()
        if inventory is None:
            return Outcome(skip=(NOT_APPLICABLE, f"no reader for {ctx.format} in this version"))
        metrics, unquantized = coverage_metrics(
            inventory.layers, basis=config.basis, expect_unquantized=config.expect_unquantized
        )
        metrics.update(inventory.metrics)
        outcome = Outcome(
            metrics=metrics,
            findings=list(inventory.semantic_findings),
            unquantized=unquantized,
            layers=[layer.to_dict() for layer in inventory.layers[:MAX_LAYERS]],
            layers_omitted=max(0, len(inventory.layers) - MAX_LAYERS),
        )
        self.extra(inventory, config, outcome)
        outcome.summary = outcome.summary or coverage_summary(outcome.metrics)
        return outcome
