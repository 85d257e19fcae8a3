"""GGUF corruption matrix through the real CLI: every broken fixture FAILs `integrity` with its codes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import FIXTURES, run_cli, run_json
from quantgate.formats.gguf import reader as gguf

GGUF = FIXTURES / "gguf"
BROKEN = GGUF / "broken"

# every structural finding each broken file yields, in order (GGUF_ prefix left off)
EXPECTED: dict[str, list[str]] = {
    "alignment_0": ["ALIGNMENT_INVALID"],
    "alignment_2p24": ["ALIGNMENT_TOO_LARGE"],
    "alignment_48": ["ALIGNMENT_INVALID"],
    "alignment_64_laid_out_32": ["TRUNCATED"],
    "alignment_u64": ["ALIGNMENT_BAD_TYPE"],
    "big_endian_version": ["BYTE_SWAPPED"],
    "dim_zero": ["BAD_DIM"],
    "dims_huge_for_file": ["TENSOR_OVERLAP", "TENSOR_OVERLAP", "TENSOR_PAST_EOF"],
    "dims_overflow": ["ELEMENT_COUNT_OVERFLOW"],
    "duplicate_key": ["DUPLICATE_KEY"],
    "duplicate_tensor_name": ["DUPLICATE_TENSOR_NAME"],
    "empty_key": ["EMPTY_KEY"],
    "huge_u8_array_128b": ["LENGTH_PAST_EOF"],
    "key_not_utf8": ["KEY_NOT_UTF8"],
    "kv_count_2p40": ["COUNT_TOO_LARGE"],
    "kv_string_len_2p62": ["LENGTH_PAST_EOF"],
    "kv_type_13": ["BAD_VALUE_TYPE"],
    "kv_value_len_2p62": ["LENGTH_PAST_EOF"],
    "n_dims_0": ["BAD_N_DIMS"],
    "n_dims_2p31": ["BAD_N_DIMS", "LENGTH_PAST_EOF"],
    "n_dims_5": ["BAD_N_DIMS"],
    "nested_array_depth_2000": ["NESTED_ARRAY", "ARRAY_TOO_DEEP"],
    "nested_array_shallow": ["NESTED_ARRAY"],
    "row_48_not_block_multiple": ["ROW_NOT_BLOCK_MULTIPLE"],
    "string_array_len_2p62": ["LENGTH_PAST_EOF"],
    "tail_padding_missing": ["TAIL_PADDING_MISSING"],
    "tensor_count_2p40": ["COUNT_TOO_LARGE"],
    "tensor_count_plus_1": ["TENSOR_NAME_EMPTY", "BAD_N_DIMS"],
    "tensor_gap": ["TENSOR_GAP"],
    "tensor_misaligned": ["TENSOR_MISALIGNED", "TENSOR_PAST_EOF"],
    "tensor_name_100": ["TENSOR_NAME_TOO_LONG"],
    "tensor_name_not_utf8": ["TENSOR_NAME_NOT_UTF8"],
    "tensor_offset_1e9": ["TENSOR_GAP", "TENSOR_PAST_EOF"],
    "tensor_offset_2p63": ["TENSOR_GAP", "TENSOR_PAST_EOF"],
    "tensor_out_of_order": ["TENSOR_OUT_OF_ORDER"],
    "tensor_overlap": ["TENSOR_OUT_OF_ORDER", "TENSOR_OVERLAP", "TENSOR_OVERLAP", "TRAILING_BYTES"],
    "trailing_4k": ["TRAILING_BYTES"],
    "trunc_6_bytes": ["TRUNCATED_HEADER"],
    "trunc_at_data_start": ["TRUNCATED"],
    "trunc_early_kv": ["COUNT_TOO_LARGE"],
    "trunc_last_1": ["TRUNCATED"],
    "trunc_last_100": ["TRUNCATED"],
    "trunc_mid_counts": ["TRUNCATED_HEADER"],
    "trunc_mid_data": ["TRUNCATED"],
    "trunc_mid_kv": ["LENGTH_PAST_EOF"],
    "trunc_mid_tensor_info": ["LENGTH_PAST_EOF"],
    "type_99": ["UNKNOWN_TYPE"],
    "type_q8_0_over_q4_0": ["TENSOR_OVERLAP", "TENSOR_OVERLAP"],
    "type_removed_4": ["REMOVED_TYPE"],
    "version_0": ["VERSION_UNSUPPORTED"],
    "version_1": ["VERSION_UNSUPPORTED"],
    "version_4": ["VERSION_UNSUPPORTED"],
}
# structural warnings only: integrity WARNs (exit 0) and the dtype guard still runs
WARN_ONLY = {"nested_array_shallow", "tail_padding_missing"}
# bytes missing, and the first tensor cut
MISSING_BYTES = {
    "trunc_at_data_start": (11_264, "blk.0.attn_q.weight"),
    "trunc_mid_data": (5_632, "blk.0.ffn_down.weight"),
    "trunc_last_100": (100, "blk.0.ffn_down.weight"),
    "trunc_last_1": (1, "blk.0.ffn_down.weight"),
    "alignment_64_laid_out_32": (32, "blk.0.ffn_down.weight"),
}
# per-file `quantgate guard integrity` runs (a subprocess each; the whole matrix goes through `run` above)
CLI_SAMPLE = [
    "trunc_mid_counts",
    "trunc_last_1",
    "trailing_4k",
    "version_1",
    "big_endian_version",
    "huge_u8_array_128b",
    "nested_array_depth_2000",
    "duplicate_key",
    "alignment_48",
    "tensor_overlap",
    "tensor_out_of_order",
    "type_removed_4",
    "dims_overflow",
    "tensor_name_100",
]


def test_every_broken_fixture_is_listed() -> None:
    on_disk = {p.stem for p in BROKEN.glob("*.gguf")}
    assert on_disk == set(EXPECTED)


@pytest.fixture(scope="module")
def gate_report() -> dict:
    """One `quantgate run` over the whole matrix: both GGUF guards on every file."""
    # cwd = the fixture folder, so that no repository policy (./quantgate.toml) changes the verdicts
    proc = run_cli(
        "-q", "run", str(BROKEN), "--guards", "integrity,gguf-dtypes", "--format", "json", cwd=BROKEN
    )
    assert proc.returncode == 1, proc.stderr
    return json.loads(proc.stdout)


def _results(report: dict, stem: str) -> dict[str, dict]:
    return {r["guard"]: r for r in report["results"] if Path(r["artifact"]["path"]).stem == stem}


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_matrix_codes_via_run(gate_report: dict, stem: str) -> None:
    results = _results(gate_report, stem)
    integrity, dtypes = results["integrity"], results["gguf-dtypes"]
    codes = [f["code"] for f in integrity["findings"]]
    assert codes == ["GGUF_" + c for c in EXPECTED[stem]]
    for finding in integrity["findings"]:
        assert finding["message"] and "\n" not in finding["message"]
        assert finding["location"], f"{finding['code']} has no location"
    if stem in WARN_ONLY:
        assert integrity["status"] == "WARN"
        assert dtypes["status"] in ("PASS", "WARN")
    else:
        assert integrity["status"] == "FAIL"
        assert dtypes["status"] == "SKIP"
        assert dtypes["skip"]["reason"] == "blocked_by:integrity"


@pytest.mark.parametrize("stem", CLI_SAMPLE)
def test_guard_integrity_exit_1(stem: str) -> None:
    code, result = run_json("guard", "integrity", str(BROKEN / f"{stem}.gguf"))
    assert code == 1
    assert result["status"] == "FAIL"
    assert [f["code"] for f in result["findings"]] == ["GGUF_" + c for c in EXPECTED[stem]]
    first_error = next(f for f in result["findings"] if f["severity"] == "error")
    assert result["message"].startswith(first_error["code"] + ": ")


@pytest.mark.parametrize(
    "stem", ["tensor_overlap", "trunc_last_1", "huge_u8_array_128b", "type_99", "n_dims_5"]
)
def test_guard_gguf_dtypes_blocked(stem: str) -> None:
    code, result = run_json("guard", "gguf-dtypes", str(BROKEN / f"{stem}.gguf"))
    assert code == 0
    assert result["status"] == "SKIP"
    assert result["skip"]["reason"] == "blocked_by:integrity"


@pytest.mark.parametrize("stem", sorted(MISSING_BYTES))
def test_truncation_says_how_many_bytes_are_missing(gate_report: dict, stem: str) -> None:
    finding = _results(gate_report, stem)["integrity"]["findings"][0]
    assert finding["code"] == "GGUF_TRUNCATED"
    missing, tensor = MISSING_BYTES[stem]
    assert f"{missing:,} bytes missing" in finding["message"]
    assert finding["location"] == {"offset": (BROKEN / f"{stem}.gguf").stat().st_size, "tensor": tensor}


def test_locations_name_the_tensor_and_offset(gate_report: dict) -> None:
    overlap = _results(gate_report, "type_q8_0_over_q4_0")["integrity"]["findings"][0]
    assert overlap["location"] == {"offset": 544 + 2304, "tensor": "blk.0.attn_norm.weight"}
    assert "Q8_0" in overlap["message"]
    misaligned = _results(gate_report, "tensor_misaligned")["integrity"]["findings"][0]
    assert misaligned["location"] == {"offset": 544 + 2561, "tensor": "blk.0.ffn_down.weight"}
    dup = _results(gate_report, "duplicate_key")["integrity"]["findings"][0]
    assert dup["location"]["field"] == "general.architecture"
    trailing = _results(gate_report, "trailing_4k")["integrity"]["findings"][0]
    assert trailing["location"] == {"offset": 11_808}
    assert "4,096 bytes" in trailing["message"]


def test_valid_fixtures_pass_integrity() -> None:
    for name in ("base", "model_q8_0", "model_q4_0", "model_f16", "model_mixed", "model_q4_0_one_f16"):
        code, result = run_json("guard", "integrity", str(GGUF / f"{name}.gguf"))
        assert (code, result["status"], result["findings"]) == (0, "PASS", []), name
        assert result["message"].startswith("gguf structure sound: GGUF v3")


# ---- findings crafted in the test from the committed base file (no gguf-py needed) -------------------


def _patch_kv(
    blob: bytes,
    key: bytes,
    vtype: int | None = None,
    value: bytes | None = None,
    new_key: bytes | None = None,
) -> bytes:
    """Change one key/value of base.gguf in place (same sizes): its key bytes, type or 4-byte value."""
    at = blob.index(struct.pack("<Q", len(key)) + key)
    out = bytearray(blob)
    key_end = at + 8 + len(key)
    if new_key is not None:
        assert len(new_key) == len(key)
        out[at + 8 : key_end] = new_key
    if vtype is not None:
        out[key_end : key_end + 4] = struct.pack("<I", vtype)
    if value is not None:
        out[key_end + 4 : key_end + 4 + len(value)] = value
    return bytes(out)


@pytest.mark.parametrize(
    ("label", "edit", "code", "severity"),
    [
        (
            "file_type_q4_0_over_q8_0",
            dict(key=b"general.file_type", value=struct.pack("<I", 2)),
            "GGUF_FILE_TYPE_WIDER_TYPES",
            "warning",
        ),
        (
            "file_type_99",
            dict(key=b"general.file_type", value=struct.pack("<I", 99)),
            "GGUF_FILE_TYPE_UNKNOWN",
            "warning",
        ),
        (
            "file_type_removed",
            dict(key=b"general.file_type", value=struct.pack("<I", 34)),
            "GGUF_FILE_TYPE_UNKNOWN",
            "warning",
        ),
        (
            "quant_version_f32",
            dict(key=b"general.quantization_version", vtype=6),
            "GGUF_KV_BAD_TYPE",
            "warning",
        ),
        (
            "no_architecture",
            dict(key=b"general.architecture", new_key=b"general.architecturX"),
            "GGUF_ARCHITECTURE_MISSING",
            "warning",
        ),
    ],
)
def test_semantic_findings_from_patched_base(
    tmp_path: Path, label: str, edit: dict, code: str, severity: str
) -> None:
    path = tmp_path / f"{label}.gguf"
    path.write_bytes(_patch_kv((GGUF / "base.gguf").read_bytes(), **edit))
    assert run_json("guard", "integrity", str(path))[1]["status"] == "PASS"
    exit_code, result = run_json("guard", "gguf-dtypes", str(path))
    assert [(f["code"], f["severity"]) for f in result["findings"] if f["severity"] != "info"] == [
        (code, severity)
    ]
    assert result["status"] == "WARN" and exit_code == 0


def test_key_too_long_and_bad_magic(tmp_path: Path) -> None:
    key = b"k" * 70_000
    blob = (
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<IB", 0, 7)
    )
    long_key = tmp_path / "long_key.gguf"
    long_key.write_bytes(blob + b"\0" * (-len(blob) % 32))
    code, result = run_json("guard", "integrity", str(long_key))
    assert code == 1 and [f["code"] for f in result["findings"]] == ["GGUF_KEY_TOO_LONG"]

    bad = tmp_path / "bad_magic.gguf"
    bad.write_bytes(b"GGUX" + (GGUF / "base.gguf").read_bytes()[4:])
    assert [f.code for f in gguf.read(str(bad)).structural_findings] == ["GGUF_BAD_MAGIC"]
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert [f.code for f in gguf.read(str(empty)).structural_findings] == ["GGUF_BAD_MAGIC"]
