"""GGUF reader: a bounded, lazy scan of the header, key/values and tensor infos over mmap.

Tensor data is never touched. Every count and length the file declares is checked against the bytes
that are left before anything is looped over or allocated; large arrays are skipped by arithmetic
(string arrays by walking their length prefixes, bounded by the bytes present), so a 128-byte file
that declares 5e7 array elements is rejected at once.

Layout rules (`structural_findings`, all errors unless noted) are ggml's `gguf_init_from_file`
rules, split into one code each, plus what ggml misses in metadata mode: truncation with the number
of missing bytes, tensors past EOF, trailing bytes, non-UTF-8 keys and names, n_dims 0.

Shapes: ggml stores dims innermost first (ne0 = row length). A layer's `shape` is that order
reversed, i.e. [rows, cols] = PyTorch's [out_features, in_features]; `detail.ne` keeps ggml's order.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from quantgate.core import findings as F
from quantgate.core import remote
from quantgate.core.confine import confine
from quantgate.core.findings import Finding
from quantgate.core.gcpause import gc_paused
from quantgate.core.inventory import CONV, EMBEDDING, FLOAT, INT, LINEAR, Inventory, Layer
from quantgate.formats.gguf import types as T
from quantgate.formats.wire.binary import Budget, BudgetExhausted, OutOfBounds, ReadError, View, mapped

FORMAT = "gguf"
MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 1 << 20  # ggml PR #1516's proposed cap; real files use 32
MAX_NAME = 64  # GGML_MAX_NAME: a tensor name must be shorter than this (NUL included)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8
MAX_KEY_BYTES = 65_535
STRING_KEEP = 4096  # characters of a string value kept for display and checks
NUMERIC_ARRAY_KEEP = 4096  # numeric arrays up to this length are kept (per-layer head counts)...
NUMERIC_KEEP_TOTAL = 65_536  # ...within this many kept elements per file, so memory stays bounded
FINDINGS_PER_CODE = F.FINDINGS_PER_CODE
MAX_KVS = 100_000  # @huggingface/gguf's cap; real files have < 100
MAX_TENSORS = 65_536  # real models have about a thousand tensor infos at most
INT63 = 1 << 63

# minimum bytes of one record, to reject counts that cannot fit before looping over them
MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a 1-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DIMS = tuple(struct.Struct(f"<{n}Q") for n in range(MAX_DIMS + 1))  # a tensor's ne, by n_dims
_BY_OFFSET = attrgetter("offset")
# a transformer block's index in a tensor name: `blk.N.` (also `enc.blk.N.`, `v.blk.N.`)
_BLOCK_INDEX = re.compile(r"(?:^|\.)blk\.(\d{1,9})\.")
# hparams that llama.cpp reads as a number or as one value per block
PER_LAYER_KEYS = ("attention.head_count", "attention.head_count_kv", "feed_forward_length")

# The `general.*` keys the GGUF spec types, beside architecture, alignment and quantization_version
# (checked on their own): key -> (value type, element type of an array). `{id}` is a number.
_STR = (T.STRING, None)
_STR_ARRAY = (T.ARRAY, T.STRING)
GENERAL_KEY_TYPES: dict[str, tuple[int, int | None]] = {
    "general.type": _STR,
    "general.file_type": (T.UINT32, None),
    **{
        f"general.{k}": _STR
        for k in (
            *("name", "author", "version", "organization", "basename", "finetune", "description"),
            *("quantized_by", "size_label", "license", "license.name", "license.link", "url", "doi"),
            *("uuid", "repo_url", "source.url", "source.doi", "source.uuid", "source.repo_url"),
            "source.huggingface.repository",
        )
    },
    "general.tags": _STR_ARRAY,
    "general.languages": _STR_ARRAY,
    "general.datasets": _STR_ARRAY,
    "general.base_model.count": (T.UINT32, None),
    "general.dataset.count": (T.UINT32, None),
}
_GENERAL_ID_KEY = re.compile(
    r"general\.(?:base_model|dataset)\.\d{1,9}\.(?:name|author|version|organization|description|url|doi|uuid|repo_url)"
)
# the general.* keys llama.cpp's loader reads with a type check (llama_model_loader::get_key), so a
# wrong type makes it refuse the file; a wrong type on the others is a warning
GENERAL_KEYS_LLAMA_READS = ("general.name", "general.type", "general.file_type")

FINDING_CODES: dict[str, str] = {
    "GGUF_BAD_MAGIC": "The file does not start with the GGUF magic.",
    "GGUF_BYTE_SWAPPED": "The version word is byte-swapped: a big-endian GGUF, which little-endian readers "
    "(llama.cpp, quantgate) cannot use.",
    "GGUF_VERSION_UNSUPPORTED": "GGUF version 0, 1 (no longer supported by ggml) or newer than 3.",
    "GGUF_TRUNCATED_HEADER": "The file ends inside the header (counts, a key/value or a tensor info).",
    "GGUF_COUNT_TOO_LARGE": "tensor_count or kv_count cannot fit in the file (more records than the "
    "remaining bytes can hold), or exceeds the reader's caps (65,536 tensors, 100,000 key/values).",
    "GGUF_LENGTH_PAST_EOF": "A string or array length (or n_dims) runs past the end of the file.",
    "GGUF_BAD_VALUE_TYPE": "A key/value or array element type is not a GGUF value type (0..12).",
    "GGUF_ARRAY_TOO_DEEP": "Arrays nested deeper than the reader's limit.",
    "GGUF_NESTED_ARRAY": "A key/value holds nested arrays: allowed by the spec, rejected by ggml (warning).",
    "GGUF_EMPTY_KEY": "A key/value has an empty key (ggml rejects it).",
    "GGUF_KEY_TOO_LONG": "A key longer than 65535 bytes.",
    "GGUF_KEY_NOT_UTF8": "A key is not valid UTF-8.",
    "GGUF_DUPLICATE_KEY": "The same key appears twice.",
    "GGUF_ALIGNMENT_BAD_TYPE": "general.alignment is not a UINT32 (ggml and gguf-py reject other types).",
    "GGUF_ALIGNMENT_INVALID": "general.alignment is 0 or not a power of two.",
    "GGUF_ALIGNMENT_TOO_LARGE": "general.alignment is larger than 1 MiB.",
    "GGUF_TENSOR_NAME_EMPTY": "A tensor has an empty name.",
    "GGUF_TENSOR_NAME_TOO_LONG": "A tensor name is 64 bytes or longer (ggml's GGML_MAX_NAME).",
    "GGUF_TENSOR_NAME_NOT_UTF8": "A tensor name is not valid UTF-8.",
    "GGUF_DUPLICATE_TENSOR_NAME": "Two tensors have the same name.",
    "GGUF_BAD_N_DIMS": "A tensor has n_dims 0 or more than 4.",
    "GGUF_BAD_DIM": "A tensor dimension is 0 or negative (as int64).",
    "GGUF_ELEMENT_COUNT_OVERFLOW": "A tensor's element count or byte size does not fit in int64.",
    "GGUF_UNKNOWN_TYPE": "A tensor's ggml type id is not one ggml knows.",
    "GGUF_REMOVED_TYPE": "A tensor uses a ggml type id that was removed from the format "
    "(4, 5, 31-33, 36-38).",
    "GGUF_ROW_NOT_BLOCK_MULTIPLE": "A tensor's row length (ne0) is not a multiple of its type's block size.",
    "GGUF_TENSOR_MISALIGNED": "A tensor's data offset is not a multiple of the alignment.",
    "GGUF_TENSOR_OUT_OF_ORDER": "Tensor data offsets are not increasing in tensor-info order "
    "(ggml rejects it).",
    "GGUF_TENSOR_OVERLAP": "Two tensors' data ranges overlap (or a tensor's declared type is larger than "
    "the space it has).",
    "GGUF_TENSOR_GAP": "Unused bytes between tensors (or before the first one) beyond the alignment padding.",
    "GGUF_TENSOR_PAST_EOF": "A tensor's data range ends past the end of the file.",
    "GGUF_TRUNCATED": "The file is shorter than its own layout: the data section is cut (says how many "
    "bytes are missing).",
    "GGUF_TAIL_PADDING_MISSING": "The file ends after the last tensor's bytes but before its alignment "
    "padding (ggml's full read fails; mmap loaders accept it) (warning).",
    "GGUF_TRAILING_BYTES": "Bytes after the padded end of the last tensor.",
    "GGUF_ARCHITECTURE_MISSING": "general.architecture is absent (warning).",
    "GGUF_ARCHITECTURE_NOT_STRING": "general.architecture is not a string.",
    "GGUF_KV_BAD_TYPE": "general.quantization_version has the wrong value type (warning).",
    "GGUF_GENERAL_KEY_BAD_TYPE": "A general.* key the GGUF spec types has another type (general.name as a "
    "number, general.tags not an array of strings...): an error for the keys llama.cpp reads when it "
    "loads (general.name, general.type, general.file_type), which it then refuses; a warning for the others.",
    "GGUF_FILE_TYPE_UNKNOWN": "general.file_type is not a known llama_ftype, or a removed one (warning).",
    "GGUF_FILE_TYPE_MISMATCH": "general.file_type contradicts the tensors: a float file type with quantized "
    "tensors, a quantized one whose weights are mostly float, or weights narrower than the file type.",
    "GGUF_FILE_TYPE_WIDER_TYPES": "Most weights are stored wider than a single-type file_type says "
    "(e.g. MOSTLY_Q4_0 with Q8_0 weights), leaving out what llama.cpp's recipe for that file type "
    "promotes itself (output.weight, or the tied token_embd.weight, at Q6_K/Q8_0) (warning).",
    "GGUF_QUANT_VERSION_MISSING": "Quantized tensors but no general.quantization_version, which the spec "
    "requires (warning).",
    "GGUF_SPLIT_MISSING": "A split model (`<name>-00001-of-0000N.gguf`, split.count N) lacks a shard: a "
    "file of the set is absent, unreadable or refused by the confinement rule (a link out of the folder, "
    "not a regular file), the first shard is not named so that the others can be found, or the shards "
    "hold fewer tensors than split.tensors.count; llama.cpp refuses to load it.",
    "GGUF_SPLIT_EXTRA": "A file in the split model's folder is named as a shard the set does not have "
    "(`-00004-of-00003`, or another shard count for the same name), or the shards hold more tensors "
    "than split.tensors.count.",
    "GGUF_SPLIT_MISMATCH": "A shard's split.no / split.count disagree with its file name or with the "
    "first shard, or two shards hold the same tensor.",
    "GGUF_SPLIT_SHARD": "This file is shard k > 1 of a split model: it holds tensors but no model "
    "metadata, and is gated as part of the set through its first shard (info).",
    "GGUF_HPARAM_MISMATCH": "<arch>.block_count disagrees with the blk.N tensors the file holds, or a "
    "per-layer array (head counts, feed-forward length) is not block_count long; llama.cpp refuses such a file.",
}


class _Stop(Exception):
    """Parsing cannot go on: the finding says why and where."""

    def __init__(self, finding: Finding):
        super().__init__(finding.message)
        self.finding = finding


@dataclass(slots=True)
class KV:
    key: str
    vtype: int
    offset: int  # of the key's length prefix
    value: Any = None  # scalars, strings (cut at STRING_KEEP), short numeric arrays
    elem_type: int | None = None  # arrays only
    count: int | None = None  # arrays only

    @property
    def type_name(self) -> str:
        name = T.VALUE_TYPE_NAMES.get(self.vtype, str(self.vtype))
        if self.vtype == T.ARRAY and self.elem_type is not None:
            name += f"[{T.VALUE_TYPE_NAMES.get(self.elem_type, str(self.elem_type))}]"
        return name


@dataclass(slots=True)
class TensorInfo:
    name: str
    index: int
    info_offset: int
    ne: tuple[int, ...]
    type_id: int
    offset: int  # relative to the data section
    gtype: T.GGMLType | None = None
    elements: int | None = None
    nbytes: int | None = None  # None when the shape or type is invalid

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)


def type_name(type_id: int) -> str:
    """A ggml type id's name: ggml's, a removed type's, or `type<id>`."""
    gtype = T.GGML_TYPES.get(type_id)
    if gtype is not None:
        return gtype.name
    return T.REMOVED_GGML_TYPES.get(type_id, f"type{type_id}")


