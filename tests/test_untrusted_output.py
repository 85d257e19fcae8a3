"""Artifact-controlled strings never reach a CI control channel (issue 13, item 1).

Real hostile artifacts, built from the committed safetensors fixture: a tensor named with a newline
and a workflow command, CR, `##[error]`, ANSI escapes, a markdown link and image, C1 and a Unicode
line separator; a file named likewise; a header with a lone-surrogate escape; a file name that is
not UTF-8. Every output format, `inspect`, the stderr log lines, the pytest plugin's failure text
and the GitHub Action's run script are checked the way GitHub's runner reads them.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from pathlib import Path

import pytest
from tests.conftest import FIXTURES, run_cli
from tests.test_ux_action import run_action

from quantgate.core import fastjson
from quantgate.core.untrusted import markdown, plain
from quantgate.report import jsonfmt

pytest_plugins = ["pytester"]

PLAIN_F16 = FIXTURES / "safetensors" / "plain_f16" / "model.safetensors"
GGUF_F16 = FIXTURES / "gguf" / "model_f16.gguf"
GGUF_RENAMES = {
    b"blk.0.ffn_down.weight": b"\n::add-mask::k\r##[e]\x1b",  # a weight: listed as unquantized
    b"quantgate-tiny-llama": b"\n::warning::w ##[x]\x1b",  # general.name: a fact inspect shows
}
HOSTILE = "w\n::add-mask::x\r##[error]boom\x1b[31m[a](http://x) ![i](http://x)\x85\u2028\n::stop-commands::t"
# a file name may hold all of it but `/` and NUL on Linux
HOSTILE_FILE = "f\n::warning::y\r##[error]z\x1b[2J[a](mailto:x).safetensors"
OWN_COMMAND = re.compile(
    r"::(group::|endgroup::|error file=|warning file=|error title=quantgate::|warning title=quantgate::"
    r"|stop-commands::[0-9a-f]{32}$|[0-9a-f]{32}::$)"
)
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _rewrite(src: Path, dst: Path, header: bytes) -> None:
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header += b" " * (-len(header) % 8)
    dst.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n :])


def _header(src: Path) -> dict:
    data = src.read_bytes()
    return json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])


def hostile_release(root: Path) -> Path:
    """release/: a tensor with a hostile name (and an unknown dtype, so a finding names it), a file
    with a hostile name (sound), a header with a lone surrogate escape."""
    folder = root / "release"
    folder.mkdir()
    header = {(HOSTILE if k == "lm_head.weight" else k): v for k, v in _header(PLAIN_F16).items()}
    header[HOSTILE] = {**header[HOSTILE], "dtype": "Q9"}
    _rewrite(PLAIN_F16, folder / "named.safetensors", json.dumps(header).encode())
    (folder / HOSTILE_FILE).write_bytes(PLAIN_F16.read_bytes())
    text = json.dumps(_header(PLAIN_F16)).replace('"lm_head.weight"', '"lm\\ud800head.weight"')
    _rewrite(PLAIN_F16, folder / "surrogate.safetensors", text.encode())
    # a GGUF, sound, with a hostile tensor name and model name (same lengths as the fixture's)
    data = GGUF_F16.read_bytes()
    for old, new in GGUF_RENAMES.items():
        assert len(old) == len(new) and data.count(old) == 1
        data = data.replace(old, new)
    (folder / "renamed.gguf").write_bytes(data)
    return folder


def assert_inert(text: str, what: str) -> None:
    """What the runner would obey in `text`: no raw control character, no `##[`, no line-leading
    `::` but quantgate's own commands, and nothing after a stop-commands line until its token."""
    assert not RAW_CONTROL.search(text), f"{what}: raw control character in {text!r}"
    assert "##[" not in text, f"{what}: `##[` in {text!r}"
    stopped = None
    for line in text.split("\n"):
        if stopped:
            if line == f"::{stopped}::":
                stopped = None
            continue
        if line.lstrip().startswith("::"):
            assert OWN_COMMAND.match(line.lstrip()), f"{what}: a workflow command of the artifact's: {line!r}"
            if line.startswith("::stop-commands::"):
                stopped = line.split("::")[2]
    assert stopped is None, f"{what}: stop-commands never ended"


