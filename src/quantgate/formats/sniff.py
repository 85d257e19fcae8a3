"""Format sniffing by content, never by extension.

Each format's rule is its `sniff` in `formats.FORMATS` (the magic `GGUF`, an ExecuTorch `ETnn`
identifier, a safetensors header length then `{`, an ONNX ModelProto's first fields); this module
tries them in `formats.SNIFFING_ORDER` after the rules that say what a non-model file is: a release
manifest, an empty file, a Git LFS pointer, and a few known-but-unsupported formats, so that the
message says what the file is.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from quantgate.core.remote import is_url as remote_is_url
from quantgate.formats import FORMATS, SNIFFING_ORDER

# what a file is when it is none of formats.FORMATS
LFS_POINTER = "lfs-pointer"
EMPTY = "empty"
UNKNOWN = "unknown"
UNSUPPORTED = "unsupported"
UNREADABLE = "unreadable"
MANIFEST = "manifest"

# extensions that say "this file was meant to be a model" when its content is unrecognisable; they
# never decide the format, only whether an unrecognised file in a scanned folder is reported
MODEL_EXTENSIONS: tuple[str, ...] = tuple(ext for f in FORMATS.values() if f.model for ext in f.extensions)

MANIFEST_NAME = re.compile(r"^(.*[._-])?manifest\.json$", re.IGNORECASE)
LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
HEAD_BYTES = 4096

# known formats quantgate does not read: first bytes -> what to tell the user
_UNSUPPORTED = (
    ((b"PK\x03\x04",), "a zip archive (PyTorch .pt/.pth checkpoints are zips): not a supported format"),
    ((b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"),
     "a Python pickle: not a supported format, and never unpickled"),
    ((b"lmgg", b"fmgg", b"tjgg"), "a legacy GGML/GGMF/GGJT file: convert it to GGUF"),
)


@dataclass(frozen=True)
class Sniffed:
    format: str
    detail: str = ""


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
    for spec in SNIFFING_ORDER:
        detail = spec.sniff(head, size)
        if detail is not None:
            return Sniffed(spec.id, detail)
    for prefixes, what in _UNSUPPORTED:
        if head.startswith(prefixes):
            return Sniffed(UNSUPPORTED, what)
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
