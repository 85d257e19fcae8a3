"""Format sniffing by content, never by extension."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from quantgate.formats.sniff import sniff, sniff_bytes


def _safetensors(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "empty"),
        (b"GGUF\x03\x00\x00\x00" + b"\x00" * 16, "gguf"),
        (b"\x1c\x00\x00\x00ET12" + b"\x00" * 24, "pte"),
        (b"\x1c\x00\x00\x00ET99" + b"\x00" * 24, "pte"),  # integrity says the identifier is wrong
        (b"\x44\x00\x00\x00FT01" + b"\x00" * 24, "ptd"),
        (_safetensors(b'{"__metadata__":{}}'), "safetensors"),
        (_safetensors(b'  {"a":{}}    '), "safetensors"),
        (b"\x08\x08\x12\x07pytorch", "onnx"),  # ir_version 8, producer_name
        (b"\x08\x07", "onnx"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 1\n", "lfs-pointer"),
        (b"PK\x03\x04rest", "unsupported"),
        (b"\x80\x04\x95", "unsupported"),
        (b"tjgg\x01\x00", "unsupported"),
        (b"hello world", "unknown"),
        (b"\x08\x00\x12", "unknown"),  # ir_version 0 is not a model
        (struct.pack("<Q", 10**12) + b"{", "safetensors"),  # header past the end: the reader reports it
        (struct.pack("<Q", 10**12) + b"x", "unknown"),
    ],
)
def test_sniff_bytes(data: bytes, fmt: str) -> None:
    assert sniff_bytes(data[:4096], len(data)).format == fmt


def test_sniff_ignores_extension(tmp_path: Path) -> None:
    misnamed = tmp_path / "model.onnx"
    misnamed.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 16)
    assert sniff(misnamed).format == "gguf"
    assert sniff(tmp_path / "missing").format == "unreadable"
