"""Discovery: a release folder can neither hang the gate nor hide a file from it (issue 13, item 2).

FIFOs, sockets and devices are never opened and are reported as skipped; links are followed to
regular files (loop-safe) and gated under the path given; a folder that cannot be listed makes the
run an ERROR; files read beside an artifact follow one confinement rule (quantgate.core.confine).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURES, run_cli, run_json

pytest_plugins = ["pytester"]

VALID = FIXTURES / "safetensors" / "broken" / "valid_tiny.safetensors"
BAD_OFFSETS = FIXTURES / "safetensors" / "broken" / "bad_offsets.safetensors"
CT_W8A8 = FIXTURES / "safetensors" / "ct_w8a8"
SHARDED = FIXTURES / "safetensors" / "sharded"
GPTQ = FIXTURES / "safetensors" / "gptq_layout"  # packed: without its config.json, ST_NO_QUANT_CONFIG


def _real(path: Path) -> str:
    """How the CLI (run from a neutral folder) shows a path: folder resolved, name as given."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def _codes(report: dict[str, Any], guard: str, path: str | None = None) -> list[tuple[str, str]]:
    return [
        (f["code"], f["severity"])
        for r in report["results"]
        if r["guard"] == guard and (path is None or r["artifact"]["path"] == path)
        for f in r["findings"]
    ]


def _statuses(report: dict[str, Any]) -> dict[str, str]:
    return {r["guard"]: r["gate_status"] for r in report["results"]}


def _release(tmp_path: Path) -> Path:
    rel = tmp_path / "rel"
    rel.mkdir()
    shutil.copy(VALID, rel / "model.safetensors")
    return rel


