"""The XNNPACK delegate payload reader on the real blobs of fixtures/pte/ (exported by executorch 1.5.1).

The blobs are found with executorch's own deserializer (inline data or segment alike), located in
the file by their bytes, and checked three ways: exact nodes per fixture as fixtures/pte/README.md
describes them, a differential against the `flatc` executorch ships (decoding the graph with the
XNNPACK schema it ships), and damaged copies that must give findings, never exceptions.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import subprocess
import time
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import FIXTURES

from quantgate.core.codes import all_finding_codes
from quantgate.core.findings import Finding
from quantgate.formats.pte.xnnpack import NODE_TYPES, read_payload
from quantgate.formats.wire.binary import Budget, View
from quantgate.formats.wire.flatbuffer import FlatBuffer

PTE = FIXTURES / "pte"
XNNPACK_FIXTURES = [
    "8da4w_emb4_xnnpack",
    "conv_fp32_xnnpack",
    "conv_int8_xnnpack",
    "dq8_xnnpack",
    "fp32_xnnpack",
    "int8_xnnpack",
    "int8_xnnpack_inline",
    "partial_8da4w_xnnpack",
    "w8_xnnpack",
]


@functools.cache
def blobs(name: str) -> list[tuple[bytes, int]]:
    """(blob, file offset) of each XnnpackBackend delegate, found by executorch's own deserializer."""
    program_mod = pytest.importorskip("executorch.exir._serialize._program")
    data = (PTE / f"{name}.pte").read_bytes()
    program = program_mod.deserialize_pte_binary(data).program
    out = []
    for plan in program.execution_plan:
        for delegate in plan.delegates:
            if delegate.id != "XnnpackBackend":
                continue
            blob = bytes(program.backend_delegate_data[delegate.processed.index].data)
            offset = data.find(blob)
            assert offset > 0 and data.find(blob, offset + 1) == -1  # exactly once in the file
            out.append((blob, offset))
    return out


def only_blob(name: str) -> tuple[bytes, int]:
    found = blobs(name)
    assert len(found) == 1
    return found[0]


# --- exact content per fixture (fixtures/pte/README.md) ------------------------------------------

# weight ops: (kind, input datatype, weight datatype, weight dims, scheme, num_scales, group, compute,
# params, positions)
EXPECTED = {
    "int8_xnnpack": [
        ("fully_connected", "qint8", "qcint8", (64, 32), "per_channel", 64, None, "int8", 2048, 8),
        ("fully_connected", "qint8", "qcint8", (10, 64), "per_channel", 10, None, "int8", 640, 8),
    ],
    "dq8_xnnpack": [
        ("fully_connected", "qdint8", "qcint8", (64, 32), "per_channel", 64, None, "int8", 2048, 8),
        ("fully_connected", "qdint8", "qcint8", (10, 64), "per_channel", 10, None, "int8", 640, 8),
    ],
    "8da4w_emb4_xnnpack": [
        ("fully_connected", "qdint8", "qbint4", (128, 64), "per_channel_group", 256, 32, "int8", 8192, 8),
        ("fully_connected", "qdint8", "qbint4", (64, 128), "per_channel_group", 256, 32, "int8", 8192, 8),
    ],
    "partial_8da4w_xnnpack": [
        ("fully_connected", "qdint8", "qbint4", (128, 64), "per_channel_group", 256, 32, "int8", 8192, 8),
        ("fully_connected", "qdint8", "qbint4", (64, 128), "per_channel_group", 256, 32, "int8", 8192, 8),
        ("fully_connected", "fp32", "fp32", (256, 64), None, None, None, "fp32", 16384, 8),
    ],
    "w8_xnnpack": [  # torchao weight-only int8 lowered to XNNPACK: the filters came out fp32
        ("fully_connected", "fp32", "fp32", (128, 64), None, None, None, "fp32", 8192, 8),
        ("fully_connected", "fp32", "fp32", (64, 128), None, None, None, "fp32", 8192, 8),
        ("fully_connected", "fp32", "fp32", (256, 64), None, None, None, "fp32", 16384, 8),
    ],
    "fp32_xnnpack": [
        ("fully_connected", "fp32", "fp32", (64, 32), None, None, None, "fp32", 2048, 8),
        ("fully_connected", "fp32", "fp32", (10, 64), None, None, None, "fp32", 640, 8),
    ],
    "conv_int8_xnnpack": [
        ("conv2d", "qint8", "qcint8", (16, 3, 3, 3), "per_channel", 16, None, "int8", 432, 256),
        ("depthwise_conv2d", "qint8", "qcint8", (1, 3, 3, 16), "per_channel", 16, None, "int8", 144, 256),
        ("fully_connected", "qint8", "qcint8", (10, 1024), "per_channel", 10, None, "int8", 10240, 1),
    ],
    "conv_fp32_xnnpack": [
        ("conv2d", "fp32", "fp32", (16, 3, 3, 3), None, None, None, "fp32", 432, 256),
        ("depthwise_conv2d", "fp32", "fp32", (1, 3, 3, 16), None, None, None, "fp32", 144, 256),
        ("fully_connected", "fp32", "fp32", (10, 1024), None, None, None, "fp32", 10240, 1),
    ],
}
EXPECTED["int8_xnnpack_inline"] = EXPECTED["int8_xnnpack"]

