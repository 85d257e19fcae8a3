"""The GGUF reader itself: parity with gguf-py on valid files, its tables, and hostile input."""

from __future__ import annotations

import os
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from quantgate.core.findings import FINDING_CODES as SHARED_CODES
from quantgate.formats.gguf import reader as gguf
from quantgate.formats.gguf import types as T

GGUF = FIXTURES / "gguf"
VALID = sorted(p for p in GGUF.glob("*.gguf"))
KNOWN_CODES = set(gguf.FINDING_CODES) | set(SHARED_CODES)


# ---- differential: the same facts as gguf-py's GGUFReader on every valid fixture -----------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_matches_gguf_py(path: Path) -> None:
    gguf_py = pytest.importorskip("gguf")
    ref = gguf_py.GGUFReader(str(path))
    ours = gguf.parse(str(path))
    assert ours.structural == []
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    assert [list(t.ne) for t in ours.tensors] == [[int(x) for x in t.shape] for t in ref.tensors]
    assert [t.type_id for t in ours.tensors] == [int(t.tensor_type) for t in ref.tensors]
    assert [ours.data_start + t.offset for t in ours.tensors] == [int(t.data_offset) for t in ref.tensors]
    assert [t.elements for t in ours.tensors] == [int(t.n_elements) for t in ref.tensors]
    assert [t.nbytes for t in ours.tensors] == [int(t.n_bytes) for t in ref.tensors]
    assert list(ours.kvs) == [k for k in ref.fields if not k.startswith("GGUF.")]
    assert ours.data_start == ref.data_offset
    assert ours.alignment == ref.alignment
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        kv = ours.kvs[key]
        assert kv.vtype == int(field.types[0])
        if kv.vtype == T.ARRAY:
            assert kv.count == len(field.data)
            assert kv.elem_type == int(field.types[1])
        else:
            ref_value = field.contents()
            assert (
                kv.value == pytest.approx(ref_value)
                if isinstance(ref_value, float)
                else kv.value == ref_value
            )


def test_type_table_matches_gguf_py_except_known_skew() -> None:
    gguf_py = pytest.importorskip("gguf")
    for qtype, (block, size) in gguf_py.GGML_QUANT_SIZES.items():
        ours = T.GGML_TYPES[int(qtype)]
        assert ours.name == qtype.name
        if qtype.name == "Q8_1":
            assert (ours.block, ours.size, size) == (32, 36, 40)  # ggml's block_q8_1 is 36 bytes
        else:
            assert (ours.block, ours.size) == (block, size), qtype.name
    assert set(T.GGML_TYPES) - {int(q) for q in gguf_py.GGMLQuantizationType} == {42}  # Q2_0, newer than 0.19
    assert set(T.GGML_TYPES).isdisjoint(T.REMOVED_GGML_TYPES)
    assert set(T.GGML_TYPES) | set(T.REMOVED_GGML_TYPES) == set(range(T.GGML_TYPE_COUNT))
    for ft in gguf_py.LlamaFileType:
        assert T.file_type_name(int(ft)) == ("GUESSED" if ft.name == "GUESSED" else ft.name)


def test_nominal_bits() -> None:
    bits = {name: (t.bits, t.numeric, t.quantized) for name, t in T.GGML_TYPE_BY_NAME.items()}
    assert bits["Q8_0"] == bits["Q8_K"] == bits["I8"] == (8, "int", True)
    assert bits["Q6_K"] == (6, "int", True)
    assert bits["Q4_K"] == bits["IQ4_XS"] == (4, "int", True)
    assert bits["MXFP4"] == bits["NVFP4"] == (4, "float", True)
    assert bits["TQ2_0"][0] == 2 and bits["TQ1_0"][0] == bits["IQ1_S"][0] == 1.58
    assert bits["F16"] == bits["BF16"] == (16, "float", False)
    assert bits["F32"] == (32, "float", False)


# ---- hostile input ------------------------------------------------------------------------------------


def test_128_byte_huge_array_rejected_fast() -> None:
    path = GGUF / "broken" / "huge_u8_array_128b.gguf"
    assert path.stat().st_size == 128
    started = time.perf_counter()
    inv = gguf.read(str(path))
    elapsed = time.perf_counter() - started
    assert [f.code for f in inv.structural_findings] == ["GGUF_LENGTH_PAST_EOF"]
    assert "50,000,000" in inv.structural_findings[0].message
    assert elapsed < 0.5  # milliseconds in practice; the bound only guards against a loop over 5e7


def test_huge_string_array_in_small_file(tmp_path: Path) -> None:
    # a string array whose count fits count*8 <= remaining, but whose strings run past the end
    body = struct.pack("<IQ", 8, 1000) + struct.pack("<Q", 10) + b"x" * 10 + b"\0" * 7987
    blob = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a" + struct.pack("<I", 9) + body
    path = tmp_path / "strings.gguf"
    path.write_bytes(blob)
    inv = gguf.read(str(path))
    assert [f.code for f in inv.structural_findings] == ["GGUF_LENGTH_PAST_EOF"]


