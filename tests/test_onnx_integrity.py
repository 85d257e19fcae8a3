"""Broken ONNX files -> their stable finding codes, through the real CLI; external-data link tricks
built at test time (git holds neither hard links nor, portably, symlinks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, run_json

BROKEN = FIXTURES / "onnx" / "broken"

# fixture -> (guard that fails, finding codes it must report)
STRUCTURAL = {
    "truncated.onnx": {"ONNX_LENGTH_PAST_END"},
    "not_a_model.onnx": {"ONNX_NO_GRAPH"},
    "no_opset.onnx": {"ONNX_NO_OPSET_IMPORT"},
    "raw_size_mismatch.onnx": {"ONNX_TENSOR_SIZE_MISMATCH"},
    "ext_dotdot/model/model.onnx": {"ONNX_EXTERNAL_PATH_TRAVERSAL", "ONNX_EXTERNAL_PATH_ESCAPES"},
    "ext_inner_dotdot/model.onnx": {"ONNX_EXTERNAL_PATH_TRAVERSAL"},
    "ext_absolute/model.onnx": {"ONNX_EXTERNAL_PATH_ABSOLUTE"},
    "ext_missing/model.onnx": {"ONNX_EXTERNAL_MISSING"},
    "ext_past_eof/model.onnx": {"ONNX_EXTERNAL_PAST_EOF"},
    "ext_length_mismatch/model.onnx": {"ONNX_EXTERNAL_LENGTH_MISMATCH"},
    "ext_negative_offset/model.onnx": {"ONNX_EXTERNAL_BAD_RANGE"},
    "ext_bad_length/model.onnx": {"ONNX_EXTERNAL_BAD_RANGE"},
}
SEMANTIC = {
    "matmulnbits_wrong_k.onnx": {"ONNX_MATMULNBITS_SHAPE_MISMATCH"},
    "dq_blocked_bad_scale.onnx": {"ONNX_DQ_SCALE_SHAPE_MISMATCH"},
    "nan_scale.onnx": {"ONNX_SCALE_NOT_FINITE"},
    "zp_dtype_mismatch.onnx": {"ONNX_DQ_ZERO_POINT_DTYPE_MISMATCH"},
}


def codes(result: dict) -> set[str]:
    return {f["code"] for f in result["findings"]}


@pytest.fixture(scope="module")
def broken_run() -> dict[tuple[str, str], dict]:
    """One `quantgate run` over the whole broken folder (one subprocess): results by (file, guard)."""
    code, report = run_json("run", str(BROKEN), "--format", "json", "--guards", "integrity,onnx-dtypes")
    assert code == 1 and report["verdict"] == "FAIL"
    assert report["summary"]["ERROR"] == 0
    out = {}
    for result in report["results"]:
        rel = Path(result["artifact"]["path"]).resolve().relative_to(BROKEN.resolve()).as_posix()
        out[(rel, result["guard"])] = result
    return out


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_structural_defect_fails_integrity(name: str, broken_run: dict) -> None:
    result = broken_run[(name, "integrity")]
    assert result["status"] == "FAIL"
    assert codes(result) == STRUCTURAL[name]
    assert all(f["severity"] == "error" for f in result["findings"])
    assert all("message" in f and f["location"] for f in result["findings"])
    # the coverage guard needs structure: it is blocked, never PASS
    result = broken_run[(name, "onnx-dtypes")]
    assert result["status"] == "SKIP" and result["skip"]["reason"] == "blocked_by:integrity"


@pytest.mark.parametrize("name", sorted(SEMANTIC))
def test_semantic_defect_fails_dtype_guard(name: str, broken_run: dict) -> None:
    assert broken_run[(name, "integrity")]["status"] == "PASS"  # well-formed protobuf, wrong quantization
    result = broken_run[(name, "onnx-dtypes")]
    assert result["status"] == "FAIL"
    assert codes(result) == SEMANTIC[name]


@pytest.mark.parametrize(
    ("name", "guard"), [("raw_size_mismatch.onnx", "integrity"), ("nan_scale.onnx", "onnx-dtypes")]
)
def test_single_guard_exit_code(name: str, guard: str) -> None:
    code, result = run_json("guard", guard, str(BROKEN / name))
    assert code == 1 and result["status"] == "FAIL"


def test_empty_file_is_a_finding() -> None:
    code, result = run_json("guard", "integrity", str(BROKEN / "empty.onnx"))
    assert code == 1 and codes(result) == {"FILE_EMPTY"}


def test_reader_on_empty_file_directly() -> None:
    from quantgate.formats.onnx import reader

    inv = reader.read(str(BROKEN / "empty.onnx"))
    assert [f.code for f in inv.structural_findings] == ["ONNX_EMPTY"]


def test_truncated_finding_has_offset_and_hint() -> None:
    _code, result = run_json("guard", "integrity", str(BROKEN / "truncated.onnx"))
    finding = result["findings"][0]
    assert finding["location"]["offset"] == 22  # the graph field's tag
    assert "truncated" in finding["message"]


def test_valid_external_baseline_passes() -> None:
    code, result = run_json("guard", "integrity", str(BROKEN / "ext_ok" / "model.onnx"))
    assert code == 0 and result["findings"] == []


def _copy_ok(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(BROKEN / "ext_ok", folder)
    return folder


def test_symlinked_external_file(tmp_path: Path) -> None:
    folder = _copy_ok(tmp_path)
    real = folder / "real.bin"
    (folder / "weights.bin").rename(real)
    os.symlink(real, folder / "weights.bin")
    code, result = run_json("guard", "integrity", str(folder / "model.onnx"))
    assert code == 1 and codes(result) == {"ONNX_EXTERNAL_SYMLINK"}


def _relocate(folder: Path, location: str) -> None:
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    next(e for e in model.graph.initializer[0].external_data if e.key == "location").value = location
    (folder / "model.onnx").write_bytes(model.SerializeToString())


def test_symlinked_parent_folder(tmp_path: Path) -> None:
    """CVE-2026-27489: the file is regular, but a folder on its path is a symbolic link."""
    folder = _copy_ok(tmp_path)
    (folder / "data").mkdir()
    shutil.move(folder / "weights.bin", folder / "data" / "weights.bin")
    os.symlink(folder / "data", folder / "linkdir")
    _relocate(folder, "data/weights.bin")
    code, result = run_json("guard", "integrity", str(folder / "model.onnx"))
    assert code == 0, result
    _relocate(folder, "linkdir/weights.bin")
    code, result = run_json("guard", "integrity", str(folder / "model.onnx"))
    assert code == 1 and codes(result) == {"ONNX_EXTERNAL_SYMLINK"}


def test_symlink_pointing_outside(tmp_path: Path) -> None:
    folder = _copy_ok(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(256))
    (folder / "weights.bin").unlink()
    os.symlink(secret, folder / "weights.bin")
    code, result = run_json("guard", "integrity", str(folder / "model.onnx"))
    assert code == 1 and codes(result) == {"ONNX_EXTERNAL_PATH_ESCAPES"}


def test_hard_linked_external_file(tmp_path: Path) -> None:
    """CVE-2026-34446: onnxruntime 1.32 still reads through a hard link to a file elsewhere."""
    folder = _copy_ok(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(256))
    (folder / "weights.bin").unlink()
    os.link(secret, folder / "weights.bin")
    code, result = run_json("guard", "integrity", str(folder / "model.onnx"))
    assert code == 1 and codes(result) == {"ONNX_EXTERNAL_HARDLINK"}


def test_external_data_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges are checked from lstat alone: opening the data file would raise here."""
    import builtins

    from quantgate.formats.onnx import reader

    folder = _copy_ok(tmp_path)
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert not str(file).endswith("weights.bin"), "the reader opened the external data"
        return real_open(file, *args, **kwargs)

    def guarded_os_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert not str(file).endswith("weights.bin"), "the reader opened the external data"
        return real_os_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    inv = reader.read(str(folder / "model.onnx"))
    assert inv.structural_findings == []
    assert [x.name for x in inv.layers] == ["w"]


def test_overlapping_external_ranges_warn(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    folder = tmp_path / "m"
    folder.mkdir()
    model = onnx.load(str(FIXTURES / "onnx" / "external" / "model.onnx"), load_external_data=False)
    shutil.copy(FIXTURES / "onnx" / "external" / "model.onnx.data", folder / "model.onnx.data")
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    first, second = external[0], external[1]
    offset = next(e for e in first.external_data if e.key == "offset").value
    next(e for e in second.external_data if e.key == "offset").value = offset
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    _code, result = run_json("guard", "integrity", str(folder / "model.onnx"))
    assert "ONNX_EXTERNAL_OVERLAP" in codes(result)
    assert result["status"] in ("WARN", "FAIL")  # FAIL when the two tensors' sizes also differ
