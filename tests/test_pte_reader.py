"""The PTE reader's structure against executorch's own deserializer, and the header facts.

`deserialize_pte_binary` imports torch (seconds) and is not a validator, but on intact files it is
the reference: same instructions, operators, values, scalar types, and delegates.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES
from quantgate.formats.pte import reader
from quantgate.formats.pte import schema as S

PTE = FIXTURES / "pte"
NAMES = [str(p.relative_to(PTE)) for p in sorted(PTE.rglob("*.pte"))]


def test_header_of_a_program_with_segments() -> None:
    prog = reader.parse(str(PTE / "int8_xnnpack.pte"))
    size = (PTE / "int8_xnnpack.pte").stat().st_size
    assert prog.has_header
    assert prog.segment_base % 128 == 0 and prog.segment_base >= prog.program_size
    assert prog.segment_base + prog.segment_data_size == size
    assert all(s.start + s.size <= size for s in prog.segments)
    assert prog.constant_segment == 0 and prog.constant_offsets[0] == 0
    assert [p.name for p in prog.plans] == ["forward"]


def test_program_without_extended_header() -> None:
    prog = reader.parse(str(PTE / "ext" / "fp32_portable_extconst.pte"))
    assert not prog.has_header
    assert [s.size for s in prog.segments] == [0]
    external = sorted(v.tensor.fqn for v in prog.plans[0].values if v.tensor is not None and v.tensor.external)
    assert external == ["emb.weight", "l1.bias", "l1.weight", "l2.bias", "l2.weight", "ln.bias", "ln.weight"]


def test_inline_delegate_blob() -> None:
    prog = reader.parse(str(PTE / "int8_xnnpack_inline.pte"))
    (d,) = prog.plans[0].delegates
    assert (d.backend, d.location, d.data_index) == ("XnnpackBackend", S.LOC_INLINE, 0)
    assert d.span == prog.inline_data[0]
    assert d.span[1] > 0


def test_facts_summarise_the_program() -> None:
    inv = reader.read(str(PTE / "int8_portable.pte"))
    facts = inv.facts
    assert facts["methods"] == ["forward"]
    assert facts["instructions"] == 15
    assert facts["operators"]["quantized_decomposed::dequantize_per_channel.out"] == 2
    assert facts["operators"]["aten::addmm.out"] == 2
    assert facts["summary"] == "1 method(s), 15 instruction(s), 0 delegate call(s), 1 segment(s)"


def test_reading_never_imports_torch(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys; from quantgate.formats.pte import reader as pte; "
        f"inv = pte.read({str(PTE / '8da4w_emb4_xnnpack.pte')!r}); "
        "assert len(inv.layers) == 3; "
        "bad = [m for m in ('torch', 'executorch', 'numpy', 'flatbuffers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_reading_is_fast() -> None:
    started = time.perf_counter()
    for name in NAMES:
        reader.read(str(PTE / name))
    assert time.perf_counter() - started < 2.0


# -- differential: executorch's deserializer ---------------------------------------------------------
@pytest.fixture(scope="module")
def deserialize():
    pytest.importorskip("torch")
    pytest.importorskip("executorch")
    from executorch.exir._serialize._program import deserialize_pte_binary

    def load(path: Path):
        out = deserialize_pte_binary(path.read_bytes())
        return getattr(out, "program", out)

    return load


def _kinds(plan) -> list[tuple]:
    rows = []
    for chain in plan.chains:
        for ins in chain.instructions:
            args = ins.instr_args
            if hasattr(args, "op_index"):
                rows.append((S.KERNEL_CALL, args.op_index, list(args.args)))
            elif hasattr(args, "delegate_index"):
                rows.append((S.DELEGATE_CALL, args.delegate_index, list(args.args)))
            elif hasattr(args, "move_from"):
                rows.append((S.MOVE_CALL, -1, [args.move_from, args.move_to]))
            elif hasattr(args, "destination_instruction"):
                rows.append((S.JUMP_FALSE_CALL, args.destination_instruction, [args.cond_value_index]))
            elif hasattr(args, "value_index"):
                rows.append((S.FREE_CALL, -1, [args.value_index]))
            else:
                rows.append((type(args).__name__,))
    return rows


@pytest.mark.parametrize("name", NAMES)
def test_same_structure_as_executorch(deserialize, name: str) -> None:
    ref = deserialize(PTE / name)
    data = (PTE / name).read_bytes()
    ours = reader.parse(str(PTE / name))
    assert ours.complete and ours.findings == []
    assert [p.name for p in ours.plans] == [p.name for p in ref.execution_plan]
    # (the deserializer folds segments and named data back into the program: not compared)
    for mine, theirs in zip(ours.plans, ref.execution_plan, strict=True):
        assert mine.operators == [f"{o.name}.{o.overload}" if o.overload else o.name for o in theirs.operators]
        assert [(i.kind, i.target, i.args) for i in mine.instructions] == _kinds(theirs)
        # the deserializer moves segment payloads inline; the payload bytes must be the same
        assert [d.backend for d in mine.delegates] == [d.id for d in theirs.delegates]
        for d, ref_d in zip(mine.delegates, theirs.delegates, strict=True):
            start, size = d.span
            assert data[start : start + size] == bytes(ref.backend_delegate_data[ref_d.processed.index].data)
        assert len(mine.values) == len(theirs.values)
        for ours_value, ref_value in zip(mine.values, theirs.values, strict=True):
            t = ref_value.val
            if hasattr(t, "scalar_type"):
                assert ours_value.tensor is not None
                assert ours_value.tensor.scalar_type == int(t.scalar_type)
                assert list(ours_value.tensor.sizes) == list(t.sizes)
                assert ours_value.tensor.data_buffer_idx == t.data_buffer_idx
                assert ours_value.tensor.allocated == (t.allocation_info is not None)
            else:
                assert ours_value.tensor is None
