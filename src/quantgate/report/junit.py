"""JUnit XML: a suite per artifact, a case per guard (FAIL -> failure, ERROR -> error, SKIP -> skipped).

The gate's decision (`gate_status`) decides the element, so a waived FAIL is a passing case and a
WARN under `fail_on = "warn"` is a failure. Metrics go to the case's system-out (xunit2-safe).

What discovery did not gate (the report's `skipped`) is a suite `quantgate: not gated`, a case per
path: an unreadable folder is an error (it makes the verdict ERROR), the rest skipped cases. A merged
report's shard set is a suite `quantgate: merge` whose one case errs with the set's problems.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from quantgate.core.untrusted import plain
from quantgate.gate.discovery import FATAL_SKIPS
from quantgate.report.common import headline, problems, visible

NOT_GATED, MERGE = ("", "not gated"), ("", "merge")  # suite keys no artifact path can equal


def render(report: dict[str, Any]) -> str:
    results = visible(report["results"])  # a guard that does not read the format is no test case
    root = ET.Element("testsuites", name="quantgate")
    suites: dict[Any, ET.Element] = {}
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    times: dict[Any, float] = {}
    for artifact in report["artifacts"]:
        # every artifact-controlled string inert (quantgate.core.untrusted): valid XML 1.0, no control
        # character or lone surrogate, nothing a CI log would obey
        suite = ET.SubElement(root, "testsuite", name=plain(artifact["path"]))
        props = ET.SubElement(suite, "properties")
        for key in ("format", "size_bytes", "sha256"):
            if key in artifact:
                ET.SubElement(props, "property", name=key, value=plain(artifact[key]))
        suites[artifact["path"]] = suite
        times[artifact["path"]] = 0.0
    for r in results:
        path = r["artifact"]["path"]
        suite = suites.get(path)
        if suite is None:
            continue
        case = ET.SubElement(
            suite, "testcase", classname=plain(path), name=plain(r["guard"]), time=f"{r['duration_s']:.6f}"
        )
        times[path] += r["duration_s"]
        gate = r["gate_status"]
        detail = "\n".join(map(plain, problems(r))) or plain(r["message"])
        if gate == "FAIL":
            ET.SubElement(case, "failure", message=plain(headline(r)), type=r["status"]).text = detail
        elif gate == "ERROR":
            etype = (r.get("error") or {}).get("type") or "error"
            ET.SubElement(case, "error", message=plain(headline(r)), type=plain(etype)).text = detail
        elif gate == "SKIP":
            ET.SubElement(case, "skipped", message=plain(f"{r['skip']['reason']}: {r['skip']['detail']}"))
        out = {"status": r["status"], "gate_status": gate, "message": headline(r), "metrics": r["metrics"]}
        # JSON escapes control characters; `##[` (a runner command anywhere in a line) spelled as an
        # escape of the same value
        text = json.dumps(out, indent=1, sort_keys=True).replace("##[", "#\\u0023[")
        ET.SubElement(case, "system-out").text = text
    _not_gated(root, report, suites, times)
    _merge(root, report, suites, times)
    for path, suite in suites.items():
        cases = suite.findall("testcase")
        counts = {
            "tests": len(cases),
            "failures": sum(1 for c in cases if c.find("failure") is not None),
            "errors": sum(1 for c in cases if c.find("error") is not None),
            "skipped": sum(1 for c in cases if c.find("skipped") is not None),
        }
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{times[path]:.6f}")
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{report['duration_s']:.6f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _not_gated(
    root: ET.Element, report: dict[str, Any], suites: dict[Any, ET.Element], times: dict[Any, float]
) -> None:
    skipped = report.get("skipped") or []
    if not skipped:
        return
    suite = suites[NOT_GATED] = ET.SubElement(root, "testsuite", name="quantgate: not gated")
    times[NOT_GATED] = 0.0
    for s in skipped:
        # the path and detail come from the scanned folder: inert (quantgate.core.untrusted)
        case = ET.SubElement(suite, "testcase", classname="quantgate.discovery", name=plain(s["path"]), time="0")
        message = plain(f"{s['reason']}: {s['detail']}")
        if s["reason"] in FATAL_SKIPS:
            ET.SubElement(case, "error", message=message, type=plain(s["reason"])).text = (
                f"{plain(s['path'])} could not be read, so the files under it were not gated"
            )
        else:
            ET.SubElement(case, "skipped", message=message)


def _merge(
    root: ET.Element, report: dict[str, Any], suites: dict[Any, ET.Element], times: dict[Any, float]
) -> None:
    merge = report.get("merge")
    if not merge:
        return
    suite = suites[MERGE] = ET.SubElement(root, "testsuite", name="quantgate: merge")
    times[MERGE] = 0.0
    case = ET.SubElement(suite, "testcase", classname="quantgate.gate.merge", name="shard set", time="0")
    missing = ", ".join(str(k) for k in merge["missing"])
    if merge["problems"]:
        ET.SubElement(
            case, "error", message=plain(f"{len(merge['problems'])} problem(s) with the shard set"), type="merge"
        ).text = "\n".join(plain(p) for p in merge["problems"])
    elif missing:
        ET.SubElement(case, "skipped", message=plain(
            f"partial (--allow-partial): shard(s) {missing} of {merge['shards']} missing, not gated"
        ))
    present = ", ".join(str(k) for k in merge["present"])
    ET.SubElement(case, "system-out").text = plain(
        f"shards {merge['shards']}; present: {present or 'none'}; missing: {missing or 'none'}; "
        f"duplicated: {', '.join(str(k) for k in merge['duplicated']) or 'none'}"
    )
