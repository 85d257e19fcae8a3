"""Bounds: `METRIC OP NUMBER` strings, parsed once and evaluated against a result's metrics.

Bounds are inclusive (`>=`, `<=`) unless written strict; a bound on a metric the guard did not
produce is an error of the run, never a pass.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

FAIL_LEVEL = "fail"
WARN_LEVEL = "warn"

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}

_BOUND_RE = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.\-]*)\s*(?P<op>>=|<=|==|>|<)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)

# outcomes
HELD = "held"
BROKEN = "broken"
MISSING = "missing"


class BoundSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Bound:
    metric: str
    op: str
    value: float
    level: str = FAIL_LEVEL

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def parse_bound(text: str, level: str = FAIL_LEVEL) -> Bound:
    if not isinstance(text, str):
        raise BoundSyntaxError(f"a bound must be a string 'METRIC OP NUMBER', got {text!r}")
    match = _BOUND_RE.match(text)
    if not match:
        raise BoundSyntaxError(
            f"malformed bound {text!r}: expected 'METRIC OP NUMBER' with OP one of >= <= > < ==, "
            "e.g. 'coverage.ops.int8 >= 0.90'"
        )
    return Bound(match["metric"], match["op"], float(match["value"]), level)


def lookup(metrics: Mapping[str, Any], dotted: str) -> Any:
    """Find `coverage.ops.int8` in nested metrics; None when any step is absent."""
    node: Any = metrics
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return None
    return node


def evaluate(bound: Bound, metrics: Mapping[str, Any]) -> dict[str, Any]:
    actual = lookup(metrics, bound.metric)
    if isinstance(actual, bool) or not isinstance(actual, (int, float)) or math.isnan(actual):
        outcome = MISSING
        actual_out = None
    else:
        outcome = HELD if OPS[bound.op](actual, bound.value) else BROKEN
        actual_out = actual
    return {
        "metric": bound.metric,
        "op": bound.op,
        "value": bound.value,
        "actual": actual_out,
        "level": bound.level,
        "outcome": outcome,
    }


def describe(row: Mapping[str, Any]) -> str:
    """One-line text for an evaluated bound, e.g. 'coverage.ops.int8 0.62 < 0.9 (required)'."""
    metric, op, value = row["metric"], row["op"], row["value"]
    if row["outcome"] == MISSING:
        return f"{metric} was not measured (bound {op} {value:g})"
    actual = row["actual"]
    shown = f"{actual:.4g}" if isinstance(actual, float) else str(actual)
    verb = {">=": "<", "<=": ">", ">": "<=", "<": ">=", "==": "!="}[op]
    if row["outcome"] == HELD:
        return f"{metric} {shown} {op} {value:g}"
    return f"{metric} {shown} {verb} {value:g} ({'required' if row['level'] == FAIL_LEVEL else 'warning'})"
