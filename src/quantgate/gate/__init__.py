"""The gate: find artifacts (discovery), run the guards that apply and apply the policy (evaluate,
parallel), build one report (verdict); `session` runs them in that order for every entry point. This
module holds what they share: the artifact, the exit codes and the skip reasons.

Statuses and exit codes (docs/architecture.md#statuses-and-exit-codes):
  0 every required guard reached a verdict and none failed (WARN allowed unless fail_on = warn)
  1 at least one FAIL          2 at least one ERROR, or a required guard skipped (beats 1)
  3 no artifact, or no guard applied                     4 usage (raised before a report exists)
`status` is what a guard saw; `gate_status` is what the policy made of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantgate.core.result import BLOCKED_BY_INTEGRITY, DEPENDENCY_MISSING, DISABLED, NOT_APPLICABLE
from quantgate.formats.sniff import Sniffed

EXIT_PASS, EXIT_FAIL, EXIT_ERROR, EXIT_NO_INPUT, EXIT_USAGE = 0, 1, 2, 3, 4
VERDICT_EXIT = {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "ERROR": EXIT_ERROR, "NO_INPUT": EXIT_NO_INPUT}
# skip reasons that do not make a required guard an ERROR: the guard does not apply, or the
# artifact already failed integrity (the artifact's fault, reported as that FAIL)
BENIGN_SKIPS = (NOT_APPLICABLE, DISABLED, BLOCKED_BY_INTEGRITY)
# skip reasons that make a guard the policy bounds (require/warn) an ERROR even when it is not
# required: the policy asked for its numbers and the check never ran, which must not read as a PASS
BOUNDED_ERROR_SKIPS = (DEPENDENCY_MISSING,)


class UsageError(Exception):
    """Bad invocation: exit 4."""


@dataclass
class Artifact:
    path: str  # absolute
    display: str  # as shown in reports: relative to the working directory where possible
    sniffed: Sniffed
    size: int
    # what other files say about this artifact (a manifest's parameter count), for the guards
    hints: dict[str, Any] = field(default_factory=dict)
    # the real file (links resolved): what two paths to one file share, and what waivers name
    real: str = ""

    @property
    def format(self) -> str:
        return self.sniffed.format
