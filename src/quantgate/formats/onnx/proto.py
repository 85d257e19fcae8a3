"""The ONNX ModelProto as the wire-format scanner sees it: tensors, nodes, shapes, opsets.

Field numbers come from onnx.proto (IR 10+). Nothing here reads a tensor's payload: `raw_data` and
packed typed data are recorded as (offset, length) or counted, never copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from quantgate.core.inventory import FLOAT, INT, UNKNOWN
from quantgate.formats.wire import protobuf as pb

# TensorProto.DataType -> (name, bits per element or None, numeric family)
DTYPES: dict[int, tuple[str, int | None, str]] = {
    1: ("FLOAT", 32, FLOAT),
    2: ("UINT8", 8, INT),
    3: ("INT8", 8, INT),
    4: ("UINT16", 16, INT),
    5: ("INT16", 16, INT),
    6: ("INT32", 32, INT),
    7: ("INT64", 64, INT),
    8: ("STRING", None, UNKNOWN),
    9: ("BOOL", 8, INT),
    10: ("FLOAT16", 16, FLOAT),
    11: ("DOUBLE", 64, FLOAT),
    12: ("UINT32", 32, INT),
    13: ("UINT64", 64, INT),
    14: ("COMPLEX64", 64, FLOAT),
    15: ("COMPLEX128", 128, FLOAT),
    16: ("BFLOAT16", 16, FLOAT),
    17: ("FLOAT8E4M3FN", 8, FLOAT),
    18: ("FLOAT8E4M3FNUZ", 8, FLOAT),
    19: ("FLOAT8E5M2", 8, FLOAT),
    20: ("FLOAT8E5M2FNUZ", 8, FLOAT),
    21: ("UINT4", 4, INT),
    22: ("INT4", 4, INT),
    23: ("FLOAT4E2M1", 4, FLOAT),
    24: ("FLOAT8E8M0", 8, FLOAT),
    25: ("UINT2", 2, INT),
    26: ("INT2", 2, INT),
    27: ("FLOAT6E2M3", 6, FLOAT),
    28: ("FLOAT6E3M2", 6, FLOAT),
}
# stored types that count as quantized weights (<= 8 bits with scales); BOOL is 8 bits but not one
QUANT_DTYPES = {2, 3, 17, 18, 19, 20, 21, 22, 23, 25, 26, 27, 28}
# tables a Gather reads that are index/lookup data, not weights
NON_WEIGHT_DTYPES = {6, 7, 8, 9, 12, 13}
# int32_data holds one element per entry for >= 8-bit types, two for 4-bit, four for 2-bit
PER_INT32 = {21: 2, 22: 2, 23: 2, 25: 4, 26: 4}
INT32_DATA_TYPES = {2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28}

# nesting limit for messages (graphs inside attributes inside nodes inside graphs...)
MAX_DEPTH = 48
I64_MAX = (1 << 63) - 1  # a tensor's element count must fit in int64 (ONNX and ORT count in int64)


@dataclass(slots=True)
class Tensor:
    name: str = ""
    dims: list[int] = field(default_factory=list)
    data_type: int = 0
    offset: int = 0
    raw: tuple[int, int] | None = None  # (offset, length) of raw_data, never read here
    float_data: tuple[int, int] | None = None  # packed float_data, for scale values
    typed_counts: dict[str, int] = field(default_factory=dict)
    external: dict[str, str] = field(default_factory=dict)
    data_location: int = 0
    kind: str = "initializer"  # initializer | constant | sparse

    @property
    def dtype_name(self) -> str:
        info = DTYPES.get(self.data_type)
        return info[0] if info else f"DTYPE_{self.data_type}"

    @property
    def bits(self) -> int | None:
        info = DTYPES.get(self.data_type)
        return info[1] if info else None

    @property
    def numel(self) -> int | None:
        """dims' product; None for a negative dim or a product past int64 (no real tensor is that
        large). Saturating: 60,000 dims of 2^62 stop at the second, never a 3-million-bit product."""
        dims = self.dims
        if not dims:
            return 1
        if min(dims) < 0:
            return None
        if len(dims) <= 4:  # the common case at C speed: 4 dims below 2^63 are well within reach
            n = math.prod(dims)
            return n if n <= I64_MAX else None
        if 0 in dims:
            return 0
        n = 1
        for d in dims:
            n *= d
            if n > I64_MAX:
                return None
        return n

    @property
    def is_external(self) -> bool:
        return self.data_location == 1 or bool(self.external)

    def expected_bytes(self) -> int | None:
        n, bits = self.numel, self.bits
        if n is None or bits is None:
            return None
        return (n * bits + 7) // 8

    def stored_bytes(self) -> int | None:
        """Bytes encoding this tensor as stored (raw payload, external length, or dims x dtype)."""
        if self.raw is not None:
            return self.raw[1]
        if self.is_external:
            length = self.external.get("length", "")
            if length.isdigit():
                return int(length)
        return self.expected_bytes()


@dataclass(slots=True)
class Node:
    op_type: str = ""
    domain: str = ""
    name: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    tensor_attr: Tensor | None = None
    offset: int = 0
    scope: str = "main"
    # the subgraph attributes this node sits in, outermost first: (owner node offset, attribute offset);
    # two nodes that part at the same owner's different attributes are in alternative If branches
    branch: tuple[tuple[int, int], ...] = ()

    def attr_int(self, key: str, default: int | None = None) -> int | None:
        value = self.attrs.get(key, default)
        return value if isinstance(value, int) else default

    def input(self, index: int) -> str:
        return self.inputs[index] if index < len(self.inputs) else ""

    @property
    def label(self) -> str:
        return self.name or (self.outputs[0] if self.outputs else self.op_type)


@dataclass
class Function:
    """A model-local function (FunctionProto): its formal inputs/outputs and body, for inlining."""

    domain: str = ""
    name: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)


@dataclass
class Model:
    ir_version: int | None = None
    producer: str = ""
    producer_version: str = ""
    opsets: dict[str, int] = field(default_factory=dict)
    opset_count: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    has_graph: bool = False
    nodes: list[Node] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)  # initializers, sparse and Constant values
    shapes: dict[str, list[int | None]] = field(default_factory=dict)  # value_info / inputs / outputs
    # every stored tensor whose data is external, wherever it sits (initializers, sparse values and
    # indices, attribute tensors, training graphs): all of them are path- and range-checked
    external: list[Tensor] = field(default_factory=list)
    function_nodes: int = 0
    functions: dict[tuple[str, str], Function] = field(default_factory=dict)  # (domain, name), first kept
    graph_inputs: int = 0
    graph_outputs: int = 0


_I64_SIGN = 1 << 63  # a varint below this is its own int64 value (pb.to_signed64)
_NODE_STRINGS = frozenset((1, 2, 3, 4, 7))  # input, output, name, op_type, domain


class Parser:
    """ModelProto -> Model, field numbers from onnx.proto (IR 10+)."""

    def __init__(self, scanner: pb.Scanner):
        self.s = scanner
        self.model = Model()

    def text(self, f: pb.Field, where: str) -> str:
        return self.s.text(f, where) if f.wire == pb.LEN else ""

    def model_proto(self, end: int) -> Model:
        m = self.model
        for f in self.s.fields(0, end, 0, "ModelProto"):
            if f.number == 1 and f.wire == pb.VARINT:
                m.ir_version = pb.to_signed64(f.value)
            elif f.number == 2:
                m.producer = self.text(f, "producer_name")
            elif f.number == 3:
                m.producer_version = self.text(f, "producer_version")
            elif f.number == 7 and f.wire == pb.LEN:
                m.has_graph = True
                self.graph(f.value, f.end, 1, "main")
            elif f.number == 8 and f.wire == pb.LEN:
                m.opset_count += 1
                domain, version = self.opset(f.value, f.end)
                m.opsets[domain] = version
            elif f.number == 14 and f.wire == pb.LEN:
                key, value = self.string_entry(f.value, f.end, 1, "metadata_props")
                if len(m.metadata) < 256:
                    m.metadata[key] = value[:200]
            elif f.number == 20 and f.wire == pb.LEN:
                for g in self.s.fields(f.value, f.end, 1, "training_info"):
                    if g.number in (1, 2) and g.wire == pb.LEN:
                        self.graph(g.value, g.end, 2, "training")
            elif f.number == 25 and f.wire == pb.LEN:
                self.function(f.value, f.end, 1)
        return m

    def opset(self, start: int, end: int) -> tuple[str, int]:
        domain, version = "", 0
        for f in self.s.fields(start, end, 1, "opset_import"):
            if f.number == 1:
                domain = self.text(f, "opset_import.domain")
            elif f.number == 2 and f.wire == pb.VARINT:
                version = pb.to_signed64(f.value)
        return domain, version

    def string_entry(self, start: int, end: int, depth: int, where: str) -> tuple[str, str]:
        key = value = ""
        for f in self.s.fields(start, end, depth, where):
            if f.number == 1:
                key = self.text(f, where)
            elif f.number == 2:
                value = self.text(f, where)
        return key, value

    def function(self, start: int, end: int, depth: int) -> None:
        fn = Function()
        for f in self.s.fields(start, end, depth, "FunctionProto"):
            if f.wire != pb.LEN:
                continue
            if f.number == 7:
                self.model.function_nodes += 1
                fn.nodes.append(self.node(f.value, f.end, depth + 1, "function", collect=False))
            elif f.number == 1:
                fn.name = self.text(f, "function.name")
            elif f.number == 4:
                fn.inputs.append(self.text(f, "function.input"))
            elif f.number == 5:
                fn.outputs.append(self.text(f, "function.output"))
            elif f.number == 10:
                fn.domain = self.text(f, "function.domain")
        # a body's Constant values are stored tensors like any other (counted and checked once, under
        # `<function>/<output>`); each call gets its own copy when the reader inlines the body
        for n in fn.nodes:
            if n.op_type == "Constant" and n.tensor_attr is not None and n.outputs:
                t = n.tensor_attr
                t.name, t.kind = f"{fn.name}/{n.outputs[0]}", "constant"
                self.model.tensors.append(t)
        self.model.functions.setdefault((fn.domain, fn.name), fn)

    def graph(
        self, start: int, end: int, depth: int, scope: str, branch: tuple[tuple[int, int], ...] = ()
    ) -> None:
        m = self.model
        for f in self.s.fields(start, end, depth, "GraphProto"):
            if f.wire != pb.LEN:
                continue
            if f.number == 1:
                self.node(f.value, f.end, depth + 1, scope, branch=branch)
            elif f.number == 5:
                t = self.tensor(f.value, f.end, depth + 1, f.tag_offset)
                t.kind = "initializer"
                if scope != "training":
                    m.tensors.append(t)
            elif f.number == 15:
                t = self.sparse_tensor(f.value, f.end, depth + 1, f.tag_offset)
                if scope != "training":
                    m.tensors.append(t)
            elif f.number in (11, 12, 13):
                name, shape = self.value_info(f.value, f.end, depth + 1)
                if scope == "main" and f.number == 11:
                    m.graph_inputs += 1
                elif scope == "main" and f.number == 12:
                    m.graph_outputs += 1
                if name and shape is not None:
                    m.shapes.setdefault(name, shape)

    def node(
        self,
        start: int,
        end: int,
        depth: int,
        scope: str,
        collect: bool = True,
        branch: tuple[tuple[int, int], ...] = (),
    ) -> Node:
        s = self.s
        s.check_message(start, end, depth, "NodeProto")
        n = Node(offset=start, scope=scope, branch=branch)
        buf = s.buf
        budget = s.budget
        limit = budget.limit
        pos = start
        # the commonest record in a big graph: fields() inline (the same checks, in the same order, with
        # no Field per field) and strings decoded in place
        while pos < end:
            budget.used += 1
            if budget.used > limit:
                budget.spend(0, "NodeProto")
            tag_offset = pos
            key = buf[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = s.varint(pos, end, "NodeProto")
            if key & 7 != pb.LEN or key < 8:  # another wire type, or field number 0
                pos = s.skip(key, tag_offset, pos, end, "NodeProto")
                continue
            number = key >> 3
            if pos < end and buf[pos] < 0x80:
                length = buf[pos]
                pos += 1
            else:
                length, pos = s.varint(pos, end, "NodeProto")
            if length > end - pos:
                raise pb.LengthPastEnd(
                    f"field {number} at offset {tag_offset} declares {length} bytes but only "
                    f"{end - pos} remain in its message",
                    offset=tag_offset,
                    field="NodeProto",
                )
            value = pos
            pos += length
            if number == 5:
                self.attribute(value, pos, depth + 1, n, scope)
                continue
            if number not in _NODE_STRINGS:
                continue
            text = str(buf[value : value + (length if length < 65536 else 65536)], "utf-8", "replace")
            if number == 1:
                n.inputs.append(text)
            elif number == 2:
                n.outputs.append(text)
            elif number == 3:
                n.name = text
            elif number == 4:
                n.op_type = text
            else:
                n.domain = text
        if collect:
            self.model.nodes.append(n)
            if n.op_type == "Constant" and n.tensor_attr is not None and n.outputs:
                n.tensor_attr.name = n.outputs[0]
                n.tensor_attr.kind = "constant"
                if scope != "training":
                    self.model.tensors.append(n.tensor_attr)
        return n

    def attribute(self, start: int, end: int, depth: int, n: Node, scope: str) -> None:
        name = ""
        value: Any = None
        ints: list[int] = []
        for f in self.s.fields(start, end, depth, "AttributeProto"):
            num, wire = f.number, f.wire
            if num == 1 and wire == pb.LEN:
                name = self.s.text(f, "attribute.name")
            elif num == 3 and wire == pb.VARINT:
                value = pb.to_signed64(f.value)
            elif num == 2 and wire == pb.I32:
                value = self.s.f32(f)
            elif num == 4 and wire == pb.LEN:
                value = self.s.text(f, "attribute.s", limit=4096)
            elif num == 8:
                if wire == pb.VARINT and len(ints) < 4096:
                    ints.append(pb.to_signed64(f.value))
                elif wire == pb.LEN:
                    ints.extend(
                        pb.to_signed64(v) for v in self.s.packed_varints(f.value, f.length, "ints", 4096)
                    )
            elif num == 5 and wire == pb.LEN:
                n.tensor_attr = self.tensor(f.value, f.end, depth + 1, f.tag_offset)
            elif num in (6, 11) and wire == pb.LEN:
                self.graph(
                    f.value,
                    f.end,
                    depth + 1,
                    scope if scope != "main" else "subgraph",
                    (*n.branch, (n.offset, f.tag_offset)),
                )
            elif num == 10 and wire == pb.LEN:
                self.tensor(f.value, f.end, depth + 1, f.tag_offset)
            elif num in (22, 23) and wire == pb.LEN:
                self.sparse_tensor(f.value, f.end, depth + 1, f.tag_offset)
        if name:
            n.attrs[name] = ints if value is None and ints else value

    def tensor(self, start: int, end: int, depth: int, tag_offset: int) -> Tensor:
        t = Tensor(offset=tag_offset)
        s = self.s
        for f in s.fields(start, end, depth, "TensorProto"):
            num, wire = f.number, f.wire
            if num == 1:
                if wire == pb.VARINT:
                    v = f.value
                    t.dims.append(v if v < _I64_SIGN else pb.to_signed64(v))
                elif wire == pb.LEN:
                    t.dims.extend(
                        v if v < _I64_SIGN else pb.to_signed64(v)
                        for v in s.packed_varints(f.value, f.length, "dims", 4096)
                    )
            elif num == 2 and wire == pb.VARINT:
                t.data_type = pb.to_signed64(f.value)
            elif num == 8 and wire == pb.LEN:
                t.name = s.text(f, "tensor.name")
            elif num == 9 and wire == pb.LEN:
                t.raw = (f.value, f.length)
            elif num == 13 and wire == pb.LEN:
                key, value = self.string_entry(f.value, f.end, depth + 1, "external_data")
                t.external[key] = value
            elif num == 14 and wire == pb.VARINT:
                t.data_location = pb.to_signed64(f.value)
            elif num == 4:  # float_data
                if wire == pb.LEN:
                    t.float_data = (f.value, f.length)
                    self._count(t, "float_data", f.length // 4)
                elif wire == pb.I32:
                    self._count(t, "float_data", 1)
            elif num == 10:  # double_data
                self._count(t, "double_data", f.length // 8 if wire == pb.LEN else 1)
            elif num in (5, 7, 11):  # int32_data, int64_data, uint64_data: varints
                key = {5: "int32_data", 7: "int64_data", 11: "uint64_data"}[num]
                self._count(t, key, s.count_varints(f.value, f.length) if wire == pb.LEN else 1)
            elif num == 6 and wire == pb.LEN:
                self._count(t, "string_data", 1)
        if t.is_external:
            self.model.external.append(t)
        return t

    @staticmethod
    def _count(t: Tensor, key: str, n: int) -> None:
        t.typed_counts[key] = t.typed_counts.get(key, 0) + n

    def sparse_tensor(self, start: int, end: int, depth: int, tag_offset: int) -> Tensor:
        values: Tensor | None = None
        dims: list[int] = []
        for f in self.s.fields(start, end, depth, "SparseTensorProto"):
            if f.number == 1 and f.wire == pb.LEN:
                values = self.tensor(f.value, f.end, depth + 1, f.tag_offset)
            elif f.number == 2 and f.wire == pb.LEN:
                self.tensor(f.value, f.end, depth + 1, f.tag_offset)
            elif f.number == 3:
                if f.wire == pb.VARINT:
                    dims.append(pb.to_signed64(f.value))
                elif f.wire == pb.LEN:
                    dims.extend(
                        pb.to_signed64(v) for v in self.s.packed_varints(f.value, f.length, "dims", 4096)
                    )
        # the logical tensor: the values' name and dtype with the dense dims; the stored values are
        # checked as their own tensor
        t = Tensor(
            name=values.name if values else "",
            dims=dims,
            data_type=values.data_type if values else 0,
            offset=tag_offset,
            raw=values.raw if values else None,  # bytes stored: the values only
            kind="sparse",
        )
        return t

    def value_info(self, start: int, end: int, depth: int) -> tuple[str, list[int | None] | None]:
        name, shape = "", None
        for f in self.s.fields(start, end, depth, "ValueInfoProto"):
            if f.number == 1 and f.wire == pb.LEN:
                name = self.s.text(f, "value_info.name")
            elif f.number == 2 and f.wire == pb.LEN:
                for g in self.s.fields(f.value, f.end, depth + 1, "TypeProto"):
                    if g.number == 1 and g.wire == pb.LEN:
                        shape = self.tensor_type_shape(g.value, g.end, depth + 2)
        return name, shape

    def tensor_type_shape(self, start: int, end: int, depth: int) -> list[int | None] | None:
        shape: list[int | None] | None = None
        for f in self.s.fields(start, end, depth, "TypeProto.Tensor"):
            if f.number == 2 and f.wire == pb.LEN:
                shape = []
                for d in self.s.fields(f.value, f.end, depth + 1, "TensorShapeProto"):
                    if d.number == 1 and d.wire == pb.LEN and len(shape) < 64:
                        value: int | None = None
                        for v in self.s.fields(d.value, d.end, depth + 2, "Dimension"):
                            if v.number == 1 and v.wire == pb.VARINT:
                                value = pb.to_signed64(v.value)
                        shape.append(value)
        return shape
