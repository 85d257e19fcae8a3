"""A self-contained HTML audit report: one file, no script, no external asset, to attach to a release.

Provenance first (tool, policy path and hash, environment, artifact sha256s), then the verdict and
counts, the problems, every result, and per artifact the precision mix as inline SVG bars, the
bounds, findings, unquantized layers and the full per-layer table where the result carries it.
Every string from an artifact or a policy is escaped, and a Content-Security-Policy forbids scripts
and network fetches, so a hostile tensor name cannot do anything in a reviewer's browser.
"""

from __future__ import annotations

import hashlib
from html import escape
from typing import Any

from quantgate.core.result import NOT_APPLICABLE
from quantgate.core.untrusted import clean
from quantgate.report.common import by_severity, headline, problems, visible
from quantgate.report.pictures import svg_bar, svg_legend

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
BASES = ("ops", "params", "flops")
OPEN_LAYER_TABLE_UP_TO = 200  # longer per-layer tables start folded

STYLE = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#1f2328}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
h3{margin:1.2em 0 .4em}table{border-collapse:collapse;margin:.4em 0 1em}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.92em;word-break:break-all}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;font-weight:600;color:#fff}
.PASS{background:#1a7f37}.FAIL{background:#cf222e}.ERROR{background:#8250df}.WARN{background:#bf8700}
.SKIP{background:#6e7781}.NO_INPUT{background:#bf8700}
.verdict{font-size:1.3em}.muted{color:#656d76}.legend{margin:.2em 0 .8em}
.swatch{margin-right:1em;white-space:nowrap}.swatch svg{vertical-align:middle}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;margin:.8em 0}
.nowrap{white-space:nowrap}svg.mix{display:block;margin:.2em 0;max-width:100%}tr.float td{background:#fff8c5}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _badge(status: str) -> str:
    return f'<span class="badge {_e(status)}">{_e(status)}</span>'


def _table(header: list[str], rows: list[list[str]], cls: str = "", numeric: tuple[int, ...] = ()) -> str:
    """`rows` cells are already HTML; header cells are plain text."""
    out = [f'<table class="{cls}">']
    if header:
        out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else ""


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _e(value)


def _provenance(report: dict[str, Any]) -> str:
    tool, policy, env = report["tool"], report["policy"], report["environment"]
    rows = [
        ["tool", _e(f"{tool['name']} {tool['version']}")],
        ["started", _e(report["started_at"])],
        ["duration", _e(f"{report['duration_s']:.3f} s")],
        ["policy", f"<code>{_e(policy['path'])}</code>" if policy.get("path") else "none (defaults)"],
        ["policy sha256", f"<code>{_e(policy['sha256'])}</code>" if policy.get("sha256") else "—"],
        ["fail on", _e(policy.get("fail_on", "fail"))],
        ["coverage basis", _e(policy.get("coverage_basis", "ops"))],
        ["report only", "yes (a FAIL exits 0)" if report.get("report_only") else "no"],
        ["python", _e(env["python"])],
        ["platform", _e(env["platform"])],
    ]
    if report.get("shard"):
        rows.append(["shard", _e(report["shard"])])
    packages = ", ".join(f"{_e(name)} {_e(version)}" for name, version in env.get("packages", {}).items() if version)
    rows.append(["engines installed", packages or "none"])
    body = "".join(f"<tr><th>{_e(key)}</th><td>{value}</td></tr>" for key, value in rows)
    return f'<h2>Provenance</h2><table class="provenance"><tbody>{body}</tbody></table>'


def _counts(report: dict[str, Any]) -> str:
    s = report["summary"]
    header = ["artifacts", "passed", "failed", "warned", "errors", "skipped", "waived", "exit code"]
    values = [s["artifacts"], s["PASS"], s["FAIL"], s["WARN"], s["ERROR"], s["SKIP"], s["waived"]]
    if NOT_APPLICABLE in s:  # guards that do not apply to a format: counted apart, never as skips
        header.insert(6, "not applicable")
        values.insert(6, s[NOT_APPLICABLE])
    row = [_num(v) for v in [*values, report["exit_code"]]]
    return _table(header, [row], "counts", numeric=tuple(range(len(header))))


def _worst(results: list[dict[str, Any]]) -> str:
    ordered = by_severity(results)
    return ordered[0]["gate_status"] if ordered else "SKIP"


def _artifacts(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    body = []
    for a in report["artifacts"]:
        mine = [r for r in rows if r["artifact"]["path"] == a["path"]]
        anchor = _anchor(a["path"])
        body.append(
            [
                _badge(_worst(mine)),
                f'<a href="#{anchor}"><code>{_e(a["path"])}</code></a>',
                _e(a["format"]),
                _num(a["size_bytes"]),
                f"<code>{_e(a['sha256'])}</code>"
                if a.get("sha256")
                else '<span class="muted">not computed (run with --sha256)</span>',
            ]
        )
    return "<h2>Artifacts</h2>" + _table(["status", "path", "format", "bytes", "sha256"], body, numeric=(3,))


def _anchor(path: str) -> str:
    """A stable, unique element id for an artifact (paths can hold any character)."""
    return "a-" + hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _problems(rows: list[dict[str, Any]]) -> str:
    bad = [r for r in rows if r["gate_status"] in ("FAIL", "ERROR", "WARN")]
    if not bad:
        return ""
    body = []
    for r in bad:
        lines = problems(r) or [r["message"]]
        items = "".join(f"<li>{_e(line)}</li>" for line in lines)
        body.append(
            [
                _badge(r["gate_status"]),
                f"<code>{_e(r['artifact']['path'])}</code>",
                _e(r["guard"]),
                f"<ul>{items}</ul>",
            ]
        )
    return "<h2>Problems</h2>" + _table(["status", "artifact", "guard", "problems"], body)


def _merge(report: dict[str, Any]) -> str:
    """A merged report's shard set: what it holds, what is missing, and why it is no verdict."""
    merge = report.get("merge")
    if not merge:
        return ""

    def shards(ks: list[int]) -> str:
        return _e(", ".join(str(k) for k in ks)) or "none"

    rows = [
        ["shards", _e(merge["shards"] if merge["shards"] is not None else "unknown")],
        ["present", shards(merge["present"])],
        ["missing", shards(merge["missing"]) + (" (merged anyway: --allow-partial)" if merge["missing"]
                                                and merge["allow_partial"] else "")],
        ["duplicated", shards(merge["duplicated"])],
    ]
    body = "".join(f"<tr><th>{_e(key)}</th><td>{value}</td></tr>" for key, value in rows)
    items = "".join(f"<li>{_e(p)}</li>" for p in merge["problems"])
    problems_html = f"<p>problems with the shard set (the verdict is ERROR):</p><ul>{items}</ul>" if items else ""
    return f'<h2>Merge</h2><table class="merge"><tbody>{body}</tbody></table>{problems_html}'


def _not_gated(report: dict[str, Any]) -> str:
    """What discovery did not gate: a FIFO, a broken link, an unreadable folder (an ERROR)..."""
    from quantgate.gate.discovery import FATAL_SKIPS

    skipped = report.get("skipped") or []
    if not skipped:
        return ""
    body = [
        [
            _badge("ERROR") if s["reason"] in FATAL_SKIPS else _badge("SKIP"),
            f"<code>{_e(s['path'])}</code>",
            _e(s["reason"]),
            _e(s["detail"]),
        ]
        for s in skipped
    ]
    return f"<h2>Not gated ({len(skipped)})</h2>" + _table(["", "path", "reason", "detail"], body)


def _all_results(rows: list[dict[str, Any]], hidden: int) -> str:
    body = []
    for r in rows:
        status = _badge(r["gate_status"])
        if r["status"] != r["gate_status"]:
            status += f' <span class="muted">(guard: {_e(r["status"])})</span>'
        if "waiver" in r:
            status += ' <span class="muted">waived</span>'
        body.append(
            [
                status,
                f"<code>{_e(r['artifact']['path'])}</code>",
                _e(r["guard"]),
                _e(headline(r)),
                f'<span class="nowrap">{r["duration_s"]:.3f} s</span>',
            ]
        )
    note = (
        f'<p class="muted">{hidden} result(s) of guards that do not apply to the artifact\'s format are not shown.</p>'
        if hidden
        else ""
    )
    return "<h2>All results</h2>" + _table(["status", "artifact", "guard", "message", "time"], body) + note


def _mix(result: dict[str, Any]) -> str:
    coverage = result.get("metrics", {}).get("coverage") or {}
    bases = [b for b in BASES if (coverage.get(b) or {}).get("by_bits")]
    if not bases:
        return ""
    keys: list[str] = []
    out = ['<table class="mixes"><tbody>']
    for basis in bases:
        cov = coverage[basis]
        keys += [k for k in cov["by_bits"] if k not in keys]
        title = f"{result['artifact']['path']}: precision mix by {basis}"
        out.append(
            f"<tr><th>{_e(basis)}</th><td>{svg_bar(cov['by_bits'], title)}</td>"
            f'<td class="num">quantized {_pct(cov.get("quantized"))}<br>int8 {_pct(cov.get("int8"))}'
            f"<br>int4 {_pct(cov.get('int4'))}</td></tr>"
        )
    out.append("</tbody></table>")
    compute = result.get("metrics", {}).get("compute_coverage") or {}
    if compute:
        # storage and compute precision are different facts (int8 weights can run in fp32)
        cells = [
            f"{_e(b)}: integer {_pct(c.get('integer'))}, unknown {_pct(c.get('unknown'))}" for b, c in compute.items()
        ]
        out.append(f"<p>compute precision — {'; '.join(cells)}</p>")
    return "".join(out) + svg_legend(keys)


def _headline_metrics(metrics: dict[str, Any]) -> str:
    keys = [
        ("int8_coverage", "int8 coverage", _pct),
        ("weight_ops", "weight-bearing ops", _num),
        ("quantized_ops", "quantized ops", _num),
        ("params_total", "weight params", _num),
        ("params_quantized", "quantized params", _num),
        ("bits_per_weight", "bits per weight", _num),
        ("unexpected_unquantized", "unexpected float layers", _num),
        ("expected_unquantized", "expected float layers", _num),
        ("flops_exact", "flops exact", _num),
    ]
    cells = [(label, fmt(metrics[k])) for k, label, fmt in keys if k in metrics]
    shown = {k for k, _, _ in keys} | {"coverage", "compute_coverage", "coverage_basis"}
    for key, value in metrics.items():
        if key not in shown and isinstance(value, (int, float, str, bool)):
            cells.append((key, _num(value)))
    if not cells:
        return ""
    return _table([c[0] for c in cells], [[c[1] for c in cells]], "metrics")


_BOUND_BADGE = {("held", "fail"): "PASS", ("held", "warn"): "PASS", ("broken", "fail"): "FAIL"}
_BOUND_BADGE[("broken", "warn")] = "WARN"


def _bounds(result: dict[str, Any]) -> str:
    if not result.get("bounds"):
        return ""
    body = [
        [
            f"<code>{_e(b['metric'])} {_e(b['op'])} {_num(b['value'])}</code>",
            _e(b["level"]),
            _num(b["actual"]) if b["actual"] is not None else "missing",
            _badge(_BOUND_BADGE.get((b["outcome"], b["level"]), "ERROR")) + f" {_e(b['outcome'])}",
        ]
        for b in result["bounds"]
    ]
    return "<h4>Bounds</h4>" + _table(["bound", "level", "actual", "outcome"], body, numeric=(2,))


def _findings(result: dict[str, Any]) -> str:
    if not result.get("findings"):
        return ""
    body = [
        [
            _e(f["severity"]),
            f"<code>{_e(f['code'])}</code>",
            _e(f["message"]),
            _e(", ".join(f"{k} {v}" for k, v in f.get("location", {}).items())),
        ]
        for f in result["findings"]
    ]
    return f"<h4>Findings ({len(body)})</h4>" + _table(["severity", "code", "message", "where"], body)


def _unquantized(result: dict[str, Any]) -> str:
    unq = result.get("unquantized") or []
    if not unq:
        return ""
    body = [
        [
            f"<code>{_e(u['name'])}</code>",
            _e(u["kind"]),
            _e("×".join(map(str, u["shape"]))),
            _e(u["dtype"]),
            _num(u["params"]),
            "yes" if u["expected"] else "<strong>no</strong>",
        ]
        for u in unq
    ]
    table = _table(["layer", "kind", "shape", "dtype", "params", "expected"], body, numeric=(4,))
    return f"<h4>Unquantized weight-bearing layers ({len(unq)})</h4>" + table


def _layers(result: dict[str, Any]) -> str:
    layers = result.get("layers")
    if not layers:
        return ""
    rows = []
    for i, layer in enumerate(layers):
        bits = layer.get("bits")
        bits_text = f"{bits:g}" if isinstance(bits, (int, float)) else "?"
        quantized = layer.get("quantized")
        state = "unknown" if quantized is None else ("yes" if quantized else "no")
        cls = "float" if quantized is False else ""
        rows.append(
            f'<tr class="{cls}"><td class="num">{i}</td><td><code>{_e(layer["name"])}</code></td>'
            f"<td>{_e(layer['kind'])}</td><td>{_e('×'.join(map(str, layer['shape'])))}</td>"
            f'<td>{_e(layer["dtype"])}</td><td class="num">{_e(bits_text)}</td>'
            f'<td>{state}</td><td class="num">{_num(layer["params"])}</td>'
            f'<td class="num">{_num(layer.get("bits_per_weight", ""))}</td>'
            f"<td>{_e(layer.get('compute', ''))}</td></tr>"
        )
    header = ["#", "layer", "kind", "shape", "dtype", "bits", "quantized", "params", "bpw", "compute"]
    omitted = result.get("layers_omitted", 0)
    note = f'<p class="muted">{omitted:,} more layer(s) not carried by the report.</p>' if omitted else ""
    opened = " open" if len(layers) <= OPEN_LAYER_TABLE_UP_TO else ""
    return (
        f"<details{opened}><summary><strong>Every weight-bearing layer ({len(layers) + omitted:,})"
        "</strong></summary>"
        '<table class="layers"><thead><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table>{note}</details>"
    )


def _result_card(r: dict[str, Any]) -> str:
    parts = [
        f'<div class="card result"><h3>{_badge(r["gate_status"])} <code>{_e(r["guard"])}</code></h3>',
        f"<p>{_e(headline(r))}</p>",
    ]
    if r.get("skip"):
        parts.append(f'<p class="muted">skipped: {_e(r["skip"]["reason"])} — {_e(r["skip"]["detail"])}</p>')
    if r.get("error"):
        err = r["error"]
        parts.append(f"<p>error <code>{_e(err['type'])}</code>: {_e(err['message'])}<br>hint: {_e(err['hint'])}</p>")
    if "waiver" in r:
        w = r["waiver"]
        parts.append(
            f"<p>waived until {_e(w['expires'])}: {_e(w['reason'])}"
            + (f" (approved by {_e(w['approved_by'])})" if w.get("approved_by") else "")
            + "</p>"
        )
    metrics = r.get("metrics") or {}
    parts += [_mix(r), _headline_metrics(metrics), _bounds(r), _findings(r), _unquantized(r), _layers(r)]
    parts.append("</div>")
    return "".join(parts)


def _details(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    out = ["<h2>Per artifact</h2>"]
    for a in report["artifacts"]:
        mine = by_severity([r for r in rows if r["artifact"]["path"] == a["path"]])
        out.append(
            f'<section class="artifact" id="{_anchor(a["path"])}"><h3>{_badge(_worst(mine))} '
            f'<code>{_e(a["path"])}</code> <span class="muted">{_e(a["format"])}, '
            f"{_num(a['size_bytes'])} bytes</span></h3>"
        )
        out += [_result_card(r) for r in mine]
        out.append("</section>")
    return "".join(out)


def render(report: dict[str, Any]) -> str:
    # control characters and lone surrogates shown escaped (quantgate.core.untrusted), then HTML-escaped
    report = clean(report)
    rows = by_severity(visible(report["results"]))
    verdict = report["verdict"]
    title = f"quantgate {verdict}: {report['summary']['artifacts']} artifact(s)"
    only = " (report only)" if report.get("report_only") and verdict == "FAIL" else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f'<h1>quantgate audit report</h1><p class="verdict">verdict {_badge(verdict)}{_e(only)} '
        f"· exit code {_e(report['exit_code'])}</p>",
        _counts(report),
        _provenance(report),
        _merge(report),
        _artifacts(report, rows),
        _problems(rows),
        _not_gated(report),
        _all_results(rows, len(report["results"]) - len(rows)),
        _details(report, rows),
        f'<p class="muted">Rendered from the canonical JSON report (schema_version '
        f"{_e(report['schema_version'])}); re-render with <code>quantgate render REPORT.json "
        "--format html</code>.</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
