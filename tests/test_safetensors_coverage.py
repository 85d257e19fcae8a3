"""safetensors coverage: exact coverage and bits per weight per fixture, computed by hand from the
tensor shapes in fixtures/safetensors/README.md, through the real CLI."""

from __future__ import annotations

from fractions import Fraction

import pytest

from conftest import FIXTURES, run_json

ST = FIXTURES / "safetensors"

# the tiny Llama every quantized fixture starts from: vocab 64, hidden 256, intermediate 512,
# 4 heads / 2 kv heads (k, v project to 128), one layer; (out, in) per Linear
LINEARS = {
    "model.layers.0.self_attn.q_proj": (256, 256),
    "model.layers.0.self_attn.k_proj": (128, 256),
    "model.layers.0.self_attn.v_proj": (128, 256),
    "model.layers.0.self_attn.o_proj": (256, 256),
    "model.layers.0.mlp.gate_proj": (512, 256),
    "model.layers.0.mlp.up_proj": (512, 256),
    "model.layers.0.mlp.down_proj": (256, 512),
}
Q_PARAMS = sum(o * i for o, i in LINEARS.values())  # 589,824
FLOAT_PARAMS = 64 * 256  # embed_tokens and lm_head each, kept F32
FLOAT_BYTES = 2 * FLOAT_PARAMS * 4


def ct_w4a16(o: int, i: int) -> int:  # I32 packed + F32 scales [out, in/128] + I64 weight_shape [2]
    return o * i // 2 + o * (i // 128) * 4 + 16


