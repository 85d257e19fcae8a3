"""The shared coverage engine (docs/policy.md#coverage) on hand-built inventories with hand-computed answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantgate.core.bounds import BoundSyntaxError, evaluate, parse_bound
from quantgate.core.coverage import bits_per_weight, compute_coverage, coverage_metrics
from quantgate.core.inventory import EMBEDDING, FLOAT, INT, LINEAR, UNKNOWN, Layer


def layer(
    name: str,
    kind: str,
    params: int,
    bits: float | None,
    numeric: str,
    quantized: bool | None,
    out: int | None = 1,
    weight_bytes: int | None = None,
    compute: str | None = None,
) -> Layer:
    return Layer(
        name=name,
        kind=kind,
        shape=(params,),
        dtype="x",
        bits=bits,
        numeric=numeric,
        quantized=quantized,
        params=params,
        weight_bytes=weight_bytes,
        out_positions=out,
        compute=compute,
    )


LAYERS = [
    layer("tok_embeddings", EMBEDDING, 1000, 32, FLOAT, False, out=None, weight_bytes=4000),
    layer("l0.q", LINEAR, 100, 8, INT, True, out=10, weight_bytes=104, compute="int8"),
    layer("l0.ffn", LINEAR, 400, 4, INT, True, out=10, weight_bytes=216, compute="fp32"),
    layer("l1.fp8", LINEAR, 200, 8, FLOAT, True, out=None, weight_bytes=200),
    layer("head", LINEAR, 300, 16, FLOAT, False, out=10, weight_bytes=600),
    layer("delegate#0", LINEAR, 100, None, UNKNOWN, None, out=10),
]


def test_three_bases_to_the_layer() -> None:
    metrics, unquantized = coverage_metrics(LAYERS, expect_unquantized=["*embed*"])
    ops = metrics["coverage"]["ops"]
    assert ops["quantized"] == pytest.approx(3 / 6)
    assert ops["int8"] == pytest.approx(1 / 6)  # fp8 is quantized but not int8
    assert ops["int4"] == pytest.approx(1 / 6)
    assert ops["unknown"] == pytest.approx(1 / 6)
    assert ops["by_bits"] == pytest.approx({"4": 1 / 6, "8": 2 / 6, "16": 1 / 6, "32": 1 / 6, "unknown": 1 / 6})
    params = metrics["coverage"]["params"]
    assert params["quantized"] == pytest.approx(700 / 2100)
    assert params["int8"] == pytest.approx(100 / 2100)
    # flops: embedding 0; others 2 * params * out (unknown out counts 1)
    flops_total = 2 * (100 * 10 + 400 * 10 + 200 * 1 + 300 * 10 + 100 * 10)
    assert metrics["coverage"]["flops"]["quantized"] == pytest.approx(2 * (1000 + 4000 + 200) / flops_total)
    assert metrics["flops_exact"] is False
    assert metrics["int8_coverage"] == pytest.approx(1 / 6)
    assert (metrics["weight_ops"], metrics["quantized_ops"], metrics["unknown_ops"]) == (6, 3, 1)
    assert (metrics["params_total"], metrics["params_quantized"]) == (2100, 700)
    assert [u["name"] for u in unquantized] == ["tok_embeddings", "head"]
    assert [u["expected"] for u in unquantized] == [True, False]
    assert metrics["unexpected_unquantized"] == 1 and metrics["expected_unquantized"] == 1
    # bpw over the layers with known bytes: 8 * 5120 / 2000
    assert metrics["bits_per_weight"] == pytest.approx(8 * 5120 / 2000)
    compute = metrics["compute_coverage"]["ops"]
    assert compute == pytest.approx({"integer": 1 / 6, "unknown": 4 / 6})


def test_basis_choice_and_kind_patterns() -> None:
    metrics, _ = coverage_metrics(LAYERS, basis="params", expect_unquantized=["kind:embedding", "head"])
    assert metrics["int8_coverage"] == pytest.approx(100 / 2100)
    assert metrics["unexpected_unquantized"] == 0


def test_no_weight_ops_produces_no_coverage() -> None:
    metrics, unquantized = coverage_metrics([])
    assert metrics["coverage"] == {} and "int8_coverage" not in metrics
    assert metrics["weight_ops"] == 0 and unquantized == []
    row = evaluate(parse_bound("coverage.ops.int8 >= 0.9"), metrics)
    assert row["outcome"] == "missing" and row["actual"] is None


def test_only_embeddings_has_no_flops_basis() -> None:
    metrics, _ = coverage_metrics([layer("emb", EMBEDDING, 10, 8, INT, True)])
    assert set(metrics["coverage"]) == {"ops", "params"}
    assert metrics["flops_exact"] is True


@pytest.mark.parametrize(
    ("text", "actual", "outcome"),
    [
        ("coverage.ops.int8>=0.9", 0.9, "held"),
        ("coverage.ops.int8 >= 0.9", 0.8999999, "broken"),
        ("bits_per_weight < 9", 9.0, "broken"),
        ("bits_per_weight <= 9", 9.0, "held"),
        ("unexpected_unquantized == 0", 0, "held"),
        ("x > -1e-3", 0.0, "held"),
    ],
)
def test_bounds_inclusive_and_strict(text: str, actual: float, outcome: str) -> None:
    bound = parse_bound(text)
    metrics: dict = {}
    node = metrics
    parts = bound.metric.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = actual
    assert evaluate(bound, metrics)["outcome"] == outcome


@pytest.mark.parametrize("text", ["coverage.ops.int8 => 0.9", ">= 0.9", "x >= ninety", "x >= 0.9 extra", ""])
def test_malformed_bounds(text: str) -> None:
    with pytest.raises(BoundSyntaxError):
        parse_bound(text)


def test_boolean_metric_is_not_a_number() -> None:
    assert evaluate(parse_bound("flops_exact >= 1"), {"flops_exact": True})["outcome"] == "missing"


# --- the C-level sums against the definitions, layer by layer --------------------------------------

_random_layer = st.builds(
    layer,
    name=st.sampled_from(["a", "b"]),
    kind=st.sampled_from([LINEAR, EMBEDDING, "conv"]),
    params=st.integers(0, 1 << 40),
    bits=st.sampled_from([None, 4, 8, 16, 4.5]) | st.integers(1, 40),
    numeric=st.sampled_from([INT, FLOAT, UNKNOWN]),
    quantized=st.sampled_from([True, False, None]),
    out=st.none() | st.integers(0, 1 << 20),
    weight_bytes=st.none() | st.integers(0, 1 << 40),
    compute=st.sampled_from([None, "int8", "fp32"]),
)


@settings(max_examples=400, deadline=None)
@given(layers=st.lists(_random_layer, max_size=40))
def test_sums_are_the_per_layer_definitions(layers: list[Layer]) -> None:
    """Coverage sums layers in groups and in C; each number must be the one docs/policy.md#coverage defines per
    layer (flops from Layer.flops, bits per weight over the layers whose bytes are known)."""
    metrics, _ = coverage_metrics(layers)
    for basis, weigh in (("ops", lambda x: 1), ("params", lambda x: x.params), ("flops", lambda x: x.flops)):
        total = sum(weigh(x) for x in layers)
        if total <= 0:
            assert basis not in metrics["coverage"]
            continue
        cov = metrics["coverage"][basis]
        assert cov["quantized"] == sum(weigh(x) for x in layers if x.quantized) / total
        assert cov["int8"] == sum(weigh(x) for x in layers if x.is_int8) / total
        assert cov["int4"] == sum(weigh(x) for x in layers if x.is_int4) / total
    known = [x for x in layers if x.weight_bytes is not None]
    params = sum(x.params for x in known)
    assert bits_per_weight(layers) == (8 * sum(x.weight_bytes for x in known) / params
                                       if known and params > 0 else None)
    assert (compute_coverage(layers) is None) == all(x.compute is None for x in layers)
