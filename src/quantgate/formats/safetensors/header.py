"""safetensors header: parsed and checked at least as strictly as the reference `validate()`.

Layout: a u64 little-endian header length N, N bytes of UTF-8 JSON (an object of tensor entries
`{"dtype", "shape", "data_offsets": [begin, end]}` plus an optional `__metadata__` of string ->
string, or null), then the data buffer. The reference (safetensors/src/tensor.rs) requires N <= 100 MB,
known dtypes, end - begin == numel * bits / 8 exactly, whole bytes for sub-byte dtypes, tensors
contiguous from 0 once sorted by offset, and 8 + N + buffer end == the file length. Here each of
those is its own finding code with the tensor name and byte offset; duplicate JSON keys (which
serde silently collapses, last one wins) are reported too.

This module is the bottom of the safetensors reader: it imports neither `layouts` (which uses it to
read a sharded checkpoint's other headers) nor `reader` (the reader's entry point).
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass, field
from typing import Any

from quantgate.core import fastjson
from quantgate.core import findings as F
from quantgate.core.findings import Finding
from quantgate.core.gcpause import gc_paused
from quantgate.core.jsonfile import too_deep
from quantgate.formats.wire.binary import View

HEADER_LIMIT = 100_000_000  # the reference's MAX_HEADER_SIZE
MAX_DEPTH = 8  # the schema needs 3 levels ({name: {shape: [..]}}); anything deeper is hostile
MAX_PER_CODE = F.FINDINGS_PER_CODE  # findings of one code before the rest are summarised in one line
U64_MAX = (1 << 64) - 1

# dtype -> bits per element, as in safetensors 0.8 (there is no I4/U4: int4 is packed in I32/U8)
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_DTYPES: dict[str, tuple[str, int]] = {name: (name, bits) for name, bits in DTYPE_BITS.items()}

STRUCTURE_CODES = {
    "ST_HEADER_TOO_SMALL": "The file is shorter than the 8-byte header length field.",
    "ST_HEADER_TOO_LARGE": "The declared header length exceeds the reference's 100,000,000-byte limit.",
    "ST_HEADER_PAST_EOF": "The declared header length runs past the end of the file.",
    "ST_HEADER_NOT_UTF8": "The JSON header is not valid UTF-8 (offset of the first bad byte).",
    "ST_HEADER_INVALID_JSON": "The header is not valid JSON (offset of the parse error), or a `\\u` escape "
    "names a lone surrogate (valid JSON, no Unicode text: the reference reader rejects it).",
    "ST_HEADER_TOO_DEEP": "The JSON header nests deeper than a safetensors header can (hostile input).",
    "ST_HEADER_NOT_OBJECT": "The JSON header is not an object of tensor entries.",
    "ST_DUPLICATE_KEY": "A JSON key appears twice in one object (the reference keeps the last, silently).",
    "ST_METADATA_INVALID": "`__metadata__` is not an object of string -> string (or null).",
    "ST_ENTRY_INVALID": "A tensor entry is not an object, or lacks dtype, shape or data_offsets.",
    "ST_ENTRY_UNKNOWN_FIELD": "A tensor entry has a key other than dtype, shape and data_offsets (ignored by "
    "the reference).",
    "ST_UNKNOWN_DTYPE": "The dtype is not one the safetensors format defines (e.g. I4).",
    "ST_BAD_SHAPE": "The shape is not a list of non-negative integers.",
    "ST_SHAPE_OVERFLOW": "The tensor's byte size overflows 64 bits.",
    "ST_BAD_OFFSETS": "data_offsets is not [begin, end] with 0 <= begin <= end.",
    "ST_SUBBYTE_NOT_WHOLE_BYTES": "A sub-byte dtype (F4, F6) tensor does not fill a whole number of bytes.",
    "ST_SIZE_MISMATCH": "end - begin differs from numel x bits / 8: dtype or shape does not match the bytes.",
    "ST_TENSOR_GAP": "Unclaimed bytes between two tensors in the data buffer (tensors must be contiguous).",
    "ST_TENSOR_OVERLAP": "Two tensors claim the same bytes of the data buffer.",
    "ST_TRUNCATED": "The file ends before the last tensor's data: the number of missing bytes is given.",
    "ST_TRAILING_BYTES": "Bytes after the end of the last tensor (the reference rejects the file).",
    "ST_TOO_MANY_FINDINGS": "More findings of one code than are listed; the rest are counted in one notice (info).",
    "ST_OUT_OF_BOUNDS": "A read the header implies ran past the end of the file.",
}


@dataclass(slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the data buffer
    end: int
    numel: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def bits(self) -> int:
        return DTYPE_BITS[self.dtype]


@dataclass
class Header:
    """What the header says, once parsed: valid entries only; defects go to `findings`."""

    header_len: int = 0
    data_start: int = 0
    file_size: int = 0
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    metadata: dict[str, str] | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not F.has_errors(self.findings)


class _Findings(F.CappedFindings):
    """Findings with the shared per-code cap, so a hostile header cannot flood a report."""

    def __init__(self, out: list[Finding]):
        super().__init__(out, "ST_TOO_MANY_FINDINGS")


class _PairsRecorder:
    """`object_pairs_hook` that keeps the last value (as serde does) and records every duplicate key."""

    def __init__(self) -> None:
        self.duplicates: list[tuple[str, dict[str, Any]]] = []  # (key, the object it was repeated in)

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)  # the last value wins, as in serde
        if len(out) != len(pairs):  # rare: find the repeated keys
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    self.duplicates.append((key, out))
                seen.add(key)
        return out


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean",
               type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= U64_MAX  # bool is not an int here


class _Locator:
    """Byte offsets of names in the header, looked up only for the findings that need one.

    Entries are checked in header order, so each search starts where the previous one matched and
    the usual cost is one pass over the header. A hostile header with thousands of findings cannot
    turn this into thousands of passes: after LOCATE_LIMIT lookups the header start is reported.
    """

    LOCATE_LIMIT = 500

    def __init__(self, view: View, header_len: int):
        self.view = view
        self.header_len = header_len
        self.base = 8
        self.cursor = 0
        self.calls = 0
        self._raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        """The header's bytes, read again on the first lookup: a sound header never needs them."""
        if self._raw is None:
            self._raw = self.view.bytes(8, self.header_len, "header")
        return self._raw

    def offset_of(self, name: str, nth: int = 1) -> int:
        self.calls += 1
        if self.calls > self.LOCATE_LIMIT:
            return self.base
        for needle in (json.dumps(name, ensure_ascii=False).encode(), json.dumps(name).encode()):
            if nth == 1:
                pos = self.raw.find(needle, self.cursor)
                if pos < 0:
                    pos = self.raw.find(needle)
                if pos >= 0:
                    self.cursor = max(self.cursor, pos)
                    return self.base + pos
            else:
                pos = -1
                for _ in range(nth):
                    pos = self.raw.find(needle, pos + 1)
                    if pos < 0:
                        break
                if pos >= 0:
                    return self.base + pos
        return self.base


