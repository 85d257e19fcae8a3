"""ExecuTorch `.pte` reader: the program flatbuffer, its extended header and segments, without torch.

Layout (docs/formats.md#program-layout): root offset at 0, identifier `ET12` at 4, an optional
extended header `eh00` at 8 (program size, segment base offset, segment data size), the program
flatbuffer up to `program_size`, padding, then the segments (constants, delegate blobs, named data)
from `segment_base_offset`. Only the flatbuffer tables are walked (bounded, budgeted, over mmap);
segment bytes are touched only to hash named data (capped) and to read delegate payload headers.

`parse(path)` gives the `Program` (plans, values, instructions, delegates, segments; the types are
in `formats.pte.model`) and its structural findings; `read(path)` adds the weight-bearing layers
(`formats.pte.layers`) -> `Inventory`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from typing import Any

from quantgate.core import findings as F
from quantgate.core.confine import confine
from quantgate.core.inventory import Inventory
from quantgate.core.remote import is_url
from quantgate.formats.pte import schema as S
from quantgate.formats.pte.layers import attach
from quantgate.formats.pte.model import (
    FINDINGS_PER_CODE,
    MAX_DIMS,
    Delegate,
    Instruction,
    Plan,
    Program,
    Segment,
    Tensor,
    Value,
)
from quantgate.formats.wire.binary import Budget, BudgetExhausted, ReadError, View, mapped
from quantgate.formats.wire.flatbuffer import FlatBuffer

FORMAT = "pte"
MAX_NUMEL = 1 << 48
# named-data keys are checked against the SHA-256 of their bytes only up to this many bytes in total
HASH_CAP_BYTES = 16 << 20  # bounded on a multi-GB file (its cost: benchmarks/RESULTS.md, cost notes)
_SHA_KEY = re.compile(r"^(?:[a-z_]+_)?([0-9a-f]{64})$")

FINDING_CODES: dict[str, str] = {
    "PTE_TRUNCATED": "The file is shorter than its header or extended header says (or than 8 bytes).",
    "PTE_BAD_IDENTIFIER": "Bytes 4-8 are not the ExecuTorch program identifier `ET12`.",
    "PTE_BAD_EXTENDED_HEADER": "The `eh00` extended header is damaged or inconsistent (length below 24, "
    "program size beyond the segment base, segment base without segments...).",
    "PTE_SEGMENT_OUT_OF_BOUNDS": "A data segment lies outside the file or outside the declared segment data.",
    "PTE_SEGMENTS_WITHOUT_HEADER": "The program lists non-empty segments but the file has no extended header, "
    "so the runtime cannot find them.",
    "PTE_SEGMENTS_OVERLAP": "Two data segments share bytes (the writer never overlaps them; shared blobs "
    "share a segment index instead).",
    "PTE_TRAILING_BYTES": "Bytes after the end of the segment data the extended header declares.",
    "PTE_FLATBUFFER_INVALID": "The program flatbuffer is damaged: an offset, vtable, vector or string runs "
    "outside the program.",
    "PTE_INDEX_OUT_OF_RANGE": "An index in the program points past its table (operator, value, delegate, "
    "segment, constant buffer, inline delegate data).",
    "PTE_BAD_UNION_TAG": "A union or enum tag (instruction kind, value kind, data location, scalar type) "
    "is not one the schema defines.",
    "PTE_BAD_SHAPE": "A tensor has a negative dimension, too many dimensions or an absurd element count.",
    "PTE_CONSTANT_OUT_OF_RANGE": "A constant tensor's bytes run past the end of the constant segment.",
    "PTE_NAMED_DATA_HASH_MISMATCH": "A named-data key is a SHA-256 digest that does not match its bytes.",
    "PTE_NO_EXECUTION_PLAN": "The program has no execution plan (no method to run).",
    "PTE_EXTERNAL_DATA_MISSING": "Tensors (by FQN) or XNNPACK constants (by named key) stored outside the "
    "program are in no `.ptd` file beside it (warning).",
    "PTE_MUTABLE_DATA_OUT_OF_RANGE": "A mutable tensor's initial state (a buffer the program updates in place) "
    "points past the mutable data segment's offset table, its bytes run past that segment, or there is no "
    "mutable data segment at all.",
    "PTE_PTD_INVALID": "A `.ptd` file beside the program (its external weights) is damaged: not a FlatTensor "
    "file, a header that disagrees with the file (cut short), a segment outside the file, or a named entry "
    "pointing at a segment that does not exist.",
    "PTE_PTD_TENSOR_MISMATCH": "A tensor or XNNPACK constant the program takes from a `.ptd` file has a "
    "different dtype or shape there, or fewer bytes than the program needs.",
}


# -- header ------------------------------------------------------------------------------------
def _header(view: View, prog: Program) -> bool:
    """Identifier and extended header; False when nothing further can be read."""
    size = len(view)
    if size < 8:
        prog.add(F.error("PTE_TRUNCATED", f"the file has {size} bytes, fewer than the 8 of a program header", offset=0))
        return False
    ident = view.bytes(4, 4)
    if ident != S.IDENTIFIER:
        prog.add(
            F.error(
                "PTE_BAD_IDENTIFIER",
                f"identifier {ident!r} at offset 4 is not {S.IDENTIFIER!r}; the file is not an ExecuTorch "
                "program of a version this tool reads (re-export it)",
                offset=4,
                field="identifier",
            )
        )
        return False
    prog.program_size = size
    if size >= 16 and view.bytes(8, 4) == S.EXTENDED_HEADER_MAGIC:
        prog.has_header = True
        if not _extended_header(view, prog, size):
            return False
        _check_segment_data(prog, size)
    return True


def _extended_header(view: View, prog: Program, size: int) -> bool:
    """The `eh00` fields: program size, segment base and segment data size; False when the program
    cannot be located."""
    length = view.u32(12)
    if length < S.EXTENDED_HEADER_MIN_LENGTH or 8 + length > size:
        prog.add(
            F.error(
                "PTE_BAD_EXTENDED_HEADER" if 8 + length <= size else "PTE_TRUNCATED",
                f"extended header length {length} at offset 12 is "
                + ("below 24" if length < S.EXTENDED_HEADER_MIN_LENGTH else f"past the end of the file ({size} B)"),
                offset=12,
                field="eh00.length",
            )
        )
        return False
    prog.program_size = view.u64(16)
    prog.segment_base = view.u64(24)
    prog.segment_data_size = view.u64(32) if length >= 32 else 0
    if prog.program_size < 8 + length:
        prog.add(
            F.error(
                "PTE_BAD_EXTENDED_HEADER",
                f"program_size {prog.program_size} is smaller than the header itself",
                offset=16,
                field="eh00.program_size",
            )
        )
        return False
    if prog.program_size > size:
        prog.add(
            F.error(
                "PTE_TRUNCATED",
                f"the extended header says the program is {prog.program_size:,} bytes, the file has "
                f"{size:,}: the file was cut short (re-download or re-export it)",
                offset=16,
                field="eh00.program_size",
            )
        )
        return False
    return True


def _check_segment_data(prog: Program, size: int) -> None:
    """The segment base and the segment data against the program and the file's size."""
    if prog.segment_base and prog.segment_base < prog.program_size:
        prog.add(
            F.error(
                "PTE_BAD_EXTENDED_HEADER",
                f"segment_base_offset {prog.segment_base} lies inside the program (program_size "
                f"{prog.program_size})",
                offset=24,
                field="eh00.segment_base_offset",
            )
        )
    end = prog.segment_base + prog.segment_data_size
    if prog.segment_data_size and end > size:
        prog.add(
            F.error(
                "PTE_TRUNCATED",
                f"the extended header says the file is {end:,} bytes (segment base {prog.segment_base:,} + "
                f"{prog.segment_data_size:,} of segment data), it has {size:,}: "
                f"{end - size:,} bytes are missing",
                offset=32,
                field="eh00.segment_data_size",
            )
        )
    elif prog.segment_data_size and size > end:
        prog.add(
            F.error(
                "PTE_TRAILING_BYTES",
                f"{size - end:,} bytes after the end of the segment data (offset {end:,}); strip them "
                "or find out what was appended",
                offset=end,
            )
        )
    elif prog.segment_base > size:
        prog.add(
            F.error(
                "PTE_TRUNCATED",
                f"segment_base_offset {prog.segment_base:,} is past the end of the file ({size:,} bytes)",
                offset=24,
                field="eh00.segment_base_offset",
            )
        )


