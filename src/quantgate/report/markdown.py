"""Markdown for pull requests and `$GITHUB_STEP_SUMMARY`: verdict, counts, the failing rows, the
precision mix of each artifact as a picture, and the full matrix folded away."""

from __future__ import annotations

from typing import Any

from quantgate.core.untrusted import markdown as _inert
from quantgate.report.common import (
    by_severity,
    counts_line,
    headline,
    precision_mix,
    problems,
    skipped_lines,
    visible,
)
from quantgate.report.pictures import emoji_bar, emoji_legend

ICON = {"PASS": "✅", "FAIL": "❌", "ERROR": "⛔", "NO_INPUT": "⚠️", "WARN": "⚠️", "SKIP": "⏭️"}
MAX_BYTES = 1_000_000  # GitHub's step summary takes at most 1 MiB per step
MAX_UNQUANTIZED = 25
MAX_PIES = 20  # Mermaid pies are heavy to render; past this many, the emoji bars alone


def _cell(text: Any) -> str:
    """Table-safe and inert: artifact-controlled text can neither split a row, open a tag, nor make a
    link or an image (quantgate.core.untrusted.markdown)."""
    return _inert(text)


def _fenced(text: str) -> str:
    """Mermaid source inside a code fence: only characters that can neither end the fence nor the line."""
    return "".join(c if c.isalnum() or c in " ._-/()+" else "_" for c in text)


def _mermaid_pie(title: str, mix: dict[str, float]) -> list[str]:
    lines = ["```mermaid", f"pie showData title {_fenced(title)}"]
    for bits, share in mix.items():
        # a saved report's by_bits keys are any string (`quantgate render`): fenced like the title
        label = f"{bits}-bit" if bits != "unknown" else "unknown"
        lines.append(f'    "{_fenced(label)}" : {share * 100:.2f}')
    lines.append("```")
    return lines


