"""safetensors structure: each corruption in docs/finding-codes.md#safetensors gives its own finding code
through the real CLI, valid files pass, and the header agrees with `safetensors.safe_open`."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_hs

from conftest import FIXTURES, run_json
from quantgate.formats.safetensors import header as sth
from quantgate.formats.safetensors import reader as st
from quantgate.formats.wire.binary import View

ST = FIXTURES / "safetensors"
BROKEN = ST / "broken"

# fixture -> (finding code, extra check on the finding)
BROKEN_CASES = {
    "truncated_last_byte": "ST_TRUNCATED",
    "header_only": "ST_TRUNCATED",
    "end_past_buffer": "ST_TRUNCATED",
    "trailing_16": "ST_TRAILING_BYTES",
    "header_len_2_40": "ST_HEADER_TOO_LARGE",
    "header_len_past_eof": "ST_HEADER_PAST_EOF",
    "bad_json": "ST_HEADER_INVALID_JSON",
    "non_utf8": "ST_HEADER_NOT_UTF8",
    "deep_nesting": "ST_HEADER_TOO_DEEP",
    "gap": "ST_TENSOR_GAP",
    "overlap": "ST_TENSOR_OVERLAP",
    "dtype_f16_for_f32": "ST_SIZE_MISMATCH",
    "unknown_dtype_i4": "ST_UNKNOWN_DTYPE",
    "f4_odd": "ST_SUBBYTE_NOT_WHOLE_BYTES",
    "negative_dim": "ST_BAD_SHAPE",
    "shape_overflow": "ST_SHAPE_OVERFLOW",
    "bad_offsets": "ST_BAD_OFFSETS",
    "missing_field": "ST_ENTRY_INVALID",
    "metadata_int": "ST_METADATA_INVALID",
    "duplicate_key": "ST_DUPLICATE_KEY",
}
VALID_BROKEN_DIR = ("valid_tiny", "leading_spaces", "f4_valid")
# serde keeps the last of two identical entries and loads the file; quantgate reports the duplicate
STRICTER_THAN_REFERENCE = ("duplicate_key",)

VALID_FILES = sorted(p for p in ST.rglob("*.safetensors") if p.parent.name != "broken") + [
    BROKEN / f"{n}.safetensors" for n in VALID_BROKEN_DIR
]


@pytest.mark.parametrize("name,code", sorted(BROKEN_CASES.items()))
def test_broken_file_gives_its_code(name: str, code: str) -> None:
    rc, result = run_json("guard", "integrity", str(BROKEN / f"{name}.safetensors"))
    assert rc == 1, result
    assert result["status"] == "FAIL"
    codes = [f["code"] for f in result["findings"]]
    assert codes == [code], codes  # exactly one finding: the defect, not its echoes
    finding = result["findings"][0]
    assert finding["severity"] == "error"
    assert "offset" in finding["location"] or "field" in finding["location"]


def test_locations_name_tensor_and_offset() -> None:
    _, result = run_json("guard", "integrity", str(BROKEN / "truncated_last_byte.safetensors"))
    f = result["findings"][0]
    assert "1 byte(s) short" in f["message"]
    assert f["location"]["tensor"] == "fc2.weight"
    assert f["location"]["offset"] == (BROKEN / "truncated_last_byte.safetensors").stat().st_size
    _, result = run_json("guard", "integrity", str(BROKEN / "trailing_16.safetensors"))
    f = result["findings"][0]
    assert "16 byte(s)" in f["message"]
    assert f["location"]["offset"] == (BROKEN / "valid_tiny.safetensors").stat().st_size
    _, result = run_json("guard", "integrity", str(BROKEN / "duplicate_key.safetensors"))
    f = result["findings"][0]
    assert f["location"]["tensor"] == "fc2.weight"
    data = (BROKEN / "duplicate_key.safetensors").read_bytes()
    first = data.find(b'"fc2.weight"')
    assert f["location"]["offset"] == data.find(b'"fc2.weight"', first + 1)  # the second declaration


def test_dtype_guard_blocked_on_broken_file() -> None:
    _, result = run_json("guard", "safetensors-dtypes", str(BROKEN / "gap.safetensors"))
    assert result["status"] == "SKIP" and result["skip"]["reason"] == "blocked_by:integrity"


@pytest.mark.parametrize("name", ["seven_bytes", "not_object"])
def test_unsniffable_files_fail_integrity(name: str) -> None:
    rc, result = run_json("guard", "integrity", str(BROKEN / f"{name}.safetensors"))
    assert rc == 1 and [f["code"] for f in result["findings"]] == ["FORMAT_UNKNOWN"]


def test_reader_codes_for_unsniffable_files() -> None:
    assert [f.code for f in st.read(str(BROKEN / "seven_bytes.safetensors")).structural_findings] == [
        "ST_HEADER_TOO_SMALL"]
    assert [f.code for f in st.read(str(BROKEN / "not_object.safetensors")).structural_findings] == [
        "ST_HEADER_NOT_OBJECT"]


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_valid_files_pass_integrity(path: Path) -> None:
    inv = st.read(str(path))
    assert inv.structural_findings == []
    assert inv.facts["summary"]


def test_valid_file_passes_integrity_cli() -> None:
    rc, result = run_json("guard", "integrity", str(ST / "ct_w4a16" / "model.safetensors"))
    assert rc == 0 and result["status"] == "PASS" and result["findings"] == []
    assert "9 weight ops (7 quantized" in result["message"]


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_differential_against_safe_open(path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    with open(path, "rb") as handle:
        head = st.parse_header(View(handle.read()))
    with safetensors.safe_open(str(path), framework="numpy") as ref:
        keys = set(ref.keys())
        assert keys == set(head.tensors)
        for k in keys:
            s = ref.get_slice(k)
            assert s.get_dtype() == head.tensors[k].dtype, k
            assert tuple(s.get_shape()) == head.tensors[k].shape, k
        assert (ref.metadata() or None) == (head.metadata or None)


@pytest.mark.parametrize("path", sorted(BROKEN.glob("*.safetensors")), ids=lambda p: p.stem)
def test_accept_reject_parity_with_safe_open(path: Path) -> None:
    """Whatever safe_open rejects, quantgate rejects too (and the other way round)."""
    safetensors = pytest.importorskip("safetensors")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as ref:
            list(ref.keys())
        ref_ok = True
    except Exception:
        ref_ok = False
    ours_ok = st.read(str(path)).structurally_sound
    if path.stem in STRICTER_THAN_REFERENCE:
        assert ref_ok and not ours_ok
    else:
        assert ours_ok == ref_ok


def test_findings_are_capped() -> None:
    """A header with thousands of bad entries gives a bounded list plus a summary line."""
    import json
    import struct

    header = {f"t{i}": {"dtype": "I4", "shape": [1], "data_offsets": [0, 0]} for i in range(500)}
    raw = json.dumps(header).encode()
    head = st.parse_header(View(struct.pack("<Q", len(raw)) + raw))
    codes = [f.code for f in head.findings]
    assert codes.count("ST_UNKNOWN_DTYPE") == st.MAX_PER_CODE
    assert codes[-1] == "ST_TOO_MANY_FINDINGS"


def test_zero_sized_tensors_do_not_break_contiguity() -> None:
    import json
    import struct

    header = {"a": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "c": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}}
    raw = json.dumps(header).encode()
    head = st.parse_header(View(struct.pack("<Q", len(raw)) + raw + bytes(8)))
    assert head.findings == []


def test_reader_imports_no_heavy_library() -> None:
    import subprocess
    import sys

    from conftest import cli_env

    code = (
        "import sys; from quantgate.formats.safetensors import reader as st; "
        f"st.read({str(ST / 'bnb_nf4' / 'model.safetensors')!r}); "
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# --- duplicate keys, and the one fast path (orjson) against the plain path (json) -----------------

_KEYS = ("a", "b", "a:b", ":", "dtype", "shape", "data_offsets", "é", "\u003a:")


@st_hs.composite
def _json_text(draw: st_hs.DrawFn, depth: int = 0) -> str:
    """JSON text that may repeat keys at any level, with colons and non-ASCII in keys and strings, and
    escaped (`\\u003a`) or raw characters."""
    ascii_only = draw(st_hs.booleans())
    if depth >= 3 or draw(st_hs.integers(0, 2)) == 0:
        scalar = draw(st_hs.one_of(st_hs.integers(-5, 1 << 65), st_hs.booleans(), st_hs.none(),
                                   st_hs.sampled_from(_KEYS), st_hs.text(alphabet="ab:é\\\"", max_size=4)))
        return json.dumps(scalar, ensure_ascii=ascii_only)
    if draw(st_hs.booleans()):
        items = draw(st_hs.lists(_json_text(depth + 1), max_size=3))
        return "[" + ",".join(items) + "]"
    keys = draw(st_hs.lists(st_hs.sampled_from(_KEYS), max_size=4))
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{draw(_json_text(depth + 1))}"
                          for k in keys) + "}"


def _view(header: str, data: int = 4) -> View:
    raw = header.encode()
    return View(struct.pack("<Q", len(raw)) + raw + bytes(data))


def _same_with_and_without_orjson(view: View) -> st.Header:
    """The header reads the same (tensors, metadata, every finding) by the fast path (orjson, where it
    takes the header) as by the plain path (json alone)."""
    with_orjson = st.parse_header(view)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sth.fastjson, "orjson", None)
        json_only = st.parse_header(view)
    assert with_orjson.tensors == json_only.tensors and with_orjson.metadata == json_only.metadata
    assert [f.to_dict() for f in with_orjson.findings] == [f.to_dict() for f in json_only.findings]
    return with_orjson


ENTRY = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
NEXT = '{"dtype":"F32","shape":[1],"data_offsets":[4,8]}'


@pytest.mark.parametrize("header,where", [
    # sound in every other way: orjson and json both keep the last member silently
    (f'{{"t":{ENTRY},"t":{ENTRY}}}', ("t", None)),
    ('{"t":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', ("t", "dtype")),
    (f'{{"__metadata__":{{"k":"v","k":"v"}},"t":{ENTRY}}}', ("__metadata__", "k")),
    # a colon spelled as an escape beside a repeated key: the colon count alone would balance
    (f'{{"__metadata__":{{"\\u003a":"v"}},"t":{ENTRY},"t":{ENTRY}}}', ("t", None)),
    (f'{{"a:b":{ENTRY},"u":{NEXT},"u":{NEXT}}}', ("u", None)),
])
def test_file_with_a_duplicate_key_gives_one_finding(header: str, where: tuple[str | None, str | None]) -> None:
    head = _same_with_and_without_orjson(_view(header, 8 if '"u"' in header else 4))
    assert [(f.code, f.tensor, f.field) for f in head.findings] == [("ST_DUPLICATE_KEY", *where)]


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    parses: list[str] = []
    fast, plain = sth.fastjson.loads, sth.json.loads

    def fast_loads(raw: bytes) -> object:
        parses.append("orjson")
        return fast(raw)

    def plain_loads(text: str, **kwargs: object) -> object:
        parses.append("json")
        return plain(text, **kwargs)

    monkeypatch.setattr(sth.fastjson, "loads", fast_loads)
    monkeypatch.setattr(sth.json, "loads", plain_loads)
    return parses


@pytest.mark.parametrize("header,expected", [
    (f'{{"t":{ENTRY}}}', ["orjson"]),  # sound: the fast path alone
    (f'{{"t":{ENTRY},"t":{ENTRY}}}', ["orjson", "json"]),  # then json, whose parse records the duplicate
    ('{"t":{"dtype":"I4","shape":[1],"data_offsets":[0,4]}}', ["orjson", "json"]),
    ('{"t":NaN}', ["orjson", "json"]),  # orjson refuses it; json names the defect
])
def test_a_header_is_parsed_at_most_twice(monkeypatch: pytest.MonkeyPatch, header: str,
                                          expected: list[str]) -> None:
    """Once by orjson, and once more by json only when that did not prove the header sound."""
    parses = _count_parses(monkeypatch)
    st.parse_header(_view(header))
    assert parses == expected


@settings(max_examples=300, deadline=None)
@given(text=_json_text())
def test_header_with_any_object_reports_the_same_duplicates(text: str) -> None:
    """A header wrapping arbitrary JSON (in the metadata, a tensor entry, or as an extra key) lists the
    duplicate keys exactly as json's recording parse does, by either path."""
    for header in (f'{{"__metadata__":{text},"t":{ENTRY}}}', f'{{"t":{text},"u":{ENTRY}}}',
                   f'{{"t":{ENTRY[:-1]},"x":{text}}}}}'):
        head = _same_with_and_without_orjson(_view(header))
        recorder = sth._PairsRecorder()
        json.loads(header, object_pairs_hook=recorder)
        found = [f.field or f.tensor for f in head.findings if f.code == "ST_DUPLICATE_KEY"]
        assert found == [key for key, _ in recorder.duplicates][: st.MAX_PER_CODE]


