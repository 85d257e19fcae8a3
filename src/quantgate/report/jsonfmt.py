"""The canonical JSON report, printed as it is (plain JSON: nothing may wrap it)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from quantgate.core import fastjson
from quantgate.core.untrusted import json_safe

# Above this many bytes a document is printed compact: a report that lists tens of thousands of float
# layers is read by jq, not by eye.
PRETTY_LIMIT = 1 << 20
_INDENT = "  "
# A report is a tree built here, so the encoder's cycle check (a set insert and delete per container,
# ~40% of encoding a 50k-layer report) only costs time. NaN and Infinity are not JSON (jq rejects
# them): `_encode` writes null instead, as orjson does. Otherwise json.dumps' defaults, same text.
_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False, allow_nan=False).encode
_RECORD = json.JSONEncoder(check_circular=False, allow_nan=False).encode


def dumps(doc: Any) -> str:
    """`doc` as JSON text ending in a newline: indented when small, compact when large."""
    return dumps_bytes(doc).decode("ascii")


def dumps_bytes(doc: Any) -> bytes:
    """dumps(doc) as the bytes written out (the text is ASCII: json escapes the rest): a large report
    comes straight from orjson, not copied into a str and back. No `##[` is left in it (json_safe)."""
    return json_safe(_dumps_bytes(doc))


def _dumps_bytes(doc: Any) -> bytes:
    compact = fastjson.dumps_compact_line(doc)
    if compact is None:
        text = _encode(_COMPACT, doc)
        if len(text) > PRETTY_LIMIT:
            return (text + "\n").encode("ascii")
    elif len(compact) - 1 > PRETTY_LIMIT:
        return compact
    return (_pretty(doc, "") + "\n").encode("ascii")


def _encode(encode: Callable[[Any], str], value: Any) -> str:
    try:
        return encode(value)
    except ValueError:  # a NaN or an infinity somewhere in `value`
        return encode(finite(value))


def finite(value: Any) -> Any:
    """`value` with each NaN and infinite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _pretty(value: Any, pad: str) -> str:
    """Indented JSON in which each record (a container of scalars, or of containers of scalars: a
    layer, a finding, a coverage basis) stays on one line. json.dumps(indent=…) runs CPython's
    pure-Python encoder over every value; here the C encoder renders each record whole and Python only
    walks the containers above them."""
    if isinstance(value, dict) and value and not _is_record(value.values()):
        inner = pad + _INDENT
        items = [f"{inner}{_encode(_RECORD, _key(k))}: {_pretty(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and not _is_record(value):
        inner = pad + _INDENT
        return "[\n" + ",\n".join(inner + _pretty(v, inner) for v in value) + "\n" + pad + "]"
    return _encode(_RECORD, value)


def _is_record(values: Iterable[Any]) -> bool:
    """Every value a scalar or a container of scalars."""
    for v in values:
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        if any(isinstance(x, (dict, list)) for x in v):
            return False
    return True


def _key(key: Any) -> str:
    """A dict key as json.dumps writes it (True -> "true", 8 -> "8")."""
    return key if isinstance(key, str) else json.dumps(key)


def render(report: dict[str, Any]) -> str:
    return dumps(report)
