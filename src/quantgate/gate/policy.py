"""The policy: which guards run, which bounds they must meet, and the waivers.

Read from `quantgate.toml` (a `[quantgate]` table beside `[guards.*]` and `[[waivers]]`) or from
`[tool.quantgate]` in `pyproject.toml`, normalized into one shape and validated against
`schemas/policy.schema.json`. Every problem, unknown keys, malformed bounds, unknown guards, is
reported at once with its key and line; any of them is a usage error (exit 4), so a typo never
silently disables a check.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantgate.core.bounds import FAIL_LEVEL, WARN_LEVEL, Bound, BoundSyntaxError, parse_bound
from quantgate.core.coverage import DEFAULT_BASIS, DEFAULT_COVERAGE_TOLERANCE
from quantgate.core.jsonschemas import load_schema
from quantgate.guards import guard_ids, unknown_guard_message
from quantgate.guards.base import GuardConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TIMEOUT_S = 300.0
# the longest budget a policy may give (11.6 days): a bigger one is no budget, and past ~1e9 s the
# timer that enforces it overflows
MAX_TIMEOUT_S = 1e6
POLICY_FILE = "quantgate.toml"
PYPROJECT = "pyproject.toml"
SETTINGS_KEYS = (
    "version",
    "paths",
    "exclude",
    "fail_on",
    "coverage_basis",
    "coverage_tolerance",
    "timeout_s",
)
# guards that are required unless the policy says otherwise
REQUIRED_BY_DEFAULT = ("integrity",)


class PolicyError(Exception):
    """An unusable policy; `problems` holds one line per problem."""

    def __init__(self, path: str | None, problems: list[str]):
        self.path = path
        self.problems = problems
        where = f"{path}: " if path else ""
        super().__init__("\n".join(f"{where}{p}" for p in problems))


@dataclass
class GuardPolicy:
    enabled: bool = True
    required: bool = False
    require: list[Bound] = field(default_factory=list)
    warn: list[Bound] = field(default_factory=list)
    expect_unquantized: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    # fidelity only: the float reference (relative to the policy's folder) or glob -> template mapping
    reference: str | None = None
    references: dict[str, str] = field(default_factory=dict)
    # fidelity only: input name -> the concrete shape its output runs feed (symbolic dims set)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)


# guard-specific policy keys: which guards take them
GUARD_ONLY_KEYS = {"reference": "fidelity", "references": "fidelity", "input_shapes": "fidelity"}


@dataclass
class Waiver:
    guard: str
    artifact: str
    sha256: str
    reason: str
    expires: dt.date
    approved_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "guard": self.guard,
            "artifact": self.artifact,
            "sha256": self.sha256,
            "reason": self.reason,
            "expires": self.expires.isoformat(),
        }
        if self.approved_by:
            out["approved_by"] = self.approved_by
        return out


@dataclass
class Policy:
    path: str | None = None
    sha256: str | None = None
    version: int = 1
    paths: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    fail_on: str = "fail"
    coverage_basis: str = DEFAULT_BASIS
    coverage_tolerance: float = DEFAULT_COVERAGE_TOLERANCE
    timeout_s: float = DEFAULT_TIMEOUT_S
    guards: dict[str, GuardPolicy] = field(default_factory=dict)
    waivers: list[Waiver] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """Relative paths in the policy (scan paths, waiver artifacts) are relative to its folder."""
        return Path(self.path).resolve().parent if self.path else Path.cwd()

    def guard(self, guard_id: str) -> GuardPolicy:
        if guard_id not in self.guards:
            self.guards[guard_id] = GuardPolicy(required=guard_id in REQUIRED_BY_DEFAULT)
        return self.guards[guard_id]

    def guard_config(self, guard_id: str) -> GuardConfig:
        gp = self.guard(guard_id)
        params = dict(gp.params)
        params.setdefault("coverage_tolerance", self.coverage_tolerance)
        reference = gp.reference or params.get("reference")
        if isinstance(reference, str) and reference:
            params["reference"] = str(self.root / reference)  # relative to the policy's folder
        if gp.references:
            params["references"] = dict(gp.references)
        if gp.input_shapes:
            params["input_shapes"] = {name: list(shape) for name, shape in gp.input_shapes.items()}
        return GuardConfig(
            require=list(gp.require),
            warn=list(gp.warn),
            expect_unquantized=list(gp.expect_unquantized),
            params=params,
            basis=self.coverage_basis,
            timeout_s=gp.timeout_s or self.timeout_s,
        )


# ---------------------------------------------------------------------------------------------
# finding lines in TOML text (tomllib keeps no positions)


_TABLE_RE = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(
    r"^\s*((?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)


def _split_key(text: str) -> list[str]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_\-]+)", text)
    return [a or b or c for a, b, c in parts]


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path (array tables get their index) to the 1-based line defining it."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    array_counts: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _TABLE_RE.match(line)
        if match and stripped.startswith("["):
            parts = tuple(_split_key(match.group(2)))
            if match.group(1) == "[[":
                index = array_counts.get(parts, 0)
                array_counts[parts] = index + 1
                table = (*parts, str(index))
            else:
                table = parts
            lines.setdefault(table, number)
            continue
        match = _KEY_RE.match(line)
        if match:
            lines.setdefault((*table, *_split_key(match.group(1))), number)
    return lines


class _Locator:
    """Turns a normalized policy path into 'key (line N)' for messages."""

    def __init__(self, text: str, settings_prefix: tuple[str, ...], tables_prefix: tuple[str, ...]):
        self.text_lines = text.splitlines()
        self.lines = key_lines(text)
        self.settings_prefix = settings_prefix
        self.tables_prefix = tables_prefix

    def file_path(self, path: tuple[str, ...]) -> tuple[str, ...]:
        if path and path[0] in ("guards", "waivers"):
            return (*self.tables_prefix, *path)
        return (*self.settings_prefix, *path)

    def line(self, path: tuple[str, ...], literal: str | None = None) -> int | None:
        full = self.file_path(path)
        while full:
            if full in self.lines:
                start = self.lines[full]
                if literal:
                    for offset, text in enumerate(self.text_lines[start - 1 :], start=start):
                        if literal in text:
                            return offset
                return start
            full = full[:-1]
        return None

    def describe(self, path: tuple[str, ...], literal: str | None = None) -> str:
        shown = ".".join(self.file_path(path)) or "(top level)"
        shown = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", shown)
        line = self.line(path, literal)
        return f"{shown} (line {line})" if line else shown


# ---------------------------------------------------------------------------------------------


def find_policy(explicit: str | None, cwd: Path | None = None) -> str | None:
    """--policy FILE, else ./quantgate.toml, else ./pyproject.toml with [tool.quantgate]."""
    if explicit:
        return explicit
    cwd = cwd or Path.cwd()
    candidate = cwd / POLICY_FILE
    if candidate.is_file():
        return str(candidate)
    pyproject = cwd / PYPROJECT
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # ValueError: TOMLDecodeError, huge ints
            return None
        if isinstance(data.get("tool"), dict) and "quantgate" in data["tool"]:
            return str(pyproject)
    return None


def load_policy(path: str | None) -> Policy:
    """Load and validate a policy; None gives the default policy. Raises PolicyError."""
    if path is None:
        return Policy()
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError(path, [f"cannot read the policy: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise PolicyError(path, ["the policy is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(path, [f"not valid TOML: {exc}"]) from None
    except ValueError as exc:  # tomllib lets int()'s limit through: an integer of more than 4300 digits
        raise PolicyError(path, [f"not a usable policy: {str(exc).split(';')[0]}"]) from None
    except RecursionError:
        raise PolicyError(path, ["not a usable policy: arrays or tables nest too deeply"]) from None
    normalized, locator = _normalize(path, data, text)
    policy = _build(normalized, locator, path)
    policy.path = path
    policy.sha256 = hashlib.sha256(raw).hexdigest()
    return policy


def _normalize(path: str, data: dict[str, Any], text: str) -> tuple[dict[str, Any], _Locator]:
    if Path(path).name == PYPROJECT:
        tool = data.get("tool", {})
        section = tool.get("quantgate") if isinstance(tool, dict) else None
        if not isinstance(section, dict):
            raise PolicyError(path, ["pyproject.toml has no [tool.quantgate] table"])
        return dict(section), _Locator(text, ("tool", "quantgate"), ("tool", "quantgate"))
    problems = []
    normalized: dict[str, Any] = {}
    settings = data.get("quantgate", {})
    if not isinstance(settings, dict):
        problems.append("quantgate must be a table ([quantgate])")
        settings = {}
    normalized.update(settings)
    locator = _Locator(text, ("quantgate",), ())
    for key, value in data.items():
        if key == "quantgate":
            continue
        if key in ("guards", "waivers"):
            if key in settings:
                problems.append(f"{key} is given both at the top level and inside [quantgate]")
            normalized[key] = value
        else:
            line = locator.lines.get((key,))
            hint = f"; did you mean quantgate.{key}?" if key in SETTINGS_KEYS else ""
            problems.append(f"unknown key {key}" + (f" (line {line})" if line else "") + hint)
    if "guards" in settings or "waivers" in settings:
        locator.tables_prefix = ("quantgate",)
    if problems:
        raise PolicyError(path, problems)
    return normalized, locator


def _jsonable(value: Any) -> Any:
    """TOML dates become ISO strings so the JSON Schema can check them."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    return value


