"""Run a runtime in a child process that prints one JSON document, and turn every way it can go wrong
(timeout, a signal, no JSON, too much memory) into a finding: a crashing runtime costs one result, never
the gate. The child runs in the runtime box (`quantgate.runtime.box`)."""

from __future__ import annotations

import json
import signal
from typing import Any

from quantgate.runtime.box import DEFAULT_MAX_RSS_MB, child_env, memory_message, run_boxed


def run_json_child(cmd: list[str], runtime: str, timeout_s: float,
                   max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> dict[str, Any]:
    """{"outputs": ...} or {"finding": (code, message)} from the child; never raises."""
    try:
        proc = run_boxed(cmd, timeout_s=timeout_s, max_rss_mb=max_rss_mb, env=child_env())
    except OSError as exc:
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime} could not be started: {exc}")}
    if proc.over_memory:
        return {"finding": ("RUNTIME_MEMORY_LIMIT", memory_message(runtime, max_rss_mb, proc.peak_rss_bytes))}
    if proc.timed_out:
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime} did not finish within {timeout_s:g} s")}
    if proc.returncode is not None and proc.returncode < 0:
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
