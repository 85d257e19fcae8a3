"""XNNPACK delegate payloads inside a `.pte`: the `XH00` header and the `XN01` graph, read bounded.

ExecuTorch stores each XNNPACK-delegated subgraph as an opaque blob (`BackendDelegate.processed`,
inline in `Program.backend_delegate_data` or in a segment). The blob is a 32-byte header
(4 zero bytes, `XH00`, u16 header length, u32 flatbuffer offset, u32 flatbuffer size, u32 constant
data offset, u64 constant data size) followed by an `XN01` flatbuffer (`XNNGraph`, the schema in
executorch/backends/xnnpack/serialization/schema.fbs, 1.5.1) and an optional constant region. Older
blobs are a bare flatbuffer whose identifier sits where the header magic would.

API, for the PTE reader:

    payload = read_payload(blob, base_offset=<file offset of the blob>, budget=<shared Budget>)
    payload.findings          every defect, offsets in file coordinates (base_offset + blob position)
    payload.values            [XValue]: id (id_out), datatype (name), dims, constant_buffer_idx,
                              named_key / constant_size (from constant_data), flags, external_id,
                              quant (QuantParams: scheme per_tensor | per_channel | per_channel_group
                              (group_size = block size) | dynamic, num_scales, channel_dim...),
                              bits (nominal), quantized (<= 8 bits with scales), numel, is_constant
    payload.value(id)         the XValue nodes refer to by that id, or None
    payload.nodes             [XNode]: kind (fully_connected, conv2d, depthwise_conv2d,
                              conv_transpose2d, batch_matmul, or the union name, e.g. XNNConvert),
                              ids (every *_id field of the node table), input_id / filter_id /
                              bias_id / output_id (None when the node's table has no such field or
                              it holds XNN_INVALID_VALUE_ID; an absent field is id 0), flags
    payload.weight_ops()      [WeightOp] for FC / conv / depthwise / transposed conv, and batch
                              matmul with a constant operand: kind, weight / input / bias / output
                              XValues, weight_constant, weight_external (a batch matmul whose second
                              operand is a delegate input, e.g. a program constant the partitioner
                              left outside the blob: args[weight.external_id] of the DelegateCall
                              says which program value; skip it unless that value is a constant),
                              activation_quantized (a qint8, quint8, qdint8 or qpint8 input:
                              integer compute with a quantized weight), compute
                              ("int8", "fp32"...), params (weight elements, packed 4-bit counted
                              logically) and positions (output positions: 2 x params x positions
                              = flops; None when the shapes do not say)
    payload.num_externs, payload.input_ids, payload.output_ids, payload.constant_data

Nothing here raises on bad input: every defect becomes a finding (codes in FINDING_CODES, prefix
`XNNPACK_`; a visit budget overrun is the shared `READ_BUDGET_EXHAUSTED`), and what was read before
it stays usable (`payload.complete` says whether the whole graph was read).
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from quantgate.core import findings as F
from quantgate.core.findings import Finding
from quantgate.formats.wire.binary import Budget, BudgetExhausted, ReadError, View
from quantgate.formats.wire.flatbuffer import FlatBuffer, FlatbufferError

HEADER_MAGIC = b"XH00"
IDENTIFIER = b"XN01"  # the 1.5.1 runtime accepts only this identifier
OLD_IDENTIFIERS = (b"XN00",)  # runtime_schema.fbs; read, but reported
HEADER_FIELDS_END = 30  # the header's fields end here (padded to 32 by the writer)
NO_OFFSET = (1 << 64) - 1  # ConstantDataOffset.offset when the data is in the named-data store
INVALID_ID = (1 << 32) - 1  # XNN_INVALID_VALUE_ID: an absent operand (a FC without bias)
MAX_DIMS = 16  # XNNPACK's own limit is 6; more is a corrupt value

FINDING_CODES: dict[str, str] = {
    "XNNPACK_BAD_MAGIC": "An XNNPACK delegate blob has neither the XH00 header nor an XNNPACK flatbuffer identifier.",
    "XNNPACK_HEADER_INVALID": "The XH00 header is shorter than its fields, declares a header length below 30 "
    "bytes, or an empty flatbuffer.",
    "XNNPACK_HEADER_OUT_OF_RANGE": "The XH00 header puts the flatbuffer or the constant data outside the blob, "
    "over the header, or the constant data before the end of the flatbuffer.",
    "XNNPACK_BAD_IDENTIFIER": "The delegate graph's flatbuffer identifier is not XN01 (the runtime rejects it).",
    "XNNPACK_FLATBUFFER_INVALID": "The XNNGraph flatbuffer is malformed: an offset, vtable, vector or string "
    "outside it, or a misaligned table (the field is named).",
    "XNNPACK_BAD_UNION_TAG": "A node, value or quantization-parameter union tag that the XNNPACK schema does "
    "not define.",
    "XNNPACK_BAD_DATATYPE": "A value's datatype is not an XNNPACK datatype (or is xnn_datatype_invalid).",
    "XNNPACK_BAD_SHAPE": "A value declares more than 16 dimensions, or num_dims disagrees with its dims (warning).",
    "XNNPACK_VALUE_ID_OUT_OF_RANGE": "A node, input_ids or output_ids refers to a value id that no value defines.",
    "XNNPACK_DUPLICATE_VALUE_ID": "Two values declare the same id.",
    "XNNPACK_CONSTANT_INDEX_OUT_OF_RANGE": "A value's constant_buffer_idx or scale_buffer_idx is beyond the "
    "graph's constant_data table.",
    "XNNPACK_CONSTANT_OUT_OF_RANGE": "A constant_data entry's offset and size run past the blob's constant "
    "region, or it has neither an offset nor a named key.",
    "XNNPACK_CONSTANT_SIZE_MISMATCH": "A constant value's data is smaller than its shape and datatype need.",
    "XNNPACK_EXTERNS_MISMATCH": "XNNGraph.num_externs disagrees with the graph's external values (one with an "
    "external_id at or past num_externs, or fewer externs than graph inputs and outputs) or with the number of "
    "tensors the program's DelegateCall passes to the delegate.",
    "XNNPACK_TOO_MANY_FINDINGS": "More findings of one code than are worth listing; the rest were counted (info).",
}

# XNNDatatype -> (name, nominal bits, numeric family, quantized): quantized = 8 or fewer bits with
# scales (docs/architecture.md#weight-bearing-layers-and-nominal-bits); the 32-bit quantized types are biases
DATATYPES: dict[int, tuple[str, int, str, bool]] = {
    1: ("fp32", 32, "float", False),
    2: ("fp16", 16, "float", False),
    3: ("qint8", 8, "int", True),
    4: ("quint8", 8, "int", True),
    5: ("qint32", 32, "int", False),
    6: ("qcint8", 8, "int", True),
    7: ("qcint32", 32, "int", False),
    8: ("qcint4", 4, "int", True),
    9: ("qdint8", 8, "int", True),
    10: ("qbint4", 4, "int", True),
    11: ("qpint8", 8, "int", True),
    12: ("int32", 32, "int", False),
    13: ("pfp32", 32, "float", False),
    14: ("bf16", 16, "float", False),
}


class XnnToken(NamedTuple):
    """One datatype token of an XNNPACK operator-type name, `Fully Connected (NC, QDU8, F32, QB4W)`."""

    role: str  # one of TOKEN_ROLES
    bits: int | None
    compute: str | None  # the arithmetic an op with this token runs, when the token decides it


LAYOUT, STATIC, DYNAMIC, WEIGHT, FLOAT_T, DATA = "layout", "static", "dynamic", "weight", "float", "data"
TOKEN_ROLES = (LAYOUT, STATIC, DYNAMIC, WEIGHT, FLOAT_T, DATA)
# Every token XNNPACK's operator-type names have carried (its operator-type table, 2019-2026;
# the runtime bundled with executorch 1.5.1 prints a subset). The runtime picks the activation
# token by CPU: QD8 on most x86/Arm hosts, QDU8 where AVX512-VNNI/AVX-VNNI run u8 x s8 dot
# products, QP8/PQS8 with Arm's packed (KleidiAI) kernels; all of them are int8 compute.
XNN_TOKENS: dict[str, XnnToken] = {
    # layouts, not datatypes
    **{t: XnnToken(LAYOUT, None, None)
       for t in ("NC", "ND", "NHWC", "NCHW", "NCW", "NWC", "NTC", "NTHC", "NHTC", "NCHW2NHWC")},
    # statically quantized activations; an op naming no weight type takes weights of the same type
    "QS8": XnnToken(STATIC, 8, "int8"),
    "QU8": XnnToken(STATIC, 8, "int8"),
    "Q8": XnnToken(STATIC, 8, "int8"),  # the pre-2021 name of QU8
    "QS16": XnnToken(STATIC, 16, "int16"),
    # quantized activations of ops that name their weight type separately (QD8: quantized per row at
    # run time)
    "QD8": XnnToken(DYNAMIC, 8, "int8"),
    "QDU8": XnnToken(DYNAMIC, 8, "int8"),  # QD8 stored unsigned (+128) for u8 x s8 dot products
    "QP8": XnnToken(DYNAMIC, 8, "int8"),  # QD8 packed for KleidiAI kernels
    "PQS8": XnnToken(DYNAMIC, 8, "int8"),  # QS8 packed for KleidiAI kernels (QC8W weights)
    # quantized weights: per-channel (QC*W), per-block (QB4W)
    "QC8W": XnnToken(WEIGHT, 8, None),
    "QC4W": XnnToken(WEIGHT, 4, None),
    "QB4W": XnnToken(WEIGHT, 4, None),
    "QC2W": XnnToken(WEIGHT, 2, None),
    "QC8": XnnToken(WEIGHT, 8, "int8"),  # conv: QS8 activations with per-channel 8-bit filters
    # floating point (P*: packed for KleidiAI kernels; BF16_F32: bf16 inputs, fp32 output)
    "F32": XnnToken(FLOAT_T, 32, "fp32"),
    "F16": XnnToken(FLOAT_T, 16, "fp16"),
    "BF16": XnnToken(FLOAT_T, 16, "bf16"),
    "PF32": XnnToken(FLOAT_T, 32, "fp32"),
    "PF16": XnnToken(FLOAT_T, 16, "fp16"),
    "BF16_F32": XnnToken(FLOAT_T, 16, "bf16"),
    # untyped data movement (X*) and plain integers (pooling, bitwise ops): no weight precision
    **{f"X{b}": XnnToken(DATA, b, None) for b in (8, 16, 32, 64)},
    "S8": XnnToken(DATA, 8, None),
    "U8": XnnToken(DATA, 8, None),
    "S16": XnnToken(DATA, 16, None),
    "S32": XnnToken(DATA, 32, None),
}
# the delegate graph's datatypes (DATATYPES names) as XNNPACK's operators name them; the 32-bit
# quantized types are biases, which no operator name carries
DATATYPE_TOKENS: dict[str, str] = {
    "fp32": "F32", "fp16": "F16", "bf16": "BF16", "pfp32": "PF32", "int32": "S32",
    "qint8": "QS8", "quint8": "QU8", "qdint8": "QD8", "qpint8": "QP8",
    "qcint8": "QC8W", "qcint4": "QC4W", "qbint4": "QB4W",
}  # fmt: skip
# activations in these types make an FC/conv with a quantized weight an integer kernel (QS8/QU8/QD8/QP8)
INT_ACTIVATIONS = frozenset(
    name for name, token in DATATYPE_TOKENS.items() if XNN_TOKENS[token].role in (STATIC, DYNAMIC)
)

QUANT_SCHEMES = {1: "per_channel", 2: "per_tensor", 3: "dynamic", 4: "per_channel_group"}

# node table layouts: field names in schema order (field id = position)
_2X1 = ("input1_id", "input2_id", "output_id", "flags")
_1X1 = ("input_id", "output_id", "flags")
_FC = ("input1_id", "filter_id", "bias_id", "output_id", "flags")
_CONV = (
    "padding_top", "padding_right", "padding_bottom", "padding_left", "kernel_height", "kernel_width",
    "subsampling_height", "subsampling_width", "dilation_height", "dilation_width", "group_input_channels",
    "group_output_channels", "groups", "adjustment_height", "adjustment_width",
    "input1_id", "filter_id", "bias_id", "output_id", "flags",
)  # fmt: skip
_POOL = (
    "padding_top", "padding_right", "padding_bottom", "padding_left", "pooling_height", "pooling_width",
    "stride_height", "stride_width", "dilation_height", "dilation_width", "input_id", "output_id", "flags",
)  # fmt: skip
_TRANSPOSE = ("num_dims", "perm", "input_id", "output_id", "flags")
_RESIZE = ("new_height", "new_width", "input_id", "output_id", "flags")
_PAD = ("pre_paddings", "post_paddings", "padding_value", "input_id", "output_id", "flags")
_RESHAPE = ("num_dims", "new_shape", "input_id", "output_id", "flags")
_ARGMAX = (
    "padding_top", "padding_right", "padding_bottom", "padding_left", "pooling_height", "pooling_width",
    "input_id", "output_value_id", "output_index_id", "flags",
)  # fmt: skip
_SLOPE = ("slope", "input_id", "output_id", "flags")  # LeakyReLU negative_slope, ELU alpha
_CAT = ("axis", "input1_id", "input2_id", "input3_id", "input4_id", "output_id", "flags", "input5_id")
_SLICE = ("num_dims", "offsets", "sizes", "input_id", "output_id", "flags")
_SDPA = ("query_id", "key_id", "value_id", "scale_id", "mask_id", "output_id", "flags")

# XNodeUnion tag -> (union name, table layout)
NODE_TYPES: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("XNNAdd", _2X1), 2: ("XNNFullyConnected", _FC), 3: ("XNNSoftmax", _1X1), 4: ("XNNSigmoid", _1X1),
    5: ("XNNStaticTranspose", _TRANSPOSE), 6: ("XNNClamp", _1X1), 7: ("XNNConv2d", _CONV), 8: ("XNNDiv", _2X1),
    9: ("XNNStaticResizeBilinear2D", _RESIZE), 10: ("XNNStaticConstantPad", _PAD),
    11: ("XNNAvgPooling2d", _POOL), 12: ("XNNMinimum", _2X1), 13: ("XNNDepthwiseConv2d", _CONV),
    14: ("XNNMaxPooling2d", _POOL), 15: ("XNNMultiply", _2X1), 16: ("XNNSubtract", _2X1), 17: ("XNNFloor", _1X1),
    18: ("XNNConvert", _1X1), 19: ("XNNGlobalAvgPooling2d", _1X1), 20: ("XNNStaticReshape", _RESHAPE),
    21: ("XNNArgMaxPooling2d", _ARGMAX), 22: ("XNNSquareRoot", _1X1), 23: ("XNNCeiling", _1X1),
    24: ("XNNHardswish", _1X1), 25: ("XNNLeakyReLU", _SLOPE), 26: ("XNNMaximum", _2X1), 27: ("XNNNegate", _1X1),
    28: ("XNNSquare", _1X1), 29: ("XNNELU", _SLOPE), 30: ("XNNAbs", _1X1), 31: ("XNNPReLU", _2X1),
    32: ("XNNConcatenate2", _CAT), 33: ("XNNConcatenate3", _CAT), 34: ("XNNConcatenate4", _CAT),
    35: ("XNNStaticSlice", _SLICE), 36: ("XNNScaledDotProductAttention", _SDPA),
    37: ("XNNBatchMatrixMultiply", _2X1), 38: ("XNNConcatenate5", _CAT), 39: ("XNNConvTranspose2d", _CONV),
    40: ("XNNReciprocalSquareRoot", _1X1), 41: ("XNNLog", _1X1), 42: ("XNNGelu", _1X1), 43: ("XNNTanh", _1X1),
    44: ("XNNExp", _1X1), 45: ("XNNSin", _1X1), 46: ("XNNCopy", _1X1), 47: ("XNNCos", _1X1),
}  # fmt: skip
FULLY_CONNECTED, CONV2D, DEPTHWISE_CONV2D, CONV_TRANSPOSE2D, BATCH_MATMUL = (
    "fully_connected", "conv2d", "depthwise_conv2d", "conv_transpose2d", "batch_matmul",
)  # fmt: skip
WEIGHT_KINDS = {2: FULLY_CONNECTED, 7: CONV2D, 13: DEPTHWISE_CONV2D, 39: CONV_TRANSPOSE2D, 37: BATCH_MATMUL}
# u32 fields read from node tables besides the ids
_NODE_SCALARS = frozenset({"flags", "kernel_height", "kernel_width", "groups", "group_input_channels",
                           "group_output_channels", "num_dims", "axis"})  # fmt: skip
_CAT_INPUTS = {32: 2, 33: 3, 34: 4, 38: 5}  # ConcatenateN uses input1..inputN only
XNN_FLAG_TRANSPOSE_WEIGHTS = 0x1  # FC filter stored [in, out] instead of [out, in]


@dataclass(slots=True)
class QuantParams:
    scheme: str  # per_tensor | per_channel | per_channel_group | dynamic
    num_scales: int | None = None  # per_tensor: 1; dynamic: None (computed at run time)
    channel_dim: int | None = None
    group_size: int | None = None  # per_channel_group: the block size along the input dimension
    scale_buffer_idx: int | None = None  # constant_data entry of the scale table (0 = inline scales)
    scale: float | None = None  # per_tensor
    zero_point: int | None = None  # per_tensor
    num_nonbatch_dims: int | None = None  # dynamic

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


@dataclass(slots=True)
class XValue:
    index: int  # position in XNNGraph.xvalues
    offset: int  # file offset of the value's table
    id: int  # id_out: what nodes refer to
    datatype_code: int
    dims: tuple[int, ...]
    constant_buffer_idx: int = 0
    external_id: int = INVALID_ID
    flags: int = 0  # 1 external input, 2 external output
    quant: QuantParams | None = None
    named_key: str | None = None  # filled from constant_data
    constant_size: int | None = None  # bytes, from constant_data (known even when stored elsewhere)

    @property
    def datatype(self) -> str:
        entry = DATATYPES.get(self.datatype_code)
        return entry[0] if entry else f"datatype{self.datatype_code}"

    @property
    def bits(self) -> int | None:
        entry = DATATYPES.get(self.datatype_code)
        return entry[1] if entry else None

    @property
    def numeric(self) -> str:
        entry = DATATYPES.get(self.datatype_code)
        return entry[2] if entry else "unknown"

    @property
    def quantized(self) -> bool:
        entry = DATATYPES.get(self.datatype_code)
        return bool(entry and entry[3])

    @property
    def is_constant(self) -> bool:
        return self.constant_buffer_idx > 0

    @property
    def is_external_input(self) -> bool:
        """Fed by the delegate call: `external_id` is the index into the DelegateCall's args."""
        return bool(self.flags & 1)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    def to_dict(self) -> dict:
        out = {"id": self.id, "datatype": self.datatype, "dims": list(self.dims), "bits": self.bits,
               "quantized": self.quantized, "constant": self.is_constant, "flags": self.flags}  # fmt: skip
        if self.constant_buffer_idx:
            out["constant_buffer_idx"] = self.constant_buffer_idx
            out["constant_size"] = self.constant_size
            if self.named_key:
                out["named_key"] = self.named_key
        if self.quant is not None:
            out["quant"] = self.quant.to_dict()
        return out