def test_findings_are_capped_per_code(tmp_path: Path) -> None:
    # 100 tensors of type 99: 20 listed, then one info line saying how many more
    infos = b"".join(
        struct.pack("<Q", 4) + f"t{i:03d}".encode() + struct.pack("<IQIQ", 1, 32, 99, 0) for i in range(100)
    )
    blob = b"GGUF" + struct.pack("<IQQ", 3, 100, 0) + infos
    path = tmp_path / "many.gguf"
    path.write_bytes(blob + b"\0" * (-len(blob) % 32))
    found = gguf.read(str(path)).structural_findings
    assert [f.code for f in found].count("GGUF_UNKNOWN_TYPE") == 21
    assert found[-1].severity == "info" and found[-1].message.startswith("80 more")


DAMAGE_SOURCES = [
    GGUF / "base.gguf",
    GGUF / "model_mixed.gguf",
    GGUF / "broken" / "tail_padding_missing.gguf",
]
_BLOBS = {p.name: p.read_bytes() for p in DAMAGE_SOURCES}
_HEADER_END = {p.name: gguf.parse(str(p)).data_start for p in DAMAGE_SOURCES}


_OP = st.tuples(
    st.sampled_from(["flip", "ff", "truncate", "insert", "huge", "delete"]),
    st.floats(0, 1, exclude_max=True),  # where, as a fraction of the damaged range
    st.integers(0, 255),
    st.sampled_from([1 << 31, 1 << 32, 1 << 40, 1 << 62, (1 << 63) - 1, (1 << 64) - 1, 5 * 10**7]),
)


def apply_damage(name: str, header_only: bool, ops: list[tuple[str, float, int, int]]) -> bytes:
    """Damage a copy of a valid fixture; the ops (not the bytes) are what hypothesis shows on failure."""
    blob = bytearray(_BLOBS[name])
    for kind, where, byte, value in ops:
        limit = min(_HEADER_END[name] if header_only else len(blob), len(blob))
        pos = int(where * limit)
        if kind == "flip" and pos < len(blob):
            blob[pos] ^= 1 << (byte % 8)
        elif kind == "ff":
            blob[pos : pos + 1 + byte % 8] = b"\xff" * (1 + byte % 8)
        elif kind == "truncate":
            del blob[pos:]
        elif kind == "insert":
            blob[pos:pos] = bytes([byte]) * (1 + byte % 16)
        elif kind == "delete":
            del blob[pos : pos + 1 + byte % 16]
        elif kind == "huge":
            blob[pos : pos + 8] = struct.pack("<Q", value)
    return bytes(blob)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.sampled_from(sorted(_BLOBS)),
    header_only=st.booleans(),  # most damage should land in the header, where the structure is
    ops=st.lists(_OP, min_size=1, max_size=4),
)
def test_damage_gives_findings_never_exceptions(source: str, header_only: bool, ops: list) -> None:
    data = apply_damage(source, header_only, ops)
    fd, name = tempfile.mkstemp(suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        started = time.perf_counter()
        inv = gguf.read(name)
        elapsed = time.perf_counter() - started
    finally:
        os.unlink(name)
    assert elapsed < 1.0
    for finding in [*inv.structural_findings, *inv.semantic_findings]:
        assert finding.code in KNOWN_CODES, finding.code
        assert finding.message
    assert inv.to_dict()  # serialisable as the CLI would print it


def test_layer_kinds() -> None:
    assert gguf.layer_kind("token_embd.weight", 2) == "embedding"
    assert gguf.layer_kind("per_layer_token_embd.weight", 2) == "embedding"
    assert gguf.layer_kind("position_embd.weight", 2) == "embedding"
    assert gguf.layer_kind("v.patch_embd.weight", 4) == "conv"  # the patch-embedding convolution
    assert gguf.layer_kind("a.conv1d.0.weight", 3) == "conv"
    assert gguf.layer_kind("blk.0.ssm_conv1d.weight", 2) == "linear"  # 2-D: the rule needs >= 3 dims
    assert gguf.layer_kind("output.weight", 2) == "linear"


def test_kv_cache_formula() -> None:
    from quantgate.guards.gguf_dtypes import cache_bytes_per_element, kv_cache_bytes

    f16 = cache_bytes_per_element("f16")
    assert (
        f16 == (2, 1) and cache_bytes_per_element("Q8_0") == (34, 32) and cache_bytes_per_element("x") is None
    )
    # Llama-3.2-1B: 16 layers, 8 KV heads of 64 -> 32 KiB per token at f16
    hp = {"block_count": 16, "head_count": 32, "head_count_kv": 8, "embedding_length": 2048}
    assert kv_cache_bytes(hp, 4096, f16) == (16 * 4096 * 8 * (64 + 64) * 2, "")
    # per-layer KV head counts (e.g. OpenELM) and explicit key/value lengths
    hp = {
        "block_count": 3,
        "head_count": [4, 4, 4],
        "head_count_kv": [1, 2, 3],
        "key_length": 16,
        "value_length": 8,
    }
    assert kv_cache_bytes(hp, 10, f16) == (10 * (1 + 2 + 3) * (16 + 8) * 2, "")
    assert kv_cache_bytes({"block_count": 2}, 10, f16)[0] is None
