"""`--jobs`: long-lived worker processes fed batches of artifacts, stopped with the gate."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from quantgate.core.result import (
    ERROR,
    ArtifactInfo,
    GuardResult,
)
from quantgate.gate import Artifact
from quantgate.gate.evaluate import evaluate_artifact
from quantgate.guards import get_guard

if TYPE_CHECKING:  # annotations only; the policy module pulls in tomllib, difflib and the schema loader
    from quantgate.gate.policy import Policy


def _crash_results(artifact: Artifact, selected: Sequence[str], policy: Policy, why: str) -> list[dict[str, Any]]:
    info = ArtifactInfo(artifact.display, artifact.format, artifact.size)
    out = []
    for guard_id in selected:
        result = GuardResult.crashed(guard_id, info, f"the worker reading {artifact.display} {why}").to_dict()
        result.update(gate_status=ERROR, required=policy.guard(guard_id).required)
        out.append(result)
    return out


def _worker(
    conn: Any, policy: Policy, selected: Sequence[str], hash_all: bool, fail_on: str,
    parent_pid: int | None = None,
) -> None:
    """A long-lived worker: takes batches of artifacts from `conn` until it gets None, sends back one
    ("done", path, results, startups) per artifact, so a crash costs only the artifact it was on. Its
    runtime runners live as long as it does: their start-up is paid once per worker, not per artifact."""
    import signal

    from quantgate.runtime import box

    # a worker dies with the gate: SIGTERM when the parent dies (Linux), and on SIGTERM it kills the
    # process groups of the runtime children it started before it exits
    def _stop(signum: int, _frame: Any) -> None:
        box.kill_all()
        # os._exit, not SystemExit: a forked worker must not run the parent's inherited atexit handlers
        # and buffers, nor unwind from whatever frame the signal interrupted (a reader, a pipe send)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it SIGTERMs us
    box.die_with_parent(signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the death signal was armed
    box.reset_after_fork()  # the runners and counts inherited through fork are the parent's
    try:
        while True:
            batch = conn.recv()
            if batch is None:
                break
            for artifact in batch:
                out = evaluate_artifact(artifact, policy, selected, hash_all, fail_on)
                conn.send(("done", artifact.path, out, box.startups()))
    except (EOFError, OSError):
        pass
    finally:
        box.close_servers()
        with contextlib.suppress(OSError):
            conn.close()


# the guards that start a runtime (seconds of start-up and run per artifact); the others read headers
HEAVY_GUARDS = ("pte-inspector", "fidelity")
# light artifacts go to workers in batches: about this many batches per worker balance the load
BATCHES_PER_WORKER = 4


def heavy_flags(artifacts: Sequence[Artifact], policy: Policy, selected: Sequence[str]) -> list[bool]:
    """Per artifact: True when a runtime guard will run on it (enabled, applies, installed). What a
    guard needs is looked up once per guard and format, not per artifact (find_spec is not free)."""
    runtime = [g for g in selected if g in HEAVY_GUARDS and policy.guard(g).enabled
               and get_guard(g).missing_dependency() is None]
    referenced = False
    if "fidelity" in runtime:  # without a reference fidelity SKIPs at once; with one it decodes and runs
        config = policy.guard_config("fidelity")
        referenced = bool(config.param("reference") or config.param("references"))
    flags = []
    for artifact in artifacts:
        heavy = False
        for guard_id in runtime:
            if not get_guard(guard_id).applies_to(artifact.format):
                continue
            if guard_id != "fidelity" or referenced or artifact.hints.get("reference"):
                heavy = True
                break
        flags.append(heavy)
    return flags


def auto_jobs(artifacts: Sequence[Artifact], policy: Policy, selected: Sequence[str]) -> int:
    """`--jobs auto`: serial when only header scans apply (a process costs more than they do), else one
    worker per heavy artifact up to the cores."""
    heavy = sum(heavy_flags(artifacts, policy, selected))
    return 1 if heavy == 0 else max(1, min(os.cpu_count() or 1, heavy))


def plan_batches(artifacts: Sequence[Artifact], policy: Policy, selected: Sequence[str],
                 jobs: int) -> list[list[Artifact]]:
    """Heavy artifacts one per batch, first; light ones in about BATCHES_PER_WORKER batches per worker."""
    flags = heavy_flags(artifacts, policy, selected)
    heavy = [a for a, h in zip(artifacts, flags, strict=True) if h]
    light = [a for a, h in zip(artifacts, flags, strict=True) if not h]
    batches = [[a] for a in heavy]
    if light:
        count = max(1, min(len(light), jobs * BATCHES_PER_WORKER))
        size = -(-len(light) // count)
        batches += [light[i:i + size] for i in range(0, len(light), size)]
    return batches


class _Stopped(BaseException):
    """The gate got SIGTERM/SIGINT while workers ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_workers(procs: Iterable[Any]) -> None:
    """SIGTERM every running worker (each kills its runtime boxes), then SIGKILL the ones still there."""
    procs = [p for p in procs if p.is_alive()]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + 5
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


