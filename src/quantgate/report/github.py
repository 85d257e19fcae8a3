"""GitHub Actions: workflow-command annotations and log groups, the step summary and step outputs.

GitHub keeps at most 10 error and 10 warning annotations per step, so the first 9 of each are
emitted and a tenth says how many more there are. Artifact-controlled text is made inert
(quantgate.core.untrusted: control characters escaped, `##[` and a leading `::` neutralised) and then
escaped as workflow-command data, so that it can never start a workflow command of its own.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from quantgate.core.untrusted import plain
from quantgate.report import markdown
from quantgate.report.common import by_severity, headline, problems, skipped_lines, verdict_line, visible

ANNOTATIONS_PER_KIND = 10


def escape_data(text: str) -> str:
    """Artifact-controlled text as workflow-command data: inert first (quantgate.core.untrusted.plain)."""
    return plain(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(report: dict[str, Any]) -> list[str]:
    rows = by_severity(visible(report["results"]))
    out: list[str] = []
    for kind, statuses in (("error", ("FAIL", "ERROR")), ("warning", ("WARN",))):
        chosen = [r for r in rows if r["gate_status"] in statuses]
        for r in chosen[: ANNOTATIONS_PER_KIND - 1]:
            title = escape_property(f"quantgate {r['guard']}: {r['gate_status']}")
            path = escape_property(r["artifact"]["path"])
            out.append(f"::{kind} file={path},title={title}::" + escape_data(f"{r['artifact']['path']}: {headline(r)}"))
        if len(chosen) >= ANNOTATIONS_PER_KIND:
            more = len(chosen) - (ANNOTATIONS_PER_KIND - 1)
            out.append(f"::{kind} title=quantgate::{more} more {kind}(s); see the job summary or the JSON report")
    return out


def log_groups(report: dict[str, Any]) -> list[str]:
    out: list[str] = []
    rows = visible(report["results"])
    for artifact in report["artifacts"]:
        mine = [r for r in rows if r["artifact"]["path"] == artifact["path"]]
        worst = by_severity(mine)[0]["gate_status"] if mine else "SKIP"
        out.append(f"::group::{escape_data(artifact['path'])} ({escape_data(artifact['format'])}): {worst}")
        for r in by_severity(mine):
            out.append(escape_data(f"{r['gate_status']:<6} {r['guard']}: {headline(r)}"))
            if r["gate_status"] in ("FAIL", "ERROR", "WARN"):
                out += [escape_data(f"         - {p}") for p in problems(r)[1:]]
        out.append("::endgroup::")
    not_gated = skipped_lines(report)
    if not_gated:
        out.append(f"::group::not gated ({len(report['skipped'])})")
        out += [escape_data(line) for line in not_gated]
        out.append("::endgroup::")
    return out


def render(report: dict[str, Any]) -> str:
    """`--format github`: log groups, annotations and the verdict line, as workflow commands."""
    return "\n".join([*log_groups(report), *annotations(report), verdict_line(report)]) + "\n"


def outputs(report: dict[str, Any], report_paths: dict[str, str] | None = None) -> dict[str, str]:
    s = report["summary"]
    out = {
        "verdict": report["verdict"],
        "exit-code": str(report["exit_code"]),
        "artifacts": str(s["artifacts"]),
        "passed": str(s["PASS"]),
        "failed": str(s["FAIL"]),
        "warned": str(s["WARN"]),
        "errors": str(s["ERROR"]),
        "skipped": str(s["SKIP"]),
        "waived": str(s["waived"]),
    }
    for fmt, path in (report_paths or {}).items():
        out[f"report-{fmt}"] = path
    return out


def _write_outputs(path: str, values: dict[str, str]) -> None:
    # surrogateescape: a report path given as bytes that are not UTF-8 is written as those bytes
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as handle:
        for key, value in values.items():
            # anything but a plain printable value (a report path under a hostile output-dir) goes
            # in the heredoc form: no CR or LF in it can end the value and add a key of its own
            if not (value.isascii() and value.isprintable()):
                delimiter = f"ghadelimiter_{uuid.uuid4()}"
                handle.write(f"{key}<<{delimiter}\n{value}\n{delimiter}\n")
            else:
                handle.write(f"{key}={value}\n")


def publish(
    report: dict[str, Any], env: dict[str, str] | None = None, report_paths: dict[str, str] | None = None
) -> None:
    """Append the markdown to $GITHUB_STEP_SUMMARY and write $GITHUB_OUTPUT (when set)."""
    env = dict(os.environ) if env is None else env
    summary = env.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(markdown.render(report))
    output = env.get("GITHUB_OUTPUT")
    if output:
        _write_outputs(output, outputs(report, report_paths))