NODES = {
    "int8_xnnpack": ["XNNConvert", "fully_connected", "fully_connected", "XNNConvert"],
    "dq8_xnnpack": ["XNNConvert", "fully_connected", "XNNConvert", "fully_connected"],
    "8da4w_emb4_xnnpack": ["XNNConvert", "fully_connected", "XNNConvert", "fully_connected"],
    "partial_8da4w_xnnpack": ["XNNConvert", "fully_connected", "XNNConvert", "fully_connected", "fully_connected"],
    "w8_xnnpack": ["fully_connected"] * 3,
    "fp32_xnnpack": ["fully_connected"] * 2,
    "conv_int8_xnnpack": [
        "XNNConvert",
        "XNNStaticTranspose",
        "conv2d",
        "depthwise_conv2d",
        "XNNMaxPooling2d",
        "XNNStaticTranspose",
        "XNNStaticReshape",
        "fully_connected",
        "XNNConvert",
    ],
    "conv_fp32_xnnpack": [
        "XNNStaticTranspose",
        "conv2d",
        "depthwise_conv2d",
        "XNNMaxPooling2d",
        "XNNStaticTranspose",
        "XNNStaticReshape",
        "fully_connected",
    ],
}
NODES["int8_xnnpack_inline"] = NODES["int8_xnnpack"]

# (blob size, file offset, flatbuffer size, number of values) per fixture
LAYOUT = {
    "8da4w_emb4_xnnpack": (1792, 7424, 1752, 9),
    "conv_fp32_xnnpack": (2336, 1792, 2296, 14),
    "conv_int8_xnnpack": (3584, 2432, 3552, 16),
    "dq8_xnnpack": (1776, 15744, 1736, 9),
    "fp32_xnnpack": (1200, 15488, 1168, 7),
    "int8_xnnpack": (2080, 16000, 2040, 9),
    "int8_xnnpack_inline": (2080, 1152, 2040, 9),  # inside the program flatbuffer
    "partial_8da4w_xnnpack": (2176, 1920, 2144, 12),
    "w8_xnnpack": (1600, 4480, 1560, 10),
}


@pytest.mark.parametrize("name", XNNPACK_FIXTURES)
def test_fixture_weight_ops(name: str) -> None:
    blob, offset = only_blob(name)
    p = read_payload(blob, offset)
    assert p.findings == [] and p.complete and p.ok
    assert [n.kind for n in p.nodes] == NODES[name]
    got = []
    for op in p.weight_ops():
        w = op.weight
        assert w is not None and op.input is not None and op.output is not None
        assert w.is_constant and op.weight_constant
        got.append(
            (
                op.kind,
                op.input.datatype,
                w.datatype,
                w.dims,
                w.quant.scheme if w.quant else None,
                w.quant.num_scales if w.quant else None,
                w.quant.group_size if w.quant else None,
                op.compute,
                op.params,
                op.positions,
            )
        )
    assert got == EXPECTED[name]
    assert (len(blob), offset, p.flatbuffer_size, len(p.values)) == LAYOUT[name]
    # the XH00 header of 1.5.1: flatbuffer at 32, constant region right after it (padded to 16), empty
    assert p.has_header and p.header_length == 30 and p.flatbuffer_offset == 32
    assert p.constant_data_offset == 32 + (p.flatbuffer_size + 15) // 16 * 16 == len(blob)
    assert p.constant_data_size == 0 and p.identifier == b"XN01" and p.version == "0"


