"""Damaged copies of valid ONNX fixtures (bit flips, 0xFF stamps, truncations, insertions, huge
varint lengths): the reader returns findings, never raises, and stays fast."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from quantgate.core.inventory import Inventory
from quantgate.formats.onnx import reader

SOURCES = {
    name: (FIXTURES / "onnx" / name).read_bytes()
    for name in ("static_qop.onnx", "matmulnbits4.onnx", "qdq_int4_matmul.onnx", "broken/ext_ok/model.onnx")
}
# the external-data case reads its side file's size: it sits next to every damaged copy
WEIGHTS = (FIXTURES / "onnx" / "broken" / "ext_ok" / "weights.bin").read_bytes()
LIMIT_S = 2.0
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read(data: bytes) -> Inventory:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        (Path(tmp) / "weights.bin").write_bytes(WEIGHTS)
        started = time.perf_counter()
        inv = reader.read(str(path))
        elapsed = time.perf_counter() - started
    assert elapsed < LIMIT_S, f"read took {elapsed:.2f} s"
    assert isinstance(inv, Inventory)
    for finding in inv.structural_findings + inv.semantic_findings:
        assert finding.code in reader.FINDING_CODES or finding.code in (
            "READ_BUDGET_EXHAUSTED",
            "FILE_UNREADABLE",
        )
    return inv


def _huge_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(SOURCES[draw(st.sampled_from(sorted(SOURCES)))])
    kind = draw(st.sampled_from(["flip", "stamp", "truncate", "insert", "huge"]))
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            p = draw(st.integers(0, len(data) - 1))
            data[p] ^= 1 << draw(st.integers(0, 7))
    elif kind == "stamp":
        width = draw(st.integers(1, 16))
        data[pos : pos + width] = b"\xff" * len(data[pos : pos + width])
    elif kind == "truncate":
        del data[pos:]
    elif kind == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
    else:  # a tag followed by a huge varint length or count
        tag = draw(st.sampled_from([b"\x3a", b"\x0a", b"\x2a", b"\x4a", b"\x08"]))
        data[pos:pos] = tag + _huge_varint(draw(st.sampled_from([2**31, 2**40, 2**63 - 1, 2**64 - 1])))
    return bytes(data)


@SETTINGS
@given(damaged())
def test_damaged_files_only_give_findings(data: bytes) -> None:
    _read(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=512))
def test_random_bytes_after_an_ir_version(data: bytes) -> None:
    _read(b"\x08\x0a" + data)


def test_deep_nesting_is_capped() -> None:
    """A graph whose node's attribute holds a graph, 200 levels deep: a finding, not a RecursionError."""

    def msg(field: int, payload: bytes) -> bytes:
        return bytes([field << 3 | 2]) + _huge_varint(len(payload)) + payload

    graph = b""
    for _ in range(200):
        attribute = msg(1, b"body") + msg(6, graph)  # AttributeProto.name, .g
        node = msg(4, b"If") + msg(5, attribute)  # NodeProto.op_type, .attribute
        graph = msg(1, node)  # GraphProto.node
    data = b"\x08\x0a" + msg(7, graph) + msg(8, b"\x10\x15")
    inv = _read(data)
    assert [f.code for f in inv.structural_findings] == ["ONNX_DEPTH_EXCEEDED"]


def test_huge_declared_length_is_not_allocated() -> None:
    data = b"\x08\x0a\x3a" + _huge_varint(2**62) + b"\x00" * 64
    inv = _read(data)
    assert [f.code for f in inv.structural_findings] == ["ONNX_LENGTH_PAST_END"]
