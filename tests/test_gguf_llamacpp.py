"""GGUF on what llama.cpp really writes (issue 14): its quantizer's file_type recipes, sliding-window
KV caches, general.* key types and split models.

fixtures/gguf/llamacpp/ is made by llama.cpp's own `llama_model_quantize` (make_llamacpp_corpus.py);
fixtures/gguf/swa/ by gguf-py's writer with the Gemma 3 / Gemma 4 SWA keys (make_swa_fixtures.py).
Altered files are gguf-py rewrites of a corpus file, changed in one named respect (gguf_rewrite.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, run_json
from quantgate.formats.gguf import reader as gguf
from quantgate.formats.gguf import types as T
from quantgate.guards.gguf_dtypes import kv_cache_bytes, swa_cache_cells, swa_layout

CORPUS = FIXTURES / "gguf" / "llamacpp"
SWA = FIXTURES / "gguf" / "swa"
CORPUS_FILES = sorted(p.name for p in CORPUS.glob("*.gguf"))


def rewrite(src: Path, dst: Path, **changes: object) -> list[Path]:
    """gguf_rewrite.rewrite, which needs gguf-py (a dev dependency): skip without it."""
    pytest.importorskip("gguf")
    from gguf_rewrite import rewrite as rewrite_with_gguf_py

    return rewrite_with_gguf_py(src, dst, **changes)  # type: ignore[arg-type]


def dtypes(path: Path, *args: str) -> tuple[int, dict]:
    return run_json("guard", "gguf-dtypes", str(path), *args)


def codes(r: dict) -> list[tuple[str, str]]:
    return [(f["code"], f["severity"]) for f in r["findings"]]


# ---- file_type recipes: llama.cpp's own quantizer ----------------------------------------------------


def test_corpus_is_complete() -> None:
    # 13 file types for the tied model, 6 for the untied one (make_llamacpp_corpus.py)
    assert len(CORPUS_FILES) == 19
    assert {"tied_q4_0.gguf", "tied_q4_1.gguf", "tied_q5_0.gguf", "tied_iq4_nl.gguf"} <= set(CORPUS_FILES)


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_llamacpp_quantizer_output_passes(name: str) -> None:
    """Every mix llama.cpp's quantizer writes is what its file_type says: no finding at all."""
    code, r = dtypes(CORPUS / name)
    assert (code, r["status"], r["findings"]) == (0, "PASS", [])
    ftype = name.split("_", 1)[1].removesuffix(".gguf").upper()
    assert r["metrics"]["file_type"] == ftype


@pytest.mark.parametrize("name", ["tied_q4_0", "tied_q4_1", "tied_q5_0", "tied_q5_1"])
def test_tied_embeddings_promoted_by_the_recipe_are_not_wider_types(name: str) -> None:
    # llama.cpp stored the tied token table (1792 x 256 = 458,752 of 851,968 weights) as Q6_K;
    # main warned GGUF_FILE_TYPE_WIDER_TYPES here
    layers = {layer.name: layer.dtype for layer in gguf.read(str(CORPUS / f"{name}.gguf")).layers}
    assert layers["token_embd.weight"] == "Q6_K" and "output.weight" not in layers
    code, r = dtypes(CORPUS / f"{name}.gguf")
    assert (code, r["status"], codes(r)) == (0, "PASS", [])


def test_weights_promoted_beyond_the_recipe_still_warn(tmp_path: Path) -> None:
    # 4 of the 7 block weights (262,144 of 393,216 parameters) promoted to Q8_0 by hand
    promoted = {f"blk.0.{n}.weight": "Q8_0" for n in ("ffn_gate", "ffn_up", "ffn_down", "attn_output")}
    (path,) = rewrite(CORPUS / "tied_q4_0.gguf", tmp_path / "promoted.gguf", tensor_types=promoted)
    code, r = dtypes(path)
    assert (code, r["status"], codes(r)) == (0, "WARN", [("GGUF_FILE_TYPE_WIDER_TYPES", "warning")])
    assert "(67%) are Q8_0" in r["findings"][0]["message"]
    assert "token_embd.weight, which the recipe promotes" in r["findings"][0]["message"]


