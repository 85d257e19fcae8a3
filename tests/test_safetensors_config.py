"""config.json quantization_config against the stored layouts, and the sharded index against its
shards. Each case copies a committed fixture into a temporary folder and edits one thing."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURES, run_json

ST = FIXTURES / "safetensors"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(ST / name, dst)
    return dst


def edit_config(folder: Path, change) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg["quantization_config"])
    (folder / "config.json").write_text(json.dumps(cfg))


def guard_in_process(guard_id: str, path: Path) -> tuple[int, dict[str, Any]]:
    """What `quantgate guard ID PATH` prints and exits with, without a subprocess (the CLI path is
    exercised by the tests marked `cli=True` and by test_safetensors_structure)."""
    from quantgate.formats.sniff import sniff
    from quantgate.guards import get_guard
    from quantgate.guards.base import GuardConfig, GuardContext, run_guard

    ctx = GuardContext(str(path.resolve()), sniff(path), path.stat().st_size)
    result = run_guard(get_guard(guard_id), ctx, GuardConfig(timeout_s=300.0)).to_dict()
    return {"PASS": 0, "WARN": 0, "SKIP": 0, "FAIL": 1, "ERROR": 2}[result["status"]], result


def dtypes_guard(folder: Path, file: str = "model.safetensors",
                 cli: bool = False) -> tuple[int, dict[str, Any]]:
    if cli:
        return run_json("guard", "safetensors-dtypes", str(folder / file))
    return guard_in_process("safetensors-dtypes", folder / file)


def codes(result: dict[str, Any]) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {}
    for f in result["findings"]:
        out.setdefault(f["code"], []).append(f["location"].get("tensor"))
    return out


def test_ignored_layer_stored_quantized(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    edit_config(d, lambda q: q["ignore"].append("model.layers.0.mlp.down_proj"))
    rc, result = dtypes_guard(d, cli=True)
    assert rc == 1 and result["status"] == "FAIL"
    assert codes(result) == {"ST_IGNORED_LAYER_QUANTIZED": ["model.layers.0.mlp.down_proj.weight"]}


def test_ct_regex_ignore(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    edit_config(d, lambda q: q.update(ignore=["lm_head", "re:.*self_attn.*"]))
    _, result = dtypes_guard(d)
    assert sorted(codes(result)["ST_IGNORED_LAYER_QUANTIZED"]) == [
        f"model.layers.0.self_attn.{p}_proj.weight" for p in "koqv"]


def test_hostile_regex_is_not_evaluated(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    edit_config(d, lambda q: q["ignore"].append("re:(a|aa)+(.*)*$"))
    rc, result = dtypes_guard(d)
    assert rc == 0 and result["findings"] == [] and result["duration_s"] < 5


def test_float_layer_not_in_ignore_list(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    edit_config(d, lambda q: q.update(ignore=[]))
    rc, result = dtypes_guard(d)
    assert rc == 1
    # lm_head is a Linear target once it leaves the ignore list; the embedding is never a target
    assert codes(result) == {"ST_LAYER_NOT_QUANTIZED": ["lm_head.weight"]}


def test_group_size_mismatch(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    edit_config(d, lambda q: q["config_groups"]["group_0"]["weights"].update(group_size=64))
    rc, result = dtypes_guard(d)
    assert rc == 1
    assert list(codes(result)) == ["ST_GROUP_SIZE_MISMATCH"]
    assert len(codes(result)["ST_GROUP_SIZE_MISMATCH"]) == 7
    assert "needs [256, 4]" in next(f["message"] for f in result["findings"] if "q_proj" in f["message"])


def test_ct_bits_mismatch(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    edit_config(d, lambda q: q["config_groups"]["group_0"]["weights"].update(num_bits=8))
    rc, result = dtypes_guard(d)
    assert rc == 1
    assert list(codes(result)) == ["ST_BITS_MISMATCH"] and len(codes(result)["ST_BITS_MISMATCH"]) == 7


def test_ct_weight_shape_tensor_disagrees(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    begin, _ = header["model.layers.0.self_attn.q_proj.weight_shape"]["data_offsets"]
    struct.pack_into("<qq", data, 8 + n + begin, 256, 300)  # no whole bit width packs 300 into 32 words
    path.write_bytes(bytes(data))
    rc, result = dtypes_guard(d)
    assert rc == 1
    assert codes(result) == {"ST_WEIGHT_SHAPE_MISMATCH": ["model.layers.0.self_attn.q_proj.weight"]}
    struct.pack_into("<qq", data, 8 + n + begin, 256, 512)  # 16 per int32: 2-bit, but config says 4
    path.write_bytes(bytes(data))
    rc, result = dtypes_guard(d)
    assert "ST_BITS_MISMATCH" in codes(result)
    bits = next(f for f in result["findings"] if f["code"] == "ST_BITS_MISMATCH")
    assert "imply 2 bits but config.json says 4" in bits["message"]


def test_ct_config_groups_by_target(tmp_path: Path) -> None:
    """Two groups: the MLP at 4 bits by regex, every other Linear at 8 bits by class. The file stores
    all seven at 4 bits, so exactly the four attention projections disagree."""
    d = copy_fixture("ct_w4a16", tmp_path)

    def two_groups(q: dict) -> None:
        g0 = q["config_groups"]["group_0"]
        g1 = json.loads(json.dumps(g0))
        g0["targets"] = ["re:.*mlp.*"]
        g1["targets"] = ["Linear"]
        g1["weights"]["num_bits"] = 8
        q["config_groups"]["group_1"] = g1

    edit_config(d, two_groups)
    _, result = dtypes_guard(d)
    assert sorted(codes(result)["ST_BITS_MISMATCH"]) == [
        f"model.layers.0.self_attn.{p}_proj.weight" for p in "koqv"]
    assert list(codes(result)) == ["ST_BITS_MISMATCH"]


def test_autogptq_quantize_config_json(tmp_path: Path) -> None:
    d = copy_fixture("gptq_layout", tmp_path)
    (d / "config.json").unlink()
    (d / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 64, "desc_act": False}))
    rc, result = dtypes_guard(d)
    assert rc == 1 and list(codes(result)) == ["ST_GROUP_SIZE_MISMATCH"]


def test_gptq_lm_head_opt_in(tmp_path: Path) -> None:
    d = copy_fixture("gptq_layout", tmp_path)
    edit_config(d, lambda q: q.update(lm_head=True))
    _, result = dtypes_guard(d)
    assert codes(result) == {"ST_LAYER_NOT_QUANTIZED": ["lm_head.weight"]}


def test_unchecked_method_is_info(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    edit_config(d, lambda q: q.update(quant_method="hqq"))
    rc, result = dtypes_guard(d)
    assert rc == 0 and result["status"] == "PASS"
    assert codes(result) == {"ST_QUANT_METHOD_UNCHECKED": [None]}


def test_gptq_config_over_awq_layout(tmp_path: Path) -> None:
    d = copy_fixture("awq_layout", tmp_path)
    edit_config(d, lambda q: q.update(quant_method="gptq"))
    rc, result = dtypes_guard(d, cli=True)
    assert rc == 1
    assert list(codes(result)) == ["ST_QUANT_METHOD_MISMATCH"]
    assert len(codes(result)["ST_QUANT_METHOD_MISMATCH"]) == 7


def test_awq_config_over_gptq_layout(tmp_path: Path) -> None:
    d = copy_fixture("gptq_layout", tmp_path)
    edit_config(d, lambda q: q.update(quant_method="awq"))
    _, result = dtypes_guard(d)
    assert list(codes(result)) == ["ST_QUANT_METHOD_MISMATCH"]


def test_gptq_bits_and_group_mismatch(tmp_path: Path) -> None:
    d = copy_fixture("gptq_layout", tmp_path)
    edit_config(d, lambda q: q.update(bits=8, group_size=64))
    rc, result = dtypes_guard(d)
    assert rc == 1
    found = codes(result)
    assert set(found) == {"ST_BITS_MISMATCH", "ST_GROUP_SIZE_MISMATCH"}
    assert len(found["ST_BITS_MISMATCH"]) == 7 and len(found["ST_GROUP_SIZE_MISMATCH"]) == 7


def test_bnb_skip_modules(tmp_path: Path) -> None:
    d = copy_fixture("bnb_int8", tmp_path)
    edit_config(d, lambda q: q.update(llm_int8_skip_modules=["q_proj"]))
    _, result = dtypes_guard(d)
    assert codes(result) == {"ST_IGNORED_LAYER_QUANTIZED": ["model.layers.0.self_attn.q_proj.weight"]}


def test_bnb_config_says_4bit_over_int8(tmp_path: Path) -> None:
    d = copy_fixture("bnb_int8", tmp_path)
    edit_config(d, lambda q: q.update(load_in_8bit=False, load_in_4bit=True))
    _, result = dtypes_guard(d)
    assert list(codes(result)) == ["ST_QUANT_METHOD_MISMATCH"]


def test_bnb_quant_state_corrupt(tmp_path: Path) -> None:
    d = copy_fixture("bnb_nf4", tmp_path)
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    key = "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"
    begin, end = header[key]["data_offsets"]
    data[8 + n + begin : 8 + n + end] = b"\xff" * (end - begin)
    path.write_bytes(bytes(data))
    rc, result = dtypes_guard(d)
    assert rc == 1
    assert codes(result) == {"ST_BNB_QUANT_STATE_INVALID": [key]}


def test_bnb_quant_state_shape_mismatch(tmp_path: Path) -> None:
    d = copy_fixture("bnb_nf4", tmp_path)
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    key = "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"
    begin, end = header[key]["data_offsets"]
    blob = bytes(data[8 + n + begin : 8 + n + end])
    assert b"[512, 256]" in blob
    data[8 + n + begin : 8 + n + end] = blob.replace(b"[512, 256]", b"[256, 512]")
    path.write_bytes(bytes(data))
    _, result = dtypes_guard(d)
    assert codes(result) == {}  # same element count: shape is plausible, only its order changed
    data[8 + n + begin : 8 + n + end] = blob.replace(b"[512, 256]", b"[512, 128]")
    path.write_bytes(bytes(data))
    _, result = dtypes_guard(d)
    assert codes(result) == {"ST_BNB_SHAPE_MISMATCH": ["model.layers.0.mlp.up_proj.weight"]}


def test_no_config_beside_packed_weights(tmp_path: Path) -> None:
    d = copy_fixture("gptq_layout", tmp_path)
    (d / "config.json").unlink()
    rc, result = dtypes_guard(d)
    assert rc == 0 and result["status"] == "PASS"
    assert codes(result) == {"ST_NO_QUANT_CONFIG": [None]}
    assert result["metrics"]["quantized_ops"] == 7


def test_unreadable_config_warns(tmp_path: Path) -> None:
    d = copy_fixture("ct_w4a16", tmp_path)
    (d / "config.json").write_text("{not json")
    rc, result = dtypes_guard(d)
    assert rc == 0 and result["status"] == "WARN"
    assert codes(result) == {"ST_CONFIG_INVALID": [None]}


# --- the sharded index ---------------------------------------------------------------------------

SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]


def integrity(folder: Path, shard: str, cli: bool = False) -> tuple[int, dict[str, Any]]:
    if cli:
        return run_json("guard", "integrity", str(folder / shard))
    return guard_in_process("integrity", folder / shard)


def edit_index(folder: Path, change) -> None:
    path = folder / "model.safetensors.index.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_sharded_checkpoint_is_clean() -> None:
    for shard in SHARDS:
        rc, result = integrity(ST / "sharded", shard)
        assert rc == 0 and result["findings"] == [], shard
    rc, inv = run_json("inspect", str(ST / "sharded" / SHARDS[0]), "--format", "json")
    assert inv["facts"]["index"] == "model.safetensors.index.json"
    assert inv["facts"]["shards"] == 4


def test_index_shard_missing(tmp_path: Path) -> None:
    d = copy_fixture("sharded", tmp_path)
    (d / SHARDS[3]).unlink()
    rc, result = integrity(d, SHARDS[0], cli=True)
    assert rc == 1
    assert codes(result) == {"ST_INDEX_SHARD_MISSING": [None]}
    assert SHARDS[3] in result["findings"][0]["message"]
    rc, result = integrity(d, SHARDS[1])  # reported once, by the first shard
    assert rc == 0 and result["findings"] == []


def test_index_tensor_listed_but_absent(tmp_path: Path) -> None:
    d = copy_fixture("sharded", tmp_path)
    edit_index(d, lambda doc: doc["weight_map"].update({"model.layers.9.mlp.up_proj.weight": SHARDS[1]}))
    rc, result = integrity(d, SHARDS[1])
    assert rc == 1
    assert codes(result) == {"ST_INDEX_TENSOR_MISSING": ["model.layers.9.mlp.up_proj.weight"]}


def test_index_tensor_present_but_unlisted(tmp_path: Path) -> None:
    d = copy_fixture("sharded", tmp_path)
    edit_index(d, lambda doc: doc["weight_map"].pop("lm_head.weight"))
    index = json.loads((ST / "sharded" / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["lm_head.weight"]
    rc, result = integrity(d, shard)
    assert rc == 1
    assert codes(result) == {"ST_INDEX_TENSOR_UNLISTED": ["lm_head.weight"]}


def test_index_maps_tensor_to_wrong_shard(tmp_path: Path) -> None:
    d = copy_fixture("sharded", tmp_path)
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    name = next(k for k, v in wm.items() if v == SHARDS[2])
    edit_index(d, lambda doc: doc["weight_map"].update({name: SHARDS[1]}))
    _, r2 = integrity(d, SHARDS[1])
    _, r3 = integrity(d, SHARDS[2])
    assert codes(r2) == {"ST_INDEX_TENSOR_MISSING": [name]}
    assert codes(r3) == {"ST_INDEX_TENSOR_UNLISTED": [name]}


def test_index_total_size_mismatch_warns(tmp_path: Path) -> None:
    d = copy_fixture("sharded", tmp_path)
    edit_index(d, lambda doc: doc["metadata"].update(total_size=doc["metadata"]["total_size"] + 2))
    rc, result = integrity(d, SHARDS[0])
    assert rc == 0 and result["status"] == "WARN"
    assert codes(result) == {"ST_INDEX_TOTAL_SIZE_MISMATCH": [None]}


def test_index_shard_path_escapes(tmp_path: Path) -> None:
    d = copy_fixture("sharded", tmp_path)
    edit_index(d, lambda doc: doc["weight_map"].update({"extra.weight": "../elsewhere.safetensors"}))
    rc, result = integrity(d, SHARDS[0])
    assert rc == 1
    assert codes(result) == {"ST_INDEX_SHARD_PATH_INVALID": [None]}


def test_index_invalid_json(tmp_path: Path) -> None:
    d = copy_fixture("sharded", tmp_path)
    (d / "model.safetensors.index.json").write_text("{")
    rc, result = integrity(d, SHARDS[0])
    assert rc == 1 and codes(result) == {"ST_INDEX_INVALID": [None]}


@pytest.mark.parametrize("fixture", ["ct_w4a16", "bnb_nf4"])
def test_gate_run_on_folder(fixture: str) -> None:
    rc, report = run_json("run", str(ST / fixture), "--format", "json", "--no-github")
    assert rc == 0, report
    statuses = {r["guard"]: r["status"] for r in report["results"]}
    assert statuses["integrity"] == "PASS" and statuses["safetensors-dtypes"] == "PASS"


# --- the opt-in scale scan ------------------------------------------------------------------------

def poke(path: Path, tensor: str, index: int, fmt: str, value: float | int) -> None:
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack_from("<Q", data, 0)
    begin, _ = json.loads(data[8 : 8 + n])[tensor]["data_offsets"]
    struct.pack_into(fmt, data, 8 + n + begin + index * struct.calcsize(fmt), value)
    path.write_bytes(bytes(data))


def test_scale_scan_clean_fixtures() -> None:
    for fixture in ("ct_w4a16", "ct_nvfp4a16", "bnb_int8", "bnb_nf4", "gptq_layout"):
        rc, result = run_json("guard", "safetensors-dtypes", str(ST / fixture / "model.safetensors"),
                              "--param", "scan_scales=1")
        assert rc == 0 and result["findings"] == [], fixture
        assert result["metrics"]["scales_scanned"] >= 7


def test_scale_scan_finds_nan_inf_and_zero(tmp_path: Path) -> None:
    d = copy_fixture("ct_w8a8", tmp_path)
    path = d / "model.safetensors"
    poke(path, "model.layers.0.mlp.up_proj.weight_scale", 3, "<f", float("nan"))
    poke(path, "model.layers.0.mlp.up_proj.weight_scale", 4, "<f", float("inf"))
    poke(path, "model.layers.0.self_attn.q_proj.weight_scale", 0, "<f", 0.0)
    rc, result = dtypes_guard(d)
    assert rc == 0 and result["findings"] == []  # off by default: no tensor data is read
    rc, result = run_json("guard", "safetensors-dtypes", str(path), "--param", "scan_scales=1")
    assert rc == 1
    assert codes(result) == {"ST_SCALE_NOT_FINITE": ["model.layers.0.mlp.up_proj.weight_scale"],
                             "ST_SCALE_ZERO": ["model.layers.0.self_attn.q_proj.weight_scale"]}
    assert any("2 NaN/infinite value(s) of 512" in f["message"] for f in result["findings"])


def test_scale_scan_fp8_and_f16(tmp_path: Path) -> None:
    d = copy_fixture("ct_nvfp4a16", tmp_path)
    poke(d / "model.safetensors", "model.layers.0.mlp.down_proj.weight_scale", 5, "<B", 0x7F)  # e4m3fn NaN
    _, result = run_json("guard", "safetensors-dtypes", str(d / "model.safetensors"),
                         "--param", "scan_scales=1")
    assert codes(result) == {"ST_SCALE_NOT_FINITE": ["model.layers.0.mlp.down_proj.weight_scale"]}
    d = copy_fixture("gptq_layout", tmp_path)
    poke(d / "model.safetensors", "model.layers.0.mlp.gate_proj.scales", 7, "<e", float("nan"))
    _, result = run_json("guard", "safetensors-dtypes", str(d / "model.safetensors"),
                         "--param", "scan_scales=1")
    assert codes(result) == {"ST_SCALE_NOT_FINITE": ["model.layers.0.mlp.gate_proj.scales"]}


def test_scale_scan_is_bounded(tmp_path: Path) -> None:
    rc, result = run_json("guard", "safetensors-dtypes", str(ST / "ct_w4a16" / "model.safetensors"),
                          "--param", "scan_scales=1", "--param", "scan_scales_limit=5000")
    assert rc == 0 and result["metrics"]["scale_bytes_scanned"] <= 5000
