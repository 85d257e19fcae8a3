"""Issue 14, ExecuTorch: what real exports hold, counted by pte-program and pte-inspector alike.

Fixtures: fixtures/pte/exports/ (make_export_fixtures.py; numbers by hand in its README.md) and the
older real exports of fixtures/pte/. Damaged copies are made here by patching one field located with
the readers' own bounded flatbuffer walker.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, run_json
from quantgate.core.bounds import FAIL_LEVEL, parse_bound
from quantgate.core.coverage import coverage_metrics
from quantgate.core.jsonschemas import validate
from quantgate.formats.pte import reader
from quantgate.formats.pte import schema as S
from quantgate.formats.wire.binary import View
from quantgate.formats.wire.flatbuffer import FlatBuffer
from quantgate.guards.base import GuardConfig, decide_status, evaluate_bounds
from quantgate.guards.pte_inspector import analyse, run_runner

PTE = FIXTURES / "pte"
EXPORTS = PTE / "exports"
HAVE_RUNTIME = all(importlib.util.find_spec(m) is not None for m in ("executorch", "torch"))
needs_runtime = pytest.mark.skipif(not HAVE_RUNTIME, reason="executorch/torch not installed")

# the Mixer's five linears, in execution order: (weight shape, params, output positions)
MIXER = [((32, 16), 512, 8), ((4, 4), 16, 64), ((64, 32), 2048, 8), ((32, 64), 2048, 8), ((8, 32), 256, 8)]
MIXER_PARAMS = 4880  # 512 + 16 + 2048 + 2048 + 256
MIXER_FLOPS = 79872  # 2 x (512·8 + 16·64 + 2048·8 + 2048·8 + 256·8)


def _patch(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def _codes(path: Path) -> list[str]:
    return [f.code for f in reader.read(str(path)).structural_findings]


# --- the portable 3-D linear (static reader) ----------------------------------------------------


@pytest.mark.parametrize("name", ["mixer_fp32", "mixer_int8"])
def test_portable_3d_linear_finds_every_layer(name: str) -> None:
    portable = reader.read(str(EXPORTS / f"{name}_portable.pte"))
    xnnpack = reader.read(str(EXPORTS / f"{name}_xnnpack.pte"))
    for inv in (portable, xnnpack):
        assert [(x.shape, x.params, x.out_positions) for x in inv.layers] == MIXER
        assert sum(x.flops for x in inv.layers) == MIXER_FLOPS
    # the token-mixing linear: permute_copy -> expand_copy -> (a static view: no instruction) -> bmm
    tok = portable.layers[1]
    assert tok.detail["op"] == "aten::bmm.out"
    assert tok.detail["via"][:2] == ["view", "aten::expand_copy"]
    quantized = name == "mixer_int8"
    assert [x.quantized for x in portable.layers] == [quantized] * 5
    p_metrics, _ = coverage_metrics(portable.layers)
    x_metrics, _ = coverage_metrics(xnnpack.layers)
    assert p_metrics["params_total"] == x_metrics["params_total"] == MIXER_PARAMS
    assert p_metrics["coverage"]["params"] == x_metrics["coverage"]["params"]
    assert p_metrics["coverage"]["flops"] == x_metrics["coverage"]["flops"]
    assert p_metrics["coverage"]["params"]["int8"] == (1.0 if quantized else 0.0)


def test_torchao_8da8w_export_counts_like_pt2e() -> None:
    inv = reader.read(str(EXPORTS / "mixer_8da8w_xnnpack.pte"))
    assert [(x.shape, x.params, x.out_positions, x.dtype, x.compute) for x in inv.layers] == [
        (shape, params, positions, "qcint8", "int8") for shape, params, positions in MIXER]


# --- mutable data segment ----------------------------------------------------------------------

MUTABLE = EXPORTS / "mutable_state_portable.pte"


def _mutable_segment(data: bytes) -> tuple[FlatBuffer, int]:
    fb = FlatBuffer(View(data))
    return fb, fb.tables(fb.root(), S.PROGRAM_MUTABLE_SEGMENTS)[0]


def test_mutable_segment_of_a_sound_program() -> None:
    prog = reader.parse(str(MUTABLE))
    assert prog.findings == []
    assert (prog.mutable_segments, prog.mutable_offsets) == (1, [0, 0, 128])
    # k_cache fp32 [1,8,4] (128 bytes) and cache_pos int64 [8] (64 bytes) keep their initial state there
    assert prog.facts["mutable_initial_bytes"] == 192
    assert prog.segments[prog.mutable_segment].size == 192


def test_mutable_state_past_its_segment(tmp_path: Path) -> None:
    data = MUTABLE.read_bytes()
    fb, sub = _mutable_segment(data)
    offsets = fb.vector(sub, S.SUBSEGMENT_OFFSETS, 8)
    (tmp_path / "m.pte").write_bytes(_patch(data, offsets.pos(2), "<Q", 160))  # cache_pos's 64 bytes from +160
    assert _codes(tmp_path / "m.pte") == ["PTE_MUTABLE_DATA_OUT_OF_RANGE"]
    # an offset table shorter than the buffers' indices
    (tmp_path / "m.pte").write_bytes(_patch(data, offsets.pos(0) - 4, "<I", 2))
    assert _codes(tmp_path / "m.pte") == ["PTE_MUTABLE_DATA_OUT_OF_RANGE"]


def test_mutable_segment_index_out_of_range(tmp_path: Path) -> None:
    data = MUTABLE.read_bytes()
    fb, sub = _mutable_segment(data)
    (tmp_path / "m.pte").write_bytes(_patch(data, fb.field_pos(sub, S.SUBSEGMENT_INDEX), "<I", 7))
    assert _codes(tmp_path / "m.pte") == ["PTE_INDEX_OUT_OF_RANGE"]


# --- .ptd contents -------------------------------------------------------------------------------


def _with_ptd(tmp_path: Path, folder: Path, program: str, ptd: str, data: bytes) -> Path:
    shutil.copy(folder / program, tmp_path / program)
    (tmp_path / ptd).write_bytes(data)
    return tmp_path / program


def _ptd_segment_size(data: bytes, index: int) -> int:
    fb = FlatBuffer(View(data), None, 0, struct.unpack_from("<Q", data, 16)[0] + struct.unpack_from("<Q", data, 24)[0])
    return fb.field_pos(fb.tables(fb.root(), 1)[index], 1)


@pytest.mark.parametrize(
    ("folder", "program", "ptd"),
    [(PTE / "ext", "fp32_portable_extconst.pte", "_default_external_constant.ptd"),
     (PTE / "more" / "extw", "tinylm_xnnpack_extw.pte", "weights.ptd")],
)
def test_ptd_cut_short_or_too_small(tmp_path: Path, folder: Path, program: str, ptd: str) -> None:
    data = (folder / ptd).read_bytes()
    assert reader.read_ptd(str(folder / ptd))[1] == []
    assert _codes(_with_ptd(tmp_path, folder, program, ptd, data)) == []
    # cut short: the header's segment data runs past the end of the file
    path = _with_ptd(tmp_path, folder, program, ptd, data[:-1000])
    found = reader.read(str(path)).structural_findings
    assert [f.code for f in found][:2] == ["PTE_PTD_INVALID", "PTE_PTD_INVALID"]
    assert set(f.code for f in found) == {"PTE_PTD_INVALID"}
    assert f"{ptd}: the header says the file is {len(data):,} bytes" in found[0].message
    # a segment smaller than the tensor the program takes from it
    path = _with_ptd(tmp_path, folder, program, ptd, _patch(data, _ptd_segment_size(data, 0), "<Q", 8))
    assert _codes(path) == ["PTE_PTD_TENSOR_MISMATCH"]


def test_ptd_tensor_layout_disagrees_with_the_program(tmp_path: Path) -> None:
    folder = PTE / "ext"
    data = (folder / "_default_external_constant.ptd").read_bytes()
    keys, _ = reader.read_ptd(str(folder / "_default_external_constant.ptd"))
    assert keys["emb.weight"] == (12800, 6, (100, 32))
    at = data.index(struct.pack("<iii", 2, 100, 32))  # the sizes vector of emb.weight's TensorLayout
    path = _with_ptd(tmp_path, folder, "fp32_portable_extconst.pte", "w.ptd", _patch(data, at + 8, "<i", 31))
    found = reader.read(str(path)).structural_findings
    assert [f.code for f in found] == ["PTE_PTD_TENSOR_MISMATCH"]
    assert "'emb.weight' is fp32 [100, 31] in the .ptd, the program expects fp32 [100, 32]" in found[0].message


def test_not_a_ptd(tmp_path: Path) -> None:
    path = _with_ptd(tmp_path, PTE / "ext", "fp32_portable_extconst.pte", "w.ptd", b"\0" * 64)
    assert _codes(path) == ["PTE_PTD_INVALID", "PTE_EXTERNAL_DATA_MISSING"]


# --- num_externs ------------------------------------------------------------------------------


def _num_externs_pos(data: bytes) -> int:
    prog = reader.parse_view(View(data), "x")
    start = prog.plans[0].delegates[0].span[0]
    fb_off, fb_size = struct.unpack_from("<II", data, start + 10)
    fb = FlatBuffer(View(data), None, start + fb_off, start + fb_off + fb_size)
    return fb.field_pos(fb.root(), 3)


@pytest.mark.parametrize(("externs", "codes"), [
    (1, ["XNNPACK_EXTERNS_MISMATCH", "XNNPACK_EXTERNS_MISMATCH"]),  # external id 1 >= 1; 2 args passed
    (3, ["XNNPACK_EXTERNS_MISMATCH"]),  # 2 args passed to a graph of 3 externs
])
def test_num_externs_changed(tmp_path: Path, externs: int, codes: list[str]) -> None:
    data = (PTE / "int8_xnnpack.pte").read_bytes()
    pos = _num_externs_pos(data)
    assert struct.unpack_from("<I", data, pos)[0] == 2
    (tmp_path / "m.pte").write_bytes(_patch(data, pos, "<I", externs))
    assert _codes(tmp_path / "m.pte") == codes


# --- pte-inspector: executed ops with shapes ----------------------------------------------------

# programs whose executed weight ops pte-inspector measures on every basis
RUNS = [
    "exports/mixer_fp32_portable", "exports/mixer_fp32_xnnpack", "exports/mixer_int8_portable",
    "exports/mixer_int8_xnnpack", "exports/mixer_8da8w_xnnpack", "exports/mutable_state_portable",
    "int8_xnnpack", "dq8_xnnpack", "8da4w_emb4_xnnpack", "partial_8da4w_xnnpack", "w8_xnnpack",
    "conv_fp32_xnnpack", "conv_int8_xnnpack", "more/bmm_xnnpack",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if not HAVE_RUNTIME:
        pytest.skip("executorch/torch not installed")
    paths = {name: str(PTE / f"{name}.pte") for name in RUNS}
    run = run_runner(list(paths.values()), timeout_s=900, workdir=str(tmp_path_factory.mktemp("dumps")))
    assert "error" not in run, run
    return {name: run["results"][path] for name, path in paths.items()}


def _status(outcome: Any, *bounds: str) -> str:
    config = GuardConfig(require=[parse_bound(b, FAIL_LEVEL) for b in bounds])
    return decide_status(outcome.findings, evaluate_bounds(config, outcome.metrics))


@needs_runtime
@pytest.mark.parametrize("name", RUNS)
def test_inspector_params_and_flops_equal_pte_program(runs: dict[str, dict[str, Any]], name: str) -> None:
    entry = runs[name]
    assert entry["status"] == "ok", entry
    outcome = analyse(entry)
    m = outcome.metrics
    assert [f.code for f in outcome.findings] == []
    static, static_unquantized = coverage_metrics(reader.read(str(PTE / f"{name}.pte")).layers)
    assert m["shapes_known"] is True
    assert m["weight_ops"] == static["weight_ops"]
    assert m["params_total"] == static["params_total"]
    for basis in ("ops", "params", "flops"):
        for share in ("quantized", "int8", "int4", "unknown"):
            assert m["coverage"][basis][share] == pytest.approx(static["coverage"][basis][share]), (basis, share)
    # the layers left unquantized carry their shapes and parameter counts, as pte-program's do
    assert [(u["shape"], u["params"]) for u in outcome.unquantized] == [
        (u["shape"], u["params"]) for u in static_unquantized]


@needs_runtime
def test_inspector_mixer_by_hand(runs: dict[str, dict[str, Any]]) -> None:
    for name in ("exports/mixer_fp32_portable", "exports/mixer_fp32_xnnpack"):
        outcome = analyse(runs[name])
        m = outcome.metrics
        assert [tuple(r["shape"]) for r in m["executed_weight_ops"]] == [s for s, _, _ in MIXER]
        assert (m["weight_ops"], m["params_total"]) == (5, MIXER_PARAMS)
        assert [u["params"] for u in outcome.unquantized] == [p for _, p, _ in MIXER]
        assert [u["shape"] for u in outcome.unquantized] == [list(s) for s, _, _ in MIXER]
    # the batch matmul whose constant operand is a delegate input: 256 params, 2 x 256 x 4 flops
    bmm = analyse(runs["more/bmm_xnnpack"]).metrics
    assert (bmm["weight_ops"], bmm["params_total"]) == (1, 256)
    assert bmm["executed_weight_ops"][0]["shape"] == [2, 8, 16]


@needs_runtime
@pytest.mark.parametrize(("name", "bound", "status"), [
    ("exports/mixer_int8_xnnpack", "coverage.params.int8>=0.9", "PASS"),
    ("exports/mixer_8da8w_xnnpack", "coverage.flops.int8>=0.9", "PASS"),
    ("int8_xnnpack", "coverage.params.int8>=0.9", "FAIL"),  # 2688 / 5888: the fp32 embedding
    ("int8_xnnpack", "coverage.flops.int8>=0.9", "PASS"),
    ("w8_xnnpack", "coverage.params.quantized>=0.5", "FAIL"),
])
def test_inspector_params_bounds(runs: dict[str, dict[str, Any]], name: str, bound: str, status: str) -> None:
    assert _status(analyse(runs[name]), bound) == status


@needs_runtime
def test_inspector_unmapped_delegate_keeps_ops_only(runs: dict[str, dict[str, Any]]) -> None:
    entry = runs["exports/mixer_int8_xnnpack"]
    nodes = entry["delegates"]["0"]
    assert len(nodes) == 5
    outcome = analyse(dict(entry, delegates={"0": nodes[:4]}))  # a node short: the ops cannot be aligned
    assert [f.code for f in outcome.findings] == ["PTE_RUNTIME_DELEGATE_UNMAPPED"]
    m = outcome.metrics
    assert set(m["coverage"]) == {"ops"} and m["shapes_known"] is False
    assert m["coverage"]["ops"]["int8"] == 1.0
    assert _status(outcome, "coverage.params.int8>=0.9") == "ERROR"  # the metric is not produced


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, 12000))
def test_damaged_ptd_never_raises(tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]],
                                  cut: int) -> None:
    data = bytearray((PTE / "more" / "extw" / "weights.ptd").read_bytes()[: max(cut, 1)])
    for pos, value in edits:
        data[pos % len(data)] = value
    path = tmp_path_factory.mktemp("ptd") / "w.ptd"
    path.write_bytes(bytes(data))
    started = time.perf_counter()
    keys, problems = reader.read_ptd(str(path))
    assert isinstance(keys, dict) and all(isinstance(p, str) for p in problems)
    assert time.perf_counter() - started < 1.0


@needs_runtime
def test_cli_params_bound_on_pte_inspector() -> None:
    # the policy bound of issue 14: an ERROR (metric not measured) before delegated ops had shapes
    code, result = run_json("guard", "pte-inspector", str(EXPORTS / "mixer_int8_xnnpack.pte"),
                            "--require", "coverage.params.int8>=0.9", timeout=300)
    assert (code, result["status"]) == (0, "PASS"), result["message"]
    assert validate(result, "guard-result") == []
    m = result["metrics"]
    cov = m["coverage"]
    assert (m["params_total"], cov["params"]["int8"], cov["flops"]["int8"]) == (MIXER_PARAMS, 1.0, 1.0)
    assert [r["params"] for r in m["executed_weight_ops"]] == [p for _, p, _ in MIXER]
