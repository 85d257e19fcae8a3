"""The canonical JSON report, printed as it is (plain JSON: nothing may wrap it)."""

from __future__ import annotations

import json
from typing import Any

# Above this many bytes a document is printed compact: json.dumps with `indent` runs CPython's
# pure-Python encoder (about 5x slower), and a report that lists tens of thousands of float layers is
# read by jq, not by eye.
PRETTY_LIMIT = 1 << 20


def dumps(doc: Any) -> str:
    """`doc` as JSON text ending in a newline: indented when small, compact when large."""
    compact = json.dumps(doc, separators=(",", ":"))
    if len(compact) > PRETTY_LIMIT:
        return compact + "\n"
    return json.dumps(doc, indent=2) + "\n"


def render(report: dict[str, Any]) -> str:
    return dumps(report)