@dataclass(slots=True)
class XNode:
    index: int
    offset: int
    tag: int
    union_name: str
    ids: dict[str, int] = field(default_factory=dict)  # every *_id field of the node's table
    params: dict[str, int] = field(default_factory=dict)  # flags, kernel sizes, groups...
    debug_handle: int = 0

    @property
    def kind(self) -> str:
        return WEIGHT_KINDS.get(self.tag, self.union_name)

    @property
    def flags(self) -> int:
        return self.params.get("flags", 0)

    def _id(self, name: str) -> int | None:
        value = self.ids.get(name)
        return None if value is None or value == INVALID_ID else value

    @property
    def input_id(self) -> int | None:
        return self._id("input1_id") if "input1_id" in self.ids else self._id("input_id")

    @property
    def filter_id(self) -> int | None:
        return self._id("filter_id") if self.tag != 37 else self._id("input2_id")

    @property
    def bias_id(self) -> int | None:
        return self._id("bias_id")

    @property
    def output_id(self) -> int | None:
        return self._id("output_id")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ids": dict(self.ids), "params": dict(self.params)}


@dataclass(slots=True)
class ConstantData:
    index: int
    offset: int  # relative to the constant region; NO_OFFSET when named
    size: int
    named_key: str

    @property
    def named(self) -> bool:
        return self.offset == NO_OFFSET


