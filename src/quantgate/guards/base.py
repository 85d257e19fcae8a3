"""The guard contract: what a guard is, what it gets, and how its measurement becomes a result.

A guard only measures (`Guard.measure` returns an `Outcome`). Everything shared, applicability,
dependency checks, blocking on integrity, the time budget, bounds and the status rules, lives
here once in `run_guard`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantgate.core import bounds as bounds_mod
from quantgate.core.bounds import Bound
from quantgate.core.coverage import DEFAULT_BASIS
from quantgate.core.findings import ERROR as SEV_ERROR
from quantgate.core.findings import WARNING as SEV_WARNING
from quantgate.core.findings import Finding
from quantgate.core.inventory import Inventory
from quantgate.core.remote import RemoteError, is_url, provenance
from quantgate.core.result import (
    BLOCKED_BY_INTEGRITY,
    DEPENDENCY_MISSING,
    ERROR,
    FAIL,
    NO_INPUT,
    NOT_APPLICABLE,
    PASS,
    WARN,
    ArtifactInfo,
    GuardResult,
)
from quantgate.formats import MODEL_FORMATS, read_inventory
from quantgate.formats.sniff import MANIFEST, Sniffed

CORE = "core"


@dataclass
class GuardConfig:
    """A guard's configuration from the policy and the command line."""

    require: list[Bound] = field(default_factory=list)
    warn: list[Bound] = field(default_factory=list)
    expect_unquantized: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    basis: str = DEFAULT_BASIS
    timeout_s: float | None = None

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


class GuardContext:
    """One artifact as the guards see it; the inventory is read once and shared by all guards."""

    def __init__(self, path: str, sniffed: Sniffed, size_bytes: int, display_path: str | None = None):
        self.path = path
        self.display_path = display_path or path
        self.sniffed = sniffed
        self.size_bytes = size_bytes
        self.sha256: str | None = None
        # facts other parts of the gate know about this artifact (a manifest's parameter count...)
        self.hints: dict[str, Any] = {}
        self._inventory: Inventory | None = None
        self._inventory_read = False

    @property
    def format(self) -> str:
        return self.sniffed.format

    def inventory(self) -> Inventory | None:
        if not self._inventory_read:
            self._inventory_read = True
            if self.format in MODEL_FORMATS:
                self._inventory = read_inventory(self.path, self.format)
        return self._inventory

    def structure_blocked(self) -> bool:
        """True when `integrity` cannot pass: not a model format, or the reader found defects."""
        if self.format not in MODEL_FORMATS:
            return True
        inventory = self.inventory()
        return inventory is not None and not inventory.structurally_sound

    @property
    def remote(self) -> bool:
        return is_url(self.path)

    def artifact_info(self) -> ArtifactInfo:
        info = ArtifactInfo(self.display_path, self.format, self.size_bytes, self.sha256)
        if self.remote:
            info.remote = provenance(self.path)
        return info


@dataclass
class Outcome:
    """What a guard measured. Status comes from findings and bounds, in `run_guard`."""

    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    unquantized: list[dict[str, Any]] = field(default_factory=list)
    # every weight-bearing layer (bounded), for reports that show the full per-layer table
    layers: list[dict[str, Any]] | None = None
    layers_omitted: int = 0
    summary: str = ""
    skip: tuple[str, str] | None = None
    error: tuple[str, str, str] | None = None  # (type, message, hint)


class Guard:
    """Base class: subclasses set the class attributes and implement `measure`."""

    id: str = ""
    description: str = ""
    needs: str = CORE
    # the Python modules the guard imports; missing ones make it SKIP dependency_missing
    requires_modules: tuple[str, ...] = ()
    install_hint: str = ""
    formats: tuple[str, ...] | None = None  # None: applies to every artifact
    needs_structure: bool = True
    # every metric the guard can emit, as dotted names with fnmatch wildcards for open sets
    # (`coverage.ops.int8`, `events.by_name.*`): check-policy checks bounds against them, and a bound
    # on a name outside them is a typo. Empty: not declared, nothing is checked.
    metric_names: tuple[str, ...] = ()

    def applies_to(self, fmt: str) -> bool:
        # `formats = None` means every artifact; a manifest is a claim about artifacts, not one
        return fmt != MANIFEST if self.formats is None else fmt in self.formats

    def missing_dependency(self) -> str | None:
        """None when the guard can run here, else the install hint."""
        for module in self.requires_modules:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed: {self.install_hint}" if self.install_hint else module
        return None

    def measure(self, ctx: GuardContext, config: GuardConfig) -> Outcome:
        raise NotImplementedError


def can_emit(guard: Guard, metric: str) -> bool:
    """True when `metric` is one of the guard's declared metric names (or it declares none)."""
    import fnmatch

    return not guard.metric_names or any(fnmatch.fnmatchcase(metric, p) for p in guard.metric_names)


def metric_suggestion(guard: Guard, metric: str) -> str | None:
    """The declared metric name closest to a misspelt `metric`, if one is close."""
    import difflib

    concrete = [m for m in guard.metric_names if not any(c in m for c in "*?[")]
    near = difflib.get_close_matches(metric, concrete, n=1, cutoff=0.75)
    return near[0] if near else None


def missing_metric_hint(guard: Guard, metric: str, metrics: Mapping[str, Any]) -> str:
    """Why a bound's metric is absent from a result: a name the guard never emits (a typo), an
    artifact with nothing to measure, or a metric this artifact lacks the input for."""
    if not can_emit(guard, metric):
        near = metric_suggestion(guard, metric)
        return f"{guard.id} never produces {metric}; " + (
            f"did you mean {near}?" if near else "fix the metric name in the policy (`quantgate check-policy`)"
        )
    if "weight_ops" in metrics and not metrics["weight_ops"]:
        return f"{guard.id} found no weight-bearing layers in this artifact, so it has no {metric}"
    return (
        f"{guard.id} does not produce {metric} for this artifact: what it is computed from is absent "
        "(see the guard's findings), or bound it only where it applies"
    )


