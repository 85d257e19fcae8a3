"""A method's chain-0 instruction table and value table, read from a `.pte` with the standard library.

The runtime guard needs, per instruction, the kernel's operator name and argument value indices
(or, for a DelegateCall, the backend id), and per value whether it is a constant tensor with its
dtype and sizes, to trace a GEMM's weight back to the constant it comes from. Only the flatbuffer
tables are touched (memory-mapped, bounded, budgeted): never the segments holding the weights, so
the cost follows the program's structure, not its size. Field ids: program.fbs (docs/formats.md#program-layout).

It is deliberately minimal (chain 0 of one method, no segment checks), on the shared bounded
flatbuffer reader; `formats.pte` is the full structural reader.
"""

from __future__ import annotations

from typing import Any

from quantgate.formats.wire.binary import Budget, ReadError, mapped
from quantgate.formats.wire.flatbuffer import FlatBuffer

IDENTIFIER = b"ET12"
# InstructionArguments union tags
_KERNEL_CALL, _DELEGATE_CALL = 1, 2
_INSTRUCTION_KINDS = {1: "KernelCall", 2: "DelegateCall", 3: "MoveCall", 4: "JumpFalseCall", 5: "FreeCall"}
_TENSOR = 5  # KernelTypes tag
_EXTERNAL = 1  # TensorDataLocation


class ProgramTableError(Exception):
    pass


def _tensor(t: FlatBuffer, table: int) -> list[Any]:
    """[scalar_type, sizes, constant, fqn, [memory_id, offset] or None] of one Tensor table."""
    scalar_type = t.scalar(table, 0, "u8", 0)
    sizes = t.scalars(table, 2, "i32")
    data_buffer_idx = t.scalar(table, 5, "u32", 0)
    allocated = t.has(table, 6)
    mem = None
    info = t.table(table, 6) if allocated else None
    if info is not None:
        # AllocationDetails {0 memory_id, 1 memory_offset_low, 2 memory_offset_high}: a static view shares it
        offset = (int(t.scalar(info, 2, "u32", 0)) << 32) | int(t.scalar(info, 1, "u32", 0))
        mem = [int(t.scalar(info, 0, "u32", 0)), offset]
    fqn = None
    external = False
    extra = t.table(table, 9)
    if extra is not None:
        fqn = t.string(extra, 1) or None
        external = t.scalar(extra, 2, "u8", 0) == _EXTERNAL
    constant = (not allocated and data_buffer_idx > 0) or external
    return [scalar_type, sizes, constant, fqn, mem]


def read(path: str, method: str = "forward") -> tuple[list[dict[str, Any]], list[Any]]:
    """(instructions, values) of `method`'s chain 0, in the runner's JSON form."""
    with mapped(path) as view:
        try:
            t = FlatBuffer(view, Budget.for_size(len(view)))
            if t.identifier() != IDENTIFIER:
                raise ProgramTableError(f"identifier {t.identifier()!r} is not {IDENTIFIER!r}")
            root = t.root()
            # Program {1 execution_plan}; ExecutionPlan {0 name, 2 values, 5 chains, 6 operators, 7 delegates}
            plan = next((p for p in t.tables(root, 1) if t.string(p, 0) == method), None)
            if plan is None:
                raise ProgramTableError(f"no execution plan named {method!r}")
            operators = []
            for op in t.tables(plan, 6):
                name, overload = t.string(op, 0), t.string(op, 1)
                operators.append(f"{name}.{overload}" if overload else name)
            delegates = [t.string(d, 0) for d in t.tables(plan, 7)]
            values: list[Any] = []
            for evalue in t.tables(plan, 2):
                tag, tensor = t.union(evalue, 0)
                values.append(_tensor(t, tensor) if tag == _TENSOR and tensor is not None else None)
            instructions: list[dict[str, Any]] = []
            chains = t.tables(plan, 5)
            if chains:
                # Chain {2 instructions}; Instruction {0 instr_args_type, 1 instr_args}
                for index, instruction in enumerate(t.tables(chains[0], 2)):
                    tag, args_table = t.union(instruction, 0)
                    row: dict[str, Any] = {"index": index, "kind": _INSTRUCTION_KINDS.get(tag, f"tag {tag}")}
                    if args_table is not None and tag in (_KERNEL_CALL, _DELEGATE_CALL):
                        # KernelCall {0 op_index, 1 args}; DelegateCall {0 delegate_index, 1 args}
                        target = t.scalar(args_table, 0, "i32", 0)
                        row["args"] = t.scalars(args_table, 1, "i32")
                        if tag == _KERNEL_CALL:
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
    positions as `formats.xnnpack` computes them for pte-program. A node without a weight operand (a
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
