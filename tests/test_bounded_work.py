"""Bounded work whatever the metadata says (issue 13, item 3): a count, a nesting depth, an integer or a
product taken from a file never drives allocation, loops or bignum arithmetic beyond what the file holds,
and every JSON/TOML file quantgate reads fails as a finding or a usage error naming the file."""

from __future__ import annotations

import json
import resource
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURES, NEUTRAL_CWD, cli_env, run_cli, run_json
from quantgate.formats.gguf import reader as gguf
from quantgate.formats.sniff import sniff
from quantgate.guards import get_guard
from quantgate.guards.base import GuardConfig, GuardContext, run_guard

Q4_0 = FIXTURES / "gguf" / "model_q4_0.gguf"  # llama, block_count 2, blk.0 and blk.1, 21 tensors
BIG_INT = "9" * 5000
DEEP = "[" * 100_000 + "]" * 100_000


def with_block_count(tmp_path: Path, value: int) -> Path:
    """The fixture with `llama.block_count` (a UINT32 at a place found by parsing) set to `value`."""
    kv = gguf.parse(str(Q4_0)).kvs["llama.block_count"]
    pos = kv.offset + 8 + len(kv.key.encode()) + 4  # key length, key, value type, then the value
    data = bytearray(Q4_0.read_bytes())
    assert struct.unpack_from("<I", data, pos)[0] == 2
    struct.pack_into("<I", data, pos, value)
    out = tmp_path / f"block_count_{value}.gguf"
    out.write_bytes(bytes(data))
    return out


def gguf_dtypes(path: Path) -> dict[str, Any]:
    ctx = GuardContext(str(path), sniff(str(path)), path.stat().st_size)
    return run_guard(get_guard("gguf-dtypes"), ctx, GuardConfig(timeout_s=60.0)).to_dict()


def codes(result: dict[str, Any]) -> list[str]:
    return sorted(f["code"] for f in result["findings"])


