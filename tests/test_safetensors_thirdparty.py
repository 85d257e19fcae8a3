"""Third-party safetensors layouts beside MLX: optimum-quanto and HQQ (real exports, recognised and
dequantized as their libraries do), torchao's safetensors form (a real export quantgate does not
decode: ST_UNKNOWN_LAYOUT and the `unknown` share), and packed integer tensors of no known layout
(EXL2-style names, a bare U32 `weight`) never read as weights."""

from __future__ import annotations

import json
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, run_json
from test_safetensors_layouts import write_st

ST = FIXTURES / "safetensors"

# make_quanto_hqq.py's model: the same tiny llama-like block as make_mlx.py; (out, in)
LINEARS = {
    "model.layers.0.self_attn.q_proj": (128, 128),
    "model.layers.0.self_attn.k_proj": (64, 128),
    "model.layers.0.self_attn.v_proj": (64, 128),
    "model.layers.0.self_attn.o_proj": (128, 128),
    "model.layers.0.mlp.gate_proj": (256, 128),
    "model.layers.0.mlp.up_proj": (256, 128),
    "model.layers.0.mlp.down_proj": (128, 256),
}
BODY = sum(o * i for o, i in LINEARS.values())  # 147,456
TABLE = 64 * 128  # embed_tokens and lm_head, F32
ALL = sorted([f"{m}.weight" for m in LINEARS] + ["lm_head.weight", "model.embed_tokens.weight"])


def _guard(path: Path) -> tuple[int, dict]:
    return run_json("guard", "safetensors-dtypes", str(path))


def _layers(path: Path) -> dict[str, dict]:
    rc, inv = run_json("inspect", str(path), "--format", "json")
    assert rc == 0, inv
    return {layer["name"]: layer for layer in inv["layers"]}


def test_quanto_int8() -> None:
    """qint8: `weight._data` I8 [out, in] + `weight._scale` F32 [out, 1]; `_scale` is no layer."""
    path = ST / "quanto_int8" / "model.safetensors"
    rc, result = _guard(path)
    m = result["metrics"]
    assert (rc, result["status"], result["findings"]) == (0, "PASS", [])
    assert (m["weight_ops"], m["quantized_ops"]) == (9, 7)
    assert m["params_total"] == BODY + 2 * TABLE
    assert m["coverage"]["ops"]["int8"] == pytest.approx(7 / 9)
    body = sum(o * i + 4 * o for o, i in LINEARS.values())
    assert m["bits_per_weight_body"] == float(Fraction(8 * body, BODY))
    layers = _layers(path)
    assert sorted(layers) == ALL
    for module, shape in LINEARS.items():
        layer = layers[module + ".weight"]
        assert (tuple(layer["shape"]), layer["bits"], layer["detail"]["layout"]) == (shape, 8, "quanto")


