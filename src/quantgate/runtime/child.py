"""Run a runtime in a child process that prints one JSON document, and turn every way it can go wrong
(timeout, a signal, no JSON, too much memory) into a finding: a crashing runtime costs one result, never
the gate. The child runs in the runtime box (`quantgate.runtime.box`)."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Sequence
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


# --- the long-lived form (quantgate.runtime.box.BoxServer) ---------------------------------------------


def serve(document_of: Callable[[list[str]], dict[str, Any]], preload: Sequence[str] = ()) -> int:
    """The child's side: import `preload` once, print `{"runner": {...}}`, then answer each request line
    `{"argv": [...]}` with `{"document": document_of(argv), "restart": bool}` until stdin closes.
    `restart` asks the parent for a fresh child: the runtime failed, so its state is not trusted."""
    import importlib
    import os
    import time

    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stdout is kept for the replies: everything else printed goes to stderr
    started = time.perf_counter()
    hello: dict[str, Any] = {"runner": {"python": sys.version.split()[0], "served": True}}
    try:
        for module in preload:
            importlib.import_module(module)
        hello["runner"]["imports_s"] = round(time.perf_counter() - started, 3)
    except Exception as exc:
        hello["error"] = f"{type(exc).__name__}: {exc}"
    out.write(json.dumps(hello) + "\n")
    out.flush()
    if "error" in hello:
        return 0
    for line in sys.stdin:
        try:
            argv = json.loads(line)["argv"]
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise TypeError("argv must be a list of strings")
            document = document_of(argv)
        except (Exception, SystemExit) as exc:  # argparse exits on a bad request
            document = {"finding": ["FIDELITY_RUNTIME_FAILED", f"{type(exc).__name__}: {exc}"]}
        finding = document.get("finding")
        restart = bool(finding) and finding[0] == "FIDELITY_RUNTIME_FAILED"
        out.write(json.dumps({"document": document, "restart": restart}) + "\n")
        out.flush()
    return 0


def serve_json_child(module: str, args: list[str], runtime: str, timeout_s: float,
                     max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> dict[str, Any]:
    """`run_json_child` on this process's long-lived `python -m module --serve` (started on first use,
    restarted after any failure): the runtime's imports are paid once per run, not once per pair."""
    from quantgate.runtime import box

    served = box.server(("json", module), [sys.executable, "-m", module, "--serve"], child_env())
    try:
        proc = served.request({"argv": args}, timeout_s=timeout_s, max_rss_mb=max_rss_mb)
    except OSError as exc:
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime} could not be started: {exc}")}
    if proc.over_memory:
        return {"finding": ("RUNTIME_MEMORY_LIMIT", memory_message(runtime, max_rss_mb, proc.peak_rss_bytes))}
    if proc.timed_out:
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime} did not finish within {timeout_s:g} s")}
    if proc.hello and proc.hello.get("error"):
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime} could not be started: {proc.hello['error']}")}
    if proc.reply is None or not isinstance(proc.reply.get("document"), dict):
        if proc.returncode is not None and proc.returncode < 0:
            try:
                name = signal.Signals(-proc.returncode).name
            except ValueError:
                name = f"signal {-proc.returncode}"
            return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime} crashed with {name} running the pair")}
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"finding": ("FIDELITY_RUNTIME_FAILED", f"{runtime}'s child printed no result ({tail})")}
    document = proc.reply["document"]
    if "finding" in document:
        code, message = document["finding"]
        return {"finding": (str(code), str(message))}
    return {"outputs": document.get("outputs", {})}