@dataclass
class GGUFFile:
    """Everything the scan found; `read` turns it into an Inventory."""

    path: str
    size: int
    version: int | None = None
    tensor_count: int | None = None
    kv_count: int | None = None
    kvs: dict[str, KV] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    header_end: int | None = None
    data_start: int | None = None
    complete: bool = False  # every header record was read
    structural: list[Finding] = field(default_factory=list)
    semantic: list[Finding] = field(default_factory=list)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


class _Parser:
    def __init__(self, view: View, gf: GGUFFile):
        self.v = view
        self.buf = view.buf
        self.size = len(view)
        self.gf = gf
        self.found = F.CappedFindings(gf.structural)
        self.budget = Budget.for_size(self.size)
        self.nested_reported = False
        self.kept = 0  # numeric array elements materialised so far
        # stored dims and type -> (ne, type id, type, elements, bytes) of valid tensors, see `dims_and_type`
        self.dims_seen: dict[bytes | None, tuple[tuple[int, ...], int, T.GGMLType | None, int | None, int | None]] = {}

    # -- helpers -----------------------------------------------------------------------------------
    def remaining(self, pos: int) -> int:
        return self.size - pos

    def length_past_eof(self, what: str, declared: int, unit: int, pos: int, **loc: Any) -> _Stop:
        need = declared * unit
        return _Stop(
            F.error(
                "GGUF_LENGTH_PAST_EOF",
                f"{what} declares {declared:,} {'byte(s)' if unit == 1 else f'element(s) of {unit} bytes'} "
                f"but only {max(0, self.remaining(pos)):,} bytes remain ({need - self.remaining(pos):,} "
                "missing): the file is truncated or the length is corrupt",
                offset=pos,
                **loc,
            )
        )

    def raw_string(self, pos: int, what: str, **loc: Any) -> tuple[int, int, int]:
        """(start, length, next pos) of a gguf_string, length checked against the file."""
        length = self.v.u64(pos, what)
        start = pos + 8
        if length > self.remaining(start):
            raise self.length_past_eof(what, length, 1, start, **loc)
        return start, length, start + length

    # -- header ------------------------------------------------------------------------------------
    def header(self) -> int:
        gf = self.gf
        if self.size < 4 or bytes(self.buf[:4]) != MAGIC:
            head = bytes(self.buf[:4])
            raise _Stop(F.error("GGUF_BAD_MAGIC", f"the file starts with {head!r}, not b'GGUF'", offset=0))
        version = self.v.u32(4, "version")
        gf.version = version
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if version & 0xFFFF == 0 and swapped in (1, 2, 3):
            raise _Stop(
                F.error(
                    "GGUF_BYTE_SWAPPED",
                    f"the version word reads {version:#010x}: a big-endian (byte-swapped) GGUF v{swapped}; "
                    "convert it to little-endian (gguf-py's gguf_convert_endian.py) before shipping",
                    offset=4,
                    field="version",
                )
            )
        if version not in (2, 3):
            why = (
                "GGUFv1 is no longer supported; re-convert the model"
                if version == 1
                else ("unknown version; this reader knows GGUF v2 and v3")
            )
            raise _Stop(
                F.error(
                    "GGUF_VERSION_UNSUPPORTED", f"GGUF version {version}: {why}", offset=4, field="version"
                )
            )
        n_tensors = self.v.u64(8, "tensor_count")
        n_kv = self.v.u64(16, "kv_count")
        gf.tensor_count, gf.kv_count = n_tensors, n_kv
        room = self.remaining(24)
        for count, unit, name, off in (
            (n_kv, MIN_KV_BYTES, "kv_count", 16),
            (n_tensors, MIN_TENSOR_INFO_BYTES, "tensor_count", 8),
        ):
            if count * unit > room:
                raise _Stop(
                    F.error(
                        "GGUF_COUNT_TOO_LARGE",
                        f"{name} is {count:,} but the {room:,} bytes after the header can hold at most "
                        f"{room // unit:,} such records: the count is corrupt or the file is truncated",
                        offset=off,
                        field=name,
                    )
                )
        # caps far above any real model, so that a hostile file cannot make millions of records
        # (each a Python object) out of a few hundred megabytes
        for count, cap, name, off in (
            (n_kv, MAX_KVS, "kv_count", 16),
            (n_tensors, MAX_TENSORS, "tensor_count", 8),
        ):
            if count > cap:
                raise _Stop(
                    F.error(
                        "GGUF_COUNT_TOO_LARGE",
                        f"{name} is {count:,}, above the reader's cap of {cap:,} (real models have a few "
                        "thousand at most): the count is corrupt or the file is hostile",
                        offset=off,
                        field=name,
                    )
                )
        if n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES > room:
            raise _Stop(
                F.error(
                    "GGUF_COUNT_TOO_LARGE",
                    f"{n_kv:,} key/values and {n_tensors:,} tensor infos cannot fit in the {room:,} bytes "
                    "after the header: a count is corrupt or the file is truncated",
                    offset=8,
                    field="tensor_count",
                )
            )
        return 24

    # -- key/values --------------------------------------------------------------------------------
    def kvs(self, pos: int) -> int:
        gf = self.gf
        for i in range(gf.kv_count or 0):
            self.budget.spend(1, "key/values")
            kv_offset = pos
            start, length, pos = self.raw_string(pos, f"key #{i} length", field=f"kv[{i}]")
            if length > MAX_KEY_BYTES:
                self.found.add(
                    F.error(
                        "GGUF_KEY_TOO_LONG",
                        f"key #{i} is {length:,} bytes long",
                        offset=kv_offset,
                        field=f"kv[{i}]",
                    )
                )
                key = f"kv[{i}]"
            else:
                raw = bytes(self.buf[start : start + length])
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    key = raw.decode("utf-8", errors="replace")
                    self.found.add(
                        F.error(
                            "GGUF_KEY_NOT_UTF8",
                            f"key #{i} {key!r} is not valid UTF-8; keys must be UTF-8",
                            offset=kv_offset,
                            field=key,
                        )
                    )
                if not key:
                    self.found.add(
                        F.error(
                            "GGUF_EMPTY_KEY",
                            f"key #{i} is empty; every key needs a name",
                            offset=kv_offset,
                            field=f"kv[{i}]",
                        )
                    )
                    key = f"kv[{i}]"
            vtype = self.v.u32(pos, f"{key} value type")
            kv = KV(key, vtype, kv_offset)
            pos = self.value(kv, vtype, pos + 4, 0)
            if key in gf.kvs:
                self.found.add(
                    F.error(
                        "GGUF_DUPLICATE_KEY",
                        f"key {key!r} appears twice (first at offset {gf.kvs[key].offset}); keep one",
                        offset=kv_offset,
                        field=key,
                    )
                )
            else:
                gf.kvs[key] = kv
        return pos

    def bad_type(self, kv: KV, vtype: int, pos: int, what: str) -> _Stop:
        return _Stop(
            F.error(
                "GGUF_BAD_VALUE_TYPE",
                f"{what} of {kv.key!r} has type {vtype}, not a GGUF value type "
                "(0..12); the rest of the header cannot be read",
                offset=pos,
                field=kv.key,
            )
        )

    def value(self, kv: KV, vtype: int, pos: int, depth: int) -> int:
        """Read (or skip) one value of `vtype` at pos; return the position after it."""
        scalar = T.SCALAR_FORMATS.get(vtype)
        if scalar is not None:
            fmt, size = scalar
            self.v.check(pos, size, kv.key)
            if depth == 0:
                kv.value = struct.unpack_from(fmt, self.buf, pos)[0]
            return pos + size
        if vtype == T.STRING:
            start, length, end = self.raw_string(pos, f"string value of {kv.key!r}", field=kv.key)
            if depth == 0:
                kv.value = self.v.text(start, length, kv.key, limit=STRING_KEEP)
            return end
        if vtype != T.ARRAY:
            raise self.bad_type(kv, vtype, pos - 4, "value type")
        elem = self.v.u32(pos, f"{kv.key} array type")
        count = self.v.u64(pos + 4, f"{kv.key} array length")
        body = pos + 12
        if depth == 0:
            kv.elem_type, kv.count = elem, count
        scalar = T.SCALAR_FORMATS.get(elem)
        if scalar is not None:
            fmt, size = scalar
            if count * size > self.remaining(body):
                raise self.length_past_eof(f"array {kv.key!r}", count, size, body, field=kv.key)
            if depth == 0 and count <= NUMERIC_ARRAY_KEEP and self.kept + count <= NUMERIC_KEEP_TOTAL:
                self.kept += count
                kv.value = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, body))
            return body + count * size
        if elem == T.STRING:
            if count * 8 > self.remaining(body):
                raise self.length_past_eof(f"string array {kv.key!r}", count, 8, body, field=kv.key)
            self.budget.spend(count, kv.key)
            return self.skip_strings(kv, body, count)
        if elem == T.ARRAY:
            if depth + 1 >= MAX_ARRAY_DEPTH:
                raise _Stop(
                    F.error(
                        "GGUF_ARRAY_TOO_DEEP",
                        f"array {kv.key!r} nests arrays more than {MAX_ARRAY_DEPTH} deep",
                        offset=pos,
                        field=kv.key,
                    )
                )
            if count * 12 > self.remaining(body):
                raise self.length_past_eof(f"array of arrays {kv.key!r}", count, 12, body, field=kv.key)
            if not self.nested_reported:
                self.nested_reported = True
                self.found.add(
                    F.warning(
                        "GGUF_NESTED_ARRAY",
                        f"{kv.key!r} is an array of arrays: the spec "
                        "allows it but ggml/llama.cpp refuse to load such a file",
                        offset=kv.offset,
                        field=kv.key,
                    )
                )
            for _ in range(count):
                self.budget.spend(1, kv.key)
                pos_inner = body
                body = self.value(kv, T.ARRAY, pos_inner, depth + 1)
            return body
        raise self.bad_type(kv, elem, pos, "array element type")

    def skip_strings(self, kv: KV, pos: int, count: int) -> int:
        """Walk `count` length-prefixed strings; bounded by the bytes present (count*8 was checked)."""
        unpack = struct.Struct("<Q").unpack_from
        buf, size = self.buf, self.size
        start_pos = pos
        i = 0
        try:
            for i in range(count):  # noqa: B007 - i is read after the loop for the message
                pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError):  # OverflowError: an offset beyond ssize_t
            raise _Stop(
                F.error(
                    "GGUF_LENGTH_PAST_EOF",
                    f"string array {kv.key!r}: element {i:,} of {count:,} "
                    f"at offset {pos:,} does not fit in the file ({size:,} bytes): "
                    "the file is truncated or a string length is corrupt",
                    offset=start_pos,
                    field=kv.key,
                )
            ) from None
        if pos > size:
            raise _Stop(
                F.error(
                    "GGUF_LENGTH_PAST_EOF",
                    f"string array {kv.key!r} ({count:,} strings from "
                    f"offset {start_pos}) runs {pos - size:,} bytes past the end of the file",
                    offset=start_pos,
                    field=kv.key,
                )
            )
        return pos

    # -- alignment ---------------------------------------------------------------------------------
    def alignment(self) -> None:
        kv = self.gf.kvs.get("general.alignment")
        if kv is None:
            return
        value = kv.value
        usable = isinstance(value, int) and not isinstance(value, bool)
        if kv.vtype != T.UINT32:
            self.found.add(
                F.error(
                    "GGUF_ALIGNMENT_BAD_TYPE",
                    f"general.alignment is {kv.type_name}, must be UINT32; ggml and gguf-py refuse the file",
                    offset=kv.offset,
                    field=kv.key,
                )
            )
        if not usable or not _is_pow2(value):
            self.found.add(
                F.error(
                    "GGUF_ALIGNMENT_INVALID",
                    f"general.alignment is {value!r}: it must be a non-zero power of two",
                    offset=kv.offset,
                    field=kv.key,
                )
            )
            return
        if value > MAX_ALIGNMENT:
            self.found.add(
                F.error(
                    "GGUF_ALIGNMENT_TOO_LARGE",
                    f"general.alignment is {value:,}, above the {MAX_ALIGNMENT:,}-byte cap",
                    offset=kv.offset,
                    field=kv.key,
                )
            )
            return
        self.gf.alignment = value

    # -- tensor infos ------------------------------------------------------------------------------
    # This part runs once per tensor (up to MAX_TENSORS), so it compares positions itself instead of
    # going through View for each field, formats the field names errors carry only when a read fails,
    # and checks each distinct (dims, type) once (`dims_and_type`).
    def tensor_infos(self, pos: int) -> int:
        count = self.gf.tensor_count or 0
        # one spend for all the records: `header` checked that they fit in the file (24 bytes or more
        # each), and the budget allows ten thousand records plus one per byte
        self.budget.spend(count, "tensor infos")
        tensors = self.gf.tensors
        first_index: dict[str, int] = {}
        for i in range(count):
            t, pos = self.tensor_info(i, pos, first_index)
            tensors.append(t)
        return pos

    def tensor_info(self, i: int, pos: int, first_index: dict[str, int]) -> tuple[TensorInfo, int]:
        """Tensor info #i at pos, checked and sized, and the position after it."""
        info_offset = pos
        label, pos = self.tensor_name(i, pos)
        buf, size = self.buf, self.size
        if pos + 4 > size:
            raise self.cut(pos, 4, f"{label} n_dims")
        (n_dims,) = _U32.unpack_from(buf, pos)
        dims_offset = pos + 4
        if n_dims == 0 or n_dims > MAX_DIMS:
            self.found.add(
                F.error(
                    "GGUF_BAD_N_DIMS",
                    f"n_dims is {n_dims}; ggml tensors have 1 to {MAX_DIMS} dims",
                    offset=pos,
                    tensor=label,
                )
            )
        end = dims_offset + 8 * n_dims + 12  # after the dims, the type and the data offset
        if end > size:
            raise self.tail_cut(label, n_dims, dims_offset)
        first = first_index.setdefault(label, i)
        if first != i:
            self.found.add(
                F.error(
                    "GGUF_DUPLICATE_TENSOR_NAME",
                    f"tensor {label!r} is defined twice (#{first} and #{i})",
                    offset=info_offset,
                    tensor=label,
                )
            )
        ne, type_id, gtype, elements, nbytes = self.dims_and_type(n_dims, dims_offset, label)
        (offset,) = _U64.unpack_from(buf, end - 8)
        return TensorInfo(label, i, info_offset, ne, type_id, offset, gtype, elements, nbytes), end

    def tail_cut(self, label: str, n_dims: int, dims_offset: int) -> Exception:
        """The error for a tensor info whose dims, type or data offset run past the end of the file."""
        if n_dims * 8 > self.size - dims_offset:
            return self.length_past_eof(f"n_dims of {label!r}", n_dims, 8, dims_offset, tensor=label)
        type_pos = dims_offset + 8 * n_dims
        if type_pos + 4 > self.size:
            return self.cut(type_pos, 4, f"{label} type")
        return self.cut(type_pos + 4, 8, f"{label} offset")

    def tensor_name(self, i: int, pos: int) -> tuple[str, int]:
        """Tensor #i's name as findings show it (`tensor[i]` when empty, with replacement characters
        when not UTF-8) and the position after it."""
        buf, size = self.buf, self.size
        if pos + 8 > size:
            raise self.cut(pos, 8, f"tensor #{i} name length")
        (length,) = _U64.unpack_from(buf, pos)
        start = pos + 8
        if length > size - start:
            raise self.length_past_eof(f"tensor #{i} name length", length, 1, start, field=f"tensor[{i}]")
        raw = buf[start : start + (length if length <= 1024 else 1024)]
        try:
            name, utf8_ok = raw.decode(), True
        except UnicodeDecodeError:
            name, utf8_ok = raw.decode("utf-8", errors="replace"), False
        label = name or f"tensor[{i}]"
        if length == 0:
            self.found.add(
                F.error("GGUF_TENSOR_NAME_EMPTY", f"tensor #{i} has an empty name", offset=pos, tensor=label)
            )
        elif length >= MAX_NAME:
            self.found.add(
                F.error(
                    "GGUF_TENSOR_NAME_TOO_LONG",
                    f"tensor name is {length} bytes; ggml allows at most {MAX_NAME - 1}",
                    offset=pos,
                    tensor=label[:80],
                )
            )
        if not utf8_ok and length <= 1024:
            self.found.add(
                F.error(
                    "GGUF_TENSOR_NAME_NOT_UTF8",
                    f"tensor #{i} name {name!r} is not valid UTF-8",
                    offset=pos,
                    tensor=label,
                )
            )
        return label, start + length

    def cut(self, pos: int, size: int, field: str) -> OutOfBounds:
        """What View raises for a `size`-byte field at pos that runs past the end of the file."""
        return OutOfBounds(
            f"{size} byte(s) at offset {pos} run past the end of the file ({self.size} bytes)",
            offset=pos,
            field=field,
        )

    def dims_and_type(
        self, n_dims: int, dims_offset: int, name: str
    ) -> tuple[tuple[int, ...], int, T.GGMLType | None, int | None, int | None]:
        """(ne, type id, ggml type, elements, bytes) from the dims and type at dims_offset; elements
        and bytes are None (with findings) when the dims or the type are invalid.

        A model repeats a few shapes and types thousands of times, so the valid ones are checked once
        and remembered by their stored bytes (at most one entry per tensor, keys of at most 36 bytes);
        tensors of one shape then share one ne tuple.
        """
        # never materialise more dims than a tensor can have: n_dims is the file's word
        stored = self.buf[dims_offset : dims_offset + 8 * n_dims + 4] if n_dims <= MAX_DIMS else None
        known = self.dims_seen.get(stored)
        if known is not None:
            return known
        type_pos = dims_offset + 8 * n_dims
        ne = _DIMS[n_dims].unpack_from(self.buf, dims_offset) if n_dims <= MAX_DIMS else ()
        (type_id,) = _U32.unpack_from(self.buf, type_pos)
        gtype, elements, nbytes = self.check_size(ne, type_id, name, dims_offset)
        sized = (ne, type_id, gtype, elements, nbytes)
        if stored is not None and nbytes is not None:
            self.dims_seen[stored] = sized
        return sized

    def check_size(
        self, ne: tuple[int, ...], type_id: int, name: str, dims_offset: int
    ) -> tuple[T.GGMLType | None, int | None, int | None]:
        ok = bool(ne)  # a bad n_dims left ne empty
        for d, n in enumerate(ne):
            if n == 0 or n >= INT63:
                shown = n - (1 << 64) if n >= INT63 else n
                self.found.add(
                    F.error(
                        "GGUF_BAD_DIM",
                        f"dim {d} is {shown}; every dim must be >= 1",
                        offset=dims_offset + 8 * d,
                        tensor=name,
                    )
                )
                ok = False
        gtype = T.GGML_TYPES.get(type_id)
        type_pos = dims_offset + 8 * len(ne)
        if gtype is None:
            ok = False
            if type_id in T.REMOVED_GGML_TYPES:
                self.found.add(
                    F.error(
                        "GGUF_REMOVED_TYPE",
                        f"type {type_id} "
                        f"({T.REMOVED_GGML_TYPES[type_id]}) was removed from GGUF; "
                        "re-quantize with a current llama.cpp",
                        offset=type_pos,
                        tensor=name,
                    )
                )
            else:
                self.found.add(
                    F.error(
                        "GGUF_UNKNOWN_TYPE",
                        f"ggml type {type_id} is unknown (ggml knows 0..{T.GGML_TYPE_COUNT - 1})",
                        offset=type_pos,
                        tensor=name,
                    )
                )
        if not ok or gtype is None:
            return gtype, None, None
        elements = math.prod(ne)
        if elements >= INT63:
            self.found.add(
                F.error(
                    "GGUF_ELEMENT_COUNT_OVERFLOW",
                    f"dims {list(ne)} give {elements:,} elements, more than int64 holds",
                    offset=dims_offset,
                    tensor=name,
                )
            )
            return gtype, None, None
        if ne[0] % gtype.block:
            self.found.add(
                F.error(
                    "GGUF_ROW_NOT_BLOCK_MULTIPLE",
                    f"row length ne0={ne[0]} is not a multiple of {gtype.name}'s block size {gtype.block}",
                    offset=dims_offset,
                    tensor=name,
                )
            )
            return gtype, None, None
        nbytes = elements // gtype.block * gtype.size
        if nbytes >= INT63:
            self.found.add(
                F.error(
                    "GGUF_ELEMENT_COUNT_OVERFLOW",
                    f"{elements:,} {gtype.name} elements need {nbytes:,} bytes, more than int64 holds",
                    offset=dims_offset,
                    tensor=name,
                )
            )
            return gtype, None, None
        return gtype, elements, nbytes

    # -- layout ------------------------------------------------------------------------------------
    def layout(self) -> None:
        """Where the tensors' data lies: order, alignment, overlaps, gaps, the file's end."""
        gf = self.gf
        assert gf.data_start is not None
        tensors = gf.tensors
        sized = [t for t in tensors if t.nbytes is not None]
        # a tensor without a size leaves a hole of unknown extent: reporting it as a gap would be noise
        all_sized = len(sized) == len(tensors)
        order_problem = self.check_order(tensors)
        # by (offset, index): `sized` is in index order and sorting is stable
        ranked = sorted(sized, key=_BY_OFFSET)
        extent_problem, end, last = self.check_extents(ranked, all_sized)
        order_problem = order_problem or extent_problem
        if not all_sized:
            return  # some tensor has no size: trailing/truncation arithmetic would be guesswork
        if not self.check_past_eof(ranked, end, order_problem):
            self.check_tail(ranked, end, last)

    def check_order(self, tensors: list[TensorInfo]) -> bool:
        """Misaligned and out-of-order data offsets; True when there is one."""
        align, base = self.gf.alignment, self.gf.data_start or 0
        problem = False
        prev: TensorInfo | None = None
        for t in tensors:
            if t.offset % align:
                problem = True
                self.found.add(
                    F.error(
                        "GGUF_TENSOR_MISALIGNED",
                        f"data offset {t.offset} is not a multiple of the alignment {align}",
                        offset=base + t.offset,
                        tensor=t.name,
                    )
                )
            if prev is not None and t.offset < prev.offset:
                problem = True
                self.found.add(
                    F.error(
                        "GGUF_TENSOR_OUT_OF_ORDER",
                        f"data offset {t.offset} comes before "
                        f"that of the previous tensor {prev.name!r} ({prev.offset}); ggml "
                        "requires tensor data in tensor-info order",
                        offset=base + t.offset,
                        tensor=t.name,
                    )
                )
            prev = t
        return problem

    def check_extents(self, ranked: list[TensorInfo], all_sized: bool) -> tuple[bool, int, TensorInfo | None]:
        """Overlaps and gaps between the tensors in offset order: (a problem found, the relative end of
        the furthest tensor, that tensor)."""
        align, base = self.gf.alignment, self.gf.data_start or 0
        problem = False
        end = 0  # relative end of the furthest tensor so far
        last: TensorInfo | None = None
        for t in ranked:
            assert t.nbytes is not None
            if last is not None and t.offset < end:
                problem = True
                self.found.add(
                    F.error(
                        "GGUF_TENSOR_OVERLAP",
                        f"bytes {t.offset}..{t.offset + t.nbytes} "
                        f"overlap {last.name!r} ({last.type_name}, ends at {end}) by "
                        f"{end - t.offset:,} bytes: a wrong offset or a wrong declared type",
                        offset=base + t.offset,
                        tensor=t.name,
                    )
                )
            elif t.offset > end and all_sized and t.offset > _align(end, align) and t.offset % align == 0:
                problem = True
                after = f"after {last.name!r}" if last is not None else "before the first tensor"
                self.found.add(
                    F.error(
                        "GGUF_TENSOR_GAP",
                        f"{t.offset - _align(end, align):,} unused bytes "
                        f"{after} (data offset {t.offset}, expected {_align(end, align)})",
                        offset=base + _align(end, align),
                        tensor=t.name,
                    )
                )
            if t.offset + t.nbytes >= end:
                end, last = t.offset + t.nbytes, t
        return problem, end, last

    def check_past_eof(self, ranked: list[TensorInfo], end: int, order_problem: bool) -> bool:
        """Tensors running past the end of the file: one GGUF_TRUNCATED when the layout is sound (the
        file was cut), else one GGUF_TENSOR_PAST_EOF each. True when there is one."""
        align, base, size = self.gf.alignment, self.gf.data_start or 0, self.size
        # `end` is the furthest end, so no tensor runs past the file unless that one does
        past = [t for t in ranked if base + t.offset + (t.nbytes or 0) > size] if base + end > size else []
        if not past:
            return False
        if not order_problem:
            cut = past[0]
            need = base + end
            hint = ""
            if align != DEFAULT_ALIGNMENT and need - size <= align:
                hint = (
                    f" (or general.alignment={align} does not match the alignment the file was laid "
                    "out with, which moves the data start)"
                )
            self.found.add(
                F.error(
                    "GGUF_TRUNCATED",
                    f"the file is truncated: {need - size:,} bytes missing (its layout needs "
                    f"{need:,} bytes, the file has {size:,}); {len(past)} tensor(s) cut, from "
                    f"{cut.name!r}{hint}; re-download or re-export it",
                    offset=size,
                    tensor=cut.name,
                )
            )
            return True
        for t in past:
            self.found.add(
                F.error(
                    "GGUF_TENSOR_PAST_EOF",
                    f"data {base + t.offset:,}.."
                    f"{base + t.offset + (t.nbytes or 0):,} ends "
                    f"{base + t.offset + (t.nbytes or 0) - size:,} bytes past the end "
                    f"of the file ({size:,} bytes)",
                    offset=base + t.offset,
                    tensor=t.name,
                )
            )
        return True

    def check_tail(self, ranked: list[TensorInfo], end: int, last: TensorInfo | None) -> None:
        """Bytes after the last tensor's padded end, or its padding missing."""
        align, base, size = self.gf.alignment, self.gf.data_start or 0, self.size
        padded_end = base + _align(end, align) if ranked else base
        if size > padded_end:
            self.found.add(
                F.error(
                    "GGUF_TRAILING_BYTES",
                    f"{size - padded_end:,} bytes after the padded end "
                    f"of the last tensor (offset {padded_end:,}); strip them or find out what "
                    "was appended",
                    offset=padded_end,
                )
            )
        elif ranked and size < padded_end:
            self.found.add(
                F.warning(
                    "GGUF_TAIL_PADDING_MISSING",
                    f"the file ends {padded_end - size} bytes "
                    "short of the last tensor's alignment padding; ggml's full read fails, "
                    "mmap loaders accept it",
                    offset=size,
                    tensor=last.name if last else None,
                )
            )

    # -- driver ------------------------------------------------------------------------------------
    def run(self) -> None:
        gf = self.gf
        try:
            pos = self.header()
            pos = self.kvs(pos)
            self.alignment()
            pos = self.tensor_infos(pos)
            gf.header_end = pos
            gf.data_start = _align(pos, gf.alignment)
            gf.complete = True
            self.layout()
        except _Stop as stop:
            self.found.add(stop.finding)
        except BudgetExhausted as exc:
            self.found.add(F.error("READ_BUDGET_EXHAUSTED", exc.message, offset=exc.offset, field=exc.field))
        except OutOfBounds as exc:
            self.found.add(
                F.error(
                    "GGUF_TRUNCATED_HEADER",
                    f"the file ends inside the header while reading "
                    f"{exc.field or 'a field'} at offset {exc.offset} ({self.size:,} bytes): "
                    "it is truncated",
                    offset=exc.offset,
                    field=exc.field,
                )
            )
        self.found.close()