def limited_cli(*args: str, limit_bytes: int = 1 << 30, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI under an address-space limit: a reader that sizes a list by metadata dies of MemoryError
    (exit 2) instead of taking the machine's memory."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "quantgate", *args],
        cwd=NEUTRAL_CWD,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


# ---------------------------------------------------------------------------------------------------
# GGUF: block_count and per-layer arrays


def test_gguf_fixture_block_count_agrees_and_estimate_is_exact() -> None:
    result = gguf_dtypes(Q4_0)
    assert result["status"] == "PASS"
    assert codes(result) == []
    # 2 blocks x 2 KV heads x (16 + 16) x ctx 2048 x 2 bytes (f16)
    assert result["metrics"]["memory"]["kv_cache_bytes"] == 524_288


def test_gguf_block_count_5e7_is_a_finding_without_a_5e7_element_list(tmp_path: Path) -> None:
    path = with_block_count(tmp_path, 50_000_000)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = gguf_dtypes(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 10
    assert peak < 20 << 20  # today's main built a 400 MB list of head counts
    assert result["status"] == "FAIL"
    assert codes(result) == ["GGUF_HPARAM_MISMATCH", "GGUF_MEMORY_ESTIMATE_PARTIAL"]
    mismatch = next(f for f in result["findings"] if f["code"] == "GGUF_HPARAM_MISMATCH")
    assert mismatch["message"].startswith("llama.block_count is 50,000,000 but the tensors hold blocks blk.0 to blk.1")
    assert mismatch["location"]["field"] == "llama.block_count"
    assert "kv_cache_bytes" not in result["metrics"]["memory"]


def test_gguf_block_count_1e9_finishes_fast_in_bounded_memory(tmp_path: Path) -> None:
    path = with_block_count(tmp_path, 1_000_000_000)
    started = time.perf_counter()
    proc = limited_cli("guard", "gguf-dtypes", str(path))
    assert time.perf_counter() - started < 20, "past the 20 s budget"
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert codes(result) == ["GGUF_HPARAM_MISMATCH", "GGUF_MEMORY_ESTIMATE_PARTIAL"]


def test_gguf_block_count_one_past_the_tensors_is_a_finding_and_the_estimate_stays(tmp_path: Path) -> None:
    result = gguf_dtypes(with_block_count(tmp_path, 3))
    assert codes(result) == ["GGUF_HPARAM_MISMATCH"]
    assert result["metrics"]["memory"]["kv_cache_bytes"] == 786_432  # 3 blocks of 262,144 bytes, by arithmetic


def _write_gguf(path: Path, block_count: int, head_count_kv: int | list[int], blocks: int) -> Path:
    gguf_py = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    writer = gguf_py.GGUFWriter(str(path), "llama")
    writer.add_block_count(block_count)
    writer.add_context_length(1024)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(head_count_kv)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float32))
    for b in range(blocks):
        writer.add_tensor(f"blk.{b}.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_per_layer_array_as_long_as_block_count_is_summed(tmp_path: Path) -> None:
    result = gguf_dtypes(_write_gguf(tmp_path / "ok.gguf", 3, [1, 2, 4], blocks=3))
    assert codes(result) == []
    # ctx 1024 x (1 + 2 + 4) KV heads x (16 + 16) x 2 bytes
    assert result["metrics"]["memory"]["kv_cache_bytes"] == 1024 * 7 * 32 * 2


def test_gguf_per_layer_array_of_the_wrong_length_is_a_finding(tmp_path: Path) -> None:
    result = gguf_dtypes(_write_gguf(tmp_path / "short.gguf", 3, [2, 2], blocks=3))
    mismatch = [f for f in result["findings"] if f["code"] == "GGUF_HPARAM_MISMATCH"]
    assert len(mismatch) == 1
    assert mismatch[0]["message"].startswith("llama.attention.head_count_kv holds 2 per-layer values but ")
    assert mismatch[0]["location"]["field"] == "llama.attention.head_count_kv"


def test_gguf_block_count_without_blk_tensors_is_a_finding(tmp_path: Path) -> None:
    result = gguf_dtypes(_write_gguf(tmp_path / "none.gguf", 4, 2, blocks=0))
    mismatch = [f for f in result["findings"] if f["code"] == "GGUF_HPARAM_MISMATCH"]
    assert [f["message"] for f in mismatch] == [
        "llama.block_count is 4 but no tensor is named blk.N; the block count is corrupt or the export dropped blocks"
    ]
    assert result["status"] == "FAIL"


# ---------------------------------------------------------------------------------------------------
# JSON read from files: manifests in a scanned folder, render and merge inputs


def test_jsonfile_loads_bounds_depth_integers_and_constants() -> None:
    from quantgate.core import jsonfile
    assert jsonfile.loads('{"a": "[[[[[[[[", "b": [[1]]}') == {"a": "[[[[[[[[", "b": [[1]]}
    assert jsonfile.loads("[" * 64 + "]" * 64) is not None
    for text, message in [
        ("[" * 65 + "]" * 65, "nests deeper than 64 levels"),
        (DEEP, "nests deeper than 64 levels"),
        ('{"n": ' + BIG_INT + "}", "an integer has more than 300 digits at line 1 column 7"),
        ('{"n": -' + "1" * 301 + "}", "an integer has more than 300 digits at line 1 column 7"),
        ('{"n": NaN}', "NaN is not a JSON number"),
        ("[1,", "not JSON: Expecting value at line 1 column 4"),
    ]:
        with pytest.raises(jsonfile.JSONFileError) as info:
            jsonfile.loads(text)
        assert str(info.value) == message
    assert jsonfile.loads('{"n": NaN}', allow_nan=True)["n"] != 0


def _release_with_manifest(tmp_path: Path, manifest_text: str) -> Path:
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(Q4_0, release / "model.gguf")
    (release / "manifest.json").write_text(manifest_text, encoding="utf-8")
    return release


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        (
            '{"manifest_version": 1, "model_id": "m", "artifacts": [], "n": ' + BIG_INT + "}",
            "MANIFEST_NOT_JSON",
            "an integer has more than 300 digits at line 1 column 64",
        ),
        (DEEP, "MANIFEST_TOO_DEEP", "the JSON nests too deeply to be a manifest (nests deeper than 64 levels)"),
        (
            '{"manifest_version": 1, "x": ' + "[" * 200 + "]" * 200 + "}",
            "MANIFEST_TOO_DEEP",
            "the JSON nests too deeply to be a manifest (nests deeper than 64 levels)",
        ),
    ],
    ids=["5000-digit-int", "100k-deep", "200-deep"],
)
def test_hostile_manifest_in_a_scanned_folder_is_reported(tmp_path: Path, text: str, code: str, message: str) -> None:
    release = _release_with_manifest(tmp_path, text)
    exit_code, report = run_json("run", str(release), "--format", "json", "--jobs", "1")
    assert exit_code == 1
    assert report["verdict"] == "FAIL"
    manifest = [r for r in report["results"] if r["guard"] == "manifest" and r["status"] != "SKIP"]
    assert len(manifest) == 1
    assert manifest[0]["artifact"]["path"].endswith("manifest.json")
    assert manifest[0]["status"] == "FAIL"
    assert [(f["code"], f["message"]) for f in manifest[0]["findings"]] == [(code, message)]


