"""The streaming scan against onnx.load(..., load_external_data=False) on every valid fixture: the same
initializers (names, dims, dtypes, raw_data lengths, external keys), nodes, opsets and metadata."""

from __future__ import annotations

import pytest

from conftest import FIXTURES

onnx = pytest.importorskip("onnx")

from quantgate.formats.onnx.reader import scan  # noqa: E402

VALID = [
    "float.onnx",
    "dynamic_qint8.onnx",
    "static_qdq.onnx",
    "static_qop.onnx",
    "static_qdq_exclude_fc2.onnx",
    "qdq_int4_matmul.onnx",
    "matmulnbits4.onnx",
    "qdq_blocked_int4.onnx",
    "qdq_fp8_matmul.onnx",
    "matmulnbits8.onnx",
    "ort_dynamic_fused.onnx",
    "ort_qdq_fused.onnx",
    "mlp_gemm.onnx",
    "mlp_qgemm.onnx",
    "external/model.onnx",
    "broken/ext_ok/model.onnx",
]


@pytest.mark.parametrize("name", VALID)
def test_same_structure_as_onnx_load(name: str) -> None:
    path = str(FIXTURES / "onnx" / name)
    ref = onnx.load(path, load_external_data=False)
    model, findings = scan(path)
    assert findings == []
    assert model.ir_version == ref.ir_version
    assert model.producer == ref.producer_name
    assert model.opsets == {o.domain: o.version for o in ref.opset_import}
    assert model.metadata == {p.key: p.value for p in ref.metadata_props}

    inits = [t for t in model.tensors if t.kind == "initializer"]
    assert [t.name for t in inits] == [t.name for t in ref.graph.initializer]
    assert [t.dims for t in inits] == [list(t.dims) for t in ref.graph.initializer]
    assert [t.data_type for t in inits] == [t.data_type for t in ref.graph.initializer]
    for mine, theirs in zip(inits, ref.graph.initializer, strict=True):
        if theirs.HasField("raw_data"):
            assert mine.raw is not None and mine.raw[1] == len(theirs.raw_data)
        assert mine.external == {e.key: e.value for e in theirs.external_data}
        assert mine.data_location == theirs.data_location

    assert [(n.op_type, n.domain, n.name) for n in model.nodes] == [
        (n.op_type, n.domain, n.name) for n in ref.graph.node
    ]
    assert [n.inputs for n in model.nodes] == [list(n.input) for n in ref.graph.node]
    assert [n.outputs for n in model.nodes] == [list(n.output) for n in ref.graph.node]
    for mine, theirs in zip(model.nodes, ref.graph.node, strict=True):
        for attr in theirs.attribute:
            value = onnx.helper.get_attribute_value(attr)
            if isinstance(value, (int, list)) and all(
                isinstance(v, int) for v in ([value] if isinstance(value, int) else value)
            ):
                assert mine.attrs[attr.name] == value, attr.name
    assert model.graph_inputs == len(ref.graph.input)
    assert model.graph_outputs == len(ref.graph.output)


def test_raw_data_offsets_point_at_the_bytes() -> None:
    """The recorded (offset, length) is exactly where raw_data lives, though it was never read."""
    path = FIXTURES / "onnx" / "static_qdq.onnx"
    ref = {t.name: t.raw_data for t in onnx.load(str(path)).graph.initializer}
    data = path.read_bytes()
    model, _ = scan(str(path))
    for t in model.tensors:
        if t.raw is not None:
            offset, length = t.raw
            assert data[offset : offset + length] == ref[t.name]


def test_onnx_backend_test_models() -> None:
    """Every model shipped in onnx's own backend test data (149 in onnx 1.23): same initializers and
    main-graph ops as onnx.load, and no structural error on any of them."""
    import glob
    import os

    from quantgate.formats.onnx.reader import read

    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    files = sorted(glob.glob(os.path.join(root, "**", "*.onnx"), recursive=True))
    if not files:
        pytest.skip("this onnx build ships no backend test models")
    for path in files:
        ref = onnx.load(path, load_external_data=False)
        model, findings = scan(path)
        assert findings == [], path
        assert [t.name for t in model.tensors if t.kind == "initializer"] == [
            t.name for t in ref.graph.initializer
        ]
        assert [n.op_type for n in model.nodes if n.scope == "main"] == [n.op_type for n in ref.graph.node]
        inv = read(path)
        assert not [f for f in inv.structural_findings if f.severity == "error"], path
