"""Output fidelity on models with symbolic dims: realistic sizes, recorded, settable by the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")

from quantgate.dequant.input_shapes import (  # noqa: E402
    Hints,
    ShapeRequestError,
    model_hints,
    parse_input_shapes,
    plan_shapes,
)
from quantgate.formats.sniff import sniff  # noqa: E402
from quantgate.guards.base import GuardConfig, GuardContext, run_guard  # noqa: E402
from quantgate.guards.fidelity import GUARD  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TP = ROOT / "fixtures" / "onnx_third_party"
CLS_FLOAT = TP / "ppocr_cls_float.onnx"
CLS_INT8 = TP / "ppocr_cls_preprocessed_dynamic.onnx"  # INT8 weights (quant_pre_process, then quantize_dynamic)
CLS_QDQ = TP / "ppocr_cls_qdq.onnx"


def run(path: Path, config: GuardConfig | None = None, **params: Any) -> dict[str, Any]:
    config = config or GuardConfig(timeout_s=300)
    config.params.update({"weights": "false", **params})
    ctx = GuardContext(str(path), sniff(path), path.stat().st_size)
    return run_guard(GUARD, ctx, config).to_dict()


def outputs_of(path: Path, reference: Path, config: GuardConfig | None = None, **params: Any) -> dict[str, Any]:
    result = run(path, config, reference=str(reference), **params)
    assert result["status"] == "PASS", result
    return result["metrics"]["outputs"]


def record(axis: int, size: int, source: str, dim: str | None = None, name: str = "x") -> dict[str, Any]:
    return {"input": name, "axis": axis, "dim": dim, "size": size, "from": source}


# --- the planner, on signatures as onnxruntime gives them ----------------------------------------------


def test_roles_batch_image_sequence() -> None:
    shapes, records = plan_shapes([("x", [None, 3, "?", "?"]), ("ids", ["batch", "seq"]), ("t", ["n", 16, 3])])
    assert shapes == {"x": [1, 3, 224, 224], "ids": [1, 128], "t": [1, 16, 3]}
    assert records == [record(0, 1, "batch default"), record(2, 224, "image default"),
                       record(3, 224, "image default"), record(0, 1, "batch default", "batch", "ids"),
                       record(1, 128, "sequence default", "seq", "ids"), record(0, 1, "batch default", "n", "t")]


def test_nhwc_image_and_named_leading_sequence() -> None:
    shapes, _ = plan_shapes([("img", ["unk__12", "unk__13", "unk__14", 3]), ("audio", ["sequence_length", 576])])
    assert shapes == {"img": [1, 224, 224, 3], "audio": [128, 576]}  # a named leading dim is not a batch


def test_image_side_rounds_up_to_the_conv_chain_stride() -> None:
    shapes, records = plan_shapes([("x", [None, 3, "h", "w"])], Hints(strides={"x": (64, 4)}))
    assert shapes == {"x": [1, 3, 256, 224]}
    assert records[1] == record(2, 256, "image default (stride 64)", "h")


def test_a_spatially_named_dim_outside_the_image_axes_takes_no_stride() -> None:
    """A leading dim named `h` of an NCHW image is no image side the conv strides belong to (this raised
    ValueError from tuple.index)."""
    shapes, records = plan_shapes([("x", ["h", 3, "height", "width"])], Hints(strides={"x": (64, 4)}))
    assert shapes == {"x": [224, 3, 256, 224]}
    assert [r["from"] for r in records] == ["image default", "image default (stride 64)", "image default"]


def test_named_dims_share_one_size_and_expressions_follow() -> None:
    signature = [("ids", ["batch", "sequence_length"]), ("past", ["batch", 4, "past_sequence_length", 8]),
                 ("mask", ["batch", "past_sequence_length + sequence_length"])]
    shapes, records = plan_shapes(signature, dims={"past_sequence_length": 7})
    assert shapes == {"ids": [1, 128], "past": [1, 4, 7, 8], "mask": [1, 135]}
    assert records[-1] == record(1, 135, "expression", "past_sequence_length + sequence_length", "mask")


def test_metadata_hints() -> None:
    hints = Hints(metadata={"imgsz": "[480, 640]", "batch": "2", "seq": "77"})
    shapes, records = plan_shapes([("images", ["N", 3, "H", "W"]), ("text", [1, "seq"])], hints)
    assert shapes == {"images": [2, 3, 480, 640], "text": [1, 77]}
    assert [r["from"] for r in records] == ["metadata batch", "metadata imgsz", "metadata imgsz", "metadata seq"]


def test_requests_win_in_order_and_dynamic_dim_is_the_old_override() -> None:
    signature = [("x", [None, 3, "height", "width"]), ("y", ["height", 5])]
    shapes, records = plan_shapes(signature, Hints(metadata={"imgsz": "640"}),
                                  input_shapes={"x": [2, 3, 48, 320]}, dims={"width": 99}, dynamic_dim=1)
    assert shapes == {"x": [2, 3, 48, 320], "y": [48, 5]}  # the named height is one size everywhere
    assert [r["from"] for r in records] == ["input_shapes"] * 4
    shapes, records = plan_shapes(signature, dims={"width": 99}, dynamic_dim=1)
    assert shapes == {"x": [1, 3, 1, 99], "y": [1, 5]}
    assert [r["from"] for r in records] == ["dynamic_dim", "dynamic_dim", "dim.width", "dynamic_dim"]


@pytest.mark.parametrize(("request_", "message"), [
    ({"x": [1, 3, 48]}, r"input_shapes\['x'\] has 3 dims but the model's input 'x' has 4"),
    ({"x": [1, 1, 48, 320]}, r"sets dim 1 to 1 but the model fixes it at 3"),
])
def test_impossible_requests_raise(request_: dict[str, list[int]], message: str) -> None:
    with pytest.raises(ShapeRequestError, match=message):
        plan_shapes([("x", [None, 3, "?", "?"])], input_shapes=request_)


def test_input_shapes_text_forms() -> None:
    assert parse_input_shapes("x:1x3x48x320; y:1x128") == {"x": [1, 3, 48, 320], "y": [1, 128]}
    assert parse_input_shapes('{"x": [1, 3, 48, 320]}') == {"x": [1, 3, 48, 320]}
    for bad in ("x:1x0x3", "x=1x3", '{"x": [1.5]}', "{nope", '{"x": 3}'):
        with pytest.raises(ShapeRequestError):
            parse_input_shapes(bad)


def test_op_hints_from_a_real_reader_pass(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT),
             helper.make_node("Reshape", ["xc", "target"], ["y"])]
    target = numpy_helper.from_array(np.array([1, 1, 28, 28], dtype=np.int64), "target")
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 3, "h", "w"])
    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), dtype=np.float32), "w")
    prev = "img"
    for i in range(6):  # six stride-2 convs: 64x down
        nodes.append(helper.make_node("Conv", [prev, "w" if i == 0 else "w2"], [f"c{i}"], strides=[2, 2],
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    w2 = numpy_helper.from_array(np.zeros((4, 4, 3, 3), dtype=np.float32), "w2")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "?"]), img],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)],
                              initializer=[target, w, w2])
    path = tmp_path / "hinted.onnx"
    onnx.save(helper.make_model(graph), str(path))
    hints = model_hints(str(path), ["x", "img"])
    assert hints.reshape == {"x": 784}
    assert hints.strides == {"img": (64, 64)}
    shapes, records = plan_shapes([("x", ["batch", None]), ("img", ["n", 3, "h", "w"])], hints)
    assert shapes == {"x": [1, 784], "img": [1, 3, 256, 256]}
    assert records[1] == record(1, 784, "ops: Reshape to a constant shape")


# --- through the guard, on the third-party PP-OCR classifier (paddle2onnx: x [?, 3, ?, ?]) ------------------


PPOCR_DEFAULT = [record(0, 1, "batch default"), record(2, 256, "image default (stride 64)"),
                 record(3, 224, "image default")]


def test_ppocr_int8_runs_on_a_realistic_image_and_says_so() -> None:
    pytest.importorskip("onnxruntime")
    result = run(CLS_INT8, reference=str(CLS_FLOAT))
    assert result["status"] == "PASS"
    assert "top-1 1.000 (inputs 'x' 1x3x256x224)" in result["message"]
    realistic = result["metrics"]["outputs"]
    # the backbone downsamples height 64x (width 4x): 224 rounded up to 256
    assert realistic["inputs"] == {"x": [1, 3, 256, 224]}
    assert realistic["symbolic_dims"] == PPOCR_DEFAULT
    assert realistic["seed"] == 0 and realistic["samples"] == 4
    tiny = outputs_of(CLS_INT8, CLS_FLOAT, dynamic_dim=1)  # the old default, now an explicit override
    assert tiny["inputs"] == {"x": [1, 3, 1, 1]}
    assert tiny["symbolic_dims"] == [record(a, 1, "dynamic_dim") for a in (0, 2, 3)]
    # a 1x1 image is almost all padding: its error is a small fraction of a real image's (~50x here)
    assert 1 - realistic["cosine"] > 10 * (1 - tiny["cosine"])


def test_ppocr_shapes_from_the_policy(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from quantgate.gate.policy import load_policy

    policy = tmp_path / "quantgate.toml"
    policy.write_text('[quantgate]\nversion = 1\n[guards.fidelity]\ninput_shapes = { x = [1, 3, 48, 192] }\n')
    config = load_policy(str(policy)).guard_config("fidelity")
    assert config.params["input_shapes"] == {"x": [1, 3, 48, 192]}
    out = outputs_of(CLS_INT8, CLS_FLOAT, config)
    assert out["inputs"] == {"x": [1, 3, 48, 192]}
    assert out["symbolic_dims"] == [record(0, 1, "input_shapes"), record(2, 48, "input_shapes"),
                                    record(3, 192, "input_shapes")]
    tiny = outputs_of(CLS_INT8, CLS_FLOAT, dynamic_dim=1)
    assert out["cosine"] < 0.9995 and tiny["cosine"] > 0.9999  # ~0.9976 vs ~0.999996
    # --param, same thing
    assert outputs_of(CLS_INT8, CLS_FLOAT, input_shapes="x:1x3x48x192")["inputs"] == {"x": [1, 3, 48, 192]}


def test_ppocr_static_int8_collapses_on_a_real_image() -> None:
    pytest.importorskip("onnxruntime")
    realistic = outputs_of(CLS_QDQ, CLS_FLOAT)
    tiny = outputs_of(CLS_QDQ, CLS_FLOAT, dynamic_dim=1)
    assert realistic["inputs"] == {"x": [1, 3, 256, 224]}
    assert realistic["cosine"] < 0.8 and tiny["cosine"] > 0.9  # ~0.47 vs ~0.94


def test_silero_sequence_dim_is_named_not_a_batch() -> None:
    pytest.importorskip("onnxruntime")
    art, ref = TP / "silero_vad_lstm_int8.onnx", TP / "silero_vad_lstm_float.onnx"
    out = outputs_of(art, ref)
    assert out["inputs"] == {"input": [128, 576], "h": [1, 1, 128], "c": [1, 1, 128]}
    assert out["symbolic_dims"] == [record(0, 128, "sequence default", "sequence_length", "input")]
    named = outputs_of(art, ref, **{"dim.sequence_length": 16, "dim.nothing": 3})
    assert named["inputs"]["input"] == [16, 576]
    assert named["symbolic_dims"][0]["from"] == "dim.sequence_length"
    assert named["unused_shapes"] == ["dim.nothing"]


@pytest.mark.parametrize(("params", "message"), [
    ({"input_shapes": "x:1x3x48"}, "the reference .*ppocr_cls_float.onnx: input_shapes['x'] has 3 dims but the "
                                   "model's input 'x' has 4 ([?, 3, ?, ?])"),
    ({"input_shapes": "x:1x3xbig"}, "input_shapes['x'] = ['1', '3', 'big']: every size must be an integer from 1 "
                                    "to 1048576"),
    ({"dim.height": "tall"}, "--param dim.height=tall is not an integer from 1 to 1048576"),
])
def test_bad_shape_requests_are_usage_errors(params: dict[str, str], message: str) -> None:
    pytest.importorskip("onnxruntime")
    import re

    result = run(CLS_INT8, reference=str(CLS_FLOAT), **params)
    assert result["status"] == "ERROR" and result["error"]["type"] == "bad_param"
    pattern = re.escape(message).replace(re.escape(".*"), ".*")  # the fixture's absolute path
    assert re.fullmatch(pattern, result["error"]["message"]), result["error"]["message"]


def test_policy_input_shapes_belong_to_fidelity(tmp_path: Path) -> None:
    from quantgate.gate.policy import PolicyError, load_policy

    policy = tmp_path / "quantgate.toml"
    policy.write_text('[quantgate]\nversion = 1\n[guards.onnx-dtypes]\ninput_shapes = { x = [1, 3] }\n')
    with pytest.raises(PolicyError, match=r"only \[guards.fidelity\] takes input_shapes"):
        load_policy(str(policy))
    policy.write_text('[quantgate]\nversion = 1\n[guards.fidelity]\ninput_shapes = { x = [1, 0] }\n')
    with pytest.raises(PolicyError, match=r"input_shapes"):
        load_policy(str(policy))


def test_oversized_default_inputs_are_refused_before_allocation(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from quantgate.dequant.outputs import OutputsError, onnx_outputs

    value = helper.make_tensor_value_info("v", TensorProto.FLOAT, ["unk__0", "p", "q", "r", "t"])
    graph = helper.make_graph([helper.make_node("Identity", ["v"], ["out"])], "g", [value],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(OutputsError) as caught:  # 1 x 128^4 floats: a GiB per sample
        onnx_outputs(str(path), str(path), samples=1, seed=0)
    assert caught.value.code == "FIDELITY_OUTPUTS_UNAVAILABLE"
    assert caught.value.message == ("input 'v' would hold 268,435,456 values as [1, 128, 128, 128, 128] (over "
                                    "67,108,864): set its shape with [guards.fidelity] input_shapes or --param "
                                    "dim.NAME=N")
    out = onnx_outputs(str(path), str(path), samples=1, seed=0, dims={"p": 2, "q": 2, "r": 2, "t": 2})
    assert out["inputs"] == {"v": [1, 2, 2, 2, 2]} and out["cosine"] == 1.0


def test_pte_outputs_record_the_method_input_sizes() -> None:
    pytest.importorskip("executorch")
    pytest.importorskip("torch")
    pte = ROOT / "fixtures" / "fidelity" / "pte"
    out = outputs_of(pte / "tiny-dq8-xnnpack.pte", pte / "tiny-fp32.pte", samples=1)
    assert out["inputs"] == {"input0": [1, 8]}  # token ids [1, 8], from the reference method's metadata
    assert "symbolic_dims" not in out


def test_a_refused_default_says_which_sizes_and_how_to_set_them(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import shutil

    art = TP / "silero_vad_if_lstm_float.onnx"  # its STFT needs 512 samples; paired with a copy of itself
    ref = tmp_path / "copy.onnx"
    shutil.copy(art, ref)
    refused = run(art, reference=str(ref))
    assert refused["status"] == "FAIL"
    assert [f["code"] for f in refused["findings"]] == ["FIDELITY_RUNTIME_FAILED"]
    assert refused["findings"][0]["message"].endswith(
        "(inputs 'input' [1, 128], 'state' [2, 1, 128], 'sr' []; set the sizes with [guards.fidelity] "
        "input_shapes or --param dim.NAME=N)")
    result = run(art, reference=str(ref), **{"dim.sequence": 512})
    assert result["status"] == "PASS"
    assert result["metrics"]["outputs"]["inputs"] == {"input": [1, 512], "state": [2, 1, 128], "sr": []}
    assert "(inputs 'input' 1x512, 'state' 2x1x128, 'sr' scalar)" in result["message"]
