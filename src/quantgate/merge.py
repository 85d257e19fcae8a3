"""`quantgate merge`: join the reports of `--shard K/N` runs into one verdict.

A CI matrix gates a registry in shards; this joins their canonical JSON reports. The shards must
have been gated under the same policy (same sha256 and fail_on); an artifact reported by two shards
is an error of the matrix, not something to paper over.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantgate import SCHEMA_VERSION, __version__
from quantgate.gate import FATAL_SKIPS, REPORT_SCHEMA_URL, UsageError, environment, exit_code_for, summarize, verdict_of


def load_report(path: str) -> dict[str, Any]:
    from quantgate.jsonschemas import validate

    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read report {path}: {exc}") from None
    problems = validate(report, "report")
    if problems:
        raise UsageError(f"{path} is not a quantgate report: {problems[0]}")
    return report


def merge_reports(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    if not reports:
        raise UsageError("no reports to merge")
    policies = {(r["policy"]["path"], r["policy"]["sha256"], r["policy"].get("fail_on")) for r in reports}
    if len({(sha, fail_on) for _, sha, fail_on in policies}) > 1:
        raise UsageError(
            "the reports were gated under different policies (sha256 or fail_on differ); "
            "merge only the shards of one run"
        )
    artifacts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for report, name in zip(reports, names, strict=True):
        for artifact in report["artifacts"]:
            if artifact["path"] in seen:
                raise UsageError(
                    f"{artifact['path']} is in both {seen[artifact['path']]} and {name}; "
                    "were the shards cut from different artifact lists?"
                )
            seen[artifact["path"]] = name
            artifacts.append(artifact)
        results += report["results"]
    artifacts.sort(key=lambda a: a["path"])
    order = {a["path"]: i for i, a in enumerate(artifacts)}
    results.sort(key=lambda r: order[r["artifact"]["path"]])
    report_only = all(r.get("report_only", False) for r in reports)
    verdict = verdict_of(results, len(artifacts))
    # every shard walks the whole folder: what one did not gate, each reports; keep it once
    skipped = list({(s["path"], s["reason"]): s for r in reports for s in r.get("skipped", [])}.values())
    if any(s["reason"] in FATAL_SKIPS for s in skipped):
        verdict = "ERROR"
    first = reports[0]
    return {
        "$schema": REPORT_SCHEMA_URL,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "quantgate", "version": __version__},
        "policy": first["policy"],
        "environment": environment(),
        "started_at": min(r["started_at"] for r in reports),
        "duration_s": round(sum(r["duration_s"] for r in reports), 6),
        "verdict": verdict,
        "exit_code": exit_code_for(verdict, report_only),
        "report_only": report_only,
        "shard": None,
        "merged_from": [
            {"report": n, "shard": r.get("shard"), "verdict": r["verdict"]} for r, n in zip(reports, names, strict=True)
        ],
        "summary": summarize(results, len(artifacts)),
        "artifacts": artifacts,
        "results": results,
        "skipped": skipped,
    }
