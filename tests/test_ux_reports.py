"""Reports people read (HTML audit report, markdown pictures), `render`, `init` and `check-policy`."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.conftest import run_cli
from tests.test_gate_cli import make_release, policy_with
from tests.ux_samples import HOSTILE, coverage_result, layers, sample_report

from quantgate.cli.extras import starter_policy
from quantgate.cli.main import main
from quantgate.core.inventory import FLOAT, LINEAR, Layer
from quantgate.core.jsonschemas import validate
from quantgate.gate.policy import load_policy
from quantgate.guards import GUARD_MODULES
from quantgate.guards import coverage_guard as coverage_guard_mod
from quantgate.report import html as html_report
from quantgate.report import markdown, render
from quantgate.report.pictures import emoji_bar


def _mixed(tmp: Path) -> tuple[Path, Path]:
    release = make_release(tmp, ("ok.gguf", "fat.gguf"))
    (release / "fat.gguf").write_bytes(b"\x01" * 4000)
    (release / "lfs.onnx").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "c" * 64 + "\nsize 99\n", encoding="utf-8"
    )
    return release, policy_with(tmp, fail=9, warn=9)


# ---------------------------------------------------------------------------------------------
# layers in coverage results


def test_coverage_results_carry_every_layer_schema_valid(tmp_path: Path) -> None:
    report = sample_report(tmp_path)
    assert validate(report, "report") == []
    result = report["results"][0]
    assert [layer["name"] for layer in result["layers"]] == [x.name for x in layers()]
    assert result["layers"][4] == {
        "name": "blk.4.attn",
        "kind": "linear",
        "shape": [20, 100],
        "dtype": "Q4_0",
        "bits": 4,
        "quantized": True,
        "params": 2000,
        "flops": 4000,
        "weight_bytes": 1125,
        "bits_per_weight": 4.5,
    }
    assert "layers_omitted" not in result


def test_layer_list_is_capped_with_a_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coverage_guard_mod, "MAX_LAYERS", 3)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"\x00" * 10)
    result = coverage_result(path)
    assert len(result["layers"]) == 3 and result["layers_omitted"] == 4
    assert result["metrics"]["weight_ops"] == 7
    report = sample_report(tmp_path)
    report["results"][0] = {**result, "artifact": report["results"][0]["artifact"]}
    assert validate(report, "report") == []
    assert "4 more layer(s) not carried by the report" in html_report.render(report)


# ---------------------------------------------------------------------------------------------
# HTML


class _Doc(HTMLParser):
    """Collects what a check needs: tags, attributes, text, and whether every element closed."""

    VOID = frozenset({"meta", "br", "rect", "link", "img", "input", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.mismatched: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.mismatched.append(tag)
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(text: str) -> _Doc:
    doc = _Doc()
    doc.feed(text)
    doc.close()
    return doc


def test_html_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    report = sample_report(tmp_path, hostile=True)
    text = render(report, "html")
    doc = parse(text)
    assert doc.mismatched == [] and doc.stack == []
    names = [t for t, _ in doc.tags]
    assert "script" not in names and "link" not in names and "img" not in names and "iframe" not in names
    for _, attrs in doc.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not value or value.startswith("#"), f"external reference {key}={value!r}"
    csp = next(a for t, a in doc.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in (csp["content"] or "")
    body = " ".join(doc.text)
    # provenance
    assert "quantgate 0.1.0" in body and report["environment"]["python"] in body
    counts = [t for t, a in doc.tags if t == "table" and a.get("class") == "counts"]
    assert len(counts) == 1 and "not applicable" in body
    assert "2026-11-23T19:00:00+00:00" in body
    # the hostile tensor name is text, never markup
    assert HOSTILE in body and "<script>" not in text
    # pictures: one bar per basis per coverage result, segments coloured by bit width
    bars = [a for t, a in doc.tags if t == "svg" and a.get("class") == "mix"]
    assert len(bars) == 2 * 3
    segments = [a["data-bits"] for t, a in doc.tags if t == "rect" and a.get("class") == "seg"]
    assert segments[:3] == ["4", "8", "32"]
    # the full per-layer table of both results, and the unquantized layers
    layer_tables = [a for t, a in doc.tags if t == "table" and a.get("class") == "layers"]
    assert len(layer_tables) == 2
    assert body.count("blk.4.attn") == 2 and "Every weight-bearing layer (7)" in body
    assert "Unquantized weight-bearing layers (2)" in body
    assert "coverage.ops.quantized 0.7143 < 0.9 (required)" in body


def test_html_provenance_shows_policy_hash_and_sha256s(tmp_path: Path) -> None:
    release, policy = _mixed(tmp_path)
    proc = run_cli(
        "run",
        str(release),
        "--policy",
        str(policy),
        "--sha256",
        "--output",
        "html=r.html",
        "--format",
        "json",
        cwd=tmp_path,
    )
    report = json.loads(proc.stdout)
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert report["policy"]["sha256"] in text
    assert all(a["sha256"] in text for a in report["artifacts"])
    assert "LFS pointer" in text and parse(text).mismatched == []


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(_browser() is None, reason="no headless chromium/chrome on this machine")
def test_html_report_in_a_headless_browser(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render(sample_report(tmp_path, hostile=True), "html"), encoding="utf-8")
    args = [_browser() or "", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic"]
    # the machine has no network: stop the browser's background connections
    args += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    args += [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90).stdout
    assert "quantgate audit report" in dom
    # the browser built the SVG bars and kept the hostile name as text (its DOM serialises it escaped)
    assert dom.count('class="mix"') == 6 and dom.count('class="seg"') >= 18
    assert "&lt;script&gt;alert" in dom and "<script>alert" not in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*args, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True,
        timeout=90,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# ---------------------------------------------------------------------------------------------
# markdown


def test_markdown_pictures_and_escaping(tmp_path: Path) -> None:
    text = markdown.render(sample_report(tmp_path, hostile=True))
    assert "| ops | 🟩🟩🟩🟦🟦🟦🟦🟦🟦🟦🟦🟦🟦🟦🟥🟥🟥🟥🟥🟥 | 14.3% | 57.1% | 28.6% |" in text
    assert text.count("```mermaid") == 2
    assert "<script" not in text and "&lt;script>" in text


def test_emoji_bar_always_has_twenty_cells() -> None:
    assert emoji_bar({"4": 1 / 3, "8": 1 / 3, "32": 1 / 3}) == "🟩" * 7 + "🟦" * 7 + "🟥" * 6
    assert emoji_bar({"unknown": 0.5, "16": 0.5}) == "⬜" * 10 + "🟨" * 10
    assert emoji_bar({}) == ""


def test_markdown_stays_under_githubs_summary_limit(tmp_path: Path) -> None:
    report = sample_report(tmp_path)
    many = [
        {**r, "artifact": {**r["artifact"], "path": f"dist/model-{i:05d}.gguf"}}
        for i in range(1500)
        for r in report["results"]
    ]
    big = {**report, "results": many}
    text = markdown.render(big)
    assert len(text.encode("utf-8")) <= markdown.MAX_BYTES
    assert text.count("```mermaid") <= markdown.MAX_PIES
    assert text.rstrip().endswith("the JSON report has everything)")
    assert text.count("<details>") == text.count("</details>") and text.count("```") % 2 == 0


# ---------------------------------------------------------------------------------------------
# render


def test_render_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    release, policy = _mixed(tmp_path)
    outputs = {"json": "r.json", "junit": "r.xml", "markdown": "r.md", "html": "r.html", "text": "r.txt"}
    args = [a for fmt, name in outputs.items() for a in ("--output", f"{fmt}={name}")]
    proc = run_cli("run", str(release), "--policy", str(policy), *args, cwd=tmp_path)
    assert proc.returncode == 2
    for fmt, name in outputs.items():
        # the real CLI entry point, in-process (one subprocess below checks the process exit code)
        monkeypatch.chdir(tmp_path)
        assert main(["render", "r.json", "--format", fmt]) == 0
        assert capsys.readouterr().out == (tmp_path / name).read_text(encoding="utf-8"), fmt
    done = run_cli("render", "r.json", "--format", "html", "--output", "sub/again.html", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == ""
    assert (tmp_path / "sub" / "again.html").read_text() == (tmp_path / "r.html").read_text()


def test_render_rejects_a_bad_report_with_its_json_path(tmp_path: Path) -> None:
    report = sample_report(tmp_path)
    report["results"][1]["gate_status"] = "MAYBE"
    report["summary"]["FAIL"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(report))
    proc = run_cli("render", "bad.json", cwd=tmp_path)
    assert proc.returncode == 4 and proc.stdout == ""
    assert "bad.json::$.results[1].gate_status: 'MAYBE' is not one of" in proc.stderr
    assert "bad.json::$.summary.FAIL: -1 is less than the minimum of 0" in proc.stderr
    (tmp_path / "broken.json").write_text('{"schema_version": "1",')
    proc = run_cli("render", "broken.json", cwd=tmp_path)
    assert proc.returncode == 4 and "broken.json: not JSON" in proc.stderr and "line 1" in proc.stderr
    proc = run_cli("render", "missing.json", cwd=tmp_path)
    assert proc.returncode == 4 and "cannot read report missing.json" in proc.stderr
    proc = run_cli("render", "bad.json", "--format", "pdf", cwd=tmp_path)
    assert proc.returncode == 4


# ---------------------------------------------------------------------------------------------
# init and check-policy


def test_init_writes_a_policy_that_loads_and_gates(tmp_path: Path) -> None:
    proc = run_cli("init", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    policy = load_policy(str(tmp_path / "quantgate.toml"))
    assert policy.paths == ["dist/"] and policy.guard("integrity").required
    assert not policy.guard("size-heuristic").enabled and policy.guard("manifest").required
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "m.gguf").write_bytes(b"\x01" * 100)
    ran = run_cli("run", "--format", "json", cwd=tmp_path)  # no PATH: the policy's paths
    assert ran.returncode == 1 and json.loads(ran.stdout)["summary"]["artifacts"] == 1
    again = run_cli("init", cwd=tmp_path)
    assert again.returncode == 4 and "exists; pass --force" in again.stderr
    forced = run_cli("init", "--force", "--path", "models/", cwd=tmp_path)
    assert forced.returncode == 0 and load_policy(str(tmp_path / "quantgate.toml")).paths == ["models/"]
    printed = run_cli("init", "--output", "-", cwd=tmp_path)
    assert printed.stdout.startswith("# quantgate policy") and printed.stdout.endswith("\n")


def test_starter_policy_has_bounds_for_coverage_guards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GUARD_MODULES, "demo-dtypes", "tests.ux_samples")
    text = starter_policy()
    assert '[guards.demo-dtypes]\nrequire = ["coverage.ops.quantized >= 0.90"]' in text
    (tmp_path / "quantgate.toml").write_text(text, encoding="utf-8")
    policy = load_policy(str(tmp_path / "quantgate.toml"))
    assert [str(b) for b in policy.guard("demo-dtypes").require] == ["coverage.ops.quantized >= 0.9"]
    assert policy.guard("demo-dtypes").expect_unquantized == ["kind:embedding"]
    # the starter's bound on a real measurement: 5 of 7 ops quantized < 0.90 -> FAIL
    path = tmp_path / "m.gguf"
    path.write_bytes(b"\x00")
    config = policy.guard_config("demo-dtypes")
    assert coverage_result(path, require=tuple(str(b) for b in config.require))["status"] == "FAIL"


def test_check_policy(tmp_path: Path) -> None:
    good = tmp_path / "quantgate.toml"
    good.write_text(starter_policy(), encoding="utf-8")
    ok = run_cli("check-policy", str(good), cwd=tmp_path)
    assert ok.returncode == 0 and "valid policy" in ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[quantgate]\nversion = 1\nfial_on = "warn"\n\n[guards.integrty]\nrequired = true\n'
        '[guards.size-heuristic]\nrequire = ["bits_per_weight <=> 9"]\n',
        encoding="utf-8",
    )
    proc = run_cli("check-policy", str(good), str(bad), cwd=tmp_path)
    assert proc.returncode == 4
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(str(bad))]
    assert f"{bad}: unknown key quantgate.fial_on (line 3); did you mean fail_on?" in lines
    assert f"{bad}: unknown guard guards.integrty (line 5); did you mean integrity?" in lines
    assert any("guards.size-heuristic.require[0] (line 8)" in ln for ln in lines), lines
    plain = tmp_path / "pyproject.toml"
    plain.write_text('[project]\nname = "x"\n', encoding="utf-8")
    proc = run_cli("check-policy", str(plain), cwd=tmp_path)
    assert proc.returncode == 0 and "nothing to check" in proc.stderr
    plain.write_text('[project]\nname = "x"\n[tool.quantgate]\nversion = 2\n', encoding="utf-8")
    proc = run_cli("check-policy", str(plain), cwd=tmp_path)
    assert proc.returncode == 4 and "tool.quantgate.version (line 4)" in proc.stderr
    expired = tmp_path / "old.toml"
    expired.write_text(
        '[[waivers]]\nguard = "integrity"\nartifact = "a.gguf"\nsha256 = "' + "a" * 64 + '"\n'
        'reason = "r"\nexpires = 2020-01-01\n',
        encoding="utf-8",
    )
    proc = run_cli("check-policy", str(expired), cwd=tmp_path)
    assert proc.returncode == 0 and "waivers[0] (integrity on a.gguf) expired on 2020-01-01" in proc.stderr


def test_pre_commit_hooks(tmp_path: Path) -> None:
    import yaml

    hooks = {h["id"]: h for h in yaml.safe_load((Path(__file__).parent.parent / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"quantgate-fast", "quantgate-full", "quantgate-policy"}
    fast = hooks["quantgate-fast"]
    assert fast["entry"].split() == ["quantgate", "-q", "run", "--guards", "integrity", "--no-github"]
    assert fast["pass_filenames"] is True and fast["require_serial"] is True
    assert fast["files"] == r"\.(pte|onnx|gguf|safetensors)$"
    assert hooks["quantgate-full"]["stages"] == ["pre-push", "manual"]
    # the entries, run as pre-commit would (entry + staged file names)
    release = make_release(tmp_path, ("a.gguf",))
    proc = run_cli(*fast["entry"].split()[1:], str(release / "a.gguf"), cwd=tmp_path)
    assert proc.returncode == 1 and "FORMAT_UNKNOWN" in proc.stdout
    policy = tmp_path / "quantgate.toml"
    policy.write_text("[quantgate]\nversion = 1\npaths = 3\n", encoding="utf-8")
    proc = run_cli(*hooks["quantgate-policy"]["entry"].split()[1:], str(policy), cwd=tmp_path)
    assert proc.returncode == 4 and "quantgate.paths (line 3)" in proc.stderr


def test_layers_of_unknown_precision_render(tmp_path: Path) -> None:
    """A delegate's opaque layer (quantized None, bits None) shows as unknown, in grey."""
    path = tmp_path / "d.gguf"
    path.write_bytes(b"\x00")
    opaque = Layer("delegate.0", LINEAR, (8, 8), "opaque", None, FLOAT, None, 64)
    computed = layers()[:2]
    computed[0].compute = "int8"  # an XNNPACK QS8 x QC8W node: integer compute is recorded
    result = coverage_result(path, layer_list=[*computed, opaque])
    report = sample_report(tmp_path)
    report["results"][0] = {**result, "artifact": report["results"][0]["artifact"]}
    text = html_report.render(report)
    assert 'data-bits="unknown"' in text and "<td>unknown</td>" in text
    assert "compute precision — ops: integer 33.3%, unknown 66.7%" in text
    assert "<td>int8</td></tr>" in text  # the layer's compute column
    assert validate(report, "report") == []


def test_starter_fidelity_section_works_once_uncommented(tmp_path: Path) -> None:
    text = starter_policy()
    section = text[text.index("# [guards.fidelity]") :].split("\n\n")[0]
    enabled = "\n".join(line.removeprefix("# ") for line in section.splitlines())
    (tmp_path / "quantgate.toml").write_text(text.replace(section, enabled), encoding="utf-8")
    fidelity = load_policy(str(tmp_path / "quantgate.toml")).guard("fidelity")
    assert fidelity.enabled and len(fidelity.require) == 3 and len(fidelity.warn) == 1