def parse(path: str) -> GGUFFile:
    """Scan a GGUF file's header; never raises on bad content (OSError aside)."""
    with mapped(path) as view:
        gf = GGUFFile(path, len(view))
        _Parser(view, gf).run()
    return gf


# ---------------------------------------------------------------------------------------------------
# inventory


def layer_kind(name: str, n_dims: int) -> str:
    """Kind from the name (GGUF has no graph): embeddings, convs (>= 3 dims), else linear.

    A vision tower's 4-D `patch_embd` is the convolution that embeds patches, not a lookup table.
    """
    lowered = name.lower()
    if n_dims >= 3 and ("conv" in lowered or "patch_emb" in lowered):
        return CONV
    if "embd" in lowered or "embed" in lowered:
        return EMBEDDING
    return LINEAR


def _layer(t: TensorInfo, shapes: dict[tuple[int, ...], tuple[int, ...]]) -> Layer:
    """t's layer; `shapes` maps ne to shape, so that layers of one shape share one tuple."""
    g = t.gtype
    assert g is not None and t.elements is not None
    shape = shapes.get(t.ne)
    if shape is None:
        shape = shapes[t.ne] = t.ne[::-1]
    return Layer(
        name=t.name,
        kind=layer_kind(t.name, len(t.ne)),
        shape=shape,
        dtype=g.name,
        bits=g.bits,
        numeric=INT if g.numeric == "int" else FLOAT,
        quantized=g.quantized,
        params=t.elements,
        weight_bytes=t.nbytes,
        position=t.index,
        detail={"ne": list(t.ne), "offset": t.offset},
    )