@dataclass(slots=True)
class WeightOp:
    """A weight-bearing XNNPACK node with its operands resolved (docs/policy.md#coverage)."""

    node: XNode
    kind: str
    weight: XValue | None
    input: XValue | None
    bias: XValue | None
    output: XValue | None

    @property
    def weight_constant(self) -> bool:
        return self.weight is not None and self.weight.is_constant

    @property
    def weight_external(self) -> bool:
        """The weight is a delegate input: a program constant or an activation, the caller decides."""
        return self.weight is not None and not self.weight.is_constant and self.weight.is_external_input

    @property
    def weight_quantized(self) -> bool:
        return self.weight is not None and self.weight.quantized

    @property
    def activation_quantized(self) -> bool:
        return self.input is not None and self.input.datatype in INT_ACTIVATIONS

    @property
    def compute(self) -> str | None:
        """'int8' for an integer kernel (QS8/QD8 x quantized weight), else the activation type."""
        if self.input is None:
            return None
        if self.activation_quantized and self.weight_quantized:
            return "int8"
        return self.input.datatype

    @property
    def params(self) -> int:
        return self.weight.numel if self.weight is not None else 0

    @property
    def positions(self) -> int | None:
        """Output positions: flops = 2 x params x positions (MACs = params x positions)."""
        if self.weight is None or self.output is None or not self.output.dims or not self.params:
            return None
        out = self.output.dims
        if self.kind in (FULLY_CONNECTED, CONV2D, DEPTHWISE_CONV2D):
            n = 1
            for d in out[:-1]:  # NHWC / [..., out_features]
                n *= d
            return n
        if self.kind == CONV_TRANSPOSE2D:
            # each input pixel scatters the whole kernel: MACs = input N*H*W x params
            if self.input is None or not self.input.dims:
                return None
            n = 1
            for d in self.input.dims[:-1]:
                n *= d
            return n
        if self.kind == BATCH_MATMUL and len(self.weight.dims) >= 2:
            # weight [..., K, N], output [..., M, N]: MACs = numel(out) x K = params x positions
            k = self.weight.dims[-2]
            total = self.output.numel * k
            return total // self.params if total % self.params == 0 else None
        return None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "node": self.node.index,
            "weight": self.weight.to_dict() if self.weight else None,
            "input": self.input.datatype if self.input else None,
            "output_dims": list(self.output.dims) if self.output else None,
            "compute": self.compute,
            "params": self.params,
            "positions": self.positions,
        }


