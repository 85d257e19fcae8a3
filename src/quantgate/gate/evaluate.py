"""One artifact: its guards run through run_guard, and the policy's decision on each result (waivers,
required guards, fail_on)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quantgate.core.progress import log
from quantgate.core.result import (
    ERROR,
    FAIL,
    PASS,
    SKIP,
    WARN,
    GuardResult,
)
from quantgate.gate import BENIGN_SKIPS, BOUNDED_ERROR_SKIPS, Artifact
from quantgate.guards import get_guard
from quantgate.guards.base import GuardContext, run_guard

if TYPE_CHECKING:  # annotations only; the policy module pulls in tomllib, difflib and the schema loader
    import datetime as dt

    from quantgate.gate.policy import Policy, Waiver


def _waivers_for(artifact: Artifact, policy: Policy, guard_id: str | None = None) -> list[Waiver]:
    out = []
    for waiver in policy.waivers:
        target = (policy.root / waiver.artifact).resolve()
        if str(target) in (artifact.path, artifact.real) and (guard_id is None or waiver.guard == guard_id):
            out.append(waiver)
    return out


def gate_decision(
    result: dict[str, Any],
    *,
    required: bool,
    fail_on: str,
    waivers: Sequence[Waiver],
    sha256: str | None,
    today: dt.date,
    bounded: bool = False,
) -> dict[str, Any]:
    """Add `gate_status`, `required` and the waiver (applied or rejected) to a result dict.

    `bounded`: the policy sets bounds on this guard's metrics; such a guard that could not run
    here (its extra is not installed) is an ERROR, like a required one."""
    status = result["status"]
    gate = status
    result["required"] = required
    if status == SKIP and required and result["skip"]["reason"] not in BENIGN_SKIPS:
        gate = ERROR
    elif status == SKIP and bounded and result["skip"]["reason"] in BOUNDED_ERROR_SKIPS:
        gate = ERROR
        result["message"] = (
            f"the policy bounds {result['guard']}'s metrics but it cannot run here: {result['skip']['detail']}"
        )
    elif status == WARN and fail_on == "warn":
        gate = FAIL
    if gate in (FAIL, WARN) and status in (FAIL, WARN):
        for waiver in waivers:
            if waiver.expires < today:
                result["waiver_rejected"] = {
                    "reason": f"expired on {waiver.expires.isoformat()}",
                    "waiver": waiver.to_dict(),
                }
            elif sha256 is None or waiver.sha256 != sha256:
                result["waiver_rejected"] = {
                    "reason": "sha256 does not match the artifact (it changed since the waiver was granted)",
                    "waiver": waiver.to_dict(),
                }
            else:
                result.pop("waiver_rejected", None)
                result["waiver"] = waiver.to_dict()
                gate = PASS
                break
    result["gate_status"] = gate
    return result


def artifact_context(artifact: Artifact, policy: Policy, hash_all: bool) -> GuardContext:
    """The artifact as its guards see it (read once, shared by them); hashed when asked or when a waiver
    names it (a waiver holds only for the bytes it was granted on)."""
    ctx = GuardContext(artifact.path, artifact.sniffed, artifact.size, artifact.display)
    ctx.hints.update(artifact.hints)
    if (hash_all or _waivers_for(artifact, policy)) and artifact.format not in ("unreadable",):
        from quantgate.core.hashing import sha256_file  # hashlib: only when hashing

        try:
            ctx.sha256 = sha256_file(artifact.path, artifact.display)
        except OSError as exc:
            log(f"quantgate: cannot hash {artifact.display}: {exc}")
    return ctx


def evaluate_guards(
    ctx: GuardContext,
    artifact: Artifact,
    policy: Policy,
    guards: Sequence[str],
    fail_on: str,
    today: dt.date | None = None,
) -> list[dict[str, Any]]:
    """`guards` on one artifact (its `artifact_context`), each with the gate's decision; never raises."""
    import datetime as dt

    today = today or dt.date.today()
    waivers = _waivers_for(artifact, policy)
    results = []
    for guard_id in guards:
        gp = policy.guard(guard_id)
        if not gp.enabled:
            result = GuardResult.disabled(guard_id, ctx.artifact_info())
        else:
            result = run_guard(get_guard(guard_id), ctx, policy.guard_config(guard_id))
        results.append(
            gate_decision(
                result.to_dict(),
                required=gp.required,
                fail_on=fail_on,
                waivers=[w for w in waivers if w.guard == guard_id],
                sha256=ctx.sha256,
                today=today,
                bounded=bool(gp.require or gp.warn),
            )
        )
    return results


def evaluate_artifact(
    artifact: Artifact,
    policy: Policy,
    selected: Sequence[str],
    hash_all: bool,
    fail_on: str,
    today: dt.date | None = None,
) -> list[dict[str, Any]]:
    """Every selected guard on one artifact, with the gate's decision; never raises."""
    return evaluate_guards(artifact_context(artifact, policy, hash_all), artifact, policy, selected, fail_on, today)