def parse_header(view: View) -> Header:
    """Parse and check the header and the data layout; never raises on bad input."""
    with gc_paused():
        return _parse_header(view)


def _parse_header(view: View) -> Header:
    head = Header(file_size=len(view))
    out = _Findings(head.findings)
    raw = _header_bytes(view, head, out)
    text = _header_text(raw, out) if raw is not None else None
    # the depth scan comes before either parse: describing a defect (json.dumps of a bad shape) must
    # never meet a hostile depth, and orjson parses up to 1024 levels
    if text is not None and not _too_deep(text, raw, out):
        del raw  # 6 MB on a 50k-tensor header, no longer held during the parse
        fast = _sound_by_orjson(text, view, head)
        if fast is not None:
            return fast
        parsed = _load_json(text, out)
        if parsed is not None:
            doc, duplicates = parsed
            _check_doc(doc, view, head, out, duplicates)
    out.close()
    return head


def _sound_by_orjson(text: str, view: View, head: Header) -> Header | None:
    """The header parsed by orjson and checked, when that finds it sound; else None, and the plain path
    (json's parse, the reference, which names every defect) reads it.

    The one fast path of this reader, kept for what it saves on a large header (benchmarks/RESULTS.md,
    safetensors). A sound header reads the same either way: orjson rejects
    what json would accept with a finding (NaN, a lone surrogate), a number it reads otherwise (an
    integer past 64 bits) is no sound shape or offset, a repeated key (which both parsers drop
    silently) is seen by _every_key_kept."""
    doc = fastjson.loads(text)  # type: ignore[arg-type]  # orjson takes the str as well as its bytes
    if type(doc) is not dict:
        return None
    fast = Header(header_len=head.header_len, data_start=head.data_start, file_size=head.file_size)
    _check_doc(doc, view, fast, _Findings(fast.findings), duplicates=[])
    return fast if not fast.findings and _every_key_kept(text, doc, fast) else None


