"""One per-code finding cap (findings.FINDINGS_PER_CODE) for every reader: the first 20 findings of a code are
listed, the rest counted in one info notice under the reader's own notice code."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from quantgate.core import findings as F
from quantgate.formats.pte import reader as pte
from quantgate.formats.safetensors import reader as st
from quantgate.formats.wire.binary import View


def _counts(found: list[F.Finding]) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in found:
        out[f.code] = out.get(f.code, 0) + 1
    return out


def test_the_cap_is_twenty_and_the_notice_is_info() -> None:
    out: list[F.Finding] = []
    capped = F.CappedFindings(out, "X_CAPPED")
    for i in range(25):
        capped.add(F.error("X_BAD", f"bad {i}"))
    capped.add(F.warning("X_ODD", "odd"))
    assert capped.close() is out
    assert _counts(out) == {"X_BAD": 20, "X_ODD": 1, "X_CAPPED": 1}
    notice = out[-1]
    assert (notice.severity, notice.field) == (F.INFO, "X_BAD")
    assert notice.message == "5 more X_BAD finding(s) not listed (25 in all)"
    assert capped.close() == out and len(out) == 22  # closing twice adds nothing


def test_safetensors_caps_at_twenty_with_an_info_notice() -> None:
    header = {f"t{i}": {"dtype": "I4", "shape": [1], "data_offsets": [0, 0]} for i in range(500)}
    raw = json.dumps(header).encode()
    head = st.parse_header(View(struct.pack("<Q", len(raw)) + raw))
    assert _counts(head.findings)["ST_UNKNOWN_DTYPE"] == 20
    notice = head.findings[-1]
    assert (notice.code, notice.severity) == ("ST_TOO_MANY_FINDINGS", F.INFO)
    assert notice.message == "480 more ST_UNKNOWN_DTYPE finding(s) not listed (500 in all)"


def test_onnx_caps_at_twenty_with_an_info_notice(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from tests.test_onnx_reader import bare, build, reader

    inits = [bare(f"t{i}", TensorProto.FLOAT, [2], [1.0]) for i in range(40)]
    path = build(tmp_path, [helper.make_node("Identity", ["x"], ["y"])], inits)
    found = reader.read(path).structural_findings
    assert _counts(found) == {"ONNX_TENSOR_SIZE_MISMATCH": 20, "ONNX_FINDINGS_CAPPED": 1}
    assert found[-1].severity == F.INFO
    assert found[-1].message == "20 more ONNX_TENSOR_SIZE_MISMATCH finding(s) not listed (40 in all)"


def test_pte_caps_at_twenty_with_a_counted_notice() -> None:
    prog = pte.Program("p.pte", 0)
    for i in range(30):
        prog.add(F.error("PTE_BAD_SHAPE", f"tensor {i}"))
    prog.capped.close()
    assert _counts(prog.findings) == {"PTE_BAD_SHAPE": 21}
    notice = prog.findings[-1]
    assert notice.severity == F.INFO and notice.message == "10 more PTE_BAD_SHAPE finding(s) not listed (30 in all)"
