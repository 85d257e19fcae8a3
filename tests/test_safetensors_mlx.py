"""MLX checkpoints (`mlx.nn.quantize`, as mlx-lm saves them): the real exports in
fixtures/safetensors/mlx_4bit and mlx_mixed (made by make_mlx.py with mlx 0.32.4) read with their
logical shapes, bits and bits per weight; config.json `quantization` is cross-checked; the affine
dequantization equals `mx.dequantize`; `"__metadata__": null` is accepted."""

from __future__ import annotations

import json
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, run_json

ST = FIXTURES / "safetensors"
MLX4, MIXED = ST / "mlx_4bit", ST / "mlx_mixed"

# make_mlx.py's tiny llama: vocab 64, hidden 128, intermediate 256, k/v project to 64; (out, in)
LINEARS = {
    "model.layers.0.self_attn.q_proj": (128, 128),
    "model.layers.0.self_attn.k_proj": (64, 128),
    "model.layers.0.self_attn.v_proj": (64, 128),
    "model.layers.0.self_attn.o_proj": (128, 128),
    "model.layers.0.mlp.gate_proj": (256, 128),
    "model.layers.0.mlp.up_proj": (256, 128),
    "model.layers.0.mlp.down_proj": (128, 256),
}
TABLES = {"model.embed_tokens": (64, 128), "lm_head": (64, 128)}
BODY = sum(o * i for o, i in LINEARS.values())  # 147,456
TABLE = 64 * 128


def mlx_bytes(o: int, i: int, bits: int, group: int, scale_bytes: int = 2) -> int:
    """U32 weight [o, i*bits/32] + scales + biases [o, i/group]."""
    return o * i * bits // 8 + 2 * o * (i // group) * scale_bytes


def _guard(folder: Path, guard: str = "safetensors-dtypes") -> tuple[int, dict]:
    return run_json("guard", guard, str(folder / "model.safetensors"))


def _layers(folder: Path) -> dict[str, dict]:
    rc, inv = run_json("inspect", str(folder / "model.safetensors"), "--format", "json")
    assert rc == 0, inv
    return {layer["name"]: layer for layer in inv["layers"]}


def test_mlx_4bit_coverage_and_bpw_exact() -> None:
    rc, result = _guard(MLX4)
    m = result["metrics"]
    assert (rc, result["status"], result["findings"]) == (0, "PASS", [])
    # every Linear and the Embedding once, all 4-bit: scales/biases are no layers
    assert (m["weight_ops"], m["quantized_ops"], m["unknown_ops"]) == (9, 9, 0)
    assert m["params_total"] == m["params_quantized"] == BODY + 2 * TABLE
    for basis in ("ops", "params", "flops"):
        assert m["coverage"][basis]["quantized"] == 1.0
        assert m["coverage"][basis]["int4"] == 1.0
        assert m["coverage"][basis]["by_bits"] == {"4": 1.0}
    # 4 bits + an F16 scale and an F16 bias per 64 weights = 4 + 2*16/64
    assert m["bits_per_weight"] == 4.5
    assert m["bits_per_weight_body"] == 4.5
    assert m["quant_method"] == "mlx"
    assert m["params_stored"] == BODY + 2 * TABLE + 3 * 128  # + the three RMSNorm weights


def test_mlx_logical_shapes_and_no_companion_layers() -> None:
    layers = _layers(MLX4)
    assert sorted(layers) == sorted(f"{m}.weight" for m in (*LINEARS, *TABLES))
    for module, shape in {**LINEARS, **TABLES}.items():
        layer = layers[module + ".weight"]
        assert tuple(layer["shape"]) == shape, module
        assert (layer["bits"], layer["quantized"], layer["dtype"]) == (4, True, "int4(U32)")
        assert layer["detail"]["layout"] == "mlx-affine"
        assert layer["detail"]["group_size"] == 64
        assert layer["weight_bytes"] == mlx_bytes(*shape, 4, 64)
    assert layers["model.embed_tokens.weight"]["kind"] == "embedding"


