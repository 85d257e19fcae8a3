"""One confinement rule for every file read beside an artifact (quantgate.core.confine,
docs/architecture.md#hostile-input): each reader that opens a file named beside an artifact asks `confine`
and reports the refusal under its own finding code. The same hostile file is refused by every caller, for
the same reason, and is never opened (a FIFO would block the open: the tests run under a timeout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from quantgate.core import confine as C
from quantgate.core.findings import CappedFindings, Finding

ROOT = Path(__file__).resolve().parents[1]
EXT_OK = ROOT / "fixtures" / "onnx" / "broken" / "ext_ok"  # model.onnx + weights.bin (256 bytes, with length)
GGUF = ROOT / "fixtures" / "fidelity" / "gguf" / "tiny-f16.gguf"

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or os.name != "posix", reason="POSIX links and FIFOs")


def _plant(folder: Path, name: str, hostile: str, outside: Path) -> None:
    """Put the hostile file under `name` in `folder`; `outside` is a valid copy of what belongs there."""
    target = folder / name
    if target.exists() or target.is_symlink():
        target.unlink()
    if hostile == "link_out":
        os.symlink(outside, target)
    elif hostile == "fifo":
        os.mkfifo(target)
    elif hostile == "folder":
        target.mkdir()
    elif hostile == "link_in":  # a link to a regular file in the same folder
        shutil.copy(outside, folder / "real.bin")
        os.symlink(folder / "real.bin", target)


# --- the callers, each with the file name it reads and the way it reports a refusal ----------------------


def _sibling(folder: Path, outside: Path, hostile: str) -> list[str]:
    from quantgate.formats.safetensors.layouts import load_quant_config

    outside.write_text('{"quantization_config": {"quant_method": "gptq", "bits": 4}}')
    _plant(folder, "config.json", hostile, outside)
    found: list[Finding] = []
    load_quant_config(str(folder), found)
    return [f.code for f in found]


def _onnx_model(folder: Path, outside: Path, hostile: str) -> Path:
    shutil.copytree(EXT_OK, folder, dirs_exist_ok=True)
    shutil.copy(EXT_OK / "weights.bin", outside)
    _plant(folder, "weights.bin", hostile, outside)
    return folder / "model.onnx"


def _onnx_reader(folder: Path, outside: Path, hostile: str) -> list[str]:
    from quantgate.formats.onnx.reader import read

    inv = read(str(_onnx_model(folder, outside, hostile)))
    return [f.code for f in inv.structural_findings]


def _fidelity(folder: Path, outside: Path, hostile: str) -> list[str]:
    """The fidelity dequantizer reading the same weights: its refusal names the reader's code."""
    from quantgate.dequant import DequantError, open_weights

    ws = open_weights(str(_onnx_model(folder, outside, hostile)), "onnx")
    try:
        ws.weights["w"].load()
    except DequantError as exc:
        return [exc.code, *(c for c in _ONNX_CODES if f": {c}: " in f": {exc.message}")]
    finally:
        ws.close()
    return []


def _manifest(folder: Path, outside: Path, hostile: str) -> list[str]:
    from quantgate.manifest.check import resolve_inside

    shutil.copy(GGUF, outside)
    _plant(folder, "model.gguf", hostile, outside)
    _, problem = resolve_inside(folder, "model.gguf", "artifacts[0]")
    return [] if problem is None else [problem.code]


def _gguf_shard(folder: Path, outside: Path, hostile: str) -> list[str]:
    from quantgate.formats.gguf.reader import _open_shard

    shutil.copy(GGUF, outside)
    _plant(folder, "m-00002-of-00002.gguf", hostile, outside)
    out: list[Finding] = []
    shard = _open_shard(str(folder / "m-00001-of-00002.gguf"), "m-00002-of-00002.gguf", 2, 2, CappedFindings(out))
    assert (shard is None) == bool(out)
    return [f.code for f in out]


_ONNX_CODES = ("ONNX_EXTERNAL_PATH_ESCAPES", "ONNX_EXTERNAL_NOT_A_FILE", "ONNX_EXTERNAL_SYMLINK")

