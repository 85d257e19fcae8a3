"""ONNX reader: a streaming scan of the ModelProto wire format, never a full load.

Initializer payloads (`raw_data`) are skipped by their length and recorded as (offset, length);
external data is checked by `lstat`, never opened. The only bytes read beyond the graph records
are those of small scale tensors (capped), to catch NaN/Inf/zero scales.

Layers (docs/formats.md#onnx-onnx-dtypes): MatMul/Gemm with a constant operand -> linear, Conv -> conv, Gather on a
constant 2-D+ table -> embedding, LSTM/GRU/RNN W and R -> linear, plus the quantized forms (QDQ,
QOperator, integer ops and the `com.microsoft` contrib ops, DynamicQuantizeLSTM among them). A weight
is traced back through DequantizeLinear and shape-only ops (Transpose, Reshape, Cast...) to its stored
tensor (an initializer or a `Constant` node's value), whose stored dtype decides the precision; a trace
through QuantizeLinear/DynamicQuantizeLinear finds a float weight quantized at run time. Model-local
function bodies are inlined at each call.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import struct
from dataclasses import dataclass, replace

from quantgate.core import findings as F
from quantgate.core.findings import Finding
from quantgate.core.gcpause import gc_paused
from quantgate.core.inventory import CONV, EMBEDDING, FLOAT, INT, LINEAR, UNKNOWN, Inventory, Layer
from quantgate.formats.onnx.external import ExternalChecks
from quantgate.formats.onnx.proto import (
    DTYPES,
    INT32_DATA_TYPES,
    MAX_DEPTH,
    NON_WEIGHT_DTYPES,
    PER_INT32,
    QUANT_DTYPES,
    Function,
    Model,
    Node,
    Parser,
    Tensor,
)
from quantgate.formats.onnx.shapes import ShapeInference, countable
from quantgate.formats.wire import protobuf as pb
from quantgate.formats.wire.binary import (
    Budget,
    BudgetExhausted,
    ReadError,
    View,
    file_size,
    mapped,
)

FORMAT = "onnx"

FINDING_CODES: dict[str, str] = {
    "ONNX_EMPTY": "The file has zero bytes (onnx.load returns an empty model for it; it is not a model).",
    "ONNX_NO_GRAPH": "The protobuf has no graph: not an ONNX model, or cut before the graph.",
    "ONNX_TRUNCATED": "A field's tag or value is cut off by the end of its message or of the file.",
    "ONNX_LENGTH_PAST_END": "A length-delimited field declares more bytes than its message holds.",
    "ONNX_BAD_WIRE_TYPE": "A protobuf tag has an invalid wire type or field number 0: corrupt bytes.",
    "ONNX_VARINT_TOO_LONG": "A protobuf varint is longer than 10 bytes: corrupt bytes.",
    "ONNX_DEPTH_EXCEEDED": "Messages (subgraphs) nest deeper than the reader's limit.",
    "ONNX_NO_IR_VERSION": "The model has no ir_version.",
    "ONNX_NO_OPSET_IMPORT": "The model imports no operator set (the checker rejects it; often a cut file).",
    "ONNX_NEGATIVE_DIM": "A tensor declares a negative dimension.",
    "ONNX_UNKNOWN_DTYPE": "A tensor's data_type is not a TensorProto.DataType this version knows.",
    "ONNX_TENSOR_SIZE_MISMATCH": "A tensor's raw_data or typed data does not hold dims x dtype size.",
    "ONNX_TENSOR_TOO_LARGE": "A tensor's dims multiply to more elements than int64 can count; no file holds it.",
    "ONNX_DUPLICATE_INITIALIZER": "Two initializers share one name.",
    "ONNX_EXTERNAL_NO_LOCATION": "A tensor stored as external data has no `location` key.",
    "ONNX_EXTERNAL_PATH_ABSOLUTE": "An external data `location` is an absolute path.",
    "ONNX_EXTERNAL_PATH_TRAVERSAL": "An external data `location` has a `..` part (even if it stays inside).",
    "ONNX_EXTERNAL_PATH_ESCAPES": "An external data `location` resolves outside the model's folder.",
    "ONNX_EXTERNAL_PATH_INVALID": "An external data `location` is not a usable relative path (NUL, empty).",
    "ONNX_EXTERNAL_SYMLINK": "An external data file, or a folder on its path, is a symbolic link.",
    "ONNX_EXTERNAL_HARDLINK": "An external data file has more than one hard link (may alias another file).",
    "ONNX_EXTERNAL_MISSING": "An external data file does not exist.",
    "ONNX_EXTERNAL_NOT_A_FILE": "An external data `location` names something that is not a regular file.",
    "ONNX_EXTERNAL_BAD_RANGE": "An external data `offset` or `length` is negative or not a number.",
    "ONNX_EXTERNAL_PAST_EOF": "An external data range (offset + length) runs past the end of its file.",
    "ONNX_EXTERNAL_LENGTH_MISMATCH": "An external data `length` differs from the tensor's byte size.",
    "ONNX_EXTERNAL_OVERLAP": "Two tensors' external data ranges overlap in the same file.",
    "ONNX_MATMULNBITS_BAD_ATTR": "A MatMulNBits node lacks K/N/bits/block_size or has values the op forbids.",
    "ONNX_MATMULNBITS_SHAPE_MISMATCH": "MatMulNBits K/N/bits/block_size disagree with the B, scales or "
    "zero-point shapes.",
    "ONNX_GATHERBLOCKQUANTIZED_SHAPE_MISMATCH": "GatherBlockQuantized scales do not match the data shape "
    "for its quantize_axis and block_size.",
    "ONNX_DQ_SCALE_SHAPE_MISMATCH": "A DequantizeLinear scale shape does not match the weight for its axis "
    "and block_size.",
    "ONNX_DQ_ZERO_POINT_SHAPE_MISMATCH": "A DequantizeLinear zero point's shape differs from its scale's.",
    "ONNX_DQ_ZERO_POINT_DTYPE_MISMATCH": "A DequantizeLinear zero point's dtype differs from the quantized "
    "input's dtype.",
    "ONNX_SCALE_NOT_FINITE": "A quantization scale holds NaN or Inf (the checker and ORT accept it; "
    "outputs are garbage).",
    "ONNX_SCALE_ZERO": "A quantization scale holds zero (quantizing divides by it; weights vanish).",
    "ONNX_NODE_UNREADABLE": "A weight-bearing node's inputs or attributes could not be interpreted; it is "
    "not counted.",
    "ONNX_FINDINGS_CAPPED": "More findings of one code than are worth listing; the rest were only counted (info).",
    "ONNX_WEIGHTS_QUANTIZED_AT_RUN_TIME": "Weights are stored float and quantized at run time by a "
    "QuantizeLinear/DynamicQuantizeLinear (the quantizer left `Constant`-node weights in place, or a "
    "fake-quantized export): the file is no smaller than the float model; the message says whether they are "
    "`Constant` nodes and how to fix it (warning).",
    "ONNX_FUNCTION_INLINE_CAPPED": "Model-local function calls expand (nested or recursive calls) past the "
    "reader's limit; layers past it are not counted (warning).",
}

DEFAULT_DOMAINS = ("", "ai.onnx")
MS = "com.microsoft"
_DQ_DOMAINS = (*DEFAULT_DOMAINS, MS)  # where DequantizeLinear is read
DQ_OPS = {"DequantizeLinear"}
Q_OPS = {"QuantizeLinear"}
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
MAX_INLINE_DEPTH = 8  # functions calling functions; the standard forbids recursion, a hostile file may not
MAX_INLINED_NODES = 200_000  # body nodes copied for all calls together
MAX_INLINED_CHARS = 1 << 25  # and the characters of their renamed values (names can be 64 KiB each)
# ops that only move or reinterpret a constant: a weight is traced through them
PASS_THROUGH = {"Transpose", "Reshape", "Cast", "CastLike", "Identity", "Squeeze", "Unsqueeze", "Flatten"}
# ops whose output has its input's shape: used to find an activation's shape for flops
SAME_SHAPE = {
    "QuantizeLinear",
    "DequantizeLinear",
    "Cast",
    "Relu",
    "Identity",
    "DynamicQuantizeLinear",
    "Gelu",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "Erf",
}

MAX_FIELDS = 10_000_000
SCALE_READ_CAP = 1 << 20  # bytes of scale values read per tensor
SCALE_READ_TOTAL = 32 << 20  # and in all
FINDINGS_PER_CODE = F.FINDINGS_PER_CODE


class _Findings(F.CappedFindings):
    """Findings with the shared per-code cap (ONNX_FINDINGS_CAPPED counts the rest)."""

    def __init__(self) -> None:
        super().__init__([], "ONNX_FINDINGS_CAPPED")
        self.items = self.out

    def finish(self) -> list[Finding]:
        return self.close()


_ERROR_CODES = {
    pb.Truncated: "ONNX_TRUNCATED",
    pb.LengthPastEnd: "ONNX_LENGTH_PAST_END",
    pb.BadWireType: "ONNX_BAD_WIRE_TYPE",
    pb.VarintTooLong: "ONNX_VARINT_TOO_LONG",
    pb.DepthExceeded: "ONNX_DEPTH_EXCEEDED",
    BudgetExhausted: "READ_BUDGET_EXHAUSTED",
}


def _dims_text(dims: list[int], shown: int = 8) -> str:
    """dims for a message: a hostile tensor can declare tens of thousands of them."""
    if len(dims) <= shown:
        return str(dims)
    return f"[{', '.join(map(str, dims[:shown]))}, ... {len(dims) - shown:,} more]"


def _read_error_finding(exc: ReadError, size: int) -> Finding:
    code = _ERROR_CODES.get(type(exc), "ONNX_TRUNCATED")
    hint = {
        "ONNX_TRUNCATED": "the file is cut short or corrupt; re-export or re-download it",
        "ONNX_LENGTH_PAST_END": "the file is truncated or corrupt; re-export or re-download it",
        "ONNX_DEPTH_EXCEEDED": "nested subgraphs this deep are not plausible; the file is corrupt or hostile",
        "READ_BUDGET_EXHAUSTED": "a file this size cannot hold that many records; it is corrupt or hostile",
    }.get(code, "the bytes are corrupt; re-export the model")
    where = f" in {exc.field}" if exc.field else ""
    return F.error(
        code, f"{exc.message}{where} (file is {size} bytes): {hint}", offset=exc.offset, field=exc.field
    )


# ------------------------------------------------------------------------------------------------
# the reader


def read(path: str) -> Inventory:
    """Scan an ONNX model; never raises on bad input."""
    try:
        size = file_size(path)
    except OSError as exc:
        inv = Inventory(FORMAT, path, 0)
        inv.structural_findings.append(
            F.error("FILE_UNREADABLE", f"cannot read the file: {exc.strerror or exc}")
        )
        return inv
    inv = Inventory(FORMAT, path, size)
    structural, semantic = _Findings(), _Findings()
    if size == 0:
        structural.add(
            F.error(
                "ONNX_EMPTY",
                "the file has zero bytes (onnx.load would return an empty "
                "model); re-export or re-download it",
            )
        )
        inv.structural_findings = structural.finish()
        return inv
    try:
        with gc_paused(), mapped(path) as view:
            _no_readahead(view)
            model = _scan(view, size, structural)
            if model is not None:
                _Analysis(model, view, path, inv, structural, semantic).run()
    except OSError as exc:
        structural.add(F.error("FILE_UNREADABLE", f"cannot read the file: {exc.strerror or exc}"))
    inv.structural_findings = structural.finish()
    inv.semantic_findings = semantic.finish()
    return inv


def _no_readahead(view: View) -> None:
    """Only headers are touched, far apart: kernel readahead would pull megabytes of weights around each."""
    advise = getattr(view.buf, "madvise", None)
    if advise is not None and hasattr(mmap, "MADV_RANDOM"):
        with contextlib.suppress(OSError):
            advise(mmap.MADV_RANDOM)


def scan(path: str) -> tuple[Model, list[Finding]]:
    """The raw scanned model (nodes, tensors, opsets) and its structural findings; for tests and tools."""
    structural = _Findings()
    with mapped(path) as view:
        model = _scan(view, len(view), structural)
    return model, structural.finish()


def _scan(view: View, size: int, structural: _Findings) -> Model:
    # every field costs one visit and takes at least two bytes; the absolute cap bounds the time a
    # file of millions of tiny fields can take (10M fields is ~1M nodes, far past real graphs)
    budget = Budget(min(10_000 + size, MAX_FIELDS))
    scanner = pb.Scanner(view, budget, max_depth=MAX_DEPTH)
    parser = Parser(scanner)
    try:
        parser.model_proto(size)
    except ReadError as exc:
        structural.add(_read_error_finding(exc, size))
    except RecursionError:
        structural.add(
            F.error("ONNX_DEPTH_EXCEEDED", "messages nest too deeply to read; the file is corrupt or hostile")
        )
    model = parser.model
    if any(f.severity == F.ERROR for f in structural.items):
        return model  # the scan stopped early: a missing graph or opset would only echo that
    if not model.has_graph:
        structural.add(
            F.error(
                "ONNX_NO_GRAPH",
                "the protobuf has no graph: it is not an ONNX model, or it "
                "was cut before the graph; re-export it",
                field="graph",
            )
        )
        return model
    if model.ir_version is None:
        structural.add(
            F.error("ONNX_NO_IR_VERSION", "the model has no ir_version; re-export it", field="ir_version")
        )
    if model.opset_count == 0:
        structural.add(
            F.error(
                "ONNX_NO_OPSET_IMPORT",
                "the model imports no operator set (onnx.checker "
                "rejects it; a file cut at a field boundary looks like this); re-export it",
                field="opset_import",
            )
        )
    return model


@dataclass
class _Source:
    """Where a weight operand comes from: a stored tensor, maybe through a DequantizeLinear."""

    tensor: Tensor
    dq: Node | None = None
    runtime_q: Node | None = None  # a QuantizeLinear/DynamicQuantizeLinear quantizing it at run time


@dataclass
class WeightUse:
    """One weight operand of a layer as the structure reader traced it, for the fidelity reader
    (`quantgate.dequant.onnx`), so that both read the same tensors by the same rules."""

    node: Node
    source: _Source
    operand: str = ""  # a recurrent op's W or R
    # the op's own scale and zero point of an integer weight (QLinear*, contrib ops, ORT's `_scale` /
    # `_zero_point` companions of MatMulInteger/ConvInteger/Gather); "" where there is none
    qparams: tuple[str, str] = ("", "")


@dataclass
class WeightTrace:
    """What `trace_weights` found: the constants (initializers, `Constant` nodes, those of inlined
    function bodies), the producer of each value, and every weight operand in graph order."""

    consts: dict[str, Tensor]
    producer: dict[str, Node]
    consumers: dict[str, list[Node]]
    uses: list[WeightUse]


def trace_weights(path: str) -> WeightTrace | None:
    """The weight operands of every layer, as `read` counts them; None when the scan found a
    structural error. Tensors keep their file offsets: read their bytes with a map of `path`."""
    size = file_size(path)
    structural, semantic = _Findings(), _Findings()
    with gc_paused(), mapped(path) as view:
        model = _scan(view, size, structural)
        if model is None or any(f.severity == F.ERROR for f in structural.items):
            return None
        analysis = _Analysis(model, view, path, Inventory(FORMAT, path, size), structural, semantic)
        analysis.index()
        analysis.find_layers()
    return WeightTrace(analysis.consts, analysis.producer, analysis.consumers, analysis.uses)


class _Analysis:
    """Tensor checks, external data, layers and quantization consistency over a scanned model."""

    def __init__(
        self, model: Model, view: View, path: str, inv: Inventory, structural: _Findings, semantic: _Findings
    ):
        self.m = model
        self.view = view
        self.path = path
        self.inv = inv
        self.structural = structural
        self.semantic = semantic
        self.consts: dict[str, Tensor] = {}
        self.nodes: list[Node] = model.nodes  # with function bodies inlined at their calls (index())
        self.producer: dict[str, Node] = {}
        self.consumers: dict[str, list[Node]] = {}
        self.checked_scales: set[str] = set()
        self.shapes: dict[str, list[int]] = {}
        self.scale_bytes_left = SCALE_READ_TOTAL  # all scale values read, across tensors
        self.uses: list[WeightUse] = []  # each layer's weight operand (trace_weights)
        # (weight, operand, op) -> the layers made so far, to fold one op repeated in alternative If branches
        self.layers_by_weight: dict[tuple[str, str, str], list[tuple[Node, Layer]]] = {}
        self.op_at: dict[int, str] | None = None  # node offset -> op_type, built on the first If branch seen

    def run(self) -> None:
        self.index()
        self.check_tensors()
        external = ExternalChecks(self.m.external, self.path, self.structural.add)
        external.run()
        self.inv.facts.update(external.facts)
        self.find_layers()
        self.check_quantization()
        self.describe()

    # -- indexes and tensor checks --------------------------------------------------------------

    def index(self) -> None:
        seen: set[str] = set()
        for t in self.m.tensors:
            if t.kind == "initializer" and t.name in seen:
                self.structural.add(
                    F.warning(
                        "ONNX_DUPLICATE_INITIALIZER",
                        f"initializer {t.name!r} is defined twice; the first is used",
                        offset=t.offset,
                        tensor=t.name,
                    )
                )
            seen.add(t.name)
            self.consts.setdefault(t.name, t)
        if self.m.functions:
            self.nodes = self.inline_functions()
        producer, consumers = self.producer, self.consumers
        for n in self.nodes:
            for out in n.outputs:
                if out and out not in producer:  # the first producer is kept
                    producer[out] = n
            for inp in n.inputs:
                if inp:
                    users = consumers.get(inp)
                    if users is None:
                        consumers[inp] = [n]
                    else:
                        users.append(n)

    def inline_functions(self) -> list[Node]:
        """The graph's nodes with each call of a model-local function followed by a renamed copy of its
        body: formal inputs/outputs become the call's values, every other name `<call>/<name>`, and
        each copy's Constant values are that call's own constants. Bounded in depth and total size."""
        out: list[Node] = []
        budget = [MAX_INLINED_NODES, MAX_INLINED_CHARS]
        capped: list[str] = []

        def expand(call: Node, fn: Function, rename: dict[str, str], prefix: str, depth: int) -> None:
            label = prefix + call.label + "/"

            def outer(name: str) -> str:
                return rename.get(name, prefix + name if name and prefix else name)

            inner = {formal: outer(actual) for formal, actual in zip(fn.inputs, call.inputs, strict=False)}
            inner.update({formal: outer(actual) for formal, actual in zip(fn.outputs, call.outputs, strict=False)})

            def local(name: str) -> str:
                return inner.get(name, label + name if name else name)

            for body in fn.nodes:
                if budget[0] <= 0 or budget[1] <= 0 or depth >= MAX_INLINE_DEPTH:
                    if not capped:
                        capped.append(call.label[:200])
                    return
                copy = Node(
                    op_type=body.op_type,
                    domain=body.domain,
                    name=label + body.label,
                    inputs=[local(x) for x in body.inputs],
                    outputs=[local(x) for x in body.outputs],
                    attrs=body.attrs,
                    offset=body.offset,
                    scope=call.scope,
                    branch=call.branch,
                )
                budget[0] -= 1
                budget[1] -= len(copy.name) + sum(map(len, copy.inputs)) + sum(map(len, copy.outputs))
                out.append(copy)
                if body.op_type == "Constant" and body.tensor_attr is not None and copy.outputs:
                    self.consts.setdefault(copy.outputs[0], replace(body.tensor_attr, name=copy.outputs[0]))
                nested = self.m.functions.get((body.domain, body.op_type))
                if nested is not None:
                    expand(body, nested, inner, label, depth + 1)

        for node in self.m.nodes:
            out.append(node)
            fn = self.m.functions.get((node.domain, node.op_type))
            if fn is not None and node.scope != "training":
                expand(node, fn, {}, "", 0)
        if capped:
            self.structural.add(
                F.warning(
                    "ONNX_FUNCTION_INLINE_CAPPED",
                    f"model-local function calls expand past {MAX_INLINED_NODES:,} nodes, "
                    f"{MAX_INLINED_CHARS:,} characters of names or {MAX_INLINE_DEPTH} levels (first at "
                    f"call {capped[0]!r}); layers past the limit "
                    "are not counted. Real models nest functions a few levels deep; this file is "
                    "corrupt or hostile",
                    op=capped[0],
                )
            )
        return out

    def check_tensors(self) -> None:
        total = 0
        for t in self.m.tensors:
            if any(d < 0 for d in t.dims):
                self.structural.add(
                    F.error(
                        "ONNX_NEGATIVE_DIM",
                        f"tensor {t.name!r} has dims {_dims_text(t.dims)}; re-export the model",
                        offset=t.offset,
                        tensor=t.name,
                    )
                )
                continue
            if t.numel is None:
                self.structural.add(
                    F.error(
                        "ONNX_TENSOR_TOO_LARGE",
                        f"tensor {t.name!r} has {len(t.dims):,} dims {_dims_text(t.dims)} whose product exceeds "
                        "int64: the dims are corrupt or hostile; re-export the model",
                        offset=t.offset,
                        tensor=t.name,
                    )
                )
                continue
            if t.data_type not in DTYPES:
                self.structural.add(
                    F.warning(
                        "ONNX_UNKNOWN_DTYPE",
                        f"tensor {t.name!r} has data_type "
                        f"{t.data_type}, unknown to this version; its precision is "
                        "reported as unknown",
                        offset=t.offset,
                        tensor=t.name,
                    )
                )
            total += t.numel or 0
            if t.kind != "sparse":
                self.check_size(t)
        self.inv.params_stored = total

    def check_size(self, t: Tensor) -> None:
        n = t.numel
        if n is None or t.data_type not in DTYPES or t.is_external:
            return
        if t.raw is not None:
            expected = t.expected_bytes()
            if expected is not None and t.raw[1] != expected:
                self.structural.add(
                    F.error(
                        "ONNX_TENSOR_SIZE_MISMATCH",
                        f"tensor {t.name!r} ({t.dtype_name} {_dims_text(t.dims)}) needs {expected} bytes of raw_data "
                        f"but holds {t.raw[1]}; the file is corrupt or was edited, re-export it",
                        offset=t.raw[0],
                        tensor=t.name,
                        field="raw_data",
                    )
                )
            return
        if not t.typed_counts:
            return
        dt = t.data_type
        expected_by_field = {
            1: ("float_data", n),
            7: ("int64_data", n),
            11: ("double_data", n),
            13: ("uint64_data", n),
            12: ("uint64_data", n),
            8: ("string_data", n),
            14: ("float_data", 2 * n),
            15: ("double_data", 2 * n),
        }
        if dt in expected_by_field:
            key, want = expected_by_field[dt]
        elif dt in INT32_DATA_TYPES:
            key, want = "int32_data", -(-n // PER_INT32.get(dt, 1))
        else:
            return
        got = t.typed_counts.get(key, 0)
        if got != want:
            self.structural.add(
                F.error(
                    "ONNX_TENSOR_SIZE_MISMATCH",
                    f"tensor {t.name!r} ({t.dtype_name} {_dims_text(t.dims)}) needs {want} {key} entries "
                    f"but holds {got}; re-export the model",
                    offset=t.offset,
                    tensor=t.name,
                    field=key,
                )
            )

    # -- layers ---------------------------------------------------------------------------------

    def trace(self, name: str, depth: int = 0) -> _Source | None:
        """The stored constant a value comes from, through DequantizeLinear and shape-only ops."""
        if not name or depth > 8:
            return None
        t = self.consts.get(name)
        if t is not None:
            return _Source(t)
        node = self.producer.get(name)
        if node is None or not node.inputs:
            return None
        if node.op_type in DQ_OPS and node.domain in _DQ_DOMAINS:
            src = self.trace(node.inputs[0], depth + 1)
            if src is not None and src.dq is None:
                src.dq = node
            return src
        if node.op_type in PASS_THROUGH and node.domain in DEFAULT_DOMAINS:
            return self.trace(node.inputs[0], depth + 1)
        # a weight the quantizer did not see as one (a `Constant` node's value): quantized each run
        if (node.op_type in Q_OPS and node.domain in _DQ_DOMAINS) or (
            node.op_type == "DynamicQuantizeLinear" and node.domain in DEFAULT_DOMAINS and node.outputs[0] == name
        ):
            src = self.trace(node.inputs[0], depth + 1)
            if src is not None and src.runtime_q is None:
                src.runtime_q = node
            return src
        if node.op_type == "Concat" and node.domain in DEFAULT_DOMAINS:
            return self.trace_reassembled(node, depth)
        return None

    def trace_reassembled(self, concat: Node, depth: int) -> _Source | None:
        """Concat of Slices of one tensor: the torch exporter's gate reorder of an LSTM/GRU weight
        (i,f,g,o -> i,o,f,c) when constant folding does not reach it (inside If branches)."""
        if len(concat.inputs) > 16:
            return None
        data = None
        for name in concat.inputs:
            part = self.producer.get(name)
            if part is None or part.op_type != "Slice" or part.domain not in DEFAULT_DOMAINS or not part.inputs:
                return None
            if data is None:
                data = part.inputs[0]
            elif part.inputs[0] != data:
                return None
        return self.trace(data, depth + 1) if data else None

    def weight_source(self, node: Node, index: int, min_rank: int = 2) -> _Source | None:
        src = self.trace(node.input(index))
        if src is None or len(src.tensor.dims) < min_rank:
            return None
        return src

    def find_layers(self) -> None:
        self.shapes = ShapeInference(self.view, self.consts, self.m.shapes).run(self.nodes)
        for position, node in enumerate(self.nodes):
            if node.scope == "training":
                continue
            try:
                self.layer_for(node, position)
            except (ReadError, ValueError, OverflowError) as exc:  # a malformed node never stops the scan
                self.semantic.add(
                    F.warning(
                        "ONNX_NODE_UNREADABLE",
                        f"node {node.label!r} ({node.op_type}) could not be read as a layer: {exc}",
                        op=node.label,
                    )
                )
        self.fix_positions()
        self.report_runtime_quantized()
        # packed weights (MatMulNBits B, bnb4, uint8-packed GatherBlockQuantized) count their logical
        # elements in params_stored, not their storage bytes
        adjusted: set[str] = set()
        for layer in self.inv.layers:
            stored = self.consts.get(layer.name)
            if (
                layer.detail.get("representation") in _PACKED
                and stored is not None
                and stored.numel is not None
                and layer.name not in adjusted
            ):
                adjusted.add(layer.name)
                self.inv.params_stored = (self.inv.params_stored or 0) + layer.params - stored.numel

    def layer_for(self, node: Node, position: int) -> None:
        spec = _WEIGHT_OPS.get((node.op_type, node.domain))
        if spec is None:  # most nodes of a quantized graph (Q/DQ, activations)
            return
        if isinstance(spec, str):  # an op with a reader of its own (packed weights, tables)
            getattr(self, spec)(node, position)
            return
        for index, qparams, operand in spec.weights:
            src = self.weight_source(node, index, spec.min_rank)
            if src is None:
                continue
            representation = spec.representation or ("QDQ" if src.dq else "float")
            self.add(node, position, spec.kind, src, representation, [node.input(i) for i in qparams], operand)
            if not operand:
                break  # the first candidate that is a weight; a recurrent op has two (W and R)

    def add_gather(self, node: Node, position: int) -> None:
        src = self.weight_source(node, 0)
        if src and src.tensor.data_type not in NON_WEIGHT_DTYPES:
            extra = self.gather_dq_extras(node) if src.dq is None else []
            quantized_table = src.tensor.data_type in QUANT_DTYPES
            representation = "QDQ" if src.dq else ("integer" if quantized_table else "float")
            self.add(node, position, EMBEDDING, src, representation, extra)

    def gather_dq_extras(self, node: Node) -> list[str]:
        """Scale and zero point of a quantized table: the DequantizeLinear after the Gather, or ORT's
        `<name>_scale` / `<name>_zero_point` naming for an integer table read by a QOperator graph."""
        table = self.consts.get(node.input(0))
        if table is None or table.data_type not in QUANT_DTYPES:
            return []
        for out in node.outputs:
            for consumer in self.consumers.get(out, []):
                if consumer.op_type in DQ_OPS:
                    return [consumer.input(1), consumer.input(2)]
        return self.named_companions(table.name)

    def qparams(self, node: Node, t: Tensor, representation: str, extra: list[str]) -> tuple[str, str]:
        """The scale and zero point an op applies to its integer weight, by the same inputs `add`
        counts: the op's own (QOperator / contrib), or ORT's `<name>_scale` / `<name>_zero_point`."""
        if representation in ("QOperator", "contrib"):
            return (extra[0] if extra else "", extra[1] if len(extra) > 1 else "")
        if representation != "integer":
            return ("", "")
        base = t.name[: -len("_quantized")] if t.name.endswith("_quantized") else t.name
        if node.op_type == "Gather":
            for out in node.outputs:
                for consumer in self.consumers.get(out, []):
                    if consumer.op_type in DQ_OPS:
                        return (consumer.input(1), consumer.input(2))
            return (base + "_scale", base + "_zero_point")
        return (base + "_scale", (extra[0] if extra else "") or base + "_zero_point")

    def named_companions(self, name: str) -> list[str]:
        base = name[: -len("_quantized")] if name.endswith("_quantized") else name
        return [c for c in (base + "_scale", base + "_zero_point") if c in self.consts]

    def tensor_bytes(self, names: list[str]) -> tuple[int, list[str]]:
        total, used = 0, []
        for name in names:
            t = self.consts.get(name) if name else None
            if t is not None and t.name not in used:
                total += t.stored_bytes() or 0
                used.append(t.name)
        return total, used

    def add(
        self,
        node: Node,
        position: int,
        kind: str,
        src: _Source,
        representation: str,
        extra: list[str] | None = None,
        operand: str = "",
    ) -> None:
        """One layer; `operand` names a recurrent op's weight (W or R), whose positions come from X."""
        t = src.tensor
        if t.numel is None and min(t.dims) >= 0:
            return  # too large to count: ONNX_TENSOR_TOO_LARGE says so; its shape would be all dims
        key = (t.name, operand, _qualified(node))
        if node.branch and t.name:
            for other, twin in self.layers_by_weight.get(key, ()):
                if self.alternatives(node, other):
                    # only one branch of an If runs: the same weight in the same op there is one layer
                    twin.detail["if_branches"] = twin.detail.get("if_branches", 1) + 1
                    return
        companions = list(extra or [])
        if src.dq is not None:
            companions += [src.dq.input(1), src.dq.input(2)]
        runtime = src.runtime_q is not None and t.data_type not in QUANT_DTYPES
        if runtime and src.runtime_q is not None and src.runtime_q.op_type in Q_OPS:
            companions += [src.runtime_q.input(1), src.runtime_q.input(2)]
        if representation == "integer" and not any(c.endswith("_scale") for c in companions if c):
            companions += self.named_companions(t.name)
        comp_bytes, comp_names = self.tensor_bytes([c for c in companions if c and c != t.name])
        stored = t.stored_bytes()
        bits, numeric, quantized = _precision(t.data_type)
        layer = Layer(
            name=t.name or node.label,
            kind=kind,
            shape=tuple(t.dims),
            dtype=t.dtype_name,
            bits=bits,
            numeric=numeric,
            quantized=quantized,
            params=t.numel or 0,
            weight_bytes=None if stored is None else stored + comp_bytes,
            position=position,
            compute=_compute(kind, representation, t.dtype_name),
            detail={
                "op": _qualified(node),
                "node": node.label,
                "representation": representation,
                **({"quant_params": comp_names} if comp_names else {}),
                **({"quantized_at_run_time": _qualified(src.runtime_q)} if runtime and src.runtime_q else {}),
            },
        )
        self.uses.append(WeightUse(node, src, operand, self.qparams(node, t, representation, extra or [])))
        if operand:
            layer.detail["operand"] = operand
            self.set_recurrent_positions(layer, node)
        else:
            self.set_positions(layer, node)
        self.inv.layers.append(layer)
        if node.branch and t.name:
            self.layers_by_weight.setdefault(key, []).append((node, layer))

    def alternatives(self, a: Node, b: Node) -> bool:
        """True when a and b sit in different branches of one If node, so at most one of them runs."""
        for step_a, step_b in zip(a.branch, b.branch, strict=False):
            if step_a == step_b:
                continue
            if step_a[0] != step_b[0]:
                return False  # different subgraph owners: both may run
            if self.op_at is None:
                self.op_at = {n.offset: n.op_type for n in self.m.nodes}
            return self.op_at.get(step_a[0]) == "If"
        return False

    def add_matmulnbits(self, node: Node, position: int) -> None:
        b = self.consts.get(node.input(1))
        k, n, bits = node.attr_int("K"), node.attr_int("N"), node.attr_int("bits", 4)
        if b is None:
            return
        params = k * n if k and n and k > 0 and n > 0 else (b.numel or 0) * 8 // max(1, bits or 4)
        shape = (k, n) if k and n else tuple(b.dims)
        comp_bytes, comp_names = self.tensor_bytes([node.input(2), node.input(3), node.input(4)])
        stored = b.stored_bytes()
        quantized = bits is not None and 1 <= bits <= 8
        layer = Layer(
            name=b.name,
            kind=LINEAR,
            shape=tuple(shape),
            dtype=f"{b.dtype_name}(packed {bits}-bit)",
            bits=bits,
            numeric=INT,
            quantized=quantized,
            params=params,
            weight_bytes=None if stored is None else stored + comp_bytes,
            position=position,
            compute=_ACCURACY_LEVEL_COMPUTE.get(node.attr_int("accuracy_level", 0) or 0),
            detail={
                "op": _qualified(node),
                "node": node.label,
                "representation": "MatMulNBits",
                "block_size": node.attrs.get("block_size"),
                "quant_params": comp_names,
            },
        )
        self.set_positions(layer, node)
        self.uses.append(WeightUse(node, _Source(b)))
        self.inv.layers.append(layer)

    def add_bnb4(self, node: Node, position: int) -> None:
        b = self.consts.get(node.input(1))
        k, n = node.attr_int("K"), node.attr_int("N")
        if b is None:
            return
        params = k * n if k and n and k > 0 and n > 0 else (b.numel or 0) * 2
        comp_bytes, comp_names = self.tensor_bytes([node.input(2)])
        stored = b.stored_bytes()
        quant_type = {0: "FP4", 1: "NF4"}.get(node.attr_int("quant_type", 1) or 0, "4-bit")
        layer = Layer(
            name=b.name,
            kind=LINEAR,
            shape=(k, n) if k and n else tuple(b.dims),
            dtype=f"{quant_type}(packed)",
            bits=4,
            numeric=FLOAT,
            quantized=True,
            params=params,
            weight_bytes=None if stored is None else stored + comp_bytes,
            position=position,
            detail={
                "op": _qualified(node),
                "node": node.label,
                "representation": "MatMulBnb4",
                "quant_params": comp_names,
            },
        )
        self.set_positions(layer, node)
        self.uses.append(WeightUse(node, _Source(b)))
        self.inv.layers.append(layer)

    def add_gather_block_quantized(self, node: Node, position: int) -> None:
        data = self.consts.get(node.input(0))
        if data is None or len(data.dims) < 2 or data.numel is None:
            return
        bits = node.attr_int("bits", 4) or 4
        dims = list(data.dims)
        if data.data_type == 2 and bits < 8:  # uint8 holding packed sub-byte values
            dims[-1] = dims[-1] * 8 // bits
        params = math.prod(dims)
        comp_bytes, comp_names = self.tensor_bytes([node.input(2), node.input(3)])
        stored = data.stored_bytes()
        elem_bits = data.bits if data.data_type != 2 else bits
        layer = Layer(
            name=data.name,
            kind=EMBEDDING,
            shape=tuple(dims),
            dtype=data.dtype_name,
            bits=elem_bits,
            numeric=INT,
            quantized=elem_bits is not None and elem_bits <= 8,
            params=params,
            weight_bytes=None if stored is None else stored + comp_bytes,
            position=position,
            detail={
                "op": _qualified(node),
                "node": node.label,
                "representation": "GatherBlockQuantized",
                "block_size": node.attrs.get("block_size"),
                "quant_params": comp_names,
            },
        )
        self.uses.append(WeightUse(node, _Source(data)))
        self.inv.layers.append(layer)

    # -- flops: output positions from the shapes the file records -------------------------------

    def known_shape(self, name: str) -> list[int] | None:
        """The static shape of a value: inferred forward from the file's static shapes, else that of a
        neighbour with the same shape (through Q/DQ, Cast, activations; a bounded breadth-first
        walk, for subgraphs the forward pass does not enter)."""
        if name in self.shapes:
            return self.shapes[name]
        queue, seen = [name], {name}
        while queue and len(seen) <= 64:
            current = queue.pop(0)
            shape = self.m.shapes.get(current)
            if shape is not None and countable(shape):
                return [int(d) for d in shape if d is not None]
            neighbours = []
            node = self.producer.get(current)
            if node is not None and node.op_type in SAME_SHAPE and node.inputs:
                neighbours.append(node.inputs[0])
            for consumer in self.consumers.get(current, [])[:16]:
                if consumer.op_type in SAME_SHAPE and consumer.outputs and consumer.input(0) == current:
                    neighbours.append(consumer.outputs[0])
            for other in neighbours:
                if other and other not in seen:
                    seen.add(other)
                    queue.append(other)
        return None

    def set_positions(self, layer: Layer, node: Node) -> None:
        out = self.known_shape(node.outputs[0]) if node.outputs else None
        if layer.kind == CONV:
            if out is not None and len(out) >= 3:
                layer.out_positions = out[0] * math.prod(out[2:])
        elif layer.kind == LINEAR and out is not None and len(out) >= 1:
            layer.out_positions = math.prod(out[:-1]) if len(out) > 1 else 1

    def set_recurrent_positions(self, layer: Layer, node: Node) -> None:
        """W and R each act once per time step and batch row (per direction: the params hold the
        directions), so the positions are seq x batch, the first two dims of X in either layout."""
        x = self.known_shape(node.input(0))
        if x is not None and len(x) == 3:
            layer.out_positions = x[0] * x[1]

    def report_runtime_quantized(self) -> None:
        """Weights stored float and quantized by a QuantizeLinear each run: honest about storage."""
        runtime = [x for x in self.inv.layers if "quantized_at_run_time" in x.detail]
        if not runtime:
            return
        params = sum(x.params for x in runtime)
        stored = sum(x.weight_bytes or 0 for x in runtime)
        ops = sorted({str(x.detail["quantized_at_run_time"]) for x in runtime})
        constants = sum(1 for x in runtime if (t := self.consts.get(x.name)) is not None and t.kind == "constant")
        if constants:
            why = (
                f"{constants} of them are Constant nodes, which onnxruntime's quantizers leave float: run "
                "`python -m onnxruntime.quantization.preprocess --skip_symbolic_shape True` on the float "
                "model (it turns Constants into initializers) and quantize again"
            )
        else:  # a fake-quantized (QAT-style) export: float initializers behind QuantizeLinear
            why = "store the weights quantized (INT8 initializers behind DequantizeLinear) to shrink the file"
        self.semantic.add(
            F.warning(
                "ONNX_WEIGHTS_QUANTIZED_AT_RUN_TIME",
                f"{len(runtime)} of {len(self.inv.layers)} weight-bearing layers ({params:,} params, first "
                f"{runtime[0].name!r}) are stored float and quantized at run time by {', '.join(ops)}: "
                f"the file holds {stored:,} bytes for them ({8 * stored / max(params, 1):.4g} bits per "
                f"weight), no less than the float model; {why}",
                op=str(runtime[0].detail.get("node")),
                tensor=runtime[0].name,
            )
        )

    def fix_positions(self) -> None:
        """Output positions are used only when every layer has them: a mix of known and unknown
        positions would weigh the layers unevenly, so then all count 1 and flops_exact is false."""
        compute = [x for x in self.inv.layers if x.kind != EMBEDDING]
        if compute and any(x.out_positions is None for x in compute):
            for x in compute:
                if x.out_positions is not None:
                    x.detail["out_positions"] = x.out_positions
                x.out_positions = None

    # -- quantization consistency (semantic) ----------------------------------------------------

    def check_quantization(self) -> None:
        for node in self.nodes:
            op, dom = node.op_type, node.domain
            if op in DQ_OPS and dom in _DQ_DOMAINS:
                self.check_dq(node)
            if op == "MatMulNBits" and dom == MS:
                self.check_matmulnbits(node)
            if op == "GatherBlockQuantized" and dom == MS:
                self.check_gather_block_quantized(node)
            for index in _SCALE_INPUTS.get((op, "ms" if dom == MS else "std"), ()):
                self.check_scale_values(node, node.input(index))

    def check_dq(self, node: Node) -> None:
        x = self.consts.get(node.input(0))
        scale = self.consts.get(node.input(1))
        zp = self.consts.get(node.input(2))
        # the input's dtype: a constant's, or the zero point's of the QuantizeLinear that made it
        x_type, x_name = (x.data_type, x.name) if x is not None else self.quantized_type(node.input(0))
        if x_type is not None and zp is not None and zp.data_type != x_type:
            x_dtype = DTYPES.get(x_type, (f"DTYPE_{x_type}",))[0]
            self.semantic.add(
                F.error(
                    "ONNX_DQ_ZERO_POINT_DTYPE_MISMATCH",
                    f"DequantizeLinear {node.label!r}: zero point {zp.name!r} is {zp.dtype_name} "
                    f"but the input {x_name!r} is {x_dtype}; onnx.checker and onnxruntime "
                    "reject this model",
                    op=node.label,
                    tensor=zp.name,
                )
            )
        if x is None or scale is None:
            return
        rank = len(x.dims)
        block = node.attr_int("block_size", 0) or 0
        axis = node.attr_int("axis", 1)
        axis = axis + rank if axis is not None and axis < 0 else axis
        scale_n = scale.numel
        problem = None
        if block > 0 or (scale_n is not None and scale_n > 1):
            if axis is None or not 0 <= axis < max(rank, 1):
                problem = f"axis {node.attrs.get('axis')} is out of range for a rank-{rank} input"
            elif block > 0:
                want = list(x.dims)
                want[axis] = -(-x.dims[axis] // block)
                if list(scale.dims) != want:
                    problem = (
                        f"block_size {block} along axis {axis} of {x.dims} needs scales {want}, "
                        f"found {scale.dims}"
                    )
            elif len(scale.dims) != 1 or scale.dims[0] != x.dims[axis]:
                problem = (
                    f"per-axis scales along axis {axis} of {x.dims} need [{x.dims[axis]}], found {scale.dims}"
                )
        if problem:
            self.semantic.add(
                F.error(
                    "ONNX_DQ_SCALE_SHAPE_MISMATCH",
                    f"DequantizeLinear {node.label!r} on {x.name!r}: {problem}; onnxruntime "
                    "fails at run time",
                    op=node.label,
                    tensor=scale.name,
                )
            )
        if zp is not None and list(zp.dims) != list(scale.dims) and not (zp.numel == 1 and scale_n == 1):
            self.semantic.add(
                F.error(
                    "ONNX_DQ_ZERO_POINT_SHAPE_MISMATCH",
                    f"DequantizeLinear {node.label!r}: zero point {zp.name!r} has shape "
                    f"{zp.dims} but the scale has {scale.dims}",
                    op=node.label,
                    tensor=zp.name,
                )
            )

    def quantized_type(self, name: str) -> tuple[int | None, str]:
        """The dtype QuantizeLinear gives `name`: that of its constant zero point (or output_dtype)."""
        q = self.producer.get(name)
        if q is None or q.op_type not in Q_OPS:
            return None, name
        zp = self.consts.get(q.input(2))
        if zp is not None:
            return zp.data_type, name
        output_dtype = q.attr_int("output_dtype", 0)
        if output_dtype:
            return output_dtype, name
        # no zero point at all: the output is UINT8; a computed one: unknown
        return (2 if not q.input(2) else None), name

    def check_matmulnbits(self, node: Node) -> None:
        k, n, bits, block = (node.attr_int(a) for a in ("K", "N", "bits", "block_size"))
        bits = 4 if bits is None else bits
        if (
            k is None
            or n is None
            or block is None
            or k <= 0
            or n <= 0
            or not 1 <= bits <= 8
            or block < 16
            or block & (block - 1)
        ):
            self.semantic.add(
                F.error(
                    "ONNX_MATMULNBITS_BAD_ATTR",
                    f"MatMulNBits {node.label!r}: K={k}, N={n}, bits={bits}, block_size={block}; "
                    "K and N must be positive, bits 1-8, block_size a power of two >= 16",
                    op=node.label,
                )
            )
            return
        k_blocks = -(-k // block)
        blob = block * bits // 8
        problems = []
        b = self.consts.get(node.input(1))
        if b is not None and list(b.dims) != [n, k_blocks, blob]:
            problems.append(f"B {b.name!r} is {b.dims}, K/N/bits/block_size need {[n, k_blocks, blob]}")
        scales = self.consts.get(node.input(2))
        if scales is not None and scales.numel != n * k_blocks:
            problems.append(
                f"scales {scales.name!r} has {scales.numel} values, need N x ceil(K/block) = {n * k_blocks}"
            )
        zp = self.consts.get(node.input(3))
        if zp is not None:
            want = n * -(-(k_blocks * bits) // 8) if zp.data_type == 2 else n * k_blocks
            if zp.numel != want:
                problems.append(f"zero points {zp.name!r} hold {zp.numel} values, need {want}")
        if problems:
            self.semantic.add(
                F.error(
                    "ONNX_MATMULNBITS_SHAPE_MISMATCH",
                    f"MatMulNBits {node.label!r}: "
                    + "; ".join(problems)
                    + " (onnx.checker accepts this; onnxruntime fails at session creation)",
                    op=node.label,
                    tensor=b.name if b is not None else None,
                )
            )

    def check_gather_block_quantized(self, node: Node) -> None:
        """scales = the (unpacked) data shape with the quantize axis divided into blocks."""
        data, scales = self.consts.get(node.input(0)), self.consts.get(node.input(2))
        if data is None or scales is None or not data.dims:
            return
        bits = node.attr_int("bits", 4) or 4
        block = node.attr_int("block_size", 128) or 0
        rank = len(data.dims)
        axis = node.attr_int("quantize_axis", rank - 1)
        axis = axis + rank if axis is not None and axis < 0 else axis
        dims = list(data.dims)
        if data.data_type == 2 and 0 < bits < 8:  # uint8 holding 8/bits values along the last axis
            dims[-1] = dims[-1] * (8 // bits)
        if block <= 0 or axis is None or not 0 <= axis < rank:
            problem = f"block_size {block} / quantize_axis {node.attrs.get('quantize_axis')} are invalid"
        else:
            want = list(dims)
            want[axis] = -(-dims[axis] // block)
            problem = (
                ""
                if list(scales.dims) == want
                else (
                    f"data {data.dims} with block_size {block} on axis {axis} needs scales {want}, found "
                    f"{scales.dims}"
                )
            )
        if problem:
            self.semantic.add(
                F.error(
                    "ONNX_GATHERBLOCKQUANTIZED_SHAPE_MISMATCH",
                    f"GatherBlockQuantized {node.label!r}: {problem}; onnxruntime fails at run time",
                    op=node.label,
                    tensor=scales.name,
                )
            )

    def check_scale_values(self, node: Node, name: str) -> None:
        if not name or name in self.checked_scales:
            return
        self.checked_scales.add(name)
        t = self.consts.get(name)
        if t is None:
            return
        if self.scale_bytes_left <= 0:
            return
        values = _scale_values(self.view, t)
        self.scale_bytes_left -= 4 * len(values)
        if not values:
            return
        bad_nan = sum(1 for v in values if math.isnan(v) or math.isinf(v))
        zero = sum(1 for v in values if v == 0)
        where = {"op": node.label, "tensor": t.name}
        if bad_nan:
            self.semantic.add(
                F.error(
                    "ONNX_SCALE_NOT_FINITE",
                    f"scale {t.name!r} holds {bad_nan} NaN/Inf value(s) "
                    f"of {len(values)} read; the model computes garbage, re-quantize it",
                    **where,
                )
            )
        if zero:
            self.semantic.add(
                F.error(
                    "ONNX_SCALE_ZERO",
                    f"scale {t.name!r} holds {zero} zero value(s) of "
                    f"{len(values)} read; re-quantize the model",
                    **where,
                )
            )

    # -- facts and metrics ----------------------------------------------------------------------

    def describe(self) -> None:
        m, inv = self.m, self.inv
        ops: dict[str, int] = {}
        for node in m.nodes:
            key = _qualified(node)
            ops[key] = ops.get(key, 0) + 1
        quant_ops = {k: v for k, v in ops.items() if k.split(":")[-1] in _QUANT_OP_NAMES}
        representations = sorted({str(x.detail.get("representation")) for x in inv.layers} - {"float"})
        initializers = sum(1 for t in m.tensors if t.kind == "initializer")
        default_opset = m.opsets.get("", m.opsets.get("ai.onnx"))
        inv.facts.update(
            {
                "ir_version": m.ir_version,
                "producer": f"{m.producer} {m.producer_version}".strip(),
                "opsets": {(k or "ai.onnx"): v for k, v in list(m.opsets.items())[:20]},
                "nodes": len(m.nodes),
                "initializers": initializers,
                "op_types": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:40]),
            }
        )
        if m.metadata:
            inv.facts["metadata_props"] = dict(list(m.metadata.items())[:20])
        constants = sum(1 for t in m.tensors if t.kind == "constant")
        if constants:  # weights a converter (paddle2onnx, spox...) stored as Constant nodes
            inv.facts["constant_tensors"] = constants
        if m.function_nodes:
            inv.facts["function_nodes"] = m.function_nodes
            inv.facts["functions"] = len(m.functions)
        inv.facts["summary"] = (
            f"IR {m.ir_version}, opset {default_opset}, {len(m.nodes)} nodes, {initializers} initializers, "
            f"{inv.params_stored or 0:,} params" + (f", producer {m.producer}" if m.producer else "")
        )
        inv.metrics["quant_ops"] = quant_ops
        inv.metrics["quant_representations"] = representations


# (op, domain family) -> input indices that are scales
_SCALE_INPUTS: dict[tuple[str, str], tuple[int, ...]] = {
    ("DequantizeLinear", "std"): (1,),
    ("QuantizeLinear", "std"): (1,),
    ("DequantizeLinear", "ms"): (1,),
    ("QuantizeLinear", "ms"): (1,),
    ("QLinearConv", "std"): (1, 4, 6),
    ("QLinearMatMul", "std"): (1, 4, 6),
    ("QLinearAdd", "ms"): (1, 4, 6),
    ("QLinearMul", "ms"): (1, 4, 6),
    ("QGemm", "ms"): (1, 4, 7),
    ("MatMulNBits", "ms"): (2,),
    ("GatherBlockQuantized", "ms"): (2,),
    ("DynamicQuantizeMatMul", "ms"): (2,),
    ("MatMulIntegerToFloat", "ms"): (2, 3),
    ("QAttention", "ms"): (3, 4),
}
_PACKED = {"MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"}
_QUANT_OP_NAMES = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSoftmax",
    "QLinearConcat",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "MatMulNBits",
    "MatMulBnb4",
    "GatherBlockQuantized",
    "DynamicQuantizeLSTM",
}


# MatMulNBits accuracy_level -> the precision its activations are computed in; 0 (unset) leaves it to
# the execution provider, so it is not recorded
_ACCURACY_LEVEL_COMPUTE = {1: "fp32", 2: "fp16", 3: "bf16", 4: "int8"}
_FLOAT_COMPUTE = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "DOUBLE": "fp64"}


def _compute(kind: str, representation: str, dtype: str) -> str | None:
    """Compute precision where the graph fixes it: integer and QOperator ops run in int8, a float
    weight in its float type. QDQ is left unknown: the runtime decides whether DequantizeLinear +
    MatMul becomes an int8 kernel. A lookup computes nothing."""
    if kind == EMBEDDING:
        return None
    if representation in ("integer", "QOperator", "contrib"):
        return "int8"
    if representation == "float":
        return _FLOAT_COMPUTE.get(dtype)
    return None


@dataclass(frozen=True)
class _WeightOp:
    """How an op holds its weight: the layer kind, the weight inputs to try, the representation."""

    kind: str
    # (weight input, inputs holding its scale and zero point, operand): the first input that traces to
    # a stored tensor is the weight; a recurrent op names its operands (W, R) and has a layer for each
    weights: tuple[tuple[int, tuple[int, ...], str], ...]
    # None: "QDQ" when the weight comes through a DequantizeLinear, else "float"
    representation: str | None = None
    min_rank: int = 2  # a conv's filter has 3+ dims; a lower-rank operand is not its weight


_STD, _MS = DEFAULT_DOMAINS, (MS,)
_RECURRENT = ((1, (), "W"), (2, (), "R"))  # input and recurrent weights; B is a bias
# (op_type, domain) -> how it holds its weight, or the name of the method that reads it
_WEIGHT_OPS: dict[tuple[str, str], _WeightOp | str] = {
    (op, domain): spec
    for ops, domains, spec in (
        (("MatMul", "Gemm"), _STD, _WeightOp(LINEAR, ((1, (), ""), (0, (), "")))),
        (("Conv", "ConvTranspose"), _STD, _WeightOp(CONV, ((1, (), ""),), min_rank=3)),
        (("FusedConv",), _MS, _WeightOp(CONV, ((1, (), ""),), min_rank=3)),
        (("Gather",), _STD, "add_gather"),
        (("MatMulInteger",), _STD, _WeightOp(LINEAR, ((1, (3,), ""), (0, (2,), "")), "integer")),
        (("ConvInteger",), _STD, _WeightOp(CONV, ((1, (3,), ""),), "integer", min_rank=3)),
        (("QLinearConv",), _STD, _WeightOp(CONV, ((3, (4, 5), ""),), "QOperator", min_rank=3)),
        (("QLinearMatMul",), _STD + _MS, _WeightOp(LINEAR, ((3, (4, 5), ""), (0, (1, 2), "")), "QOperator")),
        (("FusedMatMul",), _MS, _WeightOp(LINEAR, ((1, (), ""), (0, (), "")))),
        (("QGemm",), _MS, _WeightOp(LINEAR, ((3, (4, 5), ""),), "QOperator")),
        (("DynamicQuantizeMatMul",), _MS, _WeightOp(LINEAR, ((1, (2, 3), ""),), "contrib")),
        (("MatMulIntegerToFloat",), _MS, _WeightOp(LINEAR, ((1, (3, 5), ""),), "contrib")),
        (("QAttention",), _MS, _WeightOp(LINEAR, ((1, (4, 7), ""),), "contrib")),
        # rank 2: before the exporter's Unsqueeze
        (tuple(sorted(RECURRENT_OPS)), _STD, _WeightOp(LINEAR, _RECURRENT)),
        # scale and zero point: inputs 8, 9 (W), 10, 11 (R)
        (("DynamicQuantizeLSTM",), _MS, _WeightOp(LINEAR, ((1, (8, 9), "W"), (2, (10, 11), "R")), "contrib", 3)),
        (("MatMulNBits",), _MS, "add_matmulnbits"),
        (("MatMulBnb4",), _MS, "add_bnb4"),
        (("GatherBlockQuantized",), _MS, "add_gather_block_quantized"),
    )
    for op in ops
    for domain in domains
}


def _qualified(node: Node) -> str:
    return f"{node.domain}:{node.op_type}" if node.domain not in DEFAULT_DOMAINS else node.op_type


def _precision(data_type: int) -> tuple[float | None, str, bool | None]:
    info = DTYPES.get(data_type)
    if info is None:
        return None, UNKNOWN, None
    _, bits, numeric = info
    if data_type in QUANT_DTYPES:
        return bits, numeric, True
    return bits, numeric, False


def _scale_values(view: View, t: Tensor) -> list[float]:
    """A scale tensor's values (FLOAT/FLOAT16/BFLOAT16, inline only), at most SCALE_READ_CAP bytes."""
    if t.is_external:
        return []
    try:
        if t.raw is not None:
            offset, length = t.raw
            length = min(length, SCALE_READ_CAP)
            if t.data_type == 1:
                data = view.bytes(offset, length - length % 4, "scale")
                return [v[0] for v in struct.iter_unpack("<f", data)]
            if t.data_type in (10, 16):
                data = view.bytes(offset, length - length % 2, "scale")
                if t.data_type == 10:
                    return [v[0] for v in struct.iter_unpack("<e", data)]
                return [struct.unpack("<f", b"\x00\x00" + data[i : i + 2])[0] for i in range(0, len(data), 2)]
            return []
        if t.float_data is not None and t.data_type == 1:
            offset, length = t.float_data
            length = min(length, SCALE_READ_CAP)
            data = view.bytes(offset, length - length % 4, "scale")
            return [v[0] for v in struct.iter_unpack("<f", data)]
    except ReadError:
        return []
    return []


def remote_extent(view: View, head: bytes, block: int) -> int:
    """For a URL, the whole graph file is fetched ahead (formats.wire.binary.prefetch): the protobuf walk
    touches every field header. External data is only sized, never fetched."""
    return len(view)