@pytest.mark.parametrize(
    "text", ['{"schema_version": ' + BIG_INT + "}", DEEP, '{"a": NaN}'], ids=["int", "deep", "nan"]
)
def test_render_input_too_big_or_deep_is_a_usage_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "saved-report.json"
    path.write_text(text, encoding="utf-8")
    proc = run_cli("render", str(path))
    assert proc.returncode == 4
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and str(path) in proc.stderr and "internal error" not in proc.stderr


@pytest.mark.parametrize("text", ['{"schema_version": ' + BIG_INT + "}", DEEP], ids=["int", "deep"])
def test_merge_input_too_big_or_deep_is_a_usage_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "shard1.json"
    path.write_text(text, encoding="utf-8")
    proc = run_cli("merge", str(path))
    assert proc.returncode == 4
    assert proc.stdout == ""
    assert f"cannot read report {path}: " in proc.stderr and "internal error" not in proc.stderr


# ---------------------------------------------------------------------------------------------------
# policy: TOML limits and a finite, positive timeout_s


def _policy(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "quantgate.toml"
    path.write_text("[quantgate]\nversion = 1\n" + body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("timeout_s = nan\n", "timeout_s (line 3): nan is not a number"),
        ("timeout_s = inf\n", "timeout_s (line 3): inf s is no time budget"),
        ("timeout_s = 1e300\n", "timeout_s (line 3): 1e+300 s is no time budget"),
        ("timeout_s = -1\n", "timeout_s (line 3): -1 is less than or equal to the minimum of 0"),
        ("timeout_s = 0\n", "timeout_s (line 3): 0 is less than or equal to the minimum of 0"),
        ("\n[guards.integrity]\ntimeout_s = nan\n", "guards.integrity.timeout_s (line 5): nan is not a number"),
        ("coverage_tolerance = nan\n", "coverage_tolerance (line 3): nan is not a number"),
        (
            "\n[guards.manifest]\nparams = { coverage_tolerance = nan }\n",
            "guards.manifest.params.coverage_tolerance (line 5): nan is not a number",
        ),
        ("x = " + BIG_INT + "\n", "not a usable policy: Exceeds the limit (4300 digits)"),
        ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "not a usable policy: arrays or tables nest too deeply"),
    ],
    ids=["nan", "inf", "1e300", "-1", "0", "guard-nan", "tolerance-nan", "param-nan", "big-int", "deep"],
)
def test_policy_numbers_must_be_usable(tmp_path: Path, body: str, needle: str) -> None:
    policy = _policy(tmp_path, body)
    proc = run_cli("run", str(Q4_0), "--policy", str(policy))
    assert proc.returncode == 4
    assert proc.stdout == ""
    assert str(policy) in proc.stderr and needle in proc.stderr, proc.stderr
    check = run_cli("check-policy", str(policy))
    assert check.returncode == 4
    assert needle in check.stdout + check.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_guard_timeout_flag_must_be_finite_and_positive(value: str) -> None:
    proc = run_cli("guard", "integrity", str(Q4_0), f"--timeout={value}")
    assert proc.returncode == 4
    assert "argument --timeout: expected a number of seconds in (0, 1e+06]" in proc.stderr


