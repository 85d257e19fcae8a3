"""GGUF weights as float32: numpy decoders for the common ggml block types, over a memory map.

The block layouts are ggml's (ggml-common.h; gguf-py's quants.py decodes them the same way, and the
tests check every decoder against `gguf.quants.dequantize`):

    Q8_0  d:f16, q:int8[32]                 x = d*q
    Q4_0  d:f16, qs:u8[16]                  x = d*(nibble-8); low nibbles are elements 0..15
    Q4_1  d:f16, m:f16, qs:u8[16]           x = d*nibble + m
    Q5_0  d:f16, qh:u32, qs:u8[16]          x = d*((nibble | bit<<4) - 16)
    Q5_1  d:f16, m:f16, qh:u32, qs:u8[16]   x = d*(nibble | bit<<4) + m
    Q4_K  d, dmin:f16, scales:u8[12], qs[128]            8 sub-blocks of 32, 6-bit scales and mins
    Q5_K  d, dmin:f16, scales:u8[12], qh[32], qs[128]
    Q6_K  ql[128], qh[64], scales:int8[16], d:f16        16 sub-blocks of 16
    Q8_K  d:f32, q:int8[256], bsums:int16[16]            x = d*q
    F32, F16, BF16 (and I8/I16/I32 as plain integers)

Other block types (IQ*, TQ*, MXFP4, Q2_K, Q3_K) fall back to gguf-py's numpy decoder when gguf-py is
installed; otherwise the layer is reported as not dequantized. A tensor's 2-D view is ggml's: rows
of ne0 elements, so `load(rows)` reads only the selected rows' bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quantgate.dequant import BROKEN, UNSUPPORTED, DequantError, WeightRef, WeightSet
from quantgate.formats.gguf import reader

QK_K = 256


def _f16(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.float16).astype(np.float32)


def q8_0(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, :2])
    q = np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)
    return d * q


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """u8[n, 16] -> [n, 32]: low nibbles first (elements 0..15), then high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def q4_0(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, :2])
    return d * (_nibbles(b[:, 2:]).astype(np.float32) - 8.0)


def q4_1(b: np.ndarray) -> np.ndarray:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _nibbles(b[:, 4:]).astype(np.float32) + m


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """u8[n, 4] (a little-endian u32) -> [n, 32] fifth bits: bit j belongs to element j."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=-1, bitorder="little")
    return bits.astype(np.uint8)


def q5_0(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 6:]) | (_high_bits(b[:, 2:6]) << 4)
    return d * (q.astype(np.float32) - 16.0)


def q5_1(b: np.ndarray) -> np.ndarray:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:]) | (_high_bits(b[:, 4:8]) << 4)
    return d * q.astype(np.float32) + m


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes of Q4_K/Q5_K -> eight 6-bit scales and eight 6-bit mins."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def q4_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    qs = b[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 0x0F).reshape(n, 8, 32).astype(np.float32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(n, QK_K)


def q5_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    qh = b[:, 16:48].reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
    qh = (qh & 0x01).reshape(n, 8, 32)
    ql = b[:, 48:].reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    ql = (ql & 0x0F).reshape(n, 8, 32)
    q = (ql | (qh << 4)).astype(np.float32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(n, QK_K)


def q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    low = ql.reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    low = (low & 0x0F).reshape(n, 8, 32)
    high = qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    high = (high & 0x03).reshape(n, 8, 32)
    q = ((low | (high << 4)).astype(np.int16) - 32).reshape(n, 16, 16).astype(np.float32)
    return ((d * scales)[:, :, None] * q).reshape(n, QK_K)


def q8_k(b: np.ndarray) -> np.ndarray:
    d = np.ascontiguousarray(b[:, :4]).view(np.float32)
    q = np.ascontiguousarray(b[:, 4:260]).view(np.int8).astype(np.float32)
    return d * q


def _plain(dtype: str) -> Callable[[np.ndarray], np.ndarray]:
    def decode(b: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(b)
        if dtype == "bf16":
            wide = raw.view(np.uint16).astype(np.uint32) << 16
            return wide.view(np.float32)
        return raw.view(dtype).astype(np.float32)

    return decode


# ggml type name -> decoder of uint8 blocks [n, type_size] -> float32 [n, block]
DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "F32": _plain("<f4"),
    "F16": _plain("<f2"),
    "BF16": _plain("bf16"),
    "I8": _plain("i1"),
    "I16": _plain("<i2"),
    "I32": _plain("<i4"),
    "Q8_0": q8_0,
    "Q4_0": q4_0,
    "Q4_1": q4_1,
    "Q5_0": q5_0,
    "Q5_1": q5_1,
    "Q4_K": q4_k,
    "Q5_K": q5_k,
    "Q6_K": q6_k,
    "Q8_K": q8_k,
}


def _fallback(type_name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """gguf-py's numpy decoder for the block types decoded nowhere else (IQ*, TQ*, MXFP4...)."""
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except Exception:  # gguf-py absent or broken: the layer is reported as not dequantized
        return None
    try:
        qtype = GGMLQuantizationType[type_name]
    except KeyError:
        return None

    def decode(b: np.ndarray) -> np.ndarray:
        return np.asarray(dequantize(np.ascontiguousarray(b), qtype), dtype=np.float32).reshape(b.shape[0], -1)

    return decode


def decoder_for(type_name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    return DECODERS.get(type_name) or _fallback(type_name)


def open_weights(path: str) -> WeightSet:
    gf = reader.parse(path)
    ws = WeightSet("gguf")
    if gf.data_start is None or not gf.complete:
        raise DequantError(BROKEN, "the GGUF header could not be read")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    ws.closers.append(lambda: getattr(mm, "_mmap", None) and mm._mmap.close())
    ws.facts["architecture"] = gf.kvs["general.architecture"].value if "general.architecture" in gf.kvs else None
    for t in gf.tensors:
        if len(t.ne) < 2 or t.gtype is None or t.nbytes is None:
            continue
        g = t.gtype
        shape = tuple(reversed(t.ne))
        decode = decoder_for(g.name)
        if decode is None:
            ws.problems.append((UNSUPPORTED, t.name, f"{t.name}: ggml type {g.name} has no decoder here "
                                "(install gguf-py for IQ*/TQ*/MXFP4 types)"))
            continue
        start = gf.data_start + t.offset
        if start + t.nbytes > len(mm) or t.ne[0] % g.block:
            ws.problems.append((BROKEN, t.name, f"{t.name}: data runs past the end of the file"))
            continue
        row_bytes = t.ne[0] // g.block * g.size
        ws.add(WeightRef(
            name=t.name, shape=shape, encoding=g.name, quantized=g.quantized,
            loader=_row_loader(mm, start, row_bytes, g.size, g.block, t.ne[0], decode),
        ))
    ws.facts["tensors"] = len(ws.weights)
    return ws


def _row_loader(mm: np.memmap, start: int, row_bytes: int, size: int, block: int, cols: int,
                decode: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def load(rows: np.ndarray) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, cols), np.float32)
        first, last = int(rows[0]), int(rows[-1])
        if last - first + 1 == len(rows):  # a run of rows: a view of the map, no copy
            picked = np.asarray(mm[start + first * row_bytes:start + (last + 1) * row_bytes]).reshape(-1, row_bytes)
        else:  # sampled rows: copies only the selected rows' bytes
            picked = np.asarray(mm[start:start + (int(rows.max()) + 1) * row_bytes].reshape(-1, row_bytes)[rows])
        with np.errstate(all="ignore"):
            out = decode(picked.reshape(-1, size))
        return out.reshape(len(rows), cols)

    return load
