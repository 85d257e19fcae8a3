"""Layout rules on small crafted headers (zero-filled data): companions, kinds, loose tensors, MXFP4
blocks, and the layout findings the real fixtures cannot show. Layout tests, not coverage claims."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as hs

from quantgate.formats.safetensors import layouts
from quantgate.formats.safetensors import reader as st

BITS = st.DTYPE_BITS


def write_st(path: Path, tensors: dict[str, tuple[str, list[int]]], blobs: dict[str, bytes] | None = None,
             extra: dict[str, dict] | None = None) -> Path:
    """A valid, contiguous safetensors file; `blobs` fill chosen tensors, the rest is zeros."""
    header: dict[str, object] = {}
    body = b""
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = n * BITS[dtype] // 8
        data = (blobs or {}).get(name, bytes(size))
        assert len(data) == size, name
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + size]}
        if extra and name in extra:
            header[name].update(extra[name])
        body += data
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def layers_of(path: Path) -> dict[str, dict]:
    inv = st.read(str(path))
    return {layer.name: layer.to_dict() for layer in inv.layers}


def codes_of(path: Path) -> list[tuple[str, str | None]]:
    inv = st.read(str(path))
    # ST_NO_QUANT_CONFIG (info) is expected here: these files have no config.json
    found = inv.structural_findings + inv.semantic_findings
    return [(f.code, f.tensor) for f in found if f.severity != "info"]


def test_kinds_and_loose_tensors(tmp_path: Path) -> None:
    p = write_st(tmp_path / "m.safetensors", {
        "transformer.wte.weight": ("F16", [32, 8]),
        "transformer.wpe.weight": ("F16", [16, 8]),
        "encoder.conv1.weight": ("F16", [8, 4, 3]),
        "vision.patch.weight": ("F16", [8, 3, 2, 2]),
        "embed_out.weight": ("F16", [32, 8]),
        "mlp.experts.down_proj": ("BF16", [2, 8, 8]),  # a bare expert bank: an op
        "mlp.experts.down_proj_bias": ("BF16", [2, 8]),  # a bias, not an op
        "embeddings.position_ids": ("I64", [1, 16]),  # an index buffer, not an op
        "ln.weight": ("F32", [8]),
    })
    layers = layers_of(p)
    assert {n: v["kind"] for n, v in layers.items()} == {
        "transformer.wte.weight": "embedding",
        "transformer.wpe.weight": "embedding",
        "encoder.conv1.weight": "conv",
        "vision.patch.weight": "conv",
        "embed_out.weight": "linear",
        "mlp.experts.down_proj": "linear",
    }
    inv = st.read(str(p))
    assert inv.params_stored == 32 * 8 + 16 * 8 + 8 * 4 * 3 + 8 * 3 * 4 + 32 * 8 + 128 + 16 + 16 + 8
    assert inv.facts["tensors"] == 9 and inv.facts["dtypes"] == {"BF16": 2, "F16": 5, "F32": 1, "I64": 1}


def test_mxfp4_blocks(tmp_path: Path) -> None:
    p = write_st(tmp_path / "m.safetensors", {
        "model.layers.0.mlp.experts.gate_up_proj_blocks": ("U8", [4, 64, 2, 16]),
        "model.layers.0.mlp.experts.gate_up_proj_scales": ("U8", [4, 64, 2]),
    })
    (layer,) = layers_of(p).values()
    assert layer["name"] == "model.layers.0.mlp.experts.gate_up_proj"
    assert layer["shape"] == [4, 64, 64] and layer["bits"] == 4 and layer["quantized"]
    assert layer["bits_per_weight"] == 4.25  # 4 + 8/32 for the e8m0 scale per 32 values


def test_int8_and_fp8_without_scale_warn(tmp_path: Path) -> None:
    p = write_st(tmp_path / "m.safetensors", {"a.weight": ("I8", [4, 4]), "b.weight": ("F8_E4M3", [4, 4]),
                                              "c.weight": ("I8", [4, 4]), "c.weight_scale": ("F32", [4, 1])})
    assert codes_of(p) == [("ST_QUANT_SCALE_MISSING", "a.weight"), ("ST_QUANT_SCALE_MISSING", "b.weight")]
    layers = layers_of(p)
    assert all(v["quantized"] for v in layers.values())
    assert layers["c.weight"]["weight_bytes"] == 16 + 16


def test_orphan_companion(tmp_path: Path) -> None:
    p = write_st(tmp_path / "m.safetensors", {"fc.scales": ("F16", [2, 8]), "fc2.weight": ("F16", [8, 8])})
    assert codes_of(p) == [("ST_ORPHAN_COMPANION", "fc.scales")]
    assert list(layers_of(p)) == ["fc2.weight"]  # the orphan is not an op


def test_gptq_without_scales_and_bad_qzeros(tmp_path: Path) -> None:
    p = write_st(tmp_path / "m.safetensors", {
        "a.qweight": ("I32", [32, 64]), "a.qzeros": ("I32", [2, 8]), "a.g_idx": ("I32", [256]),
        "b.qweight": ("I32", [32, 64]), "b.qzeros": ("I32", [2, 4]), "b.scales": ("F16", [2, 64]),
        "b.g_idx": ("I32", [256]),
    })
    assert codes_of(p) == [("ST_COMPANION_MISSING", "a.weight"), ("ST_COMPANION_SHAPE_MISMATCH", "b.qzeros")]
    layers = layers_of(p)
    assert layers["a.weight"]["shape"] == [64, 256] and layers["a.weight"]["detail"]["layout"] == "gptq"


def test_gptq_bits_from_g_idx(tmp_path: Path) -> None:
    # 3-bit GPTQ: qweight rows = in * 3 / 32 = 24 for in = 256; g_idx tells the input size
    p = write_st(tmp_path / "m.safetensors", {
        "a.qweight": ("I32", [24, 64]), "a.qzeros": ("I32", [2, 6]), "a.scales": ("F16", [2, 64]),
        "a.g_idx": ("I32", [256]),
    })
    (layer,) = layers_of(p).values()
    assert layer["bits"] == 3 and layer["shape"] == [64, 256]
    assert codes_of(p) == []


def test_awq_told_from_gptq_by_packed_dim(tmp_path: Path) -> None:
    p = write_st(tmp_path / "m.safetensors", {
        "a.qweight": ("I32", [256, 8]), "a.qzeros": ("I32", [2, 8]), "a.scales": ("F16", [2, 64]),
    })
    (layer,) = layers_of(p).values()
    assert layer["detail"]["layout"] == "awq" and layer["shape"] == [64, 256] and layer["bits"] == 4
    assert codes_of(p) == []


def test_unknown_entry_field_warns(tmp_path: Path) -> None:
    p = write_st(tmp_path / "m.safetensors", {"a.weight": ("F32", [2, 2])}, extra={"a.weight": {"note": "x"}})
    inv = st.read(str(p))
    found = [(f.code, f.severity) for f in inv.structural_findings]
    assert found == [("ST_ENTRY_UNKNOWN_FIELD", "warning")]
    assert inv.structurally_sound


def test_bnb_absmax_count_mismatch(tmp_path: Path) -> None:
    state = json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [16, 16]}).encode()
    p = write_st(tmp_path / "m.safetensors", {
        "fc.weight": ("U8", [128, 1]),
        "fc.weight.absmax": ("F32", [3]),  # 256 weights in blocks of 64 need 4
        "fc.weight.quant_map": ("F32", [16]),
        "fc.weight.quant_state.bitsandbytes__nf4": ("U8", [len(state)]),
    }, blobs={"fc.weight.quant_state.bitsandbytes__nf4": state})
    assert codes_of(p) == [("ST_BNB_SHAPE_MISMATCH", "fc.weight.absmax")]
    (layer,) = layers_of(p).values()
    assert layer["shape"] == [16, 16] and layer["bits"] == 4


def test_bnb_4bit_without_quant_state(tmp_path: Path) -> None:
    p = write_st(tmp_path / "m.safetensors",
                 {"fc.weight": ("U8", [128, 1]), "fc.weight.absmax": ("F32", [4])})
    assert codes_of(p) == [("ST_COMPANION_MISSING", "fc.weight")]


def test_fine_grained_fp8_with_scale_inv(tmp_path: Path) -> None:
    """DeepSeek-V3 style: F8_E4M3 weights with block scales `weight_scale_inv` [out/128, in/128]."""
    p = write_st(tmp_path / "model.safetensors", {
        "model.layers.0.mlp.up_proj.weight": ("F8_E4M3", [256, 256]),
        "model.layers.0.mlp.up_proj.weight_scale_inv": ("F32", [2, 2]),
        "lm_head.weight": ("BF16", [64, 256]),
    })
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}))
    assert codes_of(p) == []
    layer = layers_of(p)["model.layers.0.mlp.up_proj.weight"]
    assert layer["quantized"] and layer["bits"] == 8
    assert layer["weight_bytes"] == 256 * 256 + 16


def test_bnb_4bit_in_bf16_storage(tmp_path: Path) -> None:
    """bnb_4bit_quant_storage=bfloat16: the same nibbles in a BF16 [n/4, 1] tensor."""
    state = json.dumps({"quant_type": "nf4", "blocksize": 64, "shape": [16, 16]}).encode()
    p = write_st(tmp_path / "m.safetensors", {
        "fc.weight": ("BF16", [64, 1]),
        "fc.weight.absmax": ("F32", [4]),
        "fc.weight.quant_map": ("F32", [16]),
        "fc.weight.quant_state.bitsandbytes__nf4": ("U8", [len(state)]),
    }, blobs={"fc.weight.quant_state.bitsandbytes__nf4": state})
    assert codes_of(p) == []
    (layer,) = layers_of(p).values()
    assert layer["shape"] == [16, 16] and layer["bits"] == 4 and layer["quantized"]


FIXTURES_ST = Path(__file__).resolve().parent.parent / "fixtures" / "safetensors"


def _reordered(src: Path, dst: Path, order: str) -> Path:
    """A copy of a real checkpoint's folder whose header lists the same tensors (same bytes) in
    another order: reversed, or each module's companions before its weight."""
    import shutil

    shutil.copytree(src.parent, dst)
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    names = list(header)
    names = names[::-1] if order == "reversed" else sorted(names, key=lambda k: (k.endswith(".weight"), k))
    doc = ({"__metadata__": meta} if meta is not None else {}) | {k: header[k] for k in names}
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    out = dst / src.name
    out.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return out


