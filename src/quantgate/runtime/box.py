"""The box every runtime child runs in: its own process group, a memory limit, a time limit.

This module is the one place quantgate starts, feeds, limits and reaps a runtime child (the ExecuTorch
runner of `pte-inspector`, fidelity's ExecuTorch and onnxruntime output runs); callers go through
`quantgate.runtime.child`, which turns what happened into one `ChildRun`. Every child is started by
`_spawn` and ended by `_end`, whether it runs once (`run_boxed`) or serves many requests (`BoxServer`).
The child runs untrusted programs, so:

* it leads its own process group (`start_new_session`), and the whole group is killed (SIGKILL) on
  timeout, on going over the memory limit, and when the child exits, so a grandchild it started
  never outlives it;
* on Linux it gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the quantgate process (or `--jobs`
  worker) that started it, and `kill_all` lets a worker kill its live boxes' groups before it exits;
* its memory is bounded by a watchdog on resident memory: every `POLL_S` the VmHWM (each process's
  resident high-water mark since its exec, so a spike between two polls still counts) of the child
  and its descendants (/proc) is summed, and the group is killed when the sum exceeds `max_rss_mb`.
  Not `wait4`'s ru_maxrss: it carries the parent's resident size from the fork into the child's.
  A child that spikes and exits within one poll (50 ms) is not caught; one that holds memory is.

Why a watchdog and not RLIMIT_AS: with torch and executorch imported the address space holds
reservations (thread stacks, malloc arenas per thread, mapped libraries) that are not memory in
use and that grow with the core count, so a limit on it either stops normal programs on a big
machine or lets a large one through on a small one (measurements: benchmarks/RESULTS.md, "runtime
children"). The default limit, `DEFAULT_MAX_RSS_MB` = 4096, fits a CI runner and leaves room for
programs of a few GB.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MAX_RSS_MB = 4096
POLL_S = 0.05
_STDERR_TAIL = 64 << 10  # what is kept of the child's stderr (its last lines name the cause)
_PR_SET_PDEATHSIG = 1

# process groups of the boxes running now (killed by `kill_all` when their owner is stopped)
_LIVE: set[int] = set()
# runtime children started by this process (one-shot boxes and long-lived runners): the audit's cost
_STARTS = {"startups": 0, "restarts": 0}

FINDING_CODES = {
    "RUNTIME_MEMORY_LIMIT": "A runtime child (the ExecuTorch runner of pte-inspector, fidelity's output runs) "
    "needed more resident memory than the limit (`--param max_rss_mb`, default 4096) and was killed, or the "
    "program plans more memory than the limit; the artifact FAILs. Raise the limit if the memory is expected.",
}


@dataclass
class BoxResult:
    returncode: int | None  # negative: killed by that signal
    stdout: str
    stderr: str  # its tail
    timed_out: bool = False
    over_memory: bool = False
    peak_rss_bytes: int | None = None


def child_env() -> dict[str, str]:
    """The child must import this very quantgate, installed or run from a source tree."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def max_rss_mb_of(value: object) -> int:
    """`--param max_rss_mb` as a positive number of MiB (the default when absent or unusable)."""
    try:
        mb = int(float(str(value)))
    except (TypeError, ValueError):
        return DEFAULT_MAX_RSS_MB
    return mb if value is not None and mb > 0 else DEFAULT_MAX_RSS_MB


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: deliver `sig` to this process when its parent dies; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _preexec() -> None:  # runs in the child between fork and exec
    die_with_parent(signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """pid and its descendants, from /proc/<pid>/task/<tid>/children (Linux); just pid elsewhere."""
    out, todo = [], [pid]
    while todo and len(out) < 4096:
        current = todo.pop()
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as fh:
                    todo.extend(int(x) for x in fh.read().split())
            except (OSError, ValueError):
                continue
    return out


def _hwm_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_peak_bytes(pid: int) -> int:
    """The resident high-water marks of pid and its descendants, summed (0 where /proc is absent)."""
    return sum(_hwm_bytes(p) for p in _descendants(pid))


def _killpg(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def startups() -> dict[str, int]:
    """How many runtime children this process started so far, and how many of them replaced a runner
    that crashed, timed out, went over its memory limit or was left unsafe by a failed program."""
    return dict(_STARTS)


def kill_all() -> None:
    """Kill the process groups of every box still running (a worker's last act when it is stopped)."""
    for server in list(_SERVERS.values()):
        server.forget()
    for pgid in list(_LIVE):
        _killpg(pgid)
        _LIVE.discard(pgid)


def _exited(pid: int) -> int | None:
    """None while the child runs. Where waitid exists (Linux) the child is not reaped, so its pid (= its
    group id) stays reserved until the group is killed: -1. Elsewhere (macOS) it is reaped: its wait status."""
    if hasattr(os, "waitid"):
        try:
            return None if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None else -1
        except ChildProcessError:
            return -1
    done, status = os.waitpid(pid, os.WNOHANG)
    return status if done else None


def _reap(pid: int) -> int | None:
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): its status is lost
        return None


def _spawn(cmd: list[str], env: dict[str, str] | None, *, stdin: Any, stdout: Any,
           stderr: Any) -> subprocess.Popen[bytes]:
    """Start a runtime child in its box: its own process group, the parent-death signal, counted."""
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr,
                            env=env if env is not None else child_env(), start_new_session=True,
                            preexec_fn=_preexec if sys.platform.startswith("linux") else None)
    _LIVE.add(proc.pid)
    _STARTS["startups"] += 1
    return proc


