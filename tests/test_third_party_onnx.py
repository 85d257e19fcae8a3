"""quantgate on third-party ONNX exports quantized by onnxruntime's own tools (fixtures/onnx_third_party).

Every number asserted here comes from expectations.json, which make_onnx_corpus.py computes with the
`onnx` library by a walker of its own (not quantgate): the corpus is PP-OCR's paddle2onnx classifier
(every weight a `Constant` node) as shipped and quantized dynamic / QDQ / QOperator, Silero VAD's LSTM
left float or quantized to DynamicQuantizeLSTM, a torch-exported LSTM the same two ways, and a model
with model-local functions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIXTURES, run_json
from quantgate.formats.onnx.reader import read, scan

CORPUS = FIXTURES / "onnx_third_party"
EXPECT: dict[str, dict] = json.loads((CORPUS / "expectations.json").read_text())
FILES = sorted(EXPECT)


def _status(e: dict) -> str:
    """No policy sets a bound here: weights quantized at run time are the one warning."""
    return "WARN" if e["runtime_quantized_ops"] else "PASS"


@pytest.fixture(scope="module")
def corpus_run() -> dict[tuple[str, str], dict]:
    paths = [str(CORPUS / name) for name in FILES]
    code, report = run_json("run", *paths, "--format", "json", "--guards", "integrity,onnx-dtypes")
    assert code == 0, report  # no policy: coverage is measured, not bounded
    out = {}
    for result in report["results"]:
        out[(Path(result["artifact"]["path"]).name, result["guard"])] = result
    return out


def test_the_corpus_is_what_the_expectations_describe() -> None:
    assert FILES == [
        "local_functions.onnx",
        "ppocr_cls_dynamic.onnx",
        "ppocr_cls_float.onnx",
        "ppocr_cls_preprocessed_dynamic.onnx",
        "ppocr_cls_qdq.onnx",
        "ppocr_cls_qoperator.onnx",
        "silero_vad_if_lstm_float.onnx",
        "silero_vad_lstm_float.onnx",
        "silero_vad_lstm_int8.onnx",
        "torch_lstm_dqlstm.onnx",
        "torch_lstm_float.onnx",
    ]
    for name in FILES:  # a file re-made without its expectations would differ here
        assert (CORPUS / name).stat().st_size == EXPECT[name]["file_bytes"], name


@pytest.mark.parametrize("name", FILES)
def test_hand_counts_agree_through_the_cli(name: str, corpus_run: dict) -> None:
    e = EXPECT[name]
    assert corpus_run[(name, "integrity")]["status"] == "PASS"
    result = corpus_run[(name, "onnx-dtypes")]
    assert result["status"] == _status(e), result["message"]
    m = result["metrics"]
    assert m["weight_ops"] == e["weight_ops"]
    assert m["quantized_ops"] == e["quantized_ops"]
    assert m["params_total"] == e["params_total"]
    assert m["params_quantized"] == e["params_quantized"]
    assert m["coverage"]["params"]["quantized"] == pytest.approx(e["params_coverage"], rel=1e-12)
    assert m["coverage"]["ops"]["quantized"] == pytest.approx(e["quantized_ops"] / e["weight_ops"], rel=1e-12)
    assert m["bits_per_weight"] == pytest.approx(e["bits_per_weight"], rel=1e-12)
    assert len(result["unquantized"]) == e["weight_ops"] - e["quantized_ops"]
    compute = m.get("compute_coverage")
    if e["integer_compute_ops"]:
        assert compute["ops"]["integer"] == pytest.approx(e["integer_compute_ops"] / e["weight_ops"], rel=1e-12)


@pytest.mark.parametrize("name", FILES)
def test_hand_counts_agree_layer_by_layer(name: str) -> None:
    e = EXPECT[name]
    inv = read(str(CORPUS / name))
    assert inv.structural_findings == []
    got = [[x.name, x.detail["op"].split(":")[-1], x.dtype, x.params] for x in inv.layers]
    assert got == e["layers"]
    by_dtype: dict[str, int] = {}
    for x in inv.layers:
        by_dtype[x.dtype] = by_dtype.get(x.dtype, 0) + x.params
    assert by_dtype == e["params_by_dtype"]
    runtime = [x for x in inv.layers if "quantized_at_run_time" in x.detail]
    assert (len(runtime), sum(x.params for x in runtime)) == (
        e["runtime_quantized_ops"],
        e["runtime_quantized_params"],
    )
    recurrent = [x for x in inv.layers if "operand" in x.detail]
    assert (len(recurrent), sum(x.params for x in recurrent)) == (e["recurrent_ops"], e["recurrent_params"])
    assert sum(x.weight_bytes or 0 for x in inv.layers) == e["weight_bytes"]


# -- weights in Constant nodes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "op", "runtime_ops", "bpw"),
    [
        # 53 ConvInteger <- DynamicQuantizeLinear <- Constant; the one MatMul stayed float
        ("ppocr_cls_dynamic.onnx", "DynamicQuantizeLinear", 53, 32.0),
        # every Conv and the MatMul <- DequantizeLinear <- QuantizeLinear <- Constant: 32 bits plus the
        # scales and zero points: 8 * 496,558 bytes / 124,072 params
        ("ppocr_cls_qdq.onnx", "QuantizeLinear", 54, 8 * 496558 / 124072),
        # QLinearConv / QLinearMatMul <- QuantizeLinear <- Constant
        ("ppocr_cls_qoperator.onnx", "QuantizeLinear", 54, 8 * 496558 / 124072),
    ],
)
def test_constant_weights_are_stored_float_quantized_at_run_time(
    name: str, op: str, runtime_ops: int, bpw: float, corpus_run: dict
) -> None:
    """Today these files report no layers at all ("no weight-bearing ops found", PASS)."""
    e = EXPECT[name]
    assert e["file_bytes"] > e["float_model_bytes"] == 585532  # quantizing made the file bigger
    result = corpus_run[(name, "onnx-dtypes")]
    assert result["status"] == "WARN"
    m = result["metrics"]
    assert (m["weight_ops"], m["params_total"]) == (54, 124072)
    assert m["coverage"]["params"]["quantized"] == 0.0  # storage: float
    assert m["bits_per_weight"] == pytest.approx(bpw, rel=1e-12)
    codes = [f["code"] for f in result["findings"]]
    assert codes.count("ONNX_WEIGHTS_QUANTIZED_AT_RUN_TIME") == 1
    (finding,) = [f for f in result["findings"] if f["code"] == "ONNX_WEIGHTS_QUANTIZED_AT_RUN_TIME"]
    assert finding["severity"] == "warning"
    params = e["runtime_quantized_params"]
    assert f"{runtime_ops} of 54 weight-bearing layers ({params:,} params, first 'conv1_weights')" in finding["message"]
    assert f"quantized at run time by {op}:" in finding["message"]
    inv = read(str(CORPUS / name))
    conv1 = inv.layers[0]
    assert (conv1.name, conv1.dtype, conv1.bits, conv1.quantized) == ("conv1_weights", "FLOAT", 32, False)
    assert conv1.detail["quantized_at_run_time"] == op


def test_runtime_quantized_weights_compute_in_int8_but_store_float(corpus_run: dict) -> None:
    m = corpus_run[("ppocr_cls_qoperator.onnx", "onnx-dtypes")]["metrics"]
    assert m["compute_coverage"]["ops"]["integer"] == 1.0
    assert m["coverage"]["ops"]["quantized"] == 0.0
    m = corpus_run[("ppocr_cls_dynamic.onnx", "onnx-dtypes")]["metrics"]
    assert m["compute_coverage"]["ops"]["integer"] == pytest.approx(53 / 54, rel=1e-12)


def test_the_named_remedy_quantizes_the_constants(corpus_run: dict) -> None:
    """preprocess (Constants -> initializers) then quantize_dynamic: all 54 layers stored INT8."""
    result = corpus_run[("ppocr_cls_preprocessed_dynamic.onnx", "onnx-dtypes")]
    assert result["status"] == "PASS"
    assert result["metrics"]["coverage"]["params"]["int8"] == 1.0
    assert "ONNX_WEIGHTS_QUANTIZED_AT_RUN_TIME" not in [f["code"] for f in result["findings"]]
    assert EXPECT["ppocr_cls_preprocessed_dynamic.onnx"]["file_bytes"] == 230929


def test_float_constants_feeding_float_ops_are_plain_float_layers() -> None:
    inv = read(str(CORPUS / "ppocr_cls_float.onnx"))
    assert (inv.facts["initializers"], inv.facts["constant_tensors"]) == (0, 308)
    assert len(inv.layers) == 54
    assert not any("quantized_at_run_time" in x.detail for x in inv.layers)
    assert inv.semantic_findings == []


# -- recurrent layers -----------------------------------------------------------------------------


def test_a_float_lstm_keeps_coverage_below_full(corpus_run: dict) -> None:
    """Silero VAD: the LSTM's W and R (131,072 of 308,224 params, 42.5%) stay float when only Conv and
    MatMul are quantized. Today the file reports 6/6 layers and 100% quantized."""
    result = corpus_run[("silero_vad_lstm_float.onnx", "onnx-dtypes")]
    m = result["metrics"]
    assert (m["weight_ops"], m["quantized_ops"]) == (8, 6)
    assert m["coverage"]["params"]["quantized"] == pytest.approx(177152 / 308224, rel=1e-12)
    assert [(u["name"], u["shape"], u["params"]) for u in result["unquantized"]] == [
        ("onnx::LSTM_209", [1, 512, 128], 65536),
        ("onnx::LSTM_210", [1, 512, 128], 65536),
    ]
    m = corpus_run[("torch_lstm_float.onnx", "onnx-dtypes")]["metrics"]
    assert m["coverage"]["params"]["quantized"] == pytest.approx(896 / 16256, rel=1e-12)
    assert m["flops_exact"] is True  # W and R act once per time step: seq 10 x batch 1


def test_an_lstm_in_if_branches_behind_the_gate_reorder_is_found(corpus_run: dict) -> None:
    """Silero VAD's older export: the LSTM sits in both branches of an If, its W and R rebuilt from the
    stored [512, 128] weights by Slice x3 -> Concat -> Unsqueeze (torch's gate reorder), which
    onnxruntime's LSTM quantizer skips. Today: 6/6 layers, 100% quantized. One LSTM node per branch
    reads the same stored weights; only one branch runs, so each weight is one layer, not two."""
    inv = read(str(CORPUS / "silero_vad_if_lstm_float.onnx"))
    lstm = [
        (x.name, x.shape, x.dtype, x.detail["operand"], x.detail["if_branches"])
        for x in inv.layers
        if x.detail["op"] == "LSTM"
    ]
    assert lstm == [
        ("model.decoder.rnn.weight_ih", (512, 128), "FLOAT", "W", 2),
        ("model.decoder.rnn.weight_hh", (512, 128), "FLOAT", "R", 2),
    ]
    m = corpus_run[("silero_vad_if_lstm_float.onnx", "onnx-dtypes")]["metrics"]
    assert (m["weight_ops"], m["quantized_ops"]) == (8, 6)
    assert m["coverage"]["params"]["quantized"] == pytest.approx(177152 / 308224, rel=1e-12)


def test_dynamic_quantize_lstm_weights_are_int8_layers() -> None:
    inv = read(str(CORPUS / "torch_lstm_dqlstm.onnx"))
    lstm = [x for x in inv.layers if x.detail["op"] == "com.microsoft:DynamicQuantizeLSTM"]
    assert [(x.detail["operand"], x.shape, x.dtype, x.params, x.compute) for x in lstm] == [
        ("W", (1, 32, 192), "INT8", 6144, "int8"),
        ("R", (1, 48, 192), "INT8", 9216, "int8"),
    ]
    assert [x.out_positions for x in inv.layers] == [10, 10, 10, 10]
    # each carries its per-tensor FP32 scale and INT8 zero point
    assert [x.weight_bytes for x in lstm] == [6144 + 5, 9216 + 5]


# -- model-local functions ------------------------------------------------------------------------


def test_function_bodies_are_walked_per_call(corpus_run: dict) -> None:
    """Block (called twice) multiplies by its argument and by its own float Constant; Head reads an INT8
    Constant through DequantizeLinear. Today no layer is found."""
    inv = read(str(CORPUS / "local_functions.onnx"))
    assert [(x.name, x.dtype, x.params, x.detail["node"]) for x in inv.layers] == [
        ("W1", "FLOAT", 128, "block1/mm_arg"),
        ("block1/wc", "FLOAT", 256, "block1/mm_const"),
        ("W2", "FLOAT", 256, "block2/mm_arg"),
        ("block2/wc", "FLOAT", 256, "block2/mm_const"),
        ("head/wq", "INT8", 64, "head/mm_q"),
    ]
    # the functions' Constant values are stored once each: W1 + W2 + Block's wc + Head's wq and scale
    assert inv.params_stored == 128 + 256 + 256 + 64 + 1
    assert (inv.facts["nodes"], inv.facts["functions"], inv.facts["function_nodes"]) == (3, 2, 8)
    m = corpus_run[("local_functions.onnx", "onnx-dtypes")]["metrics"]
    assert (m["weight_ops"], m["quantized_ops"], m["params_total"]) == (5, 1, 960)


def _recursive_model(path: Path, calls: int) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    body = [helper.make_node("Relu", ["x"], ["h"])]
    body += [helper.make_node("Loop", [f"h{i}" if i else "h"], [f"h{i + 1}"], domain="local") for i in range(calls)]
    body += [helper.make_node("Identity", [f"h{calls}"], ["y"])]
    fn = helper.make_function("local", "Loop", ["x"], ["y"], body, [helper.make_opsetid("", 21)])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["x"], ["y"], domain="local", name="call")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)], functions=[fn]
    )
    path.write_bytes(model.SerializeToString())


def test_recursive_functions_are_cut_with_a_finding(tmp_path: Path) -> None:
    """A function calling itself twice would expand to 2**n bodies: the depth cap stops it."""
    path = tmp_path / "recursive.onnx"
    _recursive_model(path, 2)
    inv = read(str(path))
    assert [f.code for f in inv.structural_findings] == ["ONNX_FUNCTION_INLINE_CAPPED"]
    assert inv.layers == []


# -- the wire reader against the onnx library ------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_constants_and_functions_parse_as_onnx_parses_them(name: str) -> None:
    onnx = pytest.importorskip("onnx")
    ref = onnx.load(str(CORPUS / name))
    model, findings = scan(str(CORPUS / name))
    assert findings == []

    def flat(graph: onnx.GraphProto) -> list:  # subgraph nodes before the node that holds them, as scanned
        out = []
        for n in graph.node:
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else []) + list(a.graphs):
                    out += flat(sub)
            out.append(n)
        return out

    ref_nodes = flat(ref.graph)
    assert [(n.op_type, n.domain, n.inputs, n.outputs) for n in model.nodes] == [
        (n.op_type, n.domain, list(n.input), list(n.output)) for n in ref_nodes
    ]
    in_functions = tuple(f"{name}/" for _, name in model.functions)
    constants = [
        t for t in model.tensors if t.kind == "constant" and not (in_functions and t.name.startswith(in_functions))
    ]
    values = [
        (n.output[0], a.t) for n in ref_nodes if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    assert [(t.name, t.dims, t.data_type) for t in constants] == [
        (out, list(v.dims), v.data_type) for out, v in values
    ]
    for t, (_, value) in zip(constants, values, strict=True):
        if value.HasField("raw_data"):
            assert t.raw is not None and t.raw[1] == len(value.raw_data)
    assert {k: (f.inputs, f.outputs, [n.op_type for n in f.nodes]) for k, f in model.functions.items()} == {
        (f.domain, f.name): (list(f.input), list(f.output), [n.op_type for n in f.node]) for f in ref.functions
    }


def _model(path: Path, nodes: list, inits: list, functions: list | None = None) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)],
        functions=functions or [],
    )
    path.write_bytes(model.SerializeToString())


def test_a_fake_quantized_float_initializer_is_quantized_at_run_time(tmp_path: Path) -> None:
    """MatMul <- DequantizeLinear <- QuantizeLinear <- FLOAT initializer: today no layer at all."""
    pytest.importorskip("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    path = tmp_path / "fake_quant.onnx"
    inits = [
        numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
        numpy_helper.from_array(np.array(0.5, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm"),
    ]
    _model(path, nodes, inits)
    inv = read(str(path))
    (layer,) = inv.layers
    assert (layer.name, layer.dtype, layer.quantized, layer.weight_bytes) == ("w", "FLOAT", False, 64 + 4 + 1)
    assert layer.detail["quantized_at_run_time"] == "QuantizeLinear"
    (finding,) = inv.semantic_findings
    assert finding.code == "ONNX_WEIGHTS_QUANTIZED_AT_RUN_TIME"
    assert "store the weights quantized" in finding.message and "Constant" not in finding.message


def test_long_names_in_a_function_called_often_stay_bounded(tmp_path: Path) -> None:
    """64 KiB value names in a body copied per call: the character budget stops the expansion."""
    pytest.importorskip("onnx")
    from onnx import helper

    long = "n" * 60_000
    body = [helper.make_node("Relu", ["x"], [long + "0"])]
    body += [helper.make_node("Relu", [f"{long}{i}"], [f"{long}{i + 1}"]) for i in range(20)]
    body += [helper.make_node("Identity", [f"{long}20"], ["y"])]
    fn = helper.make_function("local", "F", ["x"], ["y"], body, [helper.make_opsetid("", 21)])
    calls = [helper.make_node("F", ["x" if i == 0 else f"c{i}"], [f"c{i + 1}"], domain="local") for i in range(60)]
    calls.append(helper.make_node("Identity", ["c60"], ["y"]))
    path = tmp_path / "long_names.onnx"
    _model(path, calls, [], [fn])
    inv = read(str(path))
    assert [f.code for f in inv.structural_findings] == ["ONNX_FUNCTION_INLINE_CAPPED"]


def _if_model(tmp_path: Path, else_weight: str) -> str:
    """A MatMul in each branch of an If: reading `w` in both, or `w` and `else_weight`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, weight: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 4])
        return helper.make_graph([helper.make_node("MatMul", ["x", weight], [f"{name}_y"])], name, [], [out])

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), n) for n in ("w", "v")]
    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["cond"], ["y"], then_branch=branch("then", "w"), else_branch=branch("else", else_weight)
            )
        ],
        "g",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=inits,
    )
    path = tmp_path / f"if_{else_weight}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_if_branches_fold_the_same_weight_only(tmp_path: Path) -> None:
    same = read(_if_model(tmp_path, "w"))
    assert [(x.name, x.params, x.detail.get("if_branches")) for x in same.layers] == [("w", 32, 2)]
    different = read(_if_model(tmp_path, "v"))
    assert sorted((x.name, x.params, x.detail.get("if_branches")) for x in different.layers) == [
        ("v", 32, None),
        ("w", 32, None),
    ]
