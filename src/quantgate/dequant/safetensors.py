"""safetensors weights as float32: plain floats and the quantized layouts the reader recognises.

Each weight comes back in its logical [out, in] shape, keyed `<module>.weight`:

* plain F32/F16/BF16/F64 tensors;
* compressed-tensors `int-quantized` (I8 `weight` + `weight_scale` per tensor, channel or group, optional
  `weight_zero_point`): x = (q - zp) * scale;
* compressed-tensors `float-quantized` (F8_E4M3/F8_E5M2 `weight` + `weight_scale`): x = f8 * scale;
* compressed-tensors `pack-quantized` (I32 `weight_packed`, values packed densely from bit 0 of each
  little-endian word with an offset of 2^(bits-1), `weight_scale` [out, groups], optional
  `weight_zero_point` packed the same way along the output dim, `weight_shape`): x = (q - zp) * scale;
* GPTQ (I32 `qweight` [in*bits/32, out] packed along the input, `qzeros` [groups, out*bits/32] stored
  minus one unless `checkpoint_format` is gptq_v2, `scales` [groups, out], `g_idx` [in]):
  x[o, i] = scales[g, o] * (q - (z + 1)), g = g_idx[i];
* AWQ GEMM (I32 `qweight` [in, out/8], nibble k of a word holding output 8j + (0,2,4,6,1,3,5,7)[k], `qzeros`
  packed the same way, `scales` [groups, out]): x = scales * (q - z);
* compressed-tensors `nvfp4-pack-quantized` (U8 `weight_packed`, two E2M1 codes a byte, low nibble
  first; fp8 `weight_scale` per 16 inputs; F32 `weight_global_scale`): x = fp4 * scale / global_scale;
* bitsandbytes int8 (I8 `weight` + F32 `SCB` [out]): x = q * SCB / 127.
* MLX affine (`mlx.nn.quantize`: U32 `weight` [..., out, in*bits/32], values packed densely from bit 0
  of each little-endian word; `scales` and `biases` [..., out, in/group_size]): x = scale * q + bias;
  group_size from config.json `quantization` (per-module entries first), else mlx's default 64.

* bitsandbytes 4-bit NF4/FP4 (U8 codes, high nibble first; `quant_map`; block `absmax`, double-quantized
  through `nested_quant_map`/`nested_absmax`/`nested_offset`): x = quant_map[code] * absmax[block].

* MLX mxfp4 / nvfp4 / mxfp8 (U32 `weight` of E2M1 or E4M3 codes, U8 `scales` per 32 or, nvfp4, 16
  values, no biases): x = code * scale, E8M0 scales (2^(s-127)), E4M3 for nvfp4.
* HQQ (`W_q` U8 [out*in/group/(8/nbits), group], the grouped rows packed along the first dim, the first
  rows in the high bits; `scale`, `zero` [out*in/group, 1]; `shape`, `nbits`, `axis`, `packing`):
  x = (q - zero) * scale, axis 1 and the u8 packings (1, 2, 4, 8 bits);
* optimum-quanto qint8/qfloat8 (`weight._data` I8/F8 [out, in], `weight._scale` [out, 1]): x = q * scale.

optimum-quanto's packed qint4/qint2 (stored grouped [out*in/group, group]: the [out, in] is not in the
file), modules of an unknown layout and MXFP4 blocks are reported as not dequantized.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from quantgate.dequant import BROKEN, UNSUPPORTED, DequantError, WeightRef, WeightSet
from quantgate.formats.safetensors import layouts, reader
from quantgate.formats.wire.binary import mapped

_NP = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "U8": "u1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
       "U16": "<u2", "U32": "<u4"}
FLOATS = ("F32", "F16", "BF16", "F64")


def _fp8_table(exp_bits: int, man_bits: int, fn: bool) -> np.ndarray:
    """float32 value of every fp8 byte (E4M3FN: no Inf, 0x7F/0xFF NaN; E5M2: IEEE-like)."""
    bias = (1 << (exp_bits - 1)) - 1
    out = np.empty(256, np.float32)
    for byte in range(256):
        sign = -1.0 if byte & 0x80 else 1.0
        exp = (byte >> man_bits) & ((1 << exp_bits) - 1)
        man = byte & ((1 << man_bits) - 1)
        if fn and exp == (1 << exp_bits) - 1 and man == (1 << man_bits) - 1:
            out[byte] = np.nan
        elif not fn and exp == (1 << exp_bits) - 1:
            out[byte] = sign * np.inf if man == 0 else np.nan
        elif exp == 0:
            out[byte] = sign * (man / (1 << man_bits)) * 2.0 ** (1 - bias)
        else:
            out[byte] = sign * (1 + man / (1 << man_bits)) * 2.0 ** (exp - bias)
    return out


FP8 = {"F8_E4M3": _fp8_table(4, 3, True), "F8_E5M2": _fp8_table(5, 2, False)}


class _File:
    """Typed, bounded views of one file's tensors over a memory map."""

    def __init__(self, path: str, head: Any):
        self.head = head
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")

    def raw(self, t: Any) -> np.ndarray:
        start = self.head.data_start + t.begin
        end = self.head.data_start + t.end
        if end > len(self.mm) or start > end:
            raise DequantError(BROKEN, f"{t.name}: data runs past the end of the file")
        return self.mm[start:end]

    def array(self, t: Any) -> np.ndarray:
        """The stored values with their stored dtype and shape (BF16 and FP8 as float32 on access)."""
        raw = self.raw(t)
        if t.dtype in _NP:
            return raw.view(_NP[t.dtype]).reshape(t.shape)
        if t.dtype == "BF16":
            return raw.view("<u2").reshape(t.shape)
        if t.dtype in FP8:
            return raw.reshape(t.shape)
        raise DequantError(UNSUPPORTED, f"{t.name}: dtype {t.dtype} is not decoded here")