def _every_key_kept(text: str, doc: dict[str, Any], head: Header) -> bool:
    """Whether the parse of a sound header kept a member for every key of its text: when it did not,
    a key was repeated. Outside strings, JSON has a colon only between a key and its value, so the
    text's colons are its keys plus the colons inside its strings. A sound header's strings are the
    names, each entry's three keys and its dtype (none with a colon), and the metadata's keys and
    values. A colon spelled as an escape (`\\u003a`) is not counted: such a header takes the plain path."""
    if "\\" in text and ("\\u003a" in text or "\\u003A" in text):  # a backslash first: one fast scan
        return False
    meta = head.metadata or {}
    keys = len(doc) + 3 * len(head.tensors) + len(meta)
    in_strings = "".join(doc).count(":") + "".join(meta).count(":") + "".join(meta.values()).count(":")
    return text.count(":") == keys + in_strings


def _header_bytes(view: View, head: Header, out: _Findings) -> bytes | None:
    """The JSON header's bytes once the length field is sound; None after a finding."""
    size = head.file_size
    if size < 8:
        out.add(F.error("ST_HEADER_TOO_SMALL",
                        f"the file has {size} byte(s), fewer than the 8-byte header length; it is not a "
                        "safetensors file or was cut short", offset=0))
        return None
    n = view.u64(0, "header_len")
    head.header_len = n
    if n > HEADER_LIMIT:
        out.add(F.error("ST_HEADER_TOO_LARGE",
                        f"header length {n:,} exceeds the reference reader's {HEADER_LIMIT:,}-byte limit",
                        offset=0, field="header_len"))
        return None
    if 8 + n > size:
        out.add(F.error("ST_HEADER_PAST_EOF",
                        f"header length {n:,} runs {8 + n - size:,} byte(s) past the end of the file "
                        f"({size:,} bytes): the file is truncated or the length field is corrupt",
                        offset=0, field="header_len"))
        return None
    head.data_start = 8 + n
    return view.bytes(8, n, "header")


