"""onnx-dtypes through the real CLI on models quantized by the real onnxruntime quantizers.

The float model (fixtures/onnx/make_fixtures.py) has five weight-bearing ops: embed 128x64 (8,192),
conv 64x64x3 (12,288), fc1 64x128, fc2 128x64, head 64x128 (8,192 each): 45,056 weight params, of
which 36,864 are in compute layers (the embedding counts 0 flops). Two MatMuls multiply activations
(attention scores and context) and are not layers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FIXTURES, run_json

ONNX = FIXTURES / "onnx"

# fixture -> (ops, params, flops) as (quantized, int8, int4), the unquantized layer names, bits per
# weight over the weight-bearing layers
CASES = {
    "float.onnx": (
        (0, 0, 0),
        (0, 0, 0),
        (0, 0, 0),
        ["embed.weight", "conv.weight", "fc1.weight", "fc2.weight", "head.weight"],
        32.0,
    ),
    "dynamic_qint8.onnx": ((1, 1, 0), (1, 1, 0), (1, 1, 0), [], 8 * 45081 / 45056),
    "static_qdq.onnx": ((1, 1, 0), (1, 1, 0), (1, 1, 0), [], 8 * 45081 / 45056),
    "static_qop.onnx": ((1, 1, 0), (1, 1, 0), (1, 1, 0), [], 8 * 45081 / 45056),
    "external/model.onnx": ((1, 1, 0), (1, 1, 0), (1, 1, 0), [], 8 * 45081 / 45056),
    "static_qdq_exclude_fc2.onnx": (
        (0.8, 0.8, 0),
        (36864 / 45056,) * 2 + (0,),
        (28672 / 36864,) * 2 + (0,),
        ["fc2.weight"],
        8 * (4 * 8197 + 12293 - 8197 + 32768) / 45056,
    ),
    "qdq_int4_matmul.onnx": (
        (0.6, 0, 0.6),
        (24576 / 45056, 0, 24576 / 45056),
        (24576 / 36864, 0, 24576 / 36864),
        ["embed.weight", "conv.weight"],
        8 * (32768 + 49152 + 3 * (4096 + 4 + 1)) / 45056,
    ),
    "matmulnbits4.onnx": (
        (0.8, 0, 0.8),
        (32768 / 45056, 0, 32768 / 45056),
        (24576 / 36864, 0, 24576 / 36864),
        ["conv.weight"],
        8 * (49152 + 4 * (4096 + 1024)) / 45056,
    ),
    "matmulnbits8.onnx": (
        (0.6, 0.6, 0),
        (24576 / 45056, 24576 / 45056, 0),
        (24576 / 36864, 24576 / 36864, 0),
        ["embed.weight", "conv.weight"],
        8 * (32768 + 49152 + 3 * (8192 + 1024 + 256)) / 45056,
    ),
    "qdq_fp8_matmul.onnx": (
        (0.6, 0, 0),
        (24576 / 45056, 0, 0),
        (24576 / 36864, 0, 0),
        ["embed.weight", "conv.weight"],
        8 * (32768 + 49152 + 3 * (8192 + 4 + 1)) / 45056,
    ),
    # onnxruntime's rewrite folded the embed and conv scales into one product constant
    "ort_dynamic_fused.onnx": ((1, 1, 0), (1, 1, 0), (1, 1, 0), [], 8 * 45073 / 45056),
    "ort_qdq_fused.onnx": ((1, 1, 0), (1, 1, 0), (1, 1, 0), [], 8 * 45081 / 45056),
    "qdq_blocked_int4.onnx": (
        (0.6, 0, 0.6),
        (24576 / 45056, 0, 24576 / 45056),
        (24576 / 36864, 0, 24576 / 36864),
        ["embed.weight", "conv.weight"],
        8 * (32768 + 49152 + 3 * (4096 + 1024)) / 45056,
    ),
}


@pytest.fixture(scope="module")
def valid_run() -> dict[tuple[str, str], dict]:
    """One `quantgate run` over the valid fixtures (one subprocess): results by (file, guard); the
    report validates against the bundled schema."""
    from quantgate.core.jsonschemas import validate

    paths = [str(ONNX / name) for name in [*CASES, "mlp_gemm.onnx", "mlp_qgemm.onnx"]]
    code, report = run_json("run", *paths, "--format", "json", "--guards", "integrity,onnx-dtypes")
    assert code == 0, report
    assert validate(report, "report") == []
    assert report["summary"]["PASS"] == 2 * len(paths)
    out = {}
    for result in report["results"]:
        rel = Path(result["artifact"]["path"]).resolve().relative_to(ONNX.resolve()).as_posix()
        out[(rel, result["guard"])] = result
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_coverage(name: str, valid_run: dict) -> None:
    ops, params, flops, unquantized, bpw = CASES[name]
    result = valid_run[(name, "onnx-dtypes")]
    assert result["status"] == "PASS", result["message"]
    assert valid_run[(name, "integrity")]["status"] == "PASS"
    m = result["metrics"]
    assert m["weight_ops"] == 5
    assert m["params_total"] == 45056
    assert m["quantized_ops"] == round(5 * ops[0])
    for basis, want in (("ops", ops), ("params", params), ("flops", flops)):
        got = m["coverage"][basis]
        assert (got["quantized"], got["int8"], got["int4"]) == pytest.approx(want, abs=1e-9), basis
    assert m["int8_coverage"] == pytest.approx(ops[1])
    assert [u["name"] for u in result["unquantized"]] == unquantized
    assert m["unexpected_unquantized"] == len(unquantized)
    assert m["bits_per_weight"] == pytest.approx(bpw, rel=1e-9)
    # output positions inferred through the quantized graph: 16 tokens for every compute layer
    assert m["flops_exact"] is True


def test_layers_and_kinds_through_inspect() -> None:
    code, inv = run_json("inspect", str(ONNX / "matmulnbits4.onnx"), "--format", "json")
    assert code == 0
    layers = {x["name"]: x for x in inv["layers"]}
    assert list(layers) == [
        "embed.weight_Q4",
        "conv.weight",
        "fc1.weight_Q4",
        "fc2.weight_Q4",
        "head.weight_Q4",
    ]
    assert [x["kind"] for x in inv["layers"]] == ["embedding", "conv", "linear", "linear", "linear"]
    fc2 = layers["fc2.weight_Q4"]
    assert fc2["shape"] == [128, 64]  # K x N from the attributes, not the packed [64, 4, 16]
    assert fc2["bits"] == 4 and fc2["params"] == 8192
    assert fc2["bits_per_weight"] == pytest.approx(5.0)  # 4 bits + an FP32 scale per 32 weights
    assert layers["embed.weight_Q4"]["dtype"] == "INT4"
    # params_stored counts every stored element, with packed B at its logical K x N
    assert inv["params_stored"] == 45056 + 256 + 3 * 256 + 256  # + biases + MatMulNBits scales + gather scales
    assert inv["metrics"]["quant_ops"] == {
        "com.microsoft:GatherBlockQuantized": 1,
        "com.microsoft:MatMulNBits": 3,
    }


def test_dynamic_layers_use_integer_ops() -> None:
    code, inv = run_json("inspect", str(ONNX / "dynamic_qint8.onnx"), "--format", "json")
    assert code == 0
    ops = [x["detail"]["op"] for x in inv["layers"]]
    assert ops == ["Gather", "ConvInteger", "MatMulInteger", "MatMulInteger", "MatMulInteger"]
    assert [x["dtype"] for x in inv["layers"]] == ["UINT8", "INT8", "INT8", "INT8", "INT8"]
    # scale and zero point found by ORT's naming for the ops that take no scale input
    assert inv["layers"][2]["detail"]["quant_params"] == ["fc1.weight_zero_point", "fc1.weight_scale"]


def test_qoperator_activation_matmuls_are_not_layers() -> None:
    code, inv = run_json("inspect", str(ONNX / "static_qop.onnx"), "--format", "json")
    assert code == 0
    assert [x["detail"]["op"] for x in inv["layers"]] == [
        "Gather",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearMatMul",
        "QLinearMatMul",
    ]
    assert inv["facts"]["op_types"]["QLinearMatMul"] == 5  # two of them multiply activations


def test_expect_unquantized_and_bounds() -> None:
    path = str(ONNX / "qdq_int4_matmul.onnx")
    code, result = run_json("guard", "onnx-dtypes", path, "--require", "unexpected_unquantized<=0")
    assert code == 1 and result["status"] == "FAIL"
    code, result = run_json(
        "guard",
        "onnx-dtypes",
        path,
        "--require",
        "unexpected_unquantized<=0",
        "--expect-unquantized",
        "embed.*",
        "--expect-unquantized",
        "kind:conv",
    )
    assert code == 0 and result["status"] == "PASS"
    code, result = run_json("guard", "onnx-dtypes", path, "--require", "coverage.params.int4>=0.6")
    assert code == 1
    assert result["bounds"][0]["actual"] == pytest.approx(24576 / 45056)


def test_run_whole_folder_passes_valid_models() -> None:
    code, report = run_json(
        "run",
        str(ONNX / "static_qdq.onnx"),
        str(ONNX / "external"),
        "--format",
        "json",
        "--guards",
        "integrity,onnx-dtypes",
    )
    assert code == 0, report
    assert report["summary"]["PASS"] == 4


def test_fp8_is_quantized_but_not_int8(valid_run: dict) -> None:
    result = valid_run[("qdq_fp8_matmul.onnx", "onnx-dtypes")]
    assert result["metrics"]["coverage"]["ops"]["by_bits"] == {"8": 0.6, "32": 0.4}
    code, inv = run_json("inspect", str(ONNX / "qdq_fp8_matmul.onnx"), "--format", "json")
    assert code == 0
    assert {x["dtype"] for x in inv["layers"] if x["quantized"]} == {"FLOAT8E4M3FN"}


def test_fused_contrib_ops_from_onnxruntime() -> None:
    code, inv = run_json("inspect", str(ONNX / "ort_dynamic_fused.onnx"), "--format", "json")
    assert code == 0
    assert [x["detail"]["op"] for x in inv["layers"]] == [
        "Gather",
        "ConvInteger",
        *["com.microsoft:DynamicQuantizeMatMul"] * 3,
    ]
    # FusedMatMul(res, res) multiplies activations: not a layer
    assert inv["facts"]["op_types"]["com.microsoft:FusedMatMul"] == 1
    code, inv = run_json("inspect", str(ONNX / "ort_qdq_fused.onnx"), "--format", "json")
    # onnxruntime fused two MatMuls and the conv into QOperator form and left fc1 as QDQ
    assert [x["detail"]["op"] for x in inv["layers"]] == [
        "Gather",
        "QLinearConv",
        "MatMul",
        "QLinearMatMul",
        "QLinearMatMul",
    ]


@pytest.mark.parametrize(
    ("name", "quantized", "bpw"), [("mlp_gemm.onnx", 0.0, 32.0), ("mlp_qgemm.onnx", 1.0, 8 * 2570 / 2560)]
)
def test_gemm_and_qgemm(name: str, quantized: float, bpw: float, valid_run: dict) -> None:
    result = valid_run[(name, "onnx-dtypes")]
    m = result["metrics"]
    assert m["weight_ops"] == 2 and m["params_total"] == 32 * 64 + 16 * 32
    assert m["coverage"]["params"]["int8"] == quantized
    assert m["bits_per_weight"] == pytest.approx(bpw)
    assert [u["name"] for u in result["unquantized"]] == (["w1", "w2"] if not quantized else [])


@pytest.mark.parametrize(
    ("name", "integer_ops"),
    [("static_qop.onnx", 0.8), ("dynamic_qint8.onnx", 0.8), ("float.onnx", 0.0), ("static_qdq.onnx", None)],
)
def test_compute_precision_where_the_graph_fixes_it(
    name: str, integer_ops: float | None, valid_run: dict
) -> None:
    """QOperator and integer ops compute in int8, float weights in float; QDQ is left to the runtime
    (no compute metric) and an embedding lookup computes nothing (the 0.2 unknown share)."""
    result = valid_run[(name, "onnx-dtypes")]
    compute = result["metrics"].get("compute_coverage")
    if integer_ops is None:
        assert compute is None
    else:
        assert compute["ops"] == pytest.approx({"integer": integer_ops, "unknown": 0.2})
        assert compute["flops"]["integer"] == pytest.approx(integer_ops / 0.8)