def _end(pid: int, reaped: int | None) -> int | None:
    """Kill the child's group, then reap the child (`reaped`: what `_exited` said); its exit code.
    The group dies before the child is reaped: no grandchild outlives it."""
    _killpg(pid)
    status = reaped if reaped is not None and reaped >= 0 else _reap(pid)
    _LIVE.discard(pid)
    return os.waitstatus_to_exitcode(status) if status is not None else None


class _Limits:
    """The watchdog of one run: the summed resident peak of the child's tree and the deadline."""

    def __init__(self, pid: int, max_rss_mb: int, deadline: float) -> None:
        self.pid = pid
        self.limit = int(max_rss_mb) << 20
        self.deadline = deadline
        self.peak = 0

    def breached(self) -> str:
        """"memory" or "timeout" when the child must be killed now, else ""."""
        self.peak = max(self.peak, tree_peak_bytes(self.pid))
        if self.peak > self.limit:
            return "memory"
        return "timeout" if time.monotonic() >= self.deadline else ""


def run_boxed(cmd: list[str], *, timeout_s: float, max_rss_mb: int = DEFAULT_MAX_RSS_MB,
              env: dict[str, str] | None = None) -> BoxResult:
    """Run cmd once in a box; never raises for anything the child does (an OSError starting it propagates)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = _spawn(cmd, env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        limits = _Limits(proc.pid, max_rss_mb, time.monotonic() + timeout_s)
        why = ""
        reaped: int | None = None
        try:
            while (reaped := _exited(proc.pid)) is None:
                if why := limits.breached():
                    break
                time.sleep(POLL_S)
        finally:
            proc.returncode = _end(proc.pid, reaped)
        out.seek(0)
        stdout = out.read().decode("utf-8", errors="replace")
        size = err.seek(0, os.SEEK_END)
        err.seek(max(0, size - _STDERR_TAIL))
        stderr = err.read().decode("utf-8", errors="replace")
    return BoxResult(proc.returncode, stdout, stderr, timed_out=why == "timeout", over_memory=why == "memory",
                     peak_rss_bytes=limits.peak or None)


def memory_message(what: str, max_rss_mb: int, peak_rss_bytes: int | None) -> str:
    peak = f" (peak {peak_rss_bytes / (1 << 20):,.0f} MiB resident)" if peak_rss_bytes else ""
    return (f"{what} needed more than the {max_rss_mb} MiB memory limit and was killed{peak}; raise "
            f"--param max_rss_mb=N (or `max_rss_mb` in the guard's policy params) if this much memory is expected")


# --- long-lived runners ----------------------------------------------------------------------------
# A runtime child pays its imports (torch + executorch: seconds) once and then serves many programs:
# the parent writes one JSON request per line to its stdin and reads one JSON reply per line from its
# stdout. It keeps every guarantee of `run_boxed` (own process group, parent-death signal, the group
# killed on timeout and over the memory limit), per request: before each request the resident
# high-water marks of the runner's processes are reset (/proc/PID/clear_refs "5"), so the peak the
# watchdog sums is the one reached while that program ran, and an over-limit kill names that program.
# After any kill, crash, unreadable reply, or a reply that asks for it (a program that failed in a way
# that may leave state), the runner is killed and the next request starts a fresh one: one hostile
# program cannot poison the next.

_SERVERS: dict[tuple[str, ...], BoxServer] = {}


@dataclass
class ServeResult:
    reply: dict | None  # the runner's reply; None when it did not give one
    timed_out: bool = False
    over_memory: bool = False
    returncode: int | None = None  # set when the runner died
    stderr: str = ""  # the runner's stderr written during this request (its tail)
    peak_rss_bytes: int | None = None
    hello: dict | None = None  # what the runner said when it started (versions, import time)
    started: bool = False  # this request started the runner (and paid its imports)


def _reset_peak(pid: int) -> bool:
    """Reset the resident high-water marks of pid and its descendants (Linux >= 4.0); False elsewhere."""
    done = False
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as fh:
                fh.write("5")
            done = True
        except OSError:
            continue
    return done


class BoxServer:
    """One long-lived runtime child, started on the first request and restarted as needed."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.err: Any = None
        self.hello: dict | None = None
        self._buffer = b""
        self.served = 0
        self._lost = False  # the last runner was killed after a failure: the next start is a restart

    def _start(self) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the runner; closed by stop)
        self.proc = _spawn(self.cmd, self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self._buffer = b""
        self.hello = None
        self.served = 0

    def alive(self) -> bool:
        return self.proc is not None and _exited(self.proc.pid) is None

    def stop(self) -> int | None:
        """Kill the runner's group and reap it; its exit code (None when it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        code = _end(proc.pid, _exited(proc.pid))
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        if self.err is not None:
            self.err.close()
            self.err = None
        return code

    def forget(self) -> None:
        """Kill without waiting (a stopping worker's signal handler)."""
        if self.proc is not None:
            _killpg(self.proc.pid)

    def _read_line(self, limits: _Limits) -> tuple[bytes | None, str]:
        """A line of stdout, or None with why ("timeout", "memory", "exited"); `limits.peak` holds the peak."""
        import select

        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if why := limits.breached():
                return None, why
            ready, _, _ = select.select([fd], [], [], min(POLL_S, max(0.0, limits.deadline - time.monotonic())))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return None, "exited"
                self._buffer += chunk
                if len(self._buffer) > (256 << 20):  # a runaway reply: the runner is not well
                    return None, "exited"
        line, _, self._buffer = self._buffer.partition(b"\n")
        limits.peak = max(limits.peak, tree_peak_bytes(limits.pid))
        return line, ""

    def _stderr_since(self, offset: int) -> str:
        if self.err is None:
            return ""
        size = self.err.seek(0, os.SEEK_END)
        self.err.seek(max(offset, size - _STDERR_TAIL))
        return self.err.read().decode("utf-8", errors="replace")

    def _ensure_running(self, limit: int) -> bool:
        """A runner ready for the next request (restarted after a failure); True when this started it."""
        started = False
        if not self.alive():
            if self.proc is not None or self._lost:
                self.stop()
                _STARTS["restarts"] += 1
                self._lost = False
            self._start()
            started = True
        assert self.proc is not None
        if not _reset_peak(self.proc.pid) and tree_peak_bytes(self.proc.pid) > limit // 2:
            # no way to reset the high-water mark here: a fresh runner, so the peak is this program's
            self.stop()
            _STARTS["restarts"] += 1
            self._start()
            started = True
        return started

    def request(self, payload: dict, *, timeout_s: float, max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> ServeResult:
        """Send one request and wait for its reply within timeout_s (which includes a start-up when the
        runner has to start). Never raises for anything the runner does (an OSError starting it propagates)."""
        import json

        deadline = time.monotonic() + timeout_s
        started = self._ensure_running(int(max_rss_mb) << 20)
        assert self.proc is not None and self.proc.stdin is not None
        limits = _Limits(self.proc.pid, max_rss_mb, deadline)
        offset = self.err.seek(0, os.SEEK_END) if self.err is not None else 0
        result = ServeResult(None, started=started)
        ok = False
        try:
            if started:
                line, why = self._read_line(limits)
                if line is not None:
                    try:
                        self.hello = json.loads(line)
                    except ValueError:
                        line, why = None, "garbage"
                result.hello = self.hello
                if line is None or (self.hello or {}).get("error"):
                    return self._failed(result, why, limits.peak, offset)
            self.proc.stdin.write(json.dumps(payload).encode() + b"\n")
            self.proc.stdin.flush()
            line, why = self._read_line(limits)
            result.peak_rss_bytes = limits.peak or None
            try:
                reply = json.loads(line) if line is not None else None
            except ValueError:
                why = "garbage"
                reply = None
            result.reply = reply if isinstance(reply, dict) else None
            if result.reply is None:
                return self._failed(result, why or "garbage", limits.peak, offset)
            result.hello = self.hello
            self.served += 1
            ok = not result.reply.get("restart")
            return result
        except (BrokenPipeError, ConnectionResetError):
            return self._failed(result, "exited", limits.peak, offset)
        finally:
            # anything else (a guard's time budget firing mid-request): the runner's state is unknown
            if not ok:
                self._lost = True
            if not ok and self.proc is not None:
                result.stderr = result.stderr or self._stderr_since(offset)
                code = self.stop()
                if result.returncode is None:
                    result.returncode = code

    def _failed(self, result: ServeResult, why: str, peak: int, offset: int) -> ServeResult:
        result.stderr = self._stderr_since(offset)
        result.timed_out = why == "timeout"
        result.over_memory = why == "memory"
        result.peak_rss_bytes = peak or None
        if why == "exited":
            # give the dying runner a moment to be reapable, so its signal is known
            end = time.monotonic() + 1.0
            while self.proc is not None and self.alive() and time.monotonic() < end:
                time.sleep(0.01)
        result.returncode = self.stop()
        return result


def server(key: tuple[str, ...], cmd: list[str], env: dict[str, str] | None = None) -> BoxServer:
    """The long-lived runner for `key` in this process, created on first use."""
    found = _SERVERS.get(key)
    if found is None:
        found = _SERVERS[key] = BoxServer(cmd, env)
    return found


def close_servers() -> None:
    """Stop every long-lived runner of this process (end of a run, end of a worker)."""
    for found in list(_SERVERS.values()):
        found.stop()
    _SERVERS.clear()


def reset_after_fork() -> None:
    """A forked `--jobs` worker starts with no runner and no count of its own: the parent's runners
    are the parent's (the worker must not stop them) and its start-ups are counted by the parent."""
    _STARTS.update(startups=0, restarts=0)
    _SERVERS.clear()


atexit.register(close_servers)
