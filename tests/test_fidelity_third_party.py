"""`fidelity` weights on the third-party ONNX corpus (fixtures/onnx_third_party): each quantized file
against the float model it was made from. The weight side reads what the structure reader counts
(`Constant` nodes, weights behind QuantizeLinear / DynamicQuantizeLinear, LSTM W and R,
DynamicQuantizeLSTM, function bodies), so every layer of expectations.json pairs; numbers are checked
against an independent numpy dequantization over the `onnx` library."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")

from conftest import FIXTURES, run_json  # noqa: E402
from quantgate.dequant.onnx import open_weights  # noqa: E402
from quantgate.formats.sniff import sniff  # noqa: E402
from quantgate.guards.base import GuardConfig, GuardContext, run_guard  # noqa: E402
from quantgate.guards.fidelity import GUARD  # noqa: E402

CORPUS = FIXTURES / "onnx_third_party"
EXPECT: dict[str, dict] = json.loads((CORPUS / "expectations.json").read_text())
PPOCR = "ppocr_cls_float.onnx"

# artifact -> (reference, identical layers): the layers stored float (or quantized alike) on both sides
PAIRS = {
    "ppocr_cls_dynamic.onnx": (PPOCR, 54),
    "ppocr_cls_qdq.onnx": (PPOCR, 54),
    "ppocr_cls_qoperator.onnx": (PPOCR, 54),
    "ppocr_cls_preprocessed_dynamic.onnx": (PPOCR, 0),  # Conv+BN fused, then int8: every layer moves
    "torch_lstm_dqlstm.onnx": ("torch_lstm_float.onnx", 2),  # the two MatMuls are int8 in both
    "silero_vad_lstm_int8.onnx": ("silero_vad_lstm_float.onnx", 6),  # the six Convs are int8 in both
}


def weights(artifact: str) -> dict[str, Any]:
    reference = PAIRS[artifact][0]
    path = CORPUS / artifact
    config = GuardConfig(timeout_s=300)
    config.params.update({"reference": str(CORPUS / reference), "outputs": "false"})
    result = run_guard(GUARD, GuardContext(str(path), sniff(path), path.stat().st_size), config).to_dict()
    assert result["status"] == "PASS", result["message"]
    assert [f["code"] for f in result["findings"]] == ["FIDELITY_WORST_LAYERS"]
    return result["metrics"]["weights"]


@pytest.mark.parametrize("artifact", sorted(PAIRS))
def test_every_layer_pairs_with_the_float_model(artifact: str) -> None:
    e = EXPECT[artifact]
    w = weights(artifact)
    assert w["layers"] == e["weight_ops"]
    assert w["quantized_layers"] == e["quantized_ops"]
    assert w["identical_layers"] == PAIRS[artifact][1]
    assert w["sampled_layers"] == 0
    # the same layers the structure reader counts, under the float model's names
    assert sorted(row.get("stored_as", row["name"]) for row in w["per_layer"]) == sorted(
        name for name, *_ in e["layers"])


@pytest.mark.parametrize("artifact", ["ppocr_cls_dynamic.onnx", "ppocr_cls_qdq.onnx", "ppocr_cls_qoperator.onnx"])
def test_weights_quantized_at_run_time_are_their_stored_float(artifact: str) -> None:
    """ConvInteger <- DynamicQuantizeLinear <- Constant, Conv <- DQ <- Q <- Constant, QLinearConv <- Q <-
    Constant: the file holds the float, bit for bit the reference's."""
    w = weights(artifact)
    runtime = [row for row in w["per_layer"] if "quantized at run time" in row["encoding"]]
    assert len(runtime) == EXPECT[artifact]["runtime_quantized_ops"]
    assert all(row["max_abs_error"] == 0 and row["rel_error"] == 0 and not row["quantized"] for row in w["per_layer"])
    assert w["max_abs_error"] == 0 and w["sqnr_db"]["min"] == 150.0