def _header_text(raw: bytes, out: _Findings) -> str | None:
    """The header's text once it is sound UTF-8; None after a finding."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.add(F.error("ST_HEADER_NOT_UTF8",
                        f"the header is not valid UTF-8 at byte {8 + exc.start}: re-export the file",
                        offset=8 + exc.start, field="header"))
        return None


def _too_deep(text: str, raw: bytes, out: _Findings) -> bool:
    """Whether the JSON nests deeper than MAX_DEPTH (a finding then): json's recursive parse must
    never meet a hostile depth."""
    if too_deep(text, MAX_DEPTH, raw):
        out.add(F.error("ST_HEADER_TOO_DEEP",
                        f"the JSON header nests deeper than {MAX_DEPTH} levels; a safetensors header needs 3",
                        offset=8, field="header"))
        return True
    return False


def _load_json(text: str, out: _Findings) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]] | None:
    """The header's JSON object and its duplicate keys (see _PairsRecorder), or None after a finding."""
    recorder = _PairsRecorder()
    try:
        doc = json.loads(text, object_pairs_hook=recorder)
    except RecursionError:  # defence in depth: the depth scan should have caught it
        out.add(F.error("ST_HEADER_TOO_DEEP", "the JSON header nests too deeply", offset=8, field="header"))
        return None
    except ValueError as exc:
        pos = getattr(exc, "pos", 0) or 0
        msg = getattr(exc, "msg", str(exc))
        out.add(F.error("ST_HEADER_INVALID_JSON",
                        f"the header is not valid JSON ({msg} at byte {8 + len(text[:pos].encode())})",
                        offset=8 + len(text[:pos].encode()), field="header"))
        return None
    pos = _lone_surrogate(text)
    if pos is not None:
        # valid JSON, but no Unicode text: the reference reader (serde_json) rejects the header, and a
        # name holding it could be printed by no UTF-8 encoder
        at = 8 + len(text[:pos].encode())
        out.add(F.error("ST_HEADER_INVALID_JSON",
                        f"the header is not valid JSON (a \\u escape names a lone surrogate, which is no "
                        f"Unicode character, at byte {at}): re-export the file",
                        offset=at, field="header"))
        return None
    if not isinstance(doc, dict):
        out.add(F.error("ST_HEADER_NOT_OBJECT",
                        f"the header is a JSON {_json_type(doc)}, not an object of tensor entries",
                        offset=8, field="header"))
        return None
    return doc, recorder.duplicates


_SURROGATE_ESCAPE = re.compile(r"(\\+)u([dD][89a-fA-F][0-9a-fA-F]{2})")


def _lone_surrogate(text: str) -> int | None:
    """The index of the first `\\uD800`–`\\uDFFF` escape of `text` (valid JSON) that is not half of a
    high-low pair, or None. An even run of backslashes before the `u` is an escaped backslash."""
    if "\\u" not in text:
        return None
    pending: int | None = None  # a high surrogate waiting for its low half
    paired_end = -1
    for match in _SURROGATE_ESCAPE.finditer(text):
        if len(match[1]) % 2 == 0:
            continue
        start = match.end(1) - 1  # the escape's backslash
        high = match[2][1].lower() in "89ab"
        if pending is not None:
            if not high and start == paired_end:
                pending = None
                continue
            return pending
        if high:
            pending, paired_end = start, match.end()
        else:
            return start
    return pending


def _check_doc(doc: dict[str, Any], view: View, head: Header, out: _Findings,
               duplicates: list[tuple[str, dict[str, Any]]]) -> None:
    """Check the parsed header into `head`: duplicate keys, metadata, each entry, then the data layout."""
    loc = _Locator(view, head.header_len)
    _report_duplicates(doc, duplicates, out, loc)
    _check_metadata(doc.get("__metadata__"), "__metadata__" in doc, head, out, loc)
    tensors = head.tensors
    for name, entry in doc.items():
        if name == "__metadata__":
            continue
        # an entry of the three keys goes straight to their check; any other shape is told apart first
        if type(entry) is dict and entry.keys() == _ENTRY_KEY_SET:
            tensor = _typed_entry(name, entry["dtype"], entry["shape"], entry["data_offsets"], out, loc)
        else:
            tensor = _check_entry(name, entry, out, loc)
        if tensor is not None:
            tensors[name] = tensor
    entries = len(doc) - ("__metadata__" in doc)
    _check_layout(head, out, all_entries_valid=len(head.tensors) == entries)


def _report_duplicates(doc: dict[str, Any], duplicates: list[tuple[str, dict[str, Any]]], out: _Findings,
                       loc: _Locator) -> None:
    seen_dup: dict[str, int] = {}
    owners = {id(v): k for k, v in doc.items() if isinstance(v, dict)} if duplicates else {}
    for key, obj in duplicates:
        if obj is doc:
            seen_dup[key] = seen_dup.get(key, 1) + 1
            out.add(F.error("ST_DUPLICATE_KEY",
                            f"tensor {key!r} is declared {seen_dup[key]} times in the header; readers keep "
                            "the last entry silently: remove the duplicate",
                            offset=loc.offset_of(key, seen_dup[key]), tensor=key))
        else:
            owner = owners.get(id(obj))
            out.add(F.error("ST_DUPLICATE_KEY",
                            f"key {key!r} appears twice in the entry of {owner!r}; readers keep the last "
                            "silently" if owner else f"key {key!r} appears twice in one header object",
                            offset=loc.offset_of(owner) if owner else 8, tensor=owner, field=key))


