"""Damaged safetensors files: only findings, never an exception, bounded time.

Real fixtures (a plain file, a compressed-tensors W4A16 and a bitsandbytes NF4 checkpoint with their
config.json, so the layout and config code runs too) are damaged with bit flips, 0xFF stamps,
truncations, insertions and huge numbers, mostly inside the JSON header where the structure lives.
Both the reader and the two guards run in-process on every example.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from conftest import FIXTURES
from quantgate.formats.safetensors import reader as st
from quantgate.formats.sniff import sniff
from quantgate.guards import get_guard
from quantgate.guards.base import GuardConfig, GuardContext, run_guard

ST = FIXTURES / "safetensors"
SOURCES = {
    "tiny": (ST / "broken" / "valid_tiny.safetensors", None),
    "ct_w4a16": (ST / "ct_w4a16" / "model.safetensors", ST / "ct_w4a16" / "config.json"),
    "bnb_nf4": (ST / "bnb_nf4" / "model.safetensors", ST / "bnb_nf4" / "config.json"),
}
DATA = {k: p.read_bytes() for k, (p, _) in SOURCES.items()}
PER_EXAMPLE_S = 3.0


def header_end(data: bytes) -> int:
    return 8 + struct.unpack_from("<Q", data, 0)[0]


@hs.composite
def damaged(draw: hs.DrawFn) -> tuple[str, bytes]:
    source = draw(hs.sampled_from(sorted(DATA)))
    data = bytearray(DATA[source])
    end = header_end(data)
    for _ in range(draw(hs.integers(1, 3))):
        # 85% of the damage lands in the length field or the JSON header
        limit = min(end, len(data))
        pos = draw(hs.integers(0, limit - 1)) if draw(hs.integers(0, 99)) < 85 else draw(
            hs.integers(0, len(data) - 1))
        op = draw(hs.sampled_from(["flip", "stamp", "truncate", "insert", "huge", "number"]))
        if op == "flip":
            data[pos] ^= 1 << draw(hs.integers(0, 7))
        elif op == "stamp":
            data[pos : pos + 8] = b"\xff" * len(data[pos : pos + 8])
        elif op == "truncate":
            del data[pos:]
            if not data:
                data = bytearray(b"\0")
        elif op == "insert":
            data[pos:pos] = draw(hs.binary(min_size=1, max_size=16))
        elif op == "huge" and len(data) >= 8:
            huge = draw(hs.sampled_from([1 << 63, (1 << 64) - 1, 1 << 40, end + 1, 2]))
            struct.pack_into("<Q", data, 0, huge)
        elif op == "number":
            # replace one number in the header with a huge or negative one (shapes, offsets, counts)
            numbers = list(re.finditer(rb"\d+", bytes(data[8:limit])))
            if numbers:
                m = numbers[draw(hs.integers(0, len(numbers) - 1))]
                new = draw(hs.sampled_from([b"18446744073709551615", b"99999999999999999999999", b"-1",
                                            b"0", b"4294967296", b"1e308"]))
                data[8 + m.start() : 8 + m.end()] = new
                end += len(new) - (m.end() - m.start())
                struct.pack_into("<Q", data, 0, end - 8)
    return source, bytes(data)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {}
    for name, (_, config) in SOURCES.items():
        d = tmp_path_factory.mktemp(name)
        if config is not None:
            shutil.copy(config, d / "config.json")
        dirs[name] = d
    return dirs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=damaged())
def test_damage_gives_findings_never_exceptions(workdir: dict[str, Path], case: tuple[str, bytes]) -> None:
    source, blob = case
    path = workdir[source] / "model.safetensors"
    path.write_bytes(blob)
    started = time.perf_counter()
    inv = st.read(str(path))  # must not raise
    assert all(f.code in st.FINDING_CODES or f.code == "FILE_UNREADABLE"
               for f in inv.structural_findings + inv.semantic_findings)
    ctx = GuardContext(str(path), sniff(path), os.path.getsize(path))
    for gid in ("integrity", "safetensors-dtypes"):
        # the scale scan reads tensor data, so damage in the data region reaches it too
        config = GuardConfig(params={"scan_scales": 1} if gid == "safetensors-dtypes" else {})
        result = run_guard(get_guard(gid), ctx, config)
        assert result.status in ("PASS", "FAIL", "WARN", "SKIP"), (gid, result.error)
    assert time.perf_counter() - started < PER_EXAMPLE_S


def test_huge_header_length_is_rejected_fast(tmp_path: Path) -> None:
    """A 128-byte file that declares a near-limit header: rejected in milliseconds, nothing allocated."""
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 99_999_999) + b"{" + b" " * 119)
    started = time.perf_counter()
    inv = st.read(str(path))
    assert time.perf_counter() - started < 0.5
    assert [f.code for f in inv.structural_findings] == ["ST_HEADER_PAST_EOF"]


INDEX = (ST / "sharded" / "model.safetensors.index.json").read_bytes()


@hs.composite
def damaged_index(draw: hs.DrawFn) -> bytes:
    data = bytearray(INDEX)
    for _ in range(draw(hs.integers(1, 4))):
        if not data:
            break
        pos = draw(hs.integers(0, len(data) - 1))
        op = draw(hs.sampled_from(["flip", "truncate", "insert", "swap"]))
        if op == "flip":
            data[pos] ^= 1 << draw(hs.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            junk = [b"null", b"[]", b"{}", b"1e999", b'"../x"', b'"a/b"', b"-1"]
            data[pos:pos] = draw(hs.sampled_from(junk))
        elif op == "swap" and data:  # a JSON value of another type where a shard name or size stood
            text = bytes(data)
            for old, new in ((b'"model-00002-of-00004.safetensors"', b"7"), (b"180864", b'"big"'),
                             (b'"weight_map"', b'"weight_mop"')):
                if old in text and draw(hs.booleans()):
                    text = text.replace(old, new, 1)
            data = bytearray(text)
    return bytes(data)


@pytest.fixture(scope="module")
def sharded_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sharded")
    for p in (ST / "sharded").iterdir():
        shutil.copy(p, d / p.name)
    return d


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=damaged_index())
def test_damaged_index_gives_findings(sharded_copy: Path, index: bytes) -> None:
    (sharded_copy / "model.safetensors.index.json").write_bytes(index)
    for shard in ("model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors"):
        path = sharded_copy / shard
        started = time.perf_counter()
        st.read(str(path))
        result = run_guard(get_guard("integrity"), GuardContext(str(path), sniff(path), path.stat().st_size),
                           GuardConfig())
        assert result.status in ("PASS", "FAIL", "WARN"), result.error
        assert time.perf_counter() - started < PER_EXAMPLE_S
