"""One gate session for every entry point, and the Python API over it (docs/api.md).

`quantgate run`, `pytest --quantgate` and `quantgate.run()` all gate through a `Session`:

    prepare   the policy's guards, discovery, manifest hints, the shard
    evaluate  guards on artifacts (serially, in worker processes, or one pytest item at a time)
    report    the canonical JSON report (quantgate.gate.verdict.build_report)

so that they cannot disagree on what a release is worth. Nothing here prints to stdout; progress goes
through `on_done` callbacks the caller gives (the CLI logs it on stderr).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantgate.core.result import GuardResult
from quantgate.gate import Artifact, UsageError
from quantgate.gate.discovery import FATAL_SKIPS, attach_manifest_hints, discover, link_display, select_shard
from quantgate.gate.evaluate import artifact_context, evaluate_guards
from quantgate.gate.parallel import auto_jobs
from quantgate.gate.verdict import build_report, selected_guards

if TYPE_CHECKING:  # annotations only (start-up cost of `quantgate guard`)
    from pathlib import Path

    from quantgate.gate.policy import Policy
    from quantgate.guards.base import Guard, GuardConfig, GuardContext

__all__ = ["InputError", "Report", "RunOptions", "Session", "UsageError", "guard", "load_policy", "run"]

OnDone = Callable[[Artifact, list[dict[str, Any]]], None]


class InputError(Exception):
    """The one input could not be read at all (a remote URL the server will not serve by range): exit 2."""


@dataclass
class RunOptions:
    paths: Sequence[str] = ()
    guards: Sequence[str] | None = None
    jobs: int = 1  # 0: auto (gate.parallel.auto_jobs)
    fail_on: str | None = None
    report_only: bool = False
    hash_all: bool = False
    shard: tuple[int, int] | None = None  # (k, n), 1-based k


class Session:
    """One gate run: `prepare()`, then `evaluate()` (per artifact, any subset of guards, any order) or
    `evaluate_all()`, then `report()`. Results from elsewhere (a worker process, a pytest-xdist worker)
    join through `add()`."""

    def __init__(self, policy: Policy, options: RunOptions | None = None) -> None:
        import datetime as dt

        self.policy = policy
        self.options = options or RunOptions()
        self.guards = selected_guards(self.options.guards)
        self.fail_on = self.options.fail_on or policy.fail_on
        self.started = time.perf_counter()
        self.started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.paths: list[str] = []
        self.found: list[Artifact] = []  # before the shard was taken
        self.artifacts: list[Artifact] = []
        self.skipped: list[dict[str, str]] = []  # what discovery did not gate, and why
        self.results: dict[str, dict[str, dict[str, Any]]] = {}  # artifact path -> guard -> result
        self.stats: dict[str, int] = {}
        self._context: tuple[str, GuardContext] | None = None  # the last artifact's, shared by its guards

    # -- prepare

    def prepare(self) -> list[Artifact]:
        """Find the artifacts (the options' paths, else the policy's), attach what manifests say about
        them, take the shard. Raises UsageError for a path that does not exist."""
        paths = list(self.options.paths) or [str(self.policy.root / p) for p in self.policy.paths]
        if not paths:
            raise UsageError("no PATH given and the policy lists no `paths`")
        self.paths = paths
        self.found = discover(paths, self.policy.exclude, self.skipped)
        # on every artifact found, so that a shard gates its artifacts with the manifest's claims even
        # when the manifest itself falls in another shard
        attach_manifest_hints(self.found)
        self.artifacts = select_shard(self.found, self.options.shard)
        return self.artifacts

    def fatal_skips(self) -> list[dict[str, str]]:
        """What discovery could not read, which makes the run an ERROR (gate.FATAL_SKIPS)."""
        return [s for s in self.skipped if s["reason"] in FATAL_SKIPS]

    # -- evaluate

    def evaluate(self, artifact: Artifact, guards: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """`guards` (default: every selected guard) on one artifact, each with the gate's decision; kept
        for the report. The artifact is read (and hashed) once for consecutive calls on it. Never raises."""
        wanted = self.guards if guards is None else [g for g in self.guards if g in guards]
        if self._context is None or self._context[0] != artifact.path:
            self._context = (artifact.path, artifact_context(artifact, self.policy, self.options.hash_all))
        out = evaluate_guards(self._context[1], artifact, self.policy, wanted, self.fail_on)
        self.add(artifact.path, out)
        return out

    def add(self, path: str, results: Sequence[dict[str, Any]]) -> None:
        """Results computed elsewhere for the artifact at `path` (gate.Artifact.path)."""
        self.results.setdefault(path, {}).update((r["guard"], r) for r in results)

    def evaluate_all(self, on_done: OnDone | None = None) -> None:
        """Every selected guard on every artifact: serially, or in worker processes (RunOptions.jobs)."""
        from quantgate.gate.parallel import _run_parallel
        from quantgate.runtime import box

        done = on_done or (lambda _artifact, _out: None)
        jobs = self.options.jobs if self.options.jobs >= 1 else auto_jobs(self.artifacts, self.policy, self.guards)
        if jobs > 1 and len(self.artifacts) > 1:
            stats: dict[str, int] = {}
            by_path = _run_parallel(self.artifacts, self.policy, self.guards, self.options.hash_all, self.fail_on,
                                    jobs, done, stats)
            for path, out in by_path.items():
                self.add(path, out)
        else:
            before = box.startups()
            for artifact in self.artifacts:
                done(artifact, self.evaluate(artifact))
            self.close()  # the runners served this run; a later run in this process starts its own
            after = box.startups()
            stats = {"workers": 0, "batches": 0, "runtime_startups": after["startups"] - before["startups"],
                     "runtime_restarts": after["restarts"] - before["restarts"]}
        self.stats = {**stats, "jobs": jobs}

    def close(self) -> None:
        """Let go of the last artifact's reading and stop the runtime runners this session started."""
        from quantgate.runtime import box

        self._context = None
        box.close_servers()

    def complete_not_applicable(self) -> None:
        """Give each evaluated artifact the rows of the selected guards that do not apply to its format
        (`not_applicable`, free): the report of a run that evaluated only some guards (pytest items)
        then holds the rows `quantgate run` holds."""
        from quantgate.guards import get_guard

        for artifact in self.artifacts:
            have = self.results.get(artifact.path)
            if have is None:
                continue
            rest = [g for g in self.guards if g not in have and not get_guard(g).applies_to(artifact.format)]
            if rest:
                self.evaluate(artifact, rest)

    # -- report

    def report(self) -> dict[str, Any]:
        """The canonical JSON report of the artifacts evaluated so far (all of them after evaluate_all)."""
        evaluated = [a for a in self.artifacts if a.path in self.results]
        results = [self.results[a.path][g] for a in evaluated for g in self.guards if g in self.results[a.path]]
        return build_report(
            policy=self.policy,
            artifacts=evaluated,
            results=results,
            started=self.started,
            started_at=self.started_at,
            report_only=self.options.report_only,
            fail_on=self.fail_on,
            shard=self.options.shard,
            paths=self.paths,
            artifacts_total=len(self.found),
            skipped=self.skipped,
            run_stats=self.stats,
        )


