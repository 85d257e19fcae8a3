"""Crafted damage to real `.pte` fixtures: each defect gives its stable finding code, never an exception.

Fields are located with the reader's own bounded flatbuffer walker on the intact file, then the
bytes are patched, so each test changes exactly one thing.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, run_json
from quantgate.formats.pte import reader
from quantgate.formats.pte import schema as S
from quantgate.formats.wire.binary import View
from quantgate.formats.wire.flatbuffer import FlatBuffer

PTE = FIXTURES / "pte"
INT8_XNN = (PTE / "int8_xnnpack.pte").read_bytes()
INT8_PORTABLE = (PTE / "int8_portable.pte").read_bytes()
INLINE = (PTE / "int8_xnnpack_inline.pte").read_bytes()


def fb_of(data: bytes) -> tuple[FlatBuffer, int, int]:
    fb = FlatBuffer(View(data))
    root = fb.root()
    return fb, root, fb.tables(root, S.PROGRAM_PLANS)[0]


def codes_of(tmp_path: Path, data: bytes, name: str = "model.pte") -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    inv = reader.read(str(path))
    return [f.code for f in inv.structural_findings]


def patch(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def call_target(data: bytes, kind: int) -> int:
    """Position of the op_index / delegate_index of the first call that stores one (0 is omitted)."""
    fb, _, plan = fb_of(data)
    for chain in fb.tables(plan, S.PLAN_CHAINS):
        for ins in fb.tables(chain, S.CHAIN_INSTRUCTIONS):
            tag, args = fb.union(ins, S.INSTRUCTION_ARGS_TYPE)
            if tag == kind and fb.field_pos(args, 0) is not None:
                return fb.field_pos(args, 0)
    raise AssertionError("no such call")


def kernel_call(data: bytes) -> int:
    fb, _, plan = fb_of(data)
    ins = fb.tables(fb.tables(plan, S.PLAN_CHAINS)[0], S.CHAIN_INSTRUCTIONS)[0]
    return fb.union(ins, S.INSTRUCTION_ARGS_TYPE)[1]


@pytest.mark.parametrize("name", [str(p.relative_to(PTE)) for p in sorted(PTE.rglob("*.pte"))])
def test_every_fixture_is_sound(tmp_path: Path, name: str) -> None:
    inv = reader.read(str(PTE / name))
    assert inv.structural_findings == []
    assert inv.structurally_sound


def test_bad_identifier(tmp_path: Path) -> None:
    data = INT8_XNN[:4] + b"ET99" + INT8_XNN[8:]
    assert codes_of(tmp_path, data) == ["PTE_BAD_IDENTIFIER"]


@pytest.mark.parametrize("cut", [4, 100, 2000])
def test_truncated_inside_the_program(tmp_path: Path, cut: int) -> None:
    assert codes_of(tmp_path, INT8_XNN[:cut]) == ["PTE_TRUNCATED"]


def test_truncated_inside_the_segments(tmp_path: Path) -> None:
    codes = codes_of(tmp_path, INT8_XNN[:-100])
    assert codes[0] == "PTE_TRUNCATED"
    assert set(codes) <= {"PTE_TRUNCATED", "PTE_SEGMENT_OUT_OF_BOUNDS"}
    assert "PTE_SEGMENT_OUT_OF_BOUNDS" in codes  # the last named-data blob lost its tail


def test_trailing_bytes(tmp_path: Path) -> None:
    assert codes_of(tmp_path, INT8_XNN + b"\0" * 16) == ["PTE_TRAILING_BYTES"]


def test_extended_header_length_below_24(tmp_path: Path) -> None:
    assert codes_of(tmp_path, patch(INT8_XNN, 12, "<I", 16)) == ["PTE_BAD_EXTENDED_HEADER"]


def test_program_size_smaller_than_the_header(tmp_path: Path) -> None:
    assert codes_of(tmp_path, patch(INT8_XNN, 16, "<Q", 20)) == ["PTE_BAD_EXTENDED_HEADER"]


def test_program_size_past_the_end(tmp_path: Path) -> None:
    assert codes_of(tmp_path, patch(INT8_XNN, 16, "<Q", 1 << 40)) == ["PTE_TRUNCATED"]


def test_segment_base_inside_the_program(tmp_path: Path) -> None:
    # the base moves back, so the declared end moves back too: trailing bytes follow
    codes = codes_of(tmp_path, patch(INT8_XNN, 24, "<Q", 64))
    assert codes[0] == "PTE_BAD_EXTENDED_HEADER"


def test_segment_data_size_shorter_than_a_segment(tmp_path: Path) -> None:
    data = patch(INT8_XNN, 32, "<Q", 1000)
    codes = codes_of(tmp_path, data)
    assert "PTE_TRAILING_BYTES" in codes and "PTE_SEGMENT_OUT_OF_BOUNDS" in codes


def test_segment_outside_the_file(tmp_path: Path) -> None:
    fb, root, _ = fb_of(INT8_XNN)
    seg = fb.tables(root, S.PROGRAM_SEGMENTS)[0]
    pos = fb.field_pos(seg, S.SEGMENT_SIZE)
    assert codes_of(tmp_path, patch(INT8_XNN, pos, "<Q", 1 << 30)) == ["PTE_SEGMENT_OUT_OF_BOUNDS"]


def test_overlapping_segments(tmp_path: Path) -> None:
    fb, root, _ = fb_of(INT8_XNN)
    segments = fb.tables(root, S.PROGRAM_SEGMENTS)
    second = fb.scalar(segments[1], S.SEGMENT_OFFSET, "u64", 0)
    pos = fb.field_pos(segments[2], S.SEGMENT_OFFSET)
    codes = codes_of(tmp_path, patch(INT8_XNN, pos, "<Q", second))
    assert codes[0] == "PTE_SEGMENTS_OVERLAP"


def test_non_empty_segments_without_an_extended_header(tmp_path: Path) -> None:
    data = INT8_XNN[:8] + b"xx00" + INT8_XNN[12:]
    assert "PTE_SEGMENTS_WITHOUT_HEADER" in codes_of(tmp_path, data)


def test_root_offset_outside_the_program(tmp_path: Path) -> None:
    assert codes_of(tmp_path, patch(INT8_XNN, 0, "<I", 0xFFFFFF00)) == ["PTE_FLATBUFFER_INVALID"]


def test_vector_length_larger_than_the_file(tmp_path: Path) -> None:
    fb, _, plan = fb_of(INT8_XNN)
    vec = fb.vector(plan, S.PLAN_VALUES, 4)
    assert codes_of(tmp_path, patch(INT8_XNN, vec.start - 4, "<I", 0x7FFFFFFF)) == ["PTE_FLATBUFFER_INVALID"]


def test_operator_index_out_of_range(tmp_path: Path) -> None:
    pos = call_target(INT8_PORTABLE, S.KERNEL_CALL)
    assert codes_of(tmp_path, patch(INT8_PORTABLE, pos, "<i", 99)) == ["PTE_INDEX_OUT_OF_RANGE"]


def test_value_index_out_of_range(tmp_path: Path) -> None:
    call = kernel_call(INT8_PORTABLE)
    vec = FlatBuffer(View(INT8_PORTABLE)).vector(call, 1, 4)
    assert codes_of(tmp_path, patch(INT8_PORTABLE, vec.start, "<i", 5000)) == ["PTE_INDEX_OUT_OF_RANGE"]


def test_delegate_index_out_of_range(tmp_path: Path) -> None:
    # every fixture calls delegate 0 (a default, so not stored): empty the delegate table instead
    fb, _, plan = fb_of(INT8_XNN)
    vec = fb.vector(plan, S.PLAN_DELEGATES, 4)
    codes = codes_of(tmp_path, patch(INT8_XNN, vec.start - 4, "<I", 0))
    assert set(codes) == {"PTE_INDEX_OUT_OF_RANGE"}


def test_jump_destination_out_of_range(tmp_path: Path) -> None:
    data = (PTE / "more" / "cond_portable.pte").read_bytes()
    fb, _, plan = fb_of(data)
    for ins in fb.tables(fb.tables(plan, S.PLAN_CHAINS)[0], S.CHAIN_INSTRUCTIONS):
        tag, args = fb.union(ins, S.INSTRUCTION_ARGS_TYPE)
        if tag == S.JUMP_FALSE_CALL:
            break
    pos = fb.field_pos(args, 1)
    assert codes_of(tmp_path, patch(data, pos, "<i", 999)) == ["PTE_INDEX_OUT_OF_RANGE"]


def test_delegate_segment_index_out_of_range(tmp_path: Path) -> None:
    fb, _, plan = fb_of(INT8_XNN)
    ref = fb.table(fb.tables(plan, S.PLAN_DELEGATES)[0], S.DELEGATE_PROCESSED)
    pos = fb.field_pos(ref, S.DATAREF_INDEX)
    assert codes_of(tmp_path, patch(INT8_XNN, pos, "<I", 40)) == ["PTE_INDEX_OUT_OF_RANGE"]


def test_inline_delegate_data_index_out_of_range(tmp_path: Path) -> None:
    # a SEGMENT reference to segment 1 turned INLINE: the program has no inline delegate data
    fb, _, plan = fb_of(INT8_XNN)
    ref = fb.table(fb.tables(plan, S.PLAN_DELEGATES)[0], S.DELEGATE_PROCESSED)
    pos = fb.field_pos(ref, S.DATAREF_LOCATION)
    assert codes_of(tmp_path, patch(INT8_XNN, pos, "<b", S.LOC_INLINE)) == ["PTE_INDEX_OUT_OF_RANGE"]


def _constant_tensor(data: bytes) -> tuple[FlatBuffer, int]:
    fb, _, plan = fb_of(data)
    for ev in fb.tables(plan, S.PLAN_VALUES):
        tag, t = fb.union(ev, S.EVALUE_VAL_TYPE)
        if tag == S.K_TENSOR and fb.scalar(t, S.TENSOR_DATA_BUFFER_IDX, "u32", 0) > 0:
            return fb, t
    raise AssertionError("no constant tensor")


def test_constant_buffer_index_out_of_range(tmp_path: Path) -> None:
    fb, t = _constant_tensor(INT8_PORTABLE)
    pos = fb.field_pos(t, S.TENSOR_DATA_BUFFER_IDX)
    assert codes_of(tmp_path, patch(INT8_PORTABLE, pos, "<I", 999)) == ["PTE_INDEX_OUT_OF_RANGE"]


def test_constant_past_the_constant_segment(tmp_path: Path) -> None:
    fb, root, _ = fb_of(INT8_PORTABLE)
    vec = fb.vector(fb.table(root, S.PROGRAM_CONSTANT_SEGMENT), S.SUBSEGMENT_OFFSETS, 8)
    data = INT8_PORTABLE
    for i in range(1, vec.count):
        data = patch(data, vec.pos(i), "<Q", 1 << 20)
    assert set(codes_of(tmp_path, data)) == {"PTE_CONSTANT_OUT_OF_RANGE"}


def test_bad_scalar_type(tmp_path: Path) -> None:
    fb, t = _constant_tensor(INT8_PORTABLE)
    pos = fb.field_pos(t, S.TENSOR_SCALAR_TYPE)
    assert codes_of(tmp_path, patch(INT8_PORTABLE, pos, "<b", 99)) == ["PTE_BAD_UNION_TAG"]


def test_negative_dimension(tmp_path: Path) -> None:
    fb, t = _constant_tensor(INT8_PORTABLE)
    vec = fb.vector(t, S.TENSOR_SIZES, 4)
    assert codes_of(tmp_path, patch(INT8_PORTABLE, vec.start, "<i", -5)) == ["PTE_BAD_SHAPE"]


def test_bad_instruction_tag(tmp_path: Path) -> None:
    fb, _, plan = fb_of(INT8_PORTABLE)
    ins = fb.tables(fb.tables(plan, S.PLAN_CHAINS)[0], S.CHAIN_INSTRUCTIONS)[0]
    pos = fb.field_pos(ins, S.INSTRUCTION_ARGS_TYPE)
    assert codes_of(tmp_path, patch(INT8_PORTABLE, pos, "<B", 9)) == ["PTE_BAD_UNION_TAG"]


def test_bad_delegate_location(tmp_path: Path) -> None:
    fb, _, plan = fb_of(INT8_XNN)
    ref = fb.table(fb.tables(plan, S.PLAN_DELEGATES)[0], S.DELEGATE_PROCESSED)
    pos = fb.field_pos(ref, S.DATAREF_LOCATION)
    assert codes_of(tmp_path, patch(INT8_XNN, pos, "<b", 5)) == ["PTE_BAD_UNION_TAG"]


def test_no_execution_plan(tmp_path: Path) -> None:
    _, root, _ = fb_of(INT8_PORTABLE)
    vtable = root - struct.unpack_from("<i", INT8_PORTABLE, root)[0]
    data = patch(INT8_PORTABLE, vtable + 4 + 2 * S.PROGRAM_PLANS, "<H", 0)
    assert codes_of(tmp_path, data) == ["PTE_NO_EXECUTION_PLAN"]


def test_named_data_bytes_changed_after_export(tmp_path: Path) -> None:
    prog = reader.parse_view(View(INT8_XNN), "x")
    key, segment = prog.named_data[0]
    start, size = prog.segment_bytes(segment)
    assert key.endswith(hashlib.sha256(INT8_XNN[start : start + size]).hexdigest())
    data = bytearray(INT8_XNN)
    data[start] ^= 0x01
    assert codes_of(tmp_path, bytes(data)) == ["PTE_NAMED_DATA_HASH_MISMATCH"]


def test_every_named_data_key_of_the_fixtures_is_checked() -> None:
    prog = reader.parse(str(PTE / "int8_xnnpack.pte"))
    assert prog.facts["named_data_hashes_checked"] == len(prog.named_data) == 8


def test_external_tensors_without_their_ptd(tmp_path: Path) -> None:
    shutil.copy(PTE / "ext" / "fp32_portable_extconst.pte", tmp_path / "m.pte")
    inv = reader.read(str(tmp_path / "m.pte"))
    assert [(f.code, f.severity) for f in inv.structural_findings] == [("PTE_EXTERNAL_DATA_MISSING", "warning")]
    shutil.copy(PTE / "ext" / "_default_external_constant.ptd", tmp_path)
    assert reader.read(str(tmp_path / "m.pte")).structural_findings == []


def test_xnnpack_constants_in_a_ptd(tmp_path: Path) -> None:
    extw = PTE / "more" / "extw"
    inv = reader.read(str(extw / "tinylm_xnnpack_extw.pte"))
    assert inv.structural_findings == []
    assert (inv.facts["external_named_data"], inv.facts["ptd_files"]) == (4, ["weights.ptd"])
    shutil.copy(extw / "tinylm_xnnpack_extw.pte", tmp_path)
    found = reader.read(str(tmp_path / "tinylm_xnnpack_extw.pte")).structural_findings
    assert [(f.code, f.severity) for f in found] == [("PTE_EXTERNAL_DATA_MISSING", "warning")]
    assert "4 XNNPACK constant(s)" in found[0].message and "no .ptd file is beside it" in found[0].message


def test_external_ptd_behind_a_symlink_is_not_followed(tmp_path: Path) -> None:
    shutil.copy(PTE / "ext" / "fp32_portable_extconst.pte", tmp_path / "m.pte")
    (tmp_path / "w.ptd").symlink_to(PTE / "ext" / "_default_external_constant.ptd")
    assert [f.code for f in reader.read(str(tmp_path / "m.pte")).structural_findings] == ["PTE_EXTERNAL_DATA_MISSING"]


def _dag_bomb(n: int) -> bytes:
    """A valid program flatbuffer whose n plans all share one plan of n values sharing one EValue."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.StartObject(2)
    evalue = b.EndObject()
    b.StartVector(4, n, 4)
    for _ in range(n):
        b.PrependUOffsetTRelative(evalue)
    values = b.EndVector()
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(S.PLAN_VALUES, values, 0)
    plan = b.EndObject()
    b.StartVector(4, n, 4)
    for _ in range(n):
        b.PrependUOffsetTRelative(plan)
    plans = b.EndVector()
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(S.PROGRAM_PLANS, plans, 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=S.IDENTIFIER)
    return bytes(b.Output())


