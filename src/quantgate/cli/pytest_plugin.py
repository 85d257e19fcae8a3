"""pytest plugin: `pytest --quantgate PATH...` gates artifacts inside an existing test run.

One item per (artifact, guard), with node id `artifact::guard` (so `-k` and `--deselect` work):

    gate_status PASS  -> passed           (a waived FAIL passes, with a QuantgateWarning)
    gate_status WARN  -> passed, with a QuantgateWarning
    gate_status FAIL  -> failed, with the guard's one-line message and its problems
    gate_status ERROR -> error (raised in setup: pytest reports "error", not "failed")
    gate_status SKIP  -> skipped, with the reason

A folder discovery could not read (an `unreadable_dir` in the report's `skipped` list) makes one more
item, `quantgate::discovery`, an error naming it: the report's verdict is ERROR, and pytest must not
exit 0 on a release it could not read whole.

Guards that do not apply to an artifact's format get no item. Metrics go to `user_properties`,
flattened (`int8_coverage`, `coverage.ops.int8`, ...), so pytest-json-report and JUnit carry them,
and the canonical quantgate JSON report is written too (`--quantgate-report`).

Items that `-k` or `--deselect` leave out are not gated and are not in the report or its verdict (the
verdict line says how many). Under pytest-xdist each worker gates its items and hands its results to
the controller (`workeroutput`), which writes the one report and prints the verdict.

This is an adapter, not the gate: pytest exits 1 for failures and errors alike, so CI should gate
on `quantgate run` (exit 1 FAIL, 2 ERROR). The plugin gates through the session `quantgate run` uses
(quantgate.gate.session.Session: the same discovery, manifest hints, decisions and report) and imports it
only when `--quantgate` is given: registered through the `pytest11` entry point, it costs a pytest run
without the flag nothing but this module.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

DEFAULT_REPORT = "quantgate-reports/pytest-report.json"
_STATE = pytest.StashKey["_Session"]()


class QuantgateWarning(pytest.PytestWarning):
    """A guard WARNed (a soft bound broke, an advisory finding) or a FAIL was waived."""


class QuantgateFailure(Exception):
    """A guard FAILed (after the policy's waivers)."""


class QuantgateError(Exception):
    """quantgate could not decide (crash, timeout, unreadable input, a missing metric...)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantgate", "quantgate: gate quantized model artifacts")
    group.addoption(
        "--quantgate",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        dest="quantgate_paths",
        help="gate the artifacts in these files or folders: one test per (artifact, guard)",
    )
    group.addoption(
        "--quantgate-policy",
        metavar="FILE",
        help="policy file (default: ./quantgate.toml, else [tool.quantgate] in ./pyproject.toml)",
    )
    group.addoption(
        "--quantgate-report",
        default=DEFAULT_REPORT,
        metavar="FILE",
        help=f"write the canonical quantgate JSON report here (default: {DEFAULT_REPORT}; 'none': do not)",
    )
    group.addoption("--quantgate-guards", metavar="ID,ID", help="run only these guards")
    group.addoption("--quantgate-sha256", action="store_true", help="hash every artifact into the report")


class _Session:
    """The plugin's state for one pytest session: the gate session (quantgate.gate.session.Session, the one
    `quantgate run` uses), evaluated one item at a time, and what pytest left out."""

    def __init__(self, config: pytest.Config):
        from quantgate.core.untrusted import lines, plain
        from quantgate.gate import UsageError
        from quantgate.gate.session import RunOptions, Session, load_policy

        explicit = config.getoption("quantgate_policy")
        if explicit and not Path(explicit).is_file():
            raise pytest.UsageError(f"quantgate: policy file not found: {plain(explicit)}")
        requested = config.getoption("quantgate_guards")
        options = RunOptions(
            paths=config.getoption("quantgate_paths"),
            guards=[g.strip() for g in requested.split(",") if g.strip()] if requested else None,
            hash_all=bool(config.getoption("quantgate_sha256")),
        )
        try:
            # the problems quote the policy's text, which a pull request can set: each line inert
            self.gate = Session(load_policy(explicit), options)
            self.gate.prepare()
        except UsageError as exc:
            raise pytest.UsageError(lines(f"quantgate: {exc}")) from None
        self.deselected = 0  # quantgate items -k / --deselect left out: not gated, not in the report
        self.report_path: str | None = None
        self.report_error: str | None = None
        self.report: dict[str, Any] | None = None

    @property
    def artifacts(self) -> list[Any]:
        return self.gate.artifacts

    @property
    def guards(self) -> list[str]:
        return self.gate.guards

    def result_for(self, artifact: Any, guard: str) -> dict[str, Any]:
        """The guard on the artifact, evaluated by the gate (never raises); the artifact is read once for
        its consecutive items."""
        return self.gate.evaluate(artifact, [guard])[0]

    def fatal_skips(self) -> list[dict[str, str]]:
        """What discovery could not read, which makes the run an ERROR (gate.FATAL_SKIPS)."""
        return self.gate.fatal_skips()

    def shared(self) -> str:
        """What a pytest-xdist worker hands the controller: its results and deselections."""
        return json.dumps({"results": self.gate.results, "deselected": self.deselected})

    def join(self, text: str) -> None:
        """A pytest-xdist worker's `shared()`."""
        data = json.loads(text)
        for path, by_guard in data["results"].items():
            self.gate.add(path, list(by_guard.values()))
        # every worker collects (and deselects) the whole session: the count is the same on each
        self.deselected = max(self.deselected, int(data["deselected"]))

    def build(self) -> dict[str, Any] | None:
        if not self.gate.results and not self.fatal_skips():
            return None
        self.gate.complete_not_applicable()
        return self.gate.report()


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("quantgate_paths", None):
        config.stash[_STATE] = _Session(config)
        config.addinivalue_line("markers", "quantgate: a quantgate guard on a model artifact")