def assert_no_live_markdown(md: str) -> None:
    assert "[a](http://x)" not in md and "![i](http://x)" not in md
    assert not re.search(r"(?<!\\)\[[^\]\n]*(?<!\\)\]\(", md), "a live link or image"
    assert "<b" not in md and "http://x" not in md  # escaped: `http\://x` autolinks nowhere


@pytest.mark.parametrize("fmt", ["text", "json", "markdown", "github", "html", "junit"])
def test_every_format_is_inert(tmp_path: Path, fmt: str) -> None:
    release = hostile_release(tmp_path)
    out = tmp_path / f"out.{fmt}"
    proc = run_cli("run", str(release), "--format", fmt, "--output", f"{fmt}={out}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # two integrity FAILs, no crash
    assert "internal error" not in proc.stderr
    written = out.read_text(encoding="utf-8")
    for text, what in ((proc.stdout, "stdout"), (written, "--output"), (proc.stderr, "stderr")):
        assert_inert(text, f"{fmt} {what}")
    if fmt == "json":
        report = json.loads(proc.stdout)
        assert json.loads(written) == report
        codes = {
            Path(r["artifact"]["path"]).name: sorted({f["code"] for f in r["findings"]})
            for r in report["results"]
            if r["guard"] == "integrity"
        }
        assert codes == {
            "named.safetensors": ["ST_UNKNOWN_DTYPE"],
            "surrogate.safetensors": ["ST_HEADER_INVALID_JSON"],
            HOSTILE_FILE: [],
            "renamed.gguf": [],
        }
        # JSON stays exact: the name comes back as the file spelled it
        [finding] = [f for r in report["results"] for f in r["findings"] if f["code"] == "ST_UNKNOWN_DTYPE"]
        assert finding["location"]["tensor"] == HOSTILE
    else:
        assert "ST_UNKNOWN_DTYPE" in proc.stdout and "ST_HEADER_INVALID_JSON" in proc.stdout
    if fmt == "markdown":
        assert_no_live_markdown(proc.stdout)
        assert "add-mask::k" in proc.stdout  # the GGUF layer, in the unquantized table, shown
    if fmt == "text":
        assert "\\x0a::add-mask::x\\x0d#\\x23[error]boom\\x1b[31m" in proc.stdout  # shown, escaped


def test_github_runner_wraps_untrusted_output(tmp_path: Path) -> None:
    release = hostile_release(tmp_path)
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
    }
    proc = run_cli("run", str(release), "--format", "text", env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"::stop-commands::[0-9a-f]{32}", lines[0])
    assert lines[-1] == f"::{lines[0].split('::')[2]}::"
    assert_inert(proc.stdout, "stdout")
    assert_inert(proc.stderr, "stderr")
    # the stderr log lines (one per artifact) are wrapped each, and end before the annotations,
    # which the runner must still obey: outside any stop-commands region
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and any("\\x1b[2J" in line for line in progress)
    stopped, obeyed = None, []
    for line in proc.stderr.splitlines():
        if stopped:
            stopped = None if line == f"::{stopped}::" else stopped
        elif line.startswith("::stop-commands::"):
            stopped = line.split("::")[2]
        elif line.startswith("::error "):
            obeyed.append(line)
    assert len(obeyed) == 2
    summary = (tmp_path / "summary").read_text(encoding="utf-8")
    assert_inert(summary, "step summary")
    assert_no_live_markdown(summary)
    assert "::" not in (tmp_path / "output").read_text(encoding="utf-8")