def _schema_problems(data: dict[str, Any], locator: _Locator) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema("policy"))
    problems = []
    for err in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        path = tuple(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - allowed):
                near = difflib.get_close_matches(extra, sorted(allowed), n=1)
                hint = f"; did you mean {near[0]}?" if near else f"; allowed: {', '.join(sorted(allowed))}"
                problems.append(f"unknown key {locator.describe((*path, extra))}{hint}")
        elif err.validator == "pattern" and path[-2:-1] in (("require",), ("warn",)):
            continue  # bounds get a precise message from the bound parser below
        else:
            literal = err.instance if isinstance(err.instance, str) else None
            problems.append(f"{locator.describe(path, literal)}: {err.message}")
    return problems


def _nan_paths(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, float) and math.isnan(value):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nan_paths(v, (*path, str(k)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nan_paths(v, (*path, str(i)))]
    return []


def _number_problems(data: dict[str, Any], locator: _Locator) -> list[str]:
    """What the schema cannot say of numbers: NaN compares false with every bound, so `timeout_s = nan`
    would pass `exclusiveMinimum` and silently disable the budget (and a NaN coverage_tolerance, in
    [quantgate] or a guard's params, every claim check); inf and huge budgets are no budget."""
    problems = [f"{locator.describe(where)}: nan is not a number; give a finite value" for where in _nan_paths(data)]
    places: list[tuple[tuple[str, ...], Any]] = [(("timeout_s",), data.get("timeout_s"))]
    guards = data.get("guards")
    for guard_id, body in guards.items() if isinstance(guards, dict) else ():
        if isinstance(body, dict):
            places.append((("guards", guard_id, "timeout_s"), body.get("timeout_s")))
    for where, value in places:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            continue  # absent, NaN (above), or the schema reports the type
        if value > MAX_TIMEOUT_S:
            problems.append(
                f"{locator.describe(where)}: {value:g} s is no time budget; give a finite number of seconds "
                f"up to {MAX_TIMEOUT_S:g}"
            )
    return problems


def _build(data: dict[str, Any], locator: _Locator, path: str) -> Policy:
    data = _jsonable(data)
    problems = _schema_problems(data, locator) + _number_problems(data, locator)
    known = guard_ids()
    policy = Policy()
    for key in SETTINGS_KEYS:
        if key in data and key != "version":
            setattr(policy, key, data[key])
    guards = data.get("guards", {})
    for guard_id, body in guards.items() if isinstance(guards, dict) else ():
        if guard_id not in known:
            problems.append(unknown_guard_message([guard_id], locator.describe(("guards", guard_id)), brief=True))
            continue
        if not isinstance(body, dict):
            continue
        gp = GuardPolicy(required=guard_id in REQUIRED_BY_DEFAULT)
        for key in ("enabled", "required", "expect_unquantized", "params", "timeout_s"):
            if key in body:
                setattr(gp, key, body[key])
        for key, owner in GUARD_ONLY_KEYS.items():
            if key in body and guard_id != owner:
                problems.append(f"{locator.describe(('guards', guard_id, key))}: only [guards.{owner}] takes {key}")
            elif key in body:
                setattr(gp, key, body[key])
        for key, level in (("require", FAIL_LEVEL), ("warn", WARN_LEVEL)):
            for index, text in enumerate(body.get(key, []) if isinstance(body.get(key), list) else []):
                try:
                    getattr(gp, key).append(parse_bound(text, level))
                except BoundSyntaxError as exc:
                    where = locator.describe(("guards", guard_id, key, str(index)), str(text))
                    problems.append(f"{where}: {exc}")
        if gp.required and not gp.enabled:
            problems.append(f"{locator.describe(('guards', guard_id))}: a guard cannot be both required and disabled")
        policy.guards[guard_id] = gp
    for index, body in enumerate(data.get("waivers", []) if isinstance(data.get("waivers"), list) else []):
        if not isinstance(body, dict):
            continue
        if body.get("guard") not in known:
            problems.append(
                f"{locator.describe(('waivers', str(index), 'guard'))}: unknown guard {body.get('guard')!r}"
            )
        try:
            expires = dt.date.fromisoformat(str(body.get("expires")))
        except ValueError:
            continue  # the schema already said so
        if all(k in body for k in ("guard", "artifact", "sha256", "reason")):
            policy.waivers.append(
                Waiver(
                    body["guard"],
                    body["artifact"],
                    body["sha256"].lower(),
                    body["reason"],
                    expires,
                    body.get("approved_by"),
                )
            )
    if problems:
        raise PolicyError(path, problems)
    return policy


# ---------------------------------------------------------------------------------------------
# what `check-policy` checks beyond the schema, and what the guards a policy uses need installed


def metric_problems(policy: Policy, text: str = "") -> list[str]:
    """One line per bound on a metric its guard never emits (`coverage.parms.int8`), with the
    closest name it does emit; `text` (the policy file) gives the line."""
    from quantgate.guards import get_guard
    from quantgate.guards.base import can_emit, metric_suggestion

    lines = text.splitlines()
    problems = []
    for guard_id, gp in policy.guards.items():
        guard = get_guard(guard_id)
        for key, bounds in (("require", gp.require), ("warn", gp.warn)):
            for bound in bounds:
                if can_emit(guard, bound.metric):
                    continue
                line = next((n for n, t in enumerate(lines, start=1) if bound.metric in t), None)
                where = f"guards.{guard_id}.{key}" + (f" (line {line})" if line else "")
                near = metric_suggestion(guard, bound.metric)
                hint = f"did you mean {near}?" if near else "`quantgate guard ID FILE` prints the metrics it emits"
                problems.append(f"{where}: {guard_id} never produces the metric {bound.metric}; {hint}")
    return problems


def needed_extras(policy: Policy) -> list[str]:
    """The pip extras (`quantgate[...]`) the guards this policy bounds or requires need: without them
    those guards cannot run and the gate is an ERROR."""
    from quantgate.guards import get_guard
    from quantgate.guards.base import CORE

    extras = set()
    for guard_id, gp in policy.guards.items():
        if gp.enabled and (gp.required or gp.require or gp.warn):
            needs = get_guard(guard_id).needs
            if needs != CORE:
                extras.add(needs)
    return sorted(extras)