# -- flatbuffer tables ---------------------------------------------------------------------------
def _tensor(fb: FlatBuffer, table: int) -> Tensor:
    scalar_type = int(fb.scalar(table, S.TENSOR_SCALAR_TYPE, "i8", 0, "Tensor.scalar_type"))
    sizes = tuple(fb.scalars(table, S.TENSOR_SIZES, "i32", "Tensor.sizes"))
    data_buffer_idx = int(fb.scalar(table, S.TENSOR_DATA_BUFFER_IDX, "u32", 0, "Tensor.data_buffer_idx"))
    allocated = fb.has(table, S.TENSOR_ALLOCATION_INFO)
    mem = None
    if allocated:
        info = fb.table(table, S.TENSOR_ALLOCATION_INFO, "Tensor.allocation_info")
        if info is not None:
            # AllocationDetails {0 memory_id, 1 memory_offset_low, 2 memory_offset_high}
            low = int(fb.scalar(info, 1, "u32", 0, "AllocationDetails.memory_offset_low"))
            high = int(fb.scalar(info, 2, "u32", 0, "AllocationDetails.memory_offset_high"))
            mem = (int(fb.scalar(info, 0, "u32", 0, "AllocationDetails.memory_id")), (high << 32) | low)
    dynamism = int(fb.scalar(table, S.TENSOR_SHAPE_DYNAMISM, "i8", 0, "Tensor.shape_dynamism"))
    fqn, external = None, False
    extra = fb.table(table, S.TENSOR_EXTRA_INFO, "Tensor.extra_tensor_info")
    if extra is not None:
        fqn = fb.string(extra, S.EXTRA_FQN, "", "ExtraTensorInfo.fully_qualified_name") or None
        external = int(fb.scalar(extra, S.EXTRA_LOCATION, "i8", 0, "ExtraTensorInfo.location")) == 1
    return Tensor(scalar_type, sizes, data_buffer_idx, allocated, dynamism, fqn, external, mem)


