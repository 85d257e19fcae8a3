"""The `fidelity` guard: dequantizers checked against the libraries, numbers against direct numpy
computations on independently dequantized tensors, damaged and mismatched pairs through the gate."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")
gguf = pytest.importorskip("gguf")

from quantgate.core.bounds import FAIL_LEVEL, parse_bound  # noqa: E402
from quantgate.core.findings import Finding  # noqa: E402
from quantgate.formats.sniff import sniff  # noqa: E402
from quantgate.guards.base import GuardConfig, GuardContext, decide_status, evaluate_bounds, run_guard  # noqa: E402
from quantgate.guards.fidelity import GUARD, map_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FID = ROOT / "fixtures" / "fidelity"
ONNX = ROOT / "fixtures" / "onnx"
F16 = FID / "gguf" / "tiny-f16.gguf"


def run(path: Path, reference: Path | str | None = None, *bounds: str, hints: dict[str, Any] | None = None,
        **params: Any) -> dict[str, Any]:
    config = GuardConfig(require=[parse_bound(b, FAIL_LEVEL) for b in bounds], timeout_s=300)
    if reference is not None:
        config.params["reference"] = str(reference)
    config.params.update(params)
    ctx = GuardContext(str(path), sniff(path), path.stat().st_size)
    ctx.hints.update(hints or {})
    return run_guard(GUARD, ctx, config).to_dict()


def codes(result: dict[str, Any], severity: str | None = None) -> list[str]:
    return [f["code"] for f in result["findings"] if severity is None or f["severity"] == severity]


def layer_stats(a: Any, b: Any) -> dict[str, float]:
    """The definitions, straight: a = reference, b = dequantized artifact."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    err = float(np.sum((a - b) ** 2))
    return {
        "cosine": float(np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b))),
        "sqnr_db": 10 * math.log10(float(np.dot(a, a)) / err) if err else 150.0,
        "rel_error": math.sqrt(err / float(np.dot(a, a))),
        "max_abs_error": float(np.max(np.abs(a - b))),
    }


def check_layers(result: dict[str, Any], expected: dict[str, dict[str, float]]) -> None:
    rows = {row["name"]: row for row in result["metrics"]["weights"]["per_layer"]}
    assert set(rows) == set(expected)
    for name, want in expected.items():
        for key, value in want.items():
            assert rows[name][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)


# --- GGUF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "F32"])
def test_gguf_decoders_equal_gguf_py_on_quantized_data(name: str) -> None:
    from gguf.quants import dequantize, quantize

    from quantgate.dequant import gguf as dg
    from quantgate.formats.gguf.types import GGML_TYPE_BY_NAME

    qtype = gguf.GGMLQuantizationType[name]
    x = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float32)
    q = quantize(x, qtype)
    size = GGML_TYPE_BY_NAME[name].size
    ours = dg.DECODERS[name](np.ascontiguousarray(q).view(np.uint8).reshape(-1, size))
    assert np.array_equal(ours.reshape(x.shape), dequantize(q, qtype))


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_gguf_k_decoders_equal_gguf_py_on_random_blocks(name: str) -> None:
    from gguf.quants import dequantize

    from quantgate.dequant import gguf as dg
    from quantgate.formats.gguf.types import GGML_TYPE_BY_NAME

    size = GGML_TYPE_BY_NAME[name].size
    blocks = np.random.default_rng(5).integers(0, 256, (8, size), dtype=np.uint8)
    half = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if name == "Q6_K":
        blocks[:, 208:210] = half
    else:
        blocks[:, 0:2] = half
        blocks[:, 2:4] = half
    want = dequantize(blocks.reshape(-1), gguf.GGMLQuantizationType[name]).reshape(8, -1)
    assert np.array_equal(dg.DECODERS[name](blocks), want)


def gguf_float_tensors(path: Path) -> dict[str, Any]:
    """Every 2-D tensor of a GGUF, dequantized by gguf-py, in [rows, cols]."""
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    return {t.name: dequantize(t.data, t.tensor_type).reshape(tuple(int(n) for n in reversed(t.shape)))
            for t in reader.tensors if len(t.shape) >= 2}


@pytest.mark.parametrize("reference", ["tiny-f16.gguf", "tiny-f32.gguf"])
@pytest.mark.parametrize("quantized", ["tiny-q8_0.gguf", "tiny-q4_0.gguf"])
def test_gguf_pair_numbers_equal_numpy(quantized: str, reference: str) -> None:
    ref_path = FID / "gguf" / reference
    result = run(FID / "gguf" / quantized, ref_path)
    assert result["status"] == "PASS", result["message"]
    ref, art = gguf_float_tensors(ref_path), gguf_float_tensors(FID / "gguf" / quantized)
    expected = {name: layer_stats(ref[name], art[name]) for name in art}
    check_layers(result, expected)
    w = result["metrics"]["weights"]
    assert w["layers"] == w["quantized_layers"] == 16
    assert w["cosine"]["min"] == pytest.approx(min(e["cosine"] for e in expected.values()), rel=1e-6)
    assert w["sqnr_db"]["mean"] == pytest.approx(np.mean([e["sqnr_db"] for e in expected.values()]), rel=1e-5)
    noise = sum(float(np.sum((ref[n].astype(np.float64) - art[n]) ** 2)) for n in art)
    signal = sum(float(np.sum(ref[n].astype(np.float64) ** 2)) for n in art)
    assert w["sqnr_db"]["overall"] == pytest.approx(10 * math.log10(signal / noise), rel=1e-5)
    size = (FID / "gguf" / quantized).stat().st_size
    assert result["metrics"]["size_ratio"] == pytest.approx(ref_path.stat().st_size / size)
    assert "FIDELITY_WORST_LAYERS" in codes(result, "info")