def test_header_order_does_not_change_layers(tmp_path: Path) -> None:
    """Tensors are grouped by module wherever the header lists them: the weight before or after its
    companions (bnb SCB, GPTQ qzeros/scales, compressed-tensors scales...), in any order."""
    for name in ("bnb_int8", "bnb_nf4", "gptq_layout", "awq_layout", "ct_w4a16", "ct_fp8", "plain_f16"):
        src = FIXTURES_ST / name / "model.safetensors"
        inv = st.read(str(src))
        assert inv.layers, name
        for order in ("reversed", "companions-first"):
            moved = st.read(str(_reordered(src, tmp_path / f"{name}-{order}", order)))
            assert [x.to_dict() for x in moved.layers] == [x.to_dict() for x in inv.layers], (name, order)
            assert moved.params_stored == inv.params_stored
            assert sorted(f.code for f in moved.semantic_findings) == sorted(f.code for f in inv.semantic_findings)


def test_layer_order_is_file_order_of_any_of_its_tensors(tmp_path: Path) -> None:
    """A layer sits where the first byte of any of its tensors does, whichever the header lists first."""
    (tmp_path / "src").mkdir()
    src = write_st(tmp_path / "src" / "model.safetensors", {  # data order: a's weight first, b between
        "a.weight": ("I8", [4, 4]), "b.SCB": ("F32", [4]), "b.weight": ("I8", [4, 4]), "a.SCB": ("F32", [4]),
        "c": ("F16", [4, 4]), "c.weight": ("F16", [4, 4]),  # a loose tensor named as a module: they share
    })                                                       # its first byte, the module's layer first
    for order in ("reversed", "companions-first"):
        inv = st.read(str(_reordered(src, tmp_path / order, order)))
        assert [(x.name, x.position) for x in inv.layers] == [
            ("a.weight", 0), ("b.weight", 1), ("c.weight", 2), ("c", 3)], order