def test_inspect_is_inert(tmp_path: Path) -> None:
    release = hostile_release(tmp_path)
    proc = run_cli("inspect", str(release / "named.safetensors"), cwd=tmp_path)
    assert proc.returncode == 1  # ST_UNKNOWN_DTYPE: not structurally sound
    assert "ST_UNKNOWN_DTYPE" in proc.stdout and "x\\x0a::add-mask::x" not in proc.stderr
    assert_inert(proc.stdout, "inspect")
    assert_inert(proc.stderr, "inspect stderr")
    proc = run_cli("inspect", str(release / HOSTILE_FILE), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_inert(proc.stdout, "inspect of a hostile file name")
    proc = run_cli("inspect", str(release / "renamed.gguf"), cwd=tmp_path)
    assert proc.returncode == 0 and "add-mask::k" in proc.stdout and "::warning::w" in proc.stdout
    assert_inert(proc.stdout, "inspect of a GGUF")
    proc = run_cli("inspect", str(release / "named.safetensors"), "--format", "json", cwd=tmp_path)
    assert proc.returncode == 1 and "##[" not in proc.stdout
    [finding] = json.loads(proc.stdout)["structural_findings"]
    assert finding["code"] == "ST_UNKNOWN_DTYPE" and finding["location"]["tensor"] == HOSTILE  # exact


def test_non_utf8_file_name_renders_everywhere(tmp_path: Path) -> None:
    # a name no UTF-8 encoder can write raw: Python holds it with a lone surrogate (U+DCFF)
    folder = tmp_path / "release"
    folder.mkdir()
    name = os.fsdecode(b"bad\xff.safetensors")
    (folder / name).write_bytes(PLAIN_F16.read_bytes())
    for fmt in ("text", "json", "markdown", "github", "html", "junit"):
        out = tmp_path / f"out.{fmt}"
        proc = run_cli("run", str(folder), "--format", fmt, "--output", f"{fmt}={out}", cwd=tmp_path)
        assert proc.returncode == 0, (fmt, proc.stderr)
        shown = "bad\\\\udcff.safetensors" if fmt == "markdown" else "bad\\udcff.safetensors"
        assert shown in proc.stdout, fmt
        assert out.stat().st_size > 0
    proc = run_cli("inspect", str(folder / name), cwd=tmp_path)
    assert proc.returncode == 0 and "bad\\udcff.safetensors" in proc.stdout, proc.stderr


def test_lone_surrogate_fails_integrity_and_pairs_do_not(tmp_path: Path) -> None:
    cases = {
        "lone_high.safetensors": ('"lm\\ud800head.weight"', 1),
        "lone_low.safetensors": ('"lm\\udc00head.weight"', 1),
        "pair.safetensors": ('"lm\\ud83d\\ude00head.weight"', 0),  # an emoji, escaped: valid
        "escaped_backslash.safetensors": ('"lm\\\\ud800head.weight"', 0),  # `\\` then `ud800`: text
    }
    text = json.dumps(_header(PLAIN_F16))
    for name, (key, code) in cases.items():
        _rewrite(PLAIN_F16, tmp_path / name, text.replace('"lm_head.weight"', key).encode())
        proc = run_cli("guard", "integrity", str(tmp_path / name))
        result = json.loads(proc.stdout)
        assert proc.returncode == code, (name, proc.stderr)
        if code:
            assert [f["code"] for f in result["findings"]] == ["ST_HEADER_INVALID_JSON"]
            assert "lone surrogate" in result["findings"][0]["message"]
    # raw bytes that are not UTF-8
    _rewrite(PLAIN_F16, tmp_path / "raw.safetensors", text.replace("lm_head", "lm\xffhead").encode("latin-1"))
    proc = run_cli("guard", "integrity", str(tmp_path / "raw.safetensors"))
    assert proc.returncode == 1
    assert [f["code"] for f in json.loads(proc.stdout)["findings"]] == ["ST_HEADER_NOT_UTF8"]


def test_json_with_lone_surrogates_and_runner_syntax_cannot_crash() -> None:
    doc = {"name": "a\ud800b ##[error]x", "layers": [{"name": "\udcff"}] * 3}
    assert fastjson.dumps_compact_line(doc) is None  # orjson refuses it; json writes it
    text = jsonfmt.dumps(doc)
    assert text.isascii() and "##[" not in text
    assert json.loads(text) == doc  # the same value: `#\u0023[` is `##[`


def test_sanitiser_contract() -> None:
    assert plain("model.layers.0.weight") == "model.layers.0.weight"
    assert plain("aten::linear") == "aten::linear"  # `::` inside a name is no command
    assert plain("  ::error::x") == "  \\x3a:error::x"
    assert plain("a\r\nb\x1b\x9b\u2028\ud800") == "a\\x0d\\x0ab\\x1b\\x9b\\u2028\\ud800"
    assert plain("##[error]") == "#\\x23[error]"
    for text in (HOSTILE, HOSTILE_FILE, "::x", "##[", "\ud800"):
        assert plain(plain(text)) == plain(text)
    assert markdown("[a](http://x) ![i](y) <b> a|b _e_ bits_per_weight") == (
        "\\[a\\](http\\://x) \\!\\[i\\](y) &lt;b> a\\|b \\_e\\_ bits_per_weight"
    )


def test_pytest_plugin_failure_text_is_inert(pytester: pytest.Pytester) -> None:
    hostile_release(pytester.path)
    from tests.test_ux_plugin import run

    result = run(pytester, "--quantgate", "release", "-rA", "--quantgate-report", "none")
    result.assert_outcomes(passed=6, failed=2, skipped=8)
    out = result.stdout.str()
    assert "ST_UNKNOWN_DTYPE" in out and "ST_HEADER_INVALID_JSON" in out
    assert_inert(out, "pytest output")


def test_action_never_echoes_a_hostile_input(tmp_path: Path) -> None:
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "a.safetensors").write_bytes(PLAIN_F16.read_bytes())
    proc, out, summary = run_action(
        tmp_path, paths="release", fail_on="x\n::add-mask::y\r##[error]z\nverdict=PASS"
    )
    assert proc.returncode == 4
    assert out == {"verdict": "USAGE", "exit-code": "4", "output-dir": f"{tmp_path}/quantgate-reports"}
    assert "fail-on must be fail or warn" in proc.stderr
    assert_inert(proc.stderr, "action stderr")
    assert_inert(summary, "action summary")
    # a hostile path: echoed in the command line and in quantgate's error, inert in both
    proc, out, summary = run_action(tmp_path, paths="release\n::add-mask::x ##[error]y\r\x1b[2J")
    assert proc.returncode == 4 and out["verdict"] == "USAGE"
    assert "path not found: ::add-mask::x #\\x23[error]y\\x0d\\x1b[2J" in summary
    assert_inert(proc.stderr, "action stderr")
    assert_inert(summary, "action summary")
    # an output-dir with a newline: every output that holds it keeps it, and adds no key
    hostile_dir = "out\nverdict=PASS\n::add-mask::x"
    proc, out, summary = run_action(tmp_path, paths="release", outputs="json", output_dir=hostile_dir)
    assert proc.returncode == 0, proc.stderr
    assert out["verdict"] == "PASS" and out["output-dir"] == f"{tmp_path}/{hostile_dir}"
    assert out["report-json"] == f"{tmp_path}/{hostile_dir}/report.json"
    assert (tmp_path / hostile_dir / "report.json").is_file()
    assert_inert(proc.stderr, "action stderr")