def _value(fb: FlatBuffer, table: int) -> Value:
    tag, val = fb.union(table, S.EVALUE_VAL_TYPE, "EValue.val")
    value = Value(tag)
    if val is None:
        return value
    if tag == S.K_TENSOR:
        value.tensor = _tensor(fb, val)
    elif tag == S.K_INT:
        value.number = int(fb.scalar(val, 0, "i64", 0, "Int.int_val"))
    elif tag == S.K_DOUBLE:
        value.number = float(fb.scalar(val, 0, "f64", 0.0, "Double.double_val"))
    elif tag == S.K_INT_LIST:
        value.items = fb.scalars(val, 0, "i64", "IntList.items")
    elif tag in (S.K_TENSOR_LIST, S.K_OPTIONAL_TENSOR_LIST):
        value.items = fb.scalars(val, 0, "i32", "TensorList.items")
    return value


def _plan(fb: FlatBuffer, table: int, prog: Program) -> Plan:
    plan = Plan(fb.string(table, S.PLAN_NAME, "", "ExecutionPlan.name"))
    for op in fb.tables(table, S.PLAN_OPERATORS, "ExecutionPlan.operators"):
        name = fb.string(op, S.OPERATOR_NAME, "", "Operator.name")
        overload = fb.string(op, S.OPERATOR_OVERLOAD, "", "Operator.overload")
        plan.operators.append(f"{name}.{overload}" if overload else name)
    plan.values = [_value(fb, v) for v in fb.tables(table, S.PLAN_VALUES, "ExecutionPlan.values")]
    plan.inputs = fb.scalars(table, S.PLAN_INPUTS, "i32", "ExecutionPlan.inputs")
    plan.non_const_buffer_sizes = fb.scalars(table, S.PLAN_NON_CONST_BUFFER_SIZES, "i64",
                                             "ExecutionPlan.non_const_buffer_sizes")
    chains = fb.tables(table, S.PLAN_CHAINS, "ExecutionPlan.chains")
    plan.chains = len(chains)
    for chain_index, chain in enumerate(chains):
        for in_chain, ins in enumerate(fb.tables(chain, S.CHAIN_INSTRUCTIONS, "Chain.instructions")):
            tag, args = fb.union(ins, S.INSTRUCTION_ARGS_TYPE, "Instruction.instr_args")
            instr = Instruction(len(plan.instructions), chain_index, tag, in_chain=in_chain)
            if args is not None and tag in (S.KERNEL_CALL, S.DELEGATE_CALL):
                instr.target = int(fb.scalar(args, S.CALL_TARGET, "i32", 0, "KernelCall.op_index"))
                instr.args = fb.scalars(args, S.CALL_ARGS, "i32", "KernelCall.args")
            elif args is not None and tag == S.MOVE_CALL:
                instr.args = [
                    int(fb.scalar(args, 0, "i32", 0, "MoveCall.move_from")),
                    int(fb.scalar(args, 1, "i32", 0, "MoveCall.move_to")),
                ]
            elif args is not None and tag == S.JUMP_FALSE_CALL:
                instr.args = [int(fb.scalar(args, 0, "i32", 0, "JumpFalseCall.cond_value_index"))]
                instr.target = int(fb.scalar(args, 1, "i32", 0, "JumpFalseCall.destination_instruction"))
            elif args is not None and tag == S.FREE_CALL:
                instr.args = [int(fb.scalar(args, 0, "i32", 0, "FreeCall.value_index"))]
            plan.instructions.append(instr)
    for index, d in enumerate(fb.tables(table, S.PLAN_DELEGATES, "ExecutionPlan.delegates")):
        backend = fb.string(d, S.DELEGATE_ID, "", "BackendDelegate.id")
        ref = fb.table(d, S.DELEGATE_PROCESSED, "BackendDelegate.processed")
        location, data_index = -1, -1
        if ref is not None:
            location = int(fb.scalar(ref, S.DATAREF_LOCATION, "i8", 0, "BackendDelegateDataReference.location"))
            data_index = int(fb.scalar(ref, S.DATAREF_INDEX, "u32", 0, "BackendDelegateDataReference.index"))
        plan.delegates.append(Delegate(index, backend, location, data_index))
    return plan


