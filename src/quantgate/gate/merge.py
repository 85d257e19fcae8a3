"""`quantgate merge`: join the reports of `--shard K/N` runs into one verdict.

A CI matrix gates a registry in shards; this joins their canonical JSON reports. A merge never
passes on checks that did not run: the shards must be gated under the same policy (same sha256 and
fail_on) and the same inputs, and form the whole set 1..N exactly once. A missing, duplicated or
foreign shard makes the merged verdict ERROR (exit 2), with the reason in `merge.problems`;
`--allow-partial` accepts missing shards only (the report lists them in `merge.missing`), never
duplicates or a mismatch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantgate.core.untrusted import plain
from quantgate.gate import UsageError
from quantgate.gate.verdict import assemble_report


def load_report(source: str) -> dict[str, Any]:
    """Read and validate a saved report (`-`: stdin); UsageError (exit 4) names the problem and its JSON path."""
    import sys

    from quantgate.core import jsonfile
    from quantgate.core.jsonschemas import validate

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read report {source}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        report = jsonfile.loads(text)
    except jsonfile.JSONFileError as exc:
        raise UsageError(
            f"cannot read report {source}: {exc}; pass a report written by `quantgate run --format json`"
        ) from None
    problems = validate(report, "report")
    if problems:
        shown = problems[:20]
        more = [f"… and {len(problems) - 20} more"] if len(problems) > 20 else []
        raise UsageError(
            f"{source} is not a quantgate report (it does not match schemas/report.schema.json):\n"
            + "\n".join([*(f"{source}::{p}" for p in shown), *more])
        )
    return report


def _parse_shard(text: Any) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+)/(\d+)", text) if isinstance(text, str) else None
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        return None
    return int(match[1]), int(match[2])


def shard_problems(
    reports: Sequence[dict[str, Any]], names: Sequence[str]
) -> tuple[list[str], dict[str, Any], set[int]]:
    """(problems, the `merge` record, indexes of reports to leave out as duplicates)."""
    problems: list[str] = []
    skipped: set[int] = set()
    policies = {(r["policy"]["sha256"], r["policy"].get("fail_on")) for r in reports}
    if len(policies) > 1:
        problems.append(
            "the reports were gated under different policies (sha256 or fail_on differ); "
            "merge only the shards of one run"
        )
    inputs = {json.dumps(r.get("inputs"), sort_keys=True) for r in reports}
    if len(inputs) > 1:
        problems.append(
            "the reports were gated on different inputs (paths or artifact count differ); "
            "merge only the shards of one run"
        )
    shards = [_parse_shard(r.get("shard")) for r in reports]
    total: int | None = None
    present: list[int] = []
    duplicated: list[int] = []
    missing: list[int] = []
    if any(s is None for s in shards):
        if len(reports) > 1:
            unsharded = [plain(n) for n, s in zip(names, shards, strict=True) if s is None]
            problems.append(f"{', '.join(unsharded)}: not a `--shard K/N` report; only shards of one run merge")
    else:
        counts = {n for _, n in shards}  # type: ignore[misc]
        if len(counts) > 1:
            problems.append(f"the reports cut the artifacts into different shard counts ({sorted(counts)})")
        total = max(counts)
        seen: dict[int, str] = {}
        for index, (shard, name) in enumerate(zip(shards, names, strict=True)):
            k = shard[0]  # type: ignore[index]
            if k in seen:
                duplicated.append(k)
                skipped.add(index)
                problems.append(f"shard {k}/{total} is given twice ({plain(seen[k])} and {plain(name)})")
            else:
                seen[k] = name
        present = sorted(seen)
        missing = [k for k in range(1, total + 1) if k not in seen]
    record = {"shards": total, "present": present, "missing": missing, "duplicated": sorted(set(duplicated))}
    return problems, record, skipped


def merge_reports(
    reports: Sequence[dict[str, Any]], names: Sequence[str], allow_partial: bool = False
) -> dict[str, Any]:
    if not reports:
        raise UsageError("no reports to merge")
    problems, record, skipped = shard_problems(reports, names)
    if record["missing"]:
        shown = ", ".join(str(k) for k in record["missing"])
        if not allow_partial:
            problems.append(
                f"shard(s) {shown} of {record['shards']} missing; their artifacts were not gated "
                "(pass --allow-partial to merge the rest anyway)"
            )
    artifacts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    kept = [(r, n) for i, (r, n) in enumerate(zip(reports, names, strict=True)) if i not in skipped]
    for report, name in kept:
        taken = set()
        for artifact in report["artifacts"]:
            if artifact["path"] in seen:
                problems.append(
                    f"{plain(artifact['path'])} is in both {plain(seen[artifact['path']])} and {plain(name)}; "
                    "were the shards cut from different artifact lists?"
                )
                continue
            seen[artifact["path"]] = name
            taken.add(artifact["path"])
            artifacts.append(artifact)
        results += [r for r in report["results"] if r["artifact"]["path"] in taken]
    expected = {json.dumps(r.get("inputs"), sort_keys=True) for r, _ in kept}
    totals = [r["inputs"].get("artifacts_total") for r, _ in kept if isinstance(r.get("inputs"), dict)]
    complete = not record["missing"] and len(expected) == 1 and totals and isinstance(totals[0], int)
    if complete and totals[0] != len(artifacts):
        problems.append(
            f"the shards hold {len(artifacts)} artifact(s) but the run found {totals[0]}; "
            "the shards do not cover the artifacts exactly once"
        )
    artifacts.sort(key=lambda a: a["path"])
    order = {a["path"]: i for i, a in enumerate(artifacts)}
    results.sort(key=lambda r: order[r["artifact"]["path"]])
    report_only = all(r.get("report_only", False) for r in reports)
    # every shard walks the whole folder: what one did not gate, each reports; keep it once
    skipped = list({(s["path"], s["reason"]): s for r in reports for s in r.get("skipped", [])}.values())
    first = reports[0]
    record["allow_partial"] = allow_partial
    record["problems"] = problems
    merged_from = [
        {"report": n, "shard": r.get("shard"), "verdict": r["verdict"]} for r, n in zip(reports, names, strict=True)
    ]
    return assemble_report(
        policy=first["policy"],
        started_at=min(r["started_at"] for r in reports),
        duration_s=round(sum(r["duration_s"] for r in reports), 6),
        report_only=report_only,
        shard=None,
        artifacts=artifacts,
        results=results,
        skipped=skipped,
        problems=bool(problems),
        head={"merged_from": merged_from, "merge": record},
        tail={"inputs": first["inputs"]} if isinstance(first.get("inputs"), dict) else None,
    )
