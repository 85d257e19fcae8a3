"""GGUF tables: ggml tensor types, KV value types and `general.file_type` (llama_ftype).

The ggml type table follows ggml's C source (`ggml_blck_size` / `ggml_type_size`), not gguf-py:
gguf-py 0.19.0 says Q8_1 is 40 bytes per block, ggml's `block_q8_1` is 36 (2 x fp16 + 32 x int8), and
gguf-py stops at id 41 while ggml knows 42 (Q2_0). Removed ids are kept as "known, removed" so that a
file using one gets a precise finding instead of "unknown type".

Nominal bits are the element width of the stored values
(docs/architecture.md#weight-bearing-layers-and-nominal-bits). Ternary and 1-bit-grid types
carry log2(3) ~ 1.58 bits per value (IQ1_S, IQ1_M, TQ1_0); TQ2_0 stores ternary values in 2-bit
fields and counts as 2. I8 is an 8-bit integer tensor and counts as int8 (its scale, if any, lives in
another tensor); wider integer types (I16..I64) are not quantized.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block: int  # elements per block
    size: int  # bytes per block
    bits: float  # nominal bits of a stored value
    numeric: str  # "int" | "float"
    quantized: bool

    @property
    def bpw(self) -> float:
        return 8 * self.size / self.block


TERNARY_BITS = 1.58

_T = GGMLType
GGML_TYPES: dict[int, GGMLType] = {
    t.id: t
    for t in (
        _T(0, "F32", 1, 4, 32, "float", False),
        _T(1, "F16", 1, 2, 16, "float", False),
        _T(2, "Q4_0", 32, 18, 4, "int", True),
        _T(3, "Q4_1", 32, 20, 4, "int", True),
        _T(6, "Q5_0", 32, 22, 5, "int", True),
        _T(7, "Q5_1", 32, 24, 5, "int", True),
        _T(8, "Q8_0", 32, 34, 8, "int", True),
        _T(9, "Q8_1", 32, 36, 8, "int", True),  # ggml: 36 (gguf-py's 40 is stale)
        _T(10, "Q2_K", 256, 84, 2, "int", True),
        _T(11, "Q3_K", 256, 110, 3, "int", True),
        _T(12, "Q4_K", 256, 144, 4, "int", True),
        _T(13, "Q5_K", 256, 176, 5, "int", True),
        _T(14, "Q6_K", 256, 210, 6, "int", True),
        _T(15, "Q8_K", 256, 292, 8, "int", True),
        _T(16, "IQ2_XXS", 256, 66, 2, "int", True),
        _T(17, "IQ2_XS", 256, 74, 2, "int", True),
        _T(18, "IQ3_XXS", 256, 98, 3, "int", True),
        _T(19, "IQ1_S", 256, 50, TERNARY_BITS, "int", True),
        _T(20, "IQ4_NL", 32, 18, 4, "int", True),
        _T(21, "IQ3_S", 256, 110, 3, "int", True),
        _T(22, "IQ2_S", 256, 82, 2, "int", True),
        _T(23, "IQ4_XS", 256, 136, 4, "int", True),
        _T(24, "I8", 1, 1, 8, "int", True),
        _T(25, "I16", 1, 2, 16, "int", False),
        _T(26, "I32", 1, 4, 32, "int", False),
        _T(27, "I64", 1, 8, 64, "int", False),
        _T(28, "F64", 1, 8, 64, "float", False),
        _T(29, "IQ1_M", 256, 56, TERNARY_BITS, "int", True),
        _T(30, "BF16", 1, 2, 16, "float", False),
        _T(34, "TQ1_0", 256, 54, TERNARY_BITS, "int", True),
        _T(35, "TQ2_0", 256, 66, 2, "int", True),
        _T(39, "MXFP4", 32, 17, 4, "float", True),
        _T(40, "NVFP4", 64, 36, 4, "float", True),
        _T(41, "Q1_0", 128, 18, 1, "int", True),
        _T(42, "Q2_0", 64, 18, 2, "int", True),
    )
}
GGML_TYPE_BY_NAME: dict[str, GGMLType] = {t.name: t for t in GGML_TYPES.values()}

# ids that once existed and were removed from files (ggml block size 0 today)
REMOVED_GGML_TYPES: dict[int, str] = {
    4: "Q4_2",
    5: "Q4_3",
    31: "Q4_0_4_4",
    32: "Q4_0_4_8",
    33: "Q4_0_8_8",
    36: "IQ4_NL_4_4",
    37: "IQ4_NL_4_8",
    38: "IQ4_NL_8_8",
}
GGML_TYPE_COUNT = 43

# KV value types (GGUFValueType)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
VALUE_TYPE_NAMES = {
    UINT8: "UINT8",
    INT8: "INT8",
    UINT16: "UINT16",
    INT16: "INT16",
    UINT32: "UINT32",
    INT32: "INT32",
    FLOAT32: "FLOAT32",
    BOOL: "BOOL",
    STRING: "STRING",
    ARRAY: "ARRAY",
    UINT64: "UINT64",
    INT64: "INT64",
    FLOAT64: "FLOAT64",
}
# fixed-size value types -> (struct format, size)
SCALAR_FORMATS: dict[int, tuple[str, int]] = {
    UINT8: ("<B", 1),
    INT8: ("<b", 1),
    UINT16: ("<H", 2),
    INT16: ("<h", 2),
    UINT32: ("<I", 4),
    INT32: ("<i", 4),
    FLOAT32: ("<f", 4),
    BOOL: ("<?", 1),
    UINT64: ("<Q", 8),
    INT64: ("<q", 8),
    FLOAT64: ("<d", 8),
}
INTEGER_VALUE_TYPES = (UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64)


@dataclass(frozen=True)
class FileType:
    """One llama_ftype value: "mostly <primary>, except 1-D tensors".

    `floor_bits`: the fewest nominal bits the bulk of the 2-D weights may have under this file
    type (a mix never goes below its primary type). `ceiling_bits`: the most they may have; the
    k-quant and i-quant recipes fall back to wider types when a row is not a multiple of 256
    (Q4_K -> Q5_0, Q6_K -> Q8_0, IQ* -> IQ4_NL...), so their ceiling is 8; the legacy single-type
    recipes have none. None for float file types (ALL_F32/F16/BF16), whose 2-D weights must not
    be quantized at all.
    """

    id: int
    name: str
    floor_bits: float | None
    ceiling_bits: float | None


_F = FileType
FILE_TYPES: dict[int, FileType] = {
    f.id: f
    for f in (
        _F(0, "ALL_F32", None, None),
        _F(1, "MOSTLY_F16", None, None),
        _F(2, "MOSTLY_Q4_0", 4, 4),
        _F(3, "MOSTLY_Q4_1", 4, 4),
        _F(7, "MOSTLY_Q8_0", 8, 8),
        _F(8, "MOSTLY_Q5_0", 5, 5),
        _F(9, "MOSTLY_Q5_1", 5, 5),
        _F(10, "MOSTLY_Q2_K", 2, 8),
        _F(11, "MOSTLY_Q3_K_S", 3, 8),
        _F(12, "MOSTLY_Q3_K_M", 3, 8),
        _F(13, "MOSTLY_Q3_K_L", 3, 8),
        _F(14, "MOSTLY_Q4_K_S", 4, 8),
        _F(15, "MOSTLY_Q4_K_M", 4, 8),
        _F(16, "MOSTLY_Q5_K_S", 5, 8),
        _F(17, "MOSTLY_Q5_K_M", 5, 8),
        _F(18, "MOSTLY_Q6_K", 6, 8),
        _F(19, "MOSTLY_IQ2_XXS", 2, 8),
        _F(20, "MOSTLY_IQ2_XS", 2, 8),
        _F(21, "MOSTLY_Q2_K_S", 2, 8),
        _F(22, "MOSTLY_IQ3_XS", 3, 8),
        _F(23, "MOSTLY_IQ3_XXS", 3, 8),
        _F(24, "MOSTLY_IQ1_S", TERNARY_BITS, 8),
        _F(25, "MOSTLY_IQ4_NL", 4, 8),
        _F(26, "MOSTLY_IQ3_S", 3, 8),
        _F(27, "MOSTLY_IQ3_M", 3, 8),
        _F(28, "MOSTLY_IQ2_S", 2, 8),
        _F(29, "MOSTLY_IQ2_M", 2, 8),
        _F(30, "MOSTLY_IQ4_XS", 4, 8),
        _F(31, "MOSTLY_IQ1_M", TERNARY_BITS, 8),
        _F(32, "MOSTLY_BF16", None, None),
        _F(36, "MOSTLY_TQ1_0", TERNARY_BITS, 8),
        _F(37, "MOSTLY_TQ2_0", 2, 8),
        _F(38, "MOSTLY_MXFP4_MOE", 4, 8),
        _F(39, "MOSTLY_NVFP4", 4, 8),
        _F(40, "MOSTLY_Q1_0", 1, 8),
    )
}
FILE_TYPE_GUESSED = 1024
REMOVED_FILE_TYPES: dict[int, str] = {
    4: "MOSTLY_Q4_1_SOME_F16",
    5: "MOSTLY_Q4_2",
    6: "MOSTLY_Q4_3",
    33: "MOSTLY_Q4_0_4_4",
    34: "MOSTLY_Q4_0_4_8",
    35: "MOSTLY_Q4_0_8_8",
}


def file_type_name(value: int) -> str:
    if value in FILE_TYPES:
        return FILE_TYPES[value].name
    if value == FILE_TYPE_GUESSED:
        return "GUESSED"
    if value in REMOVED_FILE_TYPES:
        return f"{REMOVED_FILE_TYPES[value]} (removed)"
    return f"unknown({value})"


def short_file_type(value: int) -> str:
    """`MOSTLY_Q4_K_M` -> `Q4_K_M`, the name a release manifest uses."""
    name = file_type_name(value)
    return name[len("MOSTLY_") :] if name.startswith("MOSTLY_") else name


# The single-type file types' own ggml type (llama_model_quantize_impl's default_type).
LEGACY_FILE_TYPE_TYPES: dict[int, str] = {2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1"}
# what llama.cpp's quantizer calls token embeddings (tensor_name_match_token_embd)
TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")


def recipe_output_type(file_type: int, ncols: int, arch: str | None) -> str | None:
    """The ggml type llama.cpp's quantizer gives `output.weight` (and, when the model has none, the tied
    `token_embd.weight`) under a single-type file type, for a tensor whose rows are `ncols` long;
    None for other file types. llama-quant.cpp's llama_tensor_get_type_impl: Q6_K, except Q8_0 when
    the file type is Q8_0, the architecture Falcon, or the row not a multiple of the file type's
    block; then tensor_type_fallback: Q6_K on a row that is not a multiple of 256 becomes Q8_0, and
    a type whose block the row does not fill becomes F16."""
    default = LEGACY_FILE_TYPE_TYPES.get(file_type)
    if default is None:
        return None
    block = GGML_TYPE_BY_NAME[default].block
    chosen = "Q8_0" if arch == "falcon" or ncols % block != 0 or default == "Q8_0" else "Q6_K"
    if chosen == "Q6_K" and ncols % GGML_TYPE_BY_NAME["Q6_K"].block != 0:
        chosen = "Q8_0"
    if ncols % GGML_TYPE_BY_NAME[chosen].block != 0:
        chosen = "F16"
    return chosen
