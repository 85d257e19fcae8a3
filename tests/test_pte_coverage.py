"""Coverage of the real `.pte` fixtures: the numbers a person computes by hand (fixtures/pte/README.md).

Every basis to the layer, the unquantized layers by name, compute (integer) coverage, the KV cache,
and the guard's verdicts and exit codes through the real CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, run_json
from quantgate.core.coverage import coverage_metrics
from quantgate.core.inventory import Inventory
from quantgate.formats.pte import reader

PTE = FIXTURES / "pte"
T = 2 / 3

# file -> (ops quantized, ops int8, ops int4, params quantized, flops quantized, compute integer by ops,
#          weight ops, params total, flops total)
TABLE = {
    "fp32_portable.pte": (0, 0, 0, 0, 0, 0, 3, 5888, 43008),
    "fp32_xnnpack.pte": (0, 0, 0, 0, 0, 0, 3, 5888, 43008),
    "int8_xnnpack.pte": (T, T, 0, 2688 / 5888, 1.0, T, 3, 5888, 43008),
    "int8_xnnpack_inline.pte": (T, T, 0, 2688 / 5888, 1.0, T, 3, 5888, 43008),
    "dq8_xnnpack.pte": (T, T, 0, 2688 / 5888, 1.0, T, 3, 5888, 43008),
    "int8_portable.pte": (T, T, 0, 2688 / 5888, 1.0, 0, 3, 5888, 43008),
    "emb8_portable.pte": (1 / 3, 1 / 3, 0, 6400 / 22784, 0, 0, 3, 22784, 262144),
    "8da4w_emb4_xnnpack.pte": (1.0, 0, 1.0, 1.0, 1.0, T, 3, 22784, 262144),
    "partial_8da4w_xnnpack.pte": (T, 0, T, 0.5, 0.5, T, 3, 32768, 524288),
    "w8_xnnpack.pte": (0, 0, 0, 0, 0, 0, 3, 32768, 524288),
    "conv_fp32_xnnpack.pte": (0, 0, 0, 0, 0, 0, 3, 10816, 315392),
    "conv_int8_xnnpack.pte": (1.0, 1.0, 0, 1.0, 1.0, 1.0, 3, 10816, 315392),
    "ext/fp32_portable_extconst.pte": (0, 0, 0, 0, 0, 0, 3, 5888, 43008),
    "more/extw/tinylm_xnnpack_extw.pte": (0, 0, 0, 0, 0, 0, 3, 5888, 43008),
    "more/conv_int8_portable.pte": (1.0, 1.0, 0, 1.0, 1.0, 0, 3, 10816, 315392),
}

# file -> the unquantized layers: (name, kind, shape, dtype)
EMB32 = ("0:aten::embedding", "embedding", [100, 32], "fp32")
UNQUANTIZED = {
    "fp32_portable.pte": [
        EMB32,
        ("3:aten::addmm", "linear", [64, 32], "fp32"),
        ("6:aten::addmm", "linear", [10, 64], "fp32"),
    ],
    "fp32_xnnpack.pte": [
        EMB32,
        ("2:XnnpackBackend[0]/fully_connected#0", "linear", [64, 32], "fp32"),
        ("2:XnnpackBackend[0]/fully_connected#1", "linear", [10, 64], "fp32"),
    ],
    "int8_xnnpack.pte": [EMB32],
    "int8_xnnpack_inline.pte": [EMB32],
    "dq8_xnnpack.pte": [EMB32],
    "int8_portable.pte": [("2:aten::embedding", "embedding", [100, 32], "fp32")],
    "emb8_portable.pte": [
        ("2:aten::addmm", "linear", [64, 128], "fp32"),
        ("4:aten::addmm", "linear", [128, 64], "fp32"),
    ],
    "8da4w_emb4_xnnpack.pte": [],
    "partial_8da4w_xnnpack.pte": [("0:XnnpackBackend[0]/fully_connected#2", "linear", [256, 64], "fp32")],
    "w8_xnnpack.pte": [
        ("0:XnnpackBackend[0]/fully_connected#0", "linear", [128, 64], "fp32"),
        ("0:XnnpackBackend[0]/fully_connected#1", "linear", [64, 128], "fp32"),
        ("0:XnnpackBackend[0]/fully_connected#2", "linear", [256, 64], "fp32"),
    ],
    "conv_fp32_xnnpack.pte": [
        ("0:XnnpackBackend[0]/conv2d#0", "conv", [16, 3, 3, 3], "fp32"),
        ("0:XnnpackBackend[0]/depthwise_conv2d#1", "conv", [1, 3, 3, 16], "fp32"),
        ("0:XnnpackBackend[0]/fully_connected#2", "linear", [10, 1024], "fp32"),
    ],
    "conv_int8_xnnpack.pte": [],
    "more/extw/tinylm_xnnpack_extw.pte": [
        EMB32,
        ("2:XnnpackBackend[0]/fully_connected#0", "linear", [64, 32], "fp32"),
        ("2:XnnpackBackend[0]/fully_connected#1", "linear", [10, 64], "fp32"),
    ],
    "more/conv_int8_portable.pte": [],
    "ext/fp32_portable_extconst.pte": [
        ("emb.weight", "embedding", [100, 32], "fp32"),
        ("l1.weight", "linear", [64, 32], "fp32"),
        ("l2.weight", "linear", [10, 64], "fp32"),
    ],
}


def inventory(name: str) -> Inventory:
    return reader.read(str(PTE / name))


@pytest.mark.parametrize("name", sorted(TABLE))
def test_coverage_on_every_basis(name: str) -> None:
    ops_q, ops_i8, ops_i4, params_q, flops_q, compute_int, n_ops, params, flops = TABLE[name]
    metrics, unquantized = coverage_metrics(inventory(name).layers)
    cov = metrics["coverage"]
    assert metrics["weight_ops"] == n_ops
    assert metrics["params_total"] == params
    assert sum(layer.flops for layer in inventory(name).layers) == flops
    assert metrics["flops_exact"] is True
    assert cov["ops"]["quantized"] == pytest.approx(ops_q)
    assert cov["ops"]["int8"] == pytest.approx(ops_i8)
    assert cov["ops"]["int4"] == pytest.approx(ops_i4)
    assert cov["ops"]["unknown"] == 0
    assert cov["params"]["quantized"] == pytest.approx(params_q)
    assert cov["flops"]["quantized"] == pytest.approx(flops_q)
    assert metrics["compute_coverage"]["ops"]["integer"] == pytest.approx(compute_int)
    assert [(u["name"], u["kind"], u["shape"], u["dtype"]) for u in unquantized] == UNQUANTIZED[name]


def test_w8_xnnpack_lost_its_quantization() -> None:
    """torchao weight-only int8 lowered to XNNPACK ships fp32 filters: the gate says 0%."""
    layers = inventory("w8_xnnpack.pte").layers
    assert [(x.dtype, x.bits, x.quantized, x.compute) for x in layers] == [("fp32", 32.0, False, "fp32")] * 3


def test_int8_portable_stores_int8_and_computes_fp32() -> None:
    layers = inventory("int8_portable.pte").layers
    linear = [x for x in layers if x.kind == "linear"]
    assert [(x.dtype, x.compute) for x in linear] == [("int8", "fp32"), ("int8", "fp32")]
    assert linear[0].detail["via"] == ["aten::permute_copy", "quantized_decomposed::dequantize_per_channel"]
    # int8 values + fp32 per-channel scales + int64 zero points: 2048 + 64*4 + 64*8
    assert linear[0].weight_bytes == 2048 + 256 + 512


def test_int8_portable_convolutions_are_traced_through_dequantize() -> None:
    layers = inventory("more/conv_int8_portable.pte").layers
    assert [(x.name, x.kind, x.shape, x.dtype, x.out_positions, x.compute) for x in layers] == [
        ("5:aten::convolution", "conv", (16, 3, 3, 3), "int8", 256, "fp32"),
        ("9:aten::convolution", "conv", (16, 1, 3, 3), "int8", 256, "fp32"),
        ("18:aten::addmm", "linear", (10, 1024), "int8", 1, "fp32"),
    ]
    assert layers[0].detail["via"] == ["quantized_decomposed::dequantize_per_channel"]


def test_packed_4bit_embedding_counts_logical_elements() -> None:
    emb = inventory("8da4w_emb4_xnnpack.pte").layers[0]
    assert (emb.kind, emb.shape, emb.bits, emb.params) == ("embedding", (100, 64), 4.0, 6400)
    assert emb.dtype == "int4 (packed uint8)"
    # every stored parameter once, the packed table by its logical elements: embedding 6400 + its scales
    # [100, 2] + LayerNorm 2 x 64 + FC filters 8192 x 2 + FC biases 128 + 64
    assert inventory("8da4w_emb4_xnnpack.pte").params_stored == 6400 + 200 + 128 + 16384 + 192
    fc = inventory("8da4w_emb4_xnnpack.pte").layers[1]
    assert (fc.dtype, fc.compute, fc.detail["input"], fc.detail["quant"]["group_size"]) == (
        "qbint4",
        "int8",
        "qdint8",
        32,
    )


def test_conv_positions_give_exact_flops() -> None:
    layers = inventory("conv_int8_xnnpack.pte").layers
    assert [(x.kind, x.params, x.out_positions, x.flops) for x in layers] == [
        ("conv", 432, 256, 221184),
        ("conv", 144, 256, 73728),
        ("linear", 10240, 1, 20480),
    ]


def test_quantized_kv_cache_is_its_own_metric() -> None:
    inv = inventory("qkv_cache_portable.pte")
    assert inv.layers == []
    kv = inv.metrics["kv_cache"]
    assert (kv["quantized"], kv["buffers"], kv["elements"], kv["bytes"]) == (True, 2, 512, 512)
    assert kv["dtypes"] == {"int8": 2}
    assert kv["names"] == ["kv.k_cache", "kv.v_cache"]
    assert kv["quantize_ops"] == 2


@pytest.mark.parametrize(
    ("name", "quantized", "elements", "nbytes", "dtypes", "names"),
    [
        ("more/float_kv_cache_portable.pte", False, 256, 1024, {"fp32": 1}, ["k_cache"]),
        ("more/int8_kv_index_copy_portable.pte", True, 256, 256, {"int8": 1}, ["value 0"]),
    ],
)
def test_kv_cache_written_back_by_copy(name: str, quantized: bool, elements: int, nbytes: int, dtypes, names) -> None:
    """index_copy_ into a buffer: `aten::index_put` then the `aten::copy_` write-back."""
    inv = inventory(name)
    assert inv.layers == [] and inv.structural_findings == []
    kv = inv.metrics["kv_cache"]
    assert (kv["quantized"], kv["buffers"], kv["elements"], kv["bytes"]) == (quantized, 1, elements, nbytes)
    assert (kv["dtypes"], kv["names"], kv["quantize_ops"]) == (dtypes, names, int(quantized))


def test_kv_cache_bound_through_the_guard() -> None:
    code, result = run_json(
        "guard",
        "pte-program",
        str(PTE / "more" / "float_kv_cache_portable.pte"),
        "--require",
        "kv_cache.quantized_buffers>=1",
    )
    assert (code, result["status"]) == (1, "FAIL")
    assert result["message"] == "kv_cache.quantized_buffers 0 < 1 (required)"
    code, result = run_json("guard", "pte-program", str(PTE / "more" / "float_kv_cache_portable.pte"))
    assert (code, result["status"]) == (0, "PASS")
    assert result["message"] == "no weight-bearing ops found; KV cache not quantized (1 buffer(s), 1,024 bytes)"


def test_no_kv_cache_metric_without_a_cache() -> None:
    assert "kv_cache" not in inventory("int8_xnnpack.pte").metrics


def test_opaque_delegate_counts_as_unknown() -> None:
    # relu(x @ w + b) lowered to executorch's own test backend, then a portable Linear(64, 10)
    inv = inventory("more/opaque_demo_backend.pte")
    assert inv.structural_findings == []
    assert [(x.name, x.dtype, x.quantized, x.params) for x in inv.layers] == [
        ("1:BackendWithCompilerDemo[0]", "opaque", None, 155),  # params stand-in: the payload's bytes
        ("3:aten::addmm", "fp32", False, 640),
    ]
    metrics, unquantized = coverage_metrics(inv.layers)
    assert metrics["coverage"]["ops"] == {
        "quantized": 0.0,
        "int8": 0.0,
        "int4": 0.0,
        "unknown": 0.5,
        "by_bits": {"32": 0.5, "unknown": 0.5},
    }
    assert metrics["coverage"]["params"]["unknown"] == pytest.approx(155 / 795)
    assert metrics["flops_exact"] is False
    assert [u["name"] for u in unquantized] == ["3:aten::addmm"]
    assert (inv.metrics["opaque_delegates"], inv.metrics["opaque_delegate_bytes"]) == (1, 155)
    assert inv.metrics["delegates"] == {"BackendWithCompilerDemo": 1}
    code, result = run_json(
        "guard", "pte-program", str(PTE / "more" / "opaque_demo_backend.pte"), "--require", "coverage.ops.unknown<=0"
    )
    assert (code, result["status"]) == (1, "FAIL")
    assert [f["code"] for f in result["findings"]] == ["PTE_OPAQUE_DELEGATE"]


@pytest.mark.parametrize("name", ["more/dynamic_portable.pte", "more/dynamic_xnnpack.pte"])
def test_dynamic_shapes_give_upper_bound_flops(name: str) -> None:
    """A batch of 1..32: sizes are upper bounds, so flops use 32 positions and are not exact."""
    layers = inventory(name).layers
    assert [(x.shape, x.params, x.out_positions) for x in layers] == [
        ((128, 64), 8192, 32),
        ((64, 128), 8192, 32),
        ((256, 64), 16384, 32),
    ]
    metrics, _ = coverage_metrics(layers)
    assert metrics["flops_exact"] is False
    assert sum(x.flops for x in layers) == 2 * 32768 * 32


def test_control_flow_branches_each_count() -> None:
    """`torch.cond` with a Linear(16,16) per branch: both are weight-bearing ops of the program."""
    inv = inventory("more/cond_portable.pte")
    assert inv.facts["instruction_kinds"] == {"KernelCall": 6, "JumpFalseCall": 2, "MoveCall": 2}
    assert [(x.name, x.shape, x.out_positions, x.flops) for x in inv.layers] == [
        ("4:aten::addmm", (16, 16), 4, 2048),
        ("8:aten::addmm", (16, 16), 4, 2048),
    ]


def test_batched_constant_operand_and_activation_matmul() -> None:
    """x [2,4,8] bmm a constant [2,8,16] is a layer (2x4x8x16 MACs); h bmm h^T of activations is not."""
    inv = inventory("more/bmm_portable.pte")
    assert inv.facts["operators"]["aten::bmm.out"] == 2
    assert [(x.name, x.kind, x.shape, x.params, x.out_positions, x.flops) for x in inv.layers] == [
        ("0:aten::bmm", "linear", (2, 8, 16), 256, 4, 2 * 2 * 4 * 8 * 16)
    ]


def test_xnnpack_batch_matmul_weight_fed_as_a_delegate_input() -> None:
    """Lowered to XNNPACK, the constant [2,8,16] is not blob data but a delegate input (args[external_id]):
    it is still a float layer, never silently dropped from the coverage."""
    inv = inventory("more/bmm_xnnpack.pte")
    rows = [(x.name, x.kind, x.shape, x.dtype, x.quantized, x.params, x.out_positions, x.flops) for x in inv.layers]
    assert rows == [("0:XnnpackBackend[0]/batch_matmul#0", "linear", (2, 8, 16), "fp32", False, 256, 4, 2048)]
    assert inv.layers[0].detail["weight_from"] == "delegate input"
    assert inv.params_stored == 256


def test_a_weight_shared_by_two_methods_counts_once() -> None:
    inv = inventory("more/two_methods.pte")
    assert inv.facts["methods"] == ["encode", "forward"]
    assert [(x.name, x.shape, x.detail.get("also_in")) for x in inv.layers] == [
        ("encode/0:aten::embedding", (100, 32), ["forward"]),
        ("encode/3:aten::addmm", (64, 32), ["forward"]),
        ("forward/6:aten::addmm", (10, 64), None),
    ]
    metrics, _ = coverage_metrics(inv.layers)
    assert (metrics["weight_ops"], metrics["params_total"]) == (3, 5888)
    assert inv.params_stored == 6026  # every constant once: weights, biases, LayerNorm


@pytest.mark.parametrize(
    ("name", "require", "status", "exit_code"),
    [
        ("conv_int8_xnnpack.pte", "coverage.ops.int8>=0.9", "PASS", 0),
        ("int8_xnnpack.pte", "coverage.flops.int8>=0.9", "PASS", 0),
        ("int8_xnnpack.pte", "coverage.ops.int8>=0.9", "FAIL", 1),
        ("w8_xnnpack.pte", "coverage.ops.quantized>=0.5", "FAIL", 1),
        ("int8_portable.pte", "compute_coverage.ops.integer>=0.5", "FAIL", 1),
        ("int8_xnnpack.pte", "compute_coverage.flops.integer>=1", "PASS", 0),
        ("qkv_cache_portable.pte", "kv_cache.bytes<=512", "PASS", 0),
        ("qkv_cache_portable.pte", "coverage.ops.int8>=0.9", "ERROR", 2),
    ],
)
def test_guard_verdicts(name: str, require: str, status: str, exit_code: int) -> None:
    code, result = run_json("guard", "pte-program", str(PTE / name), "--require", require)
    assert (result["status"], code) == (status, exit_code), result["message"]


def test_guard_result_names_float_layers_and_compute(tmp_path: Path) -> None:
    code, result = run_json("guard", "pte-program", str(PTE / "int8_portable.pte"))
    assert code == 0
    assert result["metrics"]["int8_coverage"] == pytest.approx(T)
    assert result["metrics"]["compute_coverage"]["ops"]["integer"] == 0
    assert [u["name"] for u in result["unquantized"]] == ["2:aten::embedding"]
    assert [f["code"] for f in result["findings"]] == ["PTE_QUANTIZED_STORAGE_FLOAT_COMPUTE"]
    assert "integer compute 0.0% by ops" in result["message"]


def test_expect_unquantized_embedding(tmp_path: Path) -> None:
    shutil.copy(PTE / "int8_xnnpack.pte", tmp_path)
    policy = tmp_path / "quantgate.toml"
    policy.write_text(
        '[quantgate]\nversion = 1\n[guards.pte-program]\nrequire = ["unexpected_unquantized <= 0"]\n'
        'expect_unquantized = ["*embed*"]\n',
        encoding="utf-8",
    )
    code, report = run_json(
        "run", "--format", "json", "--policy", str(policy), "--guards", "integrity,pte-program", str(tmp_path)
    )
    statuses = {r["guard"]: r["status"] for r in report["results"]}
    assert statuses == {"integrity": "PASS", "pte-program": "PASS"}
    assert code == 0


@pytest.mark.parametrize(
    ("name", "codes"),
    [
        ("int8_portable.pte", ["PTE_QUANTIZED_STORAGE_FLOAT_COMPUTE"]),  # addmm on dequantized int8
        ("emb8_portable.pte", []),  # a quantized embedding is a lookup: no float multiply to report
        ("8da4w_emb4_xnnpack.pte", []),
        ("int8_xnnpack.pte", []),
    ],
)
def test_float_compute_finding_only_for_multiplies(name: str, codes: list[str]) -> None:
    _, result = run_json("guard", "pte-program", str(PTE / name))
    assert [f["code"] for f in result["findings"]] == codes
