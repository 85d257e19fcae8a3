"""ExecuTorch `.pte` weights as float32, paired by position (a program has no weight names that
survive lowering): the i-th weight-bearing layer of the reader's inventory, in execution order, is
keyed `#i` and compared with the reference's `#i` when the shapes agree.

Decoded: float constants (fp32, fp16, bf16) in the constant segment or in named data, XNNPACK float
filters, XNNPACK per-channel int8 filters (QC8W: int8 [out, in] times one fp32 scale per output
channel) and per-group 4-bit filters (QB4W: two codes a byte, low nibble first, zero point 8, one bf16
scale per group of inputs), scales read from the blob's constant data or named data; quantized
embedding tables (`embedding_byte`, `embedding_4bit`: int8 or two codes a byte, high nibble first,
with the instruction's group scales). Portable int8 constants behind a
`quantized_decomposed::dequantize_per_channel` / `_per_tensor` are decoded with that instruction's
scale and zero-point operands.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from quantgate.core.findings import has_errors
from quantgate.dequant import BROKEN, UNSUPPORTED, DequantError, WeightRef, WeightSet

_FLOAT = {"fp32": "<f4", "fp16": "<f2", "bf16": "bf16"}
_DELEGATE = re.compile(r"\[(\d+)\]/")


def _floats(raw: np.ndarray, kind: str) -> np.ndarray:
    if kind == "bf16":
        return (np.asarray(raw).view("<u2").astype(np.uint32) << 16).view(np.float32)
    return np.asarray(raw).view(kind).astype(np.float32)


class _Program:
    def __init__(self, path: str):
        from quantgate.formats.pte import reader

        self.prog = reader.parse(path)
        if has_errors(self.prog.findings):
            raise DequantError(BROKEN, "the program could not be read")
        self.inventory = reader.read(path)
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")
        self.named: dict[str, tuple[int, int]] = {}
        for key, seg in self.prog.named_data:
            span = self.prog.segment_bytes(seg)
            if span is not None:
                self.named.setdefault(key, span)
        self.payloads: dict[tuple[str, int], Any] = {}

    def close(self) -> None:
        mm = getattr(self.mm, "_mmap", None)
        if mm is not None:
            mm.close()

    def span(self, start: int, size: int, what: str) -> np.ndarray:
        if start < 0 or size < 0 or start + size > len(self.mm):
            raise DequantError(BROKEN, f"{what}: {size} bytes at {start} run past the end of the file")
        return self.mm[start:start + size]

    def constant(self, locator: str, nbytes: int, what: str) -> np.ndarray:
        """The bytes a layer's `constant` names: `buffer N` (constant segment) or a named-data key."""
        if locator.startswith("buffer "):
            index = int(locator.split()[1])
            prog = self.prog
            if prog.constant_segment is None or not 0 <= index < len(prog.constant_offsets):
                raise DequantError(UNSUPPORTED, f"{what}: constant buffer {index} is not in a constant segment")
            seg = prog.segment_bytes(prog.constant_segment)
            if seg is None:
                raise DequantError(BROKEN, f"{what}: the constant segment is missing")
            return self.span(seg[0] + prog.constant_offsets[index], nbytes, what)
        if locator in self.named:
            start, size = self.named[locator]
            if nbytes > size:
                raise DequantError(BROKEN, f"{what}: named data {locator[:16]}... holds {size} bytes, needs {nbytes}")
            return self.span(start, nbytes, what)
        raise DequantError(UNSUPPORTED, f"{what}: constant {locator[:40]!r} is not stored in this file")

    def payload(self, method: str, index: int) -> Any:
        from quantgate.formats.pte import xnnpack

        key = (method, index)
        if key not in self.payloads:
            plan = next((p for p in self.prog.plans if p.name == method), None)
            delegate = plan.delegates[index] if plan is not None and 0 <= index < len(plan.delegates) else None
            if delegate is None or delegate.span is None:
                raise DequantError(UNSUPPORTED, f"delegate {index} of {method} has no payload in the file")
            start, size = delegate.span
            self.payloads[key] = (start, xnnpack.read_payload(memoryview(self.span(start, size, "delegate")),
                                                              base_offset=start))
        return self.payloads[key]

    def scales(self, method: str, index: int, buffer_idx: int, count: int, what: str) -> np.ndarray:
        """A scale table of the blob: fp32, or bf16 when its entry holds 2 bytes a scale (per-group 4-bit)."""
        start, payload = self.payload(method, index)
        entry = next((c for c in payload.constant_data if c.index == buffer_idx), None)
        if entry is None:
            raise DequantError(BROKEN, f"{what}: scale buffer {buffer_idx} is not in the XNNPACK constant data")
        width = 2 if entry.size == count * 2 else 4
        if entry.named:
            raw = self.constant(entry.named_key, count * width, what)
        else:
            raw = self.span(start + payload.constant_data_offset + entry.offset, count * width, what)
        return _floats(raw, "bf16" if width == 2 else "<f4")