_NAMES = ("t", "u", "a:b", ":", "é:", "x\\u003ay", 'q\\":', "dtype")


@st_hs.composite
def _sound_header(draw: st_hs.DrawFn) -> tuple[str, int]:
    """A sound header (names and metadata with colons, escaped or not), perhaps with one member
    repeated: a tensor, a key inside an entry, or a metadata key."""
    names = draw(st_hs.lists(st_hs.sampled_from(_NAMES), unique=True, min_size=1, max_size=4))
    members = [f'"{n}":{{"dtype":"U8","shape":[2],"data_offsets":[{2 * i},{2 * i + 2}]}}'
               for i, n in enumerate(names)]
    meta = draw(st_hs.lists(st_hs.tuples(st_hs.sampled_from(_NAMES), st_hs.sampled_from(_NAMES)), max_size=3))
    meta_members = [f'"{k}":"{v}"' for k, v in dict(meta).items()]
    repeat = draw(st_hs.sampled_from(["none", "tensor", "entry key", "metadata"]))
    if repeat == "tensor":
        members.append(members[draw(st_hs.integers(0, len(members) - 1))])
    elif repeat == "entry key":
        i = draw(st_hs.integers(0, len(members) - 1))
        members[i] = members[i].replace('{"dtype":"U8"', '{"dtype":"U8","dtype":"U8"')
    elif repeat == "metadata" and meta_members:
        meta_members.append(meta_members[0])
    if meta_members or draw(st_hs.booleans()):
        members.insert(0, '"__metadata__":{' + ",".join(meta_members) + "}")
    return "{" + ",".join(members) + "}", 2 * len(names)