class _Pool:
    """Long-lived worker processes fed batches of artifacts (see `_run_parallel`). Each running worker's
    state: [its pipe, its batch left (the first artifact is being gated), when it last sent news, its
    runtime start counts]."""

    def __init__(self, policy: Policy, selected: Sequence[str], hash_all: bool, fail_on: str, jobs: int,
                 pending: list[list[Artifact]], on_done: Callable[[Artifact, list[dict[str, Any]]], None]) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self.worker_args = (policy, selected, hash_all, fail_on, os.getpid())
        self.policy, self.selected, self.jobs, self.pending, self.on_done = policy, selected, jobs, pending, on_done
        # the watchdog for a child stuck where signals cannot reach it (inside native code): per artifact
        self.deadline_s = sum(policy.guard_config(g).timeout_s or 0 for g in selected) + 60
        self.counts = {"workers": 0, "batches": len(pending), "runtime_startups": 0, "runtime_restarts": 0}
        self.running: dict[Any, list[Any]] = {}
        self.results: dict[str, list[dict[str, Any]]] = {}

    def retire(self, proc: Any) -> None:
        state = self.running.pop(proc)
        self.counts["runtime_startups"] += state[3].get("startups", 0)
        self.counts["runtime_restarts"] += state[3].get("restarts", 0)
        with contextlib.suppress(OSError):
            state[0].close()

    def hand_out(self) -> None:
        """Batches to idle workers first (a worker with nothing left is told to exit), then to new workers
        up to `jobs`."""
        for proc, state in list(self.running.items()):
            if not state[1] and self.pending:
                state[1] = self.pending.pop(0)
                state[2] = time.monotonic()
                state[0].send(state[1])
            elif not state[1]:
                with contextlib.suppress(OSError):
                    state[0].send(None)  # nothing left: the worker closes its runners and exits
                proc.join(10)
                if proc.is_alive():
                    _stop_workers([proc])
                self.retire(proc)
        while self.pending and len(self.running) < self.jobs:
            parent, child = self.ctx.Pipe(duplex=True)
            proc = self.ctx.Process(target=_worker, args=(child, *self.worker_args))
            proc.start()
            child.close()
            self.counts["workers"] += 1
            batch = self.pending.pop(0)
            self.running[proc] = [parent, batch, time.monotonic(), {}]
            parent.send(batch)

    def collect(self) -> None:
        """Wait up to 0.5 s for news; take each worker's finished artifact, or its death."""
        import multiprocessing.connection  # here: a single `quantgate guard` never pays for it

        finished = multiprocessing.connection.wait([state[0] for state in self.running.values()], timeout=0.5)
        for proc, state in list(self.running.items()):
            conn, batch, since, _ = state
            if not batch:
                continue
            message = None
            if conn in finished:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    message = None
            elif time.monotonic() - since < self.deadline_s:
                continue
            if message is None:
                self.lost(proc, state)
                continue
            _, _path, out, starts = message
            state[3] = starts
            artifact = batch.pop(0)
            state[2] = time.monotonic()
            self.done(artifact, out)

    def lost(self, proc: Any, state: list[Any]) -> None:
        """The worker died (or overran its watchdog) on batch[0]: that artifact is an ERROR, the rest of its
        batch goes back to the queue, to a fresh worker."""
        batch, since = state[1], state[2]
        if proc.is_alive():
            _stop_workers([proc])
        proc.join()
        code = proc.exitcode
        why = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        if time.monotonic() - since >= self.deadline_s:
            why = f"overran its {self.deadline_s:g} s watchdog and was killed"
        artifact = batch.pop(0)
        if batch:
            self.pending.insert(0, batch)
        self.retire(proc)
        self.done(artifact, _crash_results(artifact, self.selected, self.policy, why))

    def done(self, artifact: Artifact, out: list[dict[str, Any]]) -> None:
        self.results[artifact.path] = out
        self.on_done(artifact, out)


def _run_parallel(
    artifacts: Sequence[Artifact],
    policy: Policy,
    selected: Sequence[str],
    hash_all: bool,
    fail_on: str,
    jobs: int,
    on_done: Callable[[Artifact, list[dict[str, Any]]], None],
    stats: dict[str, int] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Artifacts in at most `jobs` long-lived worker processes, fed batches; a crashing worker costs only
    the artifact it was on (the rest of its batch goes back to the queue, to a fresh worker).
    `stats` gets workers (processes started), batches, runtime_startups and runtime_restarts."""
    import signal
    import threading

    pool = _Pool(policy, selected, hash_all, fail_on, jobs, plan_batches(artifacts, policy, selected, jobs), on_done)

    def _on_signal(signum: int, _frame: Any) -> None:
        raise _Stopped(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)
    stopped: int | None = None
    try:
        while pool.pending or pool.running:
            pool.hand_out()
            if not pool.running:
                break
            pool.collect()
    except _Stopped as exc:
        stopped = exc.signum
    finally:
        # no worker (nor a runtime child of one) outlives the gate, however the loop ends; a second
        # signal must not cut this short
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        _stop_workers(pool.running)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stats is not None:
        stats.update(pool.counts)
    if stopped is not None:
        # the signal's own meaning, now that the workers are gone: SIGINT -> KeyboardInterrupt, SIGTERM -> exit
        os.kill(os.getpid(), stopped)
        time.sleep(1)
        raise SystemExit(128 + stopped)
    return pool.results
