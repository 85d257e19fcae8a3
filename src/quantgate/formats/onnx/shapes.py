"""Static shapes for the flops basis: a small forward pass over the ops that decide a layer's output.

Quantizers rename tensors and drop `value_info`, so the shapes the file records rarely reach the
layers of a quantized graph. This walks the nodes once, in file order (ONNX graphs are topologically
sorted), from the static shapes the file gives (inputs, value_info, initializers) through
elementwise, transpose, matmul, gemm, conv, gather and reshape rules, the quantized forms included.
Anything it cannot decide stays unknown: a layer whose output positions are unknown makes the flops
basis inexact, never wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from quantgate.formats.onnx.proto import Node, Tensor
from quantgate.formats.wire.binary import ReadError, View

Shape = list[int]

_SAME = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "Cast",
    "CastLike",
    "Identity",
    "Relu",
    "LeakyRelu",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Softmax",
    "LogSoftmax",
    "Sqrt",
    "Neg",
    "Exp",
    "Log",
    "Abs",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "Silu",
    "Dropout",
    "LayerNormalization",
    "SkipLayerNormalization",
    "SimplifiedLayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "QLinearSoftmax",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
}
_BINARY = {
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (0, 1),
    "Div": (0, 1),
    "Pow": (0, 1),
    "Where": (1, 2),
    "QLinearAdd": (0, 3),
    "QLinearMul": (0, 3),
}
# op -> (A input, B input) for matmul-like ops with a [K, N] (or batched) B
_MATMUL = {
    "MatMul": (0, 1),
    "QLinearMatMul": (0, 3),
    "MatMulInteger": (0, 1),
    "DynamicQuantizeMatMul": (0, 1),
    "MatMulIntegerToFloat": (0, 1),
    "FusedMatMul": (0, 1),
}
_CONV = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
MAX_SMALL_INTS = 64  # Reshape/Squeeze/Unsqueeze constants read at most this many int64 values
# shapes of higher rank are left unknown: a hostile file can declare 60,000 dims, and products over
# them (Flatten, Reshape, output positions) would grow into million-bit integers
MAX_RANK = 64
_I64_MAX = (1 << 63) - 1


def countable(shape: Sequence[int | None]) -> bool:
    """A static shape worth computing with: at most MAX_RANK dims, none negative or unknown, and an
    element count int64 can hold (anything larger is no real tensor, and its products are bignums)."""
    if len(shape) > MAX_RANK or not all(isinstance(d, int) and 0 <= d < 1 << 62 for d in shape):
        return False
    return math.prod(shape) <= _I64_MAX  # type: ignore[arg-type]  # (all int: checked above)


def _broadcast(a: Shape, b: Shape) -> Shape | None:
    out = []
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y and x != 1 and y != 1:
            return None
        out.append(max(x, y) if x != 0 and y != 0 else 0)
    longer = a if len(a) > len(b) else b
    return longer[: len(longer) - len(out)] + out[::-1]


def _matmul(a: Shape, b: Shape) -> Shape | None:
    if not a or not b:
        return None
    if len(b) == 1:
        return a[:-1] if a[-1] == b[0] else None
    if len(a) == 1:
        return [*b[:-2], b[-1]]
    batch = _broadcast(a[:-2], b[:-2])
    return None if batch is None else [*batch, a[-2], b[-1]]


class ShapeInference:
    def __init__(self, view: View, consts: dict[str, Tensor], recorded: dict[str, list[int | None]]):
        self.view = view
        self.consts = consts
        self.known: dict[str, Shape] = {}
        for name, shape in recorded.items():
            if countable(shape):
                self.known[name] = [int(d) for d in shape if d is not None]
        for name, t in consts.items():
            if countable(t.dims):
                self.known.setdefault(name, list(t.dims))

    def run(self, nodes: Sequence[Node]) -> dict[str, Shape]:
        for node in nodes:
            if node.scope != "main" or not node.outputs or not node.outputs[0]:
                continue
            if node.outputs[0] in self.known:
                continue
            try:
                shape = self.rule(node)
            except (ReadError, ValueError, TypeError, IndexError, ZeroDivisionError, OverflowError):
                shape = None
            if shape is not None and countable(shape):
                self.known[node.outputs[0]] = shape
        return self.known

    def shape(self, node: Node, index: int) -> Shape | None:
        return self.known.get(node.input(index))

    def rule(self, node: Node) -> Shape | None:
        op = node.op_type
        if op in _SAME:
            return self.shape(node, 0)
        if op == "Transpose":
            x = self.shape(node, 0)
            if x is None:
                return None
            perm = node.attrs.get("perm") or list(range(len(x)))[::-1]
            return [x[p] for p in perm] if sorted(perm) == list(range(len(x))) else None
        if op in _BINARY:
            i, j = _BINARY[op]
            a, b = self.shape(node, i), self.shape(node, j)
            return _broadcast(a, b) if a is not None and b is not None else None
        if op in _MATMUL:
            i, j = _MATMUL[op]
            a, b = self.shape(node, i), self.shape(node, j)
            if a is None or b is None:
                return None
            if op == "FusedMatMul" and node.attrs.get("transB") and len(b) >= 2:
                b = [*b[:-2], b[-1], b[-2]]
            if op == "FusedMatMul" and node.attrs.get("transA") and len(a) >= 2:
                a = [*a[:-2], a[-1], a[-2]]
            return _matmul(a, b)
        if op == "MatMulNBits" or op == "MatMulBnb4":
            a, n = self.shape(node, 0), node.attr_int("N")
            return [*a[:-1], n] if a and n else None
        if op in ("Gemm", "QGemm"):
            a, b = self.shape(node, 0), self.shape(node, 3 if op == "QGemm" else 1)
            if a is None or b is None or len(a) != 2 or len(b) != 2:
                return None
            m = a[1] if node.attrs.get("transA") else a[0]
            n = b[0] if node.attrs.get("transB") else b[1]
            return [m, n]
        if op in _CONV:
            i, j = _CONV[op]
            return self.conv(node, self.shape(node, i), self.shape(node, j))
        if op in ("Gather", "GatherBlockQuantized"):
            return self.gather(node)
        if op == "Reshape":
            return self.reshape(node)
        if op in ("Unsqueeze", "Squeeze"):
            return self.squeeze(node, op == "Unsqueeze")
        if op == "Flatten":
            x = self.shape(node, 0)
            axis = node.attr_int("axis", 1) or 0
            if x is None:
                return None
            axis = axis + len(x) if axis < 0 else axis
            return [math.prod(x[:axis]), math.prod(x[axis:])]
        return None

    def conv(self, node: Node, x: Shape | None, w: Shape | None) -> Shape | None:
        if x is None or w is None or len(x) < 3 or len(w) != len(x):
            return None
        spatial = len(x) - 2
        kernel = w[2:]
        strides = node.attrs.get("strides") or [1] * spatial
        dilations = node.attrs.get("dilations") or [1] * spatial
        pads = node.attrs.get("pads") or [0] * (2 * spatial)
        auto_pad = node.attrs.get("auto_pad") or "NOTSET"
        out = [x[0], w[0]]
        for i in range(spatial):
            size, k, s, d = x[2 + i], kernel[i], strides[i], dilations[i]
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out.append(-(-size // s))
            else:
                padded = size if auto_pad == "VALID" else size + pads[i] + pads[i + spatial]
                out.append((padded - d * (k - 1) - 1) // s + 1)
        return out

    def gather(self, node: Node) -> Shape | None:
        data, indices = self.shape(node, 0), self.shape(node, 1)
        if data is None or indices is None:
            return None
        if node.op_type == "GatherBlockQuantized":
            table = self.consts.get(node.input(0))
            bits = node.attr_int("bits", 4) or 4
            if table is not None and table.data_type == 2 and 0 < bits < 8:
                data = [*data[:-1], data[-1] * (8 // bits)]
            axis = node.attr_int("gather_axis", 0) or 0
        else:
            axis = node.attr_int("axis", 0) or 0
        axis = axis + len(data) if axis < 0 else axis
        return [*data[:axis], *indices, *data[axis + 1 :]]

    def small_ints(self, name: str) -> list[int] | None:
        """The values of a small constant INT64 tensor (a shape or axes), read from its raw_data."""
        t = self.consts.get(name)
        if t is None or t.data_type != 7 or t.raw is None or t.numel is None or t.numel > MAX_SMALL_INTS:
            return None
        offset, length = t.raw
        if length != 8 * t.numel:
            return None
        return list(struct.unpack(f"<{t.numel}q", self.view.bytes(offset, length, "shape")))

    def reshape(self, node: Node) -> Shape | None:
        x, target = self.shape(node, 0), self.small_ints(node.input(1))
        if x is None or target is None:
            return None
        out = [x[i] if d == 0 and i < len(x) else d for i, d in enumerate(target)]
        if out.count(-1) == 1:
            rest = math.prod(d for d in out if d != -1)
            out[out.index(-1)] = math.prod(x) // rest if rest else 0
        return out if math.prod(out) == math.prod(x) and all(d >= 0 for d in out) else None

    def squeeze(self, node: Node, unsqueeze: bool) -> Shape | None:
        x = self.shape(node, 0)
        axes = node.attrs.get("axes") or (self.small_ints(node.input(1)) if node.input(1) else None)
        if x is None:
            return None
        if unsqueeze:
            if not axes or len(axes) > MAX_RANK:
                return None
            rank = len(x) + len(axes)
            axes = sorted(a + rank if a < 0 else a for a in axes)
            out = list(x)
            for a in axes:
                out.insert(a, 1)
            return out
        if not axes:
            return [d for d in x if d != 1]
        drop = {a + len(x) if a < 0 else a for a in axes}
        return [d for i, d in enumerate(x) if i not in drop]
