"""`pte-program`: the ExecuTorch program read statically (no torch) -> coverage, compute precision, KV cache.

The reader (`formats.pte.reader` + `formats.pte.layers`) gives the weight-bearing layers of the portable
kernels and of the XNNPACK delegate payloads, with their stored dtype and compute precision. Beside
the shared coverage metrics this guard reports `compute_coverage` (the share that runs integer
kernels), `kv_cache` (a quantized KV cache has no weight-bearing op) and, for opaque delegates,
their share as `coverage.<basis>.unknown`. Stored-int8-but-computed-in-fp32 and opaque backends are
named in info findings, so a person sees why compute coverage is below storage coverage.
"""

from __future__ import annotations

from quantgate.core import findings as F
from quantgate.core.inventory import EMBEDDING, Inventory
from quantgate.guards.base import GuardConfig, Outcome
from quantgate.guards.coverage_guard import COVERAGE_METRICS, CoverageGuard

FINDING_CODES = {
    "PTE_QUANTIZED_STORAGE_FLOAT_COMPUTE": "Weights stored quantized are dequantized and multiplied in floating "
    "point (a portable kernel after a dequantize op, or an XNNPACK node with float activations): storage "
    "coverage is not compute coverage (info).",
    "PTE_OPAQUE_DELEGATE": "A delegate of a backend whose payload quantgate cannot read (not XNNPACK): its "
    "precision is reported as unknown (info).",
}


class PteProgramGuard(CoverageGuard):
    id = "pte-program"
    metric_names = (
        *COVERAGE_METRICS,
        "delegates.*",
        "opaque_delegates",
        "opaque_delegate_bytes",
        *(f"kv_cache.{k}" for k in ("buffers", "auxiliary_buffers", "quantized_buffers", "bytes", "elements",
                                     "names", "quantize_ops", "quantized")),
        "kv_cache.dtypes.*",
    )
    description = (
        "ExecuTorch program read from the flatbuffer: header, operators, instructions, delegates "
        "(XNNPACK payloads opened), tensor dtypes → coverage"
    )
    formats = ("pte",)

    def extra(self, inventory: Inventory, config: GuardConfig, outcome: Outcome) -> None:
        # embeddings are lookups (no multiply), so a dequantized table is not "float compute"
        float_compute = [
            x
            for x in inventory.layers
            if x.quantized and x.kind != EMBEDDING and x.compute is not None and x.compute_is_integer is False
        ]
        if float_compute:
            names = ", ".join(x.name for x in float_compute[:3]) + ("…" if len(float_compute) > 3 else "")
            outcome.findings.append(
                F.info(
                    "PTE_QUANTIZED_STORAGE_FLOAT_COMPUTE",
                    f"{len(float_compute)} quantized weight(s) run in {float_compute[0].compute} ({names}); "
                    "lower them to an integer kernel (XNNPACK) if integer compute was intended",
                    op=float_compute[0].name,
                )
            )
        opaque: dict[str, int] = {}
        for x in inventory.layers:
            if x.quantized is None:
                backend = str(x.detail.get("backend", "unknown"))
                opaque[backend] = opaque.get(backend, 0) + 1
        for backend, count in opaque.items():
            outcome.findings.append(
                F.info(
                    "PTE_OPAQUE_DELEGATE",
                    f"{count} {backend} delegate(s) cannot be opened; their share counts as unknown",
                    op=backend,
                )
            )
        parts = []
        compute = outcome.metrics.get("compute_coverage", {}).get(config.basis)
        if compute is not None and outcome.metrics.get("weight_ops"):
            parts.append(f"integer compute {compute['integer']:.1%} by {config.basis}")
        kv = outcome.metrics.get("kv_cache")
        if kv:
            state = "quantized" if kv["quantized"] else "not quantized"
            parts.append(f"KV cache {state} ({kv['buffers']} buffer(s), {kv['bytes']:,} bytes)")
        if parts:
            from quantgate.guards.coverage_guard import coverage_summary

            outcome.summary = f"{coverage_summary(outcome.metrics)}; {'; '.join(parts)}"


GUARD = PteProgramGuard()
