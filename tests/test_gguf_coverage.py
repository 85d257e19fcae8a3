"""gguf-dtypes on the real GGUFWriter fixtures: coverage to the layer, bpw, file_type checks, memory."""

from __future__ import annotations

import pytest

from conftest import FIXTURES, run_json

GGUF = FIXTURES / "gguf"

LAYER_PARAMS = 155_648  # 16 weight-bearing tensors (see fixtures/gguf/README.md)
ALL_PARAMS = 155_968  # + 5 norms of 64
FLOPS = 2 * (LAYER_PARAMS - 16_384)  # the embedding lookup counts 0
FFN_DOWN = 16_384


def guard(name: str, *args: str) -> tuple[int, dict]:
    return run_json("guard", "gguf-dtypes", str(GGUF / f"{name}.gguf"), *args)


def test_q8_0() -> None:
    code, r = guard("model_q8_0")
    assert (code, r["status"]) == (0, "PASS")
    m = r["metrics"]
    assert (m["weight_ops"], m["quantized_ops"], m["params_total"], m["params_quantized"]) == (
        16,
        16,
        LAYER_PARAMS,
        LAYER_PARAMS,
    )
    for basis in ("ops", "params", "flops"):
        assert m["coverage"][basis] == {
            "quantized": 1.0,
            "int8": 1.0,
            "int4": 0.0,
            "unknown": 0.0,
            "by_bits": {"8": 1.0},
        }
    assert m["int8_coverage"] == 1.0
    assert m["bits_per_weight"] == pytest.approx(8.5)
    assert m["bits_per_weight_all"] == pytest.approx(8 * (LAYER_PARAMS * 34 / 32 + 320 * 4) / ALL_PARAMS)
    assert m["bits_per_weight_excluding_embeddings_and_output"] == pytest.approx(
        8 * (122_880 * 34 / 32 + 320 * 4) / (122_880 + 320)
    )
    assert m["flops_exact"] is False
    assert (m["file_type"], m["quantization_version"], m["tensor_count"], m["kv_count"]) == (
        "Q8_0",
        2,
        21,
        19,
    )
    assert r["unquantized"] == [] and r["findings"] == []


def test_q4_0() -> None:
    code, r = guard("model_q4_0", "--require", "coverage.params.int4>=1", "--require", "bits_per_weight<=4.5")
    assert (code, r["status"]) == (0, "PASS")
    m = r["metrics"]
    assert m["coverage"]["ops"] == {
        "quantized": 1.0,
        "int8": 0.0,
        "int4": 1.0,
        "unknown": 0.0,
        "by_bits": {"4": 1.0},
    }
    assert m["int8_coverage"] == 0.0
    assert m["bits_per_weight"] == pytest.approx(4.5)


def test_f16() -> None:
    code, r = guard("model_f16", "--require", "coverage.ops.quantized>=0.5")
    assert (code, r["status"]) == (1, "FAIL")
    m = r["metrics"]
    assert m["coverage"]["params"]["quantized"] == 0.0
    assert m["coverage"]["ops"]["by_bits"] == {"16": 1.0}
    assert len(r["unquantized"]) == 16 and m["unexpected_unquantized"] == 16
    assert m["bits_per_weight"] == pytest.approx(16.0)
    assert r["findings"] == []  # MOSTLY_F16 with F16 weights is consistent


def test_one_layer_left_f16() -> None:
    code, r = guard("model_q4_0_one_f16", "--require", "unexpected_unquantized<=0")
    assert (code, r["status"]) == (1, "FAIL")
    m = r["metrics"]
    assert (m["weight_ops"], m["quantized_ops"]) == (16, 15)
    assert m["coverage"]["ops"]["quantized"] == 15 / 16
    assert m["coverage"]["params"]["quantized"] == pytest.approx((LAYER_PARAMS - FFN_DOWN) / LAYER_PARAMS)
    assert m["coverage"]["flops"]["quantized"] == pytest.approx((FLOPS - 2 * FFN_DOWN) / FLOPS)
    assert m["coverage"]["ops"]["int4"] == 15 / 16
    assert r["unquantized"] == [
        {
            "name": "blk.1.ffn_down.weight",
            "kind": "linear",
            "shape": [64, 256],
            "dtype": "F16",
            "params": FFN_DOWN,
            "expected": False,
            "position": 18,
        }
    ]
    assert r["findings"] == []  # one forgotten layer is a coverage matter, not a file_type contradiction
    # the same layer declared expected: PASS
    code, r = guard(
        "model_q4_0_one_f16",
        "--require",
        "unexpected_unquantized<=0",
        "--expect-unquantized",
        "blk.*.ffn_down.weight",
    )
    assert (code, r["status"]) == (0, "PASS")


