"""Release manifests: a folder passes only if every claim in its manifest is true of the files beside it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import FIXTURES, run_cli, run_json

from quantgate.core.jsonschemas import validate

Q4_ONE_F16 = FIXTURES / "gguf" / "model_q4_0_one_f16.gguf"  # ops 15/16, params 139,264/155,648 int4
Q8 = FIXTURES / "gguf" / "model_q8_0.gguf"  # all Q8_0
F16 = FIXTURES / "gguf" / "model_f16.gguf"
# Conv2d, depthwise conv and FC, all qint8 x qcint8 under XNNPACK: ops int8 1.0 (int8_xnnpack.pte keeps its
# embedding fp32, so it measures 2/3 by ops and fp32 dominates its params: fixtures/pte/README.md)
INT8_PTE = FIXTURES / "pte" / "conv_int8_xnnpack.pte"
ONNX_DYN = FIXTURES / "onnx" / "dynamic_qint8.onnx"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release_with(tmp: Path, *files: Path) -> Path:
    release = tmp / "release"
    release.mkdir(exist_ok=True)
    for file in files:
        shutil.copy(file, release / file.name)
    return release


def entry(path: Path, **quantization: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": path.name,
        "format": "gguf",
        "sha256": sha(path),
        "size_bytes": path.stat().st_size,
    }
    if quantization:
        out["quantization"] = quantization
    return out


def write_manifest(release: Path, doc: Any, name: str = "manifest.json") -> Path:
    path = release / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return path


def guard(manifest: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code, result = run_json("guard", "manifest", str(manifest), *args)
    assert validate(result, "guard-result") == []
    return code, result


def codes(result: dict[str, Any], severity: str = "error") -> list[str]:
    return [f["code"] for f in result["findings"] if f["severity"] == severity]


def test_long_form_true_claims_pass(tmp_path: Path) -> None:
    release = release_with(tmp_path, Q4_ONE_F16, Q8)
    doc = {
        "manifest_version": 1,
        "model_id": "org/tiny-llama",
        "artifacts": [
            {
                **entry(
                    release / Q4_ONE_F16.name,
                    method="INT4",
                    coverage=0.8947,
                    basis="params",
                    quantized_layers=["blk.*.attn_q.weight", "blk.0.ffn_down"],
                    fp32_layers=["blk.1.ffn_down"],
                ),
                "parameters": 155_968,
            },
            entry(release / Q8.name, method="Q8_0", coverage=1.0, fp32_layers=["norm"]),
        ],
    }
    code, result = guard(write_manifest(release, doc))
    assert code == 0, result["message"]
    assert result["status"] == "PASS"
    assert result["metrics"]["artifacts"] == 2
    assert result["metrics"]["claims_false"] == 0
    # 1st: size, sha, format, params, method, coverage, 2 quantized + 1 fp32 layer claims = 9; 2nd: 3 + method
    # + coverage + 1 layer claim = 6
    assert result["metrics"]["claims_checked"] == 15
    assert codes(result, "info") == ["MANIFEST_LAYER_UNKNOWN"]  # "norm" is not a weight-bearing layer


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda e, r: e.update(sha256="0" * 64), "MANIFEST_SHA256_MISMATCH"),
        (lambda e, r: e.update(size_bytes=e["size_bytes"] + 1), "MANIFEST_SIZE_MISMATCH"),
        (lambda e, r: e.update(format="onnx"), "MANIFEST_FORMAT_MISMATCH"),
        (lambda e, r: e["quantization"].update(method="INT8", coverage=0.0), "MANIFEST_METHOD_MISMATCH"),
        (lambda e, r: e["quantization"].update(method="FP16", coverage=0.8947), "MANIFEST_METHOD_MISMATCH"),
        (lambda e, r: e["quantization"].update(coverage=0.92), "MANIFEST_COVERAGE_OVERCLAIMED"),
        (lambda e, r: e["quantization"].update(coverage=0.80), "MANIFEST_COVERAGE_UNDERCLAIMED"),
        (lambda e, r: e["quantization"].update(fp32_layers=["*attn_q*"]), "MANIFEST_LAYER_CLAIM_FALSE"),
        (lambda e, r: e["quantization"].update(quantized_layers=["blk.?.ffn_down*"]), "MANIFEST_LAYER_CLAIM_FALSE"),
        (lambda e, r: e.update(parameters=1_230_000_000), "MANIFEST_PARAMETERS_MISMATCH"),
        (lambda e, r: e.update(path="missing.gguf"), "MANIFEST_FILE_MISSING"),
        (lambda e, r: e.update(path="../outside.gguf"), "MANIFEST_PATH_ESCAPES"),
        (lambda e, r: e.update(path=str(r / "model_q4_0_one_f16.gguf")), "MANIFEST_PATH_ABSOLUTE"),
        (lambda e, r: e.update(path="link.gguf"), "MANIFEST_PATH_ESCAPES"),
        (lambda e, r: e.update(path="inner.gguf"), "MANIFEST_PATH_SYMLINK"),
    ],
)
def test_each_false_claim_has_its_own_code(tmp_path: Path, edit, code: str) -> None:
    release = release_with(tmp_path, Q4_ONE_F16)
    shutil.copy(Q4_ONE_F16, tmp_path / "outside.gguf")
    os.symlink(tmp_path / "outside.gguf", release / "link.gguf")
    os.symlink(release / Q4_ONE_F16.name, release / "inner.gguf")
    item = entry(release / Q4_ONE_F16.name, method="INT4", coverage=0.8947, basis="params")
    edit(item, release)
    doc = {"manifest_version": 1, "model_id": "org/m", "artifacts": [item]}
    exit_code, result = guard(write_manifest(release, doc))
    assert exit_code == 1
    assert result["status"] == "FAIL"
    assert codes(result) == [code]
    assert result["message"].startswith(code)


def test_several_false_claims_each_reported(tmp_path: Path) -> None:
    release = release_with(tmp_path, Q4_ONE_F16)
    item = entry(release / Q4_ONE_F16.name, method="INT8", coverage=0.99)
    item["size_bytes"] += 10
    doc = {"manifest_version": 1, "model_id": "org/m", "artifacts": [item]}
    _, result = guard(write_manifest(release, doc))
    assert sorted(codes(result)) == [
        "MANIFEST_COVERAGE_OVERCLAIMED",
        "MANIFEST_METHOD_MISMATCH",
        "MANIFEST_SIZE_MISMATCH",
    ]
    assert result["message"].endswith("(and 2 more)")


def test_coverage_tolerance_from_policy(tmp_path: Path) -> None:
    release = release_with(tmp_path, Q4_ONE_F16)
    item = entry(release / Q4_ONE_F16.name, method="INT4", coverage=0.91, basis="params")  # measured 0.8947
    manifest = write_manifest(release, {"manifest_version": 1, "model_id": "m", "artifacts": [item]})
    assert guard(manifest)[0] == 1
    policy = tmp_path / "quantgate.toml"
    policy.write_text("[quantgate]\nversion = 1\ncoverage_tolerance = 0.02\n", encoding="utf-8")
    assert guard(manifest, "--policy", str(policy))[0] == 0


def test_short_form_as_export_scripts_write_it(tmp_path: Path) -> None:
    release = release_with(tmp_path, INT8_PTE)
    doc = {
        "model_id": "meta-llama/Llama-3.2-1B-Instruct",
        "pte_file": INT8_PTE.name,
        "quantization": {
            "method": "INT8",
            "coverage": 1.0,
            "quantized_layers": ["linear"],
            "fp32_layers": ["embedding", "layernorm"],
        },
        "int8_coverage": 1.0,
    }
    code, result = guard(write_manifest(release, doc))
    assert code == 0, result["message"]
    assert result["metrics"]["form"] == "short"
    doc["quantization"]["coverage"] = 0.5
    doc["int8_coverage"] = 0.4
    code, result = guard(write_manifest(release, doc))
    assert code == 1
    assert codes(result) == ["MANIFEST_COVERAGE_UNDERCLAIMED", "MANIFEST_COVERAGE_UNDERCLAIMED"]


def test_multi_format_manifest_written_by_quantgate_passes(tmp_path: Path) -> None:
    release = release_with(tmp_path, Q4_ONE_F16, F16, INT8_PTE, ONNX_DYN)
    proc = run_cli("manifest", str(release), "--model-id", "org/tiny")
    assert proc.returncode == 0, proc.stderr
    manifest = release / "manifest.json"
    doc = json.loads(manifest.read_text())
    assert validate(doc, "manifest", "long") == []
    by_path = {a["path"]: a for a in doc["artifacts"]}
    assert set(by_path) == {Q4_ONE_F16.name, F16.name, INT8_PTE.name, ONNX_DYN.name}
    assert {a["format"] for a in doc["artifacts"]} == {"gguf", "pte", "onnx"}
    assert by_path[F16.name]["quantization"]["method"] == "F16"
    assert by_path[F16.name]["quantization"]["coverage"] == 0.0
    assert by_path[Q4_ONE_F16.name]["quantization"]["method"] == "Q4_0"
    assert by_path[Q4_ONE_F16.name]["quantization"]["coverage"] == 0.9375
    assert by_path[Q4_ONE_F16.name]["quantization"]["fp32_layers"] == ["blk.1.ffn_down.weight"]
    assert by_path[INT8_PTE.name]["quantization"]["method"] == "INT8"
    code, result = guard(manifest)
    assert code == 0, result["message"]
    assert result["metrics"]["artifacts"] == 4
    # and the gate finds it in the folder and runs the manifest guard on it
    code, report = run_json("run", "--format", "json", str(release), cwd=tmp_path)
    manifest_results = [r for r in report["results"] if r["guard"] == "manifest" and r["status"] != "SKIP"]
    assert [(r["artifact"]["format"], r["status"]) for r in manifest_results] == [("manifest", "PASS")]


def test_manifest_parameters_feed_size_heuristic(tmp_path: Path) -> None:
    release = release_with(tmp_path, Q8)
    item = entry(release / Q8.name)
    item["parameters"] = 155_968
    write_manifest(release, {"manifest_version": 1, "model_id": "m", "artifacts": [item]})
    (tmp_path / "quantgate.toml").write_text("[quantgate]\nversion = 1\n", encoding="utf-8")
    _, report = run_json("run", "--format", "json", "--guards", "size-heuristic,manifest", str(release), cwd=tmp_path)
    size = next(r for r in report["results"] if r["guard"] == "size-heuristic" and r["status"] != "SKIP")
    assert size["metrics"]["params_source"] == "manifest"
    assert size["metrics"]["params"] == 155_968


@pytest.mark.parametrize(
    ("content", "code", "needle"),
    [
        ("{not json", "MANIFEST_NOT_JSON", "not JSON: Expecting property name enclosed in double quotes at line 1"),
        ("[1, 2]", "MANIFEST_NOT_OBJECT", "the top level is a JSON list, not an object"),
        ("[" * 100_000 + "]" * 100_000, "MANIFEST_TOO_DEEP", "nests too deeply"),
        ("\xff\xfe", "MANIFEST_NOT_JSON", "not JSON"),
        (
            '{"manifest_version": 1, "model_id": 5, "artifacts": [{"path": 3, "format": "zip"}]}',
            "MANIFEST_SCHEMA",
            "$.artifacts[0].format: 'zip' is not one of",
        ),
        (  # not a list: the schema says so; reading the claims (and the gate's hints) does not crash
            '{"manifest_version": 1, "model_id": "m", "artifacts": 5}',
            "MANIFEST_SCHEMA",
            "$.artifacts: 5 is not of type 'array'",
        ),
        (
            '{"manifest_version": 2, "model_id": "m", "artifacts": []}',
            "MANIFEST_SCHEMA",
            "$.artifacts: [] should be non-empty",
        ),
    ],
)
def test_malformed_manifest_is_fail_not_exception(tmp_path: Path, content: str, code: str, needle: str) -> None:
    release = tmp_path / "release"
    release.mkdir()
    write_manifest(release, content)
    exit_code, result = guard(release / "manifest.json")
    assert exit_code == 1
    assert code in codes(result)
    assert any(needle in f["message"] for f in result["findings"]), result["findings"]


def test_schema_errors_all_reported_with_paths(tmp_path: Path) -> None:
    release = tmp_path / "r"
    release.mkdir()
    doc = {
        "manifest_version": 1,
        "model_id": "",
        "artifacts": [
            {"path": "a.gguf", "format": "gguf", "sha256": "xyz", "quantization": {"method": "INT9", "coverage": 2}}
        ],
        "extra": True,
    }
    _, result = guard(write_manifest(release, doc))
    schema = sorted(f["message"] for f in result["findings"] if f["code"] == "MANIFEST_SCHEMA")
    assert len(schema) == 5
    assert any(m.startswith("$.artifacts[0].sha256:") for m in schema)
    assert any(m.startswith("$.artifacts[0].quantization.method:") for m in schema)
    assert any(m.startswith("$.artifacts[0].quantization.coverage: 2 is greater than the maximum of 1") for m in schema)
    assert any(m.startswith("$.model_id:") for m in schema)
    assert any("'extra' was unexpected" in m for m in schema)


def test_huge_manifest_not_parsed(tmp_path: Path) -> None:
    release = tmp_path / "r"
    release.mkdir()
    path = release / "manifest.json"
    with open(path, "wb") as handle:
        handle.write(b'{"model_id": "')
        handle.truncate(17 << 20)
    _, result = guard(path)
    assert codes(result) == ["MANIFEST_TOO_LARGE"]


def _sound_fixture_sets() -> list[tuple[str, list[Path]]]:
    """Every committed model fixture that passes integrity, as the sets `quantgate manifest` is run on:
    one folder per loose-file format, one per safetensors checkpoint (its config.json beside it)."""
    sets: list[tuple[str, list[Path]]] = []
    for folder, suffix in (
        ("gguf", ".gguf"),
        ("onnx", ".onnx"),
        ("onnx_third_party", ".onnx"),
        ("pte", ".pte"),
        ("release", ""),
    ):
        files = sorted(p for p in (FIXTURES / folder).glob(f"*{suffix}") if p.is_file() and p.suffix != ".json")
        files = [p for p in files if p.suffix in (".gguf", ".onnx", ".pte", ".safetensors")]
        sets.append((folder, [p for p in files if not p.name.startswith("semantic_")]))
    for model in sorted((FIXTURES / "safetensors").glob("*/model.safetensors")):
        sets.append((f"safetensors/{model.parent.name}", sorted(p for p in model.parent.iterdir() if p.is_file())))
    return sets


@pytest.mark.parametrize(("name", "files"), _sound_fixture_sets(), ids=[n for n, _ in _sound_fixture_sets()])
def test_generated_manifest_passes_on_every_fixture(tmp_path: Path, name: str, files: list[Path]) -> None:
    """What `quantgate manifest` writes, its own guard passes on the files it was made from."""
    release = release_with(tmp_path, *files)
    proc = run_cli("manifest", str(release), "--model-id", f"fixtures/{name}", timeout=300)
    assert proc.returncode == 0, proc.stderr
    code, result = guard(release / "manifest.json")
    assert (code, result["findings"] and [f for f in result["findings"] if f["severity"] != "info"]) == (0, [])
    assert result["metrics"]["claims_false"] == 0


def test_layer_claims_name_layers_exactly_never_by_substring(tmp_path: Path) -> None:
    """`output.weight` (BF16 in this mixed file) names that one layer, not `blk.N.attn_output.weight`."""
    release = release_with(tmp_path, FIXTURES / "gguf" / "model_mixed.gguf")
    item = entry(release / "model_mixed.gguf", fp32_layers=["output.weight"])
    item["quantization"].update(method="INT4", quantized_layers=["blk.0.attn_output", "attn_output"])
    doc = {"manifest_version": 1, "model_id": "m", "artifacts": [item]}
    code, result = guard(write_manifest(release, doc))
    assert code == 0, result["message"]
    # a fragment is no claim: it matches no layer (info), it does not claim every layer holding it
    assert [f["field"] for f in (f["location"] for f in result["findings"])] == [
        "$.artifacts[0].quantization.quantized_layers[1]"
    ]
    assert codes(result, "info") == ["MANIFEST_LAYER_UNKNOWN"]


def test_artifacts_not_a_list_fails_the_run_without_an_internal_error(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.mkdir()
    write_manifest(release, '{"manifest_version": 1, "model_id": "m", "artifacts": {"path": "x.gguf"}}')
    exit_code, report = run_json("run", "--format", "json", str(release), cwd=tmp_path)
    assert exit_code == 1
    assert [(r["guard"], r["status"]) for r in report["results"] if r["status"] != "SKIP"] == [("manifest", "FAIL")]


def test_one_walk_gives_the_gate_and_fidelity_the_same_hints(tmp_path: Path) -> None:
    """artifact_hints is the one walk over a manifest's entries: the parameters for size-heuristic and the
    reference for fidelity, by the artifact's resolved path; paths leaving the folder give nothing."""
    from quantgate.guards.fidelity import manifest_reference
    from quantgate.manifest.check import artifact_hints

    release = release_with(tmp_path, Q8)
    (release / "float.gguf").write_bytes(Q8.read_bytes())
    doc = {
        "manifest_version": 1,
        "model_id": "m",
        "artifacts": [
            {"path": Q8.name, "parameters": 7, "reference": "float.gguf"},
            {"path": Q8.name, "parameters": 9, "reference": "../outside.gguf"},  # the first entry wins
            {"path": "../escape.gguf", "parameters": 3},
            {"path": "float.gguf", "reference": "/abs.gguf"},  # an absolute reference is never followed
        ],
    }
    write_manifest(release, doc)
    hints = artifact_hints(doc, release)
    quantized = str((release / Q8.name).resolve())
    assert hints == {quantized: {"parameters": 7, "reference": str((release / "float.gguf").resolve())}}
    assert manifest_reference(str(release / Q8.name)) == str((release / "float.gguf").resolve())
    assert manifest_reference(str(release / "float.gguf")) is None
