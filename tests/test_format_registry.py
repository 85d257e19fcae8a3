"""formats.FORMATS is the one registry a format is added to; every other registry derives from it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantgate.core import codes
from quantgate.formats import FORMATS, MODEL_FORMATS, SNIFFING_ORDER, load
from quantgate.formats.sniff import MODEL_EXTENSIONS
from quantgate.guards import GUARD_MODULES, get_guard

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "format_plugin"


def test_every_entry_resolves() -> None:
    for spec in FORMATS.values():
        reader = load(f"{spec.reader}:read")
        assert callable(reader) and callable(load(f"{spec.reader}:remote_extent")), spec.id
        for guard_id, module in spec.guards:
            assert GUARD_MODULES[guard_id] == module and spec.id in get_guard(guard_id).formats
        for section in spec.code_sections:
            assert all(isinstance(load(ref), dict) and load(ref) for ref in section.tables)
        if spec.model:  # a model reader's own codes are documented under its format
            assert set(load(f"{spec.reader}:FINDING_CODES")) <= set(codes.all_finding_codes()), spec.id


def test_the_registries_derived_from_it() -> None:
    assert MODEL_FORMATS == ("pte", "onnx", "gguf", "safetensors")
    assert MODEL_EXTENSIONS == (".pte", ".onnx", ".ort", ".gguf", ".safetensors")
    assert list(GUARD_MODULES) == [
        "integrity", "size-heuristic", "pte-program", "pte-inspector", "onnx-dtypes", "gguf-dtypes",
        "safetensors-dtypes", "fidelity", "manifest",
    ]
    # ONNX has no magic number: every format with one is tried first
    assert [f.id for f in SNIFFING_ORDER] == ["pte", "ptd", "gguf", "safetensors", "onnx"]
    assert get_guard("fidelity").formats == ("pte", "onnx", "gguf", "safetensors")
    titles = [s.title for s in codes.SECTIONS]
    assert titles[:2] == ["Shared", "Manifest"] and titles[-2:] == ["Fidelity", "Runtime box"]
    assert len(codes.all_finding_codes()) == sum(len(load(r)) for s in codes.SECTIONS for r in s.tables)


def test_a_format_without_a_dequantizer_has_no_fidelity() -> None:
    pytest.importorskip("numpy")
    from quantgate import dequant

    for fmt in ("tflite", "ptd"):
        with pytest.raises(dequant.DequantError) as exc:
            dequant.open_weights("model.bin", fmt)
        assert exc.value.code == "FIDELITY_UNSUPPORTED_ENCODING"


def _package_with_npy(tmp_path: Path) -> Path:
    """A copy of the package with NumPy's .npy added as docs/architecture.md#adding-a-format says: the
    format's package, its guard module, and one entry in formats.FORMATS (nothing else edited)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "quantgate", src / "quantgate", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PLUGIN / "npy", src / "quantgate" / "formats" / "npy")
    shutil.copy(PLUGIN / "npy_dtypes.py", src / "quantgate" / "guards" / "npy_dtypes.py")
    registry = src / "quantgate" / "formats" / "__init__.py"
    text = registry.read_text(encoding="utf-8")
    anchor = "from quantgate.formats import gguf, onnx, pte, safetensors\n"
    end = "    )\n}\n"
    assert text.count(anchor) == 1 and text.count(end) == 1
    entry = (PLUGIN / "registry_entry.txt").read_text(encoding="utf-8")
    text = text.replace(anchor, anchor + "from quantgate.formats import npy\n").replace(end, entry + end)
    registry.write_text(text, encoding="utf-8")
    return src


def _quantgate(src: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), "HOME": str(cwd), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_adding_a_format_touches_one_registry(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    src = _package_with_npy(tmp_path)
    release = tmp_path / "release"
    release.mkdir()
    np.save(release / "int8.npy", np.ones((64, 32), dtype=np.int8))
    np.save(release / "fp32.npy", np.ones((16, 32), dtype=np.float32))
    (release / "broken.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff{")  # a header running past the end
    (release / "notes.npy").write_bytes(b"not an array")  # named .npy, unrecognisable: reported, not skipped

    proc = _quantgate(src, "quantgate", "run", "release", "--format", "json", cwd=tmp_path)
    report = json.loads(proc.stdout)
    by = {(Path(r["artifact"]["path"]).name, r["guard"]): r for r in report["results"]}
    int8, fp32 = by[("int8.npy", "npy-dtypes")]["metrics"], by[("fp32.npy", "npy-dtypes")]["metrics"]
    assert (int8["coverage"]["params"]["int8"], int8["params_total"], int8["quantized_ops"]) == (1.0, 2048, 1)
    assert (fp32["coverage"]["params"]["int8"], fp32["params_total"], fp32["unexpected_unquantized"]) == (0.0, 512, 1)
    assert by[("int8.npy", "integrity")]["status"] == "PASS"
    assert [f["code"] for f in by[("broken.npy", "integrity")]["findings"]] == ["NPY_BAD_HEADER"]
    assert by[("broken.npy", "npy-dtypes")]["status"] == "SKIP"  # blocked by integrity
    assert [f["code"] for f in by[("notes.npy", "integrity")]["findings"]] == ["FORMAT_UNKNOWN"]
    assert proc.returncode == 1, proc.stderr  # integrity fails on the two broken files

    listing = _quantgate(src, "quantgate", "guards", cwd=tmp_path)
    assert "npy-dtypes" in listing.stdout
    page = _quantgate(src, "quantgate.core.codes", cwd=tmp_path)
    assert "## NumPy" in page.stdout and "| `NPY_BAD_HEADER` |" in page.stdout