# caller -> (its function, the flags it asks confine for, its code for each refusal)
CALLERS: dict[str, tuple[Callable[[Path, Path, str], list[str]], dict[str, bool], dict[str, list[str]]]] = {
    "sibling (safetensors config.json)": (_sibling, {}, {
        C.ESCAPES: ["SIBLING_NOT_READ"], C.NOT_REGULAR: ["SIBLING_NOT_READ"]}),
    "onnx reader (external data)": (_onnx_reader, {"links": False, "hard_links": False}, {
        C.ESCAPES: ["ONNX_EXTERNAL_PATH_ESCAPES"], C.NOT_REGULAR: ["ONNX_EXTERNAL_NOT_A_FILE"],
        C.LINK: ["ONNX_EXTERNAL_SYMLINK"]}),
    "fidelity dequant (onnx external data)": (_fidelity, {"links": False, "hard_links": False}, {
        C.ESCAPES: ["FIDELITY_DEQUANT_FAILED", "ONNX_EXTERNAL_PATH_ESCAPES"],
        C.NOT_REGULAR: ["FIDELITY_DEQUANT_FAILED", "ONNX_EXTERNAL_NOT_A_FILE"],
        C.LINK: ["FIDELITY_DEQUANT_FAILED", "ONNX_EXTERNAL_SYMLINK"]}),
    "manifest (artifact path)": (_manifest, {"links": False}, {
        C.ESCAPES: ["MANIFEST_PATH_ESCAPES"], C.NOT_REGULAR: ["MANIFEST_FILE_MISSING"],
        C.LINK: ["MANIFEST_PATH_SYMLINK"]}),
    "gguf split shard": (_gguf_shard, {}, {C.ESCAPES: ["GGUF_SPLIT_MISSING"], C.NOT_REGULAR: ["GGUF_SPLIT_MISSING"]}),
}

# hostile file -> what the one rule decides for it
HOSTILE = {"link_out": C.ESCAPES, "fifo": C.NOT_REGULAR, "folder": C.NOT_REGULAR}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hostile", sorted(HOSTILE))
@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_every_caller_refuses_the_same_hostile_sibling(tmp_path: Path, caller: str, hostile: str) -> None:
    run, flags, codes = CALLERS[caller]
    folder = tmp_path / "artifact"
    folder.mkdir()
    got = run(folder, tmp_path / "outside.bin", hostile)
    name = next(p.name for p in folder.iterdir() if p.name not in ("model.onnx", "real.bin"))
    decided = C.confine(folder, name, **flags)
    assert decided.path is None and decided.refused == HOSTILE[hostile]
    assert got == codes[decided.refused]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("caller", [c for c, (_, flags, _) in CALLERS.items() if flags.get("links") is False])
def test_callers_that_refuse_links_refuse_one_inside_the_folder(tmp_path: Path, caller: str) -> None:
    """ONNX external data and a manifest's artifacts: no symbolic link on the path, even to a file beside it."""
    run, flags, codes = CALLERS[caller]
    folder = tmp_path / "artifact"
    folder.mkdir()
    got = run(folder, tmp_path / "outside.bin", "link_in")
    name = next(p.name for p in folder.iterdir() if p.is_symlink())
    assert C.confine(folder, name, **flags).refused == C.LINK
    assert C.sibling(folder, name) == (str(folder / name), None)  # a sibling may be a link inside the folder
    assert got == codes[C.LINK]


def _without_length(folder: Path) -> None:
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    entries = model.graph.initializer[0].external_data
    for i in reversed(range(len(entries))):
        if entries[i].key == "length":
            del entries[i]
    (folder / "model.onnx").write_bytes(model.SerializeToString())


PROBE = """
import sys
from quantgate.dequant import DequantError, open_weights
ws = open_weights(sys.argv[1], "onnx")
try:
    ws.weights["w"].load()
    print("READ")
except DequantError as exc:
    print(exc.code, exc.message)
"""