def _tables(fb: FlatBuffer, prog: Program) -> None:
    root = fb.root()
    for i, seg in enumerate(fb.tables(root, S.PROGRAM_SEGMENTS, "Program.segments")):
        offset = int(fb.scalar(seg, S.SEGMENT_OFFSET, "u64", 0, "DataSegment.offset"))
        size = int(fb.scalar(seg, S.SEGMENT_SIZE, "u64", 0, "DataSegment.size"))
        prog.segments.append(Segment(i, prog.segment_base + offset, size))
    cseg = fb.table(root, S.PROGRAM_CONSTANT_SEGMENT, "Program.constant_segment")
    if cseg is not None:
        prog.constant_segment = int(fb.scalar(cseg, S.SUBSEGMENT_INDEX, "u32", 0, "constant_segment.segment_index"))
        prog.constant_offsets = fb.scalars(cseg, S.SUBSEGMENT_OFFSETS, "u64", "constant_segment.offsets")
    mutable = fb.tables(root, S.PROGRAM_MUTABLE_SEGMENTS, "Program.mutable_data_segments")
    prog.mutable_segments = len(mutable)
    if mutable:
        prog.mutable_segment = int(fb.scalar(mutable[0], S.SUBSEGMENT_INDEX, "u32", 0,
                                             "mutable_data_segments.segment_index"))
        prog.mutable_offsets = fb.scalars(mutable[0], S.SUBSEGMENT_OFFSETS, "u64", "mutable_data_segments.offsets")
    legacy = fb.vector(root, S.PROGRAM_CONSTANT_BUFFER, 4, "Program.constant_buffer")
    prog.legacy_constant_buffers = legacy.count if legacy is not None else 0
    if legacy is not None:
        for buf in fb.tables(root, S.PROGRAM_CONSTANT_BUFFER, "Program.constant_buffer"):
            span = fb.byte_span(buf, S.INLINE_DATA, "Buffer.storage")
            prog.legacy_constant_bytes += span[1] if span is not None else 0
    for nd in fb.tables(root, S.PROGRAM_NAMED_DATA, "Program.named_data"):
        key = fb.string(nd, S.NAMED_KEY, "", "NamedData.key", limit=1024)
        prog.named_data.append((key, int(fb.scalar(nd, S.NAMED_SEGMENT, "u32", 0, "NamedData.segment_index"))))
    for blob in fb.tables(root, S.PROGRAM_DELEGATE_DATA, "Program.backend_delegate_data"):
        span = fb.byte_span(blob, S.INLINE_DATA, "BackendDelegateInlineData.data")
        prog.inline_data.append(span if span is not None else (0, 0))
    for plan in fb.tables(root, S.PROGRAM_PLANS, "Program.execution_plan"):
        prog.plans.append(_plan(fb, plan, prog))


# -- cross-references ----------------------------------------------------------------------------
def _index_error(prog: Program, what: str, index: int, limit: int, where: str) -> None:
    prog.add(
        F.error(
            "PTE_INDEX_OUT_OF_RANGE",
            f"{what} {index} is out of range (0..{limit - 1}) in {where}; the program is damaged, re-export it",
            field=where,
        )
    )


def _check_segments(prog: Program) -> None:
    size = len_end = prog.size
    if prog.has_header and prog.segment_data_size:
        len_end = min(size, prog.segment_base + prog.segment_data_size)
    for seg in prog.segments:
        if seg.size == 0:
            continue
        if not prog.has_header:
            prog.add(
                F.error(
                    "PTE_SEGMENTS_WITHOUT_HEADER",
                    f"segment {seg.index} has {seg.size:,} bytes but the file has no extended header to say "
                    "where segments start",
                    field=f"Program.segments[{seg.index}]",
                )
            )
            continue
        if seg.start + seg.size > len_end:
            prog.add(
                F.error(
                    "PTE_SEGMENT_OUT_OF_BOUNDS",
                    f"segment {seg.index} at offset {seg.start:,} ({seg.size:,} bytes) ends past "
                    + ("the end of the file" if len_end == size else "the declared segment data")
                    + f" ({len_end:,})",
                    offset=seg.start,
                    field=f"Program.segments[{seg.index}]",
                )
            )
    # overlaps among the segments that fit (one running past the end is already reported)
    placed = sorted(
        (s.start, s.start + s.size, s.index)
        for s in prog.segments
        if s.size and prog.has_header and s.start + s.size <= len_end
    )
    for (_, end, first), (start, _, second) in itertools.pairwise(placed):
        if start < end:
            prog.add(
                F.error(
                    "PTE_SEGMENTS_OVERLAP",
                    f"segments {first} and {second} overlap at offset {start:,} ({end - start:,} bytes shared)",
                    offset=start,
                    field=f"Program.segments[{second}]",
                )
            )
    if not prog.has_header and any(s.size for s in prog.segments):
        prog.segments = [Segment(s.index, s.start, 0) for s in prog.segments]


def _check_mutable(prog: Program, t: Tensor, where: str) -> None:
    """A mutable tensor with an initial state (allocated, data_buffer_idx > 0): its bytes in the mutable segment."""
    idx = t.data_buffer_idx
    span = prog.segment_bytes(prog.mutable_segment) if prog.mutable_segment is not None else None
    problem = None
    if prog.mutable_segment is None:
        problem = f"has initial state {idx} but the program has no mutable data segment"
    elif span is None:
        return  # the segment index itself is reported (PTE_INDEX_OUT_OF_RANGE)
    elif idx >= len(prog.mutable_offsets):
        problem = f"has initial state {idx} but the mutable data segment lists {len(prog.mutable_offsets)} offsets"
    elif prog.mutable_offsets[idx] + t.nbytes > span[1]:
        problem = (f"({t.nbytes:,} bytes at +{prog.mutable_offsets[idx]:,}) runs past the end of the mutable data "
                   f"segment ({span[1]:,} bytes)")
    if problem is not None:
        prog.add(F.error("PTE_MUTABLE_DATA_OUT_OF_RANGE", f"mutable tensor {where} {problem}; re-export the program",
                         field=where, tensor=t.fqn))
    else:
        prog.facts["mutable_initial_bytes"] = prog.facts.get("mutable_initial_bytes", 0) + t.nbytes


