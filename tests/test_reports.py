"""Reports: one canonical JSON (schema-valid), and its renderings parsed back."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import run_cli, run_json
from tests.test_gate_cli import make_release, policy_with

from quantgate.core import fastjson
from quantgate.core.jsonschemas import validate
from quantgate.guards import guard_ids
from quantgate.report import github, jsonfmt


def _mixed_release(tmp: Path) -> tuple[Path, Path]:
    """Three artifacts: one passes, one fails its bound, one is an LFS pointer (ERROR)."""
    release = make_release(tmp, ("ok.gguf", "fat.gguf"))
    (release / "fat.gguf").write_bytes(b"\x01" * 4000)
    (release / "lfs.onnx").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "c" * 64 + "\nsize 99\n", encoding="utf-8"
    )
    return release, policy_with(tmp, fail=9, warn=9)


def test_json_report_is_schema_valid_and_complete(tmp_path: Path) -> None:
    release, policy = _mixed_release(tmp_path)
    code, report = run_json("run", "--format", "json", str(release), "--policy", str(policy), "--sha256", cwd=tmp_path)
    assert validate(report, "report") == []
    assert code == 2 and report["verdict"] == "ERROR" and report["exit_code"] == 2
    assert report["schema_version"] == "1" and report["tool"]["name"] == "quantgate"
    assert report["policy"]["path"] == str(policy) and len(report["policy"]["sha256"]) == 64
    assert set(report["environment"]["packages"]) >= {"executorch", "onnx", "gguf", "safetensors"}
    assert [a["path"] for a in report["artifacts"]] == [
        "release/fat.gguf",
        "release/lfs.onnx",
        "release/ok.gguf",
    ]
    assert all(len(a["sha256"]) == 64 for a in report["artifacts"])
    for result in report["results"]:
        guard_result = {
            k: v for k, v in result.items() if k not in ("gate_status", "required", "waiver", "waiver_rejected")
        }
        assert validate(guard_result, "guard-result") == [], result
    gates = {
        (r["artifact"]["path"], r["guard"]): r["gate_status"]
        for r in report["results"]
        if r.get("skip") is None or r["skip"]["reason"] != "not_applicable"
    }
    assert gates == {
        ("release/fat.gguf", "integrity"): "FAIL",
        ("release/fat.gguf", "size-heuristic"): "FAIL",
        ("release/lfs.onnx", "integrity"): "ERROR",
        ("release/lfs.onnx", "size-heuristic"): "SKIP",
        ("release/ok.gguf", "integrity"): "FAIL",
        ("release/ok.gguf", "size-heuristic"): "PASS",
    }
    assert report["summary"] == {
        "artifacts": 3,
        "results": 3 * len(guard_ids()),
        "PASS": 1,
        "FAIL": 3,
        "WARN": 0,
        "SKIP": 1,
        "ERROR": 1,
        "waived": 0,
        "not_applicable": 3 * len(guard_ids()) - 6,
    }


def test_guard_result_is_schema_valid(tmp_path: Path) -> None:
    artifact = make_release(tmp_path) / "a.gguf"
    code, result = run_json(
        "guard", "size-heuristic", str(artifact), "--param", "params=2000", "--require", "bits_per_weight<=3"
    )
    assert validate(result, "guard-result") == []
    assert code == 1 and result["status"] == "FAIL" and result["metrics"]["bits_per_weight"] == 4.0
    code, result = run_json("guard", "integrity", str(artifact))
    assert validate(result, "guard-result") == []
    assert code == 1 and [f["code"] for f in result["findings"]] == ["FORMAT_UNKNOWN"]


def test_text_failures_first_and_verdict_last(tmp_path: Path) -> None:
    release, policy = _mixed_release(tmp_path)
    proc = run_cli("run", str(release), "--policy", str(policy), cwd=tmp_path)
    lines = proc.stdout.splitlines()
    statuses = [line.split()[0] for line in lines[1:-1] if line.split() and line.split()[0].isupper()]
    order = {"ERROR": 0, "FAIL": 1, "WARN": 2, "SKIP": 3, "PASS": 4}
    assert statuses == sorted(statuses, key=order.__getitem__)
    assert statuses[0] == "ERROR"
    assert lines[-1] == (
        "quantgate: ERROR — 3 artifacts, 1 passed, 3 failed, 0 warned, 1 error, 1 skipped, 0 waived; exit 2"
    )
    assert "no issues" not in proc.stdout.lower()


def test_junit_parses_back(tmp_path: Path) -> None:
    release, policy = _mixed_release(tmp_path)
    out = tmp_path / "reports" / "gate.xml"
    proc = run_cli(
        "run",
        str(release),
        "--policy",
        str(policy),
        "--output",
        f"junit={out}",
        "--output",
        f"json={tmp_path / 'reports' / 'gate.json'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == (
        "6",
        "3",
        "1",
        "1",
    )
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"release/fat.gguf", "release/lfs.onnx", "release/ok.gguf"}
    lfs = {c.get("name"): c for c in suites["release/lfs.onnx"].findall("testcase")}
    assert lfs["integrity"].find("error").get("type") == "lfs_pointer"
    assert lfs["size-heuristic"].find("skipped").get("message").startswith("blocked_by:integrity")
    fat = {c.get("name"): c for c in suites["release/fat.gguf"].findall("testcase")}
    assert fat["size-heuristic"].find("failure").get("message") == "bits_per_weight 32 > 9 (required)"
    props = {p.get("name"): p.get("value") for p in suites["release/fat.gguf"].find("properties")}
    assert props["size_bytes"] == "4000"
    saved = json.loads((tmp_path / "reports" / "gate.json").read_text())
    assert saved["verdict"] == "ERROR"


def test_markdown_has_verdict_problems_and_matrix(tmp_path: Path) -> None:
    release, policy = _mixed_release(tmp_path)
    proc = run_cli("run", str(release), "--policy", str(policy), "--format", "markdown", cwd=tmp_path)
    md = proc.stdout
    assert md.startswith("## ⛔ quantgate: ERROR")
    assert "| 3 | 1 | 3 | 0 | 1 | 1 | 0 | 2 |" in md
    assert "### Problems" in md and "bits_per_weight 32 > 9 (required)" in md
    assert "<details><summary>All results (6)</summary>" in md


def test_github_outputs_summary_and_annotations(tmp_path: Path) -> None:
    release, policy = _mixed_release(tmp_path)
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    summary.write_text("previous step\n", encoding="utf-8")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)}
    proc = run_cli(
        "run",
        str(release),
        "--policy",
        str(policy),
        "--format",
        "json",
        "--output",
        f"json={tmp_path / 'r.json'}",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2
    json.loads(proc.stdout)  # annotations went to stderr, stdout stays JSON
    assert "::error file=release/lfs.onnx,title=quantgate integrity%3A ERROR::release/lfs.onnx: " in proc.stderr
    assert "::group::release/fat.gguf (unknown): FAIL" in proc.stderr
    assert summary.read_text().startswith("previous step\n## ⛔ quantgate: ERROR")
    values = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert values == {
        "verdict": "ERROR",
        "exit-code": "2",
        "artifacts": "3",
        "passed": "1",
        "failed": "3",
        "warned": "0",
        "errors": "1",
        "skipped": "1",
        "waived": "0",
        "report-json": str(tmp_path / "r.json"),
    }


def test_github_annotation_caps_and_escaping() -> None:
    results = [
        {
            "artifact": {"path": f"m{i}.gguf"},
            "guard": "integrity",
            "status": "FAIL",
            "gate_status": "FAIL",
            "message": "bad: 50%\nnext",
            "bounds": [],
            "findings": [],
            "skip": None,
        }
        for i in range(14)
    ]
    lines = github.annotations({"results": results})
    errors = [line for line in lines if line.startswith("::error")]
    assert len(errors) == 10
    assert errors[-1] == "::error title=quantgate::5 more error(s); see the job summary or the JSON report"
    # the message is artifact-derived: its newline shown escaped (quantgate.core.untrusted), `%` as data
    assert errors[0] == "::error file=m0.gguf,title=quantgate integrity%3A FAIL::m0.gguf: bad: 50%25\\x0anext"


def test_schema_command_prints_bundled_schemas() -> None:
    for name in ("guard-result", "report", "policy"):
        proc = run_cli("schema", name)
        assert proc.returncode == 0
        assert json.loads(proc.stdout)["$id"].endswith(f"{name}.schema.json")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=8)
    | st.dictionaries(st.text(max_size=12) | st.integers() | st.booleans(), inner, max_size=8),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_json_values)
def test_pretty_json_is_the_same_document(doc: object) -> None:
    text = jsonfmt.dumps(doc)
    assert text.endswith("\n") and jsonfmt.dumps_bytes(doc) == text.encode("ascii")
    # JSON has no NaN or Infinity: they are written null
    assert json.loads(text) == json.loads(json.dumps(jsonfmt.finite(doc)))
    # the compact text of a large report, by orjson where it can say the same in ASCII, else by json
    compact = fastjson.dumps_compact_line(doc)
    if compact is not None:
        assert compact.isascii() and json.loads(compact) == json.loads(json.dumps(jsonfmt.finite(doc)))


def test_compact_json_falls_back_to_json_where_orjson_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = {"name": "blk.0.attn_q.weight", "shape": [4096, 4096], "bits": 4.5, "scale": 1e-05}
    big = {"layers": [layer] * (jsonfmt.PRETTY_LIMIT // 60 + 1)}
    fast = jsonfmt.dumps(big)
    assert fastjson.dumps_compact_line(big) is not None and json.loads(fast) == big
    assert jsonfmt.dumps_bytes(big) == fast.encode() and fast.endswith("}\n")  # the bytes printed
    monkeypatch.setattr(fastjson, "orjson", None)
    slow = jsonfmt.dumps(big)
    assert json.loads(slow) == big and jsonfmt.dumps_bytes(big) == slow.encode()  # without orjson
    monkeypatch.undo()
    # json's escapes keep a report ASCII; integer keys and integers past 64 bits are json's alone
    for odd in ({"name": "blöck"}, {"n": {8: 1}}, {"params": 1 << 70}):
        assert fastjson.dumps_compact_line(odd) is None
        text = jsonfmt.dumps({**big, **odd})
        assert text.isascii() and json.loads(text) == json.loads(json.dumps({**big, **odd}))


def test_pretty_json_keeps_records_on_one_line_and_big_documents_compact() -> None:
    layer = {"name": "blk.0.attn_q.weight", "kind": "linear", "shape": [4096, 4096], "dtype": "F16"}
    doc = {"status": "PASS", "metrics": {"layers": [layer, layer], "weight_ops": 2}, "bounds": []}
    assert jsonfmt.dumps(doc).splitlines() == [
        "{",
        '  "status": "PASS",',
        '  "metrics": {',
        '    "layers": [',
        "      " + json.dumps(layer) + ",",  # a record of scalars and lists of scalars: one line
        "      " + json.dumps(layer),
        "    ],",
        '    "weight_ops": 2',
        "  },",
        '  "bounds": []',
        "}",
    ]
    big = {"layers": [layer] * (jsonfmt.PRETTY_LIMIT // len(json.dumps(layer, separators=(",", ":"))) + 1)}
    text = jsonfmt.dumps(big)
    assert text.count("\n") == 1 and json.loads(text) == big


# ---- what discovery did not gate, and a merged report's shard set, in HTML and JUnit -------------

_EVIL = "evil\x1b[31m\n::error::x##[error]<b>.gguf"


def _with_skipped_and_merge(tmp_path: Path) -> dict:
    from tests.ux_samples import sample_report

    report = sample_report(tmp_path)
    report["skipped"] = [
        {"path": "rel/locked", "reason": "unreadable_dir", "detail": "cannot list the folder: Permission denied"},
        {"path": f"rel/{_EVIL}", "reason": "fifo", "detail": "not a regular file; never opened"},
    ]
    report["merge"] = {
        "shards": 3, "present": [1, 3], "missing": [2], "duplicated": [3], "allow_partial": False,
        "problems": [f"shard 3/3 is given twice (a.json and {_EVIL})", "shard(s) 2 of 3 missing"],
    }
    report["verdict"], report["exit_code"] = "ERROR", 2
    assert validate(report, "report") == []
    return report


def test_html_shows_what_was_not_gated_and_the_merge(tmp_path: Path) -> None:
    from quantgate.report import html

    page = html.render(_with_skipped_and_merge(tmp_path))
    assert "<h2>Not gated (2)</h2>" in page
    assert (
        '<td><span class="badge ERROR">ERROR</span></td><td><code>rel/locked</code></td><td>unreadable_dir</td>'
        "<td>cannot list the folder: Permission denied</td>"
    ) in page
    shown = "evil\\x1b[31m\\x0a::error::x#\\x23[error]&lt;b&gt;.gguf"
    assert f"<td><code>rel/{shown}</code></td><td>fifo</td>" in page
    assert "<h2>Merge</h2>" in page
    assert "<tr><th>missing</th><td>2</td></tr><tr><th>duplicated</th><td>3</td></tr>" in page
    assert f"<li>shard 3/3 is given twice (a.json and {shown})</li><li>shard(s) 2 of 3 missing</li>" in page
    assert "\x1b" not in page and "##[" not in page and "<b>" not in page


def test_junit_shows_what_was_not_gated_and_the_merge(tmp_path: Path) -> None:
    from quantgate.report import junit

    text = junit.render(_with_skipped_and_merge(tmp_path))
    assert "\x1b" not in text and "##[" not in text
    root = ET.fromstring(text)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["good.gguf", "bad.gguf", "quantgate: not gated", "quantgate: merge"]
    not_gated = suites["quantgate: not gated"]
    assert [(s.get("tests"), s.get("errors"), s.get("skipped")) for s in [not_gated]] == [("2", "1", "1")]
    locked, fifo = not_gated.findall("testcase")
    assert locked.get("name") == "rel/locked"
    assert locked.find("error").get("message") == "unreadable_dir: cannot list the folder: Permission denied"
    assert fifo.get("name") == "rel/evil\\x1b[31m\\x0a::error::x#\\x23[error]<b>.gguf"
    assert fifo.find("skipped").get("message") == "fifo: not a regular file; never opened"
    merge = suites["quantgate: merge"]
    (case,) = merge.findall("testcase")
    error = case.find("error")
    assert error.get("message") == "2 problem(s) with the shard set"
    assert error.text == (
        "shard 3/3 is given twice (a.json and evil\\x1b[31m\\x0a::error::x#\\x23[error]<b>.gguf)\n"
        "shard(s) 2 of 3 missing"
    )
    assert case.find("system-out").text == "shards 3; present: 1, 3; missing: 2; duplicated: 3"
    # the totals count them: 1 failing coverage case, 2 errors (the folder, the shard set), 1 skipped path
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "2", "1")


def test_the_code_vocabularies_are_the_schema_enums() -> None:
    # statuses, severities and layer kinds are named once in core and once in the published schema
    from quantgate.core.findings import SEVERITIES
    from quantgate.core.inventory import LAYER_KINDS
    from quantgate.core.jsonschemas import load_schema
    from quantgate.core.result import STATUSES

    text = json.dumps(load_schema("guard-result"))
    assert f'"status": {{"enum": {json.dumps(list(STATUSES))}}}' in text
    assert f'"severity": {{"enum": {json.dumps(list(SEVERITIES))}}}' in text
    assert text.count(f'"kind": {{"enum": {json.dumps(list(LAYER_KINDS))}}}') == 2
