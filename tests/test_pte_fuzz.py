"""Damaged copies of real `.pte` fixtures (bit flips, 0xFF words, truncations, insertions, header
lies): the reader returns findings, never raises, and stays fast."""

from __future__ import annotations

import struct
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from quantgate.core.inventory import Inventory
from quantgate.formats.pte import reader, xnnpack

SOURCES = {
    name: (FIXTURES / "pte" / name).read_bytes()
    for name in (
        "int8_xnnpack.pte",
        "int8_xnnpack_inline.pte",
        "int8_portable.pte",
        "8da4w_emb4_xnnpack.pte",
        "conv_int8_xnnpack.pte",
        "qkv_cache_portable.pte",
        "ext/fp32_portable_extconst.pte",
        "more/opaque_demo_backend.pte",
        "more/two_methods.pte",
        "more/dynamic_xnnpack.pte",
    )
}
KNOWN = {*reader.FINDING_CODES, *xnnpack.FINDING_CODES, "READ_BUDGET_EXHAUSTED", "FILE_UNREADABLE"}
LIMIT_S = 2.0
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _read(data: bytes) -> Inventory:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pte"
        path.write_bytes(data)
        started = time.perf_counter()
        inv = reader.read(str(path))
        elapsed = time.perf_counter() - started
    assert elapsed < LIMIT_S, f"read took {elapsed:.2f} s"
    assert isinstance(inv, Inventory)
    for finding in inv.structural_findings + inv.semantic_findings:
        assert finding.code in KNOWN, finding.code
    for layer in inv.layers:
        assert layer.params >= 0
    return inv


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(SOURCES[draw(st.sampled_from(sorted(SOURCES)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "stamp", "truncate", "insert", "header"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "stamp":
            pos -= pos % 4
            data[pos : pos + 4] = b"\xff\xff\xff\xff"
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif len(data) >= 40:
            # a lie in the root offset or the extended header's u64 sizes
            field = draw(st.sampled_from([0, 12, 16, 24, 32]))
            value = draw(st.sampled_from([0, 1, 7, len(data), len(data) + 1, 1 << 31, (1 << 64) - 1]))
            if field in (0, 12):
                data[field : field + 4] = struct.pack("<I", value & 0xFFFFFFFF)
            else:
                data[field : field + 8] = struct.pack("<Q", value)
    return bytes(data)


@SETTINGS
@given(damaged())
def test_damaged_programs_give_findings_not_exceptions(data: bytes) -> None:
    _read(data)


@SETTINGS
@given(st.sampled_from(sorted(SOURCES)), st.data())
def test_every_aligned_ff_word_in_the_flatbuffer(name: str, draw: st.DataObject) -> None:
    data = bytearray(SOURCES[name])
    end = min(len(data), struct.unpack_from("<Q", data, 16)[0] if data[8:12] == b"eh00" else len(data))
    pos = draw.draw(st.integers(0, max(0, end // 4 - 1))) * 4
    data[pos : pos + 4] = b"\xff\xff\xff\xff"
    _read(bytes(data))


def test_every_truncation_of_a_small_program_is_a_finding() -> None:
    data = SOURCES["int8_xnnpack.pte"]
    for cut in range(0, len(data), 97):
        inv = _read(data[:cut])
        assert inv.structural_findings, cut


# -- the shared flatbuffer walker on arbitrary bytes: only ReadError subclasses escape ----------------
def _walk(fb, table: int, depth: int = 0) -> None:
    """Touch every field id 0..9 as each kind a schema could give it, recursing into tables."""
    from quantgate.formats.wire.flatbuffer import SIZES

    for fid in range(10):
        for kind in SIZES:
            fb.scalar(table, fid, kind, 0)
        fb.string(table, fid)
        fb.byte_span(table, fid)
        fb.scalars(table, fid, "i64")
        fb.union(table, fid)
        if depth < 3:
            sub = fb.table(table, fid)
            if sub is not None:
                _walk(fb, sub, depth + 1)
            for t in fb.tables(table, fid)[:4]:
                _walk(fb, t, depth + 1)


def _walk_guarded(data: bytes, start: int = 0) -> None:
    from quantgate.formats.wire.binary import ReadError, View
    from quantgate.formats.wire.flatbuffer import FlatBuffer

    try:
        fb = FlatBuffer(View(data), start=start)
        fb.identifier()
        _walk(fb, fb.root())
    except ReadError:
        pass


@SETTINGS
@given(st.binary(min_size=0, max_size=512), st.integers(0, 16))
def test_flatbuffer_walker_on_random_bytes(data: bytes, start: int) -> None:
    _walk_guarded(data, start)


@SETTINGS
@given(damaged())
def test_flatbuffer_walker_on_damaged_programs(data: bytes) -> None:
    started = time.perf_counter()
    _walk_guarded(data)
    assert time.perf_counter() - started < LIMIT_S