def _check_tensor(prog: Program, t: Tensor, where: str, const_span: tuple[int, int] | None) -> None:
    if t.scalar_type not in S.SCALAR_TYPES:
        prog.add(
            F.error("PTE_BAD_UNION_TAG", f"scalar type {t.scalar_type} of {where} is not a ScalarType", field=where)
        )
    if len(t.sizes) > MAX_DIMS or any(d < 0 for d in t.sizes) or t.numel > MAX_NUMEL:
        prog.add(F.error("PTE_BAD_SHAPE", f"{where} has shape {list(t.sizes)[:MAX_DIMS]}", field=where, tensor=t.fqn))
        return
    if t.allocated and t.data_buffer_idx > 0 and not t.external:
        _check_mutable(prog, t, where)
        return
    if not t.constant or t.external:
        return
    idx = t.data_buffer_idx
    if prog.constant_segment is not None:
        if idx >= len(prog.constant_offsets):
            _index_error(prog, "data_buffer_idx", idx, len(prog.constant_offsets), where)
        elif const_span is not None and prog.constant_offsets[idx] + t.nbytes > const_span[1]:
            prog.add(
                F.error(
                    "PTE_CONSTANT_OUT_OF_RANGE",
                    f"{where} ({t.nbytes:,} bytes at +{prog.constant_offsets[idx]:,}) runs past the end of the "
                    f"constant segment ({const_span[1]:,} bytes)",
                    offset=const_span[0] + min(prog.constant_offsets[idx], const_span[1]),
                    field=where,
                    tensor=t.fqn,
                )
            )
    elif idx >= prog.legacy_constant_buffers:
        _index_error(prog, "data_buffer_idx", idx, prog.legacy_constant_buffers, where)


def _check_references(prog: Program) -> None:
    """Every index in the program points into its table; a bad instruction is disabled (kind 0) so
    that nothing traces through it, and each delegate gets the span of its payload."""
    nseg = len(prog.segments)
    const_span = None
    if prog.constant_segment is not None and prog.constant_offsets:
        const_span = prog.segment_bytes(prog.constant_segment)
        if const_span is None:
            _index_error(prog, "constant segment index", prog.constant_segment, nseg, "Program.constant_segment")
    for i, (_key, seg) in enumerate(prog.named_data):
        if seg >= nseg:
            _index_error(prog, "segment_index", seg, nseg, f"Program.named_data[{i}]")
    if prog.mutable_segment is not None and prog.mutable_segment >= nseg:
        _index_error(prog, "segment_index", prog.mutable_segment, nseg, "Program.mutable_data_segments[0]")
    if not prog.plans and prog.complete:
        prog.add(F.error("PTE_NO_EXECUTION_PLAN", "the program has no execution plan: there is no method to run"))
    for plan in prog.plans:
        _check_values(prog, plan, const_span)
        _check_instructions(prog, plan)
        _locate_delegates(prog, plan)


def _check_values(prog: Program, plan: Plan, const_span: tuple[int, int] | None) -> None:
    nvalues = len(plan.values)
    for vi, value in enumerate(plan.values):
        where = f"{plan.name}.values[{vi}]"
        if value.kind not in S.KERNEL_TYPES and value.kind != 0:
            prog.add(
                F.error(
                    "PTE_BAD_UNION_TAG", f"value kind {value.kind} of {where} is not a KernelTypes tag", field=where
                )
            )
        if value.tensor is not None:
            _check_tensor(prog, value.tensor, where, const_span)
        if value.kind in (S.K_TENSOR_LIST, S.K_OPTIONAL_TENSOR_LIST):
            bad = [x for x in value.items or [] if not (-1 <= x < nvalues)]
            if bad:
                _index_error(prog, "value index", bad[0], nvalues, where)
                value.items = [x for x in value.items or [] if -1 <= x < nvalues]


def _check_instructions(prog: Program, plan: Plan) -> None:
    nvalues, nops, ndel = len(plan.values), len(plan.operators), len(plan.delegates)
    chain_lengths: dict[int, int] = {}
    for ins in plan.instructions:
        chain_lengths[ins.chain] = chain_lengths.get(ins.chain, 0) + 1
    for ins in plan.instructions:
        where = f"{plan.name}.chains[{ins.chain}].instructions[{ins.in_chain}]"
        if ins.kind not in S.INSTRUCTION_KINDS:
            prog.add(
                F.error(
                    "PTE_BAD_UNION_TAG",
                    f"instruction kind {ins.kind} of {where} is not one the schema defines",
                    field=where,
                )
            )
            continue
        chain_length = chain_lengths.get(ins.chain, 0)
        # a jump to one past the last instruction ends the chain
        if ins.kind == S.JUMP_FALSE_CALL and not 0 <= ins.target <= chain_length:
            _index_error(prog, "destination_instruction", ins.target, chain_length + 1, where)
            ins.kind = 0
        elif ins.kind == S.KERNEL_CALL and not 0 <= ins.target < nops:
            _index_error(prog, "op_index", ins.target, nops, where)
            ins.kind = 0
        elif ins.kind == S.DELEGATE_CALL and not 0 <= ins.target < ndel:
            _index_error(prog, "delegate_index", ins.target, ndel, where)
            ins.kind = 0
        check = ins.args
        bad = [a for a in check if not 0 <= a < nvalues]
        if bad and ins.kind in (S.KERNEL_CALL, S.DELEGATE_CALL, S.MOVE_CALL, S.JUMP_FALSE_CALL, S.FREE_CALL):
            _index_error(prog, "value index", bad[0], nvalues, where)
            ins.kind = 0  # not traced further


