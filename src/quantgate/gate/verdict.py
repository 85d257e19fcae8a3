"""The report: counts, verdict, exit code, environment and the audit's cost, in the canonical JSON shape
(docs/reports.md)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quantgate import SCHEMA_VERSION, __version__
from quantgate.core.result import (
    DISABLED,
    ERROR,
    FAIL,
    NOT_APPLICABLE,
    PASS,
    SKIP,
    WARN,
)
from quantgate.gate import EXIT_FAIL, EXIT_PASS, VERDICT_EXIT, Artifact, UsageError
from quantgate.gate.discovery import FATAL_SKIPS, display_path
from quantgate.guards import guard_ids, unknown_guard_message

if TYPE_CHECKING:  # annotations only; the policy module pulls in tomllib, difflib and the schema loader
    from quantgate.gate.policy import Policy


ENGINE_PACKAGES = (
    "executorch",
    "torch",
    "torchao",
    "onnx",
    "onnxruntime",
    "gguf",
    "safetensors",
    "numpy",
    "jsonschema",
)
REPORT_SCHEMA_URL = "https://quantgate.dev/schemas/report.schema.json"


def environment() -> dict[str, Any]:
    import platform
    from importlib import metadata  # ~50 ms of imports (email, zipfile): only the gate's report needs it

    packages: dict[str, str | None] = {}
    for name in ENGINE_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages}


def summarize(results: Sequence[dict[str, Any]], artifacts: int) -> dict[str, int]:
    """Counts by gate_status; guards that do not apply to a format are counted apart, not as skips."""
    summary = {
        "artifacts": artifacts,
        "results": len(results),
        PASS: 0,
        FAIL: 0,
        WARN: 0,
        SKIP: 0,
        ERROR: 0,
        "waived": 0,
        NOT_APPLICABLE: 0,  # counted apart under the skip reason's own name, never as skips
    }
    for result in results:
        if result["status"] == SKIP and result["skip"]["reason"] == NOT_APPLICABLE:
            summary[NOT_APPLICABLE] += 1
            continue
        summary[result["gate_status"]] += 1
        if "waiver" in result:
            summary["waived"] += 1
    return summary


def verdict_of(results: Sequence[dict[str, Any]], artifacts: int) -> str:
    applied = [r for r in results if not (r["status"] == SKIP and r["skip"]["reason"] in (NOT_APPLICABLE, DISABLED))]
    if artifacts == 0 or not applied:
        return "NO_INPUT"
    gates = {r["gate_status"] for r in results}
    if ERROR in gates:
        return "ERROR"
    if FAIL in gates:
        return "FAIL"
    return "PASS"


def exit_code_for(verdict: str, report_only: bool) -> int:
    code = VERDICT_EXIT[verdict]
    return EXIT_PASS if report_only and code == EXIT_FAIL else code


def build_report(
    *,
    policy: Policy,
    artifacts: Sequence[Artifact],
    results: Sequence[dict[str, Any]],
    started: float,
    started_at: str,
    report_only: bool,
    fail_on: str,
    shard: tuple[int, int] | None = None,
    paths: Sequence[str] = (),
    artifacts_total: int | None = None,
    skipped: Sequence[dict[str, str]] = (),
    run_stats: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The canonical report. `paths` and `artifacts_total` (artifacts found before sharding) go in
    `inputs`, so that `quantgate merge` can tell a complete set of shards from a partial one."""
    wall_s = round(time.perf_counter() - started, 6)
    sha_by_path = {r["artifact"]["path"]: r["artifact"].get("sha256") for r in results}
    artifact_rows = []
    for a in artifacts:
        row = {"path": a.display, "format": a.format, "size_bytes": a.size}
        if sha_by_path.get(a.display):
            row["sha256"] = sha_by_path[a.display]
        artifact_rows.append(row)
    return assemble_report(
        policy={"path": policy.path, "sha256": policy.sha256, "fail_on": fail_on,
                "coverage_basis": policy.coverage_basis},
        started_at=started_at,
        duration_s=wall_s,
        report_only=report_only,
        shard=f"{shard[0]}/{shard[1]}" if shard else None,
        artifacts=artifact_rows,
        results=results,
        skipped=skipped,
        head={"inputs": {"paths": [display_path(p) for p in paths],
                         "artifacts_total": len(artifacts) if artifacts_total is None else artifacts_total}},
        tail={"cost": audit_cost(results, wall_s, run_stats)},
    )


def assemble_report(
    *,
    policy: dict[str, Any],
    started_at: str,
    duration_s: float,
    report_only: bool,
    shard: str | None,
    artifacts: Sequence[dict[str, Any]],
    results: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, str]],
    problems: bool = False,
    head: dict[str, Any] | None = None,
    tail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report document around its rows, for a run and for a merge of shards alike: the verdict
    (ERROR with `problems`, or when part of a folder was never read), the exit code, the summary.
    `head` goes before the summary, `tail` after the rows."""
    verdict = "ERROR" if problems else verdict_of(results, len(artifacts))
    if any(s["reason"] in FATAL_SKIPS for s in skipped):
        verdict = "ERROR"  # part of the folder was never read: the run cannot vouch for it
    return {
        "$schema": REPORT_SCHEMA_URL,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "quantgate", "version": __version__},
        "policy": policy,
        "environment": environment(),
        "started_at": started_at,
        "duration_s": duration_s,
        "verdict": verdict,
        "exit_code": exit_code_for(verdict, report_only),
        "report_only": report_only,
        "shard": shard,
        **(head or {}),
        "summary": summarize(results, len(artifacts)),
        "artifacts": list(artifacts),
        "results": list(results),
        "skipped": list(skipped),
        **(tail or {}),
    }


def audit_cost(results: Sequence[dict[str, Any]], wall_s: float,
               run_stats: dict[str, int] | None = None) -> dict[str, Any]:
    """What the audit itself cost: wall time, guard time by guard (summed over artifacts: with --jobs it can
    exceed the wall time), and how the run was spread (jobs, worker processes, batches, runtime start-ups)."""
    by_guard: dict[str, dict[str, Any]] = {}
    for result in results:
        if result["status"] == SKIP and (result.get("skip") or {}).get("reason") == NOT_APPLICABLE:
            continue
        row = by_guard.setdefault(result["guard"], {"total_s": 0.0, "count": 0})
        row["total_s"] += float(result.get("duration_s") or 0.0)
        row["count"] += 1
    for row in by_guard.values():
        row["total_s"] = round(row["total_s"], 6)
    stats = run_stats or {}
    return {
        "wall_s": round(wall_s, 6),
        "by_guard": by_guard,
        "runtime_startups": int(stats.get("runtime_startups", 0)),
        "runtime_restarts": int(stats.get("runtime_restarts", 0)),
        "jobs": int(stats.get("jobs", 1)),
        "workers": int(stats.get("workers", 0)),
        "batches": int(stats.get("batches", 0)),
    }


def selected_guards(requested: Sequence[str] | None) -> list[str]:
    known = guard_ids()
    if not requested:
        return known
    unknown = [g for g in requested if g not in known]
    if unknown:
        raise UsageError(unknown_guard_message(unknown))
    return [g for g in known if g in requested]