def _mix_table(result: dict[str, Any]) -> list[str]:
    """One emoji bar per basis: a picture that renders in any markdown viewer."""
    coverage = result.get("metrics", {}).get("coverage", {})
    bases = [b for b in ("ops", "params", "flops") if coverage.get(b, {}).get("by_bits")]
    if not bases:
        return []
    keys: list[str] = []
    for b in bases:
        keys += [k for k in coverage[b]["by_bits"] if k not in keys]
    out = [
        "| basis | precision mix | " + " | ".join(_cell(f"{k}-bit" if k != "unknown" else k) for k in keys) + " |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for b in bases:
        mix = coverage[b]["by_bits"]
        cells = " | ".join(f"{mix[k]:.1%}" if k in mix else "" for k in keys)
        out.append(f"| {b} | {emoji_bar(mix)} | {cells} |")
    out += ["", f"<sub>{emoji_legend(keys)}</sub>"]
    return out


def _coverage_cell(result: dict[str, Any]) -> str:
    metrics = result.get("metrics", {})
    if "int8_coverage" not in metrics:
        return ""
    basis = metrics.get("coverage_basis", "ops")
    quantized = metrics["coverage"][basis]["quantized"]
    return f"int8 {metrics['int8_coverage']:.1%} · quantized {quantized:.1%} ({basis})"


def render(report: dict[str, Any]) -> str:
    rows = by_severity(visible(report["results"]))
    out = _head(report)
    out += _problems(rows)
    out += _not_gated(report)
    out += _precision_mix(rows)
    out += _all_results(rows)
    out += _footer(report)
    return _within_limit("\n".join(out))


def _head(report: dict[str, Any]) -> list[str]:
    """The verdict, a merge's missing shards and the counts table."""
    s = report["summary"]
    verdict = report["verdict"]
    out = [f"## {ICON.get(verdict, '')} quantgate: {verdict}", ""]
    merge = report.get("merge")
    if merge and (merge["missing"] or merge["problems"]):  # numbers only: the problems name files
        missing = ", ".join(str(k) for k in merge["missing"]) or "none"
        out += [f"**merge:** shards missing: {missing} of {merge['shards']}; "
                f"{len(merge['problems'])} problem(s) with the shard set (see the log)", ""]
    return [
        *out,
        "| artifacts | passed | failed | warned | errors | skipped | waived | exit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['artifacts']} | {s['PASS']} | {s['FAIL']} | {s['WARN']} | {s['ERROR']} | {s['SKIP']} "
        f"| {s['waived']} | {report['exit_code']} |",
        "",
    ]


def _problems(rows: list[dict[str, Any]]) -> list[str]:
    bad = [r for r in rows if r["gate_status"] in ("FAIL", "ERROR", "WARN")]
    if not bad:
        return []
    out = ["### Problems", "", "| status | artifact | guard | problem |", "|---|---|---|---|"]
    for r in bad:
        for i, line in enumerate(problems(r) or [r["message"]]):
            first = i == 0
            out.append(
                f"| {r['gate_status'] if first else ''} "
                f"| {_cell(r['artifact']['path']) if first else ''} "
                f"| {_cell(r['guard']) if first else ''} | {_cell(line)} |"
            )
    return [*out, ""]


def _not_gated(report: dict[str, Any]) -> list[str]:
    not_gated = skipped_lines(report)
    if not not_gated:
        return []
    return [f"### Not gated ({len(report['skipped'])})", "", *(f"- {_cell(line)}" for line in not_gated), ""]


def _precision_mix(rows: list[dict[str, Any]]) -> list[str]:
    """Each measured artifact's mix: a line, the emoji bars, a pie (the first MAX_PIES), the float layers."""
    coverage_rows = [r for r in rows if precision_mix(r)]
    if not coverage_rows:
        return []
    out = ["### Precision mix", ""]
    for index, r in enumerate(coverage_rows):
        mix = precision_mix(r) or {}
        out.append(f"**{_cell(r['artifact']['path'])}** — {_cell(r['guard'])}: {_coverage_cell(r)}")
        out.append("")
        out += _mix_table(r)
        if index < MAX_PIES:
            out.append("")
            out += _mermaid_pie(f"{r['artifact']['path']} (share of weight params by bits)", mix)
        out += _unquantized(r.get("unquantized", []))
        out.append("")
    return out


def _unquantized(unq: list[dict[str, Any]]) -> list[str]:
    if not unq:
        return []
    out = [
        "",
        f"<details><summary>Unquantized weight-bearing layers ({len(unq)})</summary>",
        "",
        "| layer | kind | shape | dtype | params | expected |",
        "|---|---|---|---|---:|---|",
    ]
    for u in unq[:MAX_UNQUANTIZED]:
        out.append(
            f"| {_cell(u['name'])} | {_cell(u['kind'])} | {_cell('×'.join(map(str, u['shape'])))} "
            f"| {_cell(u['dtype'])} "
            f"| {u['params']:,} | {'yes' if u['expected'] else '**no**'} |"
        )
    if len(unq) > MAX_UNQUANTIZED:
        out.append(f"| … {len(unq) - MAX_UNQUANTIZED} more | | | | | |")
    return [*out, "", "</details>"]


def _all_results(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        f"<details><summary>All results ({len(rows)})</summary>",
        "",
        "| status | artifact | guard | coverage | message |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        status = r["gate_status"] + (" (waived)" if "waiver" in r else "")
        out.append(
            f"| {status} | {_cell(r['artifact']['path'])} | {_cell(r['guard'])} | {_coverage_cell(r)} "
            f"| {_cell(headline(r))} |"
        )
    return out


def _footer(report: dict[str, Any]) -> list[str]:
    return [
        "",
        "</details>",
        "",
        f"<sub>quantgate {_cell(report['tool']['version'])} · policy {_cell(report['policy']['path'] or 'default')}"
        f" · {counts_line(report)}</sub>",
        "",
    ]


def _within_limit(text: str) -> str:
    """The page cut at whole lines to GitHub's 1 MiB, closing the fence and folds the cut left open."""
    if len(text.encode("utf-8")) <= MAX_BYTES:
        return text
    cut = text.encode("utf-8")[: MAX_BYTES - 200].decode("utf-8", errors="ignore")
    cut = cut[: cut.rfind("\n") + 1]  # whole lines only
    # close what the cut left open, so the rest of the page renders as written
    closing = "```\n" if cut.count("```") % 2 else ""
    closing += "\n</details>\n" * max(0, cut.count("<details>") - cut.count("</details>"))
    return cut + closing + "\n… (summary cut to GitHub's 1 MiB limit; the JSON report has everything)\n"