def _kv_int(kv: KV | None) -> int | None:
    if kv is None or kv.vtype not in T.INTEGER_VALUE_TYPES or isinstance(kv.value, bool):
        return None
    return int(kv.value)


def hparams(gf: GGUFFile) -> dict[str, Any]:
    """The `<arch>.*` hyper-parameters the memory estimate needs (absent keys are left out)."""
    arch_kv = gf.kvs.get("general.architecture")
    arch = arch_kv.value if arch_kv is not None and arch_kv.vtype == T.STRING else None
    out: dict[str, Any] = {}
    if not arch:
        return out
    keys = {
        "context_length": "context_length",
        "block_count": "block_count",
        "embedding_length": "embedding_length",
        "head_count": "attention.head_count",
        "head_count_kv": "attention.head_count_kv",
        "key_length": "attention.key_length",
        "value_length": "attention.value_length",
        # sliding-window attention: the window, which layers slide (a number n or one flag per
        # layer), and the sliding layers' head dims
        "sliding_window": "attention.sliding_window",
        "sliding_window_pattern": "attention.sliding_window_pattern",
        "key_length_swa": "attention.key_length_swa",
        "value_length_swa": "attention.value_length_swa",
        "shared_kv_layers": "attention.shared_kv_layers",  # gemma4: the last layers reuse a cache
    }
    for short, suffix in keys.items():
        kv = gf.kvs.get(f"{arch}.{suffix}")
        if kv is None:
            continue
        if (
            kv.vtype == T.ARRAY
            and isinstance(kv.value, list)
            and (kv.elem_type in T.INTEGER_VALUE_TYPES or kv.elem_type == T.BOOL)
        ):
            out[short] = [int(x) for x in kv.value]  # per-layer values (head_count_kv, SWA flags)
        elif (value := _kv_int(kv)) is not None:
            out[short] = value
    return out


