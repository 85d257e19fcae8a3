"""ExecuTorch program.fbs (executorch 1.5.1, namespace executorch_flatbuffer): field ids and enums.

Vendored as numbers, not generated code: a hand-written reader needs only the ids (vtable slot =
4 + 2 * id; a union takes two ids, `_type` then the value). Checked against flatc output and the
fixtures (docs/formats.md#program-layout).
"""

from __future__ import annotations

IDENTIFIER = b"ET12"
EXTENDED_HEADER_MAGIC = b"eh00"
EXTENDED_HEADER_MIN_LENGTH = 24  # the C++ runtime accepts >= 24; segment_data_size needs 32

# table field ids
PROGRAM_VERSION, PROGRAM_PLANS, PROGRAM_CONSTANT_BUFFER, PROGRAM_DELEGATE_DATA = 0, 1, 2, 3
PROGRAM_SEGMENTS, PROGRAM_CONSTANT_SEGMENT, PROGRAM_MUTABLE_SEGMENTS, PROGRAM_NAMED_DATA = 4, 5, 6, 7
PLAN_NAME, PLAN_VALUES, PLAN_INPUTS, PLAN_OUTPUTS = 0, 2, 3, 4
PLAN_CHAINS, PLAN_OPERATORS, PLAN_DELEGATES = 5, 6, 7
PLAN_NON_CONST_BUFFER_SIZES = 8  # [i64]; entry 0 is reserved by the schema (always 0)
OPERATOR_NAME, OPERATOR_OVERLOAD = 0, 1
CHAIN_INSTRUCTIONS = 2
INSTRUCTION_ARGS_TYPE = 0  # union: type at 0, value at 1
CALL_TARGET, CALL_ARGS = 0, 1  # KernelCall {op_index, args}, DelegateCall {delegate_index, args}
EVALUE_VAL_TYPE = 0  # union: type at 0, value at 1
TENSOR_SCALAR_TYPE, TENSOR_SIZES, TENSOR_DATA_BUFFER_IDX = 0, 2, 5
TENSOR_ALLOCATION_INFO, TENSOR_SHAPE_DYNAMISM, TENSOR_EXTRA_INFO = 6, 8, 9
EXTRA_FQN, EXTRA_LOCATION = 1, 2
DELEGATE_ID, DELEGATE_PROCESSED, DELEGATE_COMPILE_SPECS = 0, 1, 2
DATAREF_LOCATION, DATAREF_INDEX = 0, 1
INLINE_DATA = 0  # BackendDelegateInlineData.data / Buffer.storage
SEGMENT_OFFSET, SEGMENT_SIZE = 0, 1
SUBSEGMENT_INDEX, SUBSEGMENT_OFFSETS = 0, 1
NAMED_KEY, NAMED_SEGMENT = 0, 1

# InstructionArguments union
KERNEL_CALL, DELEGATE_CALL, MOVE_CALL, JUMP_FALSE_CALL, FREE_CALL = 1, 2, 3, 4, 5
INSTRUCTION_KINDS = {1: "KernelCall", 2: "DelegateCall", 3: "MoveCall", 4: "JumpFalseCall", 5: "FreeCall"}

# KernelTypes union (EValue.val_type)
K_NULL, K_INT, K_BOOL, K_DOUBLE, K_TENSOR, K_STRING = 1, 2, 3, 4, 5, 6
K_INT_LIST, K_DOUBLE_LIST, K_BOOL_LIST, K_TENSOR_LIST, K_OPTIONAL_TENSOR_LIST = 7, 8, 9, 10, 11
KERNEL_TYPES = {
    1: "Null",
    2: "Int",
    3: "Bool",
    4: "Double",
    5: "Tensor",
    6: "String",
    7: "IntList",
    8: "DoubleList",
    9: "BoolList",
    10: "TensorList",
    11: "OptionalTensorList",
}

# DataLocation (delegate payloads) and TensorDataLocation
LOC_INLINE, LOC_SEGMENT = 0, 1
TENSOR_LOC_SEGMENT, TENSOR_LOC_EXTERNAL = 0, 1
# TensorShapeDynamism
STATIC, DYNAMIC_BOUND, DYNAMIC_UNBOUND = 0, 1, 2

# ScalarType -> (name, element bits, numeric family); packed sub-byte types keep their logical bits
SCALAR_TYPES: dict[int, tuple[str, float, str]] = {
    0: ("uint8", 8, "int"),
    1: ("int8", 8, "int"),
    2: ("int16", 16, "int"),
    3: ("int32", 32, "int"),
    4: ("int64", 64, "int"),
    5: ("fp16", 16, "float"),
    6: ("fp32", 32, "float"),
    7: ("fp64", 64, "float"),
    8: ("complex32", 32, "float"),
    9: ("complex64", 64, "float"),
    10: ("complex128", 128, "float"),
    11: ("bool", 8, "int"),
    12: ("qint8", 8, "int"),
    13: ("quint8", 8, "int"),
    14: ("qint32", 32, "int"),
    15: ("bf16", 16, "float"),
    16: ("quint4x2", 4, "int"),
    17: ("quint2x4", 2, "int"),
    18: ("bits1x8", 1, "int"),
    19: ("bits2x4", 2, "int"),
    20: ("bits4x2", 4, "int"),
    21: ("bits8", 8, "int"),
    22: ("bits16", 16, "int"),
    23: ("fp8_e5m2", 8, "float"),
    24: ("fp8_e4m3fn", 8, "float"),
    25: ("fp8_e5m2fnuz", 8, "float"),
    26: ("fp8_e4m3fnuz", 8, "float"),
    27: ("uint16", 16, "int"),
    28: ("uint32", 32, "int"),
    29: ("uint64", 64, "int"),
}
# bytes one stored element takes (packed types pack several logical values into one byte)
STORAGE_BYTES = {code: max(1, int(bits) // 8) for code, (_, bits, _) in SCALAR_TYPES.items()}
STORAGE_BYTES.update({8: 4, 9: 8, 10: 16, 16: 1, 17: 1, 18: 1, 19: 1, 20: 1})
INT8_LIKE = {0, 1, 12, 13}  # the 8-bit integer storage types a quantized weight uses


def scalar_name(code: int) -> str:
    return SCALAR_TYPES[code][0] if code in SCALAR_TYPES else f"scalar_type_{code}"