def test_mlx_mixed_per_layer_bits() -> None:
    """down_proj 8-bit group 32 and lm_head 6-bit group 64 by per-layer entries, the embedding float
    (BF16), the rest 4-bit group 64; BF16 scales and biases."""
    layers = _layers(MIXED)
    want = {m: (4, 64) for m in LINEARS}
    want["model.layers.0.mlp.down_proj"] = (8, 32)
    want["lm_head"] = (6, 64)
    for module, (bits, group) in want.items():
        layer = layers[module + ".weight"]
        shape = {**LINEARS, **TABLES}[module]
        assert (tuple(layer["shape"]), layer["bits"], layer["detail"]["group_size"]) == (shape, bits, group)
        assert layer["weight_bytes"] == mlx_bytes(*shape, bits, group), module
    embed = layers["model.embed_tokens.weight"]
    assert (embed["dtype"], embed["quantized"], tuple(embed["shape"])) == ("BF16", False, (64, 128))
    rc, result = _guard(MIXED)
    m = result["metrics"]
    assert (rc, result["status"], result["findings"]) == (0, "PASS", [])
    assert (m["weight_ops"], m["quantized_ops"]) == (9, 8)
    assert m["coverage"]["ops"]["by_bits"] == pytest.approx({"4": 6 / 9, "6": 1 / 9, "8": 1 / 9, "16": 1 / 9})
    body = sum(mlx_bytes(*s, *want[k]) for k, s in LINEARS.items())
    assert m["bits_per_weight_body"] == float(Fraction(8 * body, BODY))  # (6 x 4.5 and 1 x 9) by params
    total = body + mlx_bytes(64, 128, 6, 64) + TABLE * 2
    assert m["bits_per_weight"] == float(Fraction(8 * total, BODY + 2 * TABLE))
    assert [u["name"] for u in result["unquantized"]] == ["model.embed_tokens.weight"]


def _copy_with_config(tmp_path: Path, src: Path, edit) -> Path:
    dst = tmp_path / src.name
    dst.mkdir()
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_config_bits_disagree_with_tensors(tmp_path: Path) -> None:
    def eight(config: dict) -> None:
        for key in ("quantization", "quantization_config"):
            config[key]["bits"] = 8

    rc, result = _guard(_copy_with_config(tmp_path, MLX4, eight))
    codes = sorted((f["code"], f["location"].get("tensor")) for f in result["findings"])
    assert codes == sorted(("ST_BITS_MISMATCH", f"{m}.weight") for m in (*LINEARS, *TABLES))
    assert (rc, result["status"]) == (1, "FAIL")
    # the tensors still decide: 4 bits, logical shapes from them
    assert result["metrics"]["coverage"]["ops"]["by_bits"] == {"4": 1.0}


def test_config_override_disagrees(tmp_path: Path) -> None:
    def edit(config: dict) -> None:
        for key in ("quantization", "quantization_config"):
            config[key]["lm_head"] = False  # stored quantized all the same
            config[key]["model.layers.0.mlp.down_proj"] = {"group_size": 64, "bits": 8}  # stored 8/32
            config[key]["model.embed_tokens"] = {"group_size": 64, "bits": 4}  # stored float

    _, result = _guard(_copy_with_config(tmp_path, MIXED, edit))
    codes = sorted((f["code"], f["location"].get("tensor")) for f in result["findings"])
    assert codes == [
        ("ST_BITS_MISMATCH", "model.layers.0.mlp.down_proj.weight"),  # 8/32 read at group 64 = 4 bits
        ("ST_LAYER_NOT_QUANTIZED", "model.embed_tokens.weight"),
        ("ST_QUANT_METHOD_MISMATCH", "lm_head.weight"),
    ]


def test_metadata_null_accepted_by_integrity() -> None:
    path = MIXED / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8:8 + n])["__metadata__"] is None  # what mx.save_safetensors wrote
    rc, result = _guard(MIXED, "integrity")
    assert (rc, result["status"], result["findings"]) == (0, "PASS", [])