def _locate_delegates(prog: Program, plan: Plan) -> None:
    """Each delegate's payload span, in a segment or in the program's inline data."""
    nseg = len(prog.segments)
    for d in plan.delegates:
        where = f"{plan.name}.delegates[{d.index}] ({d.backend})"
        if d.location == S.LOC_SEGMENT:
            span = prog.segment_bytes(d.data_index)
            if span is None:
                _index_error(prog, "segment index", d.data_index, nseg, where)
            d.span = span
        elif d.location == S.LOC_INLINE:
            if 0 <= d.data_index < len(prog.inline_data):
                d.span = prog.inline_data[d.data_index]
            else:
                _index_error(prog, "inline data index", d.data_index, len(prog.inline_data), where)
        else:
            prog.add(
                F.error(
                    "PTE_BAD_UNION_TAG",
                    f"data location {d.location} of {where} is neither INLINE nor SEGMENT",
                    field=where,
                )
            )


def _check_named_data(view: View, prog: Program) -> None:
    """Keys that are SHA-256 digests must match their bytes; only while the total stays under the cap."""
    budget = HASH_CAP_BYTES
    checked = 0
    for i, (key, seg) in enumerate(prog.named_data):
        match = _SHA_KEY.match(key)
        span = prog.segment_bytes(seg)
        if match is None or span is None or span[0] + span[1] > len(view) or span[1] > budget:
            continue
        budget -= span[1]
        view.ensure(span[0], span[1])
        digest = hashlib.sha256(memoryview(view.buf)[span[0] : span[0] + span[1]]).hexdigest()
        checked += 1
        if digest != match.group(1):
            prog.add(
                F.error(
                    "PTE_NAMED_DATA_HASH_MISMATCH",
                    f"named data {key[:24]}… (segment {seg}, offset {span[0]:,}) hashes to {digest[:16]}…: its "
                    "bytes were changed after export",
                    offset=span[0],
                    field=f"Program.named_data[{i}]",
                )
            )
    prog.facts["named_data_hashes_checked"] = checked


class _RemoteEntry:
    """A `.ptd` beside a remote program, shaped like the os.DirEntry the local scan yields."""

    def __init__(self, name: str, path: str):
        self.name, self.path = name, path


def _remote_ptds(url: str) -> list[Any]:
    """A URL's folder cannot be listed: the names ExecuTorch writes (`_default_external_constant.ptd`,
    `<program stem>.ptd`) are tried, and those the server has are read."""
    from quantgate.core import remote

    stem = remote.basename(url).rsplit(".", 1)[0]
    out = []
    for name in sorted({"_default_external_constant.ptd", f"{stem}.ptd"}):
        target = remote.join(url, name)
        try:
            if remote.exists(target):
                out.append(_RemoteEntry(name, target))
        except remote.RemoteError:
            continue
    return out


def _ptd_beside(prog: Program) -> tuple[list[str], dict[str, tuple[int | None, int | None, tuple[int, ...] | None]]]:
    """Names and named entries of the `.ptd` files in the program's folder (read once; damage is reported)."""
    cached = prog.facts.get("_ptd")
    if cached is not None:
        return cached
    remote = is_url(prog.path)
    folder = "" if remote else os.path.dirname(os.path.abspath(prog.path))
    found: dict[str, tuple[int | None, int | None, tuple[int, ...] | None]] = {}
    names = []
    try:
        entries = _remote_ptds(prog.path) if remote else sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        entries = []
    for entry in entries:
        # only regular files in the program's own folder, no link: the one confinement rule
        # (quantgate.core.confine, docs/architecture.md#hostile-input); a remote store has no links
        if not entry.name.endswith(".ptd") or (not remote and confine(folder, entry.name, links=False).path is None):
            continue
        names.append(entry.name)
        keys, problems = read_ptd(entry.path)
        for key, info in keys.items():
            found.setdefault(key, info)
        for problem in problems:
            prog.add(F.error("PTE_PTD_INVALID", f"{entry.name}: {problem}; the runtime cannot load the program's "
                             "external weights from it (re-export or re-copy the .ptd)", field=entry.name))
    prog.facts["_ptd"] = (names, found)
    prog.facts["ptd_files"] = names
    return names, found


def check_external_keys(prog: Program, wanted: set[str], what: str,
                        need: dict[str, tuple[int | None, tuple[int, ...] | None, int]] | None = None) -> None:
    """Keys the program needs from outside itself must be in a `.ptd` beside it (a warning if not), and
    hold what the program expects there: `need` maps a key to (scalar type, sizes, bytes), None where the
    program does not say."""
    names, found = _ptd_beside(prog)
    missing = sorted(k for k in wanted if k not in found)
    if missing:
        listed = f"{', '.join(k[:24] for k in missing[:3])}{'…' if len(missing) > 3 else ''}"
        where = (
            f"are not in the .ptd files beside it ({', '.join(names)})"
            if names
            else "live outside the program and no .ptd file is beside it"
        )
        prog.add(
            F.warning(
                "PTE_EXTERNAL_DATA_MISSING",
                f"{len(missing)} {what} ({listed}) {where}; ship the .ptd with the program",
                tensor=missing[0],
            )
        )
    for key in sorted(k for k in (need or {}) if k in found):
        scalar_type, sizes, nbytes = (need or {})[key]
        size, ptd_type, ptd_sizes = found[key]
        problem = None
        if ptd_type is not None and scalar_type is not None and ptd_sizes is not None and sizes is not None and (
            ptd_type != scalar_type or tuple(ptd_sizes) != tuple(sizes)
        ):
            problem = (f"is {S.scalar_name(ptd_type)} {list(ptd_sizes)} in the .ptd, the program expects "
                       f"{S.scalar_name(scalar_type)} {list(sizes)}")
        elif size is not None and size < nbytes:
            problem = f"has {size:,} bytes in the .ptd, the program needs {nbytes:,}"
        if problem is not None:
            prog.add(F.error("PTE_PTD_TENSOR_MISMATCH", f"{what.removesuffix('(s)')} {key[:64]!r} {problem}; the .ptd "
                             "beside the program was made for another export", tensor=key[:64]))