def test_int8_values_in_detail() -> None:
    p = read_payload(*only_blob("int8_xnnpack"))
    assert (p.num_externs, p.input_ids, p.output_ids) == (2, [0], [8])
    rows = [(v.id, v.datatype, v.dims, v.bits, v.quantized, v.is_constant, v.flags) for v in p.values]
    assert rows == [
        (0, "fp32", (1, 8, 32), 32, False, False, 1),
        (1, "qint8", (1, 8, 32), 8, True, False, 0),
        (2, "qcint8", (64, 32), 8, True, True, 0),
        (3, "qcint32", (64,), 32, False, True, 0),
        (4, "qint8", (1, 8, 64), 8, True, False, 0),
        (5, "qcint8", (10, 64), 8, True, True, 0),
        (6, "qcint32", (10,), 32, False, True, 0),
        (7, "qint8", (1, 8, 10), 8, True, False, 0),
        (8, "fp32", (1, 8, 10), 32, False, False, 2),
    ]
    act = p.value(1).quant
    assert (act.scheme, act.num_scales, act.zero_point) == ("per_tensor", 1, 29)
    assert act.scale == pytest.approx(0.02266736514866352)
    weight = p.value(2)
    assert (weight.constant_buffer_idx, weight.constant_size, weight.quant.scale_buffer_idx) == (1, 2048, 2)
    assert weight.named_key == "34bbbe67bcf4051e7d96b9286986a79467c087612409097872a19bd0218ecbe0"
    fc = p.weight_ops()[0]
    assert (fc.node.input_id, fc.node.filter_id, fc.node.bias_id, fc.node.output_id) == (1, 2, 3, 4)
    assert fc.bias.datatype == "qcint32" and fc.activation_quantized and fc.weight_quantized
    # constant_data: the reserved entry 0, then weight, scales, bias, bias scales, all named (SHA-256 keys)
    assert [(c.named, c.size) for c in p.constant_data] == [
        (False, 0),
        (True, 2048),
        (True, 256),
        (True, 256),
        (True, 256),
        (True, 640),
        (True, 40),
        (True, 40),
        (True, 40),
    ]
    assert p.constant_data[2].named_key.startswith("scale_")


def test_named_keys_are_the_sha256_of_named_data() -> None:
    """The blob's constant keys are the digests of the bytes the program stores under them."""
    program_mod = pytest.importorskip("executorch.exir._serialize._program")
    import hashlib

    data = (PTE / "conv_int8_xnnpack.pte").read_bytes()
    pte = program_mod.deserialize_pte_binary(data)
    store = pte.named_data
    p = read_payload(*only_blob("conv_int8_xnnpack"))
    for entry in p.constant_data[1:]:
        key = entry.named_key
        raw = bytes(store.buffers[store.pte_data[key].buffer_index])
        assert key.removeprefix("scale_") == hashlib.sha256(raw).hexdigest()
        assert len(raw) == entry.size


def test_bare_flatbuffer_without_header() -> None:
    """Blobs written before XH00 existed are the flatbuffer alone: same graph, no constant region."""
    blob, offset = only_blob("conv_int8_xnnpack")
    bare = blob[32 : 32 + struct.unpack_from("<I", blob, 14)[0]]
    p = read_payload(bare, offset + 32)
    assert p.findings == [] and not p.has_header
    assert [n.kind for n in p.nodes] == NODES["conv_int8_xnnpack"]
    assert len(p.weight_ops()) == 3


