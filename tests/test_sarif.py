"""`--format sarif`: SARIF 2.1.0 for GitHub code scanning.

Every log is validated against the official SARIF 2.1.0 JSON schema (the OASIS rtm.5 file that
`fixtures/sarif/fetch_schema.py` fetches, pinned by sha256, from Microsoft's `@microsoft/jest-sarif`
npm package), and then against what code scanning needs beyond the schema (rule indexes, relative
URIs, plain-text messages).
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from pathlib import Path

from tests.conftest import run_cli

from quantgate.core.codes import all_finding_codes
from quantgate.report import OUTPUT_FORMATS, render

REPO = Path(__file__).resolve().parents[1]
LEVELS = {"none", "note", "warning", "error"}


@functools.cache
def _official_schema() -> dict:
    sys.path.insert(0, str(REPO / "fixtures" / "sarif"))
    try:
        from fetch_schema import fetch  # the pinned copy in the venv; fetched once if missing
    finally:
        sys.path.pop(0)
    return json.loads(fetch().read_text(encoding="utf-8"))


def _schema_errors(log: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft4Validator(_official_schema())
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(log)]


def _check_structure(log: dict) -> dict:
    """The official schema, then what GitHub code scanning needs beyond it."""
    assert _schema_errors(log) == []
    assert log["version"] == "2.1.0" and isinstance(log["runs"], list) and len(log["runs"]) == 1
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "quantgate" and driver["version"] and driver["informationUri"].startswith("https://")
    ids = [r["id"] for r in driver["rules"]]
    assert len(ids) == len(set(ids))
    for inv in run["invocations"]:
        assert isinstance(inv["executionSuccessful"], bool) and isinstance(inv["exitCode"], int)
    for res in run["results"]:
        assert res["ruleId"] in ids and ids[res["ruleIndex"]] == res["ruleId"]
        assert res["level"] in LEVELS
        assert set(res["message"]) == {"text"}  # never markdown
        for loc in res["locations"]:
            art = loc["physicalLocation"]["artifactLocation"]
            assert art["uriBaseId"] == "%SRCROOT%" and not art["uri"].startswith("/")
            region = loc["physicalLocation"].get("region")
            if region:
                assert region["byteOffset"] >= 0
    return run


def test_sarif_is_a_format() -> None:
    assert "sarif" in OUTPUT_FORMATS


def test_every_output_format_is_offered_by_one_name(tmp_path: Path) -> None:
    """report.OUTPUT_FORMATS (not FORMATS: formats.FORMATS is what quantgate reads) is what `run`,
    `merge` and `render` take and what `render`'s help lists."""
    import quantgate.report
    from quantgate.cli import extras
    from quantgate.cli import main as cli

    assert OUTPUT_FORMATS == ("text", "json", "markdown", "junit", "github", "html", "sarif")
    assert not hasattr(quantgate.report, "FORMATS")
    assert cli.extras is extras and not hasattr(cli, "cli_extras")
    for command in ("run", "merge", "render"):
        sub = next(a for a in cli._parser(command)._actions if a.dest == "command").choices[command]
        assert next(a for a in sub._actions if a.dest == "format").choices is OUTPUT_FORMATS, command
    listing = " ".join(run_cli("--help", cwd=tmp_path).stdout.split())
    assert f"re-render a saved JSON report ({', '.join(OUTPUT_FORMATS)})" in listing


def test_extras_docstring_names_each_subcommand_it_defines() -> None:
    from quantgate.cli import extras

    assert [c for c in extras.COMMANDS if f"`{c}`" not in (extras.__doc__ or "")] == []
    assert list(extras.COMMANDS) == ["render", "init", "check-policy", "extras"]


def test_the_official_schema_rejects_what_it_should() -> None:
    # the validator is live: the schema's own rules catch a wrong version, an unknown property and a
    # level outside its enum (so a passing log above means the log, not a permissive check)
    report = {"tool": {"name": "quantgate", "version": "9"}, "exit_code": 0, "summary": {}, "artifacts": [],
              "results": [{"guard": "integrity", "status": "FAIL", "gate_status": "FAIL", "message": "m",
                           "artifact": {"path": "a.gguf"}, "bounds": [],
                           "findings": [{"code": next(iter(all_finding_codes())), "severity": "error",
                                         "message": "m", "location": {}}]}]}
    log = json.loads(render(report, "sarif"))
    assert _schema_errors(log) == []
    assert len(_schema_errors({**log, "version": "2.0.0"})) == 1
    assert len(_schema_errors({**log, "extra": 1})) == 1
    bad = json.loads(json.dumps(log))
    bad["runs"][0]["results"][0]["level"] = "fatal"
    assert len(_schema_errors(bad)) == 1


