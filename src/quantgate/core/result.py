"""GuardResult: the one object a guard emits (schemas/guard-result.schema.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantgate import SCHEMA_VERSION
from quantgate.core.findings import Finding

PASS = "PASS"
FAIL = "FAIL"
WARN = "WARN"
SKIP = "SKIP"
ERROR = "ERROR"
STATUSES = (PASS, FAIL, WARN, SKIP, ERROR)
GUARD_EXIT = {PASS: 0, WARN: 0, SKIP: 0, FAIL: 1, ERROR: 2}

# skip reasons (closed list; `blocked_by:<guard>` carries the guard id)
NOT_APPLICABLE = "not_applicable"
DISABLED = "disabled"
DEPENDENCY_MISSING = "dependency_missing"
NO_INPUT = "no_input"  # a guard that needs something the artifact and policy did not give
BLOCKED_BY_INTEGRITY = "blocked_by:integrity"


@dataclass
class ArtifactInfo:
    path: str
    format: str
    size_bytes: int
    sha256: str | None = None
    # a remote artifact's provenance: url (no credentials), size, etag, bytes_fetched, requests
    remote: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "format": self.format, "size_bytes": self.size_bytes}
        if self.sha256:
            out["sha256"] = self.sha256
        if self.remote:
            out["remote"] = self.remote
        return out


@dataclass
class GuardResult:
    guard: str
    status: str
    message: str
    artifact: ArtifactInfo
    metrics: dict[str, Any] = field(default_factory=dict)
    bounds: list[dict[str, Any]] = field(default_factory=list)
    unquantized: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    skip: dict[str, str] | None = None
    error: dict[str, str] | None = None
    duration_s: float = 0.0
    layers: list[dict[str, Any]] | None = None  # optional: every weight-bearing layer (capped)
    layers_omitted: int = 0

    @classmethod
    def skipped(cls, guard: str, artifact: ArtifactInfo, reason: str, detail: str) -> GuardResult:
        """The guard did not run: `reason` from the closed list above, `detail` for a person."""
        return cls(guard=guard, status=SKIP, message=f"skipped ({reason}): {detail}", artifact=artifact,
                   skip={"reason": reason, "detail": detail})

    @classmethod
    def disabled(cls, guard: str, artifact: ArtifactInfo) -> GuardResult:
        """The policy turned the guard off (`enabled = false`)."""
        return cls.skipped(guard, artifact, DISABLED, "disabled by the policy")

    @classmethod
    def errored(cls, guard: str, artifact: ArtifactInfo, etype: str, message: str, hint: str) -> GuardResult:
        """The guard could not decide (timeout, memory, a guard bug, a missing metric...)."""
        return cls(guard=guard, status=ERROR, message=f"{message} ({hint})" if hint else message, artifact=artifact,
                   error={"type": etype, "message": message, "hint": hint})

    @classmethod
    def crashed(cls, guard: str, artifact: ArtifactInfo, message: str) -> GuardResult:
        """The process gating the artifact died (a signal, a watchdog): every guard on it is an ERROR."""
        return cls(guard=guard, status=ERROR, message=message, artifact=artifact,
                   error={"type": "crash", "message": message, "hint": "this is a quantgate bug; please report it"})

    @property
    def exit_code(self) -> int:
        """What `quantgate guard` exits with for this result: 0 PASS/WARN/SKIP, 1 FAIL, 2 ERROR."""
        return GUARD_EXIT[self.status]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": SCHEMA_VERSION,
            "guard": self.guard,
            "status": self.status,
            "message": self.message,
            "artifact": self.artifact.to_dict(),
            "metrics": self.metrics,
            "bounds": self.bounds,
            "unquantized": self.unquantized,
            "findings": [f.to_dict() for f in self.findings],
            "skip": self.skip,
            "error": self.error,
            "duration_s": round(self.duration_s, 6),
        }
        if self.layers is not None:
            out["layers"] = self.layers
            if self.layers_omitted:
                out["layers_omitted"] = self.layers_omitted
        return out