def test_quanto_int4_grouped() -> None:
    """qint4 group 128: `weight._data._data` U8 [out*in/256, 128] + F32 `_scale`, `_shift` [out*in/128, 1]:
    the weight is stored grouped, so its shape is [out*in/128, 128] (params exact); 4 + 2*32/128 = 4.5."""
    path = ST / "quanto_int4" / "model.safetensors"
    rc, result = _guard(path)
    m = result["metrics"]
    assert (rc, result["status"], result["findings"]) == (0, "PASS", [])
    assert (m["weight_ops"], m["quantized_ops"]) == (9, 7)
    assert m["coverage"]["ops"]["int4"] == pytest.approx(7 / 9)
    assert m["params_total"] == BODY + 2 * TABLE
    assert m["bits_per_weight_body"] == 4.5
    layers = _layers(path)
    for module, (o, i) in LINEARS.items():
        layer = layers[module + ".weight"]
        assert (tuple(layer["shape"]), layer["bits"], layer["detail"]["grouped"]) == ((o * i // 128, 128), 4, True)


def test_quanto_int8_dequant_equals_quanto() -> None:
    from quantgate.dequant.safetensors import open_weights

    folder = ST / "quanto_int8"
    ws = open_weights(str(folder / "model.safetensors"))
    assert ws.problems == []
    with np.load(folder / "expected.npz") as data:
        expected = {k: data[k] for k in data.files}
    assert len(expected) == 7
    for name, want in expected.items():  # quanto's own weight.dequantize(): q * scale in float32
        assert np.array_equal(ws.weights[name].load(np.arange(want.shape[0])), want), name


def test_quanto_int4_dequant_is_reported_unsupported() -> None:
    from quantgate.dequant.safetensors import open_weights

    ws = open_weights(str(ST / "quanto_int4" / "model.safetensors"))
    assert sorted(p[1] for p in ws.problems) == sorted(f"{m}.weight" for m in LINEARS)
    assert {p[0] for p in ws.problems} == {"FIDELITY_UNSUPPORTED_ENCODING"}
    assert not any("_scale" in k or "_shift" in k for k in ws.weights)


def test_hqq_4bit() -> None:
    """HQQ 4-bit group 64 (`W_q` U8 [out*in/128, 64] + F32 `scale`, `zero` [out*in/64, 1] + meta
    tensors): logical shapes from the `shape` tensor, bits from `nbits`, 4 + 2*32/64 = 5 bits per
    weight; scale/zero and the meta tensors are no layers."""
    path = ST / "hqq_4bit" / "model.safetensors"
    rc, result = _guard(path)
    m = result["metrics"]
    assert (rc, result["status"], result["findings"]) == (0, "PASS", [])
    assert (m["weight_ops"], m["quantized_ops"], m["unknown_ops"]) == (9, 7, 0)
    assert m["coverage"]["ops"]["int4"] == pytest.approx(7 / 9)
    assert m["params_total"] == BODY + 2 * TABLE
    assert m["bits_per_weight_body"] == 5.0
    assert m["params_stored"] == BODY + 2 * TABLE  # no biases, no norms: the meta tensors are no parameters
    layers = _layers(path)
    assert sorted(layers) == ALL
    for module, shape in LINEARS.items():
        layer = layers[module + ".weight"]
        assert (tuple(layer["shape"]), layer["bits"], layer["detail"]["layout"]) == (shape, 4, "hqq")


def test_hqq_dequant_equals_hqq() -> None:
    from quantgate.dequant.safetensors import open_weights

    folder = ST / "hqq_4bit"
    ws = open_weights(str(folder / "model.safetensors"))
    assert ws.problems == []
    assert sorted(ws.weights) == ALL
    with np.load(folder / "expected.npz") as data:
        expected = {k: data[k] for k in data.files}
    assert len(expected) == 7
    for name, want in expected.items():  # HQQLinear.dequantize(): (q - zero) * scale in float32
        assert np.array_equal(ws.weights[name].load(np.arange(want.shape[0])), want), name


def test_exl2_style_and_bare_packed_weight(tmp_path: Path) -> None:
    """EXL2's tensor names (`q_weight` I32, `q_scale` I32, `q_scale_max` F16, `q_groups` I16, `q_perm`)
    and a U32 `weight` with nothing beside it: unknown layers, one finding per pattern, no I32 read as a
    32-bit weight and no F16 companion read as a float layer."""
    tensors: dict[str, tuple[str, list[int]]] = {}
    for i in range(2):
        p = f"model.layers.{i}.mlp.up_proj"
        tensors.update({f"{p}.q_weight": ("I32", [32, 64]), f"{p}.q_scale": ("I32", [2, 8]),
                        f"{p}.q_scale_max": ("F16", [64]), f"{p}.q_groups": ("I16", [4]),
                        f"{p}.q_perm": ("I16", [128])})
    tensors["model.layers.0.mlp.down_proj.weight"] = ("U32", [64, 16])
    tensors["model.norm.weight"] = ("F16", [64])
    path = write_st(tmp_path / "model.safetensors", tensors)
    rc, result = _guard(path)
    assert (rc, result["status"]) == (0, "WARN")
    found = sorted((f["code"], f["location"].get("tensor")) for f in result["findings"])
    assert found == [("ST_UNKNOWN_LAYOUT", "model.layers.0.mlp.down_proj"),
                     ("ST_UNKNOWN_LAYOUT", "model.layers.0.mlp.up_proj")]
    m = result["metrics"]
    assert (m["weight_ops"], m["unknown_ops"], m["quantized_ops"]) == (3, 3, 0)
    assert m["coverage"]["ops"]["unknown"] == 1.0
    layers = _layers(path)
    assert sorted(layers) == ["model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight",
                              "model.layers.1.mlp.up_proj.weight"]
    assert layers["model.layers.0.mlp.down_proj.weight"]["dtype"] == "unknown(U32)"
    assert layers["model.layers.1.mlp.up_proj.weight"]["shape"] == [32, 64]


def test_lone_int8_and_index_buffers_stay_as_before(tmp_path: Path) -> None:
    """Not every integer tensor is a packed layout: a lone I8 tensor stays an int8 op, an I64 index
    buffer and a [1, n] I32 buffer are parameters, not layers."""
    path = write_st(tmp_path / "model.safetensors", {
        "bert.embeddings.position_ids": ("I64", [1, 512]),
        "bert.embeddings.token_type_ids": ("I32", [1, 512]),
        "experts.w_int8": ("I8", [8, 8]),
    })
    rc, result = _guard(path)
    assert (rc, [f["code"] for f in result["findings"]]) == (0, ["ST_QUANT_SCALE_MISSING"])
    assert (result["metrics"]["weight_ops"], result["metrics"]["unknown_ops"]) == (1, 0)


def test_torchao_int8_is_an_unknown_layout() -> None:
    """torchao's safetensors form (`_weight_qdata` I8 + `_weight_scale` F32 + `_weight_zero_point` I8):
    today read as int8 ops without scales plus float layers made of the scales; now unknown."""
    path = ST / "torchao_int8" / "model.safetensors"
    rc, result = _guard(path)
    m = result["metrics"]
    assert (rc, result["status"]) == (0, "WARN")
    assert [(f["code"], f["message"].split(":")[0]) for f in result["findings"]] == [
        ("ST_UNKNOWN_LAYOUT", "7 module(s) like model.layers.0.mlp.down_proj hold integer tensors in a layout "
         "quantgate does not decode")]
    assert "{_weight_qdata I8, _weight_scale F32, _weight_zero_point I8}" in result["findings"][0]["message"]
    assert (m["weight_ops"], m["quantized_ops"], m["unknown_ops"]) == (9, 0, 7)
    assert m["params_total"] == BODY + 2 * TABLE  # qdata holds one I8 per weight
    assert m["coverage"]["params"]["unknown"] == pytest.approx(BODY / (BODY + 2 * TABLE))
    layers = _layers(path)
    assert sorted(layers) == ALL


def test_torchao_companions_are_no_fidelity_weights() -> None:
    from quantgate.dequant.safetensors import open_weights

    ws = open_weights(str(ST / "torchao_int8" / "model.safetensors"))
    assert sorted(ws.weights) == ["lm_head.weight", "model.embed_tokens.weight"]  # no `_weight_scale` tables
    assert sorted(p[1] for p in ws.problems) == sorted(f"{m}.weight" for m in LINEARS)
    assert {p[0] for p in ws.problems} == {"FIDELITY_UNSUPPORTED_ENCODING"}


def test_marlin_and_exl3_are_unknown(tmp_path: Path) -> None:
    """A GPTQ checkpoint saved in Marlin's format keeps GPTQ's names (`qweight` I32 [in/16, out*2],
    `scales`) over another packing: with config.json's checkpoint_format marlin it is an unknown layout,
    not a misread GPTQ weight. EXL3's `trellis` I16 [in/16, out/16, 16*bits] with `suh`/`svh` likewise."""
    write_st(tmp_path / "model.safetensors", {
        "model.layers.0.mlp.up_proj.qweight": ("I32", [8, 512]), "model.layers.0.mlp.up_proj.scales": ("F16", [1, 256]),
        "model.layers.0.mlp.up_proj.g_idx": ("I32", [128]),
        "model.layers.0.mlp.down_proj.trellis": ("I16", [8, 16, 64]),
        "model.layers.0.mlp.down_proj.suh": ("F16", [128]), "model.layers.0.mlp.down_proj.svh": ("F16", [256]),
    })
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"}}))
    rc, result = _guard(tmp_path / "model.safetensors")
    found = sorted((f["code"], f["location"].get("tensor")) for f in result["findings"])
    assert found == [("ST_UNKNOWN_LAYOUT", "model.layers.0.mlp.down_proj"),
                     ("ST_UNKNOWN_LAYOUT", "model.layers.0.mlp.up_proj")]
    assert (rc, result["metrics"]["weight_ops"], result["metrics"]["unknown_ops"]) == (0, 2, 2)
    from quantgate.dequant.safetensors import open_weights

    ws = open_weights(str(tmp_path / "model.safetensors"))
    assert ws.weights == {}
    assert sorted(p[:2] for p in ws.problems) == [
        ("FIDELITY_UNSUPPORTED_ENCODING", "model.layers.0.mlp.down_proj.weight"),
        ("FIDELITY_UNSUPPORTED_ENCODING", "model.layers.0.mlp.up_proj.weight")]


def test_scale_scan_reads_quanto_and_mlx_scales(tmp_path: Path) -> None:
    """--param scan_scales=1 reads quanto's `weight._scale` and MLX's `scales`; a zeroed quanto scale
    is ST_SCALE_ZERO."""
    for folder, count in (("quanto_int8", 7), ("mlx_4bit", 9)):
        _, result = run_json("guard", "safetensors-dtypes", str(ST / folder / "model.safetensors"),
                             "--param", "scan_scales=1")
        assert (result["metrics"]["scales_scanned"], result["findings"]) == (count, []), folder
    raw = bytearray((ST / "quanto_int8" / "model.safetensors").read_bytes())
    name = "model.layers.0.mlp.up_proj.weight._scale"
    (n,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    raw[8 + n + begin:8 + n + end] = bytes(end - begin)
    (tmp_path / "model.safetensors").write_bytes(bytes(raw))
    _, result = run_json("guard", "safetensors-dtypes", str(tmp_path / "model.safetensors"), "--param", "scan_scales=1")
    assert [(f["code"], f["location"].get("tensor")) for f in result["findings"]] == [("ST_SCALE_ZERO", name)]