def test_shared_offset_bomb_is_stopped_by_the_budget(tmp_path: Path) -> None:
    data = _dag_bomb(4000)  # 32 KB describing 16 M values
    assert len(data) < 40_000
    started = time.perf_counter()
    codes = codes_of(tmp_path, data)
    assert time.perf_counter() - started < 2.0
    assert codes == ["READ_BUDGET_EXHAUSTED"]


def _shared_blob_program(blob: bytes, n: int) -> bytes:
    """A valid program whose n delegates (each called once) all reference one inline XNNPACK blob."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    data = b.CreateByteVector(blob)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(S.INLINE_DATA, data, 0)
    inline = b.EndObject()
    backend = b.CreateString("XnnpackBackend")
    b.StartObject(2)
    b.PrependInt8Slot(S.DATAREF_LOCATION, S.LOC_INLINE, 9)
    b.PrependUint32Slot(S.DATAREF_INDEX, 0, 9)
    ref = b.EndObject()
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(S.DELEGATE_ID, backend, 0)
    b.PrependUOffsetTRelativeSlot(S.DELEGATE_PROCESSED, ref, 0)
    delegate = b.EndObject()
    calls = []
    for i in range(n):
        b.StartObject(2)
        b.PrependInt32Slot(0, i, -1)
        call = b.EndObject()
        b.StartObject(2)
        b.PrependUint8Slot(S.INSTRUCTION_ARGS_TYPE, S.DELEGATE_CALL, 0)
        b.PrependUOffsetTRelativeSlot(S.INSTRUCTION_ARGS_TYPE + 1, call, 0)
        calls.append(b.EndObject())
    b.StartVector(4, n, 4)
    for call in reversed(calls):
        b.PrependUOffsetTRelative(call)
    instructions = b.EndVector()
    b.StartObject(4)
    b.PrependUOffsetTRelativeSlot(S.CHAIN_INSTRUCTIONS, instructions, 0)
    chain = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(chain)
    chains = b.EndVector()
    b.StartVector(4, n, 4)
    for _ in range(n):
        b.PrependUOffsetTRelative(delegate)
    delegates = b.EndVector()
    name = b.CreateString("forward")
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(S.PLAN_NAME, name, 0)
    b.PrependUOffsetTRelativeSlot(S.PLAN_CHAINS, chains, 0)
    b.PrependUOffsetTRelativeSlot(S.PLAN_DELEGATES, delegates, 0)
    plan = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(plan)
    plans = b.EndVector()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(inline)
    inlines = b.EndVector()
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(S.PROGRAM_PLANS, plans, 0)
    b.PrependUOffsetTRelativeSlot(S.PROGRAM_DELEGATE_DATA, inlines, 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=S.IDENTIFIER)
    return bytes(b.Output())


def test_many_delegates_sharing_one_blob_stay_linear(tmp_path: Path) -> None:
    prog = reader.parse_view(View(INLINE), "x")
    start, size = prog.inline_data[0]
    data = _shared_blob_program(INLINE[start : start + size], 3000)
    path = tmp_path / "shared.pte"
    path.write_bytes(data)
    started = time.perf_counter()
    inv = reader.read(str(path))
    assert time.perf_counter() - started < 2.0
    assert len(inv.layers) == 3000 * 2  # the blob is read once; each delegate is its own two FC layers
    # the blob's weights are named data this hand-built program does not carry, and its calls pass no
    # tensors to a graph that declares two externs (one finding per call, capped)
    codes = [(f.code, f.severity) for f in inv.structural_findings]
    assert codes[-2:] == [("PTE_EXTERNAL_DATA_MISSING", "warning"), ("XNNPACK_EXTERNS_MISMATCH", "info")]
    assert set(codes[:-2]) == {("XNNPACK_EXTERNS_MISMATCH", "error")} and len(codes) == 22
    assert inv.structural_findings[-1].message.startswith("2980 more XNNPACK_EXTERNS_MISMATCH")


def test_layer_count_is_capped_by_the_file_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # delegate calls x nodes of one shared payload grow with the square of the file size
    from quantgate.formats.pte import layers as pte_layers

    monkeypatch.setattr(pte_layers, "MAX_LAYERS_BASE", 2)
    monkeypatch.setattr(pte_layers, "BYTES_PER_LAYER", 1 << 40)
    assert codes_of(tmp_path, (PTE / "conv_int8_xnnpack.pte").read_bytes()) == ["READ_BUDGET_EXHAUSTED"]


def test_integrity_guard_fails_and_pte_program_is_blocked(tmp_path: Path) -> None:
    path = tmp_path / "bad.pte"
    path.write_bytes(INT8_XNN + b"junk")
    code, result = run_json("guard", "integrity", str(path))
    assert (code, result["status"]) == (1, "FAIL")
    assert [f["code"] for f in result["findings"]] == ["PTE_TRAILING_BYTES"]
    assert result["findings"][0]["location"]["offset"] == len(INT8_XNN)
    code, result = run_json("guard", "pte-program", str(path))
    assert result["status"] == "SKIP" and result["skip"]["reason"] == "blocked_by:integrity"