def test_memoryview_and_shared_budget() -> None:
    blob, offset = only_blob("partial_8da4w_xnnpack")
    budget = Budget(100_000)
    p = read_payload(memoryview(bytearray(blob)), offset, budget)
    assert p.findings == [] and 0 < budget.used < 200


# --- differential: flatc (shipped with executorch) decoding the graph with the shipped schema -----


def flatc_json(flatbuffer: bytes, tmp: Path) -> dict:
    bin_pkg = pytest.importorskip("executorch.data.bin")
    schema_pkg = pytest.importorskip("executorch.backends.xnnpack.serialization")
    flatc = resources.files(bin_pkg).joinpath("flatc")
    schema = resources.files(schema_pkg).joinpath("schema.fbs")
    (tmp / "g.bin").write_bytes(flatbuffer)
    subprocess.run(
        [
            str(flatc),
            "--json",
            "--strict-json",
            "--defaults-json",
            "--raw-binary",
            "-o",
            str(tmp),
            str(schema),
            "--",
            str(tmp / "g.bin"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    text = (tmp / "g.json").read_text()
    return json.loads(re.sub(r"(:\s*-?)inf\b", r"\1Infinity", text))  # flatc writes bare inf


@pytest.mark.parametrize("name", XNNPACK_FIXTURES)
def test_differential_against_flatc(name: str, tmp_path: Path) -> None:
    blob, offset = only_blob(name)
    p = read_payload(blob, offset)
    ref = flatc_json(blob[p.flatbuffer_offset : p.flatbuffer_offset + p.flatbuffer_size], tmp_path)
    assert (p.num_externs, p.input_ids, p.output_ids) == (ref["num_externs"], ref["input_ids"], ref["output_ids"])
    assert [NODE_TYPES[n.tag][0] for n in p.nodes] == [n["xnode_union_type"] for n in ref["xnodes"]]
    for node, rnode in zip(p.nodes, ref["xnodes"], strict=True):
        assert node.ids == {k: v for k, v in rnode["xnode_union"].items() if k.endswith("_id")}
        assert node.flags == rnode["xnode_union"]["flags"] and node.debug_handle == rnode["debug_handle"]
    assert len(p.values) == len(ref["xvalues"])
    for value, rvalue in zip(p.values, ref["xvalues"], strict=True):
        union = rvalue["xvalue_union"]
        tensor = union["tensor_value"] if rvalue["xvalue_union_type"] == "XNNQuantizedTensorValue" else union
        assert "xnn_datatype_" + value.datatype == tensor["datatype"]
        assert (list(value.dims), value.id, value.constant_buffer_idx, value.flags, value.external_id) == (
            tensor["dims"],
            tensor["id_out"],
            tensor["constant_buffer_idx"],
            tensor["flags"],
            tensor["external_id"],
        )
        if rvalue["xvalue_union_type"] == "XNNQuantizedTensorValue":
            rtype, rq = union["quant_params_type"], union["quant_params"]
            scheme = {
                "PerChannelQuant": "per_channel",
                "PerTensorQuant": "per_tensor",
                "PerTokenDynamicQuant": "dynamic",
                "PerChannelGroupQuant": "per_channel_group",
            }[rtype]
            assert value.quant.scheme == scheme
            if scheme in ("per_channel", "per_channel_group"):
                assert (value.quant.num_scales, value.quant.scale_buffer_idx, value.quant.channel_dim) == (
                    rq["num_scales"],
                    rq["scale_buffer_idx"],
                    rq["channel_dim"],
                )
            if scheme == "per_channel_group":
                assert value.quant.group_size == rq["group_size"]
            if scheme == "per_tensor":
                assert value.quant.zero_point == rq["zero_point"]
                assert value.quant.scale == pytest.approx(rq["scale"], rel=1e-4, abs=1e-6)  # flatc prints 6 decimals
        else:
            assert value.quant is None
    assert [(c.offset, c.size, c.named_key) for c in p.constant_data] == [
        (c["offset"], c["size"], c.get("named_key", "")) for c in ref["constant_data"]
    ]


# --- damaged blobs: exact findings at exact offsets -----------------------------------------------


def codes(p) -> list[str]:
    return [f.code for f in p.findings]


def graph_positions(blob: bytes) -> tuple[FlatBuffer, int]:
    fb = FlatBuffer(View(blob), None, 32, 32 + struct.unpack_from("<I", blob, 14)[0])
    return fb, fb.root()


def test_bad_magic() -> None:
    blob, offset = only_blob("int8_xnnpack")
    p = read_payload(blob[:4] + b"XH01" + blob[8:], offset)
    assert codes(p) == ["XNNPACK_BAD_MAGIC"] and p.findings[0].offset == offset + 4
    assert p.nodes == [] and not p.complete
    assert codes(read_payload(b"", 0)) == ["XNNPACK_BAD_MAGIC"]


def test_header_out_of_range() -> None:
    blob, offset = only_blob("int8_xnnpack")
    big = bytearray(blob)
    struct.pack_into("<I", big, 14, len(blob))  # flatbuffer size past the blob's end
    p = read_payload(bytes(big), offset)
    assert codes(p) == ["XNNPACK_HEADER_OUT_OF_RANGE"] and p.findings[0].offset == offset + 10
    truncated = read_payload(blob[:1000], offset)
    assert codes(truncated) == ["XNNPACK_HEADER_OUT_OF_RANGE"]
    const = bytearray(blob)
    struct.pack_into("<Q", const, 22, 1 << 40)  # constant data past the end: reported, graph still read
    p = read_payload(bytes(const), offset)
    assert codes(p) == ["XNNPACK_HEADER_OUT_OF_RANGE"] and p.findings[0].offset == offset + 18
    assert len(p.weight_ops()) == 2 and p.constant_data_size == 0
    short = read_payload(blob[:20], offset)
    assert codes(short) == ["XNNPACK_HEADER_INVALID"]
    empty = bytearray(blob)
    struct.pack_into("<I", empty, 14, 0)
    assert codes(read_payload(bytes(empty), offset)) == ["XNNPACK_HEADER_INVALID"]


def test_bad_identifier() -> None:
    blob, offset = only_blob("int8_xnnpack")
    p = read_payload(blob[:36] + b"XN99" + blob[40:], offset)
    assert codes(p) == ["XNNPACK_BAD_IDENTIFIER"] and p.findings[0].offset == offset + 36
    assert len(p.weight_ops()) == 2  # the graph is still read for the report


def test_bad_node_union_tag_and_value_id() -> None:
    blob, offset = only_blob("int8_xnnpack")
    fb, root = graph_positions(blob)
    nodes = fb.tables(root, 1)
    fc = nodes[1]
    tag_pos = fb.field_pos(fc, 0)
    damaged = bytearray(blob)
    damaged[tag_pos] = 200
    p = read_payload(bytes(damaged), offset)
    assert codes(p) == ["XNNPACK_BAD_UNION_TAG"] and p.findings[0].offset == offset + fc
    assert [n.kind for n in p.nodes] == ["XNNConvert", "fully_connected", "XNNConvert"]

    _, inner = fb.union(fc, 0)
    filter_pos = fb.field_pos(inner, 1)
    damaged = bytearray(blob)
    struct.pack_into("<I", damaged, filter_pos, 999)
    p = read_payload(bytes(damaged), offset)
    assert codes(p) == ["XNNPACK_VALUE_ID_OUT_OF_RANGE"]
    f = p.findings[0]
    assert (f.offset, f.field, f.op) == (offset + fc, "xnodes[1].filter_id", "XNNFullyConnected")
    assert p.weight_ops()[0].weight is None  # the op stays, its weight is unknown


def test_bad_datatype_and_constant_index() -> None:
    blob, offset = only_blob("dq8_xnnpack")
    fb, root = graph_positions(blob)
    value = fb.tables(root, 2)[2]  # the first qcint8 filter
    _, quantized = fb.union(value, 0)
    tensor = fb.table(quantized, 0)
    damaged = bytearray(blob)
    struct.pack_into("<h", damaged, fb.field_pos(tensor, 0), 99)
    struct.pack_into("<I", damaged, fb.field_pos(tensor, 3), 77)
    p = read_payload(bytes(damaged), offset)
    assert codes(p) == ["XNNPACK_BAD_DATATYPE", "XNNPACK_CONSTANT_INDEX_OUT_OF_RANGE"]
    assert [f.offset for f in p.findings] == [offset + tensor, offset + value]
    w = p.weight_ops()[0].weight
    assert (w.datatype, w.bits, w.quantized) == ("datatype99", None, False)


def test_constant_size_mismatch() -> None:
    blob, offset = only_blob("partial_8da4w_xnnpack")
    fb, root = graph_positions(blob)
    entry = fb.tables(root, 8)[7]  # the fp32 [256, 64] filter: 65536 bytes
    damaged = bytearray(blob)
    struct.pack_into("<Q", damaged, fb.field_pos(entry, 1), 4096)
    p = read_payload(bytes(damaged), offset)
    assert codes(p) == ["XNNPACK_CONSTANT_SIZE_MISMATCH"]
    assert "needs 65536 bytes, its constant data has 4096" in p.findings[0].message


def test_budget_exhausted() -> None:
    blob, offset = only_blob("conv_int8_xnnpack")
    p = read_payload(blob, offset, Budget(10))
    assert codes(p) == ["READ_BUDGET_EXHAUSTED"] and not p.complete


def test_every_emitted_code_is_registered() -> None:
    registered = all_finding_codes()
    for code in (
        "XNNPACK_BAD_MAGIC",
        "XNNPACK_VALUE_ID_OUT_OF_RANGE",
        "XNNPACK_TOO_MANY_FINDINGS",
        "READ_BUDGET_EXHAUSTED",
    ):
        assert code in registered


# --- hypothesis: damaged real blobs give findings only, quickly ----------------------------------


@functools.cache
def all_blobs() -> list[tuple[bytes, int]]:
    return [b for name in XNNPACK_FIXTURES for b in blobs(name)]


def damage(blob: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(blob)
    for kind, pos, value in ops:
        if not data:
            break
        pos %= len(data)
        if kind == 0:
            data[pos] = value & 0xFF
        elif kind == 1:  # a 0xFFFFFFFF or small word stamped over an offset or length
            data[pos : pos + 4] = struct.pack("<I", 0xFFFFFFFF if value % 2 else value)
        elif kind == 2:
            del data[pos:]
        else:
            data[pos:pos] = bytes([value & 0xFF]) * (1 + value % 8)
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(min_value=0, max_value=100),
    ops=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 1 << 16)), min_size=1, max_size=6
    ),
)
def test_damaged_blobs_give_findings_not_exceptions(which: int, ops: list[tuple[int, int, int]]) -> None:
    pool = all_blobs()
    blob, offset = pool[which % len(pool)]
    damaged = damage(blob, ops)
    start = time.perf_counter()
    p = read_payload(damaged, offset)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    registered = all_finding_codes_cached()
    for f in p.findings:
        assert isinstance(f, Finding) and f.code in registered
        assert f.offset is None or offset <= f.offset < offset + len(damaged)  # inside the blob
    for op in p.weight_ops():  # the summary a PTE reader uses never raises either
        op.to_dict()
    if damaged == blob:
        assert p.findings == []


