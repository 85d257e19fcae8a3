"""Findings: what a reader or guard saw wrong (or worth noting) in an artifact.

Every finding has a stable code (listed in docs/finding-codes.md), a severity and a location a person can go
to: a byte offset, a tensor, a field or an op. Readers never raise on bad input; they return these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ERROR = "error"
WARNING = "warning"
INFO = "info"
SEVERITIES = (ERROR, WARNING, INFO)


@dataclass
class Finding:
    code: str
    severity: str
    message: str
    offset: int | None = None
    tensor: str | None = None
    field: str | None = None
    op: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def location(self) -> dict[str, Any]:
        loc: dict[str, Any] = {}
        for key in ("offset", "tensor", "field", "op"):
            value = getattr(self, key)
            if value is not None:
                loc[key] = value
        return loc

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "location": self.location(),
        }
        if self.extra:
            out["extra"] = self.extra
        return out

    def where(self) -> str:
        """Short human form of the location, e.g. 'offset 1472, tensor blk.0.attn_q.weight'."""
        parts = []
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        for key in ("tensor", "field", "op"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key} {value}")
        return ", ".join(parts)


def error(code: str, message: str, **loc: Any) -> Finding:
    return Finding(code, ERROR, message, **loc)


def warning(code: str, message: str, **loc: Any) -> Finding:
    return Finding(code, WARNING, message, **loc)


def info(code: str, message: str, **loc: Any) -> Finding:
    return Finding(code, INFO, message, **loc)


# How many findings of one code a reader lists; the rest are counted in one info notice. Every reader uses
# this cap, so a hostile file with a million bad entries gives a readable report of any format.
FINDINGS_PER_CODE = 20


class CappedFindings:
    """Appends findings to `out`, at most FINDINGS_PER_CODE of each code; `close()` then adds one info
    notice per capped code saying how many were left out, under the reader's own notice code
    (`overflow_code`: ST_TOO_MANY_FINDINGS, ONNX_FINDINGS_CAPPED...) or else under the capped code."""

    def __init__(self, out: list[Finding], overflow_code: str | None = None, limit: int = FINDINGS_PER_CODE):
        self.out = out
        self.limit = limit
        self.overflow_code = overflow_code
        self.counts: dict[str, int] = {}

    def add(self, finding: Finding) -> None:
        n = self.counts.get(finding.code, 0) + 1
        self.counts[finding.code] = n
        if n <= self.limit:
            self.out.append(finding)

    def close(self) -> list[Finding]:
        """Add the notices (once: the counts restart) and return `out`."""
        for code, n in self.counts.items():
            if n > self.limit:
                message = f"{n - self.limit} more {code} finding(s) not listed ({n} in all)"
                self.out.append(info(self.overflow_code or code, message, field=code))
        self.counts = {}
        return self.out


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)


# Codes raised by the shared layers (sniffing, bounded reads, discovery, the gate). Readers, guards and
# helpers keep their own tables beside their code (a module-level FINDING_CODES dict); quantgate.core.codes
# gathers them all and writes docs/finding-codes.md (`make docs`).
FINDING_CODES = {
    "FILE_EMPTY": "The file has zero bytes.",
    "FILE_UNREADABLE": "The file could not be opened or read (an error: permissions, a directory, a broken link).",
    "FORMAT_UNKNOWN": "The content is none of the supported formats (PTE, GGUF, safetensors, ONNX).",
    "FORMAT_UNSUPPORTED": "The content is a known format that quantgate does not gate (PyTorch zip, "
    "pickle, legacy GGML).",
    "LINK_OUTSIDE_ROOT": "A symbolic link in the scanned folder resolves outside it (and not into its Hugging Face "
    "cache repo's `blobs/`): the file gated is not part of the folder (a warning on `integrity`).",
    "SIBLING_NOT_READ": "A file read beside the artifact (config.json, a sharded index) resolves outside the "
    "artifact's folder or is not a regular file: it was not read (a warning).",
    "LFS_POINTER": "The file is a Git LFS pointer, not the artifact: the LFS object was not fetched (an error, "
    "with a hint).",
    "READ_BUDGET_EXHAUSTED": "The reader visited more records than a file of this size can hold "
    "(shared-offset amplification); the rest was not read.",
}
