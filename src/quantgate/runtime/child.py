"""The one subprocess helper for every runtime child, both sides of the pipe.

The parent side: `run_once` (a child that prints one JSON document and exits) and `run_served` (a
request to this process's long-lived runner, `quantgate.runtime.box.BoxServer`) start, feed, limit
(time, resident memory, process group, parent-death signal: `quantgate.runtime.box`) and reap the
child, and return one `ChildRun`: the child's JSON document, or the one way it failed (`failure`).
`pte-inspector` and fidelity's output runs read the same `ChildRun`, so a crash, a timeout or the
memory limit means the same in both; `run_json_child` / `serve_json_child` turn it into fidelity's
findings (a crashing runtime costs one result, never the gate).

The child side: `serve` answers one JSON request per line (the long-lived form), `json_stdout` keeps
stdout for the one JSON document of the one-shot form, and `fault` makes a child fail on purpose
(tests only: `--fault KIND`, or QUANTGATE_RUNNER_FAULT=KIND:NAME to make a served request naming a
file NAME fail in way KIND, so a fault can hit one program of many, in any runtime child).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from quantgate.runtime.box import DEFAULT_MAX_RSS_MB, child_env, memory_message, run_boxed, server

DEFAULT_TIMEOUT_S = 120.0

# how a child failed (ChildRun.failure)
START = "start"  # it could not be started (an OSError)
MEMORY = "memory"  # killed over the memory limit
TIMEOUT = "timeout"  # killed at the deadline
IMPORT = "import"  # a runner that could not import its runtime (said so in its first line)
CRASH = "crash"  # died by a signal without a result
NO_RESULT = "no_result"  # exited without a JSON document


@dataclass
class ChildRun:
    """What one runtime child (or one request to a runner) gave: a document, or why not."""

    document: dict[str, Any] | None = None
    failure: str | None = None
    detail: str = ""  # START / IMPORT: the error; CRASH: the signal's name
    returncode: int | None = None
    stderr_tail: str = ""  # the child's last stderr lines (they name the cause), " | "-joined
    peak_rss_bytes: int | None = None
    runner: dict[str, Any] = field(default_factory=dict)  # the served runner's hello (versions, import time)


def timeout_within(timeout: object, gate_timeout_s: float | None) -> float:
    """The child's time limit: `--param timeout` (default 120 s), kept under the gate's own budget
    for the guard so that the child's overrun is reported by the guard itself."""
    seconds = float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S  # type: ignore[arg-type]
    if gate_timeout_s:
        seconds = min(seconds, max(1.0, gate_timeout_s * 0.9))
    return seconds


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _tail(stderr: str) -> str:
    return " | ".join(line for line in stderr.strip().splitlines()[-3:] if line.strip())


