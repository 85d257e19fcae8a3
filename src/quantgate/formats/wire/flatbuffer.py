"""A bounded flatbuffer table reader over a hostile buffer (no generated code, no object API).

Flatbuffers have no verifier in Python and the generated accessors trust every length, so this
reader checks everything itself: every read inside the buffer's window, every uoffset forward and
in range, every vtable whole and well-formed, every vector's length against the bytes present
before anything is walked, and every visit charged to a `Budget` proportional to the file size
(shared offsets can make a small file describe millions of logical objects).

API (positions are absolute offsets into the `View`; a "table" is the position of a table):

    fb = FlatBuffer(view, budget, start=0, end=None)   # window [start, end) of the view
    fb.identifier()              -> bytes  (the 4 bytes after the root offset)
    fb.root()                    -> table
    fb.has(t, fid)               -> bool   (field present in the vtable)
    fb.scalar(t, fid, kind, default)       kind: bool u8 i8 u16 i16 u32 i32 u64 i64 f32 f64
    fb.table(t, fid)             -> table | None
    fb.string(t, fid, default="")-> str    (UTF-8 with replacement, length-checked)
    fb.vector(t, fid, elem_size) -> Vector | None  (start of the elements, count; bytes checked)
    fb.scalars(t, fid, kind)     -> list   (a vector of scalars, budgeted)
    fb.tables(t, fid)            -> list[table]  (a vector of tables, budgeted)
    fb.strings(t, fid)           -> list[str]
    fb.union(t, fid)             -> (tag, table | None)   fid = the id of the `_type` field
    fb.byte_span(t, fid)         -> (start, length) | None  ([u8]/[ubyte] without copying)

Field ids are schema ids (vtable slot = 4 + 2 * id). Every defect raises `FlatbufferError` (a
`ReadError` carrying `offset` and `field`), which the format reader turns into a finding; budget
overruns raise `BudgetExhausted`. Callers still validate enum/union tags and cross-references:
this module only guarantees that what it returns was read from inside the window.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from quantgate.formats.wire.binary import Budget, OutOfBounds, ReadError, View

# kind -> (struct, size)
_KINDS: dict[str, struct.Struct] = {
    "bool": struct.Struct("<B"),
    "u8": struct.Struct("<B"),
    "i8": struct.Struct("<b"),
    "u16": struct.Struct("<H"),
    "i16": struct.Struct("<h"),
    "u32": struct.Struct("<I"),
    "i32": struct.Struct("<i"),
    "u64": struct.Struct("<Q"),
    "i64": struct.Struct("<q"),
    "f32": struct.Struct("<f"),
    "f64": struct.Struct("<d"),
}
SIZES: dict[str, int] = {k: s.size for k, s in _KINDS.items()}

# a vector of bytes costs 1 + n/16 visits, a string likewise: reading them is cheap, walking is not
_BYTES_PER_VISIT = 16


class FlatbufferError(ReadError):
    """A structural defect in a flatbuffer (bad offset, vtable, length); has `offset` and `field`."""


@dataclass(frozen=True)
class Vector:
    """A length-checked vector: `count` elements of `elem_size` bytes from `start`."""

    start: int
    count: int
    elem_size: int

    def pos(self, i: int) -> int:
        return self.start + i * self.elem_size


class FlatBuffer:
    """Bounded reads of one flatbuffer that occupies the window [start, end) of a `View`.

    A flatbuffer embedded in a larger file (a delegate blob inside a .pte) is read by giving its
    window: offsets stay relative, and nothing outside the window is ever read.
    """

    def __init__(self, view: View, budget: Budget | None = None, start: int = 0, end: int | None = None):
        self.v = view
        self.start = start
        self.end = len(view) if end is None else min(end, len(view))
        if start < 0 or start > self.end:
            raise FlatbufferError(f"flatbuffer window [{start}, {end}) lies outside the data", offset=start)
        self.budget = budget if budget is not None else Budget.for_size(self.end - self.start)
        # table -> (vtable, vtable length, table length): a table's fields are usually read together,
        # so its vtable is checked once; entries are bounded by the visit budget
        self._vtables: dict[int, tuple[int, int, int]] = {}

    # -- raw reads, all inside the window -------------------------------------------------------
    def check(self, pos: int, size: int, field: str | None = None) -> None:
        if pos < self.start or size < 0 or pos + size > self.end:
            raise FlatbufferError(
                f"{size} byte(s) at offset {pos} lie outside the flatbuffer [{self.start}, {self.end})",
                offset=pos,
                field=field,
            )

    def read(self, kind: str, pos: int, field: str | None = None) -> int | float | bool:
        fmt = _KINDS[kind]
        if pos < self.start or pos + fmt.size > self.end:
            self.check(pos, fmt.size, field)  # raises with the message
        try:
            value = fmt.unpack_from(self.v.buf, pos)[0]
        except (struct.error, ValueError, IndexError) as exc:  # a mmap closed under us, a short buffer
            raise OutOfBounds(f"cannot read {kind} at offset {pos}: {exc}", offset=pos, field=field) from None
        return bool(value) if kind == "bool" else value

    def _u32(self, pos: int, field: str | None) -> int:
        return int(self.read("u32", pos, field))

    def deref(self, pos: int, field: str | None = None) -> int:
        """Follow the uoffset stored at `pos` (unsigned, so always forward)."""
        target = pos + self._u32(pos, field)
        self.check(target, 4, field)
        return target

    # -- header -------------------------------------------------------------------------------
    def identifier(self) -> bytes:
        self.check(self.start + 4, 4, "identifier")
        return bytes(self.v.buf[self.start + 4 : self.start + 8])

    def root(self) -> int:
        root = self.deref(self.start, "root offset")
        self._check_table(root, "root table")
        return root

    # -- tables -------------------------------------------------------------------------------
    def _check_table(self, table: int, field: str | None) -> None:
        if (table - self.start) % 4:
            raise FlatbufferError(f"table at offset {table} is not 4-byte aligned", offset=table, field=field)
        self.budget.spend(1, field)

    def _vtable(self, table: int, field: str | None) -> tuple[int, int, int]:
        cached = self._vtables.get(table)
        if cached is not None:
            return cached
        soffset = int(self.read("i32", table, field))
        vtable = table - soffset
        self.check(vtable, 4, field)
        vlen = int(self.read("u16", vtable, field))
        tlen = int(self.read("u16", vtable + 2, field))
        if vlen < 4 or vlen % 2:
            raise FlatbufferError(f"bad vtable length {vlen} at offset {vtable}", offset=vtable, field=field)
        self.check(vtable, vlen, field)
        if tlen < 4:
            raise FlatbufferError(f"bad table length {tlen} at offset {table}", offset=table, field=field)
        self.check(table, tlen, field)
        self._vtables[table] = (vtable, vlen, tlen)
        return vtable, vlen, tlen

    def field_pos(self, table: int, field_id: int, field: str | None = None) -> int | None:
        """Absolute position of a field's inline value, or None when absent (default value)."""
        vtable, vlen, tlen = self._vtable(table, field)
        slot = 4 + 2 * field_id
        if slot + 2 > vlen:
            return None
        rel = int(self.read("u16", vtable + slot, field))
        if rel == 0:
            return None
        if rel < 4 or rel >= tlen:
            raise FlatbufferError(
                f"field {field_id} at +{rel} lies outside its table at offset {table} (length {tlen})",
                offset=table,
                field=field,
            )
        return table + rel

    def has(self, table: int, field_id: int) -> bool:
        return self.field_pos(table, field_id) is not None

    def scalar(self, table: int, field_id: int, kind: str, default: int | float | bool = 0, field: str | None = None):
        pos = self.field_pos(table, field_id, field)
        if pos is None:
            return default
        return self.read(kind, pos, field)

    def table(self, table: int, field_id: int, field: str | None = None) -> int | None:
        pos = self.field_pos(table, field_id, field)
        if pos is None:
            return None
        target = self.deref(pos, field)
        self._check_table(target, field)
        return target

    def union(self, table: int, type_field_id: int, field: str | None = None) -> tuple[int, int | None]:
        """(tag, table) of a union whose `_type` field has id `type_field_id`; the value is id + 1."""
        tag = int(self.scalar(table, type_field_id, "u8", 0, field))
        if tag == 0:
            return 0, None
        return tag, self.table(table, type_field_id + 1, field)

    # -- vectors and strings ------------------------------------------------------------------
    def vector(self, table: int, field_id: int, elem_size: int, field: str | None = None) -> Vector | None:
        """The vector field's elements, with `count * elem_size` checked against the bytes present."""
        pos = self.field_pos(table, field_id, field)
        if pos is None:
            return None
        start = self.deref(pos, field)
        count = self._u32(start, field)
        self.check(start + 4, count * elem_size, field)
        return Vector(start + 4, count, elem_size)

    def scalars(self, table: int, field_id: int, kind: str, field: str | None = None) -> list:
        vec = self.vector(table, field_id, SIZES[kind], field)
        if vec is None:
            return []
        self.budget.spend(1 + (vec.count * vec.elem_size) // _BYTES_PER_VISIT, field)
        fmt = _KINDS[kind]
        out = [v[0] for v in fmt.iter_unpack(bytes(self.v.buf[vec.start : vec.start + vec.count * vec.elem_size]))]
        return [bool(x) for x in out] if kind == "bool" else out

    def tables(self, table: int, field_id: int, field: str | None = None) -> list[int]:
        """Positions of the tables in a vector of tables (each one checked when visited)."""
        vec = self.vector(table, field_id, 4, field)
        if vec is None:
            return []
        self.budget.spend(vec.count, field)
        out = []
        for i in range(vec.count):
            target = self.deref(vec.pos(i), field)
            self._check_table(target, field)
            out.append(target)
        return out

    def _string_at(self, start: int, field: str | None, limit: int) -> str:
        size = self._u32(start, field)
        self.check(start + 4, size, field)
        self.budget.spend(1 + size // _BYTES_PER_VISIT, field)
        return bytes(self.v.buf[start + 4 : start + 4 + min(size, limit)]).decode("utf-8", errors="replace")

    def string(
        self, table: int, field_id: int, default: str = "", field: str | None = None, limit: int = 1 << 16
    ) -> str:
        """A string field decoded with replacement; strings longer than `limit` are cut."""
        pos = self.field_pos(table, field_id, field)
        if pos is None:
            return default
        return self._string_at(self.deref(pos, field), field, limit)

    def strings(self, table: int, field_id: int, field: str | None = None, limit: int = 1 << 16) -> list[str]:
        vec = self.vector(table, field_id, 4, field)
        if vec is None:
            return []
        self.budget.spend(vec.count, field)
        return [self._string_at(self.deref(vec.pos(i), field), field, limit) for i in range(vec.count)]

    def byte_span(self, table: int, field_id: int, field: str | None = None) -> tuple[int, int] | None:
        """(start, length) of a [ubyte] vector, checked but not copied."""
        vec = self.vector(table, field_id, 1, field)
        if vec is None:
            return None
        self.budget.spend(1, field)
        return vec.start, vec.count