if sys.platform == "win32":  # pragma: no cover - file names with newlines are POSIX's
    pytestmark = pytest.mark.skip("hostile file names need a POSIX file system")


# ---- the paths issue 13 left: each with a hostile name that must come out inert -------------------

EVIL = "e\x1b[31m\n::error::x##[error]y"


def test_pytest_plugin_policy_error_is_inert(pytester: pytest.Pytester) -> None:
    # an unknown key, quoted by the policy error the plugin prints (a pull request can set the policy)
    (pytester.path / "m.gguf").write_bytes(b"\x00" * 8)
    key = EVIL.replace("\x1b", "\\u001b").replace("\n", "\\n")
    (pytester.path / "bad.toml").write_text(f'[quantgate]\nversion = 1\n"{key}" = 1\n', encoding="utf-8")
    from tests.test_ux_plugin import run

    result = run(pytester, "--quantgate", "m.gguf", "--quantgate-policy", "bad.toml")
    assert result.ret == 4  # pytest's usage error
    err = result.stderr.str()
    assert "quantgate: invalid policy" in err
    # the policy's message keeps the key's line break; each line is made inert, as `quantgate run` does
    assert "unknown key quantgate.e\\x1b[31m\n\\x3a:error::x#\\x23[error]y (line 1)" in err
    assert_inert(err, "pytest stderr")


