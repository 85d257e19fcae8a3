"""The format-neutral picture of an artifact that every reader produces and every guard consumes.

A reader turns bytes into an `Inventory`: the weight-bearing layers (docs/policy.md#coverage) with their stored
precision, plus the structural findings it met on the way. Coverage, bits per weight and bounds are
computed from this once, in `core/coverage.py`, never per format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantgate.core.findings import Finding, has_errors

LINEAR = "linear"
CONV = "conv"
EMBEDDING = "embedding"
LAYER_KINDS = (LINEAR, CONV, EMBEDDING)

# Numeric families of stored values: an 8-bit integer and an fp8 value are both "quantized" but
# only the first counts towards `int8` coverage.
INT = "int"
FLOAT = "float"
UNKNOWN = "unknown"


@dataclass(slots=True)  # tens of thousands per artifact: no per-instance __dict__
class Layer:
    """One weight-bearing op: a linear/matmul/gemm, conv or embedding with a constant weight.

    `quantized` is None when the precision cannot be known (an opaque delegate payload): such
    layers count in the denominator and in the `unknown` share, never as quantized or as float.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    bits: float | None
    numeric: str
    quantized: bool | None
    params: int
    # bytes of everything that encodes the weight (packed values, scales, zero points, group
    # indices); None when the format does not say
    weight_bytes: int | None = None
    # output positions for the flops basis: tokens for a linear, N*H*W for a conv; None = unknown
    out_positions: int | None = None
    out_positions_exact: bool = True
    # compute precision where the format records it ("int8", "fp32", ...); None = not recorded
    compute: str | None = None
    position: int | None = None
    # format-specific facts, this layer's own: one layer's may be added to (`also_in`, a guard's
    # note) without another changing, so a reader never gives two layers one dict (or list inside)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        if self.kind == EMBEDDING:
            return 0
        return 2 * self.params * (self.out_positions if self.out_positions is not None else 1)

    @property
    def flops_exact(self) -> bool:
        return self.kind == EMBEDDING or (self.out_positions is not None and self.out_positions_exact)

    @property
    def is_int8(self) -> bool:
        return bool(self.quantized) and self.numeric == INT and self.bits == 8

    @property
    def is_int4(self) -> bool:
        return bool(self.quantized) and self.bits is not None and self.bits <= 4

    @property
    def compute_is_integer(self) -> bool | None:
        if self.compute is None:
            return None
        return self.compute.startswith(("int", "uint", "q"))

    def bits_key(self) -> str:
        if self.quantized is None or self.bits is None:
            return "unknown"
        return str(int(self.bits)) if float(self.bits).is_integer() else f"{self.bits:g}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bits": self.bits,
            "quantized": self.quantized,
            "params": self.params,
            "flops": self.flops,
        }
        if self.weight_bytes is not None:
            out["weight_bytes"] = self.weight_bytes
            if self.params:
                out["bits_per_weight"] = round(8 * self.weight_bytes / self.params, 4)
        if self.compute is not None:
            out["compute"] = self.compute
        if self.position is not None:
            out["position"] = self.position
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class Inventory:
    """What a reader found in one artifact."""

    format: str
    path: str
    size_bytes: int
    layers: list[Layer] = field(default_factory=list)
    # structural defects: these make `integrity` FAIL and block the guards that need structure
    structural_findings: list[Finding] = field(default_factory=list)
    # semantic checks that belong to the format's dtype guard (file_type vs tensors, bad scales...)
    semantic_findings: list[Finding] = field(default_factory=list)
    # every parameter the artifact stores (1-D tensors included), when the reader can count them
    params_stored: int | None = None
    # reader-specific metrics merged into the format guard's result (memory estimates, ...)
    metrics: dict[str, Any] = field(default_factory=dict)
    # format facts worth showing in `quantgate inspect` (versions, metadata keys, op counts)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def structurally_sound(self) -> bool:
        return not has_errors(self.structural_findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "params_stored": self.params_stored,
            "facts": self.facts,
            "metrics": self.metrics,
            "layers": [layer.to_dict() for layer in self.layers],
            "structural_findings": [f.to_dict() for f in self.structural_findings],
            "semantic_findings": [f.to_dict() for f in self.semantic_findings],
        }
