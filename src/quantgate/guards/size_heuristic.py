"""`size-heuristic`: implied bits per weight from the file size and a parameter count.

bits_per_weight = 8 x file bytes / params. estimated_quantized_share is the share s of parameters
at `quant_bits` that, with the rest at `float_bits`, gives that size:
s = (float_bits - bpw) / (float_bits - quant_bits), clamped to [0, 1]. A cheap cross-check: it
knows nothing of the file's structure, so it runs on any file.
"""

from __future__ import annotations

from quantgate.core.result import BLOCKED_BY_INTEGRITY, NO_INPUT
from quantgate.formats.sniff import EMPTY, LFS_POINTER, UNREADABLE
from quantgate.guards.base import Guard, GuardConfig, GuardContext, Outcome

# its size says nothing about the weights: a pointer, nothing, or nothing readable
NOT_THE_ARTIFACT = (LFS_POINTER, EMPTY, UNREADABLE)


def _number(value: object, name: str) -> float:
    try:
        number = float(str(value).replace("_", ""))
    except ValueError:
        raise ValueError(f"--param {name} must be a number, got {value!r}") from None
    return number


def estimated_quantized_share(bpw: float, quant_bits: float, float_bits: float) -> float:
    if float_bits == quant_bits:
        return 1.0 if bpw <= quant_bits else 0.0
    share = (float_bits - bpw) / (float_bits - quant_bits)
    return min(1.0, max(0.0, share))


class SizeHeuristicGuard(Guard):
    id = "size-heuristic"
    metric_names = (
        "bits_per_weight",
        "estimated_quantized_share",
        "file_bytes",
        "float_bits",
        "params",
        "params_source",
        "quant_bits",
    )
    description = "implied bits per weight from file size and a parameter count; estimated quantized share"
    needs_structure = False

    def measure(self, ctx: GuardContext, config: GuardConfig) -> Outcome:
        if ctx.format in NOT_THE_ARTIFACT:
            return Outcome(skip=(BLOCKED_BY_INTEGRITY, f"the file is not the artifact's content ({ctx.format})"))
        quant_bits = _number(config.param("quant_bits", 8), "quant_bits")
        float_bits = _number(config.param("float_bits", 32), "float_bits")
        if quant_bits <= 0 or float_bits <= 0:
            raise ValueError("quant_bits and float_bits must be positive")
        params, source = None, None
        size_bytes = ctx.size_bytes
        if config.param("params") is not None:
            params, source = int(_number(config.param("params"), "params")), "param"
        elif ctx.hints.get("parameters"):
            params, source = int(ctx.hints["parameters"]), "manifest"
        elif not ctx.structure_blocked():
            inventory = ctx.inventory()
            if inventory is not None and inventory.params_stored:
                params, source = inventory.params_stored, "artifact"
                # the bytes those params are in: a split GGUF's first shard counts the whole set
                size_bytes = max(size_bytes, inventory.size_bytes)
        if (not params or params <= 0) and ctx.structure_blocked():
            return Outcome(skip=(BLOCKED_BY_INTEGRITY, "no parameter count given, and the artifact failed integrity"))
        if not params or params <= 0:
            return Outcome(
                skip=(
                    NO_INPUT,
                    "no parameter count: pass --param params=N, list `parameters` in the manifest, "
                    "or use a format whose reader counts them",
                )
            )
        bpw = 8 * size_bytes / params
        share = estimated_quantized_share(bpw, quant_bits, float_bits)
        metrics = {
            "bits_per_weight": bpw,
            "estimated_quantized_share": share,
            "params": params,
            "params_source": source,
            "file_bytes": size_bytes,
            "quant_bits": quant_bits,
            "float_bits": float_bits,
        }
        summary = (
            f"{bpw:.3f} bits per weight over {params:,} params ({source}); "
            f"~{share:.1%} at {quant_bits:g} bits if the rest is {float_bits:g}-bit"
        )
        return Outcome(metrics=metrics, summary=summary)


GUARD = SizeHeuristicGuard()
