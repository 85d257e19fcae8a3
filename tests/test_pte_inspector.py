"""pte-inspector: the ExecuTorch runtime guard.

One child process runs every committed PTE fixture (plus two damaged copies) once, because each
child pays ~6 s (more on a busy machine) of torch import; the per-fixture tests then classify its
JSON. Coverage numbers are the ones a person computes by hand in fixtures/pte/README.md. The CLI is
exercised end to end on the external-weights program, on a program the runtime rejects, on
injected child faults (test-only `--param _fault=...`) and with executorch hidden.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, cli_env, run_cli, run_json
from quantgate.core.bounds import FAIL_LEVEL, parse_bound
from quantgate.core.jsonschemas import validate
from quantgate.formats.pte.xnnpack import DATATYPE_TOKENS, DATATYPES, INT_ACTIVATIONS, TOKEN_ROLES, XNN_TOKENS
from quantgate.guards.base import GuardConfig, decide_status, evaluate_bounds
from quantgate.guards.pte_inspector import (
    FINDING_CODES,
    analyse,
    classify_descriptor,
    parse_xnnpack_event,
    run_runner,
)
from quantgate.runtime import etdump, program_table
from quantgate.runtime.pte_runner import error_code

PTE = FIXTURES / "pte"
HAVE_RUNTIME = all(importlib.util.find_spec(m) is not None for m in ("executorch", "torch"))
needs_runtime = pytest.mark.skipif(not HAVE_RUNTIME, reason="executorch/torch not installed")

FIXTURE_NAMES = [
    "fp32_portable", "fp32_xnnpack", "int8_xnnpack", "int8_xnnpack_inline", "dq8_xnnpack", "int8_portable",
    "emb8_portable", "8da4w_emb4_xnnpack", "partial_8da4w_xnnpack", "w8_xnnpack", "conv_fp32_xnnpack",
    "conv_int8_xnnpack", "qkv_cache_portable",
]
THIRD, TWO_THIRDS = 1 / 3, 2 / 3

# file -> (weight ops, ops: quantized, int8, int4, integer compute), from fixtures/pte/README.md
EXPECTED_OPS = {
    "fp32_portable": (3, 0.0, 0.0, 0.0, 0.0),
    "fp32_xnnpack": (3, 0.0, 0.0, 0.0, 0.0),
    "int8_xnnpack": (3, TWO_THIRDS, TWO_THIRDS, 0.0, TWO_THIRDS),
    "int8_xnnpack_inline": (3, TWO_THIRDS, TWO_THIRDS, 0.0, TWO_THIRDS),
    "dq8_xnnpack": (3, TWO_THIRDS, TWO_THIRDS, 0.0, TWO_THIRDS),
    "int8_portable": (3, TWO_THIRDS, TWO_THIRDS, 0.0, 0.0),
    "emb8_portable": (3, THIRD, THIRD, 0.0, 0.0),
    "8da4w_emb4_xnnpack": (3, 1.0, 0.0, 1.0, TWO_THIRDS),
    "partial_8da4w_xnnpack": (3, TWO_THIRDS, 0.0, TWO_THIRDS, TWO_THIRDS),
    "w8_xnnpack": (3, 0.0, 0.0, 0.0, 0.0),
    "conv_fp32_xnnpack": (3, 0.0, 0.0, 0.0, 0.0),
    "conv_int8_xnnpack": (3, 1.0, 1.0, 0.0, 1.0),
}
# linear/conv ops only (embedding lookups left out): (ops, int8, int4, integer compute)
EXPECTED_MATMUL = {
    "int8_xnnpack": (2, 1.0, 0.0, 1.0),
    "dq8_xnnpack": (2, 1.0, 0.0, 1.0),
    "int8_portable": (2, 1.0, 0.0, 0.0),  # int8 storage, fp32 addmm
    "8da4w_emb4_xnnpack": (2, 0.0, 1.0, 1.0),
    "partial_8da4w_xnnpack": (3, 0.0, TWO_THIRDS, TWO_THIRDS),
    "w8_xnnpack": (3, 0.0, 0.0, 0.0),  # the silent fp32 fold
    "conv_int8_xnnpack": (3, 1.0, 0.0, 1.0),
}
# executed weight ops in instruction order: (backend, native op) or (backend, kind, weight bits,
# compute) for a delegated op. The classification, not the descriptor: the XNNPACK runtime picks its
# activation type by CPU (QD8, QDU8 on AVX512-VNNI, QP8 with KleidiAI), the weights it runs do not change
_FC8, _FC4 = ("XnnpackBackend", "linear", 8, "int8"), ("XnnpackBackend", "linear", 4, "int8")
_FC32 = ("XnnpackBackend", "linear", 32, "fp32")
EXPECTED_EXECUTED = {
    "int8_xnnpack": [("portable", "aten::embedding.out"), _FC8, _FC8],
    "dq8_xnnpack": [("portable", "aten::embedding.out"), _FC8, _FC8],
    "8da4w_emb4_xnnpack": [("portable", "quantized_decomposed::embedding_4bit.out"), _FC4, _FC4],
    "partial_8da4w_xnnpack": [_FC4, _FC4, _FC32],
    "w8_xnnpack": [_FC32] * 3,
    "conv_int8_xnnpack": [("XnnpackBackend", "conv", 8, "int8"), ("XnnpackBackend", "conv", 8, "int8"), _FC8],
    "int8_portable": [("portable", "aten::embedding.out"), ("portable", "aten::addmm.out"),
                      ("portable", "aten::addmm.out")],
}


def _damage(data: bytes, edits: list[tuple[int, str, int]]) -> bytes:
    buf = bytearray(data)
    for pos, kind, value in edits:
        if not buf:
            break
        pos %= len(buf)
        if kind == "flip":
            buf[pos] ^= 1 << (value % 8)
        elif kind == "ff":
            buf[pos : pos + 4] = b"\xff\xff\xff\xff"
        elif kind == "cut":
            del buf[pos:]
        else:
            buf[pos:pos] = bytes([value]) * 8
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.sampled_from(["flip", "ff", "cut", "insert"]),
                           st.integers(0, 255)), min_size=1, max_size=4)


def _ops_key(record: dict[str, Any]) -> tuple[Any, ...]:
    if record["backend"] == "portable":
        return record["backend"], record["op"]
    return record["backend"], record["kind"], record["bits"], record["compute"]


# --- one child for every fixture ------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if not HAVE_RUNTIME:
        pytest.skip("executorch/torch not installed")
    work = tmp_path_factory.mktemp("inspector")
    fp32 = (PTE / "fp32_portable.pte").read_bytes()
    (work / "truncated.pte").write_bytes(fp32[:-100])
    # an operator the runtime has no kernel for: the file stays well-formed
    (work / "opmissing.pte").write_bytes(fp32.replace(b"aten::relu", b"aten::relx"))
    paths = {name: str(PTE / f"{name}.pte") for name in FIXTURE_NAMES}
    paths["truncated"] = str(work / "truncated.pte")
    paths["opmissing"] = str(work / "opmissing.pte")
    dumps = work / "etdumps"
    dumps.mkdir()
    run = run_runner(list(paths.values()), timeout_s=900, workdir=str(dumps))
    assert "error" not in run, run
    return {name: run["results"][path] for name, path in paths.items()}


def _status(outcome: Any, *bounds: str) -> str:
    config = GuardConfig(require=[parse_bound(b, FAIL_LEVEL) for b in bounds])
    return decide_status(outcome.findings, evaluate_bounds(config, outcome.metrics))


@needs_runtime
@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_executed_coverage_by_hand(batch: dict[str, dict[str, Any]], name: str) -> None:
    entry = batch[name]
    assert entry["status"] == "ok", entry
    outcome = analyse(entry)
    m = outcome.metrics
    ops, quantized, int8, int4, integer = EXPECTED_OPS[name]
    assert m["weight_ops"] == ops
    assert m["coverage"]["ops"]["quantized"] == pytest.approx(quantized)
    assert m["coverage"]["ops"]["int8"] == pytest.approx(int8)
    assert m["coverage"]["ops"]["int4"] == pytest.approx(int4)
    assert m["int8_coverage"] == pytest.approx(int8)
    assert m["compute_coverage"]["ops"]["integer"] == pytest.approx(integer)
    assert m["coverage"]["ops"]["unknown"] == 0.0
    assert [f.code for f in outcome.findings] == []
    assert _status(outcome) == "PASS"


@needs_runtime
@pytest.mark.parametrize("name", sorted(EXPECTED_MATMUL))
def test_matmul_coverage(batch: dict[str, dict[str, Any]], name: str) -> None:
    mc = analyse(batch[name]).metrics["matmul_coverage"]
    ops, int8, int4, integer = EXPECTED_MATMUL[name]
    assert (mc["ops"], mc["int8"], mc["int4"]) == (ops, pytest.approx(int8), pytest.approx(int4))
    assert mc["integer_compute"] == pytest.approx(integer)


@needs_runtime
@pytest.mark.parametrize("name", sorted(EXPECTED_EXECUTED))
def test_executed_ops_in_instruction_order(batch: dict[str, dict[str, Any]], name: str) -> None:
    executed = analyse(batch[name]).metrics["executed_weight_ops"]
    assert [_ops_key(r) for r in executed] == EXPECTED_EXECUTED[name]
    assert [r["instruction"] for r in executed] == sorted(r["instruction"] for r in executed)


@needs_runtime
def test_int8_xnnpack_detail(batch: dict[str, dict[str, Any]]) -> None:
    m = analyse(batch["int8_xnnpack"]).metrics
    fcs = [r for r in m["executed_weight_ops"] if r["backend"] == "XnnpackBackend"]
    # the weight type is the graph's (qcint8); the activation token is the host's kernel choice
    described = [(r["weights"], r["bits"], r["quantized"], r["compute"], r["unknown_tokens"]) for r in fcs]
    assert described == [("QC8W", 8, True, "int8", [])] * 2
    assert sum(m["events"]["by_descriptor"].values()) == 4  # two converts, two FCs
    assert m["events"]["native_calls"] == 2 and m["events"]["delegate_calls"] == 1
    assert m["compute"] == {"fp32": 1, "int8": 2}
    # each executed FC is mapped to its delegate graph node: shapes, params and flops are measured
    assert [(r["shape"], r["params"]) for r in fcs] == [([64, 32], 2048), ([10, 64], 640)]
    assert set(m["coverage"]) == {"ops", "params", "flops"} and m["shapes_known"] is True
    assert m["params_total"] == 5888


# the runtime's dynamically quantized activation tokens: whichever one this host's XNNPACK picked,
# the others are what another CPU prints for the same program
_DYNAMIC_TOKENS = ("QD8", "QDU8", "QP8")


def _as_host(entry: dict[str, Any], token: str) -> dict[str, Any]:
    """The recorded run with every delegated event named as a host choosing `token` would name it."""
    events = []
    for event in entry["events"]:
        name = event.get("delegate_name") or ""
        for other in _DYNAMIC_TOKENS:
            name = name.replace(f"(NC, {other},", f"(NC, {token},")
        events.append(dict(event, delegate_name=name))
    return dict(entry, events=events)


@needs_runtime
@pytest.mark.parametrize("name", ["dq8_xnnpack", "8da4w_emb4_xnnpack", "partial_8da4w_xnnpack"])
def test_host_kernel_choice_does_not_change_the_verdict(batch: dict[str, dict[str, Any]], name: str) -> None:
    recorded = batch[name]
    names = {e.get("delegate_name") for e in recorded["events"]}
    assert any(f"(NC, {t}, F32, " in (n or "") for n in names for t in _DYNAMIC_TOKENS), names
    verdicts = []
    for token in _DYNAMIC_TOKENS:
        outcome = analyse(_as_host(recorded, token))
        m = outcome.metrics
        assert [f.code for f in outcome.findings] == []
        assert any(f"(NC, {token}, F32, " in r["op"] for r in m["executed_weight_ops"])
        verdicts.append((m["coverage"], m["compute_coverage"], m["matmul_coverage"], m["compute"]))
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert verdicts[0][1]["ops"]["integer"] == pytest.approx(EXPECTED_OPS[name][4])


@needs_runtime
def test_portable_int8_storage_but_fp32_compute(batch: dict[str, dict[str, Any]]) -> None:
    outcome = analyse(batch["int8_portable"])
    m = outcome.metrics
    # every shape is known here, so params and flops are measured too (README: 0.4565 and 1.0)
    assert m["coverage"]["params"]["int8"] == pytest.approx(2688 / 5888)
    assert m["coverage"]["flops"]["int8"] == pytest.approx(1.0)
    assert m["params_total"] == 5888
    assert m["compute_coverage"]["flops"]["integer"] == 0.0
    addmms = [r for r in m["executed_weight_ops"] if r["op"] == "aten::addmm.out"]
    assert [(r["weights"], r["dequantized"], r["shape"], r["compute"]) for r in addmms] == [
        ("int8", True, [64, 32], "fp32"), ("int8", True, [10, 64], "fp32")]
    assert [u["shape"] for u in outcome.unquantized] == [[100, 32]]


@needs_runtime
def test_emb8_and_emb4_params(batch: dict[str, dict[str, Any]]) -> None:
    m = analyse(batch["emb8_portable"]).metrics
    assert m["coverage"]["params"]["int8"] == pytest.approx(6400 / 22784)
    assert m["coverage"]["flops"]["quantized"] == 0.0
    emb4 = analyse(batch["8da4w_emb4_xnnpack"]).metrics["executed_weight_ops"][0]
    assert (emb4["weights"], emb4["bits"], emb4["shape"]) == ("int4", 4, [100, 64])  # packed [100, 32] bytes


@needs_runtime
def test_w8_silent_fold_fails_a_bound(batch: dict[str, dict[str, Any]]) -> None:
    outcome = analyse(batch["w8_xnnpack"])
    assert outcome.metrics["coverage"]["ops"]["quantized"] == 0.0
    assert len(outcome.unquantized) == 3
    assert _status(outcome, "coverage.ops.quantized>=0.9") == "FAIL"
    assert _status(analyse(batch["conv_int8_xnnpack"]), "coverage.ops.int8>=0.9",
                   "compute_coverage.ops.integer>=1") == "PASS"


@needs_runtime
def test_kv_cache_program_has_no_weight_ops(batch: dict[str, dict[str, Any]]) -> None:
    outcome = analyse(batch["qkv_cache_portable"])
    assert outcome.metrics["weight_ops"] == 0
    assert [f.code for f in outcome.findings] == ["PTE_RUNTIME_NO_WEIGHT_OPS"]
    assert outcome.metrics["events"]["native_calls"] == 30  # one OPERATOR_CALL per instruction
    assert outcome.metrics["events"]["by_name"]["llama::update_cache.out"] == 8
    assert _status(outcome) == "PASS"
    assert _status(outcome, "coverage.ops.int8>=0.5") == "ERROR"  # a bound on a metric not produced


@needs_runtime
@pytest.mark.parametrize("name", ["int8_xnnpack", "int8_portable", "conv_int8_xnnpack"])
def test_timing_metrics_positive(batch: dict[str, dict[str, Any]], name: str) -> None:
    m = analyse(batch[name]).metrics
    t = m["time_ns"]
    assert t["total"] > 0 and t["weight_ops"] > 0
    assert t["weight_ops"] <= t["total"]
    assert all(v >= 0 for v in t["by_op"].values()) and sum(t["by_op"].values()) > 0
    assert all(r["time_ns"] >= 0 for r in m["executed_weight_ops"])
    assert m["runtime"]["timing_s"]["execute"] > 0


@needs_runtime
def test_runtime_rejects_cleanly(batch: dict[str, dict[str, Any]]) -> None:
    truncated = analyse(batch["truncated"])
    assert [f.code for f in truncated.findings] == ["PTE_RUNTIME_LOAD_FAILED"]
    assert "0x23 InvalidProgram" in truncated.findings[0].message
    assert "File size is too small" in truncated.findings[0].message
    assert _status(truncated) == "FAIL"
    missing = analyse(batch["opmissing"])
    assert [f.code for f in missing.findings] == ["PTE_RUNTIME_LOAD_FAILED"]
    assert "0x14 OperatorMissing" in missing.findings[0].message
    assert missing.metrics["runtime"]["stage"] == "load_method"
    assert _status(missing) == "FAIL"


@needs_runtime
def test_program_unread_falls_back_to_event_names(batch: dict[str, dict[str, Any]]) -> None:
    entry = dict(batch["emb8_portable"], instructions=None, values=None, program_error="ValueError: test")
    outcome = analyse(entry)
    assert [f.code for f in outcome.findings] == ["PTE_RUNTIME_PROGRAM_UNREAD"]
    m = outcome.metrics
    # embedding_byte says its storage by name; the addmm weights are unknown without the program
    assert (m["weight_ops"], m["quantized_ops"], m["unknown_ops"]) == (3, 1, 2)
    assert set(m["coverage"]) == {"ops"}
    assert _status(outcome) == "WARN"


@needs_runtime
def test_etdump_reader_survives_damage(batch: dict[str, dict[str, Any]]) -> None:
    data = Path(batch["int8_xnnpack"]["etdump"]).read_bytes()
    assert len(etdump.parse(data)) == len(batch["int8_xnnpack"]["events"])

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(EDITS)
    def damaged(edits: list[tuple[int, str, int]]) -> None:
        buf = _damage(data, edits)
        started = time.perf_counter()
        with contextlib.suppress(etdump.EtdumpError):
            etdump.parse(bytes(buf))
        assert time.perf_counter() - started < 1.0

    damaged()


def test_program_table_matches_the_fixture() -> None:
    instructions, values = program_table.read(str(PTE / "int8_portable.pte"))
    dq = "quantized_decomposed::dequantize_per_channel.out"
    assert [r.get("op") for r in instructions][:3] == [dq, dq, "aten::embedding.out"]
    assert values[9] == [1, [64, 32], True, None, None]  # the int8 l1 weight, a constant (not memory-planned)
    instructions, values = program_table.read(str(PTE / "ext" / "fp32_portable_extconst.pte"))
    external = {v[3] for v in values if v and v[2]}
    assert external == {"emb.weight", "ln.weight", "ln.bias", "l1.weight", "l1.bias", "l2.weight", "l2.bias"}


def test_program_table_agrees_with_the_reader_on_every_fixture() -> None:
    """The runtime's minimal table and the full reader read one program the same way: kinds, operators,
    delegates, and each tensor's dtype, sizes, constness, name and memory (one schema, one constant rule)."""
    from quantgate.formats.pte import reader
    from quantgate.formats.pte import schema as S

    kinds = set()  # (constant, external) met: the rule is exercised on every branch
    for path in sorted(PTE.rglob("*.pte")):
        prog = reader.parse(str(path))
        plan = prog.plans[0]
        instructions, values = program_table.read(str(path), plan.name)
        chain0 = [i for i in plan.instructions if i.chain == 0]
        assert [r["kind"] for r in instructions] == [S.INSTRUCTION_KINDS[i.kind] for i in chain0], path.name
        for row, ins in zip(instructions, chain0, strict=True):
            if ins.kind == S.KERNEL_CALL:
                assert (row["op"], row["args"]) == (plan.operators[ins.target], ins.args), path.name
            elif ins.kind == S.DELEGATE_CALL:
                assert (row["backend"], row["args"]) == (plan.delegates[ins.target].backend, ins.args), path.name
        for got, value in zip(values, plan.values, strict=True):
            t = value.tensor
            want = None if t is None else [t.scalar_type, list(t.sizes), t.constant, t.fqn,
                                           None if t.mem is None else list(t.mem)]
            assert got == want, path.name
            if t is not None:
                kinds.add((t.constant, t.external))
    assert kinds == {(False, False), (True, False), (True, True)}


