"""ONNX weights as float32, read through the streaming reader's offsets (never `onnx.load`).

The weights are those the structure reader counts as layers, found by its own trace
(`quantgate.formats.onnx.reader.trace_weights`: initializers and `Constant` nodes, inlined function bodies,
Q/DQ and shape-only ops, LSTM/GRU/RNN W and R). Each is returned as the float tensor the op consumes,
keyed by its name without the quantizer's suffix (`fc1.weight_quantized` -> `fc1.weight`):

* a float tensor as stored, also one a QuantizeLinear / DynamicQuantizeLinear quantizes at run time
  (the file holds the float: it dequantizes to itself);
* DequantizeLinear (opset 21 semantics): y = (x - zero_point) * scale, per tensor, per `axis`, or
  blocked (`block_size`: scale holds one value per block along `axis`), INT8/UINT8/INT16/UINT16/INT4/UINT4
  and FP8 inputs;
* QLinearConv / QLinearMatMul / QGemm / DynamicQuantizeMatMul / MatMulIntegerToFloat weights with their
  scale and zero point inputs (per-tensor, or per output channel: axis 0 for a conv or a transB Gemm,
  the last axis for a MatMul B); MatMulInteger / ConvInteger / integer Gather tables with ORT's
  `<name>_scale` / `<name>_zero_point` companions (the structure reader names them: `WeightUse.qparams`);
* DynamicQuantizeLSTM W/R ([D, in, 4H] int8, scale and zero point at inputs 8-11) as the float LSTM's
  [D, 4H, in];
* MatMulNBits: B [N, K/block, block*bits/8] uint8, scales [N * K/block], optional zero points (packed
  uint8 for bits < 8, default 2^(bits-1)) -> the [K, N] weight a float MatMul would hold;
* GatherBlockQuantized (INT4/UINT4 or uint8-packed data, blocked along `quantize_axis`).

A Conv followed only by a BatchNormalization also offers its filter with the BN folded in, under the
name onnxruntime's optimizer gives the fused filter (`ConvBnFusion_W_<name>`, a `WeightSet.variants`
entry), so a `quant_pre_process`ed artifact pairs with its unfused float model.

Tensor bytes come from `raw_data`, packed `float_data`, `int32_data`/`int64_data` varints (small
tensors: zero points), or external data confined to the model's folder. 2-D weights are decoded row
by row (only the requested rows' bytes are read, with the scale rows or columns they need; a
MatMulNBits row of the logical [K, N] is a column of B), so memory follows the chunk; convolution
kernels are decoded whole, one layer at a time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import numpy as np

from quantgate.dequant import BROKEN, UNSUPPORTED, DequantError, WeightRef, WeightSet
from quantgate.dequant.safetensors import FP8
from quantgate.formats.onnx import external, reader
from quantgate.formats.onnx.proto import Node, Tensor
from quantgate.formats.onnx.reader import WeightUse
from quantgate.formats.wire import protobuf as pb
from quantgate.formats.wire.binary import Budget, View

_DTYPES = {1: "<f4", 10: "<f2", 11: "<f8", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 12: "<u4",
           13: "<u8"}
_FP8 = {17: "F8_E4M3", 19: "F8_E5M2"}
_FLOAT_TYPES = (1, 10, 11, 16)
TYPED_LIMIT = 1 << 20  # values decoded from typed varint fields (zero points are tiny)
_PASS = ("Identity", "Cast", "CastLike", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
MS = "com.microsoft"
_SUFFIX = re.compile(r"(?:_DQ)?(?:_quantized|_Q\d+|_q\d+)$")
BN_FUSED = "ConvBnFusion_W_"  # onnxruntime's optimizer (quant_pre_process) names a Conv+BN filter so


def onnx_key(name: str) -> str:
    """`fc1.weight_quantized`, `fc1.weight_Q4`, `fc1.weight_DQ_Q4` -> `fc1.weight` (the float model's name)."""
    return _SUFFIX.sub("", name) or name


class _Model:
    def __init__(self, path: str):
        self.path = path
        self.folder = os.path.dirname(os.path.abspath(path))
        # the structure reader's own trace: Constant nodes, inlined function bodies, the operand of each
        # layer through Q/DQ, shape-only ops and a gate reorder; fidelity reads what `read` counts
        trace = reader.trace_weights(path)
        if trace is None:
            raise DequantError(BROKEN, "the ONNX model could not be scanned")
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")
        self.consts: dict[str, Tensor] = trace.consts
        self.producer: dict[str, Node] = trace.producer
        self.consumers: dict[str, list[Node]] = trace.consumers
        self.uses = trace.uses
        self.cache: dict[str, np.ndarray] = {}

    def close(self) -> None:
        mm = getattr(self.mm, "_mmap", None)
        if mm is not None:
            mm.close()

    def raw(self, t: Tensor) -> np.ndarray:
        """The stored bytes of a tensor (a memory-mapped view)."""
        if t.raw is not None:
            off, length = t.raw
            return self.mm[off:off + length]
        if t.is_external:
            loc = t.external.get("location", "")
            # the reader's own rule (one confinement rule, docs/architecture.md#hostile-input), checked
            # before any open: a FIFO would block the open, a link could alias a file outside the folder
            real, size, problems = external.locate(self.folder, loc)
            if real is None or size is None:
                code, message = problems[0] if problems else ("ONNX_EXTERNAL_MISSING", f"{loc!r} cannot be read")
                raise DequantError(BROKEN, f"{t.name}: {code}: {message}")
            off = int(t.external.get("offset", "0") or 0)
            length = t.external.get("length")
            end = off + int(length) if length and length.isdigit() else size
            if off < 0 or end > size:
                raise DequantError(BROKEN, f"{t.name}: external data range past the end of {loc}")
            return np.memmap(real, dtype=np.uint8, mode="r", offset=off, shape=(end - off,))
        if t.float_data is not None and t.data_type == 1:
            off, length = t.float_data
            return self.mm[off:off + length]
        if not t.numel:
            return np.zeros(0, np.uint8)
        typed = self.typed_ints(t)
        if typed is not None:
            return typed
        raise DequantError(UNSUPPORTED, f"{t.name}: values stored in typed fields ({', '.join(t.typed_counts)}) "
                           "are not decoded here")

    def typed_ints(self, t: Tensor) -> np.ndarray | None:
        """int32_data / int64_data of a small integer tensor (ORT writes zero points this way), as the
        tensor's own little-endian bytes; None for anything else."""
        dt = t.data_type
        key = "int64_data" if dt == 7 else "int32_data" if dt in (2, 3, 4, 5, 6, *_FP8, 18, 20, 21, 22) else None
        n = t.numel or 0
        entries = (n + 1) // 2 if dt in (21, 22) else n  # 4-bit values: two per int32 entry
        if key is None or t.typed_counts.get(key) != entries or n > TYPED_LIMIT:
            return None
        scanner = pb.Scanner(View(memoryview(self.mm)), Budget(10_000 + 4 * n))
        _, pos = scanner.varint(t.offset, len(self.mm))
        length, start = scanner.varint(pos, len(self.mm))
        number = 5 if key == "int32_data" else 7
        out: list[int] = []
        for f in scanner.fields(start, start + length):
            if f.number != number:
                continue
            if f.wire == pb.LEN:
                out.extend(scanner.packed_varints(f.value, f.length, key, n))
            elif f.wire == pb.VARINT:
                out.append(f.value)
        values = np.array([pb.to_signed64(v) for v in out[:entries]], dtype=np.int64)
        if dt in _DTYPES:
            return values.astype(_DTYPES[dt]).view(np.uint8)
        return (values & 0xFF).astype(np.uint8)  # fp8 bit patterns, or two 4-bit values a byte

    def values(self, t: Tensor) -> np.ndarray:
        """The tensor's values with their dims (4-bit types unpacked, FP8/BF16 as float32)."""
        raw = self.raw(t)
        n = t.numel or 0
        dt = t.data_type
        if dt in _DTYPES:
            out = np.asarray(raw).view(_DTYPES[dt])[:n]
        elif dt == 16:
            out = (np.asarray(raw).view("<u2")[:n].astype(np.uint32) << 16).view(np.float32)
        elif dt in _FP8:
            out = FP8[_FP8[dt]][np.asarray(raw)[:n]]
        elif dt in (21, 22):
            b = np.asarray(raw)
            nib = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(-1)[:n].astype(np.int8)
            out = np.where(nib > 7, nib - 16, nib).astype(np.int8) if dt == 22 else nib.astype(np.uint8)
        else:
            raise DequantError(UNSUPPORTED, f"{t.name}: {t.dtype_name} values are not decoded here")
        if out.size != n:
            raise DequantError(BROKEN, f"{t.name}: {out.size} stored values for dims {t.dims}")
        return out.reshape(t.dims)

    def q_rows(self, t: Tensor, rows: np.ndarray) -> np.ndarray:
        """The stored codes of the selected rows of a 2-D tensor, reading only those rows' bytes."""
        cols = t.dims[-1]
        dt = t.data_type
        stored = t.raw is not None or t.is_external  # bytes in the map (not typed fields)
        if dt in (21, 22) and cols % 2 == 0 and stored:
            b = np.asarray(self.raw(t)).reshape(-1, cols // 2)[rows]
            nib = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(len(rows), cols).astype(np.int8)
            return np.where(nib > 7, nib - 16, nib).astype(np.int8) if dt == 22 else nib.astype(np.uint8)
        if dt in _FP8 and stored:
            return FP8[_FP8[dt]][np.asarray(self.raw(t)).reshape(-1, cols)[rows]]
        return np.asarray(self.values(t)).reshape(-1, cols)[rows]

    def small(self, name: str) -> np.ndarray | None:
        """A companion tensor (scale, zero point) by value name, through Identity-like ops."""
        t = self.const(name)
        if t is None:
            return None
        if name not in self.cache:
            self.cache[name] = np.asarray(self.values(t))
        return self.cache[name]

    def const(self, name: str) -> Tensor | None:
        depth = 0
        while name and name not in self.consts and depth < 8:
            node = self.producer.get(name)
            if node is None or node.op_type not in _PASS or not node.inputs:
                return None
            name, depth = node.inputs[0], depth + 1
        return self.consts.get(name) if name else None


def dequantize_linear(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int,
                      block_size: int, name: str) -> np.ndarray:
    """ONNX DequantizeLinear on whole arrays, float32 out."""
    x = q.astype(np.float32)
    s = np.asarray(scale, dtype=np.float32)
    z = None if zp is None else np.asarray(zp).astype(np.float32)
    if s.size == 1:
        return (x - (z.reshape(-1)[0] if z is not None and z.size else 0.0)) * s.reshape(-1)[0]
    axis = axis % q.ndim
    if block_size > 0:
        if s.ndim != q.ndim:
            raise DequantError(BROKEN, f"{name}: blocked scale {list(s.shape)} for weight {list(q.shape)}")
        s = np.repeat(s, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
        if z is not None:
            z = np.repeat(z, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
        if s.shape != q.shape:
            raise DequantError(BROKEN, f"{name}: blocked scale {list(scale.shape)} does not cover {list(q.shape)}")
        return (x - (z if z is not None else 0.0)) * s
    if s.ndim != 1 or s.size != q.shape[axis]:
        raise DequantError(BROKEN, f"{name}: scale of {s.size} values for axis {axis} of {list(q.shape)}")
    shape = [1] * q.ndim
    shape[axis] = -1
    if z is not None:
        x = x - z.reshape(shape)
    return x * s.reshape(shape)


def dequantize_rows(q: np.ndarray, rows: np.ndarray, shape: tuple[int, ...], scale: np.ndarray,
                    zp: np.ndarray | None, axis: int, block_size: int, name: str) -> np.ndarray:
    """DequantizeLinear on the selected rows of a 2-D weight: the same arithmetic as
    `dequantize_linear`, with the scale (and zero point) rows or columns those rows need."""
    n_rows, cols = shape
    s = np.asarray(scale, dtype=np.float32)
    z = None if zp is None else np.asarray(zp).astype(np.float32)
    x = q.astype(np.float32)
    if s.size == 1:
        return (x - (z.reshape(-1)[0] if z is not None and z.size else 0.0)) * s.reshape(-1)[0]
    axis %= 2

    def pick(a: np.ndarray) -> np.ndarray:
        if block_size > 0:
            want = (-(-n_rows // block_size), cols) if axis == 0 else (n_rows, -(-cols // block_size))
            if a.shape != want:
                raise DequantError(BROKEN, f"{name}: blocked scale {list(a.shape)} for weight {list(shape)}")
            return a[rows // block_size] if axis == 0 else np.repeat(a[rows], block_size, axis=1)[:, :cols]
        if a.ndim != 1 or a.size != shape[axis]:
            raise DequantError(BROKEN, f"{name}: scale of {a.size} values for axis {axis} of {list(shape)}")
        return a[rows][:, None] if axis == 0 else a[None, :]

    if z is not None:
        x = x - pick(z)
    return x * pick(s)


def _whole(shape: tuple[int, ...], decode: Callable[[], np.ndarray]) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                                            Callable[[], None]]:
    """A loader that decodes the whole tensor once (kept until `release`) and returns rows of its 2-D view.

    ONNX scales follow the op's axis, not a row, so a quantized weight is decoded whole, one layer at a
    time; float initializers are views of the map and cost nothing until rows are taken."""
    cols = shape[-1]
    cache: list[np.ndarray] = []

    def load(rows: np.ndarray) -> np.ndarray:
        if not cache:
            cache.append(np.asarray(decode(), dtype=np.float32).reshape(-1, cols))
        return cache[0][rows]

    return load, cache.clear


class _Builder:
    def __init__(self, m: _Model, ws: WeightSet):
        self.m = m
        self.ws = ws

    def add(self, t: Tensor, encoding: str, quantized: bool, shape: tuple[int, ...],
            decode: Callable[[], np.ndarray], rows: Callable[[np.ndarray], np.ndarray] | None = None,
            node: Node | None = None) -> None:
        key = onnx_key(t.name)
        if key in self.ws.weights or len(shape) < 2:
            return
        fold = self.bn_fold(node, shape) if node is not None else None
        if fold is not None:
            # the filter the Conv + BatchNormalization pair applies, under the name onnxruntime's optimizer
            # gives it once fused: what a `quant_pre_process`ed artifact pairs with (a variant, so an
            # unfused artifact still pairs with the stored filter)
            def folded() -> np.ndarray:
                return np.asarray(decode(), np.float32) * fold().reshape((-1,) + (1,) * (len(shape) - 1))

            loader, release = _whole(shape, folded)
            self.ws.variants[BN_FUSED + key] = (key, WeightRef(
                name=t.name, key=BN_FUSED + key, shape=shape, encoding=encoding + " + BatchNormalization folded",
                quantized=quantized, loader=loader, release=release))
        if rows is not None and len(shape) == 2:  # decoded row by row: memory follows the chunk
            self.ws.add(WeightRef(name=t.name, key=key, shape=shape, encoding=encoding, quantized=quantized,
                                  loader=rows))
            return
        if not quantized:  # a float initializer: rows straight from the map
            cols = shape[-1]

            def rows_of(rows: np.ndarray) -> np.ndarray:
                return np.asarray(decode()).reshape(-1, cols)[rows].astype(np.float32)

            self.ws.add(WeightRef(name=t.name, key=key, shape=shape, encoding=encoding, quantized=False,
                                  loader=rows_of))
            return
        loader, release = _whole(shape, decode)
        self.ws.add(WeightRef(name=t.name, key=key, shape=shape, encoding=encoding, quantized=quantized,
                              loader=loader, release=release))

    def bn_fold(self, node: Node, shape: tuple[int, ...]) -> Callable[[], np.ndarray] | None:
        """A Conv whose output only a BatchNormalization reads, with constant parameters, one per output
        channel: the per-channel factor scale / sqrt(var + epsilon) that folds it into the filter, as
        onnxruntime's optimizer (and `quant_pre_process`) does before quantizing; None otherwise. Both
        sides of a pair fold, so a fused artifact pairs with its unfused float model."""
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or not node.outputs or len(shape) < 3:
            return None
        users = self.m.consumers.get(node.outputs[0], [])
        if len(users) != 1 or users[0].op_type != "BatchNormalization" or users[0].domain not in ("", "ai.onnx"):
            return None
        bn = users[0]
        if bn.input(0) != node.outputs[0] or len(bn.outputs) != 1:
            return None  # training mode (running mean/var outputs) is not an inference fold
        names = (bn.input(1), bn.input(4))
        tensors = [self.m.const(n) for n in names]
        if any(t is None or t.numel != shape[0] or t.data_type not in _FLOAT_TYPES for t in tensors):
            return None
        eps = bn.attrs.get("epsilon", 1e-5)
        eps = float(eps) if isinstance(eps, (int, float)) else 1e-5

        def factor() -> np.ndarray:
            scale, var = (np.asarray(self.m.small(n), np.float32).reshape(-1) for n in names)
            return scale / np.sqrt(var + np.float32(eps))

        return factor

    def stored_float(self, use: WeightUse) -> None:
        """A float weight as stored: also one a QuantizeLinear / DynamicQuantizeLinear quantizes at run
        time (behind a DequantizeLinear or as a QLinear*/Integer op's operand): its stored float is
        what the file holds, so it dequantizes to itself."""
        t, q = use.source.tensor, use.source.runtime_q
        enc = t.dtype_name + (f" quantized at run time by {q.op_type}" if q is not None else "")
        self.add(t, enc, False, tuple(t.dims), lambda: self.m.values(t), node=use.node)

    def dq(self, use: WeightUse) -> None:
        t, dq = use.source.tensor, use.source.dq
        if dq is None:
            return
        axis = dq.attr_int("axis", 1) or 0
        block = dq.attr_int("block_size", 0) or 0
        enc = f"{t.dtype_name} DequantizeLinear" + (f" block {block}" if block else "")

        def decode() -> np.ndarray:
            scale = self.m.small(dq.input(1))
            if scale is None:
                raise DequantError(UNSUPPORTED, f"{t.name}: DequantizeLinear scale {dq.input(1)!r} is not a constant")
            zp = self.m.small(dq.input(2)) if dq.input(2) else None
            return dequantize_linear(self.m.values(t), scale, zp, axis if dq.attr_int("axis") is not None else 1,
                                     block, t.name)

        def decode_rows(rows: np.ndarray) -> np.ndarray:
            scale = self.m.small(dq.input(1))
            if scale is None:
                raise DequantError(UNSUPPORTED, f"{t.name}: DequantizeLinear scale {dq.input(1)!r} is not a constant")
            zp = self.m.small(dq.input(2)) if dq.input(2) else None
            return dequantize_rows(self.m.q_rows(t, rows), rows, tuple(t.dims), scale, zp,
                                   axis if dq.attr_int("axis") is not None else 1, block, t.name)

        self.add(t, enc, True, tuple(t.dims), decode, decode_rows, node=use.node)

    def scale_of(self, t: Tensor, scale_name: str) -> np.ndarray:
        scale = self.m.small(scale_name) if scale_name else None
        if scale is None:
            raise DequantError(UNSUPPORTED, f"{t.name}: no constant weight scale ({scale_name or 'none named'}; "
                               "a runtime-fused graph may have folded it into a product)")
        return scale

    def qlinear(self, use: WeightUse, axis: int) -> None:
        """An integer weight with the op's own scale and zero point (`use.qparams`), per tensor or along `axis`."""
        t, node = use.source.tensor, use.node
        scale_name, zp_name = use.qparams

        def decode() -> np.ndarray:
            scale = self.scale_of(t, scale_name)
            zp = self.m.small(zp_name) if zp_name else None
            return dequantize_linear(self.m.values(t), scale, zp, axis, 0, t.name)

        def decode_rows(rows: np.ndarray) -> np.ndarray:
            scale = self.scale_of(t, scale_name)
            zp = self.m.small(zp_name) if zp_name else None
            return dequantize_rows(self.m.q_rows(t, rows), rows, tuple(t.dims), scale, zp, axis, 0, t.name)

        self.add(t, f"{t.dtype_name} {node.op_type}", True, tuple(t.dims), decode, decode_rows)

    def dynamic_quantize_lstm(self, use: WeightUse) -> None:
        """com.microsoft:DynamicQuantizeLSTM W [D, input, 4H] / R [D, H, 4H] (the quantizer transposes
        them), scale and zero point per direction [D] or per direction and gate row [D, 4H]: dequantized
        and transposed back to the [D, 4H, input] an LSTM holds, so it pairs with the float LSTM."""
        t = use.source.tensor
        scale_name, zp_name = use.qparams
        if len(t.dims) != 3:
            return
        d, inner, gates = t.dims

        def decode() -> np.ndarray:
            q = np.asarray(self.m.values(t)).astype(np.float32)
            s = np.asarray(self.scale_of(t, scale_name), np.float32)
            zp = self.m.small(zp_name) if zp_name else None
            z = np.zeros_like(s) if zp is None else np.asarray(zp).astype(np.float32)
            if s.size == d:
                s, z = s.reshape(d, 1, 1), z.reshape(d, 1, 1)
            elif s.size == d * gates and z.size == d * gates:
                s, z = s.reshape(d, 1, gates), z.reshape(d, 1, gates)
            else:
                raise DequantError(BROKEN, f"{t.name}: scale of {s.size} values for DynamicQuantizeLSTM weight "
                                   f"{list(t.dims)} (want {d} or {d * gates})")
            if z.shape != s.shape:
                raise DequantError(BROKEN, f"{t.name}: zero point of {z.size} values for a scale of {s.size}")
            return ((q - z) * s).transpose(0, 2, 1)

        self.add(t, f"{t.dtype_name} DynamicQuantizeLSTM", True, (d, gates, inner), decode)

    def matmulnbits(self, node: Node) -> None:
        b = self.m.consts.get(node.input(1))
        k, n, bits, block = (node.attr_int(a) for a in ("K", "N", "bits", "block_size"))
        bits = bits or 4
        if b is None or not (k and n and block) or bits not in (2, 4, 8):
            return
        blocks = -(-k // block)

        def decode() -> np.ndarray:
            raw = np.asarray(self.m.values(b)).astype(np.uint8).reshape(n, blocks, -1)
            per = 8 // bits
            vals = np.stack([(raw >> (bits * j)) & ((1 << bits) - 1) for j in range(per)], axis=-1)
            q = vals.reshape(n, blocks * block)[:, :k].astype(np.float32)
            scales = self.m.small(node.input(2))
            if scales is None or scales.size != n * blocks:
                raise DequantError(BROKEN, f"{b.name}: MatMulNBits scales do not hold N x K/block = {n * blocks}")
            s = np.asarray(scales, np.float32).reshape(n, blocks)
            zname = node.input(3)
            zt = self.m.consts.get(zname) if zname else None
            if zt is None:
                z = np.full((n, blocks), float(1 << (bits - 1)), np.float32)
            elif zt.data_type == 2:  # packed like B, padded per row
                zr = np.asarray(self.m.values(zt)).astype(np.uint8).reshape(n, -1)
                zv = np.stack([(zr >> (bits * j)) & ((1 << bits) - 1) for j in range(per)], axis=-1)
                z = zv.reshape(n, -1)[:, :blocks].astype(np.float32)
            else:  # float zero points (same type as the scales)
                z = np.asarray(self.m.values(zt), np.float32).reshape(n, blocks)
            w = (q - np.repeat(z, block, axis=1)[:, :k]) * np.repeat(s, block, axis=1)[:, :k]
            return w.T  # [K, N], as the float MatMul's B

        def decode_rows(rows: np.ndarray) -> np.ndarray:  # rows of the logical [K, N]: columns of B
            per, mask = 8 // bits, (1 << bits) - 1
            raw = np.asarray(self.m.values(b)).view(np.uint8).reshape(n, blocks, -1)
            blk, pos = rows // block, rows % block
            codes = (raw[:, blk, pos // per] >> (bits * (pos % per)).astype(np.uint8)) & mask  # [N, rows]
            scales = self.m.small(node.input(2))
            if scales is None or scales.size != n * blocks:
                raise DequantError(BROKEN, f"{b.name}: MatMulNBits scales do not hold N x K/block = {n * blocks}")
            s = np.asarray(scales, np.float32).reshape(n, blocks)[:, blk]
            zname = node.input(3)
            zt = self.m.consts.get(zname) if zname else None
            if zt is None:
                z = np.float32(1 << (bits - 1))
            elif zt.data_type == 2:
                zr = np.asarray(self.m.values(zt)).astype(np.uint8).reshape(n, -1)
                z = ((zr[:, blk // per] >> (bits * (blk % per)).astype(np.uint8)) & mask).astype(np.float32)
            else:
                z = np.asarray(self.m.values(zt), np.float32).reshape(n, blocks)[:, blk]
            return ((codes.astype(np.float32) - z) * s).T

        self.add(b, f"{bits}-bit MatMulNBits block {block}", True, (k, n), decode, decode_rows)

    def gather_block_quantized(self, node: Node) -> None:
        data = self.m.consts.get(node.input(0))
        if data is None or len(data.dims) != 2:
            return
        bits = node.attr_int("bits", 4) or 4
        block = node.attr_int("block_size", 128) or 128
        qaxis = (node.attr_int("quantize_axis", 1) or 0) % 2
        dims = list(data.dims)
        if data.data_type == 2 and bits < 8:
            dims[1] = dims[1] * 8 // bits

        packed = data.data_type == 2 and bits < 8
        per, mask = 8 // bits, (1 << bits) - 1

        def unpack(v: np.ndarray) -> np.ndarray:  # uint8 [r, c] -> [r, c * per], low bits first
            return np.stack([(v >> (bits * j)) & mask for j in range(per)], axis=-1).reshape(v.shape[0], -1)

        def params() -> tuple[np.ndarray, np.ndarray]:
            scales = self.m.small(node.input(2))
            if scales is None:
                raise DequantError(UNSUPPORTED, f"{data.name}: GatherBlockQuantized scales are not a constant")
            zp = self.m.small(node.input(3)) if node.input(3) else None
            if zp is None:
                default = 0 if data.data_type == 22 and not packed else 1 << (bits - 1)
                zp = np.full(scales.shape, default, np.float32)
            elif zp.dtype == np.uint8 and bits < 8 and zp.size * per == scales.size:
                zp = unpack(zp.reshape(scales.shape[0], -1)).reshape(scales.shape)
            return scales, zp

        def decode() -> np.ndarray:
            v = np.asarray(self.m.values(data))
            scales, zp = params()
            return dequantize_linear(unpack(v) if packed else v, scales, zp, qaxis, block, data.name)

        def decode_rows(rows: np.ndarray) -> np.ndarray:
            if packed:
                q = unpack(np.asarray(self.m.values(data)).reshape(-1, data.dims[1])[rows])
            else:
                q = self.m.q_rows(data, rows)
            scales, zp = params()
            return dequantize_rows(q, rows, tuple(dims), scales, zp, qaxis, block, data.name)

        self.add(data, f"{data.dtype_name} GatherBlockQuantized block {block}", True, tuple(dims), decode,
                 decode_rows)

    def use(self, use: WeightUse) -> None:
        """One weight operand the structure reader traced, decoded by how it is stored."""
        node, t = use.node, use.source.tensor
        op, ms = node.op_type, node.domain == MS
        if ms and op == "MatMulNBits":
            self.matmulnbits(node)
        elif ms and op == "GatherBlockQuantized":
            self.gather_block_quantized(node)
        elif ms and op in ("MatMulBnb4", "QAttention") and t.data_type not in _FLOAT_TYPES:
            self.ws.problems.append((UNSUPPORTED, t.name, f"{t.name}: {op} weights are not dequantized here"))
        elif len(t.dims) < 2:
            return
        elif t.data_type in _FLOAT_TYPES:
            self.stored_float(use)
        elif use.source.dq is not None:
            self.dq(use)
        elif ms and op == "DynamicQuantizeLSTM":
            self.dynamic_quantize_lstm(use)
        elif op in _AXIS_ZERO or (op == "QGemm" and node.attr_int("transB", 0)):
            self.qlinear(use, 0)
        elif op in _AXIS_ONE:
            self.qlinear(use, 1)


# the axis of a per-channel scale of an integer weight (the output channels): a conv's filters and a
# Gather's rows are axis 0, a MatMul B's columns axis 1 (a transB Gemm's axis 0)
_AXIS_ZERO = frozenset(("QLinearConv", "ConvInteger", "Gather"))
_AXIS_ONE = frozenset(("QLinearMatMul", "QGemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"))


def open_weights(path: str) -> WeightSet:
    m = _Model(path)
    ws = WeightSet("onnx")
    ws.closers.append(m.close)
    builder = _Builder(m, ws)
    for use in m.uses:
        try:
            builder.use(use)
        except DequantError as exc:
            ws.problems.append((exc.code, use.node.label, exc.message))
    ws.facts["tensors"] = len(ws.weights)
    return ws
