"""The minimum of flatbuffer reading the runtime guard needs (ETDump events, a program's chain 0).

Tables, vectors, strings and scalars over a `View`: every read bounds-checked, every vector length
checked against the bytes present before it is walked, every visit charged to a `Budget`. It is
private to `quantgate.runtime` and can move onto a shared `formats/flatbuffer.py` once one exists.
"""

from __future__ import annotations

from quantgate.formats.binary import Budget, View


class FlatbufferError(Exception):
    pass


class Tables:
    """Just enough flatbuffer: tables, vectors of tables, strings and scalars, all bounds-checked."""

    def __init__(self, view: View, budget: Budget):
        self.v = view
        self.budget = budget

    def field_pos(self, table: int, field_id: int) -> int | None:
        vtable = table - self.v.i32(table, "soffset")
        vlen = self.v.u16(vtable, "vtable")
        tlen = self.v.u16(vtable + 2, "vtable")
        if vlen < 4 or vlen % 2:
            raise FlatbufferError(f"bad vtable length {vlen} at offset {vtable}")
        slot = 4 + 2 * field_id
        if slot + 2 > vlen:
            return None
        rel = self.v.u16(vtable + slot, "vtable")
        if rel == 0:
            return None
        if rel >= tlen:
            raise FlatbufferError(f"field {field_id} at {rel} lies outside its table at offset {table}")
        return table + rel

    def deref(self, pos: int) -> int:
        target = pos + self.v.u32(pos, "uoffset")
        self.v.check(target, 4, "uoffset")
        return target

    def table(self, table: int, field_id: int) -> int | None:
        pos = self.field_pos(table, field_id)
        return None if pos is None else self.deref(pos)

    def vector(self, table: int, field_id: int, elem_size: int = 4) -> list[int]:
        """Positions of the elements of a vector field (for tables: positions of their uoffsets)."""
        pos = self.field_pos(table, field_id)
        if pos is None:
            return []
        start = self.deref(pos)
        count = self.v.u32(start, "vector length")
        self.v.check(start + 4, count * elem_size, "vector")
        self.budget.spend(count, "vector")
        return [start + 4 + i * elem_size for i in range(count)]

    def string(self, table: int, field_id: int) -> str:
        pos = self.field_pos(table, field_id)
        if pos is None:
            return ""
        start = self.deref(pos)
        size = self.v.u32(start, "string length")
        self.budget.spend(1 + size // 16, "string")
        return self.v.text(start + 4, size, "string")

    def scalar(self, table: int, field_id: int, kind: str, default: int) -> int:
        pos = self.field_pos(table, field_id)
        if pos is None:
            return default
        return int(getattr(self.v, kind)(pos, "scalar"))

    def ints(self, table: int, field_id: int, kind: str = "i32", size: int = 4) -> list[int]:
        return [int(getattr(self.v, kind)(pos, "vector")) for pos in self.vector(table, field_id, size)]