def test_program_table_declares_no_schema_of_its_own() -> None:
    """program.fbs numbers live in formats.pte.schema and the constant-tensor rule in formats.pte.model:
    the runtime's table defines no constant of its own and asks the model's rule."""
    import ast

    from quantgate.formats.pte import model

    tree = ast.parse(Path(program_table.__file__).read_text(encoding="utf-8"))
    assigned = [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    assert assigned == []
    assert program_table.is_constant is model.is_constant
    assert [model.is_constant(*a) for a in [(False, 0, False), (False, 3, False), (True, 3, False), (True, 0, True)]] \
        == [False, True, False, True]


def test_program_table_loads_only_the_standard_library() -> None:
    """It runs inside the ExecuTorch runtime child: importing it must not load a third-party module."""
    code = ("import sys; before = set(sys.modules); import quantgate.runtime.program_table; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))")
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "['quantgate']"), out.stderr

@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(["int8_portable", "int8_xnnpack", "qkv_cache_portable"]), edits=EDITS)
def test_program_table_survives_damage(tmp_path_factory: pytest.TempPathFactory, name: str,
                                       edits: list[tuple[int, str, int]]) -> None:
    path = tmp_path_factory.mktemp("damaged") / f"{name}.pte"
    path.write_bytes(_damage((PTE / f"{name}.pte").read_bytes(), edits))
    started = time.perf_counter()
    with contextlib.suppress(program_table.ProgramTableError):
        program_table.read(str(path))
    assert time.perf_counter() - started < 1.0