def test_tied_embedding_wider_than_the_recipe_warns(tmp_path: Path) -> None:
    # the recipe gives the tied table Q6_K; Q8_0 is a departure, and it is most of the weights
    (path,) = rewrite(CORPUS / "tied_q4_0.gguf", tmp_path / "q8_embd.gguf", tensor_types={"token_embd.weight": "Q8_0"})
    code, r = dtypes(path)
    assert (code, r["status"], codes(r)) == (0, "WARN", [("GGUF_FILE_TYPE_WIDER_TYPES", "warning")])
    assert "(54%) are Q8_0" in r["findings"][0]["message"]


def test_rewrite_is_byte_identical() -> None:
    """gguf_rewrite.rewrite with no change gives back llama.cpp's file byte for byte, so every altered
    file in these tests differs from the real export only in what the test changes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (copy,) = rewrite(CORPUS / "untied_q4_k_m.gguf", Path(tmp) / "copy.gguf")
        assert copy.read_bytes() == (CORPUS / "untied_q4_k_m.gguf").read_bytes()


@pytest.mark.parametrize(
    ("file_type", "ncols", "arch", "expected"),
    [
        (2, 256, "llama", "Q6_K"),  # Q4_0: output -> Q6_K
        (8, 512, "llama", "Q6_K"),  # Q5_0
        (2, 288, "llama", "Q8_0"),  # a row of 288 fits Q4_0's 32 but not Q6_K's 256: fallback Q8_0
        (2, 100, "llama", "F16"),  # fits no block: F16
        (7, 256, "llama", "Q8_0"),  # Q8_0 stays Q8_0
        (2, 256, "falcon", "Q8_0"),
        (15, 256, "llama", None),  # a k-quant mix: not a single-type recipe
    ],
)
def test_recipe_output_type(file_type: int, ncols: int, arch: str, expected: str | None) -> None:
    assert T.recipe_output_type(file_type, ncols, arch) == expected


# ---- sliding-window attention in the KV estimate -------------------------------------------------------
# Each number below is also what llama.cpp itself allocates for these hparams (checked with the
# llama.cpp vendored by llama-cpp-python 0.3.36 on loadable twins of these files, llama-cli's default
# swa_full = false, n_ubatch 512: its llama_kv_cache log reads 2.00 + 2.50 MiB for gemma3 at 4096,
# 16.00 + 2.50 MiB at 32768, 4.00 + 5.00 MiB for gemma4, 8.00 + 2.00 MiB with 2 shared KV layers).


def test_gemma3_swa_kv_estimate() -> None:
    # gemma3, 6 blocks, built-in pattern 6: blocks 0-4 slide, block 5 is full; 1 KV head, k = v = 128;
    # sliding_window 512; ctx = min(32768, 4096) = 4096; SWA cells = pad256(min(4096, 512 + 512)) = 1024
    full = 1 * (128 + 128) * 4096  # block 5
    sliding = 5 * 1 * (128 + 128) * 1024  # blocks 0-4
    code, r = dtypes(SWA / "gemma3_swa.gguf")
    m = r["metrics"]["memory"]
    assert (code, r["status"]) == (0, "PASS")
    assert m["kv_cache_bytes"] == (full + sliding) * 2 == 4_718_592  # f16
    assert (m["swa_window"], m["swa_layers"], m["swa_cells"]) == (512, 5, 1024)
    assert m["total_bytes"] == m["weights_bytes"] + 4_718_592


def test_gemma3_swa_bound_at_long_context() -> None:
    # at ctx 32768 main counted 6 x 256 x 32768 x 2 = 100,663,296 bytes (5.2x) and this bound failed
    full = 1 * 256 * 32768
    sliding = 5 * 1 * 256 * 1024
    code, r = dtypes(
        SWA / "gemma3_swa.gguf", "--param", "ctx=32768", "--require", "memory.kv_cache_bytes<=20000000"
    )
    assert (code, r["status"]) == (0, "PASS")
    assert r["metrics"]["memory"]["kv_cache_bytes"] == (full + sliding) * 2 == 19_398_656


def test_gemma3_swa_n_ubatch_param() -> None:
    # n_ubatch 2048: SWA cells = pad256(min(4096, 512 + 2048)) = 2560
    _, r = dtypes(SWA / "gemma3_swa.gguf", "--param", "n_ubatch=2048")
    assert r["metrics"]["memory"]["swa_cells"] == 2560
    assert r["metrics"]["memory"]["kv_cache_bytes"] == (256 * 4096 + 5 * 256 * 2560) * 2


def test_gemma4_swa_kv_estimate() -> None:
    # gemma4: pattern array [1,1,1,1,1,0], head_count_kv [2,2,2,2,2,1], full k = v = 256, key_length_swa
    # = value_length_swa = 128, sliding_window 512, ctx 4096 -> SWA cells 1024
    sliding = 5 * 2 * (128 + 128) * 1024
    full = 1 * (256 + 256) * 4096
    code, r = dtypes(SWA / "gemma4_swa.gguf")
    assert (code, r["status"], r["findings"]) == (0, "PASS", [])
    assert r["metrics"]["memory"]["kv_cache_bytes"] == (sliding + full) * 2 == 9_437_184


def test_gemma4_shared_kv_layers_hold_no_cache() -> None:
    # gemma4 with attention.shared_kv_layers 2: blocks 4 and 5 reuse the caches of blocks 2 and 3.
    # pattern [1,0,1,0,1,0], head_count_kv [2,1,2,1,2,1]: blocks 0 and 2 slide (2 heads of 128 + 128,
    # 1024 cells), blocks 1 and 3 are full (1 head of 256 + 256, 4096 cells)
    sliding = 2 * 2 * (128 + 128) * 1024
    full = 2 * 1 * (256 + 256) * 4096
    code, r = dtypes(SWA / "gemma4_shared_kv.gguf")
    m = r["metrics"]["memory"]
    assert (code, r["status"], r["findings"]) == (0, "PASS", [])
    assert m["kv_cache_bytes"] == (sliding + full) * 2 == 10_485_760
    assert (m["kv_shared_layers"], m["swa_layers"]) == (2, 3)


def test_swa_layouts_of_other_architectures() -> None:
    hp = {"block_count": 8, "head_count": 4, "head_count_kv": 1, "key_length": 64, "value_length": 64}
    # llama4: chunked attention, 8192-token chunks even without the key; every 4th layer full
    assert swa_layout(hp, "llama4", 8) == (8192, [True, True, True, False] * 2)
    assert swa_layout({**hp, "sliding_window": 0}, "llama4", 8) is None
    # cohere2: pattern 4, dense layer last; cohere2moe: dense layer first
    assert swa_layout({**hp, "sliding_window": 4096}, "cohere2", 8) == (4096, [True, True, True, False] * 2)
    assert swa_layout({**hp, "sliding_window": 4096}, "cohere2moe", 8) == (4096, [False, True, True, True] * 2)
    # gemma2: every other layer; an explicit number overrides the built-in pattern
    assert swa_layout({**hp, "sliding_window": 4096}, "gemma2", 4) == (4096, [True, False, True, False])
    assert swa_layout({**hp, "sliding_window": 4096, "sliding_window_pattern": 4}, "gemma2", 4) == (
        4096,
        [True, True, True, False],
    )
    # no window, or an architecture llama.cpp gives no SWA cache: full attention (never an underestimate)
    assert swa_layout(hp, "gemma3", 8) is None
    assert swa_layout({**hp, "sliding_window": 4096}, "llama", 8) is None
    # gemma3n: the layers from 20 on reuse earlier caches (25 blocks, pattern 5, window 512, ctx 4096):
    # blocks 0-19 own a cache, 4 of each 5 sliding (16 x 1024 cells), 4 full (4096 cells)
    g3n = {**hp, "block_count": 25, "sliding_window": 512}
    assert kv_cache_bytes(g3n, 4096, (2, 1), 1000, "gemma3n") == ((16 * 1024 + 4 * 4096) * 128 * 2, "")
    # llama4 at ctx 16384: 6 chunked layers hold pad256(min(16384, 8192 + 512)) = 8704 cells
    assert swa_cache_cells(16384, 8192) == 8704
    assert kv_cache_bytes(hp, 16384, (2, 1), 100, "llama4") == (
        (2 * 128 * 16384 + 6 * 128 * 8704) * 2,
        "",
    )


# ---- general.* key types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "vtype", "finding", "status", "exit_code"),
    [
        ("general.name", 7, "UINT32", ("GGUF_GENERAL_KEY_BAD_TYPE", "error"), "FAIL", 1),
        ("general.file_type", 2, "INT32", ("GGUF_GENERAL_KEY_BAD_TYPE", "error"), "FAIL", 1),
        ("general.type", 1, "UINT8", ("GGUF_GENERAL_KEY_BAD_TYPE", "error"), "FAIL", 1),
        ("general.tags", "llm", "STRING", ("GGUF_GENERAL_KEY_BAD_TYPE", "warning"), "WARN", 0),
        ("general.license", 3.5, "FLOAT32", ("GGUF_GENERAL_KEY_BAD_TYPE", "warning"), "WARN", 0),
        ("general.base_model.0.name", 1, "UINT32", ("GGUF_GENERAL_KEY_BAD_TYPE", "warning"), "WARN", 0),
        ("general.architecture", 1, "UINT32", ("GGUF_ARCHITECTURE_NOT_STRING", "error"), "FAIL", 1),
    ],
)
def test_general_key_with_the_wrong_type(
    tmp_path: Path, key: str, value: object, vtype: str, finding: tuple[str, str], status: str, exit_code: int
) -> None:
    (path,) = rewrite(CORPUS / "untied_q4_0.gguf", tmp_path / "bad.gguf", kv={key: (value, vtype)})
    code, r = dtypes(path)
    # without an architecture the <arch>.* hparams cannot be found: no KV estimate either
    partial = [("GGUF_MEMORY_ESTIMATE_PARTIAL", "info")] if key == "general.architecture" else []
    assert (code, r["status"], codes(r)) == (exit_code, status, [finding, *partial])
    assert r["findings"][0]["location"]["field"] == key


def test_general_keys_of_the_right_type_pass(tmp_path: Path) -> None:
    kv = {
        "general.tags": (["llm", "tiny"], "ARRAY"),
        "general.base_model.count": (1, "UINT32"),
        "general.base_model.0.name": ("base", "STRING"),
        "general.type": ("model", "STRING"),
    }
    (path,) = rewrite(CORPUS / "untied_q4_0.gguf", tmp_path / "good.gguf", kv=kv)
    code, r = dtypes(path)
    assert (code, r["status"], r["findings"]) == (0, "PASS", [])


# ---- split models ----------------------------------------------------------------------------------------


def split_set(tmp_path: Path, source: str = "untied_q4_k_m") -> list[Path]:
    """The corpus file split by gguf-py into 3 shards of at most 5 tensors (12 tensors: 5, 5, 2)."""
    shards = rewrite(CORPUS / f"{source}.gguf", tmp_path / source, split_max_tensors=5)
    assert [p.name for p in shards] == [f"{source}-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    return shards


SET_METRICS = (
    "tensor_count",
    "file_type",
    "params_total",
    "params_quantized",
    "weight_ops",
    "quantized_ops",
    "coverage",
    "bits_per_weight",
    "bits_per_weight_all",
    "bits_per_weight_excluding_embeddings_and_output",
)


def test_split_set_is_gated_as_the_unsplit_model(tmp_path: Path) -> None:
    first, second, _ = split_set(tmp_path)
    _, whole = dtypes(CORPUS / "untied_q4_k_m.gguf")
    code, r = dtypes(first)
    assert (code, r["status"], r["findings"]) == (0, "PASS", [])
    for name in SET_METRICS:
        assert r["metrics"][name] == whole["metrics"][name], name
    assert r["metrics"]["tensor_count"] == 12
    for name in ("weights_bytes", "kv_cache_bytes", "total_bytes"):
        assert r["metrics"]["memory"][name] == whole["metrics"]["memory"][name], name
    _, integrity = run_json("guard", "integrity", str(first))
    assert (integrity["status"], integrity["findings"]) == ("PASS", [])
    # a later shard alone: its own tensors, no metadata findings, one note pointing to the first
    code, r = dtypes(second)
    assert (code, r["status"], codes(r)) == (0, "PASS", [("GGUF_SPLIT_SHARD", "info")])
    assert "untied_q4_k_m-00001-of-00003.gguf" in r["findings"][0]["message"]


def test_split_set_missing_shard(tmp_path: Path) -> None:
    first, second, _ = split_set(tmp_path)
    second.unlink()
    code, r = run_json("guard", "integrity", str(first))
    assert (code, r["status"]) == (1, "FAIL")
    # the absent file, then the 7 tensors the 2 shards hold against split.tensors.count 12
    assert codes(r) == [("GGUF_SPLIT_MISSING", "error"), ("GGUF_SPLIT_MISSING", "error")]
    assert "shard 2 of 3, untied_q4_k_m-00002-of-00003.gguf" in r["findings"][0]["message"]
    assert "hold 7 tensors but split.tensors.count is 12" in r["findings"][1]["message"]


def test_split_set_extra_shard(tmp_path: Path) -> None:
    first, _, third = split_set(tmp_path)
    shutil.copy(third, tmp_path / "untied_q4_k_m-00004-of-00003.gguf")
    shutil.copy(third, tmp_path / "untied_q4_k_m-00001-of-00002.gguf")
    code, r = run_json("guard", "integrity", str(first))
    assert (code, r["status"]) == (1, "FAIL")
    assert codes(r) == [("GGUF_SPLIT_EXTRA", "error"), ("GGUF_SPLIT_EXTRA", "error")]
    assert sorted(f["message"].split(" ")[0] for f in r["findings"]) == [
        "untied_q4_k_m-00001-of-00002.gguf",
        "untied_q4_k_m-00004-of-00003.gguf",
    ]


def test_split_set_shards_swapped(tmp_path: Path) -> None:
    first, second, third = split_set(tmp_path)
    swap = tmp_path / "swap.gguf"
    second.rename(swap)
    third.rename(second)
    swap.rename(third)
    code, r = run_json("guard", "integrity", str(first))
    assert (code, r["status"]) == (1, "FAIL")
    assert codes(r) == [("GGUF_SPLIT_MISMATCH", "error"), ("GGUF_SPLIT_MISMATCH", "error")]


def test_first_shard_not_named_as_a_set(tmp_path: Path) -> None:
    first, _, _ = split_set(tmp_path)
    renamed = first.rename(tmp_path / "model.gguf")
    code, r = run_json("guard", "integrity", str(renamed))
    assert (code, r["status"], codes(r)) == (1, "FAIL", [("GGUF_SPLIT_MISSING", "error")])


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_split_shard_that_is_a_fifo_is_missing_not_a_hang(tmp_path: Path) -> None:
    first, second, _ = split_set(tmp_path)
    second.unlink()
    os.mkfifo(second)
    code, r = run_json("guard", "integrity", str(first))
    assert (code, r["status"]) == (1, "FAIL")
    assert codes(r) == [("GGUF_SPLIT_MISSING", "error"), ("GGUF_SPLIT_MISSING", "error")]
    assert "is not a regular file" in r["findings"][0]["message"]


def test_split_set_size_heuristic_counts_the_set_bytes(tmp_path: Path) -> None:
    shards = split_set(tmp_path)
    code, r = run_json("guard", "size-heuristic", str(shards[0]))
    assert code == 0
    assert r["metrics"]["file_bytes"] == sum(p.stat().st_size for p in shards)
    assert r["metrics"]["params"] == gguf.read(str(CORPUS / "untied_q4_k_m.gguf")).params_stored


def _gate(folder: Path) -> tuple[int, dict]:
    return run_json("run", str(folder), "--format", "json", "--guards", "integrity,gguf-dtypes", timeout=120)


def test_split_set_in_a_folder_is_one_artifact(tmp_path: Path) -> None:
    from quantgate.core.jsonschemas import validate

    first, second, third = split_set(tmp_path)
    _, whole = dtypes(CORPUS / "untied_q4_k_m.gguf")
    code, report = _gate(tmp_path)
    # main: 3 artifacts, the model counted three times (shards 2 and 3 each with their own results)
    assert (code, report["verdict"]) == (0, "PASS")
    shown = [os.path.realpath(p) for p in (first, second, third)]
    assert [(a["path"], a["format"]) for a in report["artifacts"]] == [(shown[0], "gguf")]
    assert report["skipped"] == [
        {"path": shown[k - 1], "reason": "split_shard",
         "detail": f"shard {k} of 3 of a split GGUF model, gated with the set through {shown[0]}"}
        for k in (2, 3)
    ]
    assert validate(report, "report") == []
    (r,) = [r for r in report["results"] if r["guard"] == "gguf-dtypes"]
    assert (r["gate_status"], r["findings"]) == ("PASS", [])
    for name in SET_METRICS:
        assert r["metrics"][name] == whole["metrics"][name], name
    assert r["metrics"]["tensor_count"] == 12
    assert r["metrics"]["memory"]["total_bytes"] == whole["metrics"]["memory"]["total_bytes"]


def test_split_set_without_its_first_shard_gates_each_shard(tmp_path: Path) -> None:
    first, second, third = split_set(tmp_path)
    first.unlink()
    code, report = _gate(tmp_path)
    assert (code, report["verdict"], report["skipped"]) == (0, "PASS", [])
    assert [a["path"] for a in report["artifacts"]] == [os.path.realpath(p) for p in (second, third)]
    notes = [(r["artifact"]["path"], codes(r)) for r in report["results"] if r["guard"] == "gguf-dtypes"]
    assert notes == [(os.path.realpath(p), [("GGUF_SPLIT_SHARD", "info")]) for p in (second, third)]
    assert report["results"][1]["metrics"]["tensor_count"] == 5  # shard 2 alone: its own 5 tensors


def test_a_file_named_as_a_first_shard_must_be_one(tmp_path: Path) -> None:
    # an unsplit model named as shard 1 would not read "shard 2" (here a broken file): discovery folds
    # shard 2 into it, so its name and keys disagreeing is an error, never a silent pass
    shutil.copy(CORPUS / "untied_q4_k_m.gguf", tmp_path / "m-00001-of-00002.gguf")
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(b"GGUF" + b"\xff" * 60)
    code, report = _gate(tmp_path)
    assert (code, report["verdict"]) == (1, "FAIL")
    assert [s["reason"] for s in report["skipped"]] == ["split_shard"]
    (r,) = [r for r in report["results"] if r["guard"] == "integrity"]
    assert codes(r) == [("GGUF_SPLIT_MISMATCH", "error")]
    assert "named as the first of 2 shards but has no split.count above 1" in r["findings"][0]["message"]


def test_gemma3_swa_full_param() -> None:
    # llama.cpp's --swa-full: every layer holds ctx cells, 6 x 256 x 4096 x 2 bytes
    code, r = dtypes(SWA / "gemma3_swa.gguf", "--param", "swa_full=true")
    m = r["metrics"]["memory"]
    assert (code, m["kv_cache_bytes"], "swa_layers" in m) == (0, 6 * 256 * 4096 * 2, False)
    code, r = dtypes(SWA / "gemma3_swa.gguf", "--param", "swa_full=3")
    assert (code, r["status"]) == (2, "ERROR")


def test_manifest_of_a_split_set_vouches_for_every_shard(tmp_path: Path) -> None:
    from conftest import run_cli

    shards = split_set(tmp_path)
    out = tmp_path / "manifest.json"
    proc = run_cli("manifest", str(tmp_path), "--model-id", "org/m", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    import json

    claimed = [entry["path"] for entry in json.loads(out.read_text())["artifacts"]]
    assert claimed == [p.name for p in shards]
    code, report = run_json("run", str(tmp_path), "--format", "json", "--guards", "integrity,manifest")
    assert (code, report["verdict"], len(report["artifacts"])) == (0, "PASS", 2)  # the set and the manifest
    (m,) = [r for r in report["results"] if r["guard"] == "manifest" and r["artifact"]["format"] == "manifest"]
    assert (m["gate_status"], m["findings"]) == ("PASS", [])
