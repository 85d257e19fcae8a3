"""A method's chain-0 instruction table and value table, read from a `.pte` with the standard library.

The runtime guard needs, per instruction, the kernel's operator name and argument value indices
(or, for a DelegateCall, the backend id), and per value whether it is a constant tensor with its
dtype and sizes, to trace a GEMM's weight back to the constant it comes from. Only the flatbuffer
tables are touched (memory-mapped, bounded, budgeted): never the segments holding the weights, so
the cost follows the program's structure, not its size. Field ids: research §2 (program.fbs).

It is deliberately minimal and private to the runtime guard; the shared PTE reader can replace it.
"""

from __future__ import annotations

from typing import Any

from quantgate.formats.binary import Budget, ReadError, mapped
from quantgate.runtime._fb import FlatbufferError, Tables

IDENTIFIER = b"ET12"
# InstructionArguments union tags
_KERNEL_CALL, _DELEGATE_CALL = 1, 2
_INSTRUCTION_KINDS = {1: "KernelCall", 2: "DelegateCall", 3: "MoveCall", 4: "JumpFalseCall", 5: "FreeCall"}
_TENSOR = 5  # KernelTypes tag
_EXTERNAL = 1  # TensorDataLocation


class ProgramTableError(Exception):
    pass


def _tensor(t: Tables, table: int) -> list[Any]:
    """[scalar_type, sizes, constant, fqn] of one Tensor table."""
    scalar_type = t.scalar(table, 0, "u8", 0)
    sizes = t.ints(table, 2)
    data_buffer_idx = t.scalar(table, 5, "u32", 0)
    allocated = t.field_pos(table, 6) is not None
    fqn = None
    external = False
    extra = t.table(table, 9)
    if extra is not None:
        fqn = t.string(extra, 1) or None
        external = t.scalar(extra, 2, "u8", 0) == _EXTERNAL
    constant = (not allocated and data_buffer_idx > 0) or external
    return [scalar_type, sizes, constant, fqn]


def read(path: str, method: str = "forward") -> tuple[list[dict[str, Any]], list[Any]]:
    """(instructions, values) of `method`'s chain 0, in the runner's JSON form."""
    with mapped(path) as view:
        t = Tables(view, Budget.for_size(len(view)))
        try:
            if view.bytes(4, 4, "identifier") != IDENTIFIER:
                raise ProgramTableError(f"identifier {view.bytes(4, 4)!r} is not {IDENTIFIER!r}")
            root = view.u32(0, "root offset")
            # Program {1 execution_plan}; ExecutionPlan {0 name, 2 values, 5 chains, 6 operators, 7 delegates}
            plan = None
            for pos in t.vector(root, 1):
                candidate = t.deref(pos)
                if t.string(candidate, 0) == method:
                    plan = candidate
                    break
            if plan is None:
                raise ProgramTableError(f"no execution plan named {method!r}")
            operators = []
            for pos in t.vector(plan, 6):
                op = t.deref(pos)
                name, overload = t.string(op, 0), t.string(op, 1)
                operators.append(f"{name}.{overload}" if overload else name)
            delegates = [t.string(t.deref(pos), 0) for pos in t.vector(plan, 7)]
            values: list[Any] = []
            for pos in t.vector(plan, 2):
                evalue = t.deref(pos)
                if t.scalar(evalue, 0, "u8", 0) != _TENSOR:
                    values.append(None)
                    continue
                tensor = t.table(evalue, 1)
                values.append(None if tensor is None else _tensor(t, tensor))
            instructions: list[dict[str, Any]] = []
            chains = t.vector(plan, 5)
            if chains:
                chain = t.deref(chains[0])
                # Chain {2 instructions}; Instruction {0 instr_args_type, 1 instr_args}
                for index, pos in enumerate(t.vector(chain, 2)):
                    instruction = t.deref(pos)
                    tag = t.scalar(instruction, 0, "u8", 0)
                    row: dict[str, Any] = {"index": index, "kind": _INSTRUCTION_KINDS.get(tag, f"tag {tag}")}
                    args_table = t.table(instruction, 1)
                    if args_table is not None and tag in (_KERNEL_CALL, _DELEGATE_CALL):
                        # KernelCall {0 op_index, 1 args}; DelegateCall {0 delegate_index, 1 args}
                        target = t.scalar(args_table, 0, "i32", 0)
                        row["args"] = t.ints(args_table, 1)
                        if tag == _KERNEL_CALL:
                            row["op"] = operators[target] if 0 <= target < len(operators) else None
                        else:
                            row["delegate_index"] = target
                            row["backend"] = delegates[target] if 0 <= target < len(delegates) else None
                    instructions.append(row)
            return instructions, values
        except (ReadError, FlatbufferError) as exc:
            raise ProgramTableError(f"damaged program: {getattr(exc, 'message', exc)}") from None