# --- pure classification: no runtime needed ------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "op", "weights", "bits", "quantized", "compute"),
    [
        ("Fully Connected (NC, QS8, QC8W) GEMM #1", "Fully Connected", "QC8W", 8, True, "int8"),
        ("Fully Connected (NC, QD8, F32, QB4W) GEMM #2", "Fully Connected", "QB4W", 4, True, "int8"),
        ("Fully Connected (NC, QP8, F32, QC4W) GEMM #1", "Fully Connected", "QC4W", 4, True, "int8"),
        ("Fully Connected (NC, F32, QC8W) GEMM #1", "Fully Connected", "QC8W", 8, True, "fp32"),
        ("Fully Connected (NC, F32) GEMM #3", "Fully Connected", "F32", 32, False, "fp32"),
        ("Fully Connected (NC, F16) GEMM #1", "Fully Connected", "F16", 16, False, "fp16"),
        ("Convolution (NHWC, QC8) DWConv #1", "Convolution", "QC8", 8, True, "int8"),
        ("Convolution (NHWC, QS8) IGEMM #1", "Convolution", "QS8", 8, True, "int8"),
        ("Convolution (NHWC, F32) IGEMM #1", "Convolution", "F32", 32, False, "fp32"),
        ("Fully Connected (NC, QU8) GEMM", "Fully Connected", "QU8", 8, True, "int8"),
        # recorded on an AVX512-VNNI host (QDU8) and on one without (QD8): the same program, the same answer
        ("Fully Connected (NC, QDU8, F32, QC8W) GEMM #1", "Fully Connected", "QC8W", 8, True, "int8"),
        ("Fully Connected (NC, QD8, F32, QC8W) GEMM #1", "Fully Connected", "QC8W", 8, True, "int8"),
        ("Fully Connected (NC, QDU8, F32, QB4W) GEMM #2", "Fully Connected", "QB4W", 4, True, "int8"),
        ("Fully Connected (NC, QD8, F32, QB4W) GEMM #2", "Fully Connected", "QB4W", 4, True, "int8"),
        ("Convolution (NHWC, QDU8, F32, QC8W) IGEMM #1", "Convolution", "QC8W", 8, True, "int8"),
        ("Convolution (NHWC, QD8, F32, QC8W) IGEMM #1", "Convolution", "QC8W", 8, True, "int8"),
        ("Deconvolution (NHWC, QDU8, F32, QC8W) #1", "Deconvolution", "QC8W", 8, True, "int8"),
        ("Batch Matrix Multiply (NC, QDU8, F32, QC8W) #1", "Batch Matrix Multiply", "QC8W", 8, True, "int8"),
        ("Fully Connected (NC, QDU8, F16, QC4W) GEMM #1", "Fully Connected", "QC4W", 4, True, "int8"),
        ("Fully Connected (NC, QDU8, BF16, QB4W) GEMM #1", "Fully Connected", "QB4W", 4, True, "int8"),
        ("Fully Connected (NC, QD8, F32, QC2W) GEMM #1", "Fully Connected", "QC2W", 2, True, "int8"),
        ("Fully Connected (NC, PQS8, QC8W) GEMM #1", "Fully Connected", "QC8W", 8, True, "int8"),
        ("Convolution (NHWC, PQS8, QS8, QC8W) IGEMM #1", "Convolution", "QC8W", 8, True, "int8"),
        ("Fully Connected (NC, Q8) GEMM #1", "Fully Connected", "Q8", 8, True, "int8"),
        ("Fully Connected (NC, BF16, F32) GEMM #1", "Fully Connected", "BF16", 16, False, "bf16"),
        ("Fully Connected (NC, PF32) GEMM #1", "Fully Connected", "PF32", 32, False, "fp32"),
    ],
)
def test_descriptor_classification(event: str, op: str, weights: str, bits: int, quantized: bool,
                                   compute: str) -> None:
    parsed = parse_xnnpack_event(event)
    assert parsed is not None and parsed["op"] == op
    cls = classify_descriptor(parsed["tokens"])
    got = (cls["weights"], cls["bits"], cls["quantized"], cls["compute"])
    assert got == (weights, bits, quantized, compute)