def ct_w4a16_asym(o: int, i: int) -> int:  # + zero points packed 8 per I32: [out/8, in/128]
    return ct_w4a16(o, i) + (o // 8) * (i // 128) * 4


def ct_w8a8(o: int, i: int) -> int:  # I8 weight + F32 channel scale [out, 1]
    return o * i + o * 4


def ct_fp8(o: int, i: int) -> int:  # F8_E4M3 weight + F32 tensor scale [1] (input_scale is not the weight's)
    return o * i + 4


def ct_nvfp4(o: int, i: int) -> int:  # U8 packed + F8 scale [out, in/16] + F32 global scale [1]
    return o * i // 2 + o * i // 16 + 4


def bnb_int8(o: int, i: int) -> int:  # I8 weight + F32 SCB [out] + U8 weight_format scalar
    return o * i + o * 4 + 1


def gptq(o: int, i: int) -> int:  # qweight I32 [in/8, out] + qzeros [in/128, out/8] + F16 scales + g_idx
    return o * i // 2 + (i // 128) * (o // 8) * 4 + (i // 128) * o * 2 + i * 4


def awq(o: int, i: int) -> int:  # qweight I32 [in, out/8] + qzeros I32 [in/128, out/8] + F16 scales
    return o * i // 2 + (i // 128) * (o // 8) * 4 + (i // 128) * o * 2


CASES = {
    # fixture: (bytes per layer, nominal bits, int8?, float bytes of embed + lm_head)
    "ct_w4a16": (ct_w4a16, 4, False, FLOAT_BYTES),
    "ct_w4a16_asym": (ct_w4a16_asym, 4, False, FLOAT_BYTES),
    "ct_w8a8": (ct_w8a8, 8, True, FLOAT_BYTES),
    "ct_fp8": (ct_fp8, 8, False, FLOAT_BYTES),
    "ct_nvfp4a16": (ct_nvfp4, 4, False, FLOAT_BYTES),
    "bnb_int8": (bnb_int8, 8, True, FLOAT_BYTES),
    "gptq_layout": (gptq, 4, False, FLOAT_BYTES // 2),  # GPTQ/AWQ checkpoints keep float tensors in F16
    "awq_layout": (awq, 4, False, FLOAT_BYTES // 2),
}


def _guard(fixture: str, *extra: str) -> dict:
    rc, result = run_json("guard", "safetensors-dtypes", str(ST / fixture / "model.safetensors"), *extra)
    assert rc == 0, result
    return result


@pytest.mark.parametrize("fixture", sorted(CASES))
def test_exact_coverage_and_bpw(fixture: str) -> None:
    layer_bytes, bits, is_int8, float_bytes = CASES[fixture]
    result = _guard(fixture)
    m = result["metrics"]
    assert result["status"] == "PASS"
    assert result["findings"] == []
    assert (m["weight_ops"], m["quantized_ops"]) == (9, 7)
    assert m["params_total"] == Q_PARAMS + 2 * FLOAT_PARAMS
    assert m["params_quantized"] == Q_PARAMS
    cov = m["coverage"]
    assert cov["ops"]["quantized"] == pytest.approx(7 / 9)
    assert cov["params"]["quantized"] == pytest.approx(Q_PARAMS / (Q_PARAMS + 2 * FLOAT_PARAMS))
    # the embedding lookup counts 0 flops; lm_head counts
    assert cov["flops"]["quantized"] == pytest.approx(Q_PARAMS / (Q_PARAMS + FLOAT_PARAMS))
    assert cov["ops"]["int8"] == pytest.approx(7 / 9 if is_int8 else 0.0)
    assert cov["ops"]["int4"] == pytest.approx(7 / 9 if bits == 4 else 0.0)
    assert cov["ops"]["by_bits"] == pytest.approx({str(bits): 7 / 9, "32" if float_bytes == FLOAT_BYTES
                                                   else "16": 2 / 9})
    q_bytes = sum(layer_bytes(o, i) for o, i in LINEARS.values())
    assert m["bits_per_weight_body"] == pytest.approx(float(Fraction(8 * q_bytes, Q_PARAMS)), abs=1e-12)
    assert m["bits_per_weight"] == pytest.approx(
        float(Fraction(8 * (q_bytes + float_bytes), Q_PARAMS + 2 * FLOAT_PARAMS)), abs=1e-12)
    assert sorted(u["name"] for u in result["unquantized"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    kinds = {u["name"]: u["kind"] for u in result["unquantized"]}
    assert kinds == {"lm_head.weight": "linear", "model.embed_tokens.weight": "embedding"}


def test_ct_w4a16_bpw_matches_the_docs() -> None:
    # docs/formats.md#safetensors-safetensors-dtypes: CT W4A16 g128 with F32 scales = 4.251 on a 512x256 Linear
    assert 8 * ct_w4a16(512, 256) / (512 * 256) == pytest.approx(4.251, abs=5e-4)
    assert 8 * ct_nvfp4(512, 256) / (512 * 256) == pytest.approx(4.500, abs=5e-4)


@pytest.mark.parametrize("fixture", ["ct_w4a16", "gptq_layout", "awq_layout", "bnb_nf4"])
def test_logical_shapes(fixture: str) -> None:
    rc, inv = run_json("inspect", str(ST / fixture / "model.safetensors"), "--format", "json")
    assert rc == 0
    shapes = {layer["name"]: tuple(layer["shape"]) for layer in inv["layers"]}
    for module, shape in LINEARS.items():
        assert shapes[module + ".weight"] == shape, module
    layouts = {layer["detail"]["layout"] for layer in inv["layers"] if layer["quantized"]}
    assert layouts == {{"ct_w4a16": "ct-pack-quantized", "gptq_layout": "gptq", "awq_layout": "awq",
                        "bnb_nf4": "bnb-nf4"}[fixture]}


def test_bnb_nf4_exact() -> None:
    """NF4 with double quantization: packed U8 [n/2, 1], absmax U8 per 64 weights, quant_map F32[16],
    nested_absmax F32 per 256 absmax blocks, nested_quant_map F32[256], and the quant_state JSON blob
    (its length depends on the shape digits, so it is read from the file)."""
    safetensors = pytest.importorskip("safetensors")
    path = ST / "bnb_nf4" / "model.safetensors"
    with safetensors.safe_open(str(path), framework="numpy") as f:
        blob = {k[: -len(".weight.quant_state.bitsandbytes__nf4")]: f.get_slice(k).get_shape()[0]
                for k in f.keys() if k.endswith("bitsandbytes__nf4")}  # noqa: SIM118 (safe_open, not a dict)
    total = 0
    for module, (o, i) in LINEARS.items():
        n = o * i
        total += n // 2 + n // 64 + 64 + -(-(n // 64) // 256) * 4 + 1024 + blob[module]
    result = _guard("bnb_nf4")
    m = result["metrics"]
    assert (m["weight_ops"], m["quantized_ops"]) == (9, 7)
    assert m["coverage"]["ops"]["int4"] == pytest.approx(7 / 9)
    assert m["coverage"]["ops"]["int8"] == 0
    assert m["bits_per_weight_body"] == pytest.approx(8 * total / Q_PARAMS, abs=1e-12)
    gate = 512 * 256
    gate_bytes = gate // 2 + gate // 64 + 64 + 8 * 4 + 1024 + blob["model.layers.0.mlp.gate_proj"]
    assert 8 * gate_bytes / gate == pytest.approx(4.204, abs=5e-4)  # docs/formats.md#safetensors-safetensors-dtypes


def test_plain_f16_all_float() -> None:
    result = _guard("plain_f16")
    m = result["metrics"]
    # tiny Llama vocab 128, hidden 64, intermediate 128, 2 layers: 7 Linears a layer + embed + lm_head
    assert (m["weight_ops"], m["quantized_ops"]) == (16, 0)
    assert m["coverage"]["ops"]["quantized"] == 0
    assert m["bits_per_weight"] == 16
    assert m["unexpected_unquantized"] == 16
    layer = (64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3) * 2
    assert m["params_total"] == layer + 2 * 128 * 64
    assert m["params_stored"] == layer + 2 * 128 * 64 + 2 * (64 * 2) + 64  # plus the RMSNorm weights


def test_expect_unquantized_patterns() -> None:
    path = str(ST / "ct_w4a16" / "model.safetensors")
    rc, result = run_json("guard", "safetensors-dtypes", path, "--require", "unexpected_unquantized<=0")
    assert rc == 1 and result["status"] == "FAIL"
    rc, result = run_json("guard", "safetensors-dtypes", path, "--require", "unexpected_unquantized<=0",
                          "--expect-unquantized", "lm_head*", "--expect-unquantized", "kind:embedding")
    assert rc == 0 and result["status"] == "PASS"
    assert all(u["expected"] for u in result["unquantized"])


def test_require_bound_on_coverage() -> None:
    rc, result = run_json("guard", "safetensors-dtypes", str(ST / "ct_w8a8" / "model.safetensors"),
                          "--require", "coverage.params.int8>=0.94")
    assert rc == 0 and result["status"] == "PASS"
    rc, result = run_json("guard", "safetensors-dtypes", str(ST / "ct_w8a8" / "model.safetensors"),
                          "--require", "coverage.params.int8>=0.95")
    assert rc == 1 and result["status"] == "FAIL"
