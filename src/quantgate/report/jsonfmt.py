"""The canonical JSON report, printed as it is (plain JSON: nothing may wrap it)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# Above this many bytes a document is printed compact: a report that lists tens of thousands of float
# layers is read by jq, not by eye.
PRETTY_LIMIT = 1 << 20
_INDENT = "  "


def dumps(doc: Any) -> str:
    """`doc` as JSON text ending in a newline: indented when small, compact when large."""
    compact = json.dumps(doc, separators=(",", ":"))
    if len(compact) > PRETTY_LIMIT:
        return compact + "\n"
    return _pretty(doc, "") + "\n"


def _pretty(value: Any, pad: str) -> str:
    """Indented JSON in which each record (a container of scalars, or of containers of scalars: a
    layer, a finding, a coverage basis) stays on one line. json.dumps(indent=…) runs CPython's
    pure-Python encoder over every value; here the C encoder renders each record whole and Python only
    walks the containers above them."""
    if isinstance(value, dict) and value and not _is_record(value.values()):
        inner = pad + _INDENT
        items = [f"{inner}{json.dumps(_key(k))}: {_pretty(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and not _is_record(value):
        inner = pad + _INDENT
        return "[\n" + ",\n".join(inner + _pretty(v, inner) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


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