def open_weights(path: str) -> WeightSet:
    p = _Program(path)
    ws = WeightSet("pte")
    ws.closers.append(p.close)
    for position, layer in enumerate(p.inventory.layers):
        key = f"#{position}"
        shape = tuple(int(d) for d in layer.shape)
        locator = str(layer.detail.get("constant") or "")
        method = str(layer.detail.get("method") or "forward")
        numel = int(np.prod(shape)) if shape else 0
        try:
            ref = _layer_ref(p, layer.name, key, shape, numel, layer.dtype, locator, method, layer.detail)
        except DequantError as exc:
            ws.problems.append((exc.code, key, f"{layer.name}: {exc.message}"))
            continue
        ws.add(ref)
    return ws


def _layer_ref(p: _Program, name: str, key: str, shape: tuple[int, ...], numel: int, dtype: str, locator: str,
               method: str, detail: dict[str, Any]) -> WeightRef:
    if len(shape) < 2 or not locator:
        raise DequantError(UNSUPPORTED, "no constant weight to read")
    cols = shape[-1]
    if dtype in _FLOAT:
        size = numel * (4 if dtype == "fp32" else 2)
        kind = _FLOAT[dtype]

        def load_float(rows: np.ndarray) -> np.ndarray:
            return _floats(p.constant(locator, size, name), kind).reshape(-1, cols)[rows]

        return WeightRef(name=name, key=key, shape=shape, encoding=dtype, quantized=False, loader=load_float)
    op_name = str(detail.get("op") or "")
    if op_name.startswith(("quantized_decomposed::embedding_byte", "quantized_decomposed::embedding_4bit")) \
            and locator.startswith("buffer "):
        return _portable_embedding(p, name, key, shape, op_name, int(locator.split()[1]), method)
    via = [str(v) for v in detail.get("via") or []]
    if dtype in ("int8", "uint8") and locator.startswith("buffer ") and any("dequantize_per_" in v for v in via):
        return _portable_dequantized(p, name, key, shape, numel, dtype, int(locator.split()[1]), method)
    quant = detail.get("quant") or {}
    match = _DELEGATE.search(name)
    if dtype == "qcint8" and quant.get("scheme") == "per_channel" and match and quant.get("channel_dim", 0) == 0:
        delegate = int(match.group(1))
        count = int(quant.get("num_scales") or 0)
        if count != shape[0]:
            raise DequantError(BROKEN, f"{count} channel scales for {shape[0]} output channels")

        def load_qc8(rows: np.ndarray) -> np.ndarray:
            q = np.asarray(p.constant(locator, numel, name)).view(np.int8).reshape(-1, cols)[rows]
            s = p.scales(method, delegate, int(quant.get("scale_buffer_idx") or 0), count, name)
            return q.astype(np.float32) * s[rows][:, None]

        return WeightRef(name=name, key=key, shape=shape, encoding="int8 per-channel (XNNPACK QC8W)",
                         quantized=True, loader=load_qc8)
    group = int(quant.get("group_size") or 0)
    if dtype == "qbint4" and quant.get("scheme") == "per_channel_group" and match and group > 0 \
            and cols % group == 0 and cols % 2 == 0 and quant.get("channel_dim", 0) == 0:
        delegate = int(match.group(1))
        count = int(quant.get("num_scales") or 0)
        if count != shape[0] * (cols // group):
            raise DequantError(BROKEN, f"{count} group scales for {shape[0]} channels x {cols // group} groups")

        def load_qb4(rows: np.ndarray) -> np.ndarray:
            # two 4-bit codes a byte, low nibble first, stored with a zero point of 8 (uint4)
            raw = np.asarray(p.constant(locator, numel // 2, name)).reshape(-1, cols // 2)[rows]
            q = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(len(rows), cols).astype(np.float32) - 8.0
            s = p.scales(method, delegate, int(quant.get("scale_buffer_idx") or 0), count, name)
            return q * np.repeat(s.reshape(shape[0], -1)[rows], group, axis=1)

        return WeightRef(name=name, key=key, shape=shape, encoding=f"int4 per-group {group} (XNNPACK QB4W)",
                         quantized=True, loader=load_qb4)
    raise DequantError(UNSUPPORTED, f"{dtype} weights ({quant.get('scheme') or detail.get('op')}) are not "
                       "decoded here")


def _portable_dequantized(p: _Program, name: str, key: str, shape: tuple[int, ...], numel: int, dtype: str,
                          buffer: int, method: str) -> WeightRef:
    """A portable int8 constant that a `quantized_decomposed::dequantize_per_channel` (or `_per_tensor`)
    instruction turns into the float weight: its scale and zero-point operands are read from the same
    instruction (constant tensors per channel, or scalar values per tensor)."""
    plan = next((pl for pl in p.prog.plans if pl.name == method), None)
    if plan is None:
        raise DequantError(UNSUPPORTED, f"no execution plan {method!r}")

    def value(index: int) -> Any:
        return plan.values[index] if 0 <= index < len(plan.values) else None

    found = None
    for ins in plan.instructions:
        op = plan.operators[ins.target] if 0 <= ins.target < len(plan.operators) else ""
        source = value(ins.args[0]) if ins.args else None
        if op.startswith("quantized_decomposed::dequantize_per_") and len(ins.args) >= 4 and source is not None \
                and source.tensor is not None and source.tensor.data_buffer_idx == buffer:
            found = (op, ins)
            break
    if found is None:
        raise DequantError(UNSUPPORTED, "the dequantize instruction of this constant could not be read")
    op, ins = found
    cols = shape[-1]
    storage = "i1" if dtype == "int8" else "u1"
    if op.startswith("quantized_decomposed::dequantize_per_tensor"):
        scale, zero = value(ins.args[1]), value(ins.args[2])
        if scale is None or zero is None or scale.number is None or zero.number is None:
            raise DequantError(UNSUPPORTED, "per-tensor scale or zero point is not a constant value")
        s, z = float(scale.number), float(zero.number)

        def load_tensor(rows: np.ndarray) -> np.ndarray:
            q = np.asarray(p.constant(f"buffer {buffer}", numel, name)).view(storage).reshape(-1, cols)[rows]
            return (q.astype(np.float32) - z) * s

        return WeightRef(name=name, key=key, shape=shape, encoding=f"{dtype} per-tensor (portable)",
                         quantized=True, loader=load_tensor)
    scales, zeros, axis = value(ins.args[1]), value(ins.args[2]), value(ins.args[3])
    if scales is None or scales.tensor is None or axis is None or axis.number is None or int(axis.number) != 0:
        raise DequantError(UNSUPPORTED, "per-channel scales are not a constant tensor along axis 0")
    channels = shape[0]

    def table(v: Any, what: str) -> np.ndarray:
        t = v.tensor
        if t.numel != channels or t.data_buffer_idx <= 0:
            raise DequantError(BROKEN, f"{what} of {t.numel} values for {channels} channels")
        kind, width = {"int64": ("<i8", 8), "int32": ("<i4", 4), "fp32": ("<f4", 4), "fp64": ("<f8", 8)}.get(
            t.dtype, ("", 0))
        if not kind:
            raise DequantError(UNSUPPORTED, f"{what} stored as {t.dtype}")
        raw = p.constant(f"buffer {t.data_buffer_idx}", channels * width, name)
        return np.asarray(raw).view(kind).astype(np.float64)

    def load_channel(rows: np.ndarray) -> np.ndarray:
        q = np.asarray(p.constant(f"buffer {buffer}", numel, name)).view(storage).reshape(channels, -1)[rows]
        sc = table(scales, "scales")[rows][:, None]
        zp = table(zeros, "zero points")[rows][:, None] if zeros is not None and zeros.tensor is not None else 0.0
        return ((q.astype(np.float64) - zp) * sc).astype(np.float32).reshape(len(rows), -1)

    return WeightRef(name=name, key=key, shape=shape, encoding=f"{dtype} per-channel (portable)",
                     quantized=True, loader=load_channel)


def _portable_embedding(p: _Program, name: str, key: str, shape: tuple[int, ...], op_name: str, buffer: int,
                        method: str) -> WeightRef:
    """`quantized_decomposed::embedding_byte` / `embedding_4bit`: the table (int8, or two 4-bit codes a byte
    with the high nibble first, stored as q - quant_min), per-row group scales and optional zero points
    are the instruction's operands."""
    plan = next((pl for pl in p.prog.plans if pl.name == method), None)
    if plan is None:
        raise DequantError(UNSUPPORTED, f"no execution plan {method!r}")

    def value(index: int) -> Any:
        return plan.values[index] if 0 <= index < len(plan.values) else None

    ins = next((i for i in plan.instructions if 0 <= i.target < len(plan.operators)
                and plan.operators[i.target].split(".")[0] == op_name.split(".")[0] and len(i.args) >= 5
                and value(i.args[0]) is not None and value(i.args[0]).tensor is not None
                and value(i.args[0]).tensor.data_buffer_idx == buffer), None)
    if ins is None:
        raise DequantError(UNSUPPORTED, "the embedding instruction of this table could not be read")
    table, scales, zeros, qmin = (value(a) for a in ins.args[:4])
    if scales is None or scales.tensor is None or scales.tensor.data_buffer_idx <= 0:
        raise DequantError(UNSUPPORTED, "embedding scales are not a constant tensor")
    rows_n, cols = shape
    four = "4bit" in op_name
    groups = scales.tensor.numel // rows_n if rows_n else 0
    if groups <= 0 or scales.tensor.numel != rows_n * groups or cols % groups:
        raise DequantError(BROKEN, f"{scales.tensor.numel} scales for a [{rows_n}, {cols}] table")
    offset = float(qmin.number) if four and qmin is not None and qmin.number is not None else 0.0
    kinds = {"fp32": ("<f4", 4), "fp16": ("<f2", 2), "bf16": ("bf16", 2)}

    def floats(v: Any, what: str) -> np.ndarray:
        t = v.tensor
        kind, width = kinds.get(t.dtype, ("", 0))
        if not kind:
            raise DequantError(UNSUPPORTED, f"{what} stored as {t.dtype}")
        return _floats(p.constant(f"buffer {t.data_buffer_idx}", t.numel * width, name), kind).reshape(rows_n, -1)

    def load(rows: np.ndarray) -> np.ndarray:
        if four:
            raw = np.asarray(p.constant(f"buffer {buffer}", rows_n * cols // 2, name)).reshape(rows_n, -1)[rows]
            q = np.stack([raw >> 4, raw & 0x0F], axis=-1).reshape(len(rows), cols).astype(np.float32) + offset
        else:
            stored = "i1" if table.tensor.dtype == "int8" else "u1"
            q = np.asarray(p.constant(f"buffer {buffer}", rows_n * cols, name)).view(stored).reshape(rows_n, -1)
            q = q[rows].astype(np.float32)
        if zeros is not None and zeros.tensor is not None and zeros.tensor.data_buffer_idx > 0:
            q = q - np.repeat(floats(zeros, "zero points")[rows], cols // groups, axis=1)
        return q * np.repeat(floats(scales, "scales")[rows], cols // groups, axis=1)

    return WeightRef(name=name, key=key, shape=shape, encoding=f"{'int4' if four else 'int8'} embedding, "
                     f"groups of {cols // groups} (portable)", quantized=True, loader=load)
