"""`integrity`: the file is what it claims to be.

Sniff-level findings (empty, unknown content, an LFS pointer) are decided here; every format reader
adds its structural findings (magic, offsets, lengths, truncation, trailing bytes...) through the
inventory, so this guard is where all of them land.
"""

from __future__ import annotations

import re

from quantgate.core import findings as F
from quantgate.core.result import NOT_APPLICABLE
from quantgate.formats import MODEL_FORMATS
from quantgate.formats import sniff as S
from quantgate.guards.base import Guard, GuardConfig, GuardContext, Outcome

LFS_HINT = "fetch the LFS objects before gating: `git lfs pull`, or `lfs: true` on actions/checkout"


def _lfs_detail(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            text = handle.read(1024).decode("utf-8", errors="replace")
    except OSError:
        return ""
    oid = re.search(r"^oid sha256:([0-9a-f]{64})$", text, re.MULTILINE)
    size = re.search(r"^size (\d+)$", text, re.MULTILINE)
    parts = []
    if oid:
        parts.append(f"oid sha256:{oid.group(1)[:12]}…")
    if size:
        parts.append(f"{int(size.group(1)):,} bytes")
    return f" ({', '.join(parts)})" if parts else ""


class IntegrityGuard(Guard):
    id = "integrity"
    metric_names = ("findings_error", "findings_warning")
    description = (
        "the file is what it claims: magic, version, every offset and length inside the file, no "
        "overlaps, alignment, truncation, trailing bytes, LFS pointer files"
    )
    needs_structure = False

    def measure(self, ctx: GuardContext, config: GuardConfig) -> Outcome:
        outcome = self._measure(ctx)
        # what discovery saw about how the file was reached (a link out of the scanned folder)
        for item in ctx.hints.get("link_findings") or []:
            outcome.findings.insert(0, F.warning(item["code"], item["message"]))
        return outcome

    def _measure(self, ctx: GuardContext) -> Outcome:
        fmt = ctx.format
        if fmt == S.UNREADABLE:
            return Outcome(
                findings=[F.error("FILE_UNREADABLE", f"cannot read the file: {ctx.sniffed.detail}")],
                error=(
                    "unreadable",
                    f"cannot read {ctx.display_path}: {ctx.sniffed.detail}",
                    "check the path and its permissions",
                ),
            )
        if fmt == S.LFS_POINTER:
            message = f"{ctx.display_path} is a Git LFS pointer, not the artifact{_lfs_detail(ctx.path)}"
            return Outcome(
                findings=[F.error("LFS_POINTER", message)],
                error=("lfs_pointer", message, LFS_HINT),
            )
        if fmt == S.EMPTY:
            return Outcome(findings=[F.error("FILE_EMPTY", "the file has zero bytes; re-export or re-download it")])
        if fmt == S.UNKNOWN:
            return Outcome(findings=[F.error("FORMAT_UNKNOWN", f"not a supported model format: {ctx.sniffed.detail}")])
        if fmt == S.UNSUPPORTED:
            return Outcome(findings=[F.error("FORMAT_UNSUPPORTED", f"{ctx.sniffed.detail}")])
        if fmt not in MODEL_FORMATS:
            return Outcome(skip=(NOT_APPLICABLE, f"{fmt} files are checked through the artifact that uses them"))
        inventory = ctx.inventory()
        if inventory is None:
            return Outcome(
                error=(
                    "reader_missing",
                    f"no structural reader for {fmt} in this version",
                    "upgrade quantgate",
                ),
            )
        found = inventory.structural_findings
        metrics = {
            "findings_error": sum(1 for f in found if f.severity == F.ERROR),
            "findings_warning": sum(1 for f in found if f.severity == F.WARNING),
        }
        summary = f"{fmt} structure sound"
        if inventory.facts.get("summary"):
            summary += f": {inventory.facts['summary']}"
        return Outcome(metrics=metrics, findings=list(found), summary=summary)


GUARD = IntegrityGuard()