@settings(max_examples=400, deadline=None)
@given(sound=_sound_header())
def test_fast_path_is_the_plain_path_on_sound_headers(sound: tuple[str, int]) -> None:
    """A header sound but for a repeated key reads the same by orjson as by json, and reports exactly the
    keys json's recording parse finds repeated."""
    header, data = sound
    head = _same_with_and_without_orjson(_view(header, data))
    recorder = sth._PairsRecorder()
    json.loads(header, object_pairs_hook=recorder)
    assert [f.code for f in head.findings] == ["ST_DUPLICATE_KEY"] * len(recorder.duplicates)


_ODD_VALUES = (None, True, False, -1, 1.5, float("nan"), 1 << 64, (1 << 64) - 1, "F16", "", [], {}, [[2]])


@st_hs.composite
def _entry(draw: st_hs.DrawFn) -> object:
    """A tensor entry: mostly sound, else with one part (or the whole) replaced by an odd JSON value."""
    dtype = draw(st_hs.sampled_from([*sorted(st.DTYPE_BITS), "I4", "f16"]))
    shape = draw(st_hs.lists(st_hs.integers(0, 9), max_size=10))
    begin = draw(st_hs.integers(0, 64))
    size = st.DTYPE_BITS.get(dtype, 8) * math.prod(shape) // 8
    entry: dict[str, object] = {"dtype": dtype, "shape": shape,
                                "data_offsets": [begin, begin + size + draw(st_hs.sampled_from([0, 0, 0, 1]))]}
    what = draw(st_hs.integers(0, 9))
    odd = draw(st_hs.sampled_from(_ODD_VALUES))
    if what == 1:
        entry["dtype"] = odd
    elif what == 2:
        entry["shape"] = odd if draw(st_hs.booleans()) else [*shape, odd]
    elif what == 3:
        entry["data_offsets"] = odd if draw(st_hs.booleans()) else [begin, odd]
    elif what == 4:
        entry["extra"] = odd
    elif what == 5:
        del entry[draw(st_hs.sampled_from(sorted(entry)))]
    elif what == 6:
        return odd
    return entry


