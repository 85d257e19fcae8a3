"""A bounded protobuf wire-format scanner over a `View` (no generated code, no protobuf library).

It walks one message's fields at a time and hands back where each value lives; length-delimited
values (strings, bytes, sub-messages, packed arrays) are returned as (offset, length) and never
copied, so skipping a gigabyte of `raw_data` costs one varint. Every step is checked:

- a varint longer than 10 bytes, or cut by the end of its message, is an error;
- a length-delimited field must fit in what remains of its enclosing message (not just the file);
- wire types 3/4 (groups, deprecated and unused by the formats we read), 6 and 7 are errors;
- nesting depth is capped by the caller passing `depth`, and every field costs one unit of a
  `Budget` proportional to the file size.

Errors are `ReadError` subclasses carrying the offset, so a reader turns them into findings.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from quantgate.formats.wire.binary import Budget, ReadError, View

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

MAX_VARINT_BYTES = 10
DEFAULT_MAX_DEPTH = 64

_HIGH_BYTES = bytes(range(128, 256))
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


class Truncated(ReadError):
    """A field's tag or value runs past the end of its message."""


class LengthPastEnd(ReadError):
    """A length-delimited field declares more bytes than its message holds."""


class BadWireType(ReadError):
    """A tag carries a wire type that is not 0, 1, 2 or 5."""


class VarintTooLong(ReadError):
    """A varint has more than 10 bytes."""


class DepthExceeded(ReadError):
    """Messages nest deeper than the limit."""


class Field(NamedTuple):
    """One field: its number and wire type, where its tag starts, and its value.

    For VARINT/I64/I32 `value` is the unsigned integer; for LEN it is the payload offset and
    `length` the payload size (nothing is read from the payload).
    """

    number: int
    wire: int
    tag_offset: int
    value: int
    length: int = 0

    @property
    def end(self) -> int:
        return self.value + self.length


