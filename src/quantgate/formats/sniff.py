"""Format sniffing by content, never by extension.

- ExecuTorch program: the flatbuffer identifier at bytes 4-8 (`ET12`; any `ETnn` is sniffed as a
  PTE so that `integrity` can say the identifier is wrong rather than "unknown format").
- GGUF: the magic `GGUF` at byte 0.
- safetensors: a u64 little-endian header length N that fits the file, then `{` (after optional
  spaces, which the reference implementation accepts).
- ONNX: no magic; a protobuf ModelProto starts with `ir_version` (field 1, varint) followed by
  another known ModelProto field. The ONNX reader then parses the whole structure.
- A Git LFS pointer, an empty file, and a few known-but-unsupported formats, so that the message
  says what the file is.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass

from quantgate.core.remote import is_url as remote_is_url

PTE = "pte"
PTD = "ptd"
GGUF = "gguf"
SAFETENSORS = "safetensors"
ONNX = "onnx"
LFS_POINTER = "lfs-pointer"
EMPTY = "empty"
UNKNOWN = "unknown"
UNSUPPORTED = "unsupported"
UNREADABLE = "unreadable"
MANIFEST = "manifest"

MODEL_FORMATS = (PTE, GGUF, SAFETENSORS, ONNX)
# extensions that say "this file was meant to be a model" when its content is unrecognisable; they
# never decide the format, only whether an unrecognised file in a scanned folder is reported
MODEL_EXTENSIONS = (".pte", ".gguf", ".safetensors", ".onnx", ".ort")

MANIFEST_NAME = re.compile(r"^(.*[._-])?manifest\.json$", re.IGNORECASE)
LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
HEAD_BYTES = 4096

# ModelProto field number -> protobuf wire type (0 varint, 2 length-delimited)
_ONNX_MODEL_FIELDS = {
    1: 0,  # ir_version
    2: 2,  # producer_name
    3: 2,  # producer_version
    4: 2,  # domain
    5: 0,  # model_version
    6: 2,  # doc_string
    7: 2,  # graph
    8: 2,  # opset_import
    14: 2,  # metadata_props
    20: 2,  # training_info
    25: 2,  # functions
    26: 2,  # configuration
}


@dataclass(frozen=True)
class Sniffed:
    format: str
    detail: str = ""


def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    return None


def looks_like_onnx(head: bytes, size: int) -> bool:
    """ir_version first, then a second known ModelProto field that fits the file."""
    if len(head) < 2 or head[0] != 0x08:
        return False
    parsed = _varint(head, 1)
    if parsed is None:
        return False
    ir_version, pos = parsed
    if not 1 <= ir_version <= 64:
        return False
    if pos == size:  # a model with nothing but ir_version is still an (empty) ONNX model
        return True
    tag = _varint(head, pos)
    if tag is None:
        return False
    key, pos = tag
    field_no, wire = key >> 3, key & 7
    if _ONNX_MODEL_FIELDS.get(field_no) != wire:
        return False
    if wire == 2:
        length = _varint(head, pos)
        return length is not None and length[1] + length[0] <= size
    return True


def looks_like_manifest(head: bytes, name: str) -> bool:
    """A release manifest: JSON named like one, or JSON carrying a manifest's own keys."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if MANIFEST_NAME.match(name):
        return not text.startswith((b"GGUF",)) and b"ET12" not in head[4:8]
    return text[:1] == b"{" and (b'"manifest_version"' in head or b'"pte_file"' in head)


def sniff_bytes(head: bytes, size: int, name: str = "") -> Sniffed:
    if looks_like_manifest(head, name):
        return Sniffed(MANIFEST, "a release manifest")
    if size == 0:
        return Sniffed(EMPTY, "the file has zero bytes")
    if head.startswith(LFS_PREFIX):
        return Sniffed(LFS_POINTER, "a Git LFS pointer file")
    if head[:4] == b"GGUF":
        return Sniffed(GGUF)
    if len(head) >= 8 and head[4:6] == b"ET" and head[6:8].isdigit():
        return Sniffed(PTE, head[4:8].decode("ascii"))
    if len(head) >= 8 and head[4:6] == b"FT" and head[6:8].isdigit():
        return Sniffed(PTD, head[4:8].decode("ascii"))
    if len(head) >= 9:
        (header_len,) = struct.unpack_from("<Q", head, 0)
        # a length past the end still sniffs as safetensors when the JSON starts at byte 8, so that
        # the reader can say "header runs past the end" instead of "unknown format"
        if header_len >= 2 and head[8:].lstrip(b" ")[:1] == b"{":
            return Sniffed(SAFETENSORS)
    if looks_like_onnx(head, size):
        return Sniffed(ONNX)
    if head[:4] == b"PK\x03\x04":
        return Sniffed(UNSUPPORTED, "a zip archive (PyTorch .pt/.pth checkpoints are zips): not a supported format")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return Sniffed(UNSUPPORTED, "a Python pickle: not a supported format, and never unpickled")
    if head[:4] in (b"lmgg", b"fmgg", b"tjgg"):
        return Sniffed(UNSUPPORTED, "a legacy GGML/GGMF/GGJT file: convert it to GGUF")
    return Sniffed(UNKNOWN, f"unrecognised content (first bytes {head[:8].hex()})")


def sniff(path: str | os.PathLike[str]) -> Sniffed:
    if remote_is_url(path):
        from quantgate.core import remote

        try:
            rf = remote.open_file(path)
            head = rf.read(0, min(HEAD_BYTES, rf.size))
        except remote.RemoteError as exc:
            return Sniffed(UNREADABLE, str(exc))
        return sniff_bytes(head, rf.size, remote.basename(path))
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; whatever was
    # opened is then checked to be a regular file before a byte is read
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        return Sniffed(UNREADABLE, exc.strerror or str(exc))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Sniffed(UNREADABLE, "not a regular file (a FIFO, socket, device or folder); never read")
        size = st.st_size
        head = os.read(fd, HEAD_BYTES)
    except OSError as exc:
        return Sniffed(UNREADABLE, exc.strerror or str(exc))
    finally:
        os.close(fd)
    return sniff_bytes(head, size, os.path.basename(os.fspath(path)))