@pytest.mark.parametrize(("hostile", "code"), [("fifo", "ONNX_EXTERNAL_NOT_A_FILE"),
                                               ("link_out", "ONNX_EXTERNAL_PATH_ESCAPES"),
                                               ("link_in", "ONNX_EXTERNAL_SYMLINK")])
def test_fidelity_never_opens_hostile_external_data(tmp_path: Path, hostile: str, code: str) -> None:
    """No `length` in the model: the dequantizer sizes the data file itself. A FIFO under its name used to
    block the open (np.memmap) forever; a link was followed. Run in a child so a hang fails, not blocks."""
    pytest.importorskip("onnx")
    folder = tmp_path / "artifact"
    model = _onnx_model(folder, tmp_path / "outside.bin", hostile)
    _without_length(folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(model)], capture_output=True, text=True,
                              timeout=30, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("the dequantizer blocked on the external data file")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"FIDELITY_DEQUANT_FAILED w: {code}: external data location 'weights.bin'")


def test_onnx_external_data_in_a_hugging_face_snapshot_is_a_link(tmp_path: Path) -> None:
    """docs/discovery.md: onnx's checker refuses a data file that is a link, so a snapshot's data file
    (a link to ../../blobs/<sha>) is ONNX_EXTERNAL_SYMLINK, not an escape, while a config.json beside the
    same model (a sibling, links allowed into blobs/) is read."""
    from quantgate.formats.onnx.external import locate

    repo = tmp_path / "models--org--name"
    snap, blobs = repo / "snapshots" / "rev", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    shutil.copy(EXT_OK / "weights.bin", blobs / "abc")
    (blobs / "def").write_text("{}")
    os.symlink("../../blobs/abc", snap / "weights.bin")
    os.symlink("../../blobs/def", snap / "config.json")
    where, size, problems = locate(str(snap), "weights.bin")
    assert (where, size, [code for code, _ in problems]) == (None, None, ["ONNX_EXTERNAL_SYMLINK"])
    assert C.sibling(snap, "config.json") == (str(snap / "config.json"), None)


@pytest.mark.parametrize(
    ("name", "flags", "refused"),
    [
        ("", {}, C.INVALID),
        ("a\x00b", {}, C.INVALID),
        ("./", {}, C.INVALID),
        ("/etc/passwd", {}, C.ABSOLUTE),
        ("\\\\host\\share", {}, C.ABSOLUTE),
        ("C:x", {}, C.ABSOLUTE),
        ("../outside.bin", {}, C.ESCAPES),
        ("sub/../data.bin", {}, C.TRAVERSAL),
        ("sub\\..\\data.bin", {}, C.TRAVERSAL),
        ("missing.bin", {}, C.MISSING),
        ("sub", {}, C.NOT_REGULAR),
        ("hard.bin", {"hard_links": False}, C.HARD_LINK),
        ("linkdir/data.bin", {"links": False}, C.LINK),
        ("linkdir/data.bin", {}, None),
        ("sub/data.bin", {"links": False, "hard_links": False}, None),
    ],
)
def test_the_rule_decides_in_one_order(tmp_path: Path, name: str, flags: dict[str, bool], refused: str | None) -> None:
    folder = tmp_path / "artifact"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.bin").write_bytes(b"1234")
    (tmp_path / "outside.bin").write_bytes(b"x")
    (folder / "data.bin").write_bytes(b"5678")
    os.link(folder / "data.bin", folder / "hard.bin")
    os.symlink(folder / "sub", folder / "linkdir")
    got = C.confine(folder, name, **flags)
    assert got.refused == refused
    if refused is None:
        assert got.path == os.path.join(folder, *name.split("/")) and got.size == 4
    else:
        assert got.path is None


def test_dotdot_into_the_hugging_face_blobs_is_an_escape(tmp_path: Path) -> None:
    """The blobs/ allowance covers the links the cache layout makes, not a name that climbs out."""
    repo = tmp_path / "models--org--name"
    snap = repo / "snapshots" / "rev"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "abc").write_bytes(b"x")
    got = C.confine(snap, "../../blobs/abc")
    assert (got.refused, got.dotdot) == (C.ESCAPES, True)