def test_mixed() -> None:
    code, r = guard("model_mixed")
    assert code == 0
    m = r["metrics"]
    ops = m["coverage"]["ops"]
    assert (ops["quantized"], ops["int8"], ops["int4"]) == (15 / 16, 1 / 16, 10 / 16)
    assert ops["by_bits"] == {
        "1.58": 1 / 16,
        "2": 1 / 16,
        "4": 8 / 16,
        "5": 4 / 16,
        "8": 1 / 16,
        "16": 1 / 16,
    }
    params = m["coverage"]["params"]
    assert params["quantized"] == pytest.approx(139_264 / LAYER_PARAMS)
    assert params["int8"] == pytest.approx(16_384 / LAYER_PARAMS)
    assert params["int4"] == pytest.approx((2 * (4096 + 2048 + 4096 + 16_384 + 16_384)) / LAYER_PARAMS)
    assert [u["name"] for u in r["unquantized"]] == ["output.weight"]
    assert r["unquantized"][0]["dtype"] == "BF16"
    per_block = 4096 * 18 / 32 + 2048 * 18 / 32 + 2048 * 22 / 32 + 4096 * 20 / 32 + 16_384 * (17 + 24) / 32
    weight_bytes = 16_384 * 34 / 32 + 2 * per_block + 16_384 * 66 / 256 + 16_384 * 54 / 256 + 16_384 * 2
    assert m["bits_per_weight"] == pytest.approx(8 * weight_bytes / LAYER_PARAMS)
    assert m["file_type"] == "GUESSED"


def test_inspect_layers() -> None:
    code, inv = run_json("inspect", str(GGUF / "model_mixed.gguf"), "--format", "json")
    assert code == 0
    layers = {x["name"]: x for x in inv["layers"]}
    assert len(layers) == 16
    assert layers["token_embd.weight"]["kind"] == "embedding"
    assert layers["token_embd.weight"]["flops"] == 0
    assert layers["blk.0.ffn_down.weight"]["shape"] == [64, 256]  # [rows, cols], ggml ne reversed
    assert layers["blk.0.ffn_down.weight"]["detail"]["ne"] == [256, 64]
    assert (layers["blk.1.ffn_down.weight"]["dtype"], layers["blk.1.ffn_down.weight"]["bits"]) == (
        "TQ1_0",
        1.58,
    )
    assert layers["blk.0.ffn_gate.weight"]["bits_per_weight"] == 4.25  # MXFP4: 17 bytes / 32
    assert layers["blk.0.ffn_gate.weight"]["quantized"] is True
    assert inv["params_stored"] == ALL_PARAMS
    assert inv["facts"]["hparams"] == {
        "context_length": 2048,
        "block_count": 2,
        "embedding_length": 64,
        "head_count": 4,
        "head_count_kv": 2,
    }