@dataclass
class XnnpackPayload:
    base_offset: int
    size: int
    has_header: bool = False
    header_length: int | None = None
    flatbuffer_offset: int = 0
    flatbuffer_size: int = 0
    constant_data_offset: int = 0
    constant_data_size: int = 0
    identifier: bytes = b""
    version: str = ""
    num_externs: int = 0
    input_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    values: list[XValue] = field(default_factory=list)
    nodes: list[XNode] = field(default_factory=list)
    constant_data: list[ConstantData] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    complete: bool = False  # the whole graph was read
    _by_id: dict[int, XValue] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not F.has_errors(self.findings)

    def value(self, value_id: int | None) -> XValue | None:
        if value_id is None:
            return None
        return self._by_id.get(value_id)

    def weight_ops(self) -> list[WeightOp]:
        """FC, conv, depthwise and transposed conv nodes, and batch matmuls with a constant operand."""
        out = []
        for node in self.nodes:
            kind = WEIGHT_KINDS.get(node.tag)
            if kind is None:
                continue
            inp, weight = self.value(node.input_id), self.value(node.filter_id)
            if kind == BATCH_MATMUL and (weight is None or not weight.is_constant):
                if inp is not None and inp.is_constant:
                    inp, weight = weight, inp
                elif weight is None or not weight.is_external_input:
                    continue  # two activations (attention scores): no weight
                # else: the second operand comes from outside the blob (XNNPACK feeds a program constant
                # to a batch matmul that way); listed with weight_constant False, weight_external True
            out.append(WeightOp(node, kind, weight, inp, self.value(node.bias_id), self.value(node.output_id)))
        return out

    def to_dict(self) -> dict:
        return {
            "has_header": self.has_header,
            "flatbuffer": [self.flatbuffer_offset, self.flatbuffer_size],
            "constant_data": [self.constant_data_offset, self.constant_data_size],
            "identifier": self.identifier.decode("ascii", "replace"),
            "num_externs": self.num_externs,
            "input_ids": self.input_ids,
            "output_ids": self.output_ids,
            "nodes": [n.kind for n in self.nodes],
            "values": len(self.values),
            "weight_ops": [w.to_dict() for w in self.weight_ops()],
            "findings": [f.to_dict() for f in self.findings],
        }



