"""`manifest`: the release manifest is a checked contract.

Schema first (every error, each with its JSON path), then each artifact's claims against the file
next to the manifest: path confined to the folder, present, size, sha256, format, method, coverage
on the claimed basis within `coverage_tolerance`, parameters and layer lists. Each false claim is
its own finding with its own code, so one bad claim never hides the others.
"""

from __future__ import annotations

from pathlib import Path

from quantgate.core import findings as F
from quantgate.core.coverage import DEFAULT_COVERAGE_TOLERANCE
from quantgate.formats.sniff import MANIFEST
from quantgate.guards.base import Guard, GuardConfig, GuardContext, Outcome
from quantgate.manifest.check import FINDING_CODES as MANIFEST_CODES
from quantgate.manifest.check import (
    ManifestError,
    check_artifact,
    claimed_artifacts,
    form_of,
    load_manifest,
    schema_findings,
)

FINDING_CODES = MANIFEST_CODES


class ManifestGuard(Guard):
    id = "manifest"
    metric_names = ("form", "artifacts", "claims_checked", "claims_false", "measured")
    description = "the release manifest: JSON Schema, then every claim checked against the artifact it names"
    formats = (MANIFEST,)
    needs_structure = False

    def measure(self, ctx: GuardContext, config: GuardConfig) -> Outcome:
        try:
            doc, found = load_manifest(ctx.path)
        except ManifestError as exc:
            return Outcome(findings=[exc.finding], metrics={"artifacts": 0, "claims_checked": 0, "claims_false": 1})
        found += schema_findings(doc)
        tolerance = float(config.param("coverage_tolerance", DEFAULT_COVERAGE_TOLERANCE))
        folder = Path(ctx.path).parent
        claims = claimed_artifacts(doc)
        checked = 0
        measured = []
        for claim in claims:
            out, seen, n = check_artifact(claim, folder, tolerance)
            found += out
            checked += n
            measured.append(seen)
        false = sum(1 for f in found if f.severity == F.ERROR)
        metrics = {
            "form": form_of(doc),
            "artifacts": len(claims),
            "claims_checked": checked,
            "claims_false": false,
            "measured": measured,
        }
        summary = f"{checked} claim(s) about {len(claims)} artifact(s) hold"
        return Outcome(metrics=metrics, findings=found, summary=summary)


GUARD = ManifestGuard()
