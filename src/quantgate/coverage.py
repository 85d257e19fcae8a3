"""Coverage, bits per weight and the unquantized-layer list: DESIGN §4, written once for every format.

Coverage is the quantized share of weight-bearing ops on three bases: `ops` (each op counts 1),
`params` (its weight's element count) and `flops` (2 x weight elements x output positions). For
each basis the metrics are `quantized` (stored in <= 8 bits with scales), `int8` (8-bit integer),
`int4` (<= 4 nominal bits), `unknown` (precision not knowable, e.g. an opaque delegate) and
`by_bits` (a histogram of nominal bits).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from quantgate.inventory import Layer

BASES = ("ops", "params", "flops")
DEFAULT_BASIS = "ops"
# how far a manifest's claimed coverage may be from the measured one
DEFAULT_COVERAGE_TOLERANCE = 0.01


def _weight(basis: str) -> Callable[[Layer], int]:
    if basis == "ops":
        return lambda layer: 1
    if basis == "params":
        return lambda layer: layer.params
    return lambda layer: layer.flops


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def basis_coverage(layers: Sequence[Layer], basis: str) -> dict[str, Any] | None:
    """Coverage fractions on one basis, or None when the basis has nothing to count."""
    weigh = _weight(basis)
    total = sum(weigh(layer) for layer in layers)
    if total <= 0:
        return None
    by_bits: dict[str, int] = {}
    for layer in layers:
        key = layer.bits_key()
        by_bits[key] = by_bits.get(key, 0) + weigh(layer)
    return {
        "quantized": _share(sum(weigh(x) for x in layers if x.quantized), total),
        "int8": _share(sum(weigh(x) for x in layers if x.is_int8), total),
        "int4": _share(sum(weigh(x) for x in layers if x.is_int4), total),
        "unknown": _share(sum(weigh(x) for x in layers if x.quantized is None), total),
        "by_bits": {k: _share(v, total) for k, v in sorted(by_bits.items(), key=_bits_order)},
    }


def _bits_order(item: tuple[str, int]) -> tuple[int, float]:
    key = item[0]
    try:
        return (0, float(key))
    except ValueError:
        return (1, 0.0)


def compute_coverage(layers: Sequence[Layer]) -> dict[str, Any] | None:
    """Share of weight-bearing ops that *compute* in integer arithmetic, where the format says."""
    if not any(layer.compute is not None for layer in layers):
        return None
    out: dict[str, Any] = {}
    for basis in BASES:
        weigh = _weight(basis)
        total = sum(weigh(layer) for layer in layers)
        if total <= 0:
            continue
        out[basis] = {
            "integer": _share(sum(weigh(x) for x in layers if x.compute_is_integer), total),
            "unknown": _share(sum(weigh(x) for x in layers if x.compute is None), total),
        }
    return out


def matches_any(layer: Layer, patterns: Iterable[str]) -> bool:
    """`expect_unquantized` patterns: shell globs on the layer name, or `kind:<kind>`."""
    for pattern in patterns:
        if pattern.startswith("kind:"):
            if layer.kind == pattern[5:]:
                return True
        elif fnmatch.fnmatchcase(layer.name, pattern):
            return True
    return False


def bits_per_weight(layers: Sequence[Layer]) -> float | None:
    """8 x bytes encoding the weights / weight elements, over the layers whose bytes are known."""
    known = [layer for layer in layers if layer.weight_bytes is not None]
    params = sum(layer.params for layer in known)
    if not known or params <= 0:
        return None
    return 8 * sum(layer.weight_bytes or 0 for layer in known) / params


def coverage_metrics(
    layers: Sequence[Layer],
    *,
    basis: str = DEFAULT_BASIS,
    expect_unquantized: Sequence[str] = (),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The shared metrics of every coverage guard, and the unquantized layers by name."""
    coverage = {b: c for b in BASES if (c := basis_coverage(layers, b)) is not None}
    unquantized = []
    for layer in layers:
        if layer.quantized is False:
            unquantized.append(
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "shape": list(layer.shape),
                    "dtype": layer.dtype,
                    "params": layer.params,
                    "expected": matches_any(layer, expect_unquantized),
                    **({"position": layer.position} if layer.position is not None else {}),
                }
            )
    metrics: dict[str, Any] = {
        "coverage": coverage,
        "coverage_basis": basis,
        "weight_ops": len(layers),
        "quantized_ops": sum(1 for x in layers if x.quantized),
        "unknown_ops": sum(1 for x in layers if x.quantized is None),
        "params_total": sum(x.params for x in layers),
        "params_quantized": sum(x.params for x in layers if x.quantized),
        "unexpected_unquantized": sum(1 for u in unquantized if not u["expected"]),
        "expected_unquantized": sum(1 for u in unquantized if u["expected"]),
        "flops_exact": all(x.flops_exact for x in layers),
    }
    if basis in coverage:
        metrics["int8_coverage"] = coverage[basis]["int8"]
    bpw = bits_per_weight(layers)
    if bpw is not None:
        metrics["bits_per_weight"] = bpw
    compute = compute_coverage(layers)
    if compute is not None:
        metrics["compute_coverage"] = compute
    return metrics, unquantized