def _check_metadata(meta: Any, present: bool, head: Header, out: _Findings, loc: _Locator) -> None:
    # `"__metadata__": null` is no metadata: the reference reads it as an absent Option (and
    # mlx.core.save_safetensors writes it whenever no metadata is given)
    if not present or meta is None:
        return
    if not isinstance(meta, dict):
        out.add(F.error("ST_METADATA_INVALID",
                        f"__metadata__ is a JSON {_json_type(meta)}, not an object of strings",
                        offset=loc.offset_of("__metadata__"), field="__metadata__"))
        return
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    for key in bad:
        out.add(F.error("ST_METADATA_INVALID",
                        f"__metadata__[{key!r}] is a JSON {_json_type(meta[key])}, not a string; the "
                        "reference reader rejects the file",
                        offset=loc.offset_of(key), field=f"__metadata__.{key}"))
    head.metadata = {k: v for k, v in meta.items() if isinstance(v, str)}


_ENTRY_KEYS = ("dtype", "shape", "data_offsets")
_ENTRY_KEY_SET = frozenset(_ENTRY_KEYS)


def _check_entry(name: str, entry: Any, out: _Findings, loc: _Locator) -> TensorEntry | None:
    if type(entry) is not dict:
        _entry_error(out, loc, name, "ST_ENTRY_INVALID",
                     f"the entry is a JSON {_json_type(entry)}, not an object")
        return None
    if entry.keys() != _ENTRY_KEY_SET:
        return _odd_entry(name, entry, out, loc)
    return _typed_entry(name, entry["dtype"], entry["shape"], entry["data_offsets"], out, loc)


def _entry_error(out: _Findings, loc: _Locator, name: str, code: str, message: str) -> None:
    out.add(F.error(code, f"tensor {name!r}: {message}", offset=loc.offset_of(name), tensor=name))


def _odd_entry(name: str, entry: dict[str, Any], out: _Findings, loc: _Locator) -> TensorEntry | None:
    missing = [k for k in _ENTRY_KEYS if k not in entry]
    if missing:
        _entry_error(out, loc, name, "ST_ENTRY_INVALID", f"the entry lacks {', '.join(missing)}")
        return None
    extra = sorted(k for k in entry if k not in _ENTRY_KEYS)
    if extra:
        out.add(F.warning("ST_ENTRY_UNKNOWN_FIELD",
                          f"tensor {name!r}: unknown key(s) {', '.join(map(repr, extra))}, ignored by "
                          "readers",
                          offset=loc.offset_of(name), tensor=name))
    return _typed_entry(name, entry["dtype"], entry["shape"], entry["data_offsets"], out, loc)


_BIG = U64_MAX + 1  # a running element count clamps here: past it the size overflows unless a dim is 0


def _typed_entry(name: str, dtype: Any, shape: Any, offsets: Any, out: _Findings,
                 loc: _Locator) -> TensorEntry | None:
    # the happy path in one pass: JSON values have exact types, so `type() is` is the isinstance test
    # the dtype's one shared string (not one per entry as the JSON parse makes them) and its bits
    known = _DTYPES.get(dtype) if type(dtype) is str else None
    numel: int | None = None
    if type(shape) is list:
        numel = 1
        for d in shape:
            if type(d) is not int or not 0 <= d <= U64_MAX:  # bool is not an int here
                numel = None
                break
            numel *= d
            if numel > U64_MAX:
                numel = _BIG  # bounded: a hostile shape of a million huge dims stays a small integer
    begin = end = -1
    if type(offsets) is list and len(offsets) == 2:
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end <= U64_MAX:
            begin = end = -1
    if known is None or numel is None or begin < 0:
        _bad_entry(name, dtype, shape, offsets, out, loc)
        return None
    dtype, bits = known
    size_bits = numel * bits
    if size_bits > U64_MAX:
        _entry_error(out, loc, name, "ST_SHAPE_OVERFLOW", f"shape {shape} x {bits} bits overflows 64 bits")
        return None
    if size_bits % 8:
        _entry_error(out, loc, name, "ST_SUBBYTE_NOT_WHOLE_BYTES",
                     f"{numel} element(s) of {dtype} ({bits} bits) is not a whole number of bytes")
        return None
    if end - begin != size_bits // 8:
        _entry_error(out, loc, name, "ST_SIZE_MISMATCH",
                     f"data_offsets [{begin}, {end}] hold {end - begin} byte(s) but {dtype} {shape} needs "
                     f"{size_bits // 8}: the dtype or shape does not match the stored bytes")
        return None
    return TensorEntry(name, dtype, tuple(shape), begin, end, numel)