class GuardTimeout(Exception):
    pass


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Raise GuardTimeout in the guard after `seconds` (main thread, POSIX); a no-op elsewhere."""
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise GuardTimeout(f"exceeded its time budget of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _skip(guard: Guard, ctx: GuardContext, reason: str, detail: str) -> GuardResult:
    return GuardResult.skipped(guard.id, ctx.artifact_info(), reason, detail)


def _error(guard: Guard, ctx: GuardContext, etype: str, message: str, hint: str) -> GuardResult:
    return GuardResult.errored(guard.id, ctx.artifact_info(), etype, message, hint)


def evaluate_bounds(config: GuardConfig, metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [bounds_mod.evaluate(b, metrics) for b in [*config.require, *config.warn]]


def decide_status(findings: Sequence[Finding], rows: Sequence[Mapping[str, Any]]) -> str:
    # a metric a bound needs is missing: we could not decide (ERROR), unless an error finding already
    # says the artifact is bad (a fidelity pair that is not the same model has no numbers): then FAIL
    has_errors = any(f.severity == SEV_ERROR for f in findings)
    if any(r["outcome"] == bounds_mod.MISSING for r in rows) and not has_errors:
        return ERROR
    if has_errors or any(
        r["outcome"] == bounds_mod.BROKEN and r["level"] == bounds_mod.FAIL_LEVEL for r in rows
    ):
        return FAIL
    if any(f.severity == SEV_WARNING for f in findings) or any(r["outcome"] == bounds_mod.BROKEN for r in rows):
        return WARN
    return PASS


def _message(status: str, outcome: Outcome, rows: Sequence[Mapping[str, Any]]) -> str:
    """One line a person can act on: the first problem, and how many more there are."""
    problems: list[str] = []
    if status == ERROR:
        problems += [bounds_mod.describe(r) for r in rows if r["outcome"] == bounds_mod.MISSING]
    severities = (SEV_ERROR,) if status in (FAIL, ERROR) else (SEV_WARNING,)
    broken_levels = (bounds_mod.FAIL_LEVEL,) if status in (FAIL, ERROR) else (bounds_mod.WARN_LEVEL,)
    problems += [
        bounds_mod.describe(r) for r in rows if r["outcome"] == bounds_mod.BROKEN and r["level"] in broken_levels
    ]
    for finding in outcome.findings:
        if finding.severity in severities:
            where = finding.where()
            problems.append(f"{finding.code}: {finding.message}" + (f" [{where}]" if where else ""))
    if not problems:
        return outcome.summary or "all checks held"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def run_guard(guard: Guard, ctx: GuardContext, config: GuardConfig) -> GuardResult:
    """Run one guard on one artifact; never raises."""
    started = time.perf_counter()
    result = _run(guard, ctx, config)
    result.duration_s = time.perf_counter() - started
    return result


def _run(guard: Guard, ctx: GuardContext, config: GuardConfig) -> GuardResult:
    if not guard.applies_to(ctx.format):
        return _skip(guard, ctx, NOT_APPLICABLE, f"{guard.id} does not read {ctx.format} artifacts")
    if guard.needs != CORE and ctx.remote:
        # a runtime loads the whole program from disk: reading it by range would be a full download
        return _skip(guard, ctx, NO_INPUT, f"{guard.id} runs the artifact in a runtime and needs the file on disk; "
                     "it is remote: download it and gate the local file")
    missing = guard.missing_dependency()
    if missing:
        return _skip(guard, ctx, DEPENDENCY_MISSING, missing)
    try:
        with time_budget(config.timeout_s):
            if guard.needs_structure and ctx.structure_blocked():
                return _skip(guard, ctx, BLOCKED_BY_INTEGRITY, "the artifact failed integrity")
            outcome = guard.measure(ctx, config)
    except GuardTimeout as exc:
        return _error(guard, ctx, "timeout", f"{guard.id} {exc}", "raise timeout_s in the policy")
    except MemoryError:
        return _error(guard, ctx, "memory", f"{guard.id} ran out of memory", "report this file")
    except RemoteError as exc:
        return _error(guard, ctx, "remote", f"cannot read the remote artifact: {exc}",
                      "check the URL, the server and its credentials, or download the file and gate it")
    except Exception as exc:  # a guard bug must be ERROR, never PASS or FAIL
        return _error(
            guard,
            ctx,
            type(exc).__name__,
            f"{guard.id} crashed: {exc}",
            "this is a quantgate bug; please report it with the artifact",
        )
    if outcome.skip is not None:
        return _skip(guard, ctx, *outcome.skip)
    if outcome.error is not None:
        etype, message, hint = outcome.error
        result = _error(guard, ctx, etype, message, hint)
        result.findings = outcome.findings
        result.metrics = outcome.metrics
        return result
    rows = evaluate_bounds(config, outcome.metrics)
    status = decide_status(outcome.findings, rows)
    result = GuardResult(
        guard=guard.id,
        status=status,
        message=_message(status, outcome, rows),
        artifact=ctx.artifact_info(),
        metrics=outcome.metrics,
        bounds=rows,
        unquantized=outcome.unquantized,
        findings=outcome.findings,
        layers=outcome.layers,
        layers_omitted=outcome.layers_omitted,
    )
    if status == ERROR:
        missing_rows = [r for r in rows if r["outcome"] == bounds_mod.MISSING]
        result.error = {
            "type": "missing_metric",
            "message": result.message,
            "hint": missing_metric_hint(guard, missing_rows[0]["metric"], outcome.metrics),
        }
    return result