class ArtifactFile(pytest.File):
    """One artifact; its items are the guards that apply to its format."""

    artifact: Any

    def collect(self):  # type: ignore[no-untyped-def]
        from quantgate.guards import get_guard

        state = self.config.stash[_STATE]
        for guard_id in state.guards:
            if get_guard(guard_id).applies_to(self.artifact.format):
                item = GuardItem.from_parent(self, name=guard_id)
                item.add_marker("quantgate")
                yield item


def flatten(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar metrics as dotted pairs: {"coverage": {"ops": {"int8": x}}} -> ("coverage.ops.int8", x)."""
    out: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flatten(value, f"{name}.")
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out.append((name, value))
    return out


class GuardItem(pytest.Item):
    """One guard on one artifact; the gate decides, this maps its decision onto pytest outcomes."""

    result: dict[str, Any]

    def setup(self) -> None:
        from quantgate.core.untrusted import plain
        from quantgate.report.common import headline

        state = self.config.stash[_STATE]
        self.result = state.result_for(self.parent.artifact, self.name)  # type: ignore[union-attr]
        r = self.result
        self.user_properties += [
            ("quantgate.status", r["status"]),
            ("quantgate.gate_status", r["gate_status"]),
            ("quantgate.message", plain(headline(r))),
            *flatten(r.get("metrics") or {}),
        ]
        if "waiver" in r:
            self.user_properties.append(("quantgate.waiver", plain(r["waiver"]["reason"])))
        if r["gate_status"] == "ERROR":
            raise QuantgateError(plain(headline(r)))
        if r["gate_status"] == "SKIP":
            skip = r.get("skip") or {"reason": "skipped", "detail": r["message"]}
            reason = plain(f"{skip['reason']}: {skip['detail']}")
            try:  # report the artifact's location, not this module's line
                raise pytest.skip.Exception(reason, _use_item_location=True)
            except TypeError:  # pragma: no cover - a pytest without the keyword
                pytest.skip(reason)

    def runtest(self) -> None:
        from quantgate.core.untrusted import plain
        from quantgate.report.common import headline

        r = self.result
        where = plain(f"{r['artifact']['path']}::{r['guard']}")
        if r["gate_status"] == "FAIL":
            raise QuantgateFailure(plain(headline(r)))
        if r["gate_status"] == "WARN" or "waiver" in r:
            # attributed to the artifact, so the warnings summary points at it, not at this module
            warnings.warn_explicit(
                QuantgateWarning(f"{where}: {plain(headline(r))}"), QuantgateWarning, plain(r["artifact"]["path"]), 0
            )

    def _lines(self, exc: BaseException) -> str:
        from quantgate.core.untrusted import plain
        from quantgate.report.common import problems

        # failure text pytest prints (and a CI log shows): every line inert (quantgate.core.untrusted)
        r = getattr(self, "result", None)
        head = plain(f"{self.nodeid}: {exc}")
        extra = problems(r) if r else []
        if len(extra) > 1:
            head += "\n" + "\n".join(plain(f"  - {p}") for p in extra)
        return head

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, (QuantgateFailure, QuantgateError)):
            return self._lines(excinfo.value)
        return super().repr_failure(excinfo, style)

    def _repr_failure_py(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        # setup errors are rendered through here, not repr_failure: one line, not a traceback
        if isinstance(excinfo.value, (QuantgateFailure, QuantgateError)):
            return self._lines(excinfo.value)
        return super()._repr_failure_py(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        # line 0 (shown as 1): a skip is reported at the artifact, which pytest requires a line for;
        # pytest prints the path: a hostile file name shown inert (quantgate.core.untrusted)
        from quantgate.core.untrusted import plain

        shown = plain(str(self.path))
        path = self.path if shown == str(self.path) else Path(shown)
        return path, 0, f"{self.parent.name}::{self.name}"  # type: ignore[union-attr]


class DiscoveryItem(pytest.Item):
    """The folders discovery could not read: an error naming each (the report's verdict is ERROR)."""

    def setup(self) -> None:
        from quantgate.report.common import skipped_lines

        fatal = self.config.stash[_STATE].fatal_skips()
        # each path made inert (skipped_lines uses quantgate.core.untrusted.plain)
        shown = skipped_lines({"skipped": fatal})
        raise QuantgateError(
            f"{len(fatal)} folder(s) could not be read, so their files were not gated: "
            + "; ".join(shown)
            + " (make them readable to the CI user, or exclude them in the policy)"
        )

    def runtest(self) -> None:  # pragma: no cover - setup always raises
        pass

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, QuantgateError):
            return f"{self.nodeid}: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def _repr_failure_py(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, QuantgateError):
            return f"{self.nodeid}: {excinfo.value}"
        return super()._repr_failure_py(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, self.nodeid


def _node_name(text: str) -> str:
    from quantgate.core.untrusted import plain

    return plain(text).replace("::", ":\\x3a").replace("[", "\\x5b")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the artifact items before -k / --deselect filter the collection."""
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    added: list[pytest.Item] = []
    for artifact in state.artifacts:
        # the node id is printed by pytest itself (PASSED/FAILED lines): the file's name made inert,
        # and without the `::` and `[` that pytest would parse as a child or a parameter
        node = ArtifactFile.from_parent(session, path=Path(artifact.path), name=_node_name(artifact.display))
        if _node_name(node.nodeid) != node.nodeid:
            node = ArtifactFile.from_parent(
                session, path=Path(artifact.path), name=_node_name(artifact.display), nodeid=_node_name(node.nodeid)
            )
        node.artifact = artifact
        added += list(session.genitems(node))
    if state.fatal_skips():
        item = DiscoveryItem.from_parent(session, name="discovery", nodeid="quantgate::discovery")
        item.add_marker("quantgate")
        added.append(item)
    items[:0] = added


def pytest_deselected(items: list[pytest.Item]) -> None:
    if not items:
        return
    state = items[0].config.stash.get(_STATE, None)
    if state is not None:
        state.deselected += sum(isinstance(item, (GuardItem, DiscoveryItem)) for item in items)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist's controller: a worker finished; its results join the controller's gate session."""
    state = node.config.stash.get(_STATE, None)
    shared = getattr(node, "workeroutput", {}).get("quantgate")
    if state is not None and shared:
        state.join(shared)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    state.gate.close()
    if hasattr(session.config, "workerinput"):
        # a pytest-xdist worker holds only its share: it hands it to the controller, which reports
        session.config.workeroutput["quantgate"] = state.shared()  # type: ignore[attr-defined]
        return
    report = state.build()
    state.report = report
    target = session.config.getoption("quantgate_report")
    if report is None or not target or target.lower() == "none":
        return
    path = Path(target)
    if not path.is_absolute():
        path = session.config.invocation_params.dir / path
    from quantgate.core.atomic import write_atomic

    try:  # atomic: a symlink planted at the target is replaced, never written through
        write_atomic(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        state.report_error = f"cannot write --quantgate-report {path}: {exc.strerror or exc}"
        if session.exitstatus == 0:  # a green session whose report is missing must not look green
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    state.report_path = str(path)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    from quantgate.report.common import verdict_line

    terminalreporter.section("quantgate")
    if hasattr(config, "workerinput"):
        return  # a pytest-xdist worker: the controller prints the verdict
    if state.report is None:
        terminalreporter.write_line("quantgate: no artifact item ran")
        return
    from quantgate.core.untrusted import plain

    if state.report_error:
        terminalreporter.write_line(f"quantgate: error: {plain(state.report_error)}")
    line = verdict_line(state.report)
    if state.deselected:
        line += f"; {state.deselected} quantgate item(s) deselected, not gated and not in the verdict"
    if state.report_path:
        line += f" (report: {plain(state.report_path)})"
    terminalreporter.write_line(line)
    terminalreporter.write_line(
        "note: pytest exits 1 for a FAIL and an ERROR alike; gate CI on `quantgate run` (1 FAIL, 2 ERROR)"
    )