def _check_external(prog: Program) -> None:
    """External tensors live in a `.ptd` beside the program; say so when none carries them."""
    wanted = {v.tensor.fqn for plan in prog.plans for v in plan.values if v.tensor is not None and v.tensor.external}
    wanted.discard(None)
    if not wanted:
        return
    prog.facts["external_tensors"] = len(wanted)
    need = {v.tensor.fqn: (v.tensor.scalar_type, v.tensor.sizes, v.tensor.nbytes)
            for plan in prog.plans for v in plan.values
            if v.tensor is not None and v.tensor.external and v.tensor.fqn is not None}
    check_external_keys(prog, {k for k in wanted if k is not None}, "external tensor(s)", need)


PTD_HEADER_MAGIC = b"FH01"
PTD_HEADER_LENGTH = 40  # magic, length, flatbuffer offset and size, segment base offset, segment data size


def read_ptd(path: str) -> tuple[dict[str, tuple[int | None, int | None, tuple[int, ...] | None]], list[str]]:
    """A FlatTensor `.ptd`: {key: (segment bytes or None, scalar type or None, sizes or None)} and its defects.

    Layout (executorch/extension/flat_tensor/serialize, 1.5.1): root offset, `FT01` at 4, an `FH01`
    header at 8 (u32 length, u64 flatbuffer offset and size, u64 segment base offset and data size),
    then FlatTensor {0 version, 1 segments [DataSegment {0 offset, 1 size}], 2 named_data [NamedData
    {0 key, 1 segment_index, 2 tensor_layout {0 scalar_type, 1 sizes}}]}. Bounded; never raises.
    """
    out: dict[str, tuple[int | None, int | None, tuple[int, ...] | None]] = {}
    problems: list[str] = []
    try:
        with mapped(path) as view:
            size = len(view)
            if size < 8 or view.bytes(4, 4) != b"FT01":
                return out, ["not a FlatTensor file (identifier FT01 missing)"]
            fb_end, seg_base, seg_end = size, 0, size
            if size >= 48 and view.bytes(8, 4) == PTD_HEADER_MAGIC:
                length = view.u32(12)
                fb_off, fb_size, seg_base, seg_size = view.u64(16), view.u64(24), view.u64(32), view.u64(40)
                if length < PTD_HEADER_LENGTH or fb_off + fb_size > size:
                    return out, [f"header (length {length}) puts the flatbuffer at [{fb_off:,}, {fb_off + fb_size:,}) "
                                 f"in a {size:,}-byte file"]
                fb_end = fb_off + fb_size
                seg_end = seg_base + seg_size
                if seg_end > size:
                    problems.append(f"the header says the file is {seg_end:,} bytes (segment base {seg_base:,} + "
                                    f"{seg_size:,} of data), it has {size:,}: it was cut short")
                    seg_end = size
            fb = FlatBuffer(view, Budget.for_size(fb_end), 0, fb_end)
            root = fb.root()
            segments = []
            for i, seg in enumerate(fb.tables(root, 1, "FlatTensor.segments")):
                offset = int(fb.scalar(seg, 0, "u64", 0, "DataSegment.offset"))
                length_ = int(fb.scalar(seg, 1, "u64", 0, "DataSegment.size"))
                if seg_base + offset + length_ > seg_end and len(problems) < FINDINGS_PER_CODE:
                    problems.append(f"segment {i} [{seg_base + offset:,}, {seg_base + offset + length_:,}) runs past "
                                    f"the end of the data ({seg_end:,})")
                segments.append(length_)
            for i, nd in enumerate(fb.tables(root, 2, "FlatTensor.named_data")):
                key = fb.string(nd, 0, "", "NamedData.key", limit=1024)
                index = int(fb.scalar(nd, 1, "u32", 0, "NamedData.segment_index"))
                if index >= len(segments) and len(problems) < FINDINGS_PER_CODE:
                    problems.append(f"named_data[{i}] points at segment {index}; the file has {len(segments)}")
                layout = fb.table(nd, 2, "NamedData.tensor_layout")
                scalar_type = sizes = None
                if layout is not None:
                    scalar_type = int(fb.scalar(layout, 0, "i8", 0, "TensorLayout.scalar_type"))
                    sizes = tuple(fb.scalars(layout, 1, "i32", "TensorLayout.sizes"))
                out.setdefault(key, (segments[index] if index < len(segments) else None, scalar_type, sizes))
    except OSError as exc:
        problems.append(f"cannot be read ({exc.strerror or exc})")
    except ReadError as exc:
        problems.append(f"damaged flatbuffer ({exc.message})")
    return out, problems