def _expected(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize(("folder", "eps", "count"), [(MLX4, 2.0**-10, 9), (MIXED, 2.0**-7, 8)])
def test_dequant_equals_mx_dequantize(folder: Path, eps: float, count: int) -> None:
    """quantgate's x = scale*q + bias (float32) against mx.dequantize's output saved beside the fixture
    (computed in the storage dtype, F16 or BF16: equal within one rounding of that dtype)."""
    from quantgate.dequant.safetensors import open_weights

    expected = _expected(folder)
    assert len(expected) == count
    ws = open_weights(str(folder / "model.safetensors"))
    assert ws.problems == []
    for name, want in expected.items():
        ref = ws.weights[name]
        assert ref.quantized and ref.shape == {**LINEARS, **TABLES}[name[: -len(".weight")]], name
        got = ref.load(np.arange(want.shape[0]))
        assert np.abs(got - want).max() <= eps * np.abs(want).max(), name


def test_dequant_against_live_mlx() -> None:
    """Every row of every quantized weight, against mx.dequantize run on float32 scales and biases."""
    mx = pytest.importorskip("mlx.core")
    from quantgate.dequant.safetensors import open_weights

    for folder in (MLX4, MIXED):
        config = json.loads((folder / "config.json").read_text())["quantization"]
        tensors = mx.load(str(folder / "model.safetensors"))
        ws = open_weights(str(folder / "model.safetensors"))
        for key in [k for k in tensors if k.endswith(".scales")]:
            module = key[: -len(".scales")]
            q = config.get(module, config)
            ref = mx.dequantize(tensors[module + ".weight"], tensors[key].astype(mx.float32),
                                tensors[module + ".biases"].astype(mx.float32),
                                group_size=q["group_size"], bits=q["bits"])
            got = ws.weights[module + ".weight"].load()
            np.testing.assert_allclose(got, np.array(ref), rtol=1e-6, atol=1e-6, err_msg=module)


MXFP4 = ST / "mlx_mxfp4"


def test_mlx_mxfp4_layout_and_bpw() -> None:
    """mode mxfp4: U32 E2M1 codes + one U8 E8M0 scale per 32 weights, no biases: 4 + 8/32 = 4.25."""
    rc, result = _guard(MXFP4)
    m = result["metrics"]
    assert (rc, result["status"], result["findings"]) == (0, "PASS", [])
    assert (m["weight_ops"], m["quantized_ops"]) == (9, 9)
    assert m["coverage"]["ops"]["by_bits"] == {"4": 1.0}
    assert m["bits_per_weight"] == 4.25
    layers = _layers(MXFP4)
    for module, shape in {**LINEARS, **TABLES}.items():
        layer = layers[module + ".weight"]
        assert (tuple(layer["shape"]), layer["dtype"], layer["detail"]["layout"]) == (shape, "mxfp4(U32)", "mlx-mxfp4")
        assert layer["weight_bytes"] == shape[0] * shape[1] // 2 + shape[0] * shape[1] // 32


def test_mlx_mxfp4_dequant_equals_mx_dequantize() -> None:
    from quantgate.dequant.safetensors import open_weights

    expected = _expected(MXFP4)
    assert len(expected) == 9
    ws = open_weights(str(MXFP4 / "model.safetensors"))
    assert ws.problems == []
    for name, want in expected.items():  # E2M1 x 2^k: exact in BF16, so equal to the bit
        assert np.array_equal(ws.weights[name].load(np.arange(want.shape[0])), want), name


def test_mlx_config_mode_disagrees(tmp_path: Path) -> None:
    def affine(config: dict) -> None:
        for key in ("quantization", "quantization_config"):
            config[key].update({"mode": "affine", "group_size": 64})

    _, result = _guard(_copy_with_config(tmp_path, MXFP4, affine))
    codes = sorted((f["code"], f["location"].get("tensor")) for f in result["findings"])
    assert codes == sorted(("ST_QUANT_METHOD_MISMATCH", f"{m}.weight") for m in (*LINEARS, *TABLES))
    assert "stored as mlx-mxfp4 but config.json says mode=affine" in result["findings"][0]["message"]


def test_mlx_without_config(tmp_path: Path) -> None:
    """No config.json: the group size is mlx's default 64, so the mixed model's 8-bit group-32 down_proj
    (64 words over 8 groups) reads as 4-bit group 64 over 512 inputs; the layers say the bits were
    assumed and ST_NO_QUANT_CONFIG says why."""
    shutil.copy(MIXED / "model.safetensors", tmp_path / "model.safetensors")
    rc, inv = run_json("inspect", str(tmp_path / "model.safetensors"), "--format", "json")
    assert rc == 0
    layers = {layer["name"]: layer for layer in inv["layers"]}
    down = layers["model.layers.0.mlp.down_proj.weight"]
    assert (tuple(down["shape"]), down["bits"], down["detail"]["bits_assumed"]) == ((128, 512), 4, True)
    _, result = run_json("guard", "safetensors-dtypes", str(tmp_path / "model.safetensors"))
    assert [f["code"] for f in result["findings"]] == ["ST_NO_QUANT_CONFIG"]


def test_mlx_switch_experts_3d(tmp_path: Path) -> None:
    """mlx-lm's SwitchGLU expert banks: U32 [experts, out, in*bits/32] with scales/biases [experts, out,
    groups] read as one [experts, out, in] layer and dequantize as mx.dequantize does (live mlx)."""
    mx = pytest.importorskip("mlx.core")
    from quantgate.dequant.safetensors import open_weights
    from quantgate.formats.safetensors import reader as st

    mx.random.seed(0)
    q, s, b = mx.quantize(mx.random.normal((4, 32, 128)).astype(mx.float16), group_size=64, bits=4)
    name = "model.layers.0.mlp.switch_mlp.up_proj"
    path = str(tmp_path / "model.safetensors")
    mx.save_safetensors(path, {f"{name}.weight": q, f"{name}.scales": s, f"{name}.biases": b})
    (layer,) = st.read(path).layers
    assert (layer.name, layer.shape, layer.bits, layer.params) == (f"{name}.weight", (4, 32, 128), 4, 16384)
    assert layer.weight_bytes == 4 * 32 * 128 // 2 + 2 * 4 * 32 * 2 * 2
    ref = open_weights(path).weights[f"{name}.weight"]
    want = np.array(mx.dequantize(q, s.astype(mx.float32), b.astype(mx.float32), group_size=64, bits=4))
    np.testing.assert_allclose(ref.load().reshape(ref.shape), want, rtol=1e-6, atol=1e-6)
