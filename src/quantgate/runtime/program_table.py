"""A method's chain-0 instruction table and value table, read from a `.pte` with the standard library.

The runtime guard needs, per instruction, the kernel's operator name and argument value indices
(or, for a DelegateCall, the backend id), and per value whether it is a constant tensor with its
dtype and sizes, to trace a GEMM's weight back to the constant it comes from. Only the flatbuffer
tables are touched (memory-mapped, bounded, budgeted): never the segments holding the weights, so
the cost follows the program's structure, not its size. Field ids and union tags: `formats.pte.schema`
(program.fbs, docs/formats.md#program-layout); what makes a tensor constant: `formats.pte.model.is_constant`.

It is deliberately minimal (chain 0 of one method, no segment checks), on the shared bounded
flatbuffer reader; `formats.pte.reader` is the full structural reader. Importing it loads quantgate
and the standard library only: the runtime child that runs it loads nothing heavy for it.
"""

from __future__ import annotations

from typing import Any

from quantgate.formats.pte import schema as S
from quantgate.formats.pte.model import is_constant
from quantgate.formats.wire.binary import Budget, ReadError, mapped
from quantgate.formats.wire.flatbuffer import FlatBuffer


class ProgramTableError(Exception):
    pass


def _tensor(t: FlatBuffer, table: int) -> list[Any]:
    """[scalar_type, sizes, constant, fqn, [memory_id, offset] or None] of one Tensor table."""
    scalar_type = t.scalar(table, S.TENSOR_SCALAR_TYPE, "u8", 0)
    sizes = t.scalars(table, S.TENSOR_SIZES, "i32")
    data_buffer_idx = t.scalar(table, S.TENSOR_DATA_BUFFER_IDX, "u32", 0)
    allocated = t.has(table, S.TENSOR_ALLOCATION_INFO)
    mem = None
    info = t.table(table, S.TENSOR_ALLOCATION_INFO) if allocated else None
    if info is not None:
        # AllocationDetails {0 memory_id, 1 memory_offset_low, 2 memory_offset_high}: a static view shares it
        offset = (int(t.scalar(info, 2, "u32", 0)) << 32) | int(t.scalar(info, 1, "u32", 0))
        mem = [int(t.scalar(info, 0, "u32", 0)), offset]
    fqn = None
    external = False
    extra = t.table(table, S.TENSOR_EXTRA_INFO)
    if extra is not None:
        fqn = t.string(extra, S.EXTRA_FQN) or None
        external = t.scalar(extra, S.EXTRA_LOCATION, "u8", 0) == S.TENSOR_LOC_EXTERNAL
    return [scalar_type, sizes, is_constant(allocated, data_buffer_idx, external), fqn, mem]


def read(path: str, method: str = "forward") -> tuple[list[dict[str, Any]], list[Any]]:
    """(instructions, values) of `method`'s chain 0, in the runner's JSON form."""
    with mapped(path) as view:
        try:
            t = FlatBuffer(view, Budget.for_size(len(view)))
            if t.identifier() != S.IDENTIFIER:
                raise ProgramTableError(f"identifier {t.identifier()!r} is not {S.IDENTIFIER!r}")
            root = t.root()
            plan = next((p for p in t.tables(root, S.PROGRAM_PLANS) if t.string(p, S.PLAN_NAME) == method), None)
            if plan is None:
                raise ProgramTableError(f"no execution plan named {method!r}")
            operators = []
            for op in t.tables(plan, S.PLAN_OPERATORS):
                name, overload = t.string(op, S.OPERATOR_NAME), t.string(op, S.OPERATOR_OVERLOAD)
                operators.append(f"{name}.{overload}" if overload else name)
            delegates = [t.string(d, S.DELEGATE_ID) for d in t.tables(plan, S.PLAN_DELEGATES)]
            values: list[Any] = []
            for evalue in t.tables(plan, S.PLAN_VALUES):
                tag, tensor = t.union(evalue, S.EVALUE_VAL_TYPE)
                values.append(_tensor(t, tensor) if tag == S.K_TENSOR and tensor is not None else None)
            instructions: list[dict[str, Any]] = []
            chains = t.tables(plan, S.PLAN_CHAINS)
            if chains:
                for index, instruction in enumerate(t.tables(chains[0], S.CHAIN_INSTRUCTIONS)):
                    tag, args_table = t.union(instruction, S.INSTRUCTION_ARGS_TYPE)
                    row: dict[str, Any] = {"index": index, "kind": S.INSTRUCTION_KINDS.get(tag, f"tag {tag}")}
                    if args_table is not None and tag in (S.KERNEL_CALL, S.DELEGATE_CALL):
                        target = t.scalar(args_table, S.CALL_TARGET, "i32", 0)
                        row["args"] = t.scalars(args_table, S.CALL_ARGS, "i32")
                        if tag == S.KERNEL_CALL:
                            row["op"] = operators[target] if 0 <= target < len(operators) else None
                        else:
                            row["delegate_index"] = target
                            row["backend"] = delegates[target] if 0 <= target < len(delegates) else None
                    instructions.append(row)
            return instructions, values
        except ReadError as exc:
            raise ProgramTableError(f"damaged program: {exc.message}") from None


def xnnpack_nodes(path: str, method: str = "forward") -> dict[str, list[dict[str, Any]]]:
    """Per XNNPACK delegate of `method` (by delegate index): its FC, conv, transposed conv and batch
    matmul nodes in graph order, the order the XNNPACK runtime creates (and profiles) their operators.

    Each node: kind, and for a weight operand its dims, datatype, bits, whether it is a blob constant
    or a delegate input (`external_arg`: the DelegateCall argument that feeds it), params and output
    positions as `formats.pte.xnnpack` computes them for pte-program. A node without a weight operand (a
    batch matmul of two activations) is listed with `weight` None, so positions stay aligned.
    """
    from quantgate.formats.pte import reader as pte
    from quantgate.formats.pte.xnnpack import WEIGHT_KINDS, read_payload
    from quantgate.formats.wire.binary import Budget, mapped

    out: dict[str, list[dict[str, Any]]] = {}
    with mapped(path) as view:
        prog = pte.parse_view(view, path)
        plan = next((p for p in prog.plans if p.name == method), None)
        if plan is None:
            return out
        for d in plan.delegates:
            if d.backend != "XnnpackBackend" or d.span is None:
                continue
            start, size = d.span
            data = memoryview(view.buf)[start : start + size]
            try:
                payload = read_payload(data, base_offset=start, budget=Budget.for_size(size))
            finally:
                data.release()  # the mmap cannot close while a view of it is exported
            if not payload.complete:
                continue  # a graph read in part cannot be aligned with the events
            ops = {op.node.index: op for op in payload.weight_ops()}
            nodes = []
            for node in payload.nodes:
                if node.tag not in WEIGHT_KINDS:
                    continue
                row: dict[str, Any] = {"node": node.index, "kind": node.kind, "weight": None}
                op = ops.get(node.index)
                if op is not None and op.weight is not None:
                    w = op.weight
                    row["weight"] = {
                        "dims": list(w.dims), "datatype": w.datatype, "bits": w.bits, "quantized": w.quantized,
                        "constant": w.is_constant,
                        "external_arg": w.external_id if op.weight_external else None,
                    }
                    row["params"] = op.params
                    row["positions"] = op.positions
                nodes.append(row)
            out[str(d.index)] = nodes
    return out