@functools.cache
def all_finding_codes_cached() -> dict[str, str]:
    return all_finding_codes()


def shared_table_bomb(n: int) -> bytes:
    """A valid XN01 graph whose xvalues vector repeats one value table n times (shared offsets)."""
    flatbuffers = pytest.importorskip("flatbuffers")
    b = flatbuffers.Builder(1024)
    b.StartVector(4, 2, 4)
    b.PrependUint32(4096)
    b.PrependUint32(4096)
    dims = b.EndVector()
    b.StartObject(7)  # XNNTensorValue: qcint8 [4096, 4096], constant 1
    b.PrependInt16Slot(0, 6, 0)
    b.PrependUint32Slot(1, 2, 0)
    b.PrependUOffsetTRelativeSlot(2, dims, 0)
    b.PrependUint32Slot(3, 1, 0)
    tensor = b.EndObject()
    b.StartObject(2)  # XValue { XNNTensorValue }
    b.PrependUint8Slot(0, 1, 0)
    b.PrependUOffsetTRelativeSlot(1, tensor, 0)
    value = b.EndObject()
    b.StartVector(4, n, 4)
    for _ in range(n):
        b.PrependUOffsetTRelative(value)
    values = b.EndVector()
    b.StartObject(9)
    b.PrependUOffsetTRelativeSlot(2, values, 0)
    b.Finish(b.EndObject(), file_identifier=b"XN01")
    graph = bytes(b.Output())
    return b"\0\0\0\0XH00" + struct.pack("<HIIIQ", 30, 32, len(graph), 32 + len(graph), 0) + b"\0\0" + graph


