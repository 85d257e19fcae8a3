"""What every renderer shares: ordering, counts line, per-result problem lines."""

from __future__ import annotations

from typing import Any

from quantgate.core.bounds import BROKEN, MISSING, describe
from quantgate.core.result import NOT_APPLICABLE
from quantgate.core.untrusted import plain

ORDER = {"ERROR": 0, "FAIL": 1, "WARN": 2, "SKIP": 3, "PASS": 4}
HIDDEN_SKIPS = (NOT_APPLICABLE,)


def visible(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results worth a row: everything but guards that do not apply to the artifact's format."""
    return [r for r in results if not (r["status"] == "SKIP" and r["skip"]["reason"] in HIDDEN_SKIPS)]


def by_severity(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(results, key=lambda r: (ORDER[r["gate_status"]], r["artifact"]["path"], r["guard"]))


def counts_line(report: dict[str, Any]) -> str:
    s = report["summary"]
    parts = [
        f"{s['artifacts']} artifact{'s' if s['artifacts'] != 1 else ''}",
        f"{s['PASS']} passed",
        f"{s['FAIL']} failed",
        f"{s['WARN']} warned",
        f"{s['ERROR']} error{'s' if s['ERROR'] != 1 else ''}",
        f"{s['SKIP']} skipped",
        f"{s['waived']} waived",
    ]
    return ", ".join(parts)


def verdict_line(report: dict[str, Any]) -> str:
    extra = " (report only)" if report.get("report_only") and report["verdict"] == "FAIL" else ""
    return f"quantgate: {report['verdict']}{extra} — {counts_line(report)}; exit {report['exit_code']}"


def problems(result: dict[str, Any], limit: int = 20) -> list[str]:
    """One line per problem of a result: broken bounds, missing metrics, error/warning findings."""
    lines = [describe(b) for b in result["bounds"] if b["outcome"] in (BROKEN, MISSING)]
    for finding in result["findings"]:
        if finding["severity"] in ("error", "warning"):
            loc = ", ".join(f"{k} {v}" for k, v in finding["location"].items())
            lines.append(f"{finding['code']}: {finding['message']}" + (f" [{loc}]" if loc else ""))
    if result.get("error") and not lines:
        lines.append(f"{result['error']['message']} — {result['error']['hint']}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"… and {len(lines) - limit} more"]
    return lines


def headline(result: dict[str, Any]) -> str:
    """The one-line message, with the waiver that turned it into a pass."""
    message = result["message"]
    if "waiver" in result:
        w = result["waiver"]
        message = f"waived until {w['expires']} ({w['reason']}): {message}"
    elif "waiver_rejected" in result:
        message += f" (waiver not applied: {result['waiver_rejected']['reason']})"
    return message


def precision_mix(result: dict[str, Any], basis: str = "params") -> dict[str, float] | None:
    cov = result.get("metrics", {}).get("coverage", {})
    chosen = cov.get(basis) or cov.get("ops")
    return chosen.get("by_bits") if chosen else None


MAX_SKIPPED_LINES = 20


def skipped_lines(report: dict[str, Any], limit: int = MAX_SKIPPED_LINES) -> list[str]:
    """One line per path discovery did not gate (a FIFO, a broken link, an unreadable folder...)."""
    items = report.get("skipped") or []
    lines = [f"{plain(s['path'])}: {s['reason']} ({plain(s['detail'])})" for s in items[:limit]]
    if len(items) > limit:
        lines.append(f"… and {len(items) - limit} more")
    return lines

