"""SARIF 2.1.0 for GitHub code scanning: a rule per finding code, per bound and per guard-level
failure; a result per error/warning finding, broken or missing bound, and guard FAIL/ERROR without one.

Every artifact-derived string goes through `plain` into `message.text` only: viewers render markdown
in `message.markdown` and in rule help, which this renderer never fills from an artifact.
"""

from __future__ import annotations

import json
from typing import Any

from quantgate import __version__
from quantgate.core.bounds import BROKEN, FAIL_LEVEL, MISSING, describe
from quantgate.core.untrusted import plain

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/quantgate/quantgate"
_FINDING_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def _level(result: dict[str, Any], own: str) -> str:
    # the gate's decision caps the level: a WARN under fail_on="fail" is no error, a waived FAIL is kept
    # with a suppression
    gate = result["gate_status"]
    if gate in ("FAIL", "ERROR") or "waiver" in result:
        return own
    if gate == "WARN":
        return "warning" if own == "error" else own
    return "note"


def _codes() -> dict[str, str]:
    try:
        from quantgate.core.codes import all_finding_codes

        return all_finding_codes()
    except Exception:  # a table that does not import only loses rule descriptions
        return {}


def render(report: dict[str, Any]) -> str:
    artifacts = [a["path"] for a in report["artifacts"]]
    run = _Run(_codes(), artifacts)
    for r in report["results"]:
        before = len(run.results)
        run.add_bounds(r)
        run.add_findings(r)
        if len(run.results) == before:
            run.add_guard_outcome(r)
        if "waiver" in r:
            run.suppress(r["waiver"], before)
    sarif_run = {
        "tool": {"driver": {
            "name": "quantgate",
            "version": report.get("tool", {}).get("version", __version__),
            "informationUri": INFO_URI,
            "rules": list(run.rules.values()),
        }},
        "invocations": [{
            "exitCode": report["exit_code"],
            "executionSuccessful": report["summary"].get("ERROR", 0) == 0,
        }],
        "artifacts": [{"location": {"uri": _uri(p), "uriBaseId": "%SRCROOT%"}} for p in artifacts],
        "results": run.results,
    }
    return json.dumps({"$schema": SCHEMA, "version": "2.1.0", "runs": [sarif_run]}, indent=1, ensure_ascii=True) + "\n"


class _Run:
    """The rules and results of one SARIF run, built result by result."""

    def __init__(self, codes: dict[str, str], artifacts: list[str]):
        self.codes = codes
        self.index = {p: i for i, p in enumerate(artifacts)}
        self.rules: dict[str, dict[str, Any]] = {}
        self.results: list[dict[str, Any]] = []

    def rule(self, rule_id: str, text: str) -> int:
        if rule_id not in self.rules:
            self.rules[rule_id] = {"id": rule_id, "shortDescription": {"text": plain(text)}}
        return list(self.rules).index(rule_id)

    def location(self, path: str, offset: int | None = None,
                 logical: list[dict[str, str]] | None = None) -> dict[str, Any]:
        physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(path), "uriBaseId": "%SRCROOT%"}}
        if path in self.index:
            physical["artifactLocation"]["index"] = self.index[path]
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            physical["region"] = {"byteOffset": offset}
        loc: dict[str, Any] = {"physicalLocation": physical}
        if logical:
            loc["logicalLocations"] = logical
        return loc

    def add_bounds(self, r: dict[str, Any]) -> None:
        """One result per broken or missing policy bound."""
        for b in r["bounds"]:
            if b["outcome"] not in (BROKEN, MISSING):
                continue
            rid = f"bound/{b['metric']}"
            self.results.append({
                "ruleId": rid,
                "ruleIndex": self.rule(rid, f"policy bound on {b['metric']}"),
                # a broken `warn` bound is a warning whatever else failed in the same result
                "level": _level(r, "error" if b.get("level") == FAIL_LEVEL else "warning"),
                "message": {"text": plain(f"{r['guard']}: {describe(b)}")},
                "locations": [self.location(r["artifact"]["path"])],
                "properties": {"guard": r["guard"], "outcome": b["outcome"]},
            })

    def add_findings(self, r: dict[str, Any]) -> None:
        """One result per error or warning finding, located by byte offset and tensor/field/op."""
        for f in r["findings"]:
            if f["severity"] not in ("error", "warning"):
                continue
            loc = f.get("location") or {}
            logical = [
                {"name": plain(loc[k]), "kind": "member" if k != "op" else "function"}
                for k in ("tensor", "field", "op")
                if k in loc
            ]
            self.results.append({
                "ruleId": f["code"],
                "ruleIndex": self.rule(f["code"], self.codes.get(f["code"], f["code"])),
                "level": _level(r, _FINDING_LEVEL[f["severity"]]),
                "message": {"text": plain(f"{r['guard']}: {f['message']}")},
                "locations": [self.location(r["artifact"]["path"], loc.get("offset"), logical)],
                "properties": {"guard": r["guard"], **{k: plain(v) for k, v in loc.items() if k != "offset"}},
            })

    def add_guard_outcome(self, r: dict[str, Any]) -> None:
        """A guard-level FAIL/ERROR with no finding or bound of its own (kept when waived, suppressed)."""
        decided = r["gate_status"] in ("FAIL", "ERROR") or (r["status"] in ("FAIL", "ERROR") and "waiver" in r)
        if not decided:
            return
        kind = "error" if r["status"] == "ERROR" else "fail"
        rid = f"guard/{r['guard']}/{kind}"
        text = r["message"]
        if r.get("error"):
            text = f"{r['error']['message']} — {r['error']['hint']}"
        self.results.append({
            "ruleId": rid,
            "ruleIndex": self.rule(rid, f"guard {r['guard']} {'could not run' if kind == 'error' else 'failed'}"),
            "level": "error",
            "message": {"text": plain(f"{r['guard']}: {text}")},
            "locations": [self.location(r["artifact"]["path"])],
            "properties": {"guard": r["guard"]},
        })

    def suppress(self, waiver: dict[str, Any], since: int) -> None:
        """Mark the results of a waived guard result (those from `since` on) as accepted suppressions."""
        for res in self.results[since:]:
            res["suppressions"] = [{
                "kind": "external",
                "status": "accepted",
                "justification": plain(f"waived until {waiver.get('expires')}: {waiver.get('reason')}"),
            }]


def _uri(path: str) -> str:
    """The artifact's path as a relative URI reference (percent-encoded; no control character survives)."""
    from urllib.parse import quote

    text = str(path).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return quote(text.encode("utf-8", "surrogateescape"), safe="/-._~")