def test_body_bits_leave_out_embeddings_and_heads_by_name_component(tmp_path: Path) -> None:
    """bits_per_weight_body leaves out the embeddings and the output head (`lm_head`, `embed_out` as a
    name component), not a layer whose name merely contains those letters."""
    from conftest import run_json

    p = write_st(tmp_path / "m.safetensors", {
        "model.embed_tokens.weight": ("F32", [4, 4]),
        "model.lm_head_proj.weight": ("F16", [4, 4]),  # 32 bytes, 16 params: body
        "mlp.weight": ("I8", [8, 8]), "mlp.weight_scale": ("F32", [8]),  # 64 + 32 bytes, 64 params: body
        "lm_head.weight": ("F32", [4, 4]),
        "gpt_neox.embed_out.weight": ("F32", [4, 4]),
    })
    code, result = run_json("guard", "safetensors-dtypes", str(p))
    assert code == 0, result
    assert result["metrics"]["bits_per_weight_body"] == 8 * (32 + 96) / (16 + 64)


# --- the per-tensor shortcuts, against the per-name rules they stand for --------------------------

# (suffix, dtype, shape): a float or int8 weight, its int8 scale, a bias, a norm, a bare parameter
_ROLES = [(".weight", "F16", [4, 4]), (".weight", "I8", [4, 4]), (".SCB", "F32", [4]), (".bias", "F16", [4]),
          (".weight", "F32", [4]), ("", "F16", [4, 4])]