# ---------------------------------------------------------------------------------------------------
# ONNX: 60,000 dims of 2^62


def _onnx_with_huge_dims(path: Path, as_initializer: bool) -> Path:
    """MatMul(x, W): W with 60,000 dims of 2^62, or x with 59,999 dims of 2^61 (below the shape pass's
    per-dim cap) and a last dim of 4 that matches a sound W [4, 4]."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x_dims = [1, 4] if as_initializer else [1 << 61] * 59_999 + [4]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    # TensorProto directly: helper.make_tensor itself multiplies the dims out
    if as_initializer:
        w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1 << 62] * 60_000, raw_data=b"")
    else:
        w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4], raw_data=bytes(64))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_60k_dims_of_2_62_is_a_finding_in_bounded_time(tmp_path: Path) -> None:
    path = _onnx_with_huge_dims(tmp_path / "huge.onnx", as_initializer=True)
    started = time.perf_counter()
    exit_code, result = run_json("guard", "integrity", str(path))
    assert time.perf_counter() - started < 10  # today's main: 23 s of bignum products, then a crash
    assert exit_code == 1
    assert result["status"] == "FAIL"
    assert codes(result) == ["ONNX_TENSOR_TOO_LARGE"]
    message = result["findings"][0]["message"]
    assert message.startswith("tensor 'W' has 60,000 dims [4611686018427387904, ")
    assert "... 59,992 more]" in message and len(message) < 400


def test_onnx_60k_dims_on_an_input_shape_leave_flops_inexact_not_bignum(tmp_path: Path) -> None:
    path = _onnx_with_huge_dims(tmp_path / "huge_input.onnx", as_initializer=False)
    started = time.perf_counter()
    exit_code, result = run_json("guard", "onnx-dtypes", str(path), "--basis", "flops")
    assert time.perf_counter() - started < 10
    assert exit_code == 0, result
    assert result["status"] == "PASS"
    layers = result["layers"]
    assert [(layer["name"], layer["params"], layer["flops"]) for layer in layers] == [("W", 16, 32)]
    assert result["metrics"]["flops_exact"] is False  # the output shape is unknown, not a 3.6-million-bit count


# ---------------------------------------------------------------------------------------------------
# safetensors: a bitsandbytes quant_state's shape


def test_bnb_quant_state_with_thousands_of_dims_is_a_finding_not_a_bignum(tmp_path: Path) -> None:
    from quantgate.formats.safetensors import reader as st
    from test_safetensors_layouts import codes_of, layers_of, write_st

    state = json.dumps({"quant_type": "nf4", "blocksize": 64, "shape": [(1 << 40) - 1] * 4000}).encode()
    assert len(state) < 64 << 10  # read: under the quant_state size limit
    path = write_st(tmp_path / "m.safetensors", {
        "fc.weight": ("U8", [128, 1]),
        "fc.weight.absmax": ("F32", [4]),
        "fc.weight.quant_map": ("F32", [16]),
        "fc.weight.quant_state.bitsandbytes__nf4": ("U8", [len(state)]),
    }, blobs={"fc.weight.quant_state.bitsandbytes__nf4": state})
    assert codes_of(path) == [("ST_BNB_QUANT_STATE_INVALID", "fc.weight.quant_state.bitsandbytes__nf4")]
    (message,) = [f.message for f in st.read(str(path)).semantic_findings if f.code == "ST_BNB_QUANT_STATE_INVALID"]
    assert message.endswith(f"... ({len(repr([(1 << 40) - 1] * 4000)):,} characters)")
    # the logical shape falls back to the stored bytes (two codes a byte), never 4000 dims
    assert all(len(layer["shape"]) <= 2 for layer in layers_of(path).values())