def _semantics(gf: GGUFFile, layers: list[Layer], any_quantized: bool) -> None:
    out = gf.semantic
    kvs = gf.kvs
    arch = kvs.get("general.architecture")
    if arch is None:
        out.append(
            F.warning(
                "GGUF_ARCHITECTURE_MISSING",
                "general.architecture is absent; loaders cannot tell which model this is",
                field="general.architecture",
            )
        )
    elif arch.vtype != T.STRING:
        out.append(
            F.error(
                "GGUF_ARCHITECTURE_NOT_STRING",
                f"general.architecture is {arch.type_name}, must be a STRING such as 'llama'",
                offset=arch.offset,
                field=arch.key,
            )
        )
    if arch is not None and arch.vtype == T.STRING and arch.value:
        _check_block_count(gf, arch.value)
    _check_general_types(gf)
    qv = kvs.get("general.quantization_version")
    if qv is not None and _kv_int(qv) is None:
        out.append(
            F.warning(
                "GGUF_KV_BAD_TYPE",
                f"general.quantization_version is {qv.type_name}, expected UINT32",
                offset=qv.offset,
                field=qv.key,
            )
        )
    elif qv is None and any_quantized:
        out.append(
            F.warning(
                "GGUF_QUANT_VERSION_MISSING",
                "tensors are quantized but "
                "general.quantization_version is absent; the spec requires it (add "
                "general.quantization_version = 2)",
                field="general.quantization_version",
            )
        )
    ft_kv = kvs.get("general.file_type")
    if ft_kv is None:
        return
    ft = _kv_int(ft_kv)
    if ft is None:  # not an integer: reported by _check_general_types
        return
    if ft == T.FILE_TYPE_GUESSED:
        return
    spec = T.FILE_TYPES.get(ft)
    if spec is None:
        out.append(
            F.warning(
                "GGUF_FILE_TYPE_UNKNOWN",
                f"general.file_type {ft} is {T.file_type_name(ft)}",
                offset=ft_kv.offset,
                field=ft_kv.key,
            )
        )
        return
    _check_file_type(gf, spec, ft_kv, layers)