# ---------------------------------------------------------------------------------------------
# the Python API


class Report:
    """A gate run's outcome. `to_dict()` is the canonical JSON report (schemas/report.schema.json), the
    one `quantgate run --format json` prints; the properties read it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def verdict(self) -> str:
        """PASS, FAIL, ERROR or NO_INPUT."""
        return str(self._data["verdict"])

    @property
    def exit_code(self) -> int:
        """What `quantgate run` exits with: 0 pass, 1 fail (0 with report_only), 2 error, 3 no input."""
        return int(self._data["exit_code"])

    @property
    def summary(self) -> dict[str, int]:
        return dict(self._data["summary"])

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return list(self._data["artifacts"])

    @property
    def results(self) -> list[dict[str, Any]]:
        """One row per (artifact, guard): the guard's result plus `gate_status`, `required`, `waiver`."""
        return list(self._data["results"])

    @property
    def skipped(self) -> list[dict[str, str]]:
        return list(self._data.get("skipped", []))

    @property
    def metrics(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Metrics by artifact path (as shown in the report), then guard id."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for row in self._data["results"]:
            out.setdefault(row["artifact"]["path"], {})[row["guard"]] = row["metrics"]
        return out

    def result(self, artifact: str, guard: str) -> dict[str, Any]:
        """The row of `guard` on the artifact shown as `artifact`; KeyError when there is none."""
        for row in self._data["results"]:
            if row["artifact"]["path"] == artifact and row["guard"] == guard:
                return row
        raise KeyError(f"no result for {guard} on {artifact}")

    def to_dict(self) -> dict[str, Any]:
        return self._data

    def __repr__(self) -> str:
        return f"Report(verdict={self.verdict!r}, exit_code={self.exit_code}, artifacts={len(self.artifacts)})"


def load_policy(policy: str | os.PathLike[str] | Policy | None) -> Policy:
    """A Policy as given, or loaded from a file; None: ./quantgate.toml, else [tool.quantgate] in
    ./pyproject.toml, else the defaults. Raises UsageError for a missing or invalid policy file."""
    from pathlib import Path

    from quantgate.gate.policy import Policy, PolicyError, find_policy
    from quantgate.gate.policy import load_policy as load

    if isinstance(policy, Policy):
        return policy
    explicit = os.fspath(policy) if policy is not None else None
    if explicit and not Path(explicit).is_file():
        raise UsageError(f"policy file not found: {explicit}")
    try:
        return load(find_policy(explicit))
    except PolicyError as exc:
        raise UsageError(f"invalid policy\n{exc}") from None


def run(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = (),
    *,
    policy: str | os.PathLike[str] | Policy | None = None,
    guards: Sequence[str] | None = None,
    fail_on: str | None = None,
    report_only: bool = False,
    sha256: bool = False,
    jobs: int | str = 1,
    shard: tuple[int, int] | None = None,
    on_done: OnDone | None = None,
) -> Report:
    """Gate the artifacts under `paths` (files, folders, URLs; default: the policy's `paths`) against the
    policy, as `quantgate run` does; returns the Report, prints nothing. `jobs`: worker processes, or
    "auto". Raises UsageError for what the CLI exits 4 on (a path not found, an unknown guard, a bad policy)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if jobs != "auto" and (not isinstance(jobs, int) or jobs < 1):
        raise UsageError("jobs must be at least 1, or 'auto'")
    if fail_on not in (None, "fail", "warn"):
        raise UsageError(f"fail_on must be 'fail' or 'warn', not {fail_on!r}")
    options = RunOptions(
        paths=[os.fspath(p) for p in paths],
        guards=list(guards) if guards is not None else None,
        jobs=0 if jobs == "auto" else int(jobs),
        fail_on=fail_on,
        report_only=report_only,
        hash_all=sha256,
        shard=shard,
    )
    session = Session(load_policy(policy), options)
    session.prepare()
    session.evaluate_all(on_done)
    return Report(session.report())


# -- one guard on one file


def known_guard(guard_id: str) -> Guard:
    """The guard with this id; UsageError naming the nearest one otherwise."""
    from quantgate.guards import UnknownGuard, get_guard, unknown_guard_message

    try:
        return get_guard(guard_id)
    except UnknownGuard:
        raise UsageError(unknown_guard_message([guard_id], repr(guard_id))) from None


def guard_config(
    guard: Guard,
    *,
    policy: str | os.PathLike[str] | Policy | None = None,
    require: Sequence[str] = (),
    warn: Sequence[str] = (),
    expect_unquantized: Sequence[str] = (),
    basis: str | None = None,
    timeout_s: float | None = None,
    params: Mapping[str, Any] | None = None,
) -> GuardConfig:
    """The guard's settings: the policy's (when one is given) with these added on top."""
    from quantgate.core.bounds import FAIL_LEVEL, WARN_LEVEL, BoundSyntaxError, parse_bound
    from quantgate.guards.base import GuardConfig

    config = load_policy(policy).guard_config(guard.id) if policy is not None else GuardConfig(timeout_s=300.0)
    try:
        config.require += [parse_bound(b, FAIL_LEVEL) for b in require]
        config.warn += [parse_bound(b, WARN_LEVEL) for b in warn]
    except BoundSyntaxError as exc:
        raise UsageError(str(exc)) from None
    config.params.update(params or {})
    config.expect_unquantized += list(expect_unquantized)
    if basis:
        config.basis = basis
    if timeout_s:
        config.timeout_s = timeout_s
    return config


def check_file(path: str | os.PathLike[str]) -> str:
    """`path` as a guard takes it: an http(s) URL as given, else a file that exists (UsageError otherwise),
    spelled as pathlib spells it (`model.gguf/.` names model.gguf)."""
    from pathlib import Path

    from quantgate.core.remote import is_url

    text = os.fspath(path)
    if is_url(text):
        return text
    named = os.fspath(Path(text))
    if not os.path.exists(named):
        raise UsageError(f"path not found: {text}")
    if os.path.isdir(named):
        raise UsageError(f"{text} is a folder; `quantgate guard` takes one file (use `quantgate run` for folders)")
    return named


def guard_context(path: str) -> GuardContext:
    """One file (checked by `check_file`) as a guard sees it. InputError for a URL that cannot be read."""
    from quantgate.core.remote import is_url
    from quantgate.formats.sniff import sniff
    from quantgate.guards.base import GuardContext

    sniffed = sniff(path)
    if is_url(path):
        from quantgate.core import remote

        if sniffed.format == "unreadable":  # no Range support, an HTTP error
            raise InputError(sniffed.detail)
        return GuardContext(path, sniffed, remote.open_file(path).size, remote.display_url(path))
    size = os.stat(path).st_size if sniffed.format != "unreadable" else 0
    # a link keeps its own name and folder (a Hugging Face snapshot's config.json sits beside the link,
    # not beside the blob it points to); the folders above it are resolved
    folder, name = os.path.split(os.path.abspath(path))
    return GuardContext(os.path.join(os.path.realpath(folder), name), sniffed, size, link_display(path))


def guard(
    guard_id: str,
    path: str | os.PathLike[str] | Path,
    *,
    policy: str | os.PathLike[str] | Policy | None = None,
    require: Sequence[str] = (),
    warn: Sequence[str] = (),
    expect_unquantized: Sequence[str] = (),
    basis: str | None = None,
    timeout_s: float | None = None,
    **params: Any,
) -> GuardResult:
    """Run one guard on one file (or http(s) URL), as `quantgate guard` does; prints nothing.

    `params` are the guard's parameters (`params=1_230_000_000` for size-heuristic); `require` and `warn`
    are bounds such as "coverage.ops.int8 >= 0.9". Raises UsageError (unknown guard, path not found, bad
    bound) or InputError (a URL that cannot be read); whatever the file holds comes back as the result."""
    from quantgate.guards.base import run_guard

    chosen = known_guard(guard_id)
    named = check_file(path)
    config = guard_config(chosen, policy=policy, require=require, warn=warn, expect_unquantized=expect_unquantized,
                          basis=basis, timeout_s=timeout_s, params=params)
    return run_guard(chosen, guard_context(named), config)