def to_signed64(value: int) -> int:
    """A varint-encoded int64/int32 (negative numbers take 10 bytes, two's complement)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


class Scanner:
    """Field iteration over a View with a shared budget and depth limit."""

    def __init__(self, view: View, budget: Budget | None = None, max_depth: int = DEFAULT_MAX_DEPTH):
        self.view = view
        self.buf = view.buf
        self.budget = budget or Budget.for_size(len(view))
        self.max_depth = max_depth

    def varint(self, pos: int, end: int, field: str | None = None) -> tuple[int, int]:
        """Decode a varint at pos that must end before `end`; returns (value, next position)."""
        buf = self.buf
        value = 0
        shift = 0
        start = pos
        while True:
            if pos >= end:
                raise Truncated(
                    f"varint at offset {start} is cut off at offset {end}", offset=start, field=field
                )
            if pos - start >= MAX_VARINT_BYTES:
                raise VarintTooLong(
                    f"varint at offset {start} is longer than 10 bytes", offset=start, field=field
                )
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7

    def check_message(self, start: int, end: int, depth: int, where: str | None = None) -> None:
        """What fields() checks before the first field: the depth limit and the message's bounds."""
        if depth > self.max_depth:
            raise DepthExceeded(
                f"messages nest deeper than {self.max_depth} levels at offset {start}",
                offset=start,
                field=where,
            )
        if start < 0 or end > len(self.view) or start > end:
            raise LengthPastEnd(f"message [{start}, {end}) is outside the file", offset=start, field=where)

    def skip(self, key: int, tag_offset: int, pos: int, end: int, where: str | None = None) -> int:
        """For a caller that decodes a message's fields inline: past the value of the non-LEN field
        whose tag `key` ends at `pos`, with fields()'s checks (field number 0, truncation, wire type)."""
        number, wire = key >> 3, key & 7
        if number == 0:
            raise BadWireType(f"field number 0 at offset {tag_offset}", offset=tag_offset, field=where)
        if wire == VARINT:
            if pos < end and self.buf[pos] < 0x80:
                return pos + 1
            return self.varint(pos, end, where)[1]
        if wire == LEN:
            length, pos = self.varint(pos, end, where)
            if length > end - pos:
                raise LengthPastEnd(
                    f"field {number} at offset {tag_offset} declares {length} bytes but only "
                    f"{end - pos} remain in its message",
                    offset=tag_offset,
                    field=where,
                )
            return pos + length
        if wire == I64:
            if end - pos < 8:
                raise Truncated(
                    f"fixed64 field {number} at offset {tag_offset} is cut off", offset=tag_offset, field=where
                )
            return pos + 8
        if wire == I32:
            if end - pos < 4:
                raise Truncated(
                    f"fixed32 field {number} at offset {tag_offset} is cut off", offset=tag_offset, field=where
                )
            return pos + 4
        raise BadWireType(
            f"field {number} at offset {tag_offset} has wire type {wire}"
            + (" (groups are not used by this format)" if wire in (3, 4) else " (no such wire type)"),
            offset=tag_offset,
            field=where,
        )

    def fields(self, start: int, end: int, depth: int = 0, where: str | None = None) -> Iterator[Field]:
        """The fields of the message in [start, end); `depth` is the caller's nesting level."""
        self.check_message(start, end, depth, where)
        pos = start
        buf = self.buf
        budget = self.budget
        limit = budget.limit
        varint = self.varint
        while pos < end:
            # the hot loop: one-byte tags and varints are decoded inline
            budget.used += 1
            if budget.used > limit:
                budget.spend(0, where)
            tag_offset = pos
            key = buf[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = varint(pos, end, where)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise BadWireType(f"field number 0 at offset {tag_offset}", offset=tag_offset, field=where)
            if wire == VARINT:
                if pos < end and buf[pos] < 0x80:
                    value = buf[pos]
                    pos += 1
                else:
                    value, pos = varint(pos, end, where)
                yield Field(number, wire, tag_offset, value)
            elif wire == LEN:
                if pos < end and buf[pos] < 0x80:
                    length = buf[pos]
                    pos += 1
                else:
                    length, pos = varint(pos, end, where)
                if length > end - pos:
                    raise LengthPastEnd(
                        f"field {number} at offset {tag_offset} declares {length} bytes but only "
                        f"{end - pos} remain in its message",
                        offset=tag_offset,
                        field=where,
                    )
                yield Field(number, wire, tag_offset, pos, length)
                pos += length
            elif wire == I64:
                if end - pos < 8:
                    raise Truncated(
                        f"fixed64 field {number} at offset {tag_offset} is cut off",
                        offset=tag_offset,
                        field=where,
                    )
                yield Field(number, wire, tag_offset, self.view.u64(pos, where))
                pos += 8
            elif wire == I32:
                if end - pos < 4:
                    raise Truncated(
                        f"fixed32 field {number} at offset {tag_offset} is cut off",
                        offset=tag_offset,
                        field=where,
                    )
                yield Field(number, wire, tag_offset, self.view.u32(pos, where))
                pos += 4
            else:
                raise BadWireType(
                    f"field {number} at offset {tag_offset} has wire type {wire}"
                    + (" (groups are not used by this format)" if wire in (3, 4) else " (no such wire type)"),
                    offset=tag_offset,
                    field=where,
                )

    def packed_varints(
        self, start: int, length: int, where: str | None = None, limit: int = 1 << 20
    ) -> list[int]:
        """A packed repeated varint field; at most `limit` values are decoded (each one is budgeted)."""
        out: list[int] = []
        pos, end = start, start + length
        buf, spend = self.buf, self.budget.spend
        while pos < end:
            if len(out) >= limit:
                break
            spend(1, where)
            byte = buf[pos]
            if byte < 0x80:  # the common one-byte varint, inline
                out.append(byte)
                pos += 1
                continue
            value, pos = self.varint(pos, end, where)
            out.append(value)
        return out

    def count_varints(self, start: int, length: int) -> int:
        """How many varints a packed field holds, without decoding them: bytes with the top bit clear."""
        self.view.check(start, length)
        count, step = 0, 1 << 20  # in 1 MiB chunks: a huge int32_data is never copied whole
        for pos in range(start, start + length, step):
            chunk = bytes(self.buf[pos : min(pos + step, start + length)])
            count += len(chunk.translate(None, _HIGH_BYTES))
        return count

    def text(self, field: Field, where: str | None = None, limit: int = 1 << 16) -> str:
        """A string field's value (fields() already checked it lies inside its message), UTF-8 with
        replacement, cut at `limit` bytes."""
        if field.wire != LEN:
            return ""
        start = field.value
        return str(self.buf[start : start + min(field.length, limit)], "utf-8", "replace")

    def f32(self, field: Field) -> float:
        return float(_F32.unpack(struct.pack("<I", field.value & 0xFFFFFFFF))[0])

    def f64(self, field: Field) -> float:
        return float(_F64.unpack(struct.pack("<Q", field.value))[0])