def _check_general_types(gf: GGUFFile) -> None:
    """Each `general.*` key the spec types, against its type (GENERAL_KEY_TYPES)."""
    reported = 0
    for key, kv in gf.kvs.items():
        if not key.startswith("general."):
            continue
        want = GENERAL_KEY_TYPES.get(key) or (_STR if _GENERAL_ID_KEY.fullmatch(key) else None)
        if want is None:
            continue
        vtype, elem = want
        if kv.vtype == vtype and (elem is None or kv.elem_type == elem):
            continue
        reported += 1
        if reported > FINDINGS_PER_CODE:
            break
        expected = T.VALUE_TYPE_NAMES[vtype] + (f"[{T.VALUE_TYPE_NAMES[elem]}]" if elem is not None else "")
        refuses = key in GENERAL_KEYS_LLAMA_READS
        make = F.error if refuses else F.warning
        gf.semantic.append(
            make(
                "GGUF_GENERAL_KEY_BAD_TYPE",
                f"{key} is {kv.type_name}, the GGUF spec types it {expected}"
                + ("; llama.cpp refuses to load the file" if refuses else "")
                + f": rewrite the key as {expected}",
                offset=kv.offset,
                field=key,
            )
        )


def _check_block_count(gf: GGUFFile, arch: str) -> None:
    """`<arch>.block_count` against the `blk.N` tensors, and each per-layer array against the block
    count. The count is metadata: nothing is sized by it, it is only compared with what the file holds
    (a flipped byte makes it a billion, and a memory estimate or a loader would take it at its word)."""
    kv = gf.kvs.get(f"{arch}.block_count")
    blocks = _kv_int(kv)
    if kv is None or blocks is None:
        return
    indices = {int(m.group(1)) for t in gf.tensors if (m := _BLOCK_INDEX.search(t.name))}
    top = max(indices) + 1 if indices else 0
    if blocks != top:
        held = (
            f"the tensors hold blocks blk.0 to blk.{top - 1} ({len(indices):,} distinct)"
            if indices
            else "no tensor is named blk.N"
        )
        gf.semantic.append(
            F.error(
                "GGUF_HPARAM_MISMATCH",
                f"{kv.key} is {blocks:,} but {held}; the block count is corrupt or the export "
                "dropped blocks",
                offset=kv.offset,
                field=kv.key,
            )
        )
    for suffix in PER_LAYER_KEYS:
        arr = gf.kvs.get(f"{arch}.{suffix}")
        if arr is not None and arr.vtype == T.ARRAY and arr.count is not None and arr.count != blocks:
            gf.semantic.append(
                F.error(
                    "GGUF_HPARAM_MISMATCH",
                    f"{arr.key} holds {arr.count:,} per-layer values but {kv.key} is {blocks:,}; "
                    "llama.cpp requires one value per block",
                    offset=arr.offset,
                    field=arr.key,
                )
            )


def _check_file_type(gf: GGUFFile, spec: T.FileType, kv: KV, layers: list[Layer]) -> None:
    out = gf.semantic
    loc = {"offset": kv.offset, "field": kv.key}
    if spec.floor_bits is None:  # a float file type: nothing may be quantized
        quantized = [t for t in gf.tensors if t.gtype is not None and t.gtype.quantized]
        if quantized:
            types = sorted({t.type_name for t in quantized})
            out.append(
                F.error(
                    "GGUF_FILE_TYPE_MISMATCH",
                    f"general.file_type says {spec.name} but "
                    f"{len(quantized)} tensor(s) are quantized ({', '.join(types)}, e.g. "
                    f"{quantized[0].name!r}); fix the file type or the export",
                    **loc,
                )
            )
        return
    by_type: dict[str, int] = {}
    for layer in layers:
        by_type[layer.dtype] = by_type.get(layer.dtype, 0) + layer.params
    # a layer's bits and quantized state are its ggml type's
    bits_of = {d: (T.GGML_TYPE_BY_NAME[d].bits, T.GGML_TYPE_BY_NAME[d].quantized) for d in by_type}
    total = sum(by_type.values())
    if not total:
        return
    float_params = sum(p for d, p in by_type.items() if not bits_of[d][1])
    if float_params * 2 > total:
        out.append(
            F.error(
                "GGUF_FILE_TYPE_MISMATCH",
                f"general.file_type says {spec.name} but "
                f"{float_params / total:.0%} of the weight parameters are stored in float types; "
                "the file was not quantized as it claims",
                **loc,
            )
        )
        return
    dominant = max((d for d in by_type if bits_of[d][1]), key=lambda d: (by_type[d], d))
    bits = bits_of[dominant][0]
    share = by_type[dominant] / total
    if bits < spec.floor_bits:
        out.append(
            F.error(
                "GGUF_FILE_TYPE_MISMATCH",
                f"general.file_type says {spec.name} but most weight "
                f"parameters ({share:.0%}) are {dominant} ({bits:g} bits), narrower than the "
                f"file type's {spec.floor_bits:g}",
                **loc,
            )
        )
    elif spec.ceiling_bits is not None and bits > spec.ceiling_bits:
        _check_wider_types(gf, spec, kv, layers)


def _recipe_promoted(gf: GGUFFile, spec: T.FileType) -> set[str]:
    """Names of the tensors that llama.cpp's recipe for `spec` itself stores wider than the file type
    and that hold exactly the recipe's type: `output.weight`, or with tied embeddings (no
    output.weight) the token embeddings, which then double as the output (llama-quant.cpp)."""
    arch_kv = gf.kvs.get("general.architecture")
    arch = arch_kv.value if arch_kv is not None and arch_kv.vtype == T.STRING else None
    names = {t.name for t in gf.tensors}
    heads = ("output.weight",) if "output.weight" in names else T.TOKEN_EMBD_NAMES
    promoted = set()
    for t in gf.tensors:
        if t.name in heads and t.ne and T.recipe_output_type(spec.id, t.ne[0], arch) == t.type_name:
            promoted.add(t.name)
    return promoted


