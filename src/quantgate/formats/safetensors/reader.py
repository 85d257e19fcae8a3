"""safetensors reader: the header, checked at least as strictly as the reference `validate()`.

Layout: a u64 little-endian header length N, N bytes of UTF-8 JSON (an object of tensor entries
`{"dtype", "shape", "data_offsets": [begin, end]}` plus an optional `__metadata__` of string ->
string, or null), then the data buffer. The reference (safetensors/src/tensor.rs) requires N <= 100 MB,
known dtypes, end - begin == numel * bits / 8 exactly, whole bytes for sub-byte dtypes, tensors
contiguous from 0 once sorted by offset, and 8 + N + buffer end == the file length. Here each of
those is its own finding code with the tensor name and byte offset; duplicate JSON keys (which
serde silently collapses, last one wins) are reported too.

The modules, imported one way (this one -> layouts -> header): the header is parsed and checked in
`header.py`, and only the header is read for structure. The quantization layouts (GPTQ, AWQ,
bitsandbytes, compressed-tensors...), `config.json` and the sharded index are interpreted in
`layouts.py`; the few small tensors it reads (a bitsandbytes quant_state blob, a
compressed-tensors `weight_shape`) are read only when the structure is sound.
"""

from __future__ import annotations

import os
from collections import Counter
from operator import attrgetter
from typing import Any

from quantgate.core import findings as F
from quantgate.core.gcpause import gc_paused
from quantgate.core.inventory import Inventory
from quantgate.core.remote import is_url
from quantgate.formats.safetensors import layouts
from quantgate.formats.safetensors.header import (  # noqa: F401  (the reader's public names, re-exported)
    DTYPE_BITS,
    MAX_PER_CODE,
    STRUCTURE_CODES,
    Header,
    TensorEntry,
    parse_header,
)
from quantgate.formats.safetensors.layouts import LAYOUT_CODES
from quantgate.formats.wire.binary import ReadError, View, file_size, mapped


def read(path: str) -> Inventory:
    """The inventory of one safetensors file; never raises on bad input."""
    try:
        size = file_size(path)
    except OSError as exc:
        inv = Inventory("safetensors", path, 0)
        inv.structural_findings.append(F.error("FILE_UNREADABLE", f"cannot read the file: {exc.strerror}"))
        return inv
    inv = Inventory("safetensors", path, size)
    try:
        with gc_paused(), mapped(path) as view:  # a layer and a dict per tensor, no cycles
            head = parse_header(view)
            inv.structural_findings.extend(head.findings)
            inv.facts.update(_facts(head))
            remote = is_url(path)
            layouts.interpret(view, head, inv, path if remote else os.path.abspath(path))
    except ReadError as exc:
        inv.structural_findings.append(
            F.error("ST_OUT_OF_BOUNDS", f"{exc.message}", offset=exc.offset, field=exc.field))
    except OSError as exc:
        inv.structural_findings.append(F.error("FILE_UNREADABLE", f"cannot read the file: {exc}"))
    return inv


def _facts(head: Header) -> dict[str, Any]:
    dtypes = Counter(map(attrgetter("dtype"), head.tensors.values()))
    facts: dict[str, Any] = {
        "header_bytes": head.header_len,
        "tensors": len(head.tensors),
        "dtypes": dict(sorted(dtypes.items())),
    }
    if head.metadata:
        facts["metadata"] = dict(list(head.metadata.items())[:32])
    return facts


FINDING_CODES: dict[str, str] = {**STRUCTURE_CODES, **LAYOUT_CODES}


def remote_extent(view: View, head: bytes, block: int) -> int:
    """The header, fetched in one request for a URL (formats.wire.binary.prefetch); every other read goes
    through View.check."""
    return 8 + int.from_bytes(head[:8], "little")
