"""Coverage, bits per weight and the unquantized-layer list (docs/policy.md#coverage), once for every format.

Coverage is the quantized share of weight-bearing ops on three bases: `ops` (each op counts 1),
`params` (its weight's element count) and `flops` (2 x weight elements x output positions). For
each basis the metrics are `quantized` (stored in <= 8 bits with scales), `int8` (8-bit integer),
`int4` (<= 4 nominal bits), `unknown` (precision not knowable, e.g. an opaque delegate) and
`by_bits` (a histogram of nominal bits).
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from quantgate.core.gcpause import gc_paused
from quantgate.core.inventory import EMBEDDING, Layer

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


def all_bases_coverage(layers: Sequence[Layer]) -> dict[str, dict[str, Any]]:
    """The coverage fractions of every basis in BASES that has something to count, in one pass over the
    layers."""
    return _coverage_of(_groups(layers))


# a group of layers that count alike: (quantized state, is_int8, is_int4, bits_key()); its sums are
# [ops, params, flops] (integers, so the order of the additions does not matter)
_Group = tuple[Any, bool, bool, str]


def _groups(layers: Sequence[Layer]) -> dict[_Group, list[int]]:
    # the group is a function of (quantized, numeric, bits): sort the layers into lists by those first,
    # the one step per layer, then name each list's group and sum it with C-level sums
    alike: dict[tuple[Any, str, Any], list[Layer]] = {}
    quantized = numeric = bits = _UNSET
    same: list[Layer] = []
    for layer in layers:
        # a reader lists layers alike in runs (a float checkpoint: one run): a run continues without a key
        if layer.quantized is quantized and layer.numeric is numeric and layer.bits == bits:
            same.append(layer)
            continue
        quantized, numeric, bits = layer.quantized, layer.numeric, layer.bits
        key = (quantized, numeric, bits)
        found = alike.get(key)
        if found is None:
            same = alike[key] = [layer]
        else:
            same = found
            same.append(layer)
    groups: dict[_Group, list[int]] = {}
    for same in alike.values():
        layer = same[0]
        # is_int8 and is_int4 are False for a layer that is not quantized
        group = ((True, layer.is_int8, layer.is_int4, layer.bits_key()) if layer.quantized
                 else (layer.quantized, False, False, layer.bits_key()))
        acc = groups.get(group)
        if acc is None:
            acc = groups[group] = [0, 0, 0]
        acc[0] += len(same)
        params = list(map(_PARAMS, same))
        acc[1] += sum(params)
        acc[2] += _flops(same, params)
    return groups


_UNSET: Any = object()  # no layer's field
_PARAMS = operator.attrgetter("params")
_FLOPS = operator.attrgetter("flops")
_OUT_POSITIONS = operator.attrgetter("out_positions")
_KIND = operator.attrgetter("kind")
_WEIGHT_BYTES = operator.attrgetter("weight_bytes")
_COMPUTE = operator.attrgetter("compute")


def _flops(layers: list[Layer], params: list[int]) -> int:
    """sum(layer.flops), in C-level passes when every layer's output positions are known or none are
    (each op then counts once): this runs over every layer of the artifact."""
    positions = list(map(_OUT_POSITIONS, layers))
    nones = positions.count(None)
    if nones == len(positions):
        total = 2 * sum(params)
    elif nones == 0:
        total = 2 * sum(map(operator.mul, params, positions))
    else:
        return sum(map(_FLOPS, layers))
    # an embedding is a lookup, no flops: take back what the sum gave the few there are
    kinds = list(map(_KIND, layers))
    i = -1
    for _ in range(kinds.count(EMBEDDING)):
        i = kinds.index(EMBEDDING, i + 1)
        total -= 2 * params[i] * (positions[i] if positions[i] is not None else 1)
    return total


def _coverage_of(groups: dict[_Group, list[int]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for b, basis in enumerate(BASES):
        total = quantized = int8 = int4 = unknown = 0
        by_bits: dict[str, int] = {}
        for (state, is_int8, is_int4, key), acc in groups.items():
            w = acc[b]
            total += w
            if state:
                quantized += w
            elif state is None:
                unknown += w
            if is_int8:
                int8 += w
            if is_int4:
                int4 += w
            by_bits[key] = by_bits.get(key, 0) + w
        if total <= 0:
            continue
        out[basis] = {
            "quantized": _share(quantized, total),
            "int8": _share(int8, total),
            "int4": _share(int4, total),
            "unknown": _share(unknown, total),
            "by_bits": {k: _share(v, total) for k, v in sorted(by_bits.items(), key=_bits_order)},
        }
    return out


def _bits_order(item: tuple[str, int]) -> tuple[int, float]:
    key = item[0]
    try:
        return (0, float(key))
    except ValueError:
        return (1, 0.0)


def compute_coverage(layers: Sequence[Layer]) -> dict[str, Any] | None:
    """Share of weight-bearing ops that *compute* in integer arithmetic, where the format says."""
    computes = list(map(_COMPUTE, layers))
    if computes.count(None) == len(computes):
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
    sizes = list(map(_WEIGHT_BYTES, layers))
    if sizes and None not in sizes:  # the usual case, summed in C: every layer's bytes are known
        params = sum(map(_PARAMS, layers))
        return 8 * sum(sizes) / params if params > 0 else None
    known = False
    params = weight_bytes = 0
    for layer in layers:  # one pass: this runs over every layer of the artifact, twice per guard
        if layer.weight_bytes is not None:
            known = True
            params += layer.params
            weight_bytes += layer.weight_bytes
    if not known or params <= 0:
        return None
    return 8 * weight_bytes / params


def coverage_metrics(
    layers: Sequence[Layer],
    *,
    basis: str = DEFAULT_BASIS,
    expect_unquantized: Sequence[str] = (),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The shared metrics of every coverage guard, and the unquantized layers by name."""
    with gc_paused():  # tens of thousands of small dicts, no cycles
        return _coverage_metrics(layers, basis, expect_unquantized)


def _coverage_metrics(
    layers: Sequence[Layer], basis: str, expect_unquantized: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    groups = _groups(layers)
    coverage = _coverage_of(groups)
    quantized_ops = unknown_ops = params_total = params_quantized = 0
    for (state, _, _, _), (ops, params, _) in groups.items():
        params_total += params
        if state:
            quantized_ops += ops
            params_quantized += params
        elif state is None:
            unknown_ops += ops
    unquantized = []
    expected = 0
    for layer in layers:
        if layer.quantized is False:
            is_expected = bool(expect_unquantized) and matches_any(layer, expect_unquantized)
            entry = {
                "name": layer.name,
                "kind": layer.kind,
                "shape": list(layer.shape),
                "dtype": layer.dtype,
                "params": layer.params,
                "expected": is_expected,
            }
            if layer.position is not None:
                entry["position"] = layer.position
            expected += is_expected
            unquantized.append(entry)
    flops_exact = all(layer.flops_exact for layer in layers)
    metrics: dict[str, Any] = {
        "coverage": coverage,
        "coverage_basis": basis,
        "weight_ops": len(layers),
        "quantized_ops": quantized_ops,
        "unknown_ops": unknown_ops,
        "params_total": params_total,
        "params_quantized": params_quantized,
        "unexpected_unquantized": len(unquantized) - expected,
        "expected_unquantized": expected,
        "flops_exact": flops_exact,
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
