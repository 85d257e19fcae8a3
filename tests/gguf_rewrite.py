"""Rewrite a real GGUF with gguf-py: change key types, promote tensors, split it into shards.

The tests alter llama.cpp's own exports (fixtures/gguf/llamacpp) this way, so that every altered file
is what gguf-py's writer (the reference writer) makes of a real file, changed in one named respect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def rewrite(
    src: Path,
    dst: Path,
    *,
    kv: dict[str, tuple[Any, str]] | None = None,
    tensor_types: dict[str, str] | None = None,
    split_max_tensors: int = 0,
) -> list[Path]:
    """Copy `src` to `dst` with `kv` keys set (value, GGUFValueType name), the named tensors
    re-quantized (GGMLQuantizationType name), and split into shards of `split_max_tensors` tensors
    (gguf-py's `-0000k-of-0000n` names) when > 0. Returns the files written."""
    kv = {k: (value, GGUFValueType[vtype]) for k, (value, vtype) in (kv or {}).items()}
    tensor_types = {k: GGMLQuantizationType[t] for k, t in (tensor_types or {}).items()}
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch, split_max_tensors=split_max_tensors)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment", *SPLIT_KEYS):
            continue
        if name in kv:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub)
    for name, (value, vtype) in kv.items():
        if name == "general.architecture":
            writer.kv_data[0].pop(name, None)
        writer.add_key_value(name, value, vtype)
    for t in reader.tensors:
        data = np.asarray(t.data)
        new = tensor_types.get(t.name)
        if new is not None and new != t.tensor_type:
            values = dequantize(data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))
            writer.add_tensor(t.name, quantize(values, new), raw_dtype=new)
        elif t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            writer.add_tensor(t.name, data.reshape(tuple(int(d) for d in reversed(t.shape))))
        else:
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return writer.format_shard_names(Path(dst))