def _to_float(dtype: str, values: np.ndarray) -> np.ndarray:
    if dtype == "BF16":
        return (np.asarray(values).astype(np.uint32) << 16).view(np.float32)
    if dtype in FP8:
        return FP8[dtype][np.asarray(values)]
    return np.asarray(values).astype(np.float32)


def _unpack_dense(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """int32 words [..., W] -> unsigned values [..., count]: element i at bits [i*bits, (i+1)*bits)."""
    raw = np.ascontiguousarray(words).astype("<i4").view(np.uint8).reshape(*words.shape[:-1], -1)
    bitsarr = np.unpackbits(raw, axis=-1, bitorder="little")[..., : count * bits]
    bitsarr = bitsarr.reshape(*words.shape[:-1], count, bits).astype(np.int32)
    return (bitsarr << np.arange(bits, dtype=np.int32)).sum(axis=-1)


def _broadcast_scale(scale: np.ndarray, rows: np.ndarray, cols: int, name: str) -> np.ndarray:
    """A scale of [1], [out], [out, 1] or [out, groups] for the selected rows -> [len(rows), cols]."""
    s = np.asarray(scale, dtype=np.float32)
    if s.size == 1:
        return np.full((len(rows), cols), s.reshape(-1)[0], np.float32)
    if s.ndim == 1:
        s = s.reshape(-1, 1)
    picked = s[rows]
    groups = picked.shape[1]
    if groups == 1:
        return np.broadcast_to(picked, (len(rows), cols))
    if cols % groups:
        raise DequantError(BROKEN, f"{name}: {groups} scale groups do not divide {cols} columns")
    return np.repeat(picked, cols // groups, axis=1)


def open_weights(path: str) -> WeightSet:
    with mapped(path) as view:
        head = reader.parse_header(view)
    if not head.sound:
        raise DequantError(BROKEN, "the safetensors header is not sound")
    ws = WeightSet("safetensors")
    f = _File(path, head)
    ws.closers.append(lambda: getattr(f.mm, "_mmap", None) and f.mm._mmap.close())
    semantic: list[Any] = []
    qc = layouts.load_quant_config(os.path.dirname(os.path.abspath(path)), semantic)
    spec = layouts.spec_from_config(qc) if qc else None
    modules: dict[str, dict[str, Any]] = {}
    loose = []
    for t in head.tensors.values():
        module, role = layouts.split_name(t.name)
        if role is None:
            loose.append(t)
        else:
            modules.setdefault(module, {})[role] = t
    for module, parts in modules.items():
        name = module + ".weight"
        try:
            ref = _module_ref(f, module, parts, qc or {}, spec)
        except DequantError as exc:
            ws.problems.append((exc.code, name, exc.message))
            continue
        if ref is not None:
            ws.add(ref)
    # modules of a layout no reader decodes (HQQ, EXL2...): their float companions are no weights
    strange = layouts.unknown_groups(loose, {t.name for t in loose})
    for module, group in strange.items():
        hqq = layouts.hqq_parts(module, group)
        try:
            if hqq is None:
                raise DequantError(UNSUPPORTED, f"{module}: integer tensors in a layout quantgate does not decode "
                                   "(ST_UNKNOWN_LAYOUT)")
            ws.add(_hqq(f, module, hqq))
        except DequantError as exc:
            ws.problems.append((exc.code, module + ".weight", exc.message))
    for t in loose:
        if len(t.shape) >= 2 and t.dtype in FLOATS and t.name.rpartition(".")[0] not in strange:
            ws.add(_plain(f, t.name, t))
    return ws


def _plain(f: _File, name: str, t: Any) -> WeightRef:
    shape = tuple(t.shape)
    cols = shape[-1]

    def load(rows: np.ndarray) -> np.ndarray:
        table = f.array(t).reshape(-1, cols)
        return _to_float(t.dtype, table[rows])

    return WeightRef(name=name, shape=shape, encoding=t.dtype, quantized=False, loader=load)


def _module_ref(f: _File, module: str, parts: dict[str, Any], qc: dict[str, Any], spec: Any) -> WeightRef | None:
    name = module + ".weight"
    if "qweight" in parts:
        if str(qc.get("checkpoint_format", "")).lower() == "marlin" or qc.get("is_marlin_format") is True:
            raise DequantError(UNSUPPORTED, f"{name}: a GPTQ qweight repacked for Marlin is not decoded here")
        return _gptq_awq(f, name, parts, qc, spec)
    if "packed" in parts:
        return _ct_packed(f, name, parts)
    if "quanto_data" in parts or "quanto_packed" in parts:
        return _quanto(f, name, parts)
    weight = parts.get("weight")
    if weight is None or len(weight.shape) < 2:
        return None
    if "bnb_state" in parts or "bnb_absmax" in parts:
        return _bnb4(f, name, parts)
    if weight.dtype == "U32" and "scales" in parts:
        return _mlx(f, module, parts, spec)
    if weight.dtype in FLOATS:
        return _plain(f, name, weight)
    shape = tuple(weight.shape)
    cols = shape[-1]
    if weight.dtype == "I8" and "bnb_scb" in parts:
        scb = parts["bnb_scb"]

        def load_bnb(rows: np.ndarray) -> np.ndarray:
            q = f.array(weight).reshape(-1, cols)[rows].astype(np.float32)
            s = _to_float(scb.dtype, f.array(scb)).reshape(-1)
            return q * (s[rows] / 127.0)[:, None]

        return WeightRef(name, shape, "int8 (bitsandbytes SCB)", True, load_bnb)
    scale = parts.get("scale")
    if scale is None:
        raise DequantError(BROKEN, f"{name}: {weight.dtype} weight without a weight_scale")
    zp = parts.get("zero_point")
    if weight.dtype not in ("I8", "U8", *FP8):
        raise DequantError(UNSUPPORTED, f"{name}: {weight.dtype} weight with a scale is not decoded here")

    def load(rows: np.ndarray) -> np.ndarray:
        q = _to_float(weight.dtype, f.array(weight).reshape(-1, cols)[rows])
        s = _broadcast_scale(_to_float(scale.dtype, f.array(scale)), rows, cols, name)
        if zp is not None:
            z = _broadcast_scale(_to_float(zp.dtype, f.array(zp)), rows, cols, name)
            q = q - z
        return q * s

    kind = "fp8" if weight.dtype in FP8 else "int8"
    return WeightRef(name, shape, f"{kind} ({weight.dtype} + {list(scale.shape)} scale)", True, load)


BNB_STATE_LIMIT = 64 << 10


def _bnb4(f: _File, name: str, parts: dict[str, Any]) -> WeightRef:
    """bitsandbytes 4-bit (NF4/FP4) as transformers saves it: U8 `weight` with two codes a byte, the
    high nibble first, over the flattened weight; `quant_map` (the 16 code values); `absmax` per block of
    `blocksize` values, itself quantized (U8 codes through `nested_quant_map`, times `nested_absmax` per
    `nested_blocksize` blocks, plus `nested_offset`) under double quantization; the shape in the
    quant_state JSON."""
    from quantgate.core import jsonfile

    weight, state, absmax, qmap = (parts.get(r) for r in ("weight", "bnb_state", "bnb_absmax", "bnb_quant_map"))
    if state is None or absmax is None or qmap is None or weight.dtype != "U8":
        raise DequantError(UNSUPPORTED, f"{name}: bitsandbytes 4-bit without its quant_state, absmax and "
                           "quant_map (or not U8 storage) is not decoded here")
    if state.nbytes > BNB_STATE_LIMIT:
        raise DequantError(BROKEN, f"{name}: the quant_state blob is {state.nbytes:,} bytes")
    try:
        info = jsonfile.loads(bytes(np.asarray(f.raw(state))).decode("utf-8"), allow_nan=True)
        shape = tuple(int(d) for d in info["shape"])
        blocksize = int(info["blocksize"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DequantError(BROKEN, f"{name}: unreadable quant_state ({exc})") from None
    numel = int(np.prod(shape)) if shape else 0
    if len(shape) != 2 or blocksize <= 0 or numel != 2 * weight.numel or shape[1] % 2:
        raise DequantError(BROKEN, f"{name}: quant_state shape {list(shape)} does not fit {weight.numel} bytes")
    cols = shape[1]
    nested = parts.get("bnb_nested_absmax"), parts.get("bnb_nested_quant_map")

    def absmax_values() -> np.ndarray:
        if absmax.dtype == "U8":
            if nested[0] is None or nested[1] is None:
                raise DequantError(BROKEN, f"{name}: U8 absmax without nested_absmax / nested_quant_map")
            codes = np.asarray(f.array(absmax)).reshape(-1)
            nblock = int(info.get("nested_blocksize", 256))
            outer = _to_float(nested[0].dtype, f.array(nested[0])).reshape(-1)
            table = _to_float(nested[1].dtype, f.array(nested[1])).reshape(-1)
            index = np.arange(codes.size) // max(1, nblock)
            if table.size < 256 or index.max(initial=0) >= outer.size:
                raise DequantError(BROKEN, f"{name}: nested absmax tables do not cover {codes.size} blocks")
            return table[codes] * outer[index] + float(info.get("nested_offset", 0.0))
        return _to_float(absmax.dtype, f.array(absmax)).reshape(-1)

    def load(rows: np.ndarray) -> np.ndarray:
        packed = np.asarray(f.array(weight)).reshape(shape[0], cols // 2)[rows]
        codes = np.stack([packed >> 4, packed & 0x0F], axis=-1).reshape(len(rows), cols)
        table = _to_float(qmap.dtype, f.array(qmap)).reshape(-1)
        scales = absmax_values()
        block = (rows[:, None] * cols + np.arange(cols)[None, :]) // blocksize
        if table.size < 16 or block.max(initial=0) >= scales.size:
            raise DequantError(BROKEN, f"{name}: absmax or quant_map too short for {list(shape)}")
        return table[codes] * scales[block]

    return WeightRef(name, shape, f"{info.get('quant_type', '4-bit')} (bitsandbytes, block {blocksize})", True, load)


def _read_shape(f: _File, t: Any | None) -> tuple[int, ...] | None:
    if t is None or t.dtype not in ("I64", "I32") or len(t.shape) != 1 or not 1 <= t.numel <= 8:
        return None
    return tuple(int(x) for x in f.array(t))


def _ct_packed(f: _File, name: str, parts: dict[str, Any]) -> WeightRef:
    packed = parts["packed"]
    scale, zp = parts.get("scale"), parts.get("zero_point")
    if packed.dtype == "U8" and len(packed.shape) == 2 and scale is not None:
        return _ct_nvfp4(f, name, parts)
    if packed.dtype != "I32" or len(packed.shape) != 2:
        raise DequantError(UNSUPPORTED, f"{name}: {packed.dtype} weight_packed is not decoded here")
    if scale is None:
        raise DequantError(BROKEN, f"{name}: weight_packed without weight_scale")
    shape = _read_shape(f, parts.get("weight_shape")) or None
    out_f = packed.shape[0]
    if shape is None or len(shape) != 2 or shape[0] != out_f or not packed.shape[1]:
        raise DequantError(BROKEN, f"{name}: weight_shape is missing or does not fit {list(packed.shape)}")
    in_f = shape[1]
    bits = next((b for b in (4, 8, 2, 3, 5, 6, 7, 1) if -(-in_f * b // 32) == packed.shape[1]), None)
    if bits is None:
        raise DequantError(BROKEN, f"{name}: {list(packed.shape)} packs no whole bit width for {in_f} inputs")
    offset = 1 << (bits - 1)

    def load(rows: np.ndarray) -> np.ndarray:
        q = _unpack_dense(np.asarray(f.array(packed)[rows]), bits, in_f) - offset
        s = _broadcast_scale(_to_float(scale.dtype, f.array(scale)), rows, in_f, name)
        x = q.astype(np.float32)
        if zp is not None:
            groups = zp.shape[1] if len(zp.shape) == 2 else 1
            zall = _unpack_dense(np.asarray(f.array(zp)).reshape(-1, groups).T, bits, out_f) - offset  # [groups, out]
            x = x - _broadcast_scale(zall.T.astype(np.float32), rows, in_f, name)
        return x * s

    return WeightRef(name, (out_f, in_f), f"int{bits} packed (compressed-tensors)", True, load)


E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def _ct_nvfp4(f: _File, name: str, parts: dict[str, Any]) -> WeightRef:
    """compressed-tensors `nvfp4-pack-quantized`: two FP4 (E2M1) codes a byte, low nibble first; an fp8
    scale per group of 16 along the input, divided by the F32 `weight_global_scale`."""
    packed, scale, gscale = parts["packed"], parts["scale"], parts.get("global_scale")
    out_f, in_f = packed.shape[0], packed.shape[1] * 2
    shape = _read_shape(f, parts.get("weight_shape"))
    if shape is not None and (len(shape) != 2 or shape[0] != out_f or not in_f - 1 <= shape[1] <= in_f):
        raise DequantError(BROKEN, f"{name}: weight_shape {list(shape)} does not fit {list(packed.shape)} U8")
    cols = shape[1] if shape else in_f

    def load(rows: np.ndarray) -> np.ndarray:
        b = np.asarray(f.array(packed)[rows])
        codes = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(len(rows), -1)[:, :cols]
        s = _to_float(scale.dtype, f.array(scale))
        if gscale is not None:
            s = s / _to_float(gscale.dtype, f.array(gscale)).reshape(-1)[0]
        return E2M1[codes] * _broadcast_scale(s, rows, cols, name)

    return WeightRef(name, (out_f, cols), "fp4 E2M1 (NVFP4, compressed-tensors)", True, load)


def _gptq_awq(f: _File, name: str, parts: dict[str, Any], qc: dict[str, Any], spec: Any) -> WeightRef:
    qweight, scales, qzeros, g_idx = parts["qweight"], parts.get("scales"), parts.get("qzeros"), parts.get("g_idx")
    if qweight.dtype != "I32" or len(qweight.shape) != 2 or scales is None or len(scales.shape) != 2:
        raise DequantError(BROKEN, f"{name}: qweight/scales are missing or not 2-D I32")
    rows_q, cols_q = qweight.shape
    bits = int(qc.get("bits") or qc.get("w_bit") or 4)
    if g_idx is not None or scales.shape[1] == cols_q:
        layout, in_f, out_f = "gptq", rows_q * 32 // bits, cols_q
    else:
        layout, in_f, out_f = "awq", rows_q, cols_q * 32 // bits
    if bits != 4 and layout == "awq":
        raise DequantError(UNSUPPORTED, f"{name}: AWQ with {bits} bits is not decoded here")
    groups = scales.shape[0]
    if scales.shape[1] != out_f or not groups or in_f % groups:
        raise DequantError(BROKEN, f"{name}: scales {list(scales.shape)} do not fit [{in_f} in, {out_f} out]")
    group = in_f // groups
    v2 = str(qc.get("checkpoint_format", "")).lower() == "gptq_v2"
    mask = (1 << bits) - 1
    order = np.array([0, 2, 4, 6, 1, 3, 5, 7])

    def zeros_all() -> np.ndarray:  # [groups, out]
        if qzeros is None:
            return np.full((groups, out_f), 1 << (bits - 1), np.int64) - (0 if layout == "awq" or v2 else 1)
        z = np.asarray(f.array(qzeros)).astype(np.int64) & 0xFFFFFFFF
        per = 32 // bits
        if layout == "gptq":
            vals = np.stack([(z >> (bits * j)) & mask for j in range(per)], axis=-1).reshape(groups, -1)
        else:
            vals = np.empty((groups, z.shape[1] * 8), np.int64)
            for k in range(8):
                vals[:, order[k]::8] = (z >> (4 * k)) & 0xF
        return vals[:, :out_f]

    def gidx() -> np.ndarray:
        if g_idx is not None and layout == "gptq":
            g = np.asarray(f.array(g_idx)).astype(np.int64).reshape(-1)
            if g.size != in_f or g.min(initial=0) < 0 or g.max(initial=0) >= groups:
                raise DequantError(BROKEN, f"{name}: g_idx does not index the {groups} scale groups")
            return g
        return np.arange(in_f) // group

    def load(rows: np.ndarray) -> np.ndarray:
        stored = f.array(qweight)
        if layout == "gptq":
            cols = np.asarray(stored[:, rows]).astype(np.int64) & 0xFFFFFFFF  # [in*bits/32, n]: only these
            per = 32 // bits
            q = np.stack([(cols >> (bits * j)) & mask for j in range(per)], axis=1).reshape(in_f, len(rows))
        else:
            q = np.empty((in_f, len(rows)), np.int64)
            word, nib = rows // 8, np.argsort(order)[rows % 8]
            q[:] = (np.asarray(stored[:, word]).astype(np.int64) & 0xFFFFFFFF) >> (4 * nib) & 0xF
        g = gidx()
        z = zeros_all()[:, rows] + (0 if layout == "awq" or v2 else 1)  # [groups, n]
        s = _to_float(scales.dtype, f.array(scales))[:, rows]  # [groups, n]
        x = (q - z[g]).astype(np.float32) * s[g]
        return x.T

    return WeightRef(name, (out_f, in_f), f"int{bits} {layout.upper()}", True, load)


def _mlx_microscaled(f: _File, name: str, weight: Any, scales: Any, lead: tuple[int, ...], words: int,
                     groups: int) -> WeightRef:
    """MLX mxfp4 / nvfp4 / mxfp8: E2M1 (4-bit) or E4M3 (8-bit) codes packed from bit 0 of each U32 word,
    one U8 scale per 32 (nvfp4: 16) values: E8M0 (2^(s-127)) for the mx modes, E4M3 for nvfp4."""
    fits = scales.dtype == "U8" and groups and words % groups == 0
    mode = layouts.MLX_FP_MODES.get(words // groups) if fits else None
    if mode is None or tuple(scales.shape[:-1]) != lead:
        raise DequantError(BROKEN, f"{name}: U32 weight {list(weight.shape)} with {scales.dtype} scales "
                           f"{list(scales.shape)} and no biases is none of MLX's mxfp4, nvfp4, mxfp8")
    gs, bits = layouts.MLX_MODE_DEFAULTS[mode]
    in_f = groups * gs
    table = E2M1 if bits == 4 else FP8["F8_E4M3"]
    e8m0 = np.where(np.arange(256) == 255, np.nan, np.exp2(np.arange(256, dtype=np.float64) - 127)).astype(np.float32)
    scale_table = FP8["F8_E4M3"] if mode == "nvfp4" else e8m0

    def load(rows: np.ndarray) -> np.ndarray:
        codes = _unpack_dense(np.asarray(f.array(weight)).reshape(-1, words)[rows], bits, in_f)
        s = scale_table[np.asarray(f.array(scales)).reshape(-1, groups)[rows]]
        return table[codes] * np.repeat(s, gs, axis=1)

    return WeightRef(name, (*lead, in_f), f"{mode} (MLX)", True, load)


def _mlx(f: _File, module: str, parts: dict[str, Any], spec: Any) -> WeightRef:
    """MLX affine: x = scales * q + biases, a scale and a bias per group_size inputs along each row."""
    name = module + ".weight"
    weight, scales, biases = parts["weight"], parts["scales"], parts.get("biases")
    lead = tuple(weight.shape[:-1])
    words, groups = weight.shape[-1], scales.shape[-1] if scales.shape else 0
    if biases is None:
        return _mlx_microscaled(f, name, weight, scales, lead, words, groups)
    if tuple(scales.shape[:-1]) != lead or tuple(biases.shape) != tuple(scales.shape) or not groups:
        raise DequantError(BROKEN, f"{name}: scales {list(scales.shape)} / biases {list(biases.shape)} do not fit "
                           f"the U32 weight {list(weight.shape)}")
    mine = spec.for_module(module, "") if spec is not None and spec.method == "mlx" else None
    sizes = (mine.group_size,) if mine is not None and mine.group_size else layouts.MLX_AFFINE_GROUPS
    gs = next((g for g in sizes if (32 * words) % (groups * g) == 0
               and 32 * words // (groups * g) in layouts.MLX_AFFINE_BITS), None)
    if gs is None:
        raise DequantError(BROKEN, f"{name}: {words} words over {groups} groups is no whole bit width at "
                           f"group size {'/'.join(map(str, sizes))}")
    bits = 32 * words // (groups * gs)
    in_f = groups * gs

    def load(rows: np.ndarray) -> np.ndarray:
        q = _unpack_dense(np.asarray(f.array(weight)).reshape(-1, words)[rows], bits, in_f).astype(np.float32)
        s = _to_float(scales.dtype, np.asarray(f.array(scales)).reshape(-1, groups)[rows])
        b = _to_float(biases.dtype, np.asarray(f.array(biases)).reshape(-1, groups)[rows])
        return q * np.repeat(s, gs, axis=1) + np.repeat(b, gs, axis=1)

    return WeightRef(name, (*lead, in_f), f"int{bits} affine (MLX, group {gs})", True, load)


def _quanto(f: _File, name: str, parts: dict[str, Any]) -> WeightRef:
    """optimum-quanto qint8/qfloat8: `weight._data` [out, in] times `weight._scale` [out, 1]."""
    data, scale = parts.get("quanto_data"), parts.get("quanto_scale")
    if data is None or "quanto_packed" in parts:
        raise DequantError(UNSUPPORTED, f"{name}: optimum-quanto packed qint4/qint2 is stored grouped [out*in/group, "
                           "group] without the [out, in] shape: not decoded here")
    if scale is None or len(data.shape) != 2 or data.dtype not in ("I8", *FP8) or scale.numel not in (1, data.shape[0]):
        raise DequantError(BROKEN, f"{name}: quanto weight._data {data.dtype} {list(data.shape)} without a "
                           "weight._scale is not decodable")
    cols = data.shape[1]

    def load(rows: np.ndarray) -> np.ndarray:
        q = _to_float(data.dtype, f.array(data)[rows])
        return q * _broadcast_scale(_to_float(scale.dtype, f.array(scale)), rows, cols, name)

    return WeightRef(name, tuple(data.shape), f"{'int8' if data.dtype == 'I8' else 'fp8'} (optimum-quanto)", True, load)


HQQ_PACKINGS = {"8bit_u8": 8, "4bit_u8": 4, "2bit_u8": 2, "1bit_u8": 1}


def _hqq(f: _File, module: str, parts: dict[str, Any]) -> WeightRef:
    """HQQ axis-1 u8 packings: grouped row g (of out*in/group) sits in packed row g % step, at the
    (g // step)-th nbits field from the top of the byte; x = (q - zero) * scale per grouped row."""
    name = module + ".weight"

    def small(key: str, limit: int = 64) -> np.ndarray | None:
        t = parts.get(key)
        if t is None or t.nbytes > limit:
            return None
        return np.asarray(f.array(t)).reshape(-1)

    wq, scale, zero = parts["W_q"], parts["scale"], parts["zero"]
    shape_v, nbits_v, axis_v, packing_v = small("shape"), small("nbits"), small("axis"), small("packing")
    packing = bytes(packing_v.astype(np.uint8)).decode("ascii", "replace") if packing_v is not None else ""
    if shape_v is None or shape_v.size != 2 or nbits_v is None or nbits_v.size != 1:
        raise DequantError(BROKEN, f"{name}: HQQ shape / nbits tensors are unreadable")
    out_f, in_f = (int(x) for x in shape_v)
    nbits = int(nbits_v[0])
    axis = int(axis_v[0]) if axis_v is not None and axis_v.size == 1 else 1
    if HQQ_PACKINGS.get(packing) != nbits or axis != 1 or wq.dtype != "U8" or len(wq.shape) != 2:
        raise DequantError(UNSUPPORTED, f"{name}: HQQ packing {packing!r} ({nbits} bits, axis {axis}, W_q "
                           f"{wq.dtype}) is not decoded here")
    step, group = wq.shape
    per = 8 // nbits
    if out_f <= 0 or in_f <= 0 or not group or in_f % group or out_f * in_f != step * per * group \
            or scale.numel != out_f * in_f // group or zero.numel != scale.numel:
        raise DequantError(BROKEN, f"{name}: HQQ W_q {list(wq.shape)}, scale {list(scale.shape)} do not fit "
                           f"shape [{out_f}, {in_f}] at {nbits} bits")
    k = in_f // group  # grouped rows per output row
    mask = (1 << nbits) - 1

    def load(rows: np.ndarray) -> np.ndarray:
        g = (rows[:, None] * k + np.arange(k)[None, :]).reshape(-1)
        packed = np.asarray(f.array(wq))[g % step].astype(np.int32)
        shift = (8 - nbits * (g // step + 1))[:, None]
        q = ((packed >> shift) & mask).astype(np.float32)
        s = _to_float(scale.dtype, np.asarray(f.array(scale)).reshape(-1)[g])[:, None]
        z = _to_float(zero.dtype, np.asarray(f.array(zero)).reshape(-1)[g])[:, None]
        return ((q - z) * s).reshape(len(rows), in_f)

    return WeightRef(name, (out_f, in_f), f"int{nbits} HQQ (group {group})", True, load)
