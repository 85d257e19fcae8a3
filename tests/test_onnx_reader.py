"""Reader unit tests on small graphs built with onnx.helper: how each construct is recognised, and the
checks that need a hand-made defect. (Coverage of real exports is in test_onnx_coverage.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from quantgate.formats.onnx import reader  # noqa: E402
from quantgate.formats.wire import protobuf as pb  # noqa: E402
from quantgate.formats.wire.binary import Budget, BudgetExhausted, View  # noqa: E402


def build(
    tmp_path: Path,
    nodes: list,
    inits: list,
    *,
    opset: int = 21,
    ms: bool = False,
    inputs: list | None = None,
    sparse: list | None = None,
) -> str:
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
        sparse_initializer=sparse or [],
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def w(name: str, *shape: int, dtype: type = np.float32) -> TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


def bare(name: str, dtype: int, dims: list[int], floats: list[float] | None = None) -> TensorProto:
    """A TensorProto set field by field (onnx.helper refuses inconsistent ones)."""
    t = TensorProto()
    t.name, t.data_type = name, dtype
    t.dims.extend(dims)
    t.float_data.extend(floats or [])
    return t


def codes(findings: list) -> list[str]:
    return [f.code for f in findings]


def test_weight_traced_through_cast_and_transpose(tmp_path: Path) -> None:
    path = build(
        tmp_path,
        [
            helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["w32"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["y"]),
        ],
        [w("w16", 4, 8, dtype=np.float16)],
    )
    inv = reader.read(path)
    assert [(x.name, x.kind, x.dtype, x.bits, x.quantized) for x in inv.layers] == [
        ("w16", "linear", "FLOAT16", 16, False)
    ]


def test_constant_node_weight_and_activation_matmul(tmp_path: Path) -> None:
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((8, 4), np.int8)))
    path = build(
        tmp_path,
        [
            const,
            helper.make_node("DequantizeLinear", ["c", "s"], ["cw"]),
            helper.make_node("MatMul", ["x", "cw"], ["h"]),
            helper.make_node("MatMul", ["x", "x_t"], ["y"]),  # two activations
        ],
        [numpy_helper.from_array(np.array(0.5, np.float32), "s")],
    )
    inv = reader.read(path)
    assert [(x.name, x.dtype, x.quantized, x.weight_bytes) for x in inv.layers] == [
        ("c", "INT8", True, 32 + 4)
    ]
    assert inv.params_stored == 32 + 1


def test_subgraph_layers_are_found(tmp_path: Path) -> None:
    then = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wa"], ["ya"])],
        "then",
        [],
        [helper.make_tensor_value_info("ya", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wb"], ["yb"])],
        "else",
        [],
        [helper.make_tensor_value_info("yb", TensorProto.FLOAT, None)],
    )
    path = build(
        tmp_path,
        [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        [w("wa", 8, 4), w("wb", 8, 4), numpy_helper.from_array(np.array(True), "cond")],
    )
    inv = reader.read(path)
    assert sorted(x.name for x in inv.layers) == ["wa", "wb"]
    assert inv.structural_findings == []


def test_sparse_initializer_counts_dense_params(tmp_path: Path) -> None:
    values = numpy_helper.from_array(np.ones(3, np.float32), "sw")
    indices = numpy_helper.from_array(np.array([0, 5, 9], np.int64), "sw_idx")
    sparse = helper.make_sparse_tensor(values, indices, [8, 4])
    path = build(tmp_path, [helper.make_node("MatMul", ["x", "sw"], ["y"])], [], sparse=[sparse])
    inv = reader.read(path)
    assert [(x.name, x.params) for x in inv.layers] == [("sw", 32)]
    assert inv.params_stored == 32


def test_gather_on_index_table_is_not_an_embedding(tmp_path: Path) -> None:
    path = build(
        tmp_path,
        [helper.make_node("Gather", ["table", "idx"], ["y"])],
        [w("table", 4, 4, dtype=np.int64)],
        inputs=[helper.make_tensor_value_info("idx", TensorProto.INT64, [2])],
    )
    assert reader.read(path).layers == []


def test_contrib_quantized_ops(tmp_path: Path) -> None:
    ms = "com.microsoft"
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    path = build(
        tmp_path,
        [
            helper.make_node("DynamicQuantizeMatMul", ["x", "b1", "s", "zp"], ["h1"], domain=ms),
            helper.make_node("MatMulIntegerToFloat", ["x", "b2", "s", "s", "zp", "zp"], ["h2"], domain=ms),
            helper.make_node("QAttention", ["x", "b3", "bias", "s", "s"], ["h3"], domain=ms, num_heads=2),
            helper.make_node(
                "MatMulBnb4", ["x", "b4", "absmax"], ["y"], domain=ms, K=8, N=16, block_size=16, quant_type=1
            ),
        ],
        [
            w("b1", 8, 4, dtype=np.int8),
            w("b2", 8, 4, dtype=np.uint8),
            w("b3", 8, 24, dtype=np.int8),
            w("b4", 64, dtype=np.uint8),
            w("absmax", 8),
            w("bias", 24),
            s,
            zp,
        ],
        ms=True,
    )
    inv = reader.read(path)
    got = [(x.name, x.shape, x.bits, x.numeric, x.quantized, x.params) for x in inv.layers]
    assert got == [
        ("b1", (8, 4), 8, "int", True, 32),
        ("b2", (8, 4), 8, "int", True, 32),
        ("b3", (8, 24), 8, "int", True, 192),
        ("b4", (8, 16), 4, "float", True, 128),
    ]
    assert inv.layers[3].weight_bytes == 64 + 32


def test_unknown_dtype_is_unknown_precision(tmp_path: Path) -> None:
    t = w("wx", 8, 4)
    t.data_type = 99
    path = build(tmp_path, [helper.make_node("MatMul", ["x", "wx"], ["y"])], [t])
    inv = reader.read(path)
    assert codes(inv.structural_findings) == ["ONNX_UNKNOWN_DTYPE"]
    assert inv.layers[0].quantized is None and inv.layers[0].dtype == "DTYPE_99"


def test_duplicate_initializer_and_negative_dim(tmp_path: Path) -> None:
    bad = bare("neg", TensorProto.FLOAT, [-1, 4])
    path = build(
        tmp_path, [helper.make_node("MatMul", ["x", "w1"], ["y"])], [w("w1", 8, 4), w("w1", 8, 4), bad]
    )
    inv = reader.read(path)
    assert sorted(codes(inv.structural_findings)) == ["ONNX_DUPLICATE_INITIALIZER", "ONNX_NEGATIVE_DIM"]


def test_typed_data_count_is_checked(tmp_path: Path) -> None:
    good = helper.make_tensor("f", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    short = bare("g", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0])
    packed4 = helper.make_tensor("i4", TensorProto.INT4, [3], [1, 2, 3])  # 2 int32 entries for 3 int4
    path = build(tmp_path, [helper.make_node("Identity", ["x"], ["y"])], [good, short, packed4])
    inv = reader.read(path)
    assert [(f.code, f.tensor) for f in inv.structural_findings] == [("ONNX_TENSOR_SIZE_MISMATCH", "g")]


def test_scale_value_checks_read_float_data_and_float16(tmp_path: Path) -> None:
    zero = helper.make_tensor("s0", TensorProto.FLOAT, [], [0.0])
    inf16 = numpy_helper.from_array(np.array([1.0, np.inf], np.float16), "s16")
    path = build(
        tmp_path,
        [
            helper.make_node("DequantizeLinear", ["q1", "s0"], ["a"]),
            helper.make_node("DequantizeLinear", ["q2", "s16"], ["b"], axis=0),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [w("q1", 2, dtype=np.int8), w("q2", 2, dtype=np.int8), zero, inf16],
    )
    inv = reader.read(path)
    assert sorted(codes(inv.semantic_findings)) == ["ONNX_SCALE_NOT_FINITE", "ONNX_SCALE_ZERO"]


def test_dequantize_shape_checks(tmp_path: Path) -> None:
    path = build(
        tmp_path,
        [
            # per-axis scales of the wrong length
            helper.make_node("DequantizeLinear", ["q", "s3", "z3"], ["a"], axis=1),
            # zero point shape differs from the scale's
            helper.make_node("DequantizeLinear", ["q", "s4", "z2"], ["b"], axis=1),
            # a per-tensor scalar is always fine
            helper.make_node("DequantizeLinear", ["q", "s1"], ["c"]),
            helper.make_node("Sum", ["a", "b", "c"], ["y"]),
        ],
        [
            w("q", 8, 4, dtype=np.int8),
            w("s3", 3),
            w("z3", 3, dtype=np.int8),
            w("s4", 4),
            w("z2", 2, dtype=np.int8),
            w("s1", 1),
        ],
    )
    inv = reader.read(path)
    assert sorted((f.code, f.tensor) for f in inv.semantic_findings) == [
        ("ONNX_DQ_SCALE_SHAPE_MISMATCH", "s3"),
        ("ONNX_DQ_ZERO_POINT_SHAPE_MISMATCH", "z2"),
    ]


def test_matmulnbits_bad_attributes(tmp_path: Path) -> None:
    path = build(
        tmp_path,
        [
            helper.make_node(
                "MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=8, N=4, bits=4, block_size=24
            )
        ],
        [w("b", 4, 1, 12, dtype=np.uint8), w("s", 4)],
        ms=True,
    )
    inv = reader.read(path)
    assert codes(inv.semantic_findings) == ["ONNX_MATMULNBITS_BAD_ATTR"]
    assert inv.layers[0].shape == (8, 4) and inv.layers[0].bits == 4


def test_findings_are_capped_per_code(tmp_path: Path) -> None:
    inits = [bare(f"t{i}", TensorProto.FLOAT, [2], [1.0]) for i in range(40)]
    path = build(tmp_path, [helper.make_node("Identity", ["x"], ["y"])], inits)
    found = codes(reader.read(path).structural_findings)
    assert found.count("ONNX_TENSOR_SIZE_MISMATCH") == reader.FINDINGS_PER_CODE
    assert found[-1] == "ONNX_FINDINGS_CAPPED"


# -- the wire-format scanner on its own -----------------------------------------------------------


def scanner(data: bytes) -> pb.Scanner:
    return pb.Scanner(View(data), Budget(1000))


def test_scanner_reads_every_wire_type() -> None:
    data = bytes([0x08, 0x96, 0x01, 0x12, 0x02, 0x68, 0x69, 0x1D, 1, 0, 0, 0, 0x21]) + bytes(8)
    fields = list(scanner(data).fields(0, len(data)))
    assert [(f.number, f.wire, f.value, f.length) for f in fields] == [
        (1, 0, 150, 0),
        (2, 2, 5, 2),
        (3, 5, 1, 0),
        (4, 1, 0, 0),
    ]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes([0x08, 0x80]), pb.Truncated),
        (bytes([0x08]) + b"\xff" * 11, pb.VarintTooLong),
        (bytes([0x12, 0x05, 0x00]), pb.LengthPastEnd),
        (bytes([0x0B]), pb.BadWireType),
        (bytes([0x0E]), pb.BadWireType),
        (bytes([0x00, 0x00]), pb.BadWireType),
        (bytes([0x1D, 0x00]), pb.Truncated),
    ],
)
def test_scanner_errors(data: bytes, error: type) -> None:
    with pytest.raises(error):
        list(scanner(data).fields(0, len(data)))


def test_scanner_budget_and_depth() -> None:
    data = bytes([0x08, 0x01]) * 600
    with pytest.raises(BudgetExhausted):
        list(pb.Scanner(View(data), Budget(100)).fields(0, len(data)))
    with pytest.raises(pb.DepthExceeded):
        list(pb.Scanner(View(b""), max_depth=3).fields(0, 0, depth=4))


def test_negative_varints_and_packed_counts() -> None:
    s = scanner(b"\x01\x02\x80\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
    assert s.count_varints(0, 14) == 4
    assert [pb.to_signed64(v) for v in s.packed_varints(0, 14)] == [1, 2, 128, -1]


def test_activation_zero_point_dtype_follows_its_quantize(tmp_path: Path) -> None:
    """x comes from QuantizeLinear with an INT8 zero point; the DQ after it uses a UINT8 one."""
    path = build(
        tmp_path,
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z8"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "zu8"], ["y"]),
        ],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z8"),
            numpy_helper.from_array(np.array(0, np.uint8), "zu8"),
        ],
    )
    inv = reader.read(path)
    assert [(f.code, f.tensor) for f in inv.semantic_findings] == [
        ("ONNX_DQ_ZERO_POINT_DTYPE_MISMATCH", "zu8")
    ]


def test_sparse_and_attribute_tensors_external_data_is_checked(tmp_path: Path) -> None:
    """A public PoC says ORT reads sparse initializers' external data unchecked: we check every
    external tensor wherever it sits."""
    values = numpy_helper.from_array(np.ones(3, np.float32), "sw")
    values.ClearField("raw_data")
    values.data_location = TensorProto.EXTERNAL
    entry = values.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    indices = numpy_helper.from_array(np.array([0, 5, 9], np.int64), "sw_idx")
    sparse = helper.make_sparse_tensor(values, indices, [8, 4])
    path = build(tmp_path, [helper.make_node("MatMul", ["x", "sw"], ["y"])], [], sparse=[sparse])
    found = codes(reader.read(path).structural_findings)
    assert found == ["ONNX_EXTERNAL_PATH_TRAVERSAL", "ONNX_EXTERNAL_PATH_ESCAPES"]


@pytest.mark.parametrize(
    ("scale_shape", "found"), [((16, 2), []), ((16, 3), ["ONNX_GATHERBLOCKQUANTIZED_SHAPE_MISMATCH"])]
)
def test_gather_block_quantized_scales(tmp_path: Path, scale_shape: tuple, found: list) -> None:
    """uint8 data [16, 32] holds 16x64 4-bit values: block 32 along axis 1 gives scales [16, 2]."""
    path = build(
        tmp_path,
        [
            helper.make_node(
                "GatherBlockQuantized",
                ["table", "idx", "s"],
                ["y"],
                domain="com.microsoft",
                block_size=32,
                quantize_axis=1,
                bits=4,
            )
        ],
        [w("table", 16, 32, dtype=np.uint8), w("s", *scale_shape)],
        ms=True,
        inputs=[helper.make_tensor_value_info("idx", TensorProto.INT64, [2])],
    )
    inv = reader.read(path)
    assert codes(inv.semantic_findings) == found
    assert [(x.kind, x.shape, x.bits, x.params) for x in inv.layers] == [("embedding", (16, 64), 4, 1024)]


def test_shape_inference_for_flops(tmp_path: Path) -> None:
    """Conv with stride/pads, Reshape with 0 and -1, Gemm with transB, Unsqueeze: the layer output
    positions the flops basis uses."""
    shape = numpy_helper.from_array(np.array([0, -1, 4], np.int64), "shape")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    path = build(
        tmp_path,
        [
            helper.make_node("Conv", ["img", "k"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),  # [1,4,8,8]
            helper.make_node("Reshape", ["c", "shape"], ["r"]),  # [1, 64, 4]
            helper.make_node("MatMul", ["r", "w"], ["m"]),  # [1, 64, 6]
            helper.make_node("Flatten", ["m"], ["f"], axis=2),  # [64, 6]
            helper.make_node("Gemm", ["f", "g"], ["y0"], transB=1),  # [64, 3]
            helper.make_node("Unsqueeze", ["y0", "axes"], ["y"]),
        ],
        [w("k", 4, 3, 3, 3), w("w", 4, 6), w("g", 3, 6), shape, axes],
        inputs=[helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 16, 16])],
    )
    inv = reader.read(path)
    assert [(x.name, x.out_positions) for x in inv.layers] == [("k", 64), ("w", 64), ("g", 64)]