def test_gguf_row_sampling_is_bounded_and_said() -> None:
    result = run(FID / "gguf" / "tiny-q8_0.gguf", F16, max_elements=4096)
    w = result["metrics"]["weights"]
    assert w["sampled_layers"] == 8  # token_embd, ffn_gate/up/down x2, output: > 4096 elements
    assert "FIDELITY_SAMPLED" in codes(result, "info")
    ref, art = gguf_float_tensors(F16), gguf_float_tensors(FID / "gguf" / "tiny-q8_0.gguf")
    row = next(r for r in w["per_layer"] if r["name"] == "blk.0.ffn_down.weight")  # 64 x 256: 16 rows kept
    assert row["sampled_rows"] == 16
    picked = np.unique(np.linspace(0, 63, 16).round().astype(int))
    name = "blk.0.ffn_down.weight"
    want = layer_stats(ref[name][picked], art[name][picked])
    assert row["sqnr_db"] == pytest.approx(want["sqnr_db"], rel=1e-5)


def test_damaged_gguf_caught_through_the_gate(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "quantgate", "-q", "run", str(FID / "gguf"), str(FID / "gguf-damaged"),
         str(FID / "gguf-mismatch"), "--policy", str(FID / "policy-gguf.toml"), "--guards", "fidelity",
         "--format", "json"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    by_name = {Path(r["artifact"]["path"]).name: r for r in report["results"]}
    assert by_name["tiny-q8_0.gguf"]["status"] == "PASS"
    assert by_name["tiny-q4_0.gguf"]["status"] == "PASS"
    assert by_name["tiny-f16.gguf"]["skip"]["reason"] == "no_reference"
    scaled = by_name["tiny-q8_0-scales-x4.gguf"]
    assert scaled["status"] == "FAIL"
    broken = {b["metric"]: b["actual"] for b in scaled["bounds"] if b["outcome"] == "broken"}
    assert set(broken) == {"weights.sqnr_db.min"}
    assert broken["weights.sqnr_db.min"] == pytest.approx(20 * math.log10(1 / 3), abs=0.02)  # error = 3x signal
    assert scaled["metrics"]["weights"]["worst"][0] == "blk.1.ffn_down.weight"
    shuffled = by_name["tiny-q8_0-shuffled.gguf"]
    assert shuffled["status"] == "FAIL"
    assert {b["metric"] for b in shuffled["bounds"] if b["outcome"] == "broken"} == {
        "weights.cosine.min", "weights.sqnr_db.min"}
    assert shuffled["metrics"]["weights"]["worst"][0] == "blk.0.attn_q.weight"
    for name in ("seed1-q8_0.gguf", "ffn128-q8_0.gguf"):
        mismatch = by_name[name]
        # an error finding decides: FAIL, not ERROR for the metrics it could not produce
        assert mismatch["status"] == "FAIL", mismatch["message"]
        assert "FIDELITY_PAIR_MISMATCH" in codes(mismatch, "error")
        assert "weights" not in mismatch["metrics"]


def test_mismatched_pairs_fail_without_numbers() -> None:
    result = run(ONNX / "mlp_gemm.onnx", ONNX / "float.onnx", "weights.cosine.min >= 0.99")
    assert result["status"] == "FAIL"
    assert codes(result, "error") == ["FIDELITY_PAIR_MISMATCH"]
    assert "weights" not in result["metrics"] and "outputs" not in result["metrics"]


def test_decide_status_error_finding_beats_missing_metric() -> None:
    config = GuardConfig(require=[parse_bound("weights.cosine.min >= 0.99")])
    rows = evaluate_bounds(config, {})
    assert decide_status([], rows) == "ERROR"
    assert decide_status([Finding("FIDELITY_PAIR_MISMATCH", "error", "x")], rows) == "FAIL"
    assert decide_status([Finding("FIDELITY_SAMPLED", "info", "x")], rows) == "ERROR"


def test_no_reference_skips_with_a_hint() -> None:
    result = run(FID / "gguf" / "tiny-q8_0.gguf")
    assert result["status"] == "SKIP"
    assert result["skip"]["reason"] == "no_reference"
    assert "--param reference=" in result["skip"]["detail"]


def test_missing_reference_is_an_error() -> None:
    result = run(FID / "gguf" / "tiny-q8_0.gguf", FID / "gguf" / "nope.gguf")
    assert result["status"] == "ERROR" and result["error"]["type"] == "reference_missing"


def test_the_reference_itself_is_not_applicable() -> None:
    result = run(F16, F16)
    assert result["status"] == "SKIP" and result["skip"]["reason"] == "not_applicable"


def test_reference_mapping_and_manifest_hint(tmp_path: Path) -> None:
    assert map_reference("/x/tiny-q8_0.gguf", {"tiny-q*.gguf": "tiny-f16.gguf"}) == "/x/tiny-f16.gguf"
    assert map_reference("/x/llama-q4_0.gguf", {"*-q?_0.gguf": "{1}-f16.gguf"}) == "/x/llama-f16.gguf"
    assert map_reference("/x/m.onnx", {"*-q8.onnx": "x"}) is None
    release = tmp_path / "release"
    release.mkdir()
    for name in ("tiny-q8_0.gguf", "tiny-f16.gguf"):
        shutil.copy(FID / "gguf" / name, release / name)
    manifest = {"manifest_version": 1, "model_id": "t/tiny", "artifacts": [
        {"path": "tiny-q8_0.gguf", "format": "gguf", "reference": "tiny-f16.gguf"},
        {"path": "tiny-f16.gguf", "format": "gguf"}]}
    (release / "manifest.json").write_text(json.dumps(manifest))
    out = subprocess.run([sys.executable, "-m", "quantgate", "-q", "run", str(release), "--guards", "fidelity",
                          "--format", "json"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    report = json.loads(out.stdout)
    by_name = {Path(r["artifact"]["path"]).name: r for r in report["results"]}
    assert by_name["tiny-q8_0.gguf"]["status"] == "PASS"
    assert by_name["tiny-q8_0.gguf"]["metrics"]["reference"]["source"] == "manifest"
    assert by_name["tiny-f16.gguf"]["skip"]["reason"] == "no_reference"


def test_policy_reference_is_relative_to_the_policy(tmp_path: Path) -> None:
    from quantgate.gate.policy import PolicyError, load_policy

    policy = tmp_path / "sub" / "quantgate.toml"
    policy.parent.mkdir()
    policy.write_text('[quantgate]\nversion = 1\n[guards.fidelity]\nreference = "../float.gguf"\n'
                      'references = { "*-q8_0.gguf" = "{1}-f16.gguf" }\n')
    config = load_policy(str(policy)).guard_config("fidelity")
    assert config.params["reference"] == str(tmp_path / "sub" / ".." / "float.gguf")
    assert config.params["references"] == {"*-q8_0.gguf": "{1}-f16.gguf"}
    policy.write_text('[quantgate]\nversion = 1\n[guards.gguf-dtypes]\nreference = "x.gguf"\n')
    with pytest.raises(PolicyError, match=r"only \[guards.fidelity\] takes reference"):
        load_policy(str(policy))


# --- ONNX ------------------------------------------------------------------------------------------


def onnx_arrays(path: Path) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_onnx_qdq_numbers_equal_numpy() -> None:
    result = run(ONNX / "static_qdq.onnx", ONNX / "float.onnx")
    assert result["status"] == "PASS", result["message"]
    ref, art = onnx_arrays(ONNX / "float.onnx"), onnx_arrays(ONNX / "static_qdq.onnx")
    expected = {}
    for name in ("embed.weight", "conv.weight", "fc1.weight", "fc2.weight", "head.weight"):
        q = art[name + "_quantized"].astype(np.float32)
        scale, zp = art[name + "_scale"], art[name + "_zero_point"].astype(np.float32)
        expected[name] = layer_stats(ref[name], (q - zp) * scale)
    check_layers(result, expected)


def test_onnx_blocked_int4_numbers_equal_numpy() -> None:
    result = run(ONNX / "qdq_blocked_int4.onnx", ONNX / "float.onnx")
    ref, art = onnx_arrays(ONNX / "float.onnx"), onnx_arrays(ONNX / "qdq_blocked_int4.onnx")
    expected = {n: layer_stats(ref[n], ref[n]) for n in ("embed.weight", "conv.weight")}  # kept float
    for name in ("fc1.weight", "fc2.weight", "head.weight"):
        q = art[name + "_DQ_Q4"].astype(np.float32)  # numpy_helper unpacks INT4
        scale = np.repeat(art[name + "_DQ_scales"], 32, axis=0)  # axis 0, block 32
        expected[name] = layer_stats(ref[name], q * scale)
    check_layers(result, expected)
    assert result["metrics"]["weights"]["identical_layers"] == 2


def test_onnx_matmulnbits_equals_the_blocked_qdq_of_the_same_quantizer() -> None:
    # MatMulNBitsQuantizer wrote the same 4-bit blocks both ways: one [N, K/32, 16] uint8, one INT4 QDQ
    a = run(ONNX / "matmulnbits4.onnx", ONNX / "float.onnx")["metrics"]["weights"]["per_layer"]
    b = run(ONNX / "qdq_blocked_int4.onnx", ONNX / "float.onnx")["metrics"]["weights"]["per_layer"]
    rows_b = {r["name"]: r for r in b}
    for row in a:
        if row["name"].startswith("fc") or row["name"] == "head.weight":
            assert row["sqnr_db"] == pytest.approx(rows_b[row["name"]]["sqnr_db"], rel=1e-6)


def test_onnx_output_fidelity_equals_onnxruntime_directly() -> None:
    ort = pytest.importorskip("onnxruntime")
    result = run(ONNX / "static_qdq.onnx", ONNX / "float.onnx", samples=3, seed=11)
    outputs = result["metrics"]["outputs"]
    rng = np.random.default_rng(11)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (ONNX / "float.onnx", ONNX / "static_qdq.onnx")]
    refs, arts = [], []
    for _ in range(3):
        ids = rng.integers(0, 128, size=[1, 16]).astype(np.int64)  # 128 = rows of the embedding
        refs.append(sessions[0].run(None, {"ids": ids})[0])
        arts.append(sessions[1].run(None, {"ids": ids})[0])
    a, b = np.concatenate(refs), np.concatenate(arts)
    want = layer_stats(a, b)
    assert outputs["cosine"] == pytest.approx(want["cosine"], rel=1e-6)
    assert outputs["sqnr_db"] == pytest.approx(want["sqnr_db"], rel=1e-5)
    assert outputs["max_abs_error"] == pytest.approx(want["max_abs_error"], rel=1e-5)
    top1 = np.mean([np.mean(r.argmax(-1) == t.argmax(-1)) for r, t in zip(refs, arts, strict=True)])
    assert outputs["top1_agreement"] == pytest.approx(top1)
    assert outputs["samples"] == 3


def test_damaged_onnx_caught_through_the_gate(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = subprocess.run(
        [sys.executable, "-m", "quantgate", "-q", "run", str(FID / "onnx"), str(ONNX / "static_qdq.onnx"),
         "--policy", str(FID / "policy-onnx.toml"), "--guards", "fidelity", "--format", "json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1, out.stderr
    by_name = {Path(r["artifact"]["path"]).name: r for r in json.loads(out.stdout)["results"]}
    assert by_name["static_qdq.onnx"]["status"] == "PASS"
    scaled = by_name["static_qdq-scales-x4.onnx"]
    assert {b["metric"] for b in scaled["bounds"] if b["outcome"] == "broken"} == {"outputs.cosine"}
    assert scaled["metrics"]["weights"]["worst"][0] == "fc1.weight"
    assert scaled["metrics"]["weights"]["sqnr_db"]["min"] == pytest.approx(20 * math.log10(1 / 3), abs=0.02)
    shuffled = by_name["static_qdq-shuffled.onnx"]
    assert {b["metric"] for b in shuffled["bounds"] if b["outcome"] == "broken"} == {
        "weights.cosine.min", "outputs.cosine"}


# --- safetensors -----------------------------------------------------------------------------------


def test_safetensors_ct_int8_numbers_equal_numpy() -> None:
    from safetensors.numpy import load_file

    folder = FID / "safetensors"
    result = run(folder / "ct_w8a8" / "model.safetensors", folder / "float" / "model.safetensors")
    assert result["status"] == "PASS", result["message"]
    ref = load_file(str(folder / "float" / "model.safetensors"))
    art = load_file(str(folder / "ct_w8a8" / "model.safetensors"))
    expected = {}
    for name, value in ref.items():
        if value.ndim < 2:
            continue
        module = name[: -len(".weight")]
        if module + ".weight_scale" in art:
            deq = art[name].astype(np.float32) * art[module + ".weight_scale"]  # [out, 1] channel scales
        else:
            deq = art[name]
        expected[name] = layer_stats(value, deq)
    check_layers(result, expected)
    w = result["metrics"]["weights"]
    assert (w["layers"], w["quantized_layers"], w["identical_layers"]) == (9, 7, 2)


def test_safetensors_damaged_scale_is_the_worst_layer() -> None:
    folder = FID / "safetensors"
    result = run(folder / "ct_w8a8-scales-x4" / "model.safetensors", folder / "float" / "model.safetensors",
                 "weights.sqnr_db.min >= 25")
    assert result["status"] == "FAIL"
    assert result["metrics"]["weights"]["worst"][0] == "model.layers.0.mlp.up_proj.weight"


# --- ExecuTorch ------------------------------------------------------------------------------------


def test_pte_output_fidelity_equals_the_runtime_directly() -> None:
    pytest.importorskip("executorch")
    torch = pytest.importorskip("torch")
    from executorch.extension.pybindings import portable_lib as pl

    pte = FID / "pte"
    result = run(pte / "tiny-dq8-xnnpack.pte", pte / "tiny-fp32.pte", samples=2, seed=5)
    assert result["status"] == "PASS", result["message"]
    outputs = result["metrics"]["outputs"]
    assert outputs["int_high"] == 100  # the embedding table's rows, from the reference's inventory
    gen = torch.Generator().manual_seed(5)
    methods = [pl._load_program(str(pte / name)).load_method("forward") for name in ("tiny-fp32.pte",
                                                                                     "tiny-dq8-xnnpack.pte")]
    refs, arts = [], []
    for _ in range(2):
        tokens = torch.randint(0, 100, [1, 8], generator=gen).to(torch.int64)
        refs.append(methods[0].call([tokens.clone()])[0].numpy())
        arts.append(methods[1].call([tokens.clone()])[0].numpy())
    want = layer_stats(np.concatenate(refs), np.concatenate(arts))
    assert outputs["cosine"] == pytest.approx(want["cosine"], rel=1e-6)
    assert outputs["max_abs_error"] == pytest.approx(want["max_abs_error"], rel=1e-5)
    top1 = np.mean([np.mean(r.argmax(-1) == t.argmax(-1)) for r, t in zip(refs, arts, strict=True)])
    assert outputs["top1_agreement"] == pytest.approx(top1)


def test_pte_programs_of_other_models_fail() -> None:
    pytest.importorskip("executorch")
    result = run(ROOT / "fixtures" / "pte" / "emb8_portable.pte", FID / "pte" / "tiny-fp32.pte",
                 "outputs.cosine >= 0.98")
    assert result["status"] == "FAIL"  # WideLM vs TinyLM: weights of other shapes at the same positions
    assert "FIDELITY_PAIR_MISMATCH" in codes(result, "error")
    assert "outputs" not in result["metrics"]


def test_inf_scale_is_an_error_finding(tmp_path: Path) -> None:
    from quantgate.formats.gguf import reader

    src = FID / "gguf" / "tiny-q8_0.gguf"
    gf = reader.parse(str(src))
    t = next(t for t in gf.tensors if t.name == "blk.0.attn_q.weight")
    data = bytearray(src.read_bytes())
    start = gf.data_start + t.offset
    data[start:start + 2] = np.array([np.inf], np.float16).tobytes()  # the first block's scale d
    damaged = tmp_path / "inf-scale-q8_0.gguf"
    damaged.write_bytes(bytes(data))
    result = run(damaged, F16)
    assert result["status"] == "FAIL"
    assert codes(result, "error") == ["FIDELITY_NOT_FINITE"]
    row = next(r for r in result["metrics"]["weights"]["per_layer"] if r["name"] == "blk.0.attn_q.weight")
    assert row["nonfinite"] == 32  # one Q8_0 block; the other 4,064 values are still measured


# --- hostile bytes ---------------------------------------------------------------------------------


def _data_region(path: Path) -> tuple[int, int]:
    """Where flipping bytes keeps the structure valid: the tensor data (GGUF, safetensors) or the whole
    file past the first kilobyte (ONNX: payloads dominate; a broken record is integrity's finding)."""
    fmt = sniff(path).format
    if fmt == "gguf":
        from quantgate.formats.gguf import reader

        return reader.parse(str(path)).data_start or 0, path.stat().st_size
    if fmt == "safetensors":
        head = int.from_bytes(path.read_bytes()[:8], "little")
        return 8 + head, path.stat().st_size
    if fmt == "pte":  # the segments: constants, named data and the delegate blob
        from quantgate.formats.pte import reader

        return reader.parse(str(path)).segment_base, path.stat().st_size
    return 1024, path.stat().st_size


@pytest.mark.parametrize("artifact,reference", [
    (FID / "gguf" / "tiny-q4_0.gguf", F16),
    (FID / "safetensors" / "ct_w4a16" / "model.safetensors", FID / "safetensors" / "float" / "model.safetensors"),
    (ONNX / "matmulnbits4.onnx", ONNX / "float.onnx"),
    (FID / "pte" / "wide-emb4-8da4w-xnnpack.pte", FID / "pte" / "wide-fp32.pte"),
])
def test_flipped_bytes_never_crash_the_guard(tmp_path: Path, artifact: Path, reference: Path) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    start, end = _data_region(artifact)
    original = artifact.read_bytes()
    target = tmp_path / artifact.name
    for extra in artifact.parent.glob("config.json"):
        shutil.copy(extra, tmp_path / extra.name)

    @hypothesis.settings(max_examples=15, deadline=None, derandomize=True)
    @hypothesis.given(st.lists(st.tuples(st.integers(start, end - 1), st.integers(0, 255)), min_size=1, max_size=40))
    def check(edits: list[tuple[int, int]]) -> None:
        data = bytearray(original)
        for pos, value in edits:
            data[pos] = value
        target.write_bytes(bytes(data))
        result = run(target, reference, outputs="false")
        # a verdict on the artifact (or integrity's block on a broken record), never a crash
        assert result["status"] in ("PASS", "WARN", "FAIL", "SKIP"), result["message"]
        if result["status"] == "SKIP":
            assert result["skip"]["reason"] == "blocked_by:integrity"

    check()


@pytest.mark.parametrize("folder,preset", [("ct_nvfp4a16", "NVFP4A16"), ("ct_w4a16", "W4A16")])
def test_safetensors_packed_decode_equals_compressed_tensors(folder: str, preset: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import NVFP4PackedCompressor, PackedQuantizationCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from safetensors.torch import load_file

    from quantgate.dequant import open_weights

    path = FID / "safetensors" / folder / "model.safetensors"
    state = load_file(str(path))
    scheme = preset_name_to_scheme(preset, ["Linear"])
    compressor = NVFP4PackedCompressor if preset.startswith("NVFP4") else PackedQuantizationCompressor
    ws = open_weights(str(path), "safetensors")
    try:
        module = "model.layers.0.mlp.down_proj"
        local = {k[len(module) + 1:]: v for k, v in state.items() if k.startswith(module + ".weight")}
        want = compressor.decompress(local, scheme)["weight"].to(torch.float32).numpy()
        ours = ws.weights[module + ".weight"].load()
        assert ours.shape == want.shape
        # compressed-tensors dequantizes in bf16 (NVFP4) or the scale's dtype: equal up to its rounding
        assert np.allclose(ours, want, rtol=1 / 128, atol=1e-6)
    finally:
        ws.close()


@pytest.mark.parametrize("axis,block,scale_shape", [
    (1, 0, (1,)), (0, 0, (12,)), (1, 0, (40,)), (0, 4, (3, 40)), (1, 8, (12, 5)), (1, 16, (12, 3)),
])
def test_onnx_row_decoding_equals_whole_dequantize_linear(axis: int, block: int, scale_shape: tuple) -> None:
    from quantgate.dequant.onnx import dequantize_linear, dequantize_rows

    rng = np.random.default_rng(1)
    q = rng.integers(-8, 8, (12, 40)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, scale_shape).astype(np.float32)
    zp = rng.integers(-2, 3, scale_shape).astype(np.int8)
    whole = dequantize_linear(q, scale, zp, axis, block, "w")
    rows = np.array([0, 3, 4, 11])
    assert np.array_equal(dequantize_rows(q[rows], rows, q.shape, scale, zp, axis, block, "w"), whole[rows])


def test_onnx_sampled_rows_equal_numpy_on_the_same_rows() -> None:
    result = run(ONNX / "qdq_blocked_int4.onnx", ONNX / "float.onnx", max_elements=2048, outputs="false")
    ref, art = onnx_arrays(ONNX / "float.onnx"), onnx_arrays(ONNX / "qdq_blocked_int4.onnx")
    row = next(r for r in result["metrics"]["weights"]["per_layer"] if r["name"] == "fc2.weight")  # [128, 64]
    picked = np.unique(np.linspace(0, 127, 32).round().astype(int))
    assert row["sampled_rows"] == len(picked)
    deq = art["fc2.weight_DQ_Q4"].astype(np.float32) * np.repeat(art["fc2.weight_DQ_scales"], 32, axis=0)
    want = layer_stats(ref["fc2.weight"][picked], deq[picked])
    assert row["sqnr_db"] == pytest.approx(want["sqnr_db"], rel=1e-5)
    assert row["cosine"] == pytest.approx(want["cosine"], rel=1e-6)


@pytest.fixture(scope="module")
def st_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """fixtures/safetensors' float tiny Llama (transformers, seed 0), rebuilt: (module, model, folder)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("st_fixtures", ROOT / "fixtures" / "safetensors" / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    mod = module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    model = mod.tiny_llama(64, 256, 512, 1, torch.float32)
    folder = tmp_path_factory.mktemp("st_base")
    model.save_pretrained(folder)
    return mod, model, folder


@pytest.mark.parametrize("folder", ["gptq_layout", "awq_layout"])
def test_gptq_awq_layouts_decode_to_the_minmax_quantization(st_base: tuple[Any, Any, Path], folder: str) -> None:
    """fixtures/safetensors packs its tiny Llama with AutoGPTQ's / AutoAWQ's real packers from min-max
    4-bit group-128 parameters; rebuilt here, the float model quantized with the same parameters must be
    what the decoder reads out of the packed layout (up to the F16 scales and a rounding step)."""
    import torch

    mod, model, base = st_base
    result = run(ROOT / "fixtures" / "safetensors" / folder / "model.safetensors", base / "model.safetensors")
    rows = {r["name"]: r for r in result["metrics"]["weights"]["per_layer"]}
    for name, linear in model.named_modules():
        if not isinstance(linear, torch.nn.Linear) or name == "lm_head":
            continue
        w = linear.weight.data.float()
        scale, zero = mod.minmax_qparams(w, 128, 4)
        scale = scale.half().float()
        g = torch.arange(w.shape[1]) // 128
        q = torch.round(w / scale[:, g] + zero[:, g]).clamp(0, 15)
        want = layer_stats(w.numpy(), ((q - zero[:, g]) * scale[:, g]).numpy())
        assert rows[name + ".weight"]["sqnr_db"] == pytest.approx(want["sqnr_db"], abs=0.3), name


def test_manifest_reference_for_a_single_guard_run(tmp_path: Path) -> None:
    for name in ("tiny-q4_0.gguf", "tiny-f16.gguf"):
        shutil.copy(FID / "gguf" / name, tmp_path / name)
    manifest = {"manifest_version": 1, "model_id": "t/tiny", "artifacts": [
        {"path": "tiny-q4_0.gguf", "format": "gguf", "reference": "tiny-f16.gguf"}]}
    (tmp_path / "release.manifest.json").write_text(json.dumps(manifest))
    result = run(tmp_path / "tiny-q4_0.gguf")
    assert result["status"] == "PASS"
    assert result["metrics"]["reference"]["source"] == "manifest"
    manifest["artifacts"][0]["reference"] = "../outside.gguf"  # confined to the manifest's folder
    (tmp_path / "release.manifest.json").write_text(json.dumps(manifest))
    assert run(tmp_path / "tiny-q4_0.gguf")["skip"]["reason"] == "no_reference"


@pytest.mark.parametrize("artifact,encoding", [
    ("tiny-dq8-xnnpack.pte", "int8 per-channel (XNNPACK QC8W)"),  # filters and scales in the delegate blob
    ("tiny-int8-portable.pte", "int8 per-channel (portable)"),  # int8 constants -> dequantize_per_channel
])
def test_pte_weights_pair_by_position_and_equal_per_channel_int8_of_the_reference(artifact: str,
                                                                                   encoding: str) -> None:
    """The reference's constants read by ExecuTorch's own deserializer; XNNPACKQuantizer's symmetric
    per-channel int8 (scale = max|w| / 127, q in [-127, 127]) recomputed from them."""
    pytest.importorskip("executorch")
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = FID / "pte"
    result = run(pte / artifact, pte / "tiny-fp32.pte", outputs="false")
    rows = {r["name"]: r for r in result["metrics"]["weights"]["per_layer"]}
    assert [(k, rows[k]["encoding"]) for k in sorted(rows)] == [("#0", "fp32"), ("#1", encoding), ("#2", encoding)]
    program = deserialize_pte_binary((pte / "tiny-fp32.pte").read_bytes()).program
    buffers = {1: (100, 32), 4: (64, 32), 6: (10, 64)}  # embedding, l1, l2 (fixtures/pte's TinyLM)
    weights = {i: np.frombuffer(program.constant_buffer[i].storage, np.float32).reshape(shape)
               for i, shape in buffers.items()}
    assert rows["#0"]["sqnr_db"] == 150.0  # the embedding stays fp32: bit-identical
    for key, index in (("#1", 4), ("#2", 6)):
        w = weights[index].astype(np.float64)
        scale = np.abs(w).max(axis=1, keepdims=True) / 127
        deq = np.clip(np.round(w / scale), -127, 127) * scale
        want = layer_stats(w, deq)
        assert rows[key]["sqnr_db"] == pytest.approx(want["sqnr_db"], abs=0.05), key
        assert rows[key]["cosine"] == pytest.approx(want["cosine"], abs=1e-6), key


def test_pte_per_group_int4_equals_symmetric_int4_of_the_reference() -> None:
    """torchao 8da4w weights (symmetric int4 in groups of 32: scale = max|w| / 7.5, q in [-8, 7], scales
    kept in bf16 by the XNNPACK lowering) recomputed from the fp32 program's constants."""
    pytest.importorskip("executorch")
    torch = pytest.importorskip("torch")
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = FID / "pte"
    result = run(pte / "wide-8da4w-xnnpack.pte", pte / "wide-fp32.pte", outputs="false")
    rows = {r["name"]: r for r in result["metrics"]["weights"]["per_layer"]}
    assert rows["#1"]["encoding"] == "int4 per-group 32 (XNNPACK QB4W)"
    program = deserialize_pte_binary((pte / "wide-fp32.pte").read_bytes()).program
    for key, index, shape in (("#1", 4, (128, 64)), ("#2", 6, (64, 128))):
        w = np.frombuffer(program.constant_buffer[index].storage, np.float32).reshape(shape).astype(np.float64)
        groups = w.reshape(shape[0], -1, 32)
        scale = np.abs(groups).max(axis=-1, keepdims=True) / 7.5
        scale = torch.tensor(scale, dtype=torch.float32).to(torch.bfloat16).to(torch.float64).numpy()
        deq = (np.clip(np.round(groups / scale), -8, 7) * scale).reshape(shape)
        want = layer_stats(w, deq)
        assert rows[key]["sqnr_db"] == pytest.approx(want["sqnr_db"], abs=0.1), key
        assert rows[key]["cosine"] == pytest.approx(want["cosine"], abs=1e-4), key


@pytest.mark.parametrize("artifact,bits", [("wide-emb4-8da4w-xnnpack.pte", 4), ("wide-emb8-portable.pte", 8)])
def test_pte_quantized_embeddings_equal_symmetric_group_quantization(artifact: str, bits: int) -> None:
    """torchao IntxWeightOnlyConfig on the embedding (groups of 32, symmetric: scale = max|w| / (2^bits - 1)
    * 2, q in [-2^(bits-1), 2^(bits-1) - 1]) -> quantized_decomposed::embedding_4bit / embedding_byte."""
    pytest.importorskip("executorch")
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = FID / "pte"
    result = run(pte / artifact, pte / "wide-fp32.pte", outputs="false")
    row = next(r for r in result["metrics"]["weights"]["per_layer"] if r["name"] == "#0")
    assert row["encoding"] == f"int{bits} embedding, groups of 32 (portable)"
    program = deserialize_pte_binary((pte / "wide-fp32.pte").read_bytes()).program
    w = np.frombuffer(program.constant_buffer[1].storage, np.float32).reshape(100, 64).astype(np.float64)
    groups = w.reshape(100, -1, 32)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = np.abs(groups).max(axis=-1, keepdims=True) / ((qmax - qmin) / 2)
    deq = (np.clip(np.round(groups / scale), qmin, qmax) * scale).reshape(w.shape)
    want = layer_stats(w, deq)
    assert row["sqnr_db"] == pytest.approx(want["sqnr_db"], abs=0.1)
    assert row["cosine"] == pytest.approx(want["cosine"], abs=1e-4)


def test_bitsandbytes_nf4_decodes_to_blockwise_nf4_of_the_reference(st_base: tuple[Any, Any, Path]) -> None:
    """bitsandbytes 0.50 `load_in_4bit` nf4 with double quantization (fixtures/safetensors/bnb_nf4): each
    block of 64 values is the nearest NF4 code times the block's absmax; the double-quantized absmax adds
    a small error, hence the tolerance."""
    import torch
    from safetensors.numpy import load_file

    _, model, base = st_base
    path = ROOT / "fixtures" / "safetensors" / "bnb_nf4" / "model.safetensors"
    result = run(path, base / "model.safetensors")
    assert result["status"] == "PASS"
    rows = {r["name"]: r for r in result["metrics"]["weights"]["per_layer"]}
    table = load_file(str(path))["model.layers.0.self_attn.q_proj.weight.quant_map"].astype(np.float64)
    for name, linear in model.named_modules():
        if not isinstance(linear, torch.nn.Linear) or name == "lm_head":
            continue
        w = linear.weight.data.double().numpy()
        blocks = w.reshape(-1, 64)
        absmax = np.abs(blocks).max(axis=1, keepdims=True)
        codes = np.abs(blocks[..., None] / absmax[..., None] - table).argmin(axis=-1)
        want = layer_stats(w, (table[codes] * absmax).reshape(w.shape))
        assert rows[name + ".weight"]["encoding"] == "nf4 (bitsandbytes, block 64)"
        assert rows[name + ".weight"]["sqnr_db"] == pytest.approx(want["sqnr_db"], abs=0.3), name


def test_bitsandbytes_int8_decodes_to_rowwise_absmax_int8(st_base: tuple[Any, Any, Path]) -> None:
    """bitsandbytes LLM.int8 storage: per output row, q = round(127 w / max|w|), SCB = max|w|."""
    import torch

    _, model, base = st_base
    result = run(ROOT / "fixtures" / "safetensors" / "bnb_int8" / "model.safetensors", base / "model.safetensors")
    rows = {r["name"]: r for r in result["metrics"]["weights"]["per_layer"]}
    for name, linear in model.named_modules():
        if isinstance(linear, torch.nn.Linear) and name != "lm_head":
            w = linear.weight.data.double().numpy()
            scb = np.abs(w).max(axis=1, keepdims=True)
            want = layer_stats(w, np.round(w * 127 / scb) * scb / 127)
            assert rows[name + ".weight"]["sqnr_db"] == pytest.approx(want["sqnr_db"], abs=0.05), name


def test_across_formats_without_common_names_weights_are_unavailable_not_a_mismatch() -> None:
    result = run(FID / "gguf" / "tiny-q8_0.gguf", FID / "safetensors" / "float" / "model.safetensors",
                 "weights.cosine.min >= 0.99")
    assert result["status"] == "ERROR"  # the bound cannot be evaluated, and nothing says the artifact is bad
    assert result["error"]["type"] == "missing_metric"
    assert "FIDELITY_WEIGHTS_UNAVAILABLE" in codes(result, "info")
    assert "size_ratio" in result["metrics"]


def test_bad_numeric_param_is_an_error_not_a_crash() -> None:
    result = run(FID / "gguf" / "tiny-q8_0.gguf", F16, max_elements="lots")
    assert result["status"] == "ERROR" and result["error"]["type"] == "bad_param"


def test_core_install_lists_the_guard_and_skips_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    out = subprocess.run([sys.executable, "-c", "import sys; from quantgate.guards import all_guards; "
                          "all_guards(); print('numpy' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"  # importing and listing the guard loads no numpy
    monkeypatch.setattr(GUARD, "requires_modules", ("numpy_missing_here",))
    result = run(FID / "gguf" / "tiny-q8_0.gguf", F16)
    assert result["skip"]["reason"] == "dependency_missing"
    assert "pip install 'quantgate[fidelity]'" in result["skip"]["detail"]