def test_sarif_on_a_failing_release(tmp_path: Path) -> None:
    release = tmp_path / "release"
    shutil.copytree(REPO / "fixtures" / "release", release)
    (tmp_path / "quantgate.toml").write_text(
        '[quantgate]\nversion = 1\n\n[guards.size-heuristic]\nrequire = ["bits_per_weight <= 1"]\n', encoding="utf-8"
    )
    out = tmp_path / "out.sarif"
    proc = run_cli(
        "run", "release", "--policy", "quantgate.toml", "--format", "sarif", f"--output=sarif={out}", cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stderr
    log = json.loads(proc.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == log
    run = _check_structure(log)
    assert run["invocations"][0]["exitCode"] == 1
    bound = [r for r in run["results"] if r["ruleId"] == "bound/bits_per_weight"]
    assert len(bound) == 4 and {r["level"] for r in bound} == {"error"}
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in bound}
    assert "release/tiny-llama-q8_0.gguf" in uris
    assert {a["location"]["uri"] for a in run["artifacts"]} >= uris


def test_sarif_finding_rules_waivers_and_hostile_names() -> None:
    code = next(iter(all_finding_codes()))
    hostile = "\x1b[31m\n::error::x ##[group] [link](http://e)"
    result = {
        "guard": "integrity", "status": "FAIL", "gate_status": "FAIL", "message": "bad",
        "artifact": {"path": "dist/a b.gguf"}, "bounds": [],
        "findings": [
            {"code": code, "severity": "error", "message": hostile, "location": {"offset": 12, "tensor": hostile}},
            {"code": code, "severity": "info", "message": "ignored", "location": {}},
        ],
    }
    waived = {
        "guard": "manifest", "status": "ERROR", "gate_status": "PASS", "message": "gone",
        "artifact": {"path": "dist/a b.gguf"}, "bounds": [], "findings": [],
        "error": {"message": "no manifest", "hint": "write one"},
        "waiver": {"expires": "2099-01-01", "reason": "ticket 7"},
    }
    report = {
        "tool": {"name": "quantgate", "version": "9"}, "exit_code": 1, "summary": {"ERROR": 0},
        "artifacts": [{"path": "dist/a b.gguf"}], "results": [result, waived],
    }
    text = render(report, "sarif")
    assert "\x1b" not in text and "\\u001b" not in text  # escaped by plain before JSON: shown as \\x1b
    run = _check_structure(json.loads(text))
    res = run["results"]
    assert [r["ruleId"] for r in res] == [code, "guard/manifest/error"]
    rule = run["tool"]["driver"]["rules"][0]
    assert rule["shortDescription"]["text"] == all_finding_codes()[code]
    loc = res[0]["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "dist/a%20b.gguf"
    assert loc["physicalLocation"]["region"] == {"byteOffset": 12}
    assert "\n" not in res[0]["message"]["text"] and "\\x1b" in res[0]["message"]["text"]
    assert not res[0]["message"]["text"].startswith("::") and "##[" not in res[0]["message"]["text"]
    assert "\\x1b" in loc["logicalLocations"][0]["name"]
    assert res[1]["suppressions"][0]["justification"] == "waived until 2099-01-01: ticket 7"
    assert "suppressions" not in res[0]


def test_quiet_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    # the same report and exit code, and no stderr progress, with -q before or after `run`
    shutil.copy(REPO / "fixtures" / "release" / "tiny-llama-q8_0.gguf", tmp_path / "a.gguf")
    (tmp_path / "quantgate.toml").write_text("[quantgate]\nversion = 1\n", encoding="utf-8")
    before = run_cli("-q", "run", "a.gguf", "--format", "sarif", cwd=tmp_path)
    after = run_cli("run", "a.gguf", "--format", "sarif", "-q", cwd=tmp_path)
    after_long = run_cli("run", "--quiet", "a.gguf", "--format", "sarif", cwd=tmp_path)
    assert before.returncode == after.returncode == after_long.returncode == 0, after.stderr
    assert before.stdout == after.stdout == after_long.stdout
    assert before.stderr == after.stderr == after_long.stderr


def test_report_schema_is_self_contained(tmp_path: Path) -> None:
    # the report schema embeds the guard-result schema under its own $id, so a validator given only
    # the one file resolves every $ref with no network and no registry
    import jsonschema
    from referencing import Registry
    from referencing.exceptions import NoSuchResource

    from quantgate.core.jsonschemas import load_schema

    report = json.loads((REPO / "src" / "quantgate" / "schemas" / "report.schema.json").read_text("utf-8"))
    assert report["$defs"]["guard-result"] == load_schema("guard-result")

    def refuse(uri: str):
        raise NoSuchResource(ref=uri)

    shutil.copy(REPO / "fixtures" / "release" / "tiny-llama-q8_0.gguf", tmp_path / "a.gguf")
    (tmp_path / "quantgate.toml").write_text("[quantgate]\nversion = 1\n", encoding="utf-8")
    proc = run_cli("run", "a.gguf", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    validator = jsonschema.Draft202012Validator(report, registry=Registry(retrieve=refuse))
    assert [e.message for e in validator.iter_errors(json.loads(proc.stdout))] == []
    bad = json.loads(proc.stdout)
    bad["results"][0]["status"] = "MAYBE"
    assert len(list(validator.iter_errors(bad))) == 1