@given(hs.data())
@settings(max_examples=150, deadline=None)
def test_layers_group_by_module_in_any_header_and_data_order(tmp_path_factory, data) -> None:
    """Random modules of weights, companions, biases and loose tensors named like modules, their data and
    header in independent random orders: every 2-D weight is a layer, int8 exactly when it is I8 with its
    SCB beside it, numbered by the first byte of any tensor of its module (a loose tensor named like the
    module shares it, after the module's layer); a bare 2-D parameter is a layer of its own."""
    modules = data.draw(hs.lists(hs.sampled_from(["a", "b.c", "d.weight", "e"]), min_size=1, max_size=4, unique=True))
    tensors: dict[str, tuple[str, list[int]]] = {}
    for m in modules:
        for suffix, dtype, shape in data.draw(hs.lists(hs.sampled_from(_ROLES), min_size=1, max_size=3,
                                                       unique_by=lambda r: r[0])):
            tensors[m + suffix] = (dtype, shape)
    names = data.draw(hs.permutations(list(tensors)))  # data order
    path = write_st(tmp_path_factory.mktemp("st") / "m.safetensors", {n: tensors[n] for n in names})
    header_order = data.draw(hs.permutations(names))
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    text = json.dumps({k: header[k] for k in header_order}).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])

    begin = {k: header[k]["data_offsets"][0] for k in header}
    role = {k: layouts.split_name(k) for k in tensors}

    def first_byte(key: str) -> int:
        """Of the tensors of module `key` and the loose tensor named `key`: one place in the file."""
        return min(begin[k] for k, (module, r) in role.items() if (module == key if r else k == key))

    expected = []  # (first byte, loose?, name, int8?)
    for name, (dtype, shape) in tensors.items():
        module, r = role[name]
        if r == "weight" and len(shape) == 2:
            expected.append((first_byte(module), 0, name, dtype == "I8"))
        elif r is None and len(shape) == 2:
            expected.append((first_byte(name), 1, name, False))
    expected.sort()
    inv = st.read(str(path))
    assert [(x.name, x.position, x.quantized) for x in inv.layers] == [
        (name, i, int8) for i, (_, _, name, int8) in enumerate(expected)]
    # a companion beside its weight encodes that weight: not a parameter of its own
    companions = {k for k, (module, r) in role.items() if r not in (None, "weight") and module + ".weight" in tensors}
    assert inv.params_stored == sum(math.prod(shape) for k, (_, shape) in tensors.items() if k not in companions)
    orphans = sorted(f.tensor for f in inv.semantic_findings if f.code == "ST_ORPHAN_COMPANION")
    assert orphans == sorted(k for k in tensors if k.endswith(".SCB") and k[:-4] + ".weight" not in tensors)