def _check_wider_types(gf: GGUFFile, spec: T.FileType, kv: KV, layers: list[Layer]) -> None:
    """Most weights wider than a single-type file type, leaving out what its recipe promotes: a small
    model with tied embeddings has most of its parameters in the Q6_K token table of a Q4_0 file."""
    promoted = _recipe_promoted(gf, spec)
    by_type: dict[str, int] = {}
    for layer in layers:
        if layer.name not in promoted and layer.quantized:
            by_type[layer.dtype] = by_type.get(layer.dtype, 0) + layer.params
    total = sum(by_type.values())
    if not total:
        return
    dominant = max(by_type, key=lambda d: (by_type[d], d))
    bits = T.GGML_TYPE_BY_NAME[dominant].bits
    assert spec.ceiling_bits is not None
    if bits <= spec.ceiling_bits:
        return
    beside = f" besides {', '.join(sorted(promoted))}, which the recipe promotes" if promoted else ""
    gf.semantic.append(
        F.warning(
            "GGUF_FILE_TYPE_WIDER_TYPES",
            f"general.file_type says {spec.name} but most quantized weight parameters{beside} "
            f"({by_type[dominant] / total:.0%}) are {dominant} ({bits:g} bits), wider than llama.cpp's "
            "recipe for that file type gives them",
            offset=kv.offset,
            field=kv.key,
        )
    )


_ELEMENTS = attrgetter("elements")
_NBYTES = attrgetter("nbytes")
_TYPE_ID = attrgetter("type_id")
OUTPUT_NAMES = ("output.weight", "lm_head.weight")


def _bpw(elements: int, nbytes: int) -> float | None:
    return 8 * nbytes / elements if elements else None


# llama.cpp's split file names (llama_split_path): `<prefix>-00001-of-00003.gguf`
_SPLIT_NAME = re.compile(r"(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")
MAX_SPLITS = 4096  # shards read for one set; a real model has at most a few hundred
MAX_DIR_ENTRIES = 100_000  # entries of the folder scanned for extra shards


def split_name(name: str) -> tuple[str, int, int] | None:
    """(prefix, shard number from 1, shard count) of a file named as llama.cpp names a split shard."""
    match = _SPLIT_NAME.fullmatch(name)
    return (match["prefix"], int(match["no"]), int(match["count"])) if match else None


def _split_fields(gf: GGUFFile) -> tuple[int, int] | None:
    """(split.no, split.count) of a shard of a split model (count > 1), else None."""
    count, no = _kv_int(gf.kvs.get("split.count")), _kv_int(gf.kvs.get("split.no"))
    if count is None or no is None or count <= 1:
        return None
    return no, count


def _merge_split_set(gf: GGUFFile) -> dict[str, Any]:
    """Read the other shards of the split model whose first shard is `gf`, append their tensors to
    gf.tensors (and their structural findings, named by shard, to gf.structural) and flag a missing,
    extra or inconsistent shard. Returns the `split` facts (shard count, files, bytes of the set)."""
    count = (_split_fields(gf) or (0, 0))[1]
    folder, name = os.path.split(gf.path)
    if remote.is_url(gf.path):  # the shards beside a URL are URLs beside it
        name = remote.basename(gf.path)
    found = F.CappedFindings(gf.structural)
    facts: dict[str, Any] = {"count": count, "files": [name], "set_bytes": gf.size}
    prefix = _split_set_prefix(name, count, found)
    if prefix is None:
        found.close()
        return facts
    names = {t.name for t in gf.tensors}
    for k in range(2, count + 1):
        shard_name = f"{prefix}-{k:05d}-of-{count:05d}.gguf"
        shard = _open_shard(gf.path, shard_name, k, count, found)
        if shard is None:
            continue
        facts["files"].append(shard_name)
        facts["set_bytes"] += shard.size
        _check_shard(shard, shard_name, k, count, found)
        if len(gf.tensors) + len(shard.tensors) > MAX_TENSORS:
            found.add(
                F.error(
                    "GGUF_COUNT_TOO_LARGE",
                    f"the shards up to {shard_name} hold more than {MAX_TENSORS:,} tensors, the reader's "
                    "cap for one model; the rest of the set is not read",
                    field="split.count",
                )
            )
            break
        _append_shard_tensors(gf, shard, shard_name, names, found)
    if not remote.is_url(gf.path):  # a URL's folder cannot be listed
        _extra_shards(folder, prefix, count, found)
    declared = _kv_int(gf.kvs.get("split.tensors.count"))
    if declared is not None and declared != len(gf.tensors):
        found.add(
            F.error(
                "GGUF_SPLIT_MISSING" if len(gf.tensors) < declared else "GGUF_SPLIT_EXTRA",
                f"the {len(facts['files'])} shard(s) hold {len(gf.tensors):,} tensors but split.tensors.count "
                f"is {declared:,}",
                field="split.tensors.count",
            )
        )
    found.close()
    return facts


def _split_set_prefix(name: str, count: int, found: F.CappedFindings) -> str | None:
    """The shard names' common prefix, from the first shard's file name; None (and why) when the
    other shards cannot be looked for."""
    match = _SPLIT_NAME.fullmatch(name)
    if match is None or int(match["no"]) != 1 or int(match["count"]) != count:
        found.add(
            F.error(
                "GGUF_SPLIT_MISSING",
                f"the file is the first of {count} shards (split.count) but is not named "
                f"<name>-00001-of-{count:05d}.gguf, so the other shards cannot be found; "
                "keep llama.cpp's shard names",
                field="split.count",
            )
        )
        return None
    if count > MAX_SPLITS:
        found.add(
            F.error(
                "GGUF_SPLIT_MISSING",
                f"split.count is {count:,}, above the reader's cap of {MAX_SPLITS:,} shards: "
                "the count is corrupt",
                field="split.count",
            )
        )
        return None
    return match["prefix"]


def _open_shard(first: str, shard_name: str, k: int, count: int, found: F.CappedFindings) -> GGUFFile | None:
    """Shard k of the set beside the first shard `first` (a path or a URL), parsed; None (and
    GGUF_SPLIT_MISSING) when it cannot be read."""
    try:
        if remote.is_url(first):
            shard_path = remote.join(first, shard_name)
            if not remote.exists(shard_path):
                raise OSError("not found")
        else:
            # confined like every file read beside an artifact (quantgate.core.confine): a regular file
            # inside the folder; opening a FIFO planted under a shard's name would block forever
            got = confine(os.path.dirname(first), shard_name)
            if got.path is None:
                raise OSError(got.reason or f"{shard_name} {got.detail}")
            shard_path = got.path
        return parse(shard_path)
    except (OSError, remote.RemoteError) as exc:
        found.add(
            F.error(
                "GGUF_SPLIT_MISSING",
                f"shard {k} of {count}, {shard_name}, cannot be read ({getattr(exc, 'strerror', None) or exc}); "
                "ship every shard of the set",
                field="split.count",
            )
        )
        return None


def _check_shard(shard: GGUFFile, shard_name: str, k: int, count: int, found: F.CappedFindings) -> None:
    """The shard's own structural findings, named by shard, and its split keys against its name."""
    for f in shard.structural:
        found.add(dataclasses.replace(f, message=f"shard {shard_name}: {f.message}"))
    fields = _split_fields(shard)
    if fields != (k - 1, count):
        said = f"split.no {fields[0]} of split.count {fields[1]}" if fields else "no split keys"
        found.add(
            F.error(
                "GGUF_SPLIT_MISMATCH",
                f"shard {shard_name} has {said}, its name and the first shard say shard {k - 1} "
                f"(0-based) of {count}; re-split the model",
                field="split.no",
            )
        )


def _append_shard_tensors(
    gf: GGUFFile, shard: GGUFFile, shard_name: str, names: set[str], found: F.CappedFindings
) -> None:
    """The shard's tensors after the set's so far; a name already in an earlier shard is a mismatch."""
    for t in shard.tensors:
        if t.name in names:
            found.add(
                F.error(
                    "GGUF_SPLIT_MISMATCH",
                    f"tensor {t.name!r} is in shard {shard_name} and in an earlier shard; "
                    "each tensor must be in one shard",
                    tensor=t.name,
                )
            )
            continue
        names.add(t.name)
        t.index = len(gf.tensors)
        gf.tensors.append(t)


def _extra_shards(folder: str, prefix: str, count: int, found: F.CappedFindings) -> None:
    """Files beside the set named as shards of the same model that the set does not have."""
    try:
        with os.scandir(folder or ".") as entries:
            for i, entry in enumerate(entries):
                if i >= MAX_DIR_ENTRIES:
                    break
                m = _SPLIT_NAME.fullmatch(entry.name)
                if m is None or m["prefix"] != prefix:
                    continue
                k, n = int(m["no"]), int(m["count"])
                if n != count or not 1 <= k <= count:
                    found.add(
                        F.error(
                            "GGUF_SPLIT_EXTRA",
                            f"{entry.name} is named as shard {k} of {n}, but this model is split into "
                            f"{count}; remove the stray file or re-split the model",
                            field="split.count",
                        )
                    )
    except OSError:
        pass