def _run(path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    # a hang is the bug: the timeout turns it into a failure instead of a stuck suite
    return run_json("run", str(path), "--format", "json", *extra, timeout=60)


def test_fifo_in_folder_is_reported_and_never_opened(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    os.mkfifo(rel / "weights.gguf")
    code, report = _run(rel)
    assert code == 0
    assert report["verdict"] == "PASS"
    assert [a["path"] for a in report["artifacts"]] == [_real(rel / "model.safetensors")]
    assert report["skipped"] == [
        {"path": _real(rel / "weights.gguf"), "reason": "fifo", "detail": "not a regular file; never opened"}
    ]


def test_fifo_named_on_the_command_line_is_reported(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.gguf")
    code, report = _run(tmp_path / "model.gguf")
    assert code == 3
    assert report["verdict"] == "NO_INPUT"
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [(_real(tmp_path / "model.gguf"), "fifo")]


def test_unix_socket_in_folder_is_reported(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(rel / "model.onnx"))
        code, report = _run(rel)
    finally:
        sock.close()
    assert code == 0
    assert report["verdict"] == "PASS"
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [(_real(rel / "model.onnx"), "socket")]


def test_device_linked_into_folder_is_reported(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    os.symlink("/dev/null", rel / "model.gguf")
    code, report = _run(rel)
    assert code == 0
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [(_real(rel / "model.gguf"), "device")]
    assert len(report["artifacts"]) == 1


def test_symlinked_broken_model_fails_under_its_link_path(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    shutil.copy(BAD_OFFSETS, elsewhere / "blob")
    os.symlink(elsewhere / "blob", rel / "z-model.safetensors")
    code, report = _run(rel)
    assert code == 1
    assert report["verdict"] == "FAIL"
    link = _real(rel / "z-model.safetensors")
    assert [a["path"] for a in report["artifacts"]] == [_real(rel / "model.safetensors"), link]
    assert _codes(report, "integrity", link) == [("LINK_OUTSIDE_ROOT", "warning"), ("ST_BAD_OFFSETS", "error")]
    assert report["skipped"] == []


def test_link_outside_root_is_a_warning_finding(tmp_path: Path) -> None:
    rel = tmp_path / "rel"
    rel.mkdir()
    outside = tmp_path / "outside.safetensors"
    shutil.copy(VALID, outside)
    os.symlink(outside, rel / "model.safetensors")
    code, report = _run(rel)
    assert code == 0
    assert _statuses(report)["integrity"] == "WARN"
    assert _codes(report, "integrity") == [("LINK_OUTSIDE_ROOT", "warning")]
    assert report["artifacts"][0]["path"] == _real(rel / "model.safetensors")


def test_files_under_a_folder_link_keep_the_path_given(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(BAD_OFFSETS, shared / "model.safetensors")
    os.mkfifo(shared / "pipe")
    rel = tmp_path / "rel"
    rel.mkdir()
    os.symlink(shared, rel / "weights")
    os.symlink(rel, tmp_path / "latest")
    code, report = run_json("run", "latest", "--format", "json", cwd=tmp_path, timeout=60)
    assert code == 1
    assert [a["path"] for a in report["artifacts"]] == ["latest/weights/model.safetensors"]
    assert _codes(report, "integrity") == [("LINK_OUTSIDE_ROOT", "warning"), ("ST_BAD_OFFSETS", "error")]
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [("latest/weights/pipe", "fifo")]


def test_link_inside_root_is_gated_once_under_the_file_s_own_path(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    os.symlink("model.safetensors", rel / "alias.safetensors")  # sorts first, still loses to the file
    code, report = _run(rel)
    assert code == 0
    assert [a["path"] for a in report["artifacts"]] == [_real(rel / "model.safetensors")]
    assert _codes(report, "integrity") == []
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [(_real(rel / "alias.safetensors"), "duplicate")]


def test_symlink_loops_do_not_hang(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    os.symlink("loop-b", rel / "loop-a")
    os.symlink("loop-a", rel / "loop-b")
    os.symlink("self.gguf", rel / "self.gguf")
    (rel / "sub").mkdir()
    os.symlink("..", rel / "sub" / "up")
    os.symlink("missing.gguf", rel / "dangling.gguf")
    code, report = _run(rel)
    assert code == 0
    assert sorted((s["path"], s["reason"]) for s in report["skipped"]) == [
        (_real(rel / "dangling.gguf"), "broken_symlink"),
        (_real(rel / "loop-a"), "symlink_loop"),
        (_real(rel / "loop-b"), "symlink_loop"),
        (_real(rel / "self.gguf"), "symlink_loop"),
        (_real(rel / "sub" / "up"), "symlink_loop"),
    ]


def _hf_snapshot(tmp_path: Path, source: Path, names: list[str]) -> Path:
    """models--org--name/snapshots/<rev>/NAME -> ../../blobs/<sha256>, as huggingface_hub lays it out."""
    repo = tmp_path / "hub" / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for name in names:
        data = (source / name).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (blobs / sha).write_bytes(data)
        os.symlink(f"../../blobs/{sha}", snap / name)
    return snap


def test_hf_cache_snapshot_gates_like_the_real_folder(tmp_path: Path) -> None:
    snap = _hf_snapshot(tmp_path, GPTQ, ["model.safetensors", "config.json"])
    os.symlink(snap / "model.safetensors", snap / "weights-copy.safetensors")  # a second link to one blob
    code, report = _run(snap)
    ref_code, ref = _run(GPTQ)
    assert (code, ref_code) == (0, 0)
    assert report["verdict"] == ref["verdict"] == "PASS"
    assert [a["path"] for a in report["artifacts"]] == [_real(snap / "model.safetensors")]
    copy = _real(snap / "weights-copy.safetensors")
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [(copy, "duplicate")]
    # config.json (itself a link into blobs/) was read: same statuses, findings and metrics as the real folder
    for mine, theirs in zip(report["results"], ref["results"], strict=True):
        assert (mine["guard"], mine["gate_status"], mine["findings"], mine["metrics"]) == (
            theirs["guard"], theirs["gate_status"], theirs["findings"], theirs["metrics"]
        )


def test_hf_cache_repo_root_gates_the_snapshot_path_not_the_blob(tmp_path: Path) -> None:
    snap = _hf_snapshot(tmp_path, GPTQ, ["model.safetensors", "config.json"])
    repo = snap.parent.parent
    code, report = _run(repo)
    assert code == 0
    assert report["verdict"] == "PASS"
    assert [a["path"] for a in report["artifacts"]] == [_real(snap / "model.safetensors")]
    blob = hashlib.sha256((GPTQ / "model.safetensors").read_bytes()).hexdigest()
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [(_real(repo / "blobs" / blob), "duplicate")]
    assert [c for r in report["results"] for c in r["findings"]] == []


def test_hf_cache_snapshot_of_a_broken_model_fails(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(BAD_OFFSETS, src / "model.safetensors")
    snap = _hf_snapshot(tmp_path, src, ["model.safetensors"])
    code, report = _run(snap)
    assert code == 1
    assert _codes(report, "integrity") == [("ST_BAD_OFFSETS", "error")]


def test_unreadable_subfolder_makes_the_run_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quantgate
    from quantgate.report import text

    rel = _release(tmp_path)
    locked = rel / "locked"
    locked.mkdir()
    shutil.copy(BAD_OFFSETS, locked / "model.safetensors")
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:  # what chmod 000 does for a user other than root
        if os.path.realpath(path) == os.path.realpath(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.chdir(tmp_path)
    report = quantgate.run([str(rel)]).to_dict()
    assert report["verdict"] == "ERROR"
    assert report["exit_code"] == 2
    assert report["skipped"] == [
        {"path": "rel/locked", "reason": "unreadable_dir", "detail": "cannot list the folder: Permission denied"}
    ]
    assert [a["path"] for a in report["artifacts"]] == ["rel/model.safetensors"]
    shown = text.render(report)
    assert "  - rel/locked: unreadable_dir (cannot list the folder: Permission denied)\n" in shown
    assert shown.rstrip().splitlines()[-1].startswith("quantgate: ERROR")


def test_report_with_skipped_entries_matches_the_schema(tmp_path: Path) -> None:
    from quantgate.core.jsonschemas import validate

    rel = _release(tmp_path)
    os.mkfifo(rel / "pipe")
    os.symlink("nowhere", rel / "dangling")
    code, report = _run(rel)
    assert code == 0
    assert len(report["skipped"]) == 2
    assert validate(report, "report") == []


def test_config_json_linked_outside_the_folder_is_not_read(tmp_path: Path) -> None:
    rel, out = tmp_path / "rel", tmp_path / "out"
    rel.mkdir()
    out.mkdir()
    shutil.copy(CT_W8A8 / "model.safetensors", rel)
    shutil.copy(CT_W8A8 / "config.json", out)
    os.symlink(out / "config.json", rel / "config.json")
    code, report = _run(rel)
    assert code == 0
    assert _codes(report, "safetensors-dtypes") == [("SIBLING_NOT_READ", "warning")]
    assert _statuses(report)["safetensors-dtypes"] == "WARN"


def test_index_linked_outside_the_folder_is_not_read(tmp_path: Path) -> None:
    rel, out = tmp_path / "rel", tmp_path / "out"
    shutil.copytree(SHARDED, rel)
    out.mkdir()
    (rel / "model.safetensors.index.json").rename(out / "model.safetensors.index.json")
    os.symlink(out / "model.safetensors.index.json", rel / "model.safetensors.index.json")
    code, report = _run(rel)
    assert code == 0
    assert len(report["artifacts"]) == 4
    for artifact in report["artifacts"]:
        assert _codes(report, "integrity", artifact["path"]) == [("SIBLING_NOT_READ", "warning")]


def test_fifo_named_like_an_index_is_never_opened(tmp_path: Path) -> None:
    rel = tmp_path / "rel"
    shutil.copytree(SHARDED, rel)
    (rel / "model.safetensors.index.json").unlink()
    os.mkfifo(rel / "model.safetensors.index.json")
    code, report = _run(rel)
    assert code == 0
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [
        (_real(rel / "model.safetensors.index.json"), "fifo")
    ]
    for artifact in report["artifacts"]:
        assert _codes(report, "integrity", artifact["path"]) == [("SIBLING_NOT_READ", "warning")]


def test_skipped_file_names_are_inert_in_text_and_markdown(tmp_path: Path) -> None:
    from quantgate.report import markdown, text

    rel = _release(tmp_path)
    os.mkfifo(rel / "[x](https:evil)\x1b[31m.gguf")
    code, report = _run(rel)
    assert code == 0
    assert [s["reason"] for s in report["skipped"]] == ["fifo"]
    shown = text.render(report)
    assert "\x1b" not in shown
    assert "[x](https:evil)\\x1b[31m.gguf: fifo (not a regular file; never opened)" in shown
    md = markdown.render(report)
    assert "\x1b" not in md and "[x](https:evil)" not in md
    assert "### Not gated (1)" in md


def test_merged_shards_keep_what_was_not_gated_once(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    shutil.copy(CT_W8A8 / "model.safetensors", rel / "second.safetensors")
    os.mkfifo(rel / "pipe.gguf")
    paths = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}.json"
        proc = run_cli("run", str(rel), "--shard", f"{k}/2", "--output", f"json={out}", timeout=60)
        assert proc.returncode == 0, proc.stderr
        paths.append(str(out))
    code, merged = run_json("merge", "--format", "json", *paths)
    assert code == 0
    assert merged["verdict"] == "PASS"
    assert [(s["path"], s["reason"]) for s in merged["skipped"]] == [(_real(rel / "pipe.gguf"), "fifo")]
    # a folder one shard could not list makes the merged verdict an ERROR
    shard = json.loads(Path(paths[0]).read_text())
    shard["skipped"].append({"path": "rel/locked", "reason": "unreadable_dir", "detail": "cannot list the folder"})
    Path(paths[0]).write_text(json.dumps(shard))
    code, merged = run_json("merge", "--format", "json", *paths)
    assert code == 2
    assert merged["verdict"] == "ERROR"


def test_pytest_plugin_report_lists_what_was_not_gated(pytester: pytest.Pytester) -> None:

    rel = pytester.path / "rel"
    rel.mkdir()
    shutil.copy(VALID, rel / "model.safetensors")
    os.mkfifo(rel / "pipe.gguf")
    installed = any(ep.value == "quantgate.cli.pytest_plugin" for ep in entry_points(group="pytest11"))
    load = () if installed else ("-p", "quantgate.cli.pytest_plugin")
    result = pytester.runpytest_subprocess(
        *load, "-p", "no:cacheprovider", "--quantgate", "rel", "--quantgate-report", "qg.json", timeout=60
    )
    assert result.ret == 0
    report = json.loads((pytester.path / "qg.json").read_text())
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [("rel/pipe.gguf", "fifo")]


def test_github_log_lists_what_was_not_gated(tmp_path: Path) -> None:
    rel = _release(tmp_path)
    os.mkfifo(rel / "pipe.gguf")
    proc = run_cli("run", str(rel), "--format", "github", timeout=60)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    start = lines.index("::group::not gated (1)")
    assert lines[start + 1 : start + 3] == [
        f"{_real(rel / 'pipe.gguf')}: fifo (not a regular file; never opened)",
        "::endgroup::",
    ]


def test_guard_on_an_hf_snapshot_link_reads_the_config_beside_the_link(tmp_path: Path) -> None:
    snap = _hf_snapshot(tmp_path, GPTQ, ["model.safetensors", "config.json"])
    code, mine = run_json("guard", "safetensors-dtypes", str(snap / "model.safetensors"))
    ref_code, ref = run_json("guard", "safetensors-dtypes", str(GPTQ / "model.safetensors"))
    assert code == ref_code == 0
    assert mine["artifact"]["path"] == _real(snap / "model.safetensors")
    assert mine["findings"] == []
    assert (mine["status"], mine["findings"], mine["metrics"]) == (ref["status"], ref["findings"], ref["metrics"])


# what chmod 000 does to a folder for a user other than root (the suite runs as root in CI images)
_LOCKED_CONFTEST = """
import os

_real_scandir = os.scandir


def _scandir(path="."):
    if os.path.realpath(path).endswith(os.sep + os.path.join("rel", "locked")):
        raise PermissionError(13, "Permission denied", str(path))
    return _real_scandir(path)


os.scandir = _scandir
"""


def test_pytest_plugin_fails_on_a_folder_it_could_not_read(pytester: pytest.Pytester) -> None:
    rel = pytester.path / "rel"
    rel.mkdir()
    shutil.copy(VALID, rel / "model.safetensors")
    (rel / "locked").mkdir()
    shutil.copy(BAD_OFFSETS, rel / "locked" / "model.safetensors")
    pytester.makeconftest(_LOCKED_CONFTEST)
    installed = any(ep.value == "quantgate.cli.pytest_plugin" for ep in entry_points(group="pytest11"))
    load = () if installed else ("-p", "quantgate.cli.pytest_plugin")
    hostile = "r\x1b[31m\n::error::x##[error]y.json"
    result = pytester.runpytest_subprocess(
        *load, "-p", "no:cacheprovider", "--ignore=rel", "-rA",
        "--quantgate", "rel", "--quantgate-report", hostile, timeout=60,
    )
    # main: the model passes and nothing else is collected, so pytest exited 0 on an ERROR report
    assert result.ret == 1
    result.assert_outcomes(passed=3, skipped=1, errors=1)  # fidelity skips: no reference
    out = result.stdout.str()
    assert (
        "quantgate::discovery: 1 folder(s) could not be read, so their files were not gated: "
        "rel/locked: unreadable_dir (cannot list the folder: Permission denied)"
    ) in out
    report = json.loads((pytester.path / hostile).read_text())
    assert report["verdict"] == "ERROR"
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [("rel/locked", "unreadable_dir")]
    # the report's path, printed in the summary, comes out inert (quantgate.core.untrusted.plain)
    assert "\x1b" not in out and "##[" not in out and "\n::error::" not in out
    assert f"(report: {pytester.path}/r\\x1b[31m\\x0a::error::x#\\x23[error]y.json)" in out
