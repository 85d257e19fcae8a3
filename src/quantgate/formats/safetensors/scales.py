"""Opt-in scan of quantization scale values in a safetensors file (`--param scan_scales=1`).

Structure never needs tensor data, but a NaN, infinite or zero scale makes a quantized weight
decode to garbage or to zeros while every shape checks out, and neither the reference reader nor
the quantization libraries check them (docs/formats.md#safetensors-safetensors-dtypes). Scales are
small (about 1/128 of the weights they scale), and the scan reads at most `limit` bytes of them, first
tensors first, so its cost stays bounded on any file.
"""

from __future__ import annotations

import math
import struct
from array import array
from typing import Any

from quantgate.core import findings as F
from quantgate.core.findings import Finding
from quantgate.formats.safetensors.header import parse_header
from quantgate.formats.safetensors.layouts import split_name
from quantgate.formats.wire.binary import mapped

SCALE_ROLES = {"scale", "scales", "bnb_scb", "global_scale", "bnb_absmax", "bnb_nested_absmax", "quanto_scale"}
DEFAULT_LIMIT = 64 << 20


def _floats(dtype: str, raw: bytes) -> list[float] | None:
    """Decode the dtypes scales come in; None for ones this scan does not read."""
    if dtype == "F32":
        values = array("f")
        values.frombytes(raw)
        return values.tolist()
    if dtype == "F16":
        return [v[0] for v in struct.iter_unpack("<e", raw)]
    if dtype == "BF16":
        halves = array("H")
        halves.frombytes(raw)
        widened = array("I", (h << 16 for h in halves))
        values = array("f")
        values.frombytes(widened.tobytes())
        return values.tolist()
    return None


def _f8_flags(dtype: str, raw: bytes) -> tuple[int, int]:
    """(non-finite, zero) counts of an 8-bit float scale tensor without decoding it."""
    if dtype == "F8_E4M3":  # e4m3fn: NaN is S.1111.111, no infinities
        return sum(1 for b in raw if b & 0x7F == 0x7F), sum(1 for b in raw if b & 0x7F == 0)
    if dtype == "F8_E8M0":  # exponent-only (MX scales): 0xFF is NaN, no zero
        return raw.count(0xFF), 0
    return 0, 0


def scan_scales(path: str, limit: int = DEFAULT_LIMIT) -> tuple[list[Finding], dict[str, Any]]:
    """Findings for scale tensors holding NaN/Inf (error) or zeros (warning), and what was read."""
    found: list[Finding] = []
    read = tensors = 0
    with mapped(path) as view:
        head = parse_header(view)
        if not head.sound:
            return found, {"scales_scanned": 0, "scale_bytes_scanned": 0}
        names = {t.name for t in head.tensors.values()}
        for t in sorted(head.tensors.values(), key=lambda t: t.begin):
            role = split_name(t.name)[1]
            mx = t.name.endswith("_scales") and t.name[: -len("_scales")] + "_blocks" in names
            if role not in SCALE_ROLES and not mx:
                continue
            if read + t.nbytes > limit:
                break
            raw = view.bytes(head.data_start + t.begin, t.nbytes, t.name)
            read += t.nbytes
            tensors += 1
            dtype = "F8_E8M0" if mx and t.dtype == "U8" else t.dtype
            values = _floats(dtype, raw)
            if values is not None:
                bad = sum(1 for v in values if not math.isfinite(v))
                zero = sum(1 for v in values if v == 0.0)
            else:
                bad, zero = _f8_flags(dtype, raw)
            if bad:
                found.append(F.error(
                    "ST_SCALE_NOT_FINITE",
                    f"{t.name} holds {bad} NaN/infinite value(s) of {t.numel}: the weights they scale decode "
                    "to garbage; re-run the quantization", tensor=t.name, offset=head.data_start + t.begin))
            if zero:
                found.append(F.warning(
                    "ST_SCALE_ZERO",
                    f"{t.name} holds {zero} zero value(s) of {t.numel}: the weights they scale decode to 0",
                    tensor=t.name, offset=head.data_start + t.begin))
    return found, {"scales_scanned": tensors, "scale_bytes_scanned": read}
