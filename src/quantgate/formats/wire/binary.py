"""Bounded binary reads over a hostile buffer, shared by every reader.

`struct.unpack_from` accepts negative offsets (it reads from the end) and slicing silently clamps,
so neither is a bounds check. Every read here checks `0 <= pos` and `pos + size <= len` itself and
raises `OutOfBounds`, which a reader turns into a finding with the offset and the field it was
reading. `Budget` caps the records a reader may visit in proportion to the file size, so a small
file cannot make it do unbounded work.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quantgate.core.remote import basename, is_url, open_file

if TYPE_CHECKING:
    from quantgate.core.remote import RemoteFile

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I16 = struct.Struct("<h")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


class ReadError(Exception):
    """Base of the reader-internal errors; readers convert them into findings."""

    def __init__(self, message: str, offset: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.field = field


class OutOfBounds(ReadError):
    pass


class BudgetExhausted(ReadError):
    pass


class Budget:
    """A visit budget proportional to the file size (docs/architecture.md#hostile-input)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    @classmethod
    def for_size(cls, size: int, base: int = 10_000, per_byte: float = 1.0) -> Budget:
        return cls(base + int(size * per_byte))

    def spend(self, n: int = 1, where: str | None = None) -> None:
        self.used += n
        if self.used > self.limit:
            raise BudgetExhausted(
                f"read budget of {self.limit} records exhausted" + (f" while reading {where}" if where else ""),
                field=where,
            )


@dataclass
class View:
    """Little-endian reads with bounds checks over bytes, a memoryview or an mmap."""

    buf: bytes | bytearray | memoryview | mmap.mmap

    def __len__(self) -> int:
        return len(self.buf)

    def ensure(self, pos: int, size: int) -> None:
        """Make [pos, pos + size) readable through `buf` directly: a no-op but for a remote file."""

    def check(self, pos: int, size: int, field: str | None = None) -> None:
        if pos < 0 or size < 0 or pos + size > len(self.buf):
            raise OutOfBounds(
                f"{size} byte(s) at offset {pos} run past the end of the file ({len(self.buf)} bytes)"
                if pos >= 0 and size >= 0
                else f"negative offset or length ({pos}, {size})",
                offset=pos,
                field=field,
            )

    def _unpack(self, fmt: struct.Struct, pos: int, field: str | None) -> int | float:
        self.check(pos, fmt.size, field)
        return fmt.unpack_from(self.buf, pos)[0]

    def u8(self, pos: int, field: str | None = None) -> int:
        return int(self._unpack(_U8, pos, field))

    def u16(self, pos: int, field: str | None = None) -> int:
        return int(self._unpack(_U16, pos, field))

    def i16(self, pos: int, field: str | None = None) -> int:
        return int(self._unpack(_I16, pos, field))

    def u32(self, pos: int, field: str | None = None) -> int:
        return int(self._unpack(_U32, pos, field))

    def i32(self, pos: int, field: str | None = None) -> int:
        return int(self._unpack(_I32, pos, field))

    def u64(self, pos: int, field: str | None = None) -> int:
        return int(self._unpack(_U64, pos, field))

    def i64(self, pos: int, field: str | None = None) -> int:
        return int(self._unpack(_I64, pos, field))

    def f32(self, pos: int, field: str | None = None) -> float:
        return float(self._unpack(_F32, pos, field))

    def f64(self, pos: int, field: str | None = None) -> float:
        return float(self._unpack(_F64, pos, field))

    def bytes(self, pos: int, size: int, field: str | None = None) -> bytes:
        self.check(pos, size, field)
        return bytes(self.buf[pos : pos + size])

    def text(self, pos: int, size: int, field: str | None = None, limit: int = 1 << 20) -> str:
        """Decode UTF-8 with replacement (never pass raw bytes on); long strings are cut at limit."""
        self.check(pos, size, field)
        return bytes(self.buf[pos : pos + min(size, limit)]).decode("utf-8", errors="replace")


class RemoteView(View):
    """A View over a remote file (quantgate.core.remote): every checked read fetches its blocks first."""

    def __init__(self, buf: bytes | mmap.mmap, remote: object):
        super().__init__(buf)
        self.remote = remote

    def ensure(self, pos: int, size: int) -> None:
        self.remote.ensure(pos, size)  # type: ignore[attr-defined]

    def _unpack(self, fmt: struct.Struct, pos: int, field: str | None) -> int | float:
        self.check(pos, fmt.size, field)
        self.ensure(pos, fmt.size)
        return fmt.unpack_from(self.buf, pos)[0]

    def bytes(self, pos: int, size: int, field: str | None = None) -> bytes:
        self.check(pos, size, field)
        self.ensure(pos, size)
        return bytes(self.buf[pos : pos + size])

    def text(self, pos: int, size: int, field: str | None = None, limit: int = 1 << 20) -> str:
        self.check(pos, size, field)
        self.ensure(pos, min(size, limit))
        return bytes(self.buf[pos : pos + min(size, limit)]).decode("utf-8", errors="replace")


def file_size(path: str | os.PathLike[str]) -> int:
    if is_url(path):
        return open_file(str(path)).size
    return os.stat(path).st_size


@contextmanager
def mapped(path: str | os.PathLike[str]) -> Iterator[View]:
    """Memory-map a file read-only; an empty file gives an empty view (mmap refuses size 0). A URL
    gives a RemoteView with the region its format's reader walks directly already fetched."""
    if is_url(path):
        remote = open_file(str(path))
        view = RemoteView(remote.buf, remote)
        prefetch(view, remote)
        yield view
        return
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            yield View(b"")
            return
        mm = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield View(mm)
        finally:
            mm.close()


def read_head(path: str | os.PathLike[str], size: int) -> bytes:
    if is_url(path):
        remote = open_file(str(path))
        return remote.read(0, min(size, remote.size))
    with open(path, "rb") as handle:
        return handle.read(size)


# --- what a format's reader walks outside View.check, fetched ahead for a URL ----------------------

def prefetch(view: View, rf: RemoteFile) -> None:
    """Fetch ahead the region the format's reader walks directly: its reader module's
    `remote_extent(view, head, block)` says where that region ends; a file of no known format is
    fetched whole (capped by QUANTGATE_REMOTE_MAX_BYTES)."""
    if rf.size == 0:
        return
    from quantgate import formats
    from quantgate.formats import sniff as S

    head = rf.read(0, min(rf.size, S.HEAD_BYTES))
    spec = formats.FORMATS.get(S.sniff_bytes(head, rf.size, basename(rf.url)).format)
    end = formats.load(f"{spec.reader}:remote_extent")(view, head, rf.block) if spec else rf.size
    rf.ensure(0, end if 0 < end <= rf.size else rf.size)
