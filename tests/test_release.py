"""The sample release `make validate` gates is current and passes the repository's policy."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import FIXTURES, ROOT, run_cli

RELEASE = FIXTURES / "release"


def _module():
    spec = importlib.util.spec_from_file_location("make_release", RELEASE / "make_release.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _artifacts() -> dict:
    return _module().ARTIFACTS


def module_references() -> dict:
    return _module().REFERENCES


def test_release_copies_match_their_fixtures() -> None:
    """A fixture re-exported without `make_release.py` re-run would leave a stale release behind."""
    artifacts = _artifacts()
    assert len(artifacts) == 4
    for name, source in artifacts.items():
        assert (RELEASE / name).read_bytes() == source.read_bytes(), f"re-run fixtures/release/make_release.py ({name})"
    manifest = json.loads((RELEASE / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(a["path"] for a in manifest["artifacts"]) == sorted(artifacts)
    assert sorted(module_references()) == sorted(artifacts)
    assert all(path.is_file() for path in module_references().values())


def test_release_passes_the_repository_policy() -> None:
    proc = run_cli("run", "--policy", str(ROOT / "quantgate.toml"), "--format", "json", cwd=ROOT, timeout=300)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["verdict"] in ("PASS", "WARN")
    ran = {(r["artifact"]["path"], r["guard"]): r["status"] for r in report["results"] if r["status"] != "SKIP"}
    assert ran[("fixtures/release/manifest.json", "manifest")] == "PASS"
    assert ran[("fixtures/release/tiny-lm-dq8-xnnpack.pte", "pte-program")] == "PASS"
    fidelity = {path for (path, guard), status in ran.items() if guard == "fidelity" and status == "PASS"}
    assert len(fidelity) == 4  # every artifact against its float parent
