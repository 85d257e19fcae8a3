"""orjson, where it is installed, for the two large JSON documents quantgate handles: a safetensors
header (up to 100 MB; 6 MB with 50k tensors) and a report that lists tens of thousands of layers.
It parses such a header twice as fast as `json` and writes such a report ten times as fast.

The standard library stays the reference: each function here returns None whenever orjson is
missing or would not give exactly what `json` gives, and the caller then uses `json`.
"""

from __future__ import annotations

from typing import Any

_NOT_IMPORTED: Any = object()
# the orjson module, or None in an install without it (json then does everything, only slower).
# Imported on first use: it imports uuid and platform, ~6 ms that importing quantgate need not pay.
orjson: Any = _NOT_IMPORTED


def _orjson() -> Any:
    global orjson
    if orjson is _NOT_IMPORTED:
        try:
            import orjson as module
        except ImportError:
            module = None
        orjson = module
    return orjson


def loads(raw: bytes) -> Any:
    """`raw` parsed as JSON, or None when orjson is missing or rejects it (invalid UTF-8 or JSON, NaN,
    a lone surrogate, too deep): `json` then parses it and names the defect. Integers past 64 bits
    come back as floats here (never valid in a safetensors header, which checks for exact ints)."""
    orjson = _orjson()
    if orjson is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def dumps_compact_line(doc: Any) -> bytes | None:
    """`doc` as compact JSON and a newline, as the bytes written out (a report of tens of thousands of
    layers is not copied into a str and back), or None when orjson is missing, when the text would hold
    non-ASCII characters (`json` escapes them, keeping a report 7-bit clean for any terminal and log), or
    when a value is outside orjson's types (non-string keys, integers past 64 bits). The text equals
    json.dumps(doc, separators=(",", ":")) but for the spelling of some floats (1e-05 is 0.00001 here:
    the same number) and for NaN and infinities, which JSON has no words for: orjson writes null, as
    report.jsonfmt has json do. quantgate's metrics are finite by construction."""
    orjson = _orjson()
    if orjson is None:
        return None
    try:
        out = orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # JSONEncodeError, and the plain TypeError of a non-string key
        return None
    return out if out.isascii() else None