@pytest.mark.parametrize(
    ("name", "code", "severity", "status"),
    [
        ("semantic_file_type_q8_0_over_q4_0", "GGUF_FILE_TYPE_MISMATCH", "error", "FAIL"),
        ("semantic_f16_file_type_with_q4_0", "GGUF_FILE_TYPE_MISMATCH", "error", "FAIL"),
        ("semantic_no_quantization_version", "GGUF_QUANT_VERSION_MISSING", "warning", "WARN"),
        ("semantic_architecture_not_string", "GGUF_ARCHITECTURE_NOT_STRING", "error", "FAIL"),
    ],
)
def test_semantic_fixtures(name: str, code: str, severity: str, status: str) -> None:
    _, integrity = run_json("guard", "integrity", str(GGUF / f"{name}.gguf"))
    assert integrity["status"] == "PASS"
    exit_code, r = guard(name)
    assert r["status"] == status and exit_code == (1 if status == "FAIL" else 0)
    found = [(f["code"], f["severity"]) for f in r["findings"] if f["severity"] != "info"]
    assert found == [(code, severity)]
    if code != "GGUF_QUANT_VERSION_MISSING":
        assert r["findings"][0]["location"]["field"] in ("general.file_type", "general.architecture")


def test_file_type_mismatch_message() -> None:
    _, r = guard("semantic_file_type_q8_0_over_q4_0")
    assert "MOSTLY_Q8_0" in r["message"] and "Q4_0" in r["message"] and "100%" in r["message"]


# ---- memory estimate ----------------------------------------------------------------------------------

WEIGHTS_Q4_0 = LAYER_PARAMS * 18 // 32 + 320 * 4


def kv_bytes(ctx: int, per_element: float) -> int:
    # 2 layers x ctx x 2 KV heads x (16 + 16) head dims
    return int(2 * ctx * 2 * (16 + 16) * per_element)


def test_memory_defaults() -> None:
    _, r = guard("model_q4_0")
    mem = r["metrics"]["memory"]
    # ctx defaults to the model's context_length (2048, below the 4096 cap); cache f16
    assert mem == {
        "weights_bytes": WEIGHTS_Q4_0,
        "ctx": 2048,
        "ctx_source": "model (capped at 4096)",
        "cache_type": "f16",
        "kv_cache_bytes": kv_bytes(2048, 2),
        "total_bytes": WEIGHTS_Q4_0 + kv_bytes(2048, 2),
    }


@pytest.mark.parametrize(("cache", "per_element"), [("f32", 4), ("q8_0", 34 / 32), ("q4_0", 18 / 32)])
def test_memory_params(cache: str, per_element: float) -> None:
    _, r = guard("model_q4_0", "--param", "ctx=8192", "--param", f"cache_type={cache}")
    mem = r["metrics"]["memory"]
    assert (mem["ctx"], mem["cache_type"]) == (8192, cache)
    assert mem["kv_cache_bytes"] == kv_bytes(8192, per_element)
    assert mem["total_bytes"] == WEIGHTS_Q4_0 + kv_bytes(8192, per_element)


def test_memory_bound() -> None:
    code, r = guard("model_q4_0", "--param", "ctx=131072", "--require", "memory.total_bytes<=30000000")
    assert (code, r["status"]) == (1, "FAIL")
    assert r["bounds"][0]["actual"] == WEIGHTS_Q4_0 + kv_bytes(131_072, 2)


def test_memory_bad_param() -> None:
    code, r = guard("model_q4_0", "--param", "cache_type=q9_9")
    assert (code, r["status"]) == (2, "ERROR")
    assert "cache_type" in r["error"]["message"]


def test_memory_partial_is_not_a_silent_pass() -> None:
    # base.gguf has block_count but no head counts: no KV estimate, and a bound on the total is an ERROR
    code, r = guard("base", "--require", "memory.total_bytes<=1e12")
    assert (code, r["status"]) == (2, "ERROR")
    assert "kv_cache_bytes" not in r["metrics"]["memory"]
    assert [f["code"] for f in r["findings"]] == ["GGUF_MEMORY_ESTIMATE_PARTIAL"]


def test_results_match_the_schema() -> None:
    from quantgate.core import jsonschemas

    for name in ("model_mixed", "semantic_file_type_q8_0_over_q4_0"):
        _, r = guard(name, "--require", "memory.total_bytes<=1e9")
        assert jsonschemas.validate(r, "guard-result") == []
    _, r = run_json("guard", "integrity", str(GGUF / "broken" / "tensor_overlap.gguf"))
    assert jsonschemas.validate(r, "guard-result") == []