def test_failed_output_write_names_the_path_inertly(tmp_path: Path) -> None:
    blocker = tmp_path / EVIL  # a file where the report's folder should be: the write fails
    blocker.write_text("x")
    model = tmp_path / "m.safetensors"
    model.write_bytes(PLAIN_F16.read_bytes())
    proc = run_cli("run", str(model), "--format", "json", "--output", f"json={blocker}/r.json", cwd=tmp_path)
    assert proc.returncode == 2  # the PASS is not green without the report asked for
    assert "cannot write --output json=" in proc.stderr
    assert "e\\x1b[31m\\x0a::error::x#\\x23[error]y/r.json" in proc.stderr
    assert_inert(proc.stderr, "stderr")


def _hostile_saved_report(tmp_path: Path) -> Path:
    """A saved report (as a pull request's workflow could upload it for `quantgate render`) with hostile
    strings where the schema takes any: a by_bits key, a guard id, an artifact's format."""
    from tests.ux_samples import sample_report

    report = sample_report(tmp_path)
    fence = "8\n```\n![i](http://x) [a](http://x)\n```\n" + EVIL
    for r in report["results"]:
        mix = r["metrics"]["coverage"]["ops"]["by_bits"]
        mix[fence] = mix.pop(next(iter(mix)))
    report["results"][0]["guard"] = f"g{EVIL}"
    report["artifacts"][0]["format"] = f"gguf{EVIL}"
    report["skipped"] = [{"path": "www.evil.com @someone.gguf", "reason": "fifo", "detail": "never opened"}]
    from quantgate.core.jsonschemas import validate

    assert validate(report, "report") == []
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(report), encoding="utf-8")
    return saved


def test_markdown_of_a_saved_report_keeps_its_fences_and_makes_no_link(tmp_path: Path) -> None:
    proc = run_cli("render", str(_hostile_saved_report(tmp_path)), "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    md = proc.stdout
    assert_inert(md, "markdown")
    assert_no_live_markdown(md)
    # each mermaid block is the pie and its slices only: no key closes the fence early
    blocks = re.findall(r"```mermaid\n(.*?)\n```", md, re.S)
    assert len(blocks) == 2 and md.count("```") == 4
    for block in blocks:
        assert all(line.startswith(("pie showData title ", '    "')) for line in block.split("\n"))
    # a skipped path is no autolink nor a mention
    assert "- www\\.evil.com \\@someone.gguf: fifo (never opened)" in md


@pytest.mark.parametrize("fmt", ["github", "junit"])
def test_github_and_junit_of_a_saved_report_are_inert(tmp_path: Path, fmt: str) -> None:
    proc = run_cli("render", str(_hostile_saved_report(tmp_path)), "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    assert_inert(proc.stdout, fmt)
    if fmt == "github":
        assert "::group::good.gguf (ggufe\\x1b[31m\\x0a::error::x#\\x23[error]y): PASS" in proc.stdout
    else:
        import xml.etree.ElementTree as ET

        names = [c.get("name") for c in ET.fromstring(proc.stdout).iter("testcase")]
        assert "ge\\x1b[31m\\x0a::error::x#\\x23[error]y" in names