def parse_view(view: View, path: str) -> Program:
    """The program in `view`; never raises on bad content (defects are `prog.findings`)."""
    prog = Program(path, len(view))
    if not _header(view, prog):
        return prog
    fb_end = prog.program_size if prog.has_header else len(view)
    try:
        fb = FlatBuffer(view, Budget.for_size(fb_end), 0, fb_end)
        _tables(fb, prog)
        prog.complete = True
    except BudgetExhausted as exc:
        prog.add(
            F.error(
                "READ_BUDGET_EXHAUSTED",
                f"{exc.message}; the program's tables reference each other far more often than a real export does",
                field=exc.field,
            )
        )
    except ReadError as exc:
        prog.add(
            F.error(
                "PTE_FLATBUFFER_INVALID",
                f"damaged program flatbuffer while reading {exc.field or 'a table'}: {exc.message}",
                offset=exc.offset,
                field=exc.field,
            )
        )
    _check_segments(prog)
    _check_references(prog)
    _check_named_data(view, prog)
    _check_external(prog)
    return prog


def parse(path: str) -> Program:
    with mapped(path) as view:
        return parse_view(view, path)


def _facts(prog: Program) -> dict[str, Any]:
    ops: dict[str, int] = {}
    backends: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for plan in prog.plans:
        for ins in plan.instructions:
            kinds[S.INSTRUCTION_KINDS.get(ins.kind, "invalid")] = (
                kinds.get(S.INSTRUCTION_KINDS.get(ins.kind, "invalid"), 0) + 1
            )
            if ins.kind == S.KERNEL_CALL:
                name = plan.operators[ins.target]
                ops[name] = ops.get(name, 0) + 1
            elif ins.kind == S.DELEGATE_CALL:
                name = plan.delegates[ins.target].backend
                backends[name] = backends.get(name, 0) + 1
    facts: dict[str, Any] = {
        "methods": [p.name for p in prog.plans],
        "extended_header": prog.has_header,
        "program_size": prog.program_size,
        "segment_base_offset": prog.segment_base if prog.has_header else None,
        "segment_data_size": prog.segment_data_size if prog.has_header else None,
        "segments": len(prog.segments),
        "named_data": len(prog.named_data),
        "instructions": sum(len(p.instructions) for p in prog.plans),
        "instruction_kinds": kinds,
        "values": sum(len(p.values) for p in prog.plans),
        "operators": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "delegate_calls": backends,
    }
    facts.update({k: v for k, v in prog.facts.items() if not k.startswith("_")})
    n_ins = facts["instructions"]
    facts["summary"] = (
        f"{len(prog.plans)} method(s), {n_ins} instruction(s), "
        f"{sum(backends.values())} delegate call(s), {len(prog.segments)} segment(s)"
    )
    return {k: v for k, v in facts.items() if v is not None}


def memory_metrics(prog: Program) -> dict[str, Any]:
    """`memory`: what the runtime allocates before running anything, from the plan's own numbers.

    planned_bytes: the largest method's memory-planned (non-constant) buffers; the runtime allocates
    every buffer of the method it loads (entry 0 of `non_const_buffer_sizes` is reserved, always 0).
    constant_bytes: the constant segment plus the legacy inline constant buffers.
    """
    by_method = [sum(max(0, int(n)) for n in p.non_const_buffer_sizes[1:]) for p in prog.plans]
    constant = prog.legacy_constant_bytes
    if prog.constant_segment is not None:
        span = prog.segment_bytes(prog.constant_segment)
        constant += span[1] if span is not None else 0
    return {
        "planned_bytes": max(by_method, default=0),
        "constant_bytes": constant,
    }


def _check_named_outside(prog: Program, inv: Inventory, sizes: dict[str, int]) -> None:
    """XNNPACK constants stored under a named key the program does not hold: in a .ptd beside it."""
    inv.facts["external_named_data"] = len(sizes)
    check_external_keys(prog, set(sizes), "XNNPACK constant(s)", {k: (None, None, n) for k, n in sizes.items()})
    inv.facts["ptd_files"] = prog.facts.get("ptd_files", [])


def read(path: str) -> Inventory:
    """The program's inventory; never raises on bad content."""
    try:
        with mapped(path) as view:
            prog = parse_view(view, path)
            inv = Inventory(FORMAT, path, len(view))
            inv.structural_findings = prog.findings
            inv.facts = _facts(prog)
            if prog.complete:
                outside = attach(prog, view, inv)
                if outside:
                    _check_named_outside(prog, inv, outside)
                inv.metrics["memory"] = memory_metrics(prog)
            prog.capped.close()
            return inv
    except OSError as exc:
        inv = Inventory(FORMAT, path, 0)
        inv.structural_findings.append(F.error("FILE_UNREADABLE", f"cannot read the file: {exc.strerror or exc}"))
        return inv


def remote_extent(view: View, head: bytes, block: int) -> int:
    """Where the region this reader walks outside View.check ends, for a URL (formats.wire.binary.prefetch):
    a program's extended header (`eh00`: u32 length, u64 program size) or a .ptd's (`FH01`: u32 length,
    u64 flatbuffer offset, u64 flatbuffer size) gives the tables' end, not the weights after them; without
    one, the whole file."""
    if len(head) >= 32 and head[8:12] == b"eh00":
        return int.from_bytes(head[16:24], "little")
    if len(head) >= 32 and head[8:12] == b"FH01":
        return int.from_bytes(head[16:24], "little") + int.from_bytes(head[24:32], "little")
    return len(view)