def _bad_entry(name: str, dtype: Any, shape: Any, offsets: Any, out: _Findings, loc: _Locator) -> None:
    """Every defect of an entry whose dtype, shape or offsets is malformed, one finding each."""
    def err(code: str, message: str) -> None:
        _entry_error(out, loc, name, code, message)

    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        err("ST_UNKNOWN_DTYPE",
            f"unknown dtype {dtype!r}; safetensors has no I4/U4 (int4 is packed into I32 or U8)")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        err("ST_BAD_SHAPE", f"shape {_short(shape)} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets)
            or offsets[0] > offsets[1]):
        err("ST_BAD_OFFSETS", f"data_offsets {_short(offsets)} is not [begin, end] with 0 <= begin <= end")


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_layout(head: Header, out: _Findings, all_entries_valid: bool) -> None:
    """Contiguity from 0 (each gap and overlap between the tensors in buffer order), then the buffer end
    against the file length."""
    ordered = sorted(head.tensors.values(), key=_BUFFER_ORDER)
    cursor = 0
    last: TensorEntry | None = None
    for t in ordered:
        # zero-sized tensors sit anywhere inside the buffer without claiming bytes
        if t.begin > cursor and all_entries_valid:  # an invalid entry's bytes would look like a gap
            after = f"after {last.name!r}" if last else "at the start of the data buffer"
            out.add(F.error("ST_TENSOR_GAP",
                            f"{t.begin - cursor} unclaimed byte(s) {after} before {t.name!r} "
                            f"(data bytes {cursor}..{t.begin}); tensors must be contiguous",
                            offset=head.data_start + cursor, tensor=t.name))
        elif t.begin < cursor and t.nbytes > 0:
            assert last is not None
            out.add(F.error("ST_TENSOR_OVERLAP",
                            f"{t.name!r} (data bytes {t.begin}..{t.end}) overlaps {last.name!r} by "
                            f"{min(cursor, t.end) - t.begin} byte(s)",
                            offset=head.data_start + t.begin, tensor=t.name))
        if t.end >= cursor:
            cursor = t.end
            last = t
    _check_end(head, out, cursor, ordered, all_entries_valid)


_BUFFER_ORDER = operator.attrgetter("begin", "end", "name")  # the walk's order, and the culprit's


def _check_end(head: Header, out: _Findings, cursor: int, ordered: list[TensorEntry],
               all_entries_valid: bool) -> None:
    """The end of the data buffer (`cursor`) against the file length."""
    available = head.file_size - head.data_start
    if cursor > available:
        culprit = next((t for t in ordered if t.end > available), ordered[-1] if ordered else None)
        out.add(F.error("ST_TRUNCATED",
                        f"the file is {cursor - available:,} byte(s) short: the data buffer needs {cursor:,} "
                        f"bytes but {available:,} remain after the header "
                        f"(tensor {culprit.name if culprit else '?'!r} runs past the end); re-download or "
                        "re-export it",
                        offset=head.file_size, tensor=culprit.name if culprit else None))
    elif cursor < available and all_entries_valid:
        out.add(F.error("ST_TRAILING_BYTES",
                        f"{available - cursor:,} byte(s) after the end of the last tensor (file offset "
                        f"{head.data_start + cursor:,}); the reference reader rejects the file",
                        offset=head.data_start + cursor))