MAX_SLOTS = 24  # the widest table read here (a conv node) has 20 fields
_SCALARS = {kind: struct.Struct("<" + code) for kind, code in
            (("u8", "B"), ("i16", "h"), ("u32", "I"), ("i32", "i"), ("u64", "Q"), ("f32", "f"))}  # fmt: skip


class _Fields:
    """A table's field positions from one vtable read, with each vtable parsed once per blob (flatc
    shares one vtable among all tables of a shape): the hot path of values and nodes."""

    __slots__ = ("buf", "end", "fb", "field", "pos")

    def __init__(self, fb: FlatBuffer, table: int, n: int, field: str, vtables: dict[int, tuple[int, tuple]]):
        self.fb, self.field = fb, field
        vtable = table - int(fb.read("i32", table, field))
        cached = vtables.get(vtable)
        if cached is None:
            fb.check(vtable, 4, field)
            vlen, tlen = struct.unpack_from("<HH", fb.v.buf, vtable)
            if vlen < 4 or vlen % 2 or tlen < 4:
                raise FlatbufferError(f"bad vtable (length {vlen}, table length {tlen}) at offset {vtable}",
                                      offset=vtable, field=field)  # fmt: skip
            fb.check(vtable, vlen, field)
            k = min((vlen - 4) // 2, MAX_SLOTS)  # only the slots read here: a long vtable costs nothing more
            rels = struct.unpack_from(f"<{k}H", fb.v.buf, vtable + 4)
            for fid, rel in enumerate(rels):
                if rel and (rel < 4 or rel >= tlen):
                    raise FlatbufferError(f"field {fid} at +{rel} lies outside tables of length {tlen} (vtable at "
                                          f"offset {vtable})", offset=vtable, field=field)  # fmt: skip
            cached = vtables[vtable] = (tlen, rels)
        tlen, rels = cached
        fb.check(table, tlen, field)
        self.buf, self.end = fb.v.buf, table + tlen
        pos = [table + rel if rel else None for rel in rels[:n]]
        self.pos = pos + [None] * (n - len(pos))

    def scalar(self, fid: int, kind: str, default: int | float = 0) -> int | float:
        p = self.pos[fid]
        if p is None:
            return default
        fmt = _SCALARS[kind]
        if p + fmt.size > self.end:  # the table is inside the window; its fields must be inside the table
            raise FlatbufferError(f"field {fid} ({kind}) at offset {p} runs past the end of its table",
                                  offset=p, field=self.field)  # fmt: skip
        return fmt.unpack_from(self.buf, p)[0]

    def table(self, fid: int) -> int | None:
        p = self.pos[fid]
        if p is None:
            return None
        target = self.fb.deref(p, self.field)
        if (target - self.fb.start) % 4:  # writers align tables; a misaligned one is a bad offset
            raise FlatbufferError(f"table at offset {target} is not 4-byte aligned", offset=target, field=self.field)
        self.fb.budget.spend(1, self.field)
        return target

    def union(self, fid: int) -> tuple[int, int | None]:
        tag = int(self.scalar(fid, "u8"))
        return (tag, self.table(fid + 1)) if tag else (0, None)

    def string(self, fid: int, limit: int) -> str:
        """A string field (budgeted), decoded with replacement, cut at `limit` bytes."""
        p = self.pos[fid]
        if p is None:
            return ""
        start = self.fb.deref(p, self.field)
        size = int(self.fb.read("u32", start, self.field))
        self.fb.check(start + 4, size, self.field)
        self.fb.budget.spend(1 + size // 16, self.field)
        return bytes(self.fb.v.buf[start + 4 : start + 4 + min(size, limit)]).decode("utf-8", errors="replace")

    def u32s(self, fid: int, limit: int) -> tuple[int, ...] | int:
        """A [uint] vector (budgeted), or its length when it is longer than `limit`."""
        p = self.pos[fid]
        if p is None:
            return ()
        start = self.fb.deref(p, self.field)
        count = int(self.fb.read("u32", start, self.field))
        self.fb.check(start + 4, 4 * count, self.field)
        if count > limit:
            return count
        self.fb.budget.spend(1 + count // 4, self.field)
        return struct.unpack_from(f"<{count}I", self.fb.v.buf, start + 4)


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview | mmap.mmap, base: int, budget: Budget | None):
        self.v = View(data)
        self.base = base
        self.p = XnnpackPayload(base_offset=base, size=len(self.v))
        self.found = F.CappedFindings(self.p.findings, "XNNPACK_TOO_MANY_FINDINGS")
        self.budget = budget if budget is not None else Budget.for_size(len(self.v))
        # table position -> what was read there: a table shared by many references (legal in a
        # flatbuffer, and the way a small hostile file describes millions of values) is read once
        self.memo: dict[tuple[str, int], object] = {}
        self.vtables: dict[int, tuple[int, tuple]] = {}

    def err(self, code: str, message: str, pos: int | None = None, **loc) -> None:
        self.found.add(F.error(code, message, offset=None if pos is None else self.base + pos, **loc))

    def warn(self, code: str, message: str, pos: int | None = None, **loc) -> None:
        self.found.add(F.warning(code, message, offset=None if pos is None else self.base + pos, **loc))

    def fb_error(self, exc: ReadError, what: str) -> None:
        # a bad offset can point anywhere (even before the blob): keep only positions inside it
        pos = exc.offset if isinstance(exc.offset, int) and 0 <= exc.offset < len(self.v) else None
        self.err("XNNPACK_FLATBUFFER_INVALID", f"{what}: {exc.message}", pos, field=exc.field or what)

    # -- header ------------------------------------------------------------------------------
    def header(self) -> tuple[int, int] | None:
        """The flatbuffer window, or None when the blob cannot be read further."""
        v, p, n = self.v, self.p, len(self.v)
        magic = v.buf[4:8] if n >= 8 else b""
        if magic == HEADER_MAGIC:
            p.has_header = True
            if n < HEADER_FIELDS_END:
                self.err("XNNPACK_HEADER_INVALID", f"the blob ({n} bytes) is shorter than the XH00 header (30)", 0)
                return None
            p.header_length = v.u16(8)
            p.flatbuffer_offset, p.flatbuffer_size = v.u32(10), v.u32(14)
            p.constant_data_offset, p.constant_data_size = v.u32(18), v.u64(22)
            fb_end = p.flatbuffer_offset + p.flatbuffer_size
            if p.header_length < HEADER_FIELDS_END or p.header_length > n:
                self.err("XNNPACK_HEADER_INVALID", f"header length {p.header_length} (the fields need 30, "
                         f"the blob has {n} bytes)", 8)  # fmt: skip
            if p.flatbuffer_size == 0:
                self.err("XNNPACK_HEADER_INVALID", "the header declares an empty flatbuffer", 14)
                return None
            if p.flatbuffer_offset < HEADER_FIELDS_END or fb_end > n:
                self.err("XNNPACK_HEADER_OUT_OF_RANGE", f"flatbuffer [{p.flatbuffer_offset}, {fb_end}) lies outside "
                         f"the blob after its header ([30, {n}))", 10)  # fmt: skip
                return None
            cd_end = p.constant_data_offset + p.constant_data_size
            if p.constant_data_offset < fb_end or cd_end > n:
                self.err("XNNPACK_HEADER_OUT_OF_RANGE", f"constant data [{p.constant_data_offset}, {cd_end}) is not "
                         f"between the flatbuffer's end ({fb_end}) and the blob's ({n})", 18)  # fmt: skip
                p.constant_data_size = 0  # no inline constant is trusted
            return p.flatbuffer_offset, fb_end
        if magic == IDENTIFIER or magic in OLD_IDENTIFIERS:
            # a bare flatbuffer (blobs written before the header existed): no constant region
            p.flatbuffer_offset, p.flatbuffer_size = 0, n
            return 0, n
        if n < 8:
            self.err("XNNPACK_BAD_MAGIC", f"the blob has {n} bytes, too few for a header or a flatbuffer",
                     0 if n else None)  # fmt: skip
            return None
        self.err("XNNPACK_BAD_MAGIC", f"bytes 4-7 are {bytes(magic).hex()}, neither XH00 nor an XNNPACK "
                 "flatbuffer identifier", 4)  # fmt: skip
        return None

    # -- graph -------------------------------------------------------------------------------
    def graph(self, start: int, end: int) -> None:
        p = self.p
        try:
            fb = FlatBuffer(self.v, self.budget, start, end)
            p.identifier = fb.identifier()
            if p.identifier != IDENTIFIER:
                self.err("XNNPACK_BAD_IDENTIFIER", f"flatbuffer identifier {p.identifier!r}, expected b'XN01'",
                         start + 4)  # fmt: skip
            root = fb.root()
            p.version = fb.string(root, 0, field="XNNGraph.version", limit=64)
            p.num_externs = int(fb.scalar(root, 3, "u32", field="XNNGraph.num_externs"))
            p.input_ids = [int(x) for x in fb.scalars(root, 4, "u32", field="XNNGraph.input_ids")]
            p.output_ids = [int(x) for x in fb.scalars(root, 5, "u32", field="XNNGraph.output_ids")]
            self.constants(fb, root)
            self.values(fb, root)
            self.nodes(fb, root)
            p.complete = True
        except BudgetExhausted as exc:
            self.found.add(F.error("READ_BUDGET_EXHAUSTED", f"XNNPACK graph: {exc.message}", field=exc.field))
        except ReadError as exc:
            self.fb_error(exc, "XNNGraph")
        self.cross_check()  # on what was read too, so that a partial graph still resolves its ids

    def constants(self, fb: FlatBuffer, root: int) -> None:
        p = self.p
        for i, t in enumerate(fb.tables(root, 8, field="XNNGraph.constant_data")):
            try:
                cf = _Fields(fb, t, 3, f"constant_data[{i}]", self.vtables)
                entry = ConstantData(i, int(cf.scalar(0, "u64")), int(cf.scalar(1, "u64")), cf.string(2, 256))
            except BudgetExhausted:
                raise
            except ReadError as exc:
                self.fb_error(exc, f"constant_data[{i}]")
                entry = ConstantData(i, NO_OFFSET, 0, "")
            p.constant_data.append(entry)
            if i == 0 or (entry.size == 0 and not entry.named_key):
                continue  # entry 0 is the reserved "not constant" slot
            if entry.named:
                if not entry.named_key:
                    self.err("XNNPACK_CONSTANT_OUT_OF_RANGE", f"constant_data[{i}] has neither an offset nor a named "
                             "key", t, field=f"constant_data[{i}]")  # fmt: skip
            elif entry.offset + entry.size > p.constant_data_size:
                self.err("XNNPACK_CONSTANT_OUT_OF_RANGE", f"constant_data[{i}] [{entry.offset}, "
                         f"{entry.offset + entry.size}) runs past the constant region ({p.constant_data_size} bytes)",
                         t, field=f"constant_data[{i}]")  # fmt: skip

    def values(self, fb: FlatBuffer, root: int) -> None:
        for i, t in enumerate(fb.tables(root, 2, field="XNNGraph.xvalues")):
            try:
                value = self.value(fb, t, i)
            except BudgetExhausted:
                raise
            except ReadError as exc:
                self.fb_error(exc, f"xvalues[{i}]")
                continue
            if value is not None:
                self.p.values.append(value)

    def value(self, fb: FlatBuffer, t: int, i: int) -> XValue | None:
        where = f"xvalues[{i}]"
        seen = self.memo.get(("value", t))
        if seen is not None:  # the same table again declares the same id again: O(1), not re-read
            if isinstance(seen, XValue):
                self.err("XNNPACK_DUPLICATE_VALUE_ID", f"{where} is the table of xvalues[{seen.index}] again "
                         f"(id {seen.id})", t, field=where)  # fmt: skip
            return None
        self.memo[("value", t)] = False  # a table that fails is reported once
        tag, inner = _Fields(fb, t, 2, where, self.vtables).union(0)
        if tag not in (1, 2) or inner is None:
            self.err("XNNPACK_BAD_UNION_TAG", f"{where}: XValueUnion tag {tag}", t, field=where)
            return None
        quant = None
        tensor: int | None = inner
        if tag == 2:
            qv = _Fields(fb, inner, 3, where, self.vtables)
            tensor = qv.table(0)
            qtag, qtable = qv.union(1)
            if qtag != 0:
                quant = self.quant(fb, qtag, qtable, where, inner)
            if tensor is None:
                self.err("XNNPACK_FLATBUFFER_INVALID", f"{where}: quantized value without a tensor_value", inner,
                         field=where)  # fmt: skip
                return None
        assert tensor is not None
        first = self.memo.get(("tensor", tensor))
        if first is not None:  # another value sharing this tensor table declares its id again
            self.err("XNNPACK_DUPLICATE_VALUE_ID", f"{where} shares its tensor table with xvalues[{first}]", t,
                     field=where)  # fmt: skip
            return None
        self.memo[("tensor", tensor)] = i
        tv = _Fields(fb, tensor, 7, where, self.vtables)
        dt = int(tv.scalar(0, "i16"))
        num_dims = int(tv.scalar(1, "u32"))
        dims = tv.u32s(2, MAX_DIMS)
        if isinstance(dims, int):
            self.err("XNNPACK_BAD_SHAPE", f"{where}: {dims} dims (at most {MAX_DIMS})", tensor, field=where)
            dims = ()
        elif num_dims != len(dims):
            self.warn("XNNPACK_BAD_SHAPE", f"{where}: num_dims {num_dims} but {len(dims)} dims", tensor, field=where)
        if dt not in DATATYPES:
            self.err("XNNPACK_BAD_DATATYPE", f"{where}: datatype {dt}", tensor, field=where)
        value = XValue(
            index=i,
            offset=self.base + t,
            id=int(tv.scalar(6, "u32")),
            datatype_code=dt,
            dims=dims,
            constant_buffer_idx=int(tv.scalar(3, "u32")),
            external_id=int(tv.scalar(4, "u32")),
            flags=int(tv.scalar(5, "u32")),
            quant=quant,
        )
        self.memo[("value", t)] = value
        return value

    def quant(self, fb: FlatBuffer, tag: int, q: int | None, where: str, pos: int) -> QuantParams | None:
        scheme = QUANT_SCHEMES.get(tag)
        if scheme is None or q is None:
            self.err("XNNPACK_BAD_UNION_TAG", f"{where}: XNNQuantParams tag {tag}", pos, field=f"{where}.quant_params")
            return None
        qf = _Fields(fb, q, 6, f"{where}.quant_params", self.vtables)
        if scheme == "per_tensor":
            return QuantParams(scheme, 1, scale=float(qf.scalar(0, "f32")), zero_point=int(qf.scalar(1, "i32")))
        if scheme == "dynamic":
            return QuantParams(scheme, None, num_nonbatch_dims=int(qf.scalar(0, "i32")))
        # per-channel (scale, channel_dim, scale_buffer_idx, num_scales) and per-channel-group (scale,
        # channel_dim, group_size, scale_bf16 (deprecated), scale_buffer_idx, num_scales)
        grouped = scheme == "per_channel_group"
        num_scales = int(qf.scalar(5 if grouped else 3, "u32"))
        if not num_scales and qf.pos[0] is not None:
            inline = fb.vector(q, 0, 4, field=f"{where}.quant_params.scale")
            num_scales = inline.count if inline is not None else 0  # older blobs kept the scales inline
        return QuantParams(
            scheme,
            num_scales,
            channel_dim=int(qf.scalar(1, "i32")),
            group_size=int(qf.scalar(2, "i32")) if grouped else None,
            scale_buffer_idx=int(qf.scalar(4 if grouped else 2, "u32")),
        )

    def nodes(self, fb: FlatBuffer, root: int) -> None:
        for i, t in enumerate(fb.tables(root, 1, field="XNNGraph.xnodes")):
            try:
                node = self.node(fb, t, i)
            except BudgetExhausted:
                raise
            except ReadError as exc:
                self.fb_error(exc, f"xnodes[{i}]")
                continue
            if node is not None:
                self.p.nodes.append(node)

    def node(self, fb: FlatBuffer, t: int, i: int) -> XNode | None:
        where = f"xnodes[{i}]"
        seen = self.memo.get(("node", t))
        if seen is not None:  # a shared table: read once
            if not isinstance(seen, XNode):
                return None
            return dataclasses.replace(seen, index=i, ids=dict(seen.ids), params=dict(seen.params))
        self.memo[("node", t)] = False
        xf = _Fields(fb, t, 4, where, self.vtables)
        tag, inner = xf.union(0)
        entry = NODE_TYPES.get(tag)
        if entry is None or inner is None:
            self.err("XNNPACK_BAD_UNION_TAG", f"{where}: XNodeUnion tag {tag}", t, field=where)
            return None
        name, layout = entry
        node = XNode(i, self.base + t, tag, name, debug_handle=int(xf.scalar(2, "u32")))
        nf = _Fields(fb, inner, len(layout), where, self.vtables)
        n_cat = _CAT_INPUTS.get(tag)
        for fid, fname in enumerate(layout):
            if fname.endswith("_id"):
                if n_cat and fname.startswith("input") and int(fname[5]) > n_cat:
                    continue
                # flatc omits fields equal to their default, so an absent id is id 0
                node.ids[fname] = int(nf.scalar(fid, "u32"))
            elif fname in _NODE_SCALARS:
                node.params[fname] = int(nf.scalar(fid, "u32"))
        self.memo[("node", t)] = node
        return node

    # -- cross references ------------------------------------------------------------------------
    def cross_check(self) -> None:
        p = self.p
        n_const = len(p.constant_data)
        for value in p.values:
            if value.id in p._by_id:
                self.err("XNNPACK_DUPLICATE_VALUE_ID", f"xvalues[{value.index}] repeats id {value.id}",
                         value.offset - self.base, field=f"xvalues[{value.index}]")  # fmt: skip
                continue
            p._by_id[value.id] = value
            where = f"xvalues[{value.index}]"
            for what, idx in (("constant_buffer_idx", value.constant_buffer_idx),
                              ("scale_buffer_idx", value.quant.scale_buffer_idx if value.quant else None)):  # fmt: skip
                if idx and idx >= n_const:
                    self.err("XNNPACK_CONSTANT_INDEX_OUT_OF_RANGE", f"{where}.{what} {idx} but the graph has "
                             f"{n_const} constant_data entries", value.offset - self.base, field=where)  # fmt: skip
            if value.constant_buffer_idx and value.constant_buffer_idx < n_const:
                entry = p.constant_data[value.constant_buffer_idx]
                value.constant_size = entry.size
                value.named_key = entry.named_key or None
                need = self.needed_bytes(value)
                if need is not None and entry.size < need:
                    self.err("XNNPACK_CONSTANT_SIZE_MISMATCH", f"{where} ({value.datatype} {list(value.dims)}) needs "
                             f"{need} bytes, its constant data has {entry.size}", value.offset - self.base,
                             field=where)  # fmt: skip
        if not p.complete:
            return  # an unread value is not a dangling reference
        externals = [v for v in p.values if v.flags & 3]  # 1 external input, 2 external output
        beyond = [v for v in externals if v.external_id >= p.num_externs]
        if beyond:
            v = beyond[0]
            self.err("XNNPACK_EXTERNS_MISMATCH", f"xvalues[{v.index}] is external value {v.external_id} but the "
                     f"graph declares num_externs {p.num_externs} ({len(beyond)} value(s) past it)",
                     v.offset - self.base, field="XNNGraph.num_externs")  # fmt: skip
        elif p.num_externs < len(set(p.input_ids) | set(p.output_ids)):
            self.err("XNNPACK_EXTERNS_MISMATCH", f"num_externs {p.num_externs} is fewer than the graph's "
                     f"{len(set(p.input_ids) | set(p.output_ids))} inputs and outputs", field="XNNGraph.num_externs")
        for node in p.nodes:
            for fname, vid in node.ids.items():
                if vid != INVALID_ID and vid not in p._by_id:
                    self.err("XNNPACK_VALUE_ID_OUT_OF_RANGE", f"xnodes[{node.index}] ({node.union_name}).{fname} "
                             f"= {vid}: no value has that id", node.offset - self.base,
                             field=f"xnodes[{node.index}].{fname}", op=node.union_name)  # fmt: skip
        for what, ids in (("input_ids", p.input_ids), ("output_ids", p.output_ids)):
            for vid in ids:
                if vid not in p._by_id:
                    self.err("XNNPACK_VALUE_ID_OUT_OF_RANGE", f"XNNGraph.{what} names id {vid}: no value has that id",
                             field=f"XNNGraph.{what}")  # fmt: skip

    @staticmethod
    def needed_bytes(value: XValue) -> int | None:
        """Bytes a constant of this shape and type must have (packed 4-bit: two per byte)."""
        bits = value.bits
        if bits is None or not value.dims:
            return None
        return (value.numel * bits + 7) // 8


def read_payload(
    data: bytes | bytearray | memoryview | mmap.mmap, base_offset: int = 0, budget: Budget | None = None
) -> XnnpackPayload:
    """Read one XNNPACK delegate blob; `base_offset` is its position in the file (for finding offsets).

    Pass the PTE reader's `budget` to charge this blob's visits to the whole file's budget.
    """
    reader = _Reader(data, base_offset, budget)
    try:
        window = reader.header()
        if window is not None:
            reader.graph(*window)
    except BudgetExhausted as exc:
        reader.found.add(F.error("READ_BUDGET_EXHAUSTED", f"XNNPACK blob: {exc.message}", field=exc.field))
    except ReadError as exc:  # a header read past the end: the checks above make this unreachable
        reader.err("XNNPACK_HEADER_INVALID", exc.message, exc.offset)
    reader.found.close()
    return reader.p