# every weight-bearing operator name XNNPACK has printed (its operator-type table, 2019-2026),
# by descriptor without the layout: (weight bits, quantized, compute)
XNNPACK_WEIGHT_DESCRIPTORS = {
    "F32": (32, False, "fp32"), "PF32": (32, False, "fp32"), "F16": (16, False, "fp16"),
    "PF16": (16, False, "fp16"), "BF16, F32": (16, False, "bf16"), "BF16_F32": (16, False, "bf16"),
    "F32, QC8W": (8, True, "fp32"), "F32, QC4W": (4, True, "fp32"),
    "QS8": (8, True, "int8"), "QU8": (8, True, "int8"), "Q8": (8, True, "int8"), "QC8": (8, True, "int8"),
    "QS8, QC8W": (8, True, "int8"), "QS8, QC4W": (4, True, "int8"), "QS8, QC2W": (2, True, "int8"),
    "PQS8, QC8W": (8, True, "int8"), "PQS8, QC4W": (4, True, "int8"), "PQS8, QS8, QC8W": (8, True, "int8"),
    **{f"{act}, {out}, {w}": (bits, True, "int8")
       for act in ("QD8", "QDU8", "QP8") for out in ("F32", "F16", "BF16")
       for w, bits in (("QC8W", 8), ("QC4W", 4), ("QB4W", 4), ("QC2W", 2))},
}  # fmt: skip
XNNPACK_WEIGHT_OPS = {
    "Fully Connected": [
        "NC, BF16, F32", "NC, F16", "NC, F32", "NC, F32, QC4W", "NC, F32, QC8W", "NC, PF16", "NC, PF32",
        "NC, PQS8, QC4W", "NC, PQS8, QC8W", "NC, Q8", "NC, QD8, BF16, QB4W", "NC, QD8, F16, QB4W",
        "NC, QD8, F16, QC2W", "NC, QD8, F16, QC4W", "NC, QD8, F16, QC8W", "NC, QD8, F32, QB4W",
        "NC, QD8, F32, QC2W", "NC, QD8, F32, QC4W", "NC, QD8, F32, QC8W", "NC, QDU8, BF16, QB4W",
        "NC, QDU8, F16, QC2W", "NC, QDU8, F16, QC4W", "NC, QDU8, F16, QC8W", "NC, QDU8, F32, QB4W",
        "NC, QDU8, F32, QC2W", "NC, QDU8, F32, QC4W", "NC, QDU8, F32, QC8W", "NC, QP8, F16, QC8W",
        "NC, QP8, F32, QB4W", "NC, QP8, F32, QC2W", "NC, QP8, F32, QC4W", "NC, QP8, F32, QC8W", "NC, QS8",
        "NC, QS8, QC2W", "NC, QS8, QC4W", "NC, QS8, QC8W", "NC, QU8",
    ],
    "Convolution": [
        "NCHW, F16", "NCHW, F32", "NHWC, F16", "NHWC, F32", "NHWC, PF16", "NHWC, PF32", "NHWC, PQS8, QS8, QC8W",
        "NHWC, Q8", "NHWC, QC8", "NHWC, QD8, F16, QC8W", "NHWC, QD8, F32, QC8W", "NHWC, QDU8, F32, QC8W",
        "NHWC, QS8", "NHWC, QU8",
    ],
    "Deconvolution": [
        "NC, QS8, QC8W", "NHWC, F16", "NHWC, F32", "NHWC, PQS8, QS8, QC8W", "NHWC, Q8", "NHWC, QD8, F32, QC8W",
        "NHWC, QDU8, F32, QC8W", "NHWC, QS8", "NHWC, QU8",
    ],
    "Batch Matrix Multiply": [
        "NC, F32, QC8W", "NC, QD8, F32, QC8W", "NC, QDU8, F32, QC8W", "NC, QP8, F32, QC8W",
    ],
}  # fmt: skip
# every token of every XNNPACK operator name, weight-bearing or not
XNNPACK_TOKENS = (
    "BF16", "BF16_F32", "F16", "F32", "NC", "NCHW", "NCHW2NHWC", "NCW", "ND", "NHTC", "NHWC", "NTC", "NTHC",
    "NWC", "PF16", "PF32", "PQS8", "Q8", "QB4W", "QC2W", "QC4W", "QC8", "QC8W", "QD8", "QDU8", "QP8", "QS16",
    "QS8", "QU8", "S16", "S32", "S8", "U8", "X16", "X32", "X64", "X8",
)


