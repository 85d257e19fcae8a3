"""The terminal report: failures first, one line per problem, and a last verdict line."""

from __future__ import annotations

import os
from typing import Any

from quantgate.core.untrusted import plain
from quantgate.report.common import by_severity, headline, problems, skipped_lines, verdict_line, visible

# SGR codes per status; only quantgate's own status words and verdict line are painted, after every
# line is made inert, so no artifact-controlled text can carry or break an escape sequence
PALETTE = {"PASS": "32", "FAIL": "1;31", "ERROR": "1;35", "WARN": "33", "SKIP": "2"}
COLOR_MODES = ("auto", "always", "never")


def use_color(mode: str, stream: Any, env: dict[str, str] | None = None) -> bool:
    """Whether to paint the text report on `stream`: `always`/`never` as said; `auto` is off under a
    non-empty NO_COLOR or TERM=dumb, on under a non-empty FORCE_COLOR, else on a terminal only."""
    if mode in ("always", "never"):
        return mode == "always"
    env = os.environ if env is None else env
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    if env.get("FORCE_COLOR"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _paint(text: str, status: str) -> str:
    code = PALETTE.get(status)
    return f"\x1b[{code}m{text}\x1b[0m" if code else text


def render(report: dict[str, Any], color: bool = False) -> str:
    rows = by_severity(visible(report["results"]))
    lines: list[str] = []
    status_at: dict[int, str] = {}  # line index -> the status word that starts it (painted with colour)
    policy = report["policy"]
    if policy["path"]:
        lines.append(f"policy {policy['path']} (sha256 {policy['sha256'][:12]})")
    else:
        lines.append("policy: none found (defaults: integrity required, no bounds)")
    merge = report.get("merge")
    if merge:  # a merged report says which shards it holds and why it is not a verdict
        lines += [f"merge: {p}" for p in merge["problems"]]
        if merge["missing"] and merge["allow_partial"]:
            shown = ", ".join(str(k) for k in merge["missing"])
            lines.append(f"merge: partial (--allow-partial): shard(s) {shown} of {merge['shards']} missing, not gated")
    if rows:
        width_a = min(60, max(len(r["artifact"]["path"]) for r in rows))
        width_g = max(len(r["guard"]) for r in rows)
        for r in rows:
            status = r["gate_status"] + ("*" if "waiver" in r else "")
            status_at[len(lines)] = r["gate_status"]
            lines.append(f"{status:<6} {r['artifact']['path']:<{width_a}}  {r['guard']:<{width_g}}  {headline(r)}")
            if r["gate_status"] in ("FAIL", "ERROR", "WARN") or r["status"] in ("FAIL", "WARN"):
                extra = problems(r)
                if len(extra) > 1:
                    lines += [f"{'':<6} {'':<{width_a}}  {'':<{width_g}}    - {p}" for p in extra]
    hidden = len(report["results"]) - len(rows)
    if hidden:
        lines.append(f"({hidden} result(s) of guards that do not apply to the artifact's format not shown)")
    not_gated = skipped_lines(report)
    if not_gated:
        lines.append(f"not gated ({len(report['skipped'])}):")
        lines += [f"  - {line}" for line in not_gated]
    if any("waiver" in r for r in rows):
        lines.append("* a FAIL or WARN waived by the policy: it stays in the report")
    cost = cost_line(report)
    if cost:
        lines.append(cost)
    lines.append(verdict_line(report))
    # each line holds artifact-controlled text (paths, names, messages): made inert as a whole, at a
    # cost in the size of the output, not of the report (quantgate.core.untrusted)
    out = list(map(plain, lines))
    if color:  # after plain(): our escapes are the only ones in the output
        for i, status in status_at.items():
            word = out[i].split(" ", 1)[0]  # the status (and waiver mark), never artifact text
            out[i] = _paint(word, status) + out[i][len(word):]
        verdict = report.get("verdict")
        out[-1] = _paint(out[-1], verdict if isinstance(verdict, str) else "")
    return "\n".join(out) + "\n"


def cost_line(report: dict[str, Any]) -> str | None:
    """The audit's own cost in one line: wall time, the costliest guards, runtime start-ups."""
    cost = report.get("cost")
    if not isinstance(cost, dict):
        return None
    try:  # a report read back from a file may hold anything: no line rather than a traceback
        guards = sorted(cost.get("by_guard", {}).items(), key=lambda kv: -float(kv[1]["total_s"]))
        shown = ", ".join(f"{gid} {float(row['total_s']):.2f} s ({int(row['count'])})" for gid, row in guards[:3])
        more = f" +{len(guards) - 3} more" if len(guards) > 3 else ""
        starts, restarts = int(cost.get("runtime_startups", 0)), int(cost.get("runtime_restarts", 0))
        runtime = ""
        if starts:
            runtime = f"; {starts} runtime start-up(s)" + (f", {restarts} after a failure" if restarts else "")
        workers = int(cost.get("workers", 0))
        spread = f"; {workers} worker(s), {int(cost.get('batches', 0))} batch(es)" if workers else ""
        return f"cost: {float(cost['wall_s']):.2f} s wall; guards {shown or 'none'}{more}{runtime}{spread}"
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