@settings(max_examples=300, deadline=None)
@given(entries=st_hs.lists(_entry(), max_size=6), meta=st_hs.sampled_from([None, {"format": "pt"}, {"a": 1}]),
       pad=st_hs.integers(0, 300))
def test_orjson_and_json_parse_give_the_same_header(entries: list[object], meta: object, pad: int) -> None:
    """With orjson (which turns integers past 64 bits into floats, and rejects NaN) or with json alone,
    a header reads the same: tensors, metadata and every finding."""
    doc: dict[str, object] = {f"t{i}": e for i, e in enumerate(entries)}
    if meta is not None:
        doc["__metadata__"] = meta
    raw = json.dumps(doc).encode()
    view = View(struct.pack("<Q", len(raw)) + raw + bytes(pad))
    _same_with_and_without_orjson(view)


@pytest.mark.parametrize("where", ["entry", "metadata", "inside a sound entry", "as a shape"])
def test_nesting_orjson_accepts_is_still_too_deep(where: str) -> None:
    """orjson parses 1,000 levels; the depth scan runs before either parser, so neither path walks into
    them (Python would recurse past its limit)."""
    deep = "[" * 1000 + "]" * 1000
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    header = {"entry": f'{{"t":{entry},"x":{deep}}}', "metadata": f'{{"__metadata__":{{"a":{deep}}},"t":{entry}}}',
              "inside a sound entry": f'{{"t":{{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":{deep}}}}}',
              # a bad shape is quoted in its finding (json.dumps): it must never be met at this depth
              "as a shape": f'{{"t":{{"dtype":"F32","shape":{deep},"data_offsets":[0,4]}}}}'}
    raw = header[where].encode()
    assert sth.fastjson.loads(raw) is not None  # orjson takes it
    head = st.parse_header(View(struct.pack("<Q", len(raw)) + raw + bytes(4)))
    assert [f.code for f in head.findings] == ["ST_HEADER_TOO_DEEP"]


_JSON_BYTES = list(b'{}[]":,0123456789-.eE \\u\xef\x00')


@settings(max_examples=300, deadline=None)
@given(edits=st_hs.lists(st_hs.tuples(st_hs.integers(0, 10**6), st_hs.sampled_from(_JSON_BYTES)), min_size=1,
                         max_size=4))
def test_orjson_and_json_agree_on_damaged_real_headers(edits: list[tuple[int, int]]) -> None:
    """A real header with a few bytes replaced by JSON-significant ones reads the same with orjson as
    with json alone: wherever either parser is more lenient, the header is not sound and json decides."""
    raw = bytearray((ST / "gptq_layout" / "model.safetensors").read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    for pos, byte in edits:
        raw[8 + pos % n] = byte
    view = View(bytes(raw))
    _same_with_and_without_orjson(view)