def test_token_table_knows_every_xnnpack_token() -> None:
    assert sorted(set(XNNPACK_TOKENS) - set(XNN_TOKENS)) == []
    assert {k.role for k in XNN_TOKENS.values()} <= set(TOKEN_ROLES)


@pytest.mark.parametrize("op", sorted(XNNPACK_WEIGHT_OPS))
def test_every_xnnpack_weight_op_name_is_classified(op: str) -> None:
    for descriptor in XNNPACK_WEIGHT_OPS[op]:
        parsed = parse_xnnpack_event(f"{op} ({descriptor}) GEMM #1")
        assert parsed is not None and parsed["op"] == op
        cls = classify_descriptor(parsed["tokens"])
        layout_free = descriptor.split(", ", 1)[1]
        assert (cls["bits"], cls["quantized"], cls["compute"], cls["unknown_tokens"]) == (
            *XNNPACK_WEIGHT_DESCRIPTORS[layout_free], []), descriptor


def test_one_token_table_for_both_pte_guards() -> None:
    # pte-program reads the delegate graph's datatypes; their tokens are the ones pte-inspector reads
    assert set(DATATYPE_TOKENS.values()) <= set(XNN_TOKENS)
    assert {name for name, *_ in DATATYPES.values()} - set(DATATYPE_TOKENS) == {"qint32", "qcint32"}
    assert sorted(INT_ACTIVATIONS) == ["qdint8", "qint8", "qpint8", "quint8"]


