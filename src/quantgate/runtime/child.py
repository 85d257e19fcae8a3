"""Run a runtime in a child process that prints one JSON document, and turn every way it can go wrong
(timeout, a signal, no JSON) into a finding: a crashing runtime costs one result, never the gate."""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any


def run_json_child(cmd: list[str], runtime: str, timeout_s: float) -> dict[str, Any]:
    """{"outputs": ...} or {"finding": (code, message)} from the child; never raises."""
    from quantgate.validators.pte_inspector import _child_env

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_child_env(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime} did not finish within {timeout_s:g} s")}
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime} crashed with {name} running the pair")}
    try:
        document = json.loads(proc.stdout)
    except ValueError:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime}'s child printed no result ({tail})")}
    if "finding" in document:
        code, message = document["finding"]
        return {"finding": (str(code), str(message))}
    return {"outputs": document.get("outputs", {})}