def test_shared_table_bomb_is_read_once() -> None:
    blob = shared_table_bomb(20_000)
    assert len(blob) < 100_000
    start = time.perf_counter()
    p = read_payload(blob, 0)
    assert time.perf_counter() - start < 5.0
    assert len(p.values) == 1 and p.values[0].dims == (4096, 4096)
    assert [f.code for f in p.findings].count("XNNPACK_DUPLICATE_VALUE_ID") == 20  # then capped
    assert p.findings[-1].code == "XNNPACK_TOO_MANY_FINDINGS"
    assert "19979 more XNNPACK_DUPLICATE_VALUE_ID" in p.findings[-1].message


@pytest.fixture(scope="module")
def deconv_bmm_program(tmp_path_factory) -> bytes:
    """A real export with a transposed conv, a batch matmul with a parameter and one of two activations."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = torch.nn.ConvTranspose2d(4, 8, 3, stride=2, padding=1, output_padding=1)
            self.w = torch.nn.Parameter(torch.randn(2, 16, 32))

        def forward(self, x, y):
            return self.up(x), torch.bmm(y, self.w), torch.bmm(y, y.transpose(1, 2))

    torch.manual_seed(0)
    args = (torch.randn(1, 4, 5, 5), torch.randn(2, 8, 16))
    ep = torch.export.export(Model().eval(), args)
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def test_conv_transpose_and_batch_matmul(deconv_bmm_program: bytes) -> None:
    program_mod = pytest.importorskip("executorch.exir._serialize._program")
    data = deconv_bmm_program
    program = program_mod.deserialize_pte_binary(data).program
    plan = program.execution_plan[0]
    (delegate,) = plan.delegates
    blob = bytes(program.backend_delegate_data[delegate.processed.index].data)
    p = read_payload(blob, data.find(blob))
    assert p.findings == []
    assert [n.kind for n in p.nodes] == [
        "XNNStaticTranspose", "conv_transpose2d", "XNNStaticTranspose", "batch_matmul", "XNNStaticTranspose",
        "batch_matmul",
    ]  # fmt: skip
    deconv, bmm = p.weight_ops()  # the bmm of two activations is not a weight op
    # OHWI [8, 3, 3, 4]; each of the 5x5 input pixels scatters the whole kernel
    assert (deconv.kind, deconv.weight.dims, deconv.params, deconv.positions) == ("conv_transpose2d", (8, 3, 3, 4),
                                                                                   288, 25)  # fmt: skip
    assert deconv.weight_constant and deconv.output.dims == (1, 10, 10, 8)
    # XNNPACK takes the parameter as a delegate input: the DelegateCall argument names the program constant
    assert (bmm.kind, bmm.weight.dims, bmm.weight_constant, bmm.weight_external) == (
        "batch_matmul", (2, 16, 32), False, True)  # fmt: skip
    (call,) = [i.instr_args for c in plan.chains for i in c.instructions]
    operand = plan.values[call.args[bmm.weight.external_id]].val
    assert list(operand.sizes) == [2, 16, 32] and operand.data_buffer_idx > 0 and operand.allocation_info is None
    assert (bmm.params, bmm.positions) == (1024, 8)  # MACs 2 x 8 x 16 x 32 = 1024 x 8