def test_event_name_split() -> None:
    parsed = parse_xnnpack_event(" Fully Connected (NC, QDU8, F32, QB4W) GEMM #12 ")
    assert parsed == {"op": "Fully Connected", "descriptor": "NC, QDU8, F32, QB4W",
                      "tokens": ["NC", "QDU8", "F32", "QB4W"], "variant": "GEMM",
                      "label": "Fully Connected (NC, QDU8, F32, QB4W) GEMM"}
    assert parse_xnnpack_event("Convert (NC) #1")["label"] == "Convert (NC)"
    for bad in ("no descriptor", "(NC, F32) no op", "A # B (NC)", "Fully Connected (NC, F32) GEMM #x"):
        assert parse_xnnpack_event(bad) is None, bad
    # a hostile name is split in linear time (a backtracking pattern took minutes on this one)
    started = time.perf_counter()
    assert parse_xnnpack_event("a" + " " * 200_000 + "(") is None
    assert parse_xnnpack_event("a" + " " * 400 + "(NC, F32" + " " * 50) is None
    assert time.perf_counter() - started < 0.5


def _entry(events: list[dict[str, Any]], instructions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    base = {"chain": 0, "delegate_id": -1, "start_ns": 0, "run": 1, "name": "", "delegate_name": ""}
    return {"status": "ok", "method": "forward", "events": [dict(base, **e) for e in events],
            "instructions": instructions or [], "values": [], "log": []}


def test_unknown_descriptor_and_activation_bmm() -> None:
    outcome = analyse(_entry([
        {"instruction": 0, "delegate_name": "Fully Connected (NC, X99) GEMM #1", "duration_ns": 5},
        {"instruction": 0, "delegate_name": "Batch Matrix Multiply (NC, F32) #1", "duration_ns": 5},
        {"instruction": 0, "name": "DELEGATE_CALL", "duration_ns": 20},
        {"instruction": -1, "chain": -1, "name": "Method::execute", "duration_ns": 30},
    ], [{"index": 0, "kind": "DelegateCall", "backend": "XnnpackBackend"}]))
    assert [f.code for f in outcome.findings] == ["PTE_RUNTIME_UNKNOWN_DESCRIPTOR"]
    m = outcome.metrics
    # the BMM of two activations carries no weight; the unknown FC counts as unknown, never as float
    assert (m["weight_ops"], m["unknown_ops"], m["coverage"]["ops"]["unknown"]) == (1, 1, 1.0)
    assert m["events"]["by_descriptor"] == {"NC, F32": 1, "NC, X99": 1}
    assert m["time_ns"]["total"] == 30


def _xnn_run(*names: str) -> dict[str, Any]:
    """A recorded run of one XNNPACK delegate call executing `names`, as the runner reports it."""
    events = [{"instruction": 0, "delegate_name": n, "duration_ns": 5} for n in names]
    events += [{"instruction": 0, "name": "DELEGATE_CALL", "duration_ns": 20},
               {"instruction": -1, "chain": -1, "name": "Method::execute", "duration_ns": 30}]
    return _entry(events, [{"index": 0, "kind": "DelegateCall", "backend": "XnnpackBackend"}])


# the delegated ops of dq8_xnnpack, 8da4w_emb4_xnnpack and conv int8 programs as two hosts name them
RECORDED = {
    "no VNNI": ("Fully Connected (NC, QD8, F32, QC8W) GEMM #1", "Fully Connected (NC, QD8, F32, QB4W) GEMM #2",
                "Convolution (NHWC, QD8, F32, QC8W) IGEMM #1", "Fully Connected (NC, F32) GEMM #1"),
    "AVX512-VNNI": ("Fully Connected (NC, QDU8, F32, QC8W) GEMM #1", "Fully Connected (NC, QDU8, F32, QB4W) GEMM #2",
                    "Convolution (NHWC, QDU8, F32, QC8W) IGEMM #1", "Fully Connected (NC, F32) GEMM #1"),
}


@pytest.mark.parametrize("host", sorted(RECORDED))
def test_recorded_runs_classify_alike_on_any_host(host: str) -> None:
    outcome = analyse(_xnn_run(*RECORDED[host]))
    assert [f.code for f in outcome.findings] == []
    m = outcome.metrics
    assert m["weight_ops"] == 4
    assert m["coverage"]["ops"] == {"quantized": 0.75, "int8": 0.5, "int4": 0.25, "unknown": 0.0,
                                    "by_bits": {"4": 0.25, "8": 0.5, "32": 0.25}}
    assert m["compute_coverage"]["ops"] == {"integer": 0.75, "unknown": 0.0}
    assert m["compute"] == {"int8": 3, "fp32": 1}
    assert m["matmul_coverage"] == {"ops": 4, "quantized": 0.75, "int8": 0.5, "int4": 0.25,
                                    "integer_compute": 0.75}
    assert [(r["kind"], r["bits"], r["compute"]) for r in m["executed_weight_ops"]] == [
        ("linear", 8, "int8"), ("linear", 4, "int8"), ("conv", 8, "int8"), ("linear", 32, "fp32")]


def test_unknown_token_is_a_finding_never_float() -> None:
    outcome = analyse(_xnn_run(
        "Fully Connected (NC, QZ8, F32, QB4W) GEMM #1", "Fully Connected (NC, QZ8, F32, QB4W) GEMM #2",
        "Batch Matrix Multiply (NC, QZ8, F32, QC9W) #1", "Fully Connected (NC, X8) GEMM #1",
        "Fully Connected (NC, QD8, F32, QC8W) GEMM #1",
    ))
    assert [(f.code, f.severity, f.op) for f in outcome.findings] == [
        ("PTE_RUNTIME_UNKNOWN_DESCRIPTOR", "warning", "Fully Connected (NC, QZ8, F32, QB4W)"),
        ("PTE_RUNTIME_UNKNOWN_DESCRIPTOR", "warning", "Batch Matrix Multiply (NC, QZ8, F32, QC9W)"),
        ("PTE_RUNTIME_UNKNOWN_DESCRIPTOR", "warning", "Fully Connected (NC, X8)"),
    ]
    first, bmm, _ = (f.message for f in outcome.findings)
    assert "(2 events)" in first and "'QZ8'" in first and "not as float" in first
    assert "'QZ8, QC9W'" in bmm and "not counted" in bmm
    m = outcome.metrics
    # the unknown FCs count as unknown, not as fp32 compute; the batch matmul is not a weight op
    assert (m["weight_ops"], m["unknown_ops"], m["quantized_ops"]) == (4, 3, 1)
    assert m["compute_coverage"]["ops"] == {"integer": 0.25, "unknown": 0.75}
    assert m["compute"] == {"unknown": 3, "int8": 1}
    assert [r["unknown_tokens"] for r in m["executed_weight_ops"]] == [["QZ8"], ["QZ8"], [], []]
    assert _status(outcome) == "WARN"


def test_opaque_delegate_is_reported() -> None:
    outcome = analyse(_entry(
        [{"instruction": 0, "name": "DELEGATE_CALL", "duration_ns": 20}],
        [{"index": 0, "kind": "DelegateCall", "backend": "CoreMLBackend"}],
    ))
    assert [f.code for f in outcome.findings] == ["PTE_RUNTIME_DELEGATE_UNPROFILED"]
    assert "CoreMLBackend" in outcome.findings[0].message
    assert _status(outcome) == "WARN"


def test_error_codes_are_parsed() -> None:
    assert error_code("Failed to load program, error: 0x:23") == 0x23
    assert error_code("Failed to execute method forward, error: 0x14") == 0x14
    assert error_code("failed to retrieve method_meta for method forward, error 0x23") == 0x23
    assert error_code("no code here") is None


def test_finding_codes_documented() -> None:
    readme = (FIXTURES.parent / "docs" / "finding-codes.md").read_text()
    for code in FINDING_CODES:
        assert f"`{code}`" in readme, code


# --- the CLI, end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict[str, Any]]]:
    """Two real `quantgate guard pte-inspector` runs, started together to share the import wait."""
    if not HAVE_RUNTIME:
        pytest.skip("executorch/torch not installed")
    bad = tmp_path_factory.mktemp("cli") / "opmissing.pte"
    bad.write_bytes((PTE / "fp32_portable.pte").read_bytes().replace(b"aten::relu", b"aten::relx"))
    targets = {
        # the .ptd beside the program is found on its own
        "ext": str(PTE / "ext" / "fp32_portable_extconst.pte"),
        "rejected": str(bad),
    }
    procs = {
        key: subprocess.Popen([sys.executable, "-m", "quantgate", "guard", "pte-inspector", path],
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, path in targets.items()
    }
    out = {}
    for key, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        try:
            out[key] = (proc.returncode, json.loads(stdout))
        except json.JSONDecodeError:
            raise AssertionError(f"{key}: stdout is not JSON; stderr:\n{stderr}") from None
    return out


@needs_runtime
def test_cli_external_weights_program(cli_runs: dict[str, tuple[int, dict[str, Any]]]) -> None:
    code, result = cli_runs["ext"]
    assert (code, result["status"]) == (0, "PASS"), result
    assert validate(result, "guard-result") == []
    m = result["metrics"]
    assert m["weight_ops"] == 3 and m["coverage"]["params"]["quantized"] == 0.0
    assert m["params_total"] == 5888
    assert m["runtime"]["data_path"].endswith("_default_external_constant.ptd")
    assert [u["name"] for u in result["unquantized"]] == [
        "instr 0: aten::embedding.out (emb.weight)", "instr 3: aten::addmm.out (l1.weight)",
        "instr 6: aten::addmm.out (l2.weight)"]


@needs_runtime
def test_cli_runtime_rejects_the_file(cli_runs: dict[str, tuple[int, dict[str, Any]]]) -> None:
    code, result = cli_runs["rejected"]
    assert (code, result["status"]) == (1, "FAIL"), result
    assert validate(result, "guard-result") == []
    assert [f["code"] for f in result["findings"]] == ["PTE_RUNTIME_LOAD_FAILED"]
    assert "OperatorMissing" in result["message"]


@needs_runtime
@pytest.mark.parametrize(
    ("fault", "params", "etype", "words"),
    [
        ("segv", [], "runtime_crash", "SIGSEGV"),
        ("abort", [], "runtime_crash", "SIGABRT"),
        ("hang", ["--param", "timeout=2"], "timeout", "within 2 s"),
        ("nojson", [], "runtime_output", "printed no JSON"),
        ("garbage", [], "runtime_output", "printed no JSON"),
    ],
)
def test_cli_child_faults_are_errors(fault: str, params: list[str], etype: str, words: str) -> None:
    started = time.monotonic()
    code, result = run_json("guard", "pte-inspector", str(PTE / "int8_xnnpack.pte"),
                            "--param", f"_fault={fault}", *params, timeout=120)
    assert (code, result["status"]) == (2, "ERROR"), result
    assert validate(result, "guard-result") == []
    assert result["error"]["type"] == etype
    assert words in result["error"]["message"]
    assert result["error"]["hint"]
    assert time.monotonic() - started < 60


def test_cli_dependency_missing(tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text('import sys\nsys.modules["executorch"] = None\n')
    src = str(FIXTURES.parent / "src")
    code, result = run_json("guard", "pte-inspector", str(PTE / "int8_xnnpack.pte"),
                            env={"PYTHONPATH": f"{hide}:{src}"})
    assert (code, result["status"]) == (0, "SKIP"), result
    assert result["skip"]["reason"] == "dependency_missing"
    assert "pip install 'quantgate[executorch]'" in result["skip"]["detail"]
    listing = run_cli("guards", env={"PYTHONPATH": f"{hide}:{src}"})
    line = next(x for x in listing.stdout.splitlines() if x.startswith("pte-inspector"))
    assert "unavailable" in line and "quantgate[executorch]" in line


def test_cli_not_applicable_to_other_formats(tmp_path: Path) -> None:
    other = tmp_path / "model.gguf"
    shutil.copyfile(PTE / "README.md", other)  # not a model at all: the guard never starts a child
    code, result = run_json("guard", "pte-inspector", str(other))
    assert code == 0 and result["status"] == "SKIP" and result["skip"]["reason"] == "not_applicable"
    assert json.dumps(result)  # one JSON object on stdout