def read(path: str) -> Inventory:
    """The GGUF file's inventory; never raises on bad content."""
    with gc_paused():
        return _read(path)


def _read(path: str) -> Inventory:
    try:
        gf = parse(path)
    except OSError as exc:
        inv = Inventory(FORMAT, path, 0)
        inv.structural_findings.append(
            F.error("FILE_UNREADABLE", f"cannot read the file: {exc.strerror or exc}")
        )
        return inv
    split, split_facts, size = _read_split_set(gf, path)
    inv = Inventory(FORMAT, path, size)
    inv.structural_findings = gf.structural
    # whole-list sums and counts below go through map/attrgetter: they visit every tensor
    sized = [t for t in gf.tensors if t.nbytes is not None]
    shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
    layers = [_layer(t, shapes) for t in sized if len(t.ne) >= 2]
    inv.layers = layers
    elements, nbytes = sum(map(_ELEMENTS, sized)), sum(map(_NBYTES, sized))
    inv.params_stored = elements
    type_counts = Counter(map(_TYPE_ID, gf.tensors))  # in order of first use, as the facts list them
    if split is not None and split[0] > 0:
        split_facts = _later_shard(gf, path, split)
    elif gf.complete:
        any_quantized = any(T.GGML_TYPES[i].quantized for i in type_counts if i in T.GGML_TYPES)
        _semantics(gf, layers, any_quantized)
    inv.semantic_findings = gf.semantic
    inv.metrics = _metrics(gf, layers, sized, elements, nbytes)
    inv.facts = _facts(gf, type_counts, split_facts, nbytes, inv.metrics.get("bits_per_weight_all"))
    return inv


def _read_split_set(gf: GGUFFile, path: str) -> tuple[tuple[int, int] | None, dict[str, Any] | None, int]:
    """(split.no and split.count, the `split` facts, the bytes gated): a split model is gated as one,
    its first shard reading the others (counts, types and memory are the set's); a later shard alone
    has no metadata to check."""
    split_facts: dict[str, Any] | None = None
    split = _split_fields(gf) if gf.complete else None
    size = gf.size
    if split is not None and split[0] == 0:
        split_facts = _merge_split_set(gf)
        size = split_facts["set_bytes"]
    named = split_name(os.path.basename(path))
    if gf.complete and named is not None and named[1] == 1 and named[2] > 1 and (split is None or split[0] != 0):
        # discovery gates shards 2..N through the file named as shard 1: its keys must make it read them
        said = f"split.no {split[0]} of split.count {split[1]}" if split else "no split.count above 1"
        gf.structural.append(
            F.error(
                "GGUF_SPLIT_MISMATCH",
                f"the file is named as the first of {named[2]} shards but has {said}, so the other shards "
                "are not read with it; re-split the model or rename the file",
                field="split.no",
            )
        )
    return split, split_facts, size


def _later_shard(gf: GGUFFile, path: str, split: tuple[int, int]) -> dict[str, Any]:
    """The `split` facts of shard 2..N read alone, and the info that says where its set is gated."""
    split_facts: dict[str, Any] = {"no": split[0] + 1, "count": split[1]}
    match = _SPLIT_NAME.fullmatch(os.path.basename(path))
    if match is not None:
        split_facts["first"] = f"{match['prefix']}-00001-of-{split[1]:05d}.gguf"
    gf.semantic.append(
        F.info(
            "GGUF_SPLIT_SHARD",
            f"shard {split[0] + 1} of {split[1]} of a split model: it carries no model metadata; "
            "the set is gated through its first shard"
            + (f" ({split_facts['first']})" if "first" in split_facts else ""),
            field="split.no",
        )
    )
    return split_facts


def _metrics(gf: GGUFFile, layers: list[Layer], sized: list[TensorInfo], elements: int, nbytes: int) -> dict[str, Any]:
    ft = _kv_int(gf.kvs.get("general.file_type"))
    qv = _kv_int(gf.kvs.get("general.quantization_version"))
    metrics: dict[str, Any] = {
        "tensor_count": len(gf.tensors),
        "kv_count": len(gf.kvs),
    }
    if ft is not None:
        metrics["file_type"] = T.short_file_type(ft)
    if qv is not None:
        metrics["quantization_version"] = qv
    bpw_all = _bpw(elements, nbytes)
    if bpw_all is not None:
        metrics["bits_per_weight_all"] = bpw_all
    # the embeddings and the output head: by name, with the kind of the last layer of that name
    kinds = {layer.name: layer.kind for layer in layers}
    excluded_names = {name for name, kind in kinds.items() if kind == EMBEDDING}.union(OUTPUT_NAMES)
    excluded = [t for t in sized if t.name in excluded_names]
    bpw_core = _bpw(elements - sum(map(_ELEMENTS, excluded)), nbytes - sum(map(_NBYTES, excluded)))
    if bpw_core is not None:
        metrics["bits_per_weight_excluding_embeddings_and_output"] = bpw_core
    return metrics


def _facts(
    gf: GGUFFile, type_counts: Counter[int], split_facts: dict[str, Any] | None, nbytes: int, bpw_all: float | None
) -> dict[str, Any]:
    ft = _kv_int(gf.kvs.get("general.file_type"))
    arch_kv = gf.kvs.get("general.architecture")
    arch = arch_kv.value if arch_kv is not None and arch_kv.vtype == T.STRING else None
    types = {type_name(type_id): n for type_id, n in type_counts.items()}
    facts: dict[str, Any] = {
        "version": gf.version,
        "architecture": arch,
        "name": gf.kvs["general.name"].value if "general.name" in gf.kvs else None,
        "file_type": T.file_type_name(ft) if ft is not None else None,
        "quantization_version": _kv_int(gf.kvs.get("general.quantization_version")),
        "tensor_count": len(gf.tensors) if split_facts is not None and "files" in split_facts else gf.tensor_count,
        "kv_count": gf.kv_count,
        "split": split_facts,
        "alignment": gf.alignment,
        "data_offset": gf.data_start,
        "tensor_data_bytes": nbytes,
        "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1])),
        "hparams": hparams(gf),
    }
    facts = {k: v for k, v in facts.items() if v is not None}
    if gf.complete:
        bits = f", {bpw_all:.4g} bpw" if bpw_all is not None else ""
        facts["summary"] = (
            f"GGUF v{gf.version}, {arch or '?'}, {len(gf.tensors)} tensors, {len(gf.kvs)} key/values, "
            f"file_type {T.file_type_name(ft) if ft is not None else 'absent'}{bits}"
        )
    return facts


# --- read-ahead for a URL -------------------------------------------------------------------------


def remote_extent(view: View, head: bytes, block: int) -> int:
    """Where the region this reader walks outside View.check ends (formats.wire.binary.prefetch): the
    key/values and tensor infos, found by a length-only walk, and a block past them."""
    return _header_end(view) + block


_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _header_end(view: View) -> int:
    """Where the GGUF tensor infos end, by lengths alone; stops where the structure stops making sense
    (the reader reports that spot, having read no further)."""
    size = len(view)
    pos = 24
    try:
        version = view.u32(4)
        if version < 2:
            return size  # GGUF v1 (32-bit counts): rare and small; read whole (capped)
        n_tensors, n_kv = view.u64(8), view.u64(16)
        if n_kv > size or n_tensors > size:
            return pos

        def value(vtype: int, pos: int, depth: int) -> int:
            if vtype in _SCALAR_SIZE:
                return pos + _SCALAR_SIZE[vtype]
            if vtype == 8:
                return pos + 8 + view.u64(pos)
            if vtype == 9 and depth < 3:
                etype, count = view.u32(pos), view.u64(pos + 4)
                pos += 12
                if etype in _SCALAR_SIZE:
                    return pos + count * _SCALAR_SIZE[etype]
                if count > size:
                    raise ValueError
                for _ in range(count):
                    pos = value(etype, pos, depth + 1)
                    if pos > size:
                        raise ValueError
                return pos
            raise ValueError

        for _ in range(n_kv):
            pos += 8 + view.u64(pos)
            pos = value(view.u32(pos), pos + 4, 0)
            if pos > size:
                return size
        for _ in range(n_tensors):
            pos += 8 + view.u64(pos)
            n_dims = view.u32(pos)
            if n_dims > 8:
                return pos
            pos += 4 + 8 * n_dims + 4 + 8
            if pos > size:
                return size
    except (ReadError, ValueError, RecursionError):
        pass
    return min(pos, size)