def _int8_dequantized(path: Path) -> dict[str, tuple[Any, float]]:
    """name -> (float weight as the float model holds it, max half-step) for every integer weight, by
    onnx's numpy_helper: ConvInteger/MatMulInteger with `<name>_scale`, DynamicQuantizeLSTM with inputs 8-11
    (its W/R stored [D, in, 4H], transposed back)."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out: dict[str, tuple[Any, float]] = {}
    for node in model.graph.node:
        if node.op_type == "DynamicQuantizeLSTM":
            for w, s, z in ((1, 8, 9), (2, 10, 11)):
                q, scale, zp = init[node.input[w]], init[node.input[s]], init[node.input[z]]
                d = q.shape[0]
                deq = (q.astype(np.float32) - zp.reshape(d, 1, -1).astype(np.float32)) * scale.reshape(d, 1, -1)
                out[node.input[w]] = (deq.transpose(0, 2, 1), float(np.max(scale)) / 2)
        elif node.op_type in ("ConvInteger", "MatMulInteger"):
            name = node.input[1]
            base = name[: -len("_quantized")]
            scale, zp = init[base + "_scale"], init[base + "_zero_point"]
            out[name] = ((init[name].astype(np.float32) - zp.astype(np.float32)) * scale, float(np.max(scale)) / 2)
    return out


@pytest.mark.parametrize("artifact", ["torch_lstm_dqlstm.onnx", "silero_vad_lstm_int8.onnx"])
def test_dynamic_quantize_lstm_dequantizes_against_the_float_lstm(artifact: str) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    float_model = onnx.load(str(CORPUS / PAIRS[artifact][0]))
    reference = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    deq = _int8_dequantized(CORPUS / artifact)
    rows = {row["name"]: row for row in weights(artifact)["per_layer"]}
    lstm = [row for row in rows.values() if "DynamicQuantizeLSTM" in row["encoding"]]
    assert len(lstm) == 2 and all(row["reference_encoding"] == "FLOAT" for row in lstm)
    for row in lstm:
        art, half_step = deq[row["stored_as"]]
        ref = reference[row["name"]]
        assert list(ref.shape) == row["shape"] == list(art.shape)
        # int8 round-to-nearest: no value moves more than half a step (rounding of the float math aside)
        assert row["max_abs_error"] <= half_step * (1 + 1e-5)
        a, b = ref.astype(np.float64).ravel(), art.astype(np.float64).ravel()
        err = float(np.sum((a - b) ** 2))
        assert row["max_abs_error"] == pytest.approx(float(np.max(np.abs(a - b))), rel=1e-6)
        assert row["rel_error"] == pytest.approx(math.sqrt(err / float(np.dot(a, a))), rel=1e-5)
        assert row["cosine"] == pytest.approx(float(np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b))), abs=1e-7)


def test_a_preprocessed_model_pairs_its_fused_filters_with_the_folded_float_ones() -> None:
    """quant_pre_process fuses each Conv's BatchNormalization into its filter (`ConvBnFusion_W_<name>`):
    the reference's filter is compared with its BN folded in, so the only difference left is int8's."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(CORPUS / PPOCR))
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    conv_of = {n.output[0]: n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    folded = {}
    for n in model.graph.node:
        if n.op_type == "BatchNormalization":
            eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
            factor = consts[n.input[1]] / np.sqrt(consts[n.input[4]] + np.float32(eps))
            w = consts[conv_of[n.input[0]]]
            folded["ConvBnFusion_W_" + conv_of[n.input[0]]] = w * factor.reshape(-1, 1, 1, 1)
    assert len(folded) == 35
    deq = _int8_dequantized(CORPUS / "ppocr_cls_preprocessed_dynamic.onnx")
    rows = weights("ppocr_cls_preprocessed_dynamic.onnx")["per_layer"]
    fused = [row for row in rows if row["name"].startswith("ConvBnFusion_W_")]
    assert len(fused) == 35
    assert all(row["reference_encoding"] == "FLOAT + BatchNormalization folded" for row in fused)
    for row in rows:
        art, half_step = deq[row["stored_as"]]
        ref = folded.get(row["name"], consts.get(row["name"]))
        assert row["max_abs_error"] <= half_step * (1 + 1e-4)
        assert row["max_abs_error"] == pytest.approx(float(np.max(np.abs(ref - art))), rel=1e-4, abs=1e-7)


def test_function_bodies_and_constants_are_read_as_the_structure_reader_counts() -> None:
    ws = open_weights(str(CORPUS / "local_functions.onnx"))
    try:
        got = {k: (list(r.shape), r.quantized) for k, r in ws.weights.items()}
    finally:
        ws.close()
    assert got == {"W1": ([8, 16], False), "block1/wc": ([16, 16], False), "W2": ([16, 16], False),
                   "block2/wc": ([16, 16], False), "head/wq": ([16, 4], True)}


def test_the_cli_pair_of_the_issue_passes() -> None:
    code, result = run_json("guard", "fidelity", str(CORPUS / "ppocr_cls_qoperator.onnx"), "--param",
                            f"reference={CORPUS / PPOCR}", "--param", "outputs=false")
    assert code == 0, result
    assert result["status"] == "PASS"
    w = result["metrics"]["weights"]
    assert (w["layers"], w["quantized_layers"], w["identical_layers"]) == (54, 0, 54)


def test_fused_conv_is_a_layer_for_the_structure_reader_and_fidelity(tmp_path: Path) -> None:
    """com.microsoft:FusedConv (onnxruntime's optimized graphs): one rule for both readers."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from quantgate.formats.onnx.reader import read

    w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("FusedConv", ["x", "w"], ["y"], domain="com.microsoft", activation="Relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], [numpy_helper.from_array(w, "w")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    path = tmp_path / "fused.onnx"
    onnx.save(model, str(path))
    assert [(x.name, x.kind, x.params) for x in read(str(path)).layers] == [("w", "conv", 54)]
    ws = open_weights(str(path))
    try:
        assert list(ws.weights) == ["w"]
        assert np.array_equal(ws.weights["w"].load().reshape(w.shape), w)
    finally:
        ws.close()


def test_contrib_ops_take_their_scales_from_the_structure_readers_inputs(tmp_path: Path) -> None:
    """DynamicQuantizeMatMul (inputs 2, 3) and MatMulIntegerToFloat (inputs 3, 5) dequantize with the
    scale and zero point the structure reader names; QAttention and MatMulBnb4 (a 1-D packed B) are
    said to be undecoded, not dropped."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    ms = "com.microsoft"
    b1 = np.arange(-16, 16, dtype=np.int8).reshape(8, 4)
    b2 = np.arange(0, 32, dtype=np.uint8).reshape(8, 4)
    inits = [numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(b2, "b2"),
             numpy_helper.from_array(np.ones((8, 24), np.int8), "b3"),
             numpy_helper.from_array(np.ones(64, np.uint8), "b4"),
             numpy_helper.from_array(np.ones(8, np.float32), "absmax"),
             numpy_helper.from_array(np.zeros(24, np.float32), "bias"),
             numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             numpy_helper.from_array(np.array(0.25, np.float32), "s2"),
             numpy_helper.from_array(np.array(3, np.int8), "zp"),
             numpy_helper.from_array(np.array(7, np.uint8), "zp2")]
    nodes = [
        helper.make_node("DynamicQuantizeMatMul", ["x", "b1", "s", "zp"], ["h1"], domain=ms),
        helper.make_node("MatMulIntegerToFloat", ["x", "b2", "s", "s2", "zp", "zp2"], ["h2"], domain=ms),
        helper.make_node("QAttention", ["x", "b3", "bias", "s", "s"], ["h3"], domain=ms, num_heads=2),
        helper.make_node("MatMulBnb4", ["x", "b4", "absmax"], ["y"], domain=ms, K=8, N=16, block_size=16,
                         quant_type=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)]
    path = tmp_path / "contrib.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    ws = open_weights(str(path))
    try:
        assert sorted(ws.weights) == ["b1", "b2"]
        assert np.array_equal(ws.weights["b1"].load(), (b1.astype(np.float32) - 3) * 0.5)
        assert np.array_equal(ws.weights["b2"].load(), (b2.astype(np.float32) - 7) * 0.25)
        assert sorted((code, tensor) for code, tensor, _ in ws.problems) == [
            ("FIDELITY_UNSUPPORTED_ENCODING", "b3"), ("FIDELITY_UNSUPPORTED_ENCODING", "b4")]
    finally:
        ws.close()