def run_once(cmd: list[str], *, timeout_s: float, max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> ChildRun:
    """Run cmd (a child printing one JSON object on stdout) in the box; never raises."""
    try:
        proc = run_boxed(cmd, timeout_s=timeout_s, max_rss_mb=max_rss_mb, env=child_env())
    except OSError as exc:
        return ChildRun(failure=START, detail=str(exc))
    run = ChildRun(returncode=proc.returncode, stderr_tail=_tail(proc.stderr), peak_rss_bytes=proc.peak_rss_bytes)
    if proc.over_memory:
        run.failure = MEMORY
    elif proc.timed_out:
        run.failure = TIMEOUT
    elif proc.returncode is not None and proc.returncode < 0:
        run.failure, run.detail = CRASH, signal_name(proc.returncode)
    else:
        try:
            document = json.loads(proc.stdout)
        except ValueError:
            document = None
        if isinstance(document, dict):
            run.document = document
        else:
            run.failure = NO_RESULT
    return run


def run_served(key: tuple[str, ...], cmd: list[str], request: dict[str, Any], *, timeout_s: float,
               max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> ChildRun:
    """One request to this process's long-lived runner for `key` (`cmd`, started on first use and
    restarted after any failure: its imports are paid once per run, or per `--jobs` worker); never raises."""
    try:
        proc = server(key, cmd, child_env()).request(request, timeout_s=timeout_s, max_rss_mb=max_rss_mb)
    except OSError as exc:
        return ChildRun(failure=START, detail=str(exc))
    hello = proc.hello or {}
    run = ChildRun(returncode=proc.returncode, stderr_tail=_tail(proc.stderr), peak_rss_bytes=proc.peak_rss_bytes,
                   runner=dict(hello.get("runner") or {}))
    document = (proc.reply or {}).get("document")
    if proc.over_memory:
        run.failure = MEMORY
    elif proc.timed_out:
        run.failure = TIMEOUT
    elif hello.get("error"):
        run.failure, run.detail = IMPORT, str(hello["error"])
    elif isinstance(document, dict):
        run.document = document
    elif proc.returncode is not None and proc.returncode < 0:
        run.failure, run.detail = CRASH, signal_name(proc.returncode)
    else:
        run.failure = NO_RESULT
    return run


# --- fidelity's output runs: a ChildRun as {"outputs": ...} or {"finding": (code, message)} --------------


def _as_outputs(run: ChildRun, runtime: str, timeout_s: float, max_rss_mb: int) -> dict[str, Any]:
    failed = "FIDELITY_RUNTIME_FAILED"
    if run.failure in (START, IMPORT):
        return {"finding": (failed, f"{runtime} could not be started: {run.detail}")}
    if run.failure == MEMORY:
        return {"finding": ("RUNTIME_MEMORY_LIMIT", memory_message(runtime, max_rss_mb, run.peak_rss_bytes))}
    if run.failure == TIMEOUT:
        return {"finding": (failed, f"{runtime} did not finish within {timeout_s:g} s")}
    if run.failure == CRASH:
        return {"finding": (failed, f"{runtime} crashed with {run.detail} running the pair")}
    if run.document is None:
        return {"finding": (failed, f"{runtime}'s child printed no result ({run.stderr_tail})")}
    if "finding" in run.document:
        code, message = run.document["finding"]
        return {"finding": (str(code), str(message))}
    return {"outputs": run.document.get("outputs", {})}


def run_json_child(cmd: list[str], runtime: str, timeout_s: float,
                   max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> dict[str, Any]:
    """{"outputs": ...} or {"finding": (code, message)} from a one-shot child; never raises."""
    return _as_outputs(run_once(cmd, timeout_s=timeout_s, max_rss_mb=max_rss_mb), runtime, timeout_s, max_rss_mb)


def serve_json_child(module: str, args: list[str], runtime: str, timeout_s: float,
                     max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> dict[str, Any]:
    """`run_json_child` on this process's long-lived `python -m module --serve`: the runtime's imports
    are paid once per run, not once per pair."""
    run = run_served(("json", module), [sys.executable, "-m", module, "--serve"], {"argv": args},
                     timeout_s=timeout_s, max_rss_mb=max_rss_mb)
    return _as_outputs(run, runtime, timeout_s, max_rss_mb)


# --- the child's side -------------------------------------------------------------------------------


def fault(kind: str, workdir: str | None = None) -> None:
    """Fail on purpose, in way `kind` (tests only): segv|abort|hang|nojson|garbage|memory|grandchild|orphan."""
    import time

    if kind in ("grandchild", "orphan"):
        # a grandchild that would outlive the child; the pids go to the workdir for the test to check
        import subprocess

        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        if workdir:
            Path(workdir, "pids").write_text(f"{os.getpid()} {grandchild.pid}\n")
        if kind == "orphan":
            sys.exit(0)
        time.sleep(3600)
    elif kind == "memory":
        hog = b"\x01" * (1 << 30)  # touched, so resident: the box's memory watchdog must kill this
        time.sleep(60)
        del hog
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        time.sleep(3600)
    elif kind == "nojson":
        sys.exit(0)
    elif kind == "garbage":
        sys.stdout.write("this is not json\n")
        sys.exit(0)
    raise SystemExit(f"unknown --fault {kind!r}")


@contextlib.contextmanager
def json_stdout() -> Iterator[TextIO]:
    """The real stdout, kept for the child's JSON; everything else printed (the runtime's log lines,
    Python warnings) goes to stderr meanwhile and after."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    with out:
        yield out


def _named_files(request: Any) -> set[str]:
    """The file names a request mentions (its `path`, its `argv`): what QUANTGATE_RUNNER_FAULT matches."""
    if not isinstance(request, dict):
        return set()
    items = [request.get("path"), *(request.get("argv") or [])]
    return {Path(item).name for item in items if isinstance(item, str) and item}


def serve(answer: Callable[[Any], tuple[dict[str, Any], bool]], preload: Sequence[str] = (),
          describe: Callable[[], dict[str, Any]] | None = None, workdir: str | None = None) -> int:
    """The long-lived child: import `preload` once, print `{"runner": {...}}` (with what `describe`
    adds, e.g. versions; or `{"runner": ..., "error": ...}`), then answer each request line with
    `{"document": document, "restart": bool}` from `answer(request)` (the parsed line, or None when it
    is not JSON) until stdin closes. `restart` asks the parent for a fresh child: the runtime failed
    in a way that may leave state, so it is not trusted with the next program."""
    import importlib
    import time

    fault_kind, _, fault_name = os.environ.get("QUANTGATE_RUNNER_FAULT", "").partition(":")
    with json_stdout() as out:
        started = time.perf_counter()
        hello: dict[str, Any] = {"runner": {"python": sys.version.split()[0], "served": True}}
        try:
            for module in preload:
                importlib.import_module(module)
            hello["runner"]["imports_s"] = round(time.perf_counter() - started, 3)
            hello["runner"].update(describe() if describe is not None else {})
        except Exception as exc:
            hello["error"] = f"{type(exc).__name__}: {exc}"
        out.write(json.dumps(hello) + "\n")
        out.flush()
        if "error" in hello:
            return 0
        for line in sys.stdin:
            try:
                request = json.loads(line)
            except ValueError:
                request = None
            if fault_kind and fault_name in _named_files(request):
                fault(fault_kind, workdir)
            document, restart = answer(request)
            out.write(json.dumps({"document": document, "restart": restart}) + "\n")
            out.flush()
    return 0


def answer_argv(document_of: Callable[[list[str]], dict[str, Any]]) -> Callable[[Any], tuple[dict[str, Any], bool]]:
    """`serve`'s answer for a child whose request is a command line `{"argv": [...]}` and whose document
    is `{"outputs": ...}` or `{"finding": [CODE, message]}`: a runtime failure asks for a fresh child."""

    def answer(request: Any) -> tuple[dict[str, Any], bool]:
        try:
            argv = request["argv"]
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise TypeError("argv must be a list of strings")
            document = document_of(argv)
        except (Exception, SystemExit) as exc:  # argparse exits on a bad request
            document = {"finding": ["FIDELITY_RUNTIME_FAILED", f"{type(exc).__name__}: {exc}"]}
        finding = document.get("finding")
        return document, bool(finding) and finding[0] == "FIDELITY_RUNTIME_FAILED"

    return answer


def main_json(document_of: Callable[[list[str]], dict[str, Any]], argv: list[str], preload: Sequence[str]) -> int:
    """The `main` of a child computing one JSON document from a command line: `--serve` alone makes it
    long-lived (`serve`); otherwise it prints the one document for argv."""
    if argv == ["--serve"]:
        return serve(answer_argv(document_of), preload)
    with json_stdout() as out:
        out.write(json.dumps(document_of(argv)) + "\n")
    return 0
