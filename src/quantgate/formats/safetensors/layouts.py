"""Quantization layouts in safetensors checkpoints, told apart by tensor names, dtypes and shapes.

safetensors has no quantized dtypes beyond 8-bit floats and F4/F6: int4 and NF4 weights are packed
into I32/U8 tensors by convention and described by companion tensors. Each layout below turns its
tensors into one Layer with the LOGICAL weight shape, the nominal bits, and `weight_bytes` counting
every companion that encodes the weight (docs/formats.md#safetensors-safetensors-dtypes):

| layout | stored | logical shape |
|---|---|---|
| GPTQ | `qweight` I32 [in·bits/32, out], `qzeros`, `scales` [groups, out], `g_idx` [in] | [out, in] |
| AWQ (GEMM) | `qweight` I32 [in, out·bits/32], `qzeros`, `scales` [groups, out], no g_idx | [out, in] |
| bnb int8 | `weight` I8 [out, in] + `SCB` [out] (+ `weight_format`) | as stored |
| bnb nf4/fp4 | `weight` U8 [n, 1] + `weight.absmax`, `.quant_map`, `.nested_*`, | from the JSON |
|   | `.quant_state.bitsandbytes__nf4` (a JSON blob) | |
| compressed-tensors | `weight_packed` I32 [out, in·bits/32] or U8 (NVFP4), `weight_scale` | `weight_shape`, |
|   | (+ `weight_zero_point`, `weight_shape`, `weight_global_scale`) | else derived |
| MXFP4 (gpt-oss) | `X_blocks` U8 [..., out, in/32, 16] + `X_scales` U8 [..., out, in/32] | [..., out, in] |
| MLX affine (`mlx.nn.quantize`, mlx-lm) | `weight` U32 [..., out, in·bits/32] + `scales` + `biases` | [..., out, in] |
|   | [..., out, in/group_size]; group_size and bits from config.json `quantization` | |
| MLX mxfp4/nvfp4/mxfp8 | `weight` U32 [..., out, in·bits/32] + `scales` U8 [..., out, in/32 | [..., out, in] |
|   | (nvfp4: in/16)], no biases | |
| optimum-quanto qint8/qfloat8 | `weight._data` I8/F8 [out, in] + `weight._scale` [out, 1] | as stored |
| optimum-quanto qint4/qint2 | `weight._data._data` U8 [rows·bits/8, group] + `weight._scale`, | [rows, group] |
|   | `weight._shift` [rows, 1]: the weight grouped as [out·in/group, group] (the file has no [out, in]) | |
| HQQ (`HQQLinear`) | `W_q` U8 [out·in/group·bits/8, group] (3-bit: I32) + `scale`, `zero` | `shape` |
|   | [out·in/group, 1] + meta tensors (`shape` I64 [2], `nbits`, `group_size`, `axis`, `packing`...) | |
| int8 / fp8 with scale | `weight` I8/F8 [out, in] + `weight_scale` (or `weight_scale_inv`) | as stored |

Activation parameters (`input_scale`, `k_scale`...) are quantization metadata of the activations:
not ops, not weight bytes, not parameters.

Integer tensors no layout above explains (torchao `_weight_qdata`, EXL2 `q_weight`, EXL3 `trellis`,
a GPTQ `qweight` in Marlin's `checkpoint_format`, a packed `weight` with no companion...) are never
read as weights: each such module becomes one layer of unknown precision (the `unknown` coverage
share) and an ST_UNKNOWN_LAYOUT finding names the tensor pattern.

`config.json` beside the file (its `quantization_config`, or mlx-lm's `quantization`) is checked
against what is stored, and a sharded checkpoint's `*.safetensors.index.json` against its shards;
see `check_config` and `check_index`.
"""

from __future__ import annotations

import math
import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress, repeat
from typing import Any

from quantgate.core import findings as F
from quantgate.core import jsonfile
from quantgate.core.confine import sibling
from quantgate.core.findings import Finding
from quantgate.core.inventory import CONV, EMBEDDING, FLOAT, INT, LINEAR, UNKNOWN, Inventory, Layer
from quantgate.core.remote import is_url
from quantgate.formats.safetensors.header import parse_header
from quantgate.formats.wire.binary import View, file_size, mapped, read_head

CONFIG_LIMIT = 8 << 20  # a config.json or index larger than this is not read
INDEX_LIMIT = 64 << 20
BNB_STATE_LIMIT = 64 << 10  # the quant_state JSON blob is ~170 bytes; anything huge is not read
MAX_SIBLING_SHARDS = 10_000

FLOAT_DTYPES = {"F16": 16, "BF16": 16, "F32": 32, "F64": 64}
F8_DTYPES = {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}
LOWBIT_FLOAT = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}

# suffix -> role; longer suffixes are matched first
_BNB4_STATE = (".weight.quant_state.bitsandbytes__nf4", ".weight.quant_state.bitsandbytes__fp4")
_SUFFIX_ROLES: list[tuple[str, str]] = sorted(
    [
        (_BNB4_STATE[0], "bnb_state"),
        (_BNB4_STATE[1], "bnb_state"),
        (".weight.absmax", "bnb_absmax"),
        (".weight.quant_map", "bnb_quant_map"),
        (".weight.nested_absmax", "bnb_nested_absmax"),
        (".weight.nested_quant_map", "bnb_nested_quant_map"),
        (".SCB", "bnb_scb"),
        (".weight_format", "bnb_weight_format"),
        (".weight_packed", "packed"),
        (".weight_scale", "scale"),
        (".weight_scale_inv", "scale"),
        (".weight_zero_point", "zero_point"),
        (".weight_global_scale", "global_scale"),
        (".weight_shape", "weight_shape"),
        (".weight_g_idx", "g_idx"),
        (".qweight", "qweight"),
        (".qzeros", "qzeros"),
        (".scales", "scales"),
        (".biases", "biases"),  # MLX affine: the per-group offset beside `scales`
        (".g_idx", "g_idx"),
        (".weight", "weight"),
        # optimum-quanto's frozen QTensors, saved as their inner tensors
        (".weight._data._data", "quanto_packed"),
        (".weight._data", "quanto_data"),
        (".weight._scale", "quanto_scale"),
        (".weight._shift", "quanto_shift"),
        (".input_scale", "act"),
        (".input_zero_point", "act"),
        (".input_global_scale", "act"),
        (".output_scale", "act"),
        (".k_scale", "act"),
        (".v_scale", "act"),
    ],
    key=lambda item: -len(item[0]),
)
MAIN_ROLES = ("qweight", "packed", "weight", "quanto_packed", "quanto_data")

LAYOUT_CODES = {
    "ST_COMPANION_MISSING": "A packed or low-bit weight lacks the tensor needed to decode it (scales, "
    "quant_state...).",
    "ST_COMPANION_SHAPE_MISMATCH": "A scale, zero-point or g_idx tensor's shape does not fit its weight.",
    "ST_ORPHAN_COMPANION": "A quantization companion (scales, qzeros, SCB...) has no weight beside it.",
    "ST_QUANT_SCALE_MISSING": "An 8-bit or lower weight has no scale tensor: it cannot be dequantized.",
    "ST_BNB_QUANT_STATE_INVALID": "A bitsandbytes 4-bit quant_state blob is not the JSON it should be.",
    "ST_BNB_SHAPE_MISMATCH": "The bitsandbytes quant_state shape does not match the packed bytes or absmax.",
    "ST_WEIGHT_SHAPE_MISMATCH": "compressed-tensors `weight_shape` disagrees with the packed tensor's shape.",
    "ST_CONFIG_INVALID": "config.json beside the file is unreadable, too large, or not a JSON object.",
    "ST_NO_QUANT_CONFIG": "Packed quantized weights but no config.json quantization_config beside the file.",
    "ST_QUANT_METHOD_UNCHECKED": "config.json names a quant_method whose storage quantgate does not check.",
    "ST_QUANT_METHOD_MISMATCH": "A layer's stored layout is not the one config.json's quant_method produces.",
    "ST_IGNORED_LAYER_QUANTIZED": "A layer config.json keeps in float (ignore list) is stored quantized.",
    "ST_LAYER_NOT_QUANTIZED": "A layer config.json says is quantized is stored in float.",
    "ST_BITS_MISMATCH": "config.json bits disagree with the bits implied by the packed shapes.",
    "ST_GROUP_SIZE_MISMATCH": "config.json group_size disagrees with the scale tensor's shape.",
    "ST_SCALE_NOT_FINITE": "A scale tensor holds NaN or infinite values (opt-in: --param scan_scales=1).",
    "ST_SCALE_ZERO": "A scale tensor holds zeros: the weights it scales decode to 0 (opt-in scan).",
    "ST_UNKNOWN_LAYOUT": "Packed integer tensors in a layout quantgate does not decode: counted as layers of "
    "unknown precision, never as weights.",
    "ST_INDEX_INVALID": "The sharded index JSON is unreadable or has no weight_map.",
    "ST_INDEX_TENSOR_MISSING": "The index maps a tensor to this shard but the shard does not hold it.",
    "ST_INDEX_TENSOR_UNLISTED": "The shard holds a tensor the index does not map to it.",
    "ST_INDEX_SHARD_MISSING": "The index names a shard file that is not beside it.",
    "ST_INDEX_SHARD_PATH_INVALID": "The index names a shard outside its folder (a path, `..`, or absolute).",
    "ST_INDEX_TOTAL_SIZE_MISMATCH": "The index metadata total_size differs from its shards' tensor bytes.",
}


# --- tensors grouped by module --------------------------------------------------------------------

# the last name component -> (suffix, its length, role) of the suffixes that end with it, longest
# first (most names have one candidate)
_CANDIDATES: dict[str, list[tuple[str, int, str]]] = {}
for _suffix, _role in _SUFFIX_ROLES:
    _CANDIDATES.setdefault(_suffix.rsplit(".", 1)[-1], []).append((_suffix, len(_suffix), _role))


def split_name(name: str) -> tuple[str, str | None]:
    """(module, role) for a known suffix, else (name, None)."""
    for suffix, n, role in _CANDIDATES.get(name.rpartition(".")[2], ()):
        if len(name) > n and name.endswith(suffix):
            return name[:-n], role
    return name, None


def layer_kind(name: str, ndim: int) -> str:
    low = name.lower()
    if "embed_out" in low or "lm_head" in low:
        return LINEAR
    if "embed" in low:
        return EMBEDDING
    if "wte" in low or "wpe" in low:  # cheap pre-test: as one of the last three name components
        last = low.rsplit(".", 2)
        if "wte" in last or "wpe" in last:
            return EMBEDDING
    if ndim == 4 or "conv" in low:
        return CONV
    return LINEAR


@dataclass
class QuantSpec:
    """What config.json's quantization_config says about one layer (None = it does not say)."""

    method: str | None = None
    layout: str | None = None  # the layout family the method writes
    bits: int | None = None
    group_size: int | None = None
    numeric: str | None = None
    ignore: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    strategy: str | None = None
    quantize_head: bool = False
    # compressed-tensors config_groups: (targets, weights args) in config order
    groups: list[tuple[list[str], dict[str, Any]]] = field(default_factory=list)
    # MLX: the quantization mode, and the per-module entries of config.json `quantization` (a dict of
    # to_quantized arguments, or false)
    mode: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    explicit: bool = False  # this spec comes from a per-module entry

    def for_module(self, module: str, kind: str) -> QuantSpec | None:
        """The spec of the config group that targets this module; None when no group does. Name and
        `re:` targets win over class targets (`Linear`), as they are the more specific."""
        if self.method == "mlx":
            return self._mlx_for(module)
        if not self.groups:
            return self
        by_class = None
        for targets, weights in self.groups:
            for t in targets:
                if t in _CLASS_KINDS:
                    if _CLASS_KINDS[t] == kind and by_class is None:
                        by_class = weights
                elif _matches(module, t):
                    return self._with(weights)
        return self._with(by_class) if by_class is not None else None

    def _mlx_for(self, module: str) -> QuantSpec | None:
        entry = self.overrides.get(module)
        if entry is None:
            return self
        if not isinstance(entry, dict):
            return None if entry is False else self
        # mlx.nn.quantize passes the dict to to_quantized as is: a missing key takes the mode's default,
        # not the global value
        mode = entry.get("mode") if isinstance(entry.get("mode"), str) else "affine"
        gs, bits = MLX_MODE_DEFAULTS.get(mode, (None, None))
        return QuantSpec(method="mlx", layout="mlx", mode=mode, explicit=True,
                         bits=_int_or_none(entry.get("bits")) or bits,
                         group_size=_int_or_none(entry.get("group_size")) or gs,
                         numeric=INT if mode == "affine" else FLOAT)

    def _with(self, w: dict[str, Any]) -> QuantSpec:
        strategy = w.get("strategy")
        return QuantSpec(method=self.method, layout=self.layout, bits=_int_or_none(w.get("num_bits")),
                         group_size=_int_or_none(w.get("group_size")),
                         numeric=FLOAT if w.get("type") == "float" else INT, ignore=self.ignore,
                         quantize_head=self.quantize_head,
                         targets=self.targets, strategy=strategy if isinstance(strategy, str) else None)


# compressed-tensors class-name targets and the layer kinds they cover
_CLASS_KINDS = {"Linear": LINEAR, "Conv1d": CONV, "Conv2d": CONV, "Conv3d": CONV, "Embedding": EMBEDDING}


@dataclass
class Ctx:
    view: View
    data_start: int
    file_size: int
    tensors: dict[str, Any]
    semantic: list[Finding]
    config: dict[str, Any] | None = None  # quantization_config
    spec: QuantSpec | None = None

    def spec_for(self, module: str, kind: str) -> QuantSpec | None:
        return self.spec.for_module(module, kind) if self.spec is not None else None

    def readable(self, t: Any, limit: int) -> bool:
        return t.nbytes <= limit and self.data_start + t.end <= self.file_size

    def read(self, t: Any) -> bytes:
        return self.view.bytes(self.data_start + t.begin, t.nbytes, t.name)


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    return math.prod(shape) if shape else 1


def _tinfo(t: Any) -> str:
    return f"{t.dtype} {list(t.shape)}"


# --- the layouts ----------------------------------------------------------------------------------

# the detail of a layer _plain makes, one read-only dict per layout: a checkpoint has tens of thousands
# of plain layers (see benchmarks/RESULTS.md, curve), and nothing changes a layer's detail once made
_PLAIN_DETAILS: dict[str, dict[str, Any]] = {
    layout: {"layout": layout} for layout in ("plain", "fp8-scaled", "lowbit-float", "bnb-int8", "int8-scaled")}
_PLAIN_EXTRAS = frozenset(("scale", "zero_point", "bnb_scb", "bnb_weight_format", "global_scale", "g_idx"))


def _plain(ctx: Ctx, module: str, parts: dict[str, Any], weight: Any) -> Layer:
    dtype = weight.dtype
    wbytes = weight.end - weight.begin
    scale = None
    if len(parts) > 1:  # most float checkpoints: the weight alone
        scale = parts.get("scale") or parts.get("bnb_scb")
        wbytes += sum(p.end - p.begin for r, p in parts.items() if r in _PLAIN_EXTRAS)
    name = weight.name
    layout = "plain"
    if dtype in FLOAT_DTYPES:
        bits, numeric, quantized = FLOAT_DTYPES[dtype], FLOAT, False
    elif dtype in F8_DTYPES or dtype in LOWBIT_FLOAT:
        bits, numeric, quantized = (8 if dtype in F8_DTYPES else LOWBIT_FLOAT[dtype]), FLOAT, True
        layout = "fp8-scaled" if dtype in F8_DTYPES else "lowbit-float"
    elif dtype in ("I8", "U8"):
        bits, numeric, quantized = 8, INT, True
        layout = "bnb-int8" if "bnb_scb" in parts else "int8-scaled"
    else:  # 16/32/64-bit integers and BOOL: not a quantized weight format
        bits, numeric, quantized = weight.bits, INT, False
    if quantized and scale is None:
        ctx.semantic.append(F.warning(
            "ST_QUANT_SCALE_MISSING",
            f"{name} is {dtype} with no {module}.weight_scale / SCB beside it: it cannot be dequantized "
            "as stored (check the export)", tensor=name))
    return Layer(name=name, kind=layer_kind(name, len(weight.shape)), shape=weight.shape, dtype=dtype, bits=bits,
                 numeric=numeric, quantized=quantized, params=weight.numel, weight_bytes=wbytes,
                 detail=_PLAIN_DETAILS[layout])


def _bnb4(ctx: Ctx, module: str, parts: dict[str, Any], weight: Any) -> Layer:
    state_t = parts.get("bnb_state")
    name = module + ".weight"
    extras = [p for r, p in parts.items() if r.startswith("bnb_")]
    wbytes = weight.nbytes + sum(p.nbytes for p in extras)
    quant_type = "nf4"
    shape: tuple[int, ...] | None = None
    if state_t is None:
        ctx.semantic.append(F.error(
            "ST_COMPANION_MISSING",
            f"{name} is a bitsandbytes 4-bit weight ({_tinfo(weight)} + absmax) without its "
            "quant_state.bitsandbytes__nf4/fp4 tensor: the logical shape is lost", tensor=name))
    else:
        quant_type = "fp4" if state_t.name.endswith("fp4") else "nf4"
        state = _read_bnb_state(ctx, state_t)
        if state is not None:
            raw_shape = state.get("shape")
            # at most 8 dims (a bnb weight has 2): thousands of 2^40 dims would make a bignum of params
            if isinstance(raw_shape, list) and 0 < len(raw_shape) <= 8 and all(
                    isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in raw_shape):
                shape = tuple(raw_shape)
            else:
                shown = repr(raw_shape)
                shown = shown if len(shown) <= 120 else shown[:120] + f"... ({len(shown):,} characters)"
                ctx.semantic.append(F.error(
                    "ST_BNB_QUANT_STATE_INVALID", f"{state_t.name} has no valid 'shape' list: {shown}",
                    tensor=state_t.name))
            if isinstance(state.get("quant_type"), str):
                quant_type = state["quant_type"]
            if shape is not None:
                _check_bnb_shapes(ctx, name, weight, parts, shape, state)
    if shape is None:
        shape = (weight.nbytes * 2,)
        params = weight.nbytes * 2
    else:
        params = _numel(shape)
    return Layer(name=name, kind=layer_kind(name, len(shape)), shape=shape, dtype=f"{quant_type}(U8)", bits=4,
                 numeric=FLOAT, quantized=True, params=params, weight_bytes=wbytes,
                 detail={"layout": f"bnb-{quant_type}", "stored": _tinfo(weight)})


def _read_bnb_state(ctx: Ctx, t: Any) -> dict[str, Any] | None:
    if t.dtype != "U8" or not ctx.readable(t, BNB_STATE_LIMIT):
        ctx.semantic.append(F.error(
            "ST_BNB_QUANT_STATE_INVALID",
            f"{t.name} is {_tinfo(t)}; expected a small U8 blob of JSON", tensor=t.name))
        return None
    try:
        state = jsonfile.loads(ctx.read(t).decode("utf-8"), allow_nan=True)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        ctx.semantic.append(F.error("ST_BNB_QUANT_STATE_INVALID", f"{t.name} is not UTF-8 JSON ({exc})",
                                    tensor=t.name, offset=ctx.data_start + t.begin))
        return None
    if not isinstance(state, dict):
        ctx.semantic.append(F.error("ST_BNB_QUANT_STATE_INVALID", f"{t.name} holds JSON that is no object",
                                    tensor=t.name, offset=ctx.data_start + t.begin))
        return None
    return state


def _check_bnb_shapes(ctx: Ctx, name: str, weight: Any, parts: dict[str, Any], shape: tuple[int, ...],
                      state: dict[str, Any]) -> None:
    numel = _numel(shape)
    if (numel + 1) // 2 != weight.nbytes:
        ctx.semantic.append(F.error(
            "ST_BNB_SHAPE_MISMATCH",
            f"{name}: quant_state shape {list(shape)} ({numel} weights) needs {(numel + 1) // 2} bytes "
            f"but the weight holds {weight.nbytes}", tensor=name))
        return
    absmax = parts.get("bnb_absmax")
    block = state.get("blocksize")
    if absmax is not None and isinstance(block, int) and not isinstance(block, bool) and block > 0:
        blocks = -(-numel // block)
        if absmax.numel != blocks:
            ctx.semantic.append(F.error(
                "ST_BNB_SHAPE_MISMATCH",
                f"{name}: {absmax.numel} absmax value(s) for {numel} weights in blocks of {block} "
                f"(expected {blocks})", tensor=absmax.name))


def _ct_packed(ctx: Ctx, module: str, parts: dict[str, Any], packed: Any) -> Layer:
    name = module + ".weight"
    spec = ctx.spec_for(module, layer_kind(name, 2))
    gscale = parts.get("global_scale")
    scale = parts.get("scale")
    nvfp4 = packed.dtype == "U8" and (gscale is not None or (scale is not None and scale.dtype in F8_DTYPES))
    numeric = FLOAT if nvfp4 or (spec and spec.numeric == FLOAT) else INT
    container = 32 if packed.dtype == "I32" else 8 if packed.dtype == "U8" else 0
    stored_shape = _read_weight_shape(ctx, parts.get("weight_shape"))
    implied = None
    if container and stored_shape and len(stored_shape) == 2 and len(packed.shape) == 2 and packed.shape[1]:
        per = -(-stored_shape[1] // packed.shape[1])  # values per container element (last may be padded)
        if per and container % per == 0 and container // per in (2, 3, 4, 8):
            implied = container // per
    bits = implied or (spec.bits if spec and spec.bits in (2, 3, 4, 8) else 4)
    per_word = container // bits if container else 1
    derived: tuple[int, ...] | None = None
    if len(packed.shape) == 2:
        derived = (packed.shape[0], packed.shape[1] * per_word)
    shape = stored_shape or derived or packed.shape
    if stored_shape is not None and derived is not None and (
            stored_shape[0] != derived[0] or not derived[1] - per_word < stored_shape[1] <= derived[1]):
        shape = derived  # the packed bytes are what is really there
        ctx.semantic.append(F.error(
            "ST_WEIGHT_SHAPE_MISMATCH",
            f"{name}: weight_shape {list(stored_shape)} does not fit {packed.name} {_tinfo(packed)} at "
            f"{bits} bits ({per_word} per {packed.dtype} element → {list(derived)})", tensor=name))
    if scale is None:
        ctx.semantic.append(F.error("ST_COMPANION_MISSING", f"{packed.name} has no {module}.weight_scale",
                                    tensor=name))
    wroles = ("packed", "scale", "zero_point", "global_scale", "weight_shape", "g_idx")
    wbytes = sum(p.nbytes for r, p in parts.items() if r in wroles)
    layout = "ct-nvfp4-pack-quantized" if nvfp4 else "ct-pack-quantized"
    return Layer(name=name, kind=layer_kind(name, len(shape)), shape=tuple(shape),
                 dtype=f"{'fp' if numeric == FLOAT else 'int'}{bits}({packed.dtype})", bits=bits,
                 numeric=numeric,
                 quantized=True, params=_numel(shape), weight_bytes=wbytes,
                 detail={"layout": layout, "stored": _tinfo(packed),
                         **({"implied_bits": implied} if implied else {})})


def _read_weight_shape(ctx: Ctx, t: Any) -> tuple[int, ...] | None:
    if t is None or t.dtype not in ("I64", "I32") or len(t.shape) != 1 or not 1 <= t.numel <= 8:
        return None
    if not ctx.readable(t, 64):
        return None
    raw = ctx.read(t)
    size = 8 if t.dtype == "I64" else 4
    dims = tuple(int.from_bytes(raw[i:i + size], "little", signed=True) for i in range(0, len(raw), size))
    if any(d < 0 for d in dims):
        return None
    return dims


def _gptq_awq(ctx: Ctx, module: str, parts: dict[str, Any], qweight: Any) -> Layer:
    name = module + ".weight"
    spec = ctx.spec
    scales, qzeros, g_idx = parts.get("scales"), parts.get("qzeros"), parts.get("g_idx")
    rows, cols = qweight.shape[:2] if len(qweight.shape) >= 2 else (qweight.numel, 1)
    cfg_bits = spec.bits if spec and spec.method in ("gptq", "awq") and spec.bits else None
    # which dim is packed: g_idx or scales [groups, out] tell GPTQ ([in*bits/32, out]) from AWQ
    # ([in, out*bits/32]); config.json only decides when the shapes cannot
    if g_idx is not None or (scales is not None and len(scales.shape) == 2 and scales.shape[1] == cols):
        layout = "gptq"
    elif scales is not None and len(scales.shape) == 2 and cols and scales.shape[1] % cols == 0:
        layout = "awq"
    elif spec and spec.method in ("gptq", "awq"):
        layout = spec.method
    else:
        layout = "gptq"
    bits = cfg_bits or 4
    implied = None
    if layout == "gptq" and g_idx is not None and g_idx.numel and (rows * 32) % g_idx.numel == 0:
        implied = rows * 32 // g_idx.numel
    elif layout == "awq" and scales is not None and len(scales.shape) == 2 and cols:
        implied = 32 * cols // scales.shape[1] if (32 * cols) % scales.shape[1] == 0 else None
    if implied in (2, 3, 4, 8):
        bits = implied
    else:
        implied = None
    if layout == "gptq":
        in_f, out_f = rows * 32 // bits, cols
    else:
        in_f, out_f = rows, cols * 32 // bits
    shape = (out_f, in_f)
    if scales is None:
        ctx.semantic.append(F.error("ST_COMPANION_MISSING", f"{qweight.name} has no {module}.scales: the "
                                    "weight cannot be dequantized", tensor=name))
    else:
        if len(scales.shape) != 2 or scales.shape[1] != out_f:
            ctx.semantic.append(F.error(
                "ST_COMPANION_SHAPE_MISMATCH",
                f"{scales.name} is {list(scales.shape)}; {layout} with {bits}-bit qweight "
                f"{list(qweight.shape)} "
                f"needs [groups, {out_f}] (is the layout {'AWQ' if layout == 'gptq' else 'GPTQ'}?)",
                tensor=scales.name))
        elif spec and spec.group_size is not None and spec.method in ("gptq", "awq"):
            groups = 1 if spec.group_size <= 0 else -(-in_f // spec.group_size)
            if scales.shape[0] != groups:
                ctx.semantic.append(F.error(
                    "ST_GROUP_SIZE_MISMATCH",
                    f"{name}: group_size {spec.group_size} over {in_f} inputs needs {groups} scale row(s), "
                    f"{scales.name} has {scales.shape[0]}", tensor=name))
    if qzeros is not None and len(qzeros.shape) == 2 and scales is not None and len(scales.shape) == 2:
        want = (scales.shape[0], out_f * bits // 32)
        if tuple(qzeros.shape) != want:
            ctx.semantic.append(F.error(
                "ST_COMPANION_SHAPE_MISMATCH",
                f"{qzeros.name} is {list(qzeros.shape)}, expected {list(want)}", tensor=qzeros.name))
    if g_idx is not None and g_idx.numel != in_f:
        ctx.semantic.append(F.error(
            "ST_COMPANION_SHAPE_MISMATCH", f"{g_idx.name} has {g_idx.numel} entries for {in_f} inputs",
            tensor=g_idx.name))
    wbytes = sum(p.nbytes for r, p in parts.items() if r in ("qweight", "qzeros", "scales", "g_idx"))
    return Layer(name=name, kind=layer_kind(name, 2), shape=shape, dtype=f"int{bits}(I32)", bits=bits,
                 numeric=INT, quantized=True, params=_numel(shape), weight_bytes=wbytes,
                 detail={"layout": layout, "stored": _tinfo(qweight),
                         **({"implied_bits": implied} if implied else {}),
                         **({} if cfg_bits or implied else {"bits_assumed": True})})


def _mxfp4_blocks(blocks: Any, scales: Any) -> Layer:
    """gpt-oss style MXFP4: `X_blocks` U8 [..., out, in/32, 16] (two e2m1 values a byte) and `X_scales`
    U8 [..., out, in/32] (e8m0 exponents, one per 32 values)."""
    shape = (*blocks.shape[:-2], blocks.shape[-2] * blocks.shape[-1] * 2)
    name = blocks.name[: -len("_blocks")]
    return Layer(name=name, kind=layer_kind(name, 2), shape=shape, dtype="mxfp4(U8)", bits=4, numeric=FLOAT,
                 quantized=True, params=_numel(shape), weight_bytes=blocks.nbytes + scales.nbytes,
                 detail={"layout": "mxfp4-blocks", "stored": _tinfo(blocks)})


def _quanto(ctx: Ctx, module: str, parts: dict[str, Any], data: Any) -> Layer:
    """optimum-quanto (`quantize` + `freeze`, the state dict saved as is). qint8/qfloat8: `weight._data`
    I8/F8 [out, in], `weight._scale` [out, 1]. qint4/qint2: the weight grouped as [rows, group] with
    rows = out·in/group, packed along the rows (8/bits of them a byte: `weight._data._data` U8
    [rows·bits/8, group]), a `_scale` and a `_shift` per row; w = scale·q - shift."""
    name = module + ".weight"
    scale, shift = parts.get("quanto_scale"), parts.get("quanto_shift")
    wbytes = sum(p.nbytes for r, p in parts.items() if r.startswith("quanto_"))
    detail: dict[str, Any] = {"layout": "quanto", "stored": _tinfo(data)}
    shape = tuple(data.shape)
    if scale is None:
        ctx.semantic.append(F.error("ST_COMPANION_MISSING", f"{data.name} has no {module}.weight._scale: it "
                                    "cannot be dequantized", tensor=name))
    if parts.get("quanto_packed") is data:
        if shift is None:
            ctx.semantic.append(F.error("ST_COMPANION_MISSING", f"{data.name} has no {module}.weight._shift: "
                                        "the packed weight cannot be dequantized", tensor=name))
        rows = scale.shape[0] if scale is not None and len(scale.shape) == 2 and scale.shape[1] == 1 else 0
        bits, numeric = 4, INT
        if len(shape) == 2 and shape[0] and rows and rows % shape[0] == 0 and rows // shape[0] in (2, 4):
            bits = 8 // (rows // shape[0])
            shape = (rows, shape[1])
            detail["implied_bits"] = bits
        else:
            if scale is not None:
                ctx.semantic.append(F.error(
                    "ST_COMPANION_SHAPE_MISMATCH", f"{scale.name} is {_tinfo(scale)}: quanto's packed "
                    f"{_tinfo(data)} needs [rows, 1] with 2 or 4 rows a packed row", tensor=scale.name))
            shape = (shape[0] * 2, *shape[1:]) if shape else (data.numel * 2,)
        detail["grouped"] = True  # [out·in/group, group]: the logical [out, in] is not in the file
        dtype = f"int{bits}(U8)"
    else:
        bits, numeric = 8, FLOAT if data.dtype in F8_DTYPES else INT
        dtype = data.dtype
        if len(shape) >= 2 and scale is not None and scale.numel not in (1, shape[0]):
            ctx.semantic.append(F.error(
                "ST_COMPANION_SHAPE_MISMATCH", f"{scale.name} is {_tinfo(scale)}; a quanto {_tinfo(data)} "
                f"weight has one scale per output row ({shape[0]})", tensor=scale.name))
    return Layer(name=name, kind=layer_kind(name, max(2, len(shape))), shape=shape, dtype=dtype, bits=bits,
                 numeric=numeric, quantized=True, params=_numel(shape), weight_bytes=wbytes, detail=detail)


# mlx.nn.quantize: mode -> (default group_size, default bits)
MLX_MODE_DEFAULTS = {"affine": (64, 4), "mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}
MLX_AFFINE_BITS = (1, 2, 3, 4, 5, 6, 8)
MLX_AFFINE_GROUPS = (64, 32, 128)  # the default first: tried in this order when no config says
# the microscaled modes store no biases; U32 words per U8 scale tell them apart: in·bits/32 words over
# in/group_size scales
MLX_FP_MODES = {4: "mxfp4", 2: "nvfp4", 8: "mxfp8"}


def _mlx(ctx: Ctx, module: str, parts: dict[str, Any], weight: Any) -> Layer:
    """MLX (`mlx.nn.quantize`, mlx-lm): `weight` U32 [..., out, in·bits/32], values packed densely
    from bit 0 of each little-endian word; `scales` [..., out, in/group_size] and, in affine mode,
    `biases` of the same shape (w = scale·q + bias). The shapes give bits × group_size / 32 words per
    group: config.json's group_size (or mlx's default 64) splits it into the two."""
    name = module + ".weight"
    scales, biases = parts["scales"], parts.get("biases")
    kind = layer_kind(name, len(weight.shape))
    spec = ctx.spec_for(module, kind) if ctx.spec is not None and ctx.spec.method == "mlx" else None
    words, groups = weight.shape[-1], scales.shape[-1] if scales.shape else 0
    fp = biases is None and scales.dtype == "U8"
    mode = (MLX_FP_MODES.get(words // groups) if groups and words % groups == 0 else None) if fp else "affine"
    detail: dict[str, Any] = {"layout": f"mlx-{mode or 'fp'}", "stored": _tinfo(weight)}
    bits = gs = None
    if tuple(scales.shape[:-1]) != tuple(weight.shape[:-1]) or not groups or (
            biases is not None and tuple(biases.shape) != tuple(scales.shape)):
        ctx.semantic.append(F.error(
            "ST_COMPANION_SHAPE_MISMATCH",
            f"{name}: MLX weight {_tinfo(weight)} needs scales"
            + ("" if fp else " and biases") + f" [{', '.join(map(str, weight.shape[:-1]))}, groups]; found "
            f"scales {_tinfo(scales)}" + (f", biases {_tinfo(biases)}" if biases is not None else ""),
            tensor=name))
    elif mode is not None and mode != "affine":
        gs, bits = MLX_MODE_DEFAULTS[mode]
        detail["implied_bits"] = bits
    elif mode == "affine":
        if biases is None:
            ctx.semantic.append(F.error(
                "ST_COMPANION_MISSING", f"{name}: MLX affine weight {_tinfo(weight)} with scales but no "
                f"{module}.biases: it cannot be dequantized", tensor=name))
        sizes = (spec.group_size,) if spec is not None and spec.group_size else MLX_AFFINE_GROUPS
        for size in sizes:
            if (32 * words) % (groups * size) == 0 and 32 * words // (groups * size) in MLX_AFFINE_BITS:
                gs, bits = size, 32 * words // (groups * size)
                detail["implied_bits"] = bits
                break
        if bits is None and spec is not None and spec.group_size:
            ctx.semantic.append(F.error(
                "ST_GROUP_SIZE_MISMATCH",
                f"{name}: {words} U32 words per row over {groups} scale group(s) is no whole bit width at "
                f"config.json group_size {spec.group_size}", tensor=name))
        elif spec is None:
            detail["bits_assumed"] = True  # no config.json: group_size is mlx's default, or the first that fits
    else:
        ctx.semantic.append(F.error(
            "ST_COMPANION_SHAPE_MISMATCH",
            f"{name}: MLX weight {_tinfo(weight)} with U8 scales {_tinfo(scales)} and no biases is none of "
            "mxfp4, nvfp4, mxfp8", tensor=name))
    if bits is None:
        bits = spec.bits if spec is not None and spec.bits else 4
    if gs is not None:
        detail["group_size"] = gs
    shape = (*weight.shape[:-1], words * 32 // bits)
    numeric = INT if mode == "affine" else FLOAT
    wbytes = weight.nbytes + scales.nbytes + (biases.nbytes if biases is not None else 0)
    dtype = f"int{bits}(U32)" if mode == "affine" else f"{mode or 'fp'}(U32)"
    return Layer(name=name, kind=kind, shape=shape, dtype=dtype, bits=bits, numeric=numeric, quantized=True,
                 params=_numel(shape), weight_bytes=wbytes, detail=detail)


CHECKED_METHODS = {"gptq", "awq", "bitsandbytes", "compressed-tensors", "fp8", "mlx"}


# --- config.json ----------------------------------------------------------------------------------

def _load_json(path: str, limit: int) -> tuple[Any, str | None]:
    try:
        if file_size(path) > limit:
            return None, f"larger than {limit:,} bytes; not read"
        data = read_head(path, limit + 1)
        return jsonfile.loads(data.decode("utf-8"), allow_nan=True), None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, str(exc).splitlines()[0][:200]


# the standalone files AutoGPTQ and AutoAWQ write beside a checkpoint (older exports have no
# quantization_config in config.json), with the method they imply
_SIDE_CONFIGS = (("quantize_config.json", "gptq"), ("quant_config.json", "awq"))


def _sibling(folder: str, name: str, findings: list[Finding]) -> str | None:
    """The file `name` beside the artifact when the confinement rule lets it be read (quantgate.core.confine)."""
    path, refused = sibling(folder, name)
    if refused is not None:
        findings.append(F.warning("SIBLING_NOT_READ", refused, field=name))
    return path


def load_quant_config(folder: str, semantic: list[Finding]) -> dict[str, Any] | None:
    qc: Any = None
    path = _sibling(folder, "config.json", semantic)
    if path is not None:
        doc, problem = _load_json(path, CONFIG_LIMIT)
        if problem is not None or not isinstance(doc, dict):
            semantic.append(F.warning("ST_CONFIG_INVALID",
                                      f"config.json beside the file is unusable ({problem or 'no object'})"
                                      "; quantization_config not checked", field="config.json"))
            return None
        qc = doc.get("quantization_config", doc.get("compression_config"))
        if qc is None and isinstance(doc.get("quantization"), dict):  # mlx-lm before it copied the key
            qc = doc["quantization"]
    if qc is None:
        for name, method in _SIDE_CONFIGS:
            side = _sibling(folder, name, semantic)
            if side is not None:
                doc, problem = _load_json(side, CONFIG_LIMIT)
                if problem is None and isinstance(doc, dict):
                    return {"quant_method": method, **doc}
                semantic.append(F.warning("ST_CONFIG_INVALID", f"{name} beside the file is unusable "
                                          f"({problem or 'not an object'})", field=name))
                return None
        return None
    if not isinstance(qc, dict):
        semantic.append(F.warning("ST_CONFIG_INVALID", "config.json quantization_config is not an object",
                                  field="config.json:quantization_config"))
        return None
    return qc


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_list(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def spec_from_config(qc: dict[str, Any]) -> QuantSpec:
    method = qc.get("quant_method")
    method = method.lower() if isinstance(method, str) else None
    spec = QuantSpec(method=method)
    if method in ("gptq", "awq"):
        spec.layout = method
        spec.bits = _int_or_none(qc.get("bits") if "bits" in qc else qc.get("w_bit"))
        spec.group_size = _int_or_none(qc.get("group_size") if "group_size" in qc else qc.get("q_group_size"))
        spec.numeric = INT
        spec.ignore = _str_list(qc.get("modules_to_not_convert"))
        spec.quantize_head = qc.get("lm_head") is True  # GPTQModel's opt-in
    elif method == "fp8":  # transformers' fine-grained FP8 (DeepSeek-V3 style, weight_scale_inv)
        spec.layout, spec.bits, spec.numeric = "fp8", 8, FLOAT
        spec.ignore = _str_list(qc.get("modules_to_not_convert"))
    elif method == "bitsandbytes":
        if qc.get("load_in_4bit"):
            spec.layout, spec.bits, spec.numeric = "bnb-4bit", 4, FLOAT
        elif qc.get("load_in_8bit"):
            spec.layout, spec.bits, spec.numeric = "bnb-int8", 8, INT
        spec.ignore = _str_list(qc.get("llm_int8_skip_modules"))
    elif method is None and _int_or_none(qc.get("bits")) and _int_or_none(qc.get("group_size")):
        # mlx-lm writes `quantization` (and a copy as `quantization_config`) without a quant_method:
        # the global to_quantized arguments plus one entry per module path that differs
        mode = qc.get("mode") if isinstance(qc.get("mode"), str) else "affine"
        spec = QuantSpec(method="mlx", layout="mlx", bits=qc["bits"], group_size=qc["group_size"], mode=mode,
                         numeric=INT if mode == "affine" else FLOAT,
                         overrides={k: v for k, v in qc.items() if isinstance(v, (dict, bool))})
    elif method == "compressed-tensors":
        spec.layout = "compressed-tensors"
        spec.ignore = _str_list(qc.get("ignore"))
        groups = qc.get("config_groups")
        if isinstance(groups, dict):
            for g in groups.values():
                if isinstance(g, dict) and isinstance(g.get("weights"), dict):
                    targets = _str_list(g.get("targets"))
                    spec.targets.extend(targets)
                    spec.groups.append((targets, g["weights"]))
    return spec


# a group that repeats and is itself repeated ("(a+)+", "(.*)*"): the shape of catastrophic backtracking
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[+*][^()]*\)[+*{]")


def _matches(module: str, entry: str) -> bool:
    """An ignore/target entry: `re:PATTERN` (re.match, as compressed-tensors does) or a module name
    matched on whole dotted components. Patterns come from an untrusted config.json, so long ones and
    ones with nested quantifiers are not evaluated (they match nothing)."""
    if entry.startswith("re:"):
        pattern = entry[3:]
        if len(pattern) > 256 or _NESTED_QUANTIFIER.search(pattern):
            return False
        try:
            return re.match(pattern, module) is not None
        except (re.error, RecursionError):
            return False
    return f".{entry}." in f".{module}."


def check_config(ctx: Ctx, layers: list[Layer]) -> None:
    """config.json's quantization_config against each layer's stored layout, bits and group size."""
    assert ctx.spec is not None
    for layer in layers:
        if layer.quantized is None:
            continue  # an unknown layout (ST_UNKNOWN_LAYOUT): nothing stored to check the config against
        module = _module_of(layer.name)
        ignored = any(_matches(module, e) for e in ctx.spec.ignore)
        spec = ctx.spec_for(module, layer.kind)
        if spec is None:  # compressed-tensors: no config group targets this layer (MLX: its entry is false)
            if layer.quantized and not ignored:
                ctx.semantic.append(F.warning(
                    "ST_QUANT_METHOD_MISMATCH",
                    f"{layer.name} is stored quantized ({layer.dtype}) but "
                    + ("config.json quantization sets it to false: mlx-lm will load it as float"
                       if ctx.spec.method == "mlx" else "no config_groups target matches it"),
                    tensor=layer.name))
            continue
        layout = layer.detail.get("layout", "plain")
        if ignored:
            if layer.quantized:
                ctx.semantic.append(F.error(
                    "ST_IGNORED_LAYER_QUANTIZED",
                    f"{layer.name} is stored quantized ({layer.dtype}) but config.json quantization_config "
                    "lists it as not converted: loaders will expect float", tensor=layer.name))
            continue
        if not layer.quantized:
            if _excluded_by_default(spec, layer, module):
                continue
            ctx.semantic.append(F.error(
                "ST_LAYER_NOT_QUANTIZED",
                f"{layer.name} is stored as {layer.dtype} {list(layer.shape)} but config.json declares "
                f"{spec.method} quantization and does not exclude it: add it to the ignore list or "
                "quantize it",
                tensor=layer.name))
            continue
        want = spec.layout
        ok = (
            want is None
            or (want in ("gptq", "awq") and layout == want)
            or (want == "bnb-int8" and layout == "bnb-int8")
            or (want == "fp8" and layout == "fp8-scaled")
            or (want == "bnb-4bit" and layout.startswith("bnb-") and layout != "bnb-int8")
            or (want == "mlx" and layout == f"mlx-{spec.mode}")
            or (want == "compressed-tensors" and (layout.startswith("ct-") or layout in (
                "int8-scaled", "fp8-scaled", "lowbit-float")))
        )
        if not ok:
            ctx.semantic.append(F.error(
                "ST_QUANT_METHOD_MISMATCH",
                f"{layer.name} is stored as {layout} but config.json says "
                + (f"mode={spec.mode}" if want == "mlx" else f"quant_method={spec.method}")
                + (f" ({want})" if want not in (spec.method, "mlx") else ""), tensor=layer.name))
            continue
        if spec.bits is not None and layer.bits is not None and layer.bits != spec.bits:
            how = "the packed shapes imply" if layer.detail.get("implied_bits") else "it is stored at"
            ctx.semantic.append(F.error(
                "ST_BITS_MISMATCH",
                f"{layer.name}: {how} {layer.bits:g} bits but config.json says {spec.bits}"
                + (f" (at group_size {spec.group_size})" if want == "mlx" and spec.group_size else ""),
                tensor=layer.name))
        if want == "compressed-tensors":
            _check_ct_scale(ctx, spec, layer, module)


def _excluded_by_default(spec: QuantSpec, layer: Layer, module: str) -> bool:
    if spec.method == "mlx":
        # mlx-lm quantizes a module when it finds its `scales` (or a per-module entry asks for it); layers
        # whose input does not divide into groups stay float without a word in the config
        return not spec.explicit
    if layer.kind == EMBEDDING:
        return True
    if spec.method == "compressed-tensors":
        return False  # untargeted layers never get here (for_module returned None)
    # GPTQ, AWQ, bitsandbytes and FP8 loaders keep the output head in float unless told otherwise
    return not spec.quantize_head and module.rsplit(".", 1)[-1] in ("lm_head", "embed_out", "output")


def _check_ct_scale(ctx: Ctx, spec: QuantSpec, layer: Layer, module: str) -> None:
    scale = ctx.tensors.get(module + ".weight_scale")
    if scale is None or len(layer.shape) != 2:
        return
    out_f, in_f = layer.shape
    strategy, gs = spec.strategy, spec.group_size
    if strategy in ("group", "tensor_group") and gs:
        want: tuple[int, ...] | None = (out_f, -(-in_f // gs))
    elif strategy == "channel":
        want = (out_f, 1)
    elif strategy == "tensor":
        want = None if scale.numel == 1 else (1,)
    else:
        return
    if want is not None and tuple(scale.shape) != want:
        grouped = strategy in ("group", "tensor_group")
        code = "ST_GROUP_SIZE_MISMATCH" if grouped else "ST_COMPANION_SHAPE_MISMATCH"
        ctx.semantic.append(F.error(
            code,
            f"{scale.name} is {list(scale.shape)} but config.json strategy={strategy}"
            + (f" group_size={gs}" if gs else "") + f" over a {list(layer.shape)} weight needs {list(want)}",
            tensor=scale.name))


# --- the sharded index ----------------------------------------------------------------------------

_SHARD_NAME = re.compile(r"-\d{3,6}-of-\d{3,6}\.safetensors$")


def _find_index(folder: str, base: str) -> tuple[str, dict[str, Any]] | None:
    """The `*.safetensors.index.json` beside the file whose weight_map names it (or, failing that, the
    index that shares its stem)."""
    try:
        names = (_remote_index_names(folder, base) if is_url(folder) else
                 sorted(n for n in os.listdir(folder) if n.endswith(".safetensors.index.json")))
    except OSError:
        return None
    fallback = None
    shard_like = _SHARD_NAME.search(base) is not None
    for name in names[:4]:
        path, refused = sibling(folder, name)
        if path is None:
            if refused is not None and base.startswith(name[: -len(".safetensors.index.json")]):
                return name, {"__refused__": refused}
            continue
        doc, problem = _load_json(path, INDEX_LIMIT)
        wm = doc.get("weight_map") if isinstance(doc, dict) else None
        same_stem = base.startswith(name[: -len(".safetensors.index.json")])
        if problem is not None or not isinstance(wm, dict):
            if same_stem:
                return name, {"__invalid__": problem or "no weight_map object"}
            continue
        if base in {v for v in wm.values() if isinstance(v, str)}:
            return name, doc
        if same_stem and shard_like and fallback is None:
            fallback = name, doc  # a shard the index forgot: every tensor in it is unlisted
    return fallback


def _remote_index_names(folder: str, base: str) -> list[str]:
    """A URL's folder cannot be listed: the index names a shard's own name implies (`X-00001-of-00002
    .safetensors` -> `X.safetensors.index.json`), then the usual `model.safetensors.index.json`; those
    the server has."""
    stem = _SHARD_NAME.sub("", base) if _SHARD_NAME.search(base) else base.removesuffix(".safetensors")
    names = []
    for name in dict.fromkeys([f"{stem}.safetensors.index.json", "model.safetensors.index.json"]):
        if sibling(folder, name)[0] is not None:
            names.append(name)
    return sorted(names)


def _beside(folder: str, name: str) -> str:
    if is_url(folder):
        from quantgate.core import remote

        return remote.join(folder + "/x", name)
    return os.path.join(folder, name)


def _is_file(path: str) -> bool:
    if is_url(path):
        from quantgate.core import remote

        try:
            return remote.exists(path)
        except remote.RemoteError:
            return False
    return os.path.isfile(path)


def check_index(folder: str, base: str, own: dict[str, Any],
                structural: list[Finding]) -> dict[str, Any] | None:
    """Check this shard against the index beside it. Every shard checks its own entries (listed but
    absent, present but unlisted); the first shard of the index (by name) also checks the whole set
    (missing shards, paths, total_size), so a folder scan reports those once."""
    found = _find_index(folder, base)
    if found is None:
        return None
    index_name, doc = found
    if "__refused__" in doc:
        structural.append(F.warning("SIBLING_NOT_READ", doc["__refused__"], field=index_name))
        return {"index": index_name}
    if "__invalid__" in doc:
        structural.append(F.error("ST_INDEX_INVALID", f"{index_name} is unusable: {doc['__invalid__']}",
                                  field=index_name))
        return {"index": index_name}
    wm: dict[str, Any] = doc["weight_map"]
    mine = {k for k, v in wm.items() if v == base}
    missing = sorted(mine - own.keys())
    unlisted = sorted(k for k in own if wm.get(k) != base)
    for name in missing[:50]:
        structural.append(F.error(
            "ST_INDEX_TENSOR_MISSING",
            f"{index_name} maps {name!r} to {base} but the shard does not hold it: loading will fail",
            tensor=name, field=index_name))
    for name in unlisted[:50]:
        where = f"maps it to {wm[name]}" if name in wm else "does not list it"
        structural.append(F.error(
            "ST_INDEX_TENSOR_UNLISTED", f"{base} holds {name!r} but {index_name} {where}: loaders will not "
            "find it here", tensor=name, field=index_name))
    shards = sorted({v for v in wm.values() if isinstance(v, str)})
    facts = {"index": index_name, "shards": len(shards), "index_tensors": len(wm)}
    valid = [s for s in shards if _plain_name(s)]
    present = [s for s in valid if _is_file(_beside(folder, s))]
    if present and present[0] != base:
        return facts  # the whole-index checks are reported by the first shard
    for s in shards:
        if not _plain_name(s):
            structural.append(F.error(
                "ST_INDEX_SHARD_PATH_INVALID",
                f"{index_name} names shard {s!r}: shards must be plain file names beside the index",
                field=index_name))
        elif s not in present:
            n = sum(1 for v in wm.values() if v == s)
            structural.append(F.error(
                "ST_INDEX_SHARD_MISSING", f"{index_name} names shard {s} ({n} tensor(s)) but it is not in "
                "the "
                "folder: the checkpoint is incomplete", field=index_name))
    meta = doc.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    if _int_or_none(total) is not None and len(present) == len(shards) and len(shards) <= MAX_SIBLING_SHARDS:
        actual = _shard_bytes(folder, present)
        if actual is not None and actual != total:
            structural.append(F.warning(
                "ST_INDEX_TOTAL_SIZE_MISMATCH",
                f"{index_name} metadata.total_size is {total:,} but its shards hold {actual:,} tensor bytes",
                field=index_name))
    return facts


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and ":" not in name


def _shard_bytes(folder: str, shards: list[str]) -> int | None:
    total = 0
    for s in shards:
        try:
            with mapped(_beside(folder, s)) as view:
                head = parse_header(view)
        except OSError:
            return None
        if not head.sound:
            return None
        total += sum(t.nbytes for t in head.tensors.values())
    return total


# --- putting it together --------------------------------------------------------------------------

def interpret(view: View, head: Any, inv: Inventory, abspath: str) -> None:
    """Layers, params_stored, config and index checks for one parsed header."""
    folder, base = os.path.split(abspath)
    ctx = Ctx(view=view, data_start=head.data_start, file_size=head.file_size, tensors=head.tensors,
              semantic=inv.semantic_findings)
    qc = load_quant_config(folder, inv.semantic_findings)
    if qc is not None:
        ctx.config = qc
        ctx.spec = spec_from_config(qc)
    lone, modules, loose, first = _by_module(head.tensors)
    made = _Made()
    _lone_weight_layers(ctx, lone, loose, modules, first, made)
    _module_layers(ctx, modules, first, made, marlin=_is_marlin(qc))
    _loose_layers(ctx, head.tensors, loose, first, made)
    made.count_lone_plain()
    _report_unknown(made.unknown, inv.semantic_findings)
    layers = made.in_file_order()
    inv.layers = layers
    inv.params_stored = made.params_stored
    inv.facts["layouts"] = made.layouts
    _check_quant_config(ctx, inv, layers, made.layouts)
    facts = check_index(folder, base, head.tensors, inv.structural_findings)
    if facts:
        inv.facts.update(facts)
    layouts = made.layouts
    inv.facts["summary"] = (
        f"{len(head.tensors)} tensors, {len(layers)} weight ops ({made.quantized} quantized"
        + (f", {', '.join(f'{k} {v}' for k, v in sorted(layouts.items()))}" if layouts else "") + ")"
    )


@dataclass(slots=True)  # an attribute update per layer: no per-instance __dict__ to go through
class _Made:
    """The layers made so far, each with its place in the file, and what the facts count of them."""

    layers: list[Layer] = field(default_factory=list)
    at: list[int] = field(default_factory=list)  # each layer's place: the first byte of any of its tensors
    layouts: dict[str, int] = field(default_factory=dict)  # layers by layout
    quantized: int = 0
    params_stored: int = 0
    unknown: dict[str, list[str]] = field(default_factory=dict)  # unrecognised packed pattern -> modules

    lone_plain: int = 0  # plain layers of lone `.weight`s: counted into `layouts` last (count_lone_plain)

    def add(self, layer: Layer, at: int, params: int | None = None, lone: bool = False) -> None:
        """A layer, numbered by its place in the list, and the parameters it stores (the layer's unless
        given)."""
        layer.position = len(self.layers)
        self.layers.append(layer)
        self.at.append(at)
        if lone:
            self.lone_plain += 1
        else:
            key = layer.detail.get("layout", "plain")
            self.layouts[key] = self.layouts.get(key, 0) + 1
        self.quantized += layer.quantized is True
        self.params_stored += layer.params if params is None else params

    def count_lone_plain(self) -> None:
        """`layouts` lists the layouts in the order the modules and loose tensors meet them, and "plain"
        where one of those first met it, else last (`quantgate inspect` prints it so)."""
        if self.lone_plain:
            self.layouts["plain"] = self.layouts.get("plain", 0) + self.lone_plain

    def in_file_order(self) -> list[Layer]:
        """The layers sorted by place in the file (a stable sort), numbered again if that moved any."""
        order = sorted(range(len(self.layers)), key=self.at.__getitem__)
        if order == list(range(len(self.layers))):
            return self.layers
        layers = [self.layers[i] for i in order]
        for i, layer in enumerate(layers):
            layer.position = i
        return layers


def _is_marlin(qc: dict[str, Any] | None) -> bool:
    """GPTQ checkpoints saved in Marlin's tile order (AutoGPTQ `checkpoint_format: marlin`, older
    `is_marlin_format`) keep GPTQ's names over another packing."""
    return qc is not None and (str(qc.get("checkpoint_format", "")).lower() == "marlin"
                               or qc.get("is_marlin_format") is True)


def _lone_weight_layers(ctx: Ctx, lone: list[Any], loose: list[Any], modules: dict[str, dict[str, Any]],
                        first: dict[str, int], made: _Made) -> None:
    """A `.weight` with no companion, most of a checkpoint: a float one is a plain layer (or, 1-D, a
    norm's parameters); any other joins `modules`, to be told apart with the modules that have companions."""
    shared = {t.name + ".weight" for t in loose}  # the weights a loose tensor is named like the module of
    for main in lone:
        if main.dtype not in FLOAT_DTYPES:
            module = main.name[:-7]
            first[module] = min(first.get(module, _NO_BYTE), main.begin)
            modules[module] = {"weight": main}
            continue
        if len(main.shape) < 2:
            made.params_stored += main.numel  # a norm: a parameter, not an op
            continue
        name = main.name
        made.add(_plain(ctx, name[:-7], {"weight": main}, main),
                 main.begin if name not in shared else min(first[name[:-7]], main.begin), lone=True)


def _is_mlx(role: str, main: Any, parts: dict[str, Any]) -> bool:
    return main.dtype == "U32" and "scales" in parts and len(main.shape) >= 2


def _is_bnb4(role: str, main: Any, parts: dict[str, Any]) -> bool:
    # any dtype: bnb_4bit_quant_storage=bfloat16 (FSDP QLoRA) packs the nibbles into BF16
    return "bnb_state" in parts or (main.dtype == "U8" and "bnb_absmax" in parts)


# A module's layout, told by its main role (MAIN_ROLES), main tensor and companions -> its decoder. The
# first that applies decodes the module; a module none applies to is plain, a norm or unknown
# (_module_layer).
_MODULE_LAYOUTS: tuple[tuple[Callable[[str, Any, dict[str, Any]], bool],
                             Callable[[Ctx, str, dict[str, Any], Any], Layer]], ...] = (
    (lambda role, main, parts: role == "qweight", _gptq_awq),  # GPTQ or AWQ
    (lambda role, main, parts: role == "packed", _ct_packed),  # compressed-tensors
    (lambda role, main, parts: role.startswith("quanto_"), _quanto),
    (_is_mlx, _mlx),
    (_is_bnb4, _bnb4),
)


def _module_layers(ctx: Ctx, modules: dict[str, dict[str, Any]], first: dict[str, int], made: _Made,
                   marlin: bool) -> None:
    """The layer of each module with companions (and of each non-float lone `.weight`)."""
    for module, parts in modules.items():
        role = next((r for r in MAIN_ROLES if r in parts), None)
        if role is None:
            _orphans(ctx, module, parts, made)
            continue
        main = parts[role]
        layer = _module_layer(ctx, module, role, main, parts, made.unknown, marlin)
        if layer is None or (role == "weight" and len(layer.shape) < 2):
            made.params_stored += main.numel  # a 1-D `.weight` (a norm): a parameter, not an op
            continue
        # every module layer is named module.weight: its place is the module's first byte
        # (a bias lives beside the weight as a loose tensor; the weight's own extras are not parameters)
        made.add(layer, first[module])


def _module_layer(ctx: Ctx, module: str, role: str, main: Any, parts: dict[str, Any],
                  unknown: dict[str, list[str]], marlin: bool) -> Layer | None:
    """The layer one module's tensors make; None for a 1-D float `.weight` (a norm: no op)."""
    if role == "qweight" and marlin:  # repacked for the Marlin kernel: not GPTQ's qweight layout
        return _unknown(module, list(parts.values()), unknown)
    for applies, decode in _MODULE_LAYOUTS:
        if applies(role, main, parts):
            return decode(ctx, module, parts, main)
    if len(main.shape) < 2 and main.dtype in FLOAT_DTYPES:
        return None
    if main.dtype in PACKED_INTS and len(main.shape) >= 2:  # packed, and no layout above explains it
        return _unknown(module, list(parts.values()), unknown)
    return _plain(ctx, module, parts, main)


def _orphans(ctx: Ctx, module: str, parts: dict[str, Any], made: _Made) -> None:
    """Companions with no weight beside them: reported, and counted as parameters."""
    for role, t in parts.items():
        if role == "act":
            continue
        ctx.semantic.append(F.warning(
            "ST_ORPHAN_COMPANION", f"{t.name} ({role}) has no weight beside it ({module}.weight, "
            ".qweight or .weight_packed)", tensor=t.name))
        made.params_stored += t.numel


def _loose_layers(ctx: Ctx, tensors: dict[str, Any], loose: list[Any], first: dict[str, int],
                  made: _Made) -> None:
    """Tensors of no known role: HQQ and unknown packed modules, gpt-oss MXFP4 blocks, bare parameters of
    2+ dims (an expert bank, a position table); the rest (biases, 1-D buffers) are parameters only."""
    names = {t.name for t in loose}
    strange = unknown_groups(loose, names)
    for t in loose:
        if t.name.endswith("_scales") and t.name[: -len("_scales")] + "_blocks" in names:
            continue  # the scales of an MXFP4 `_blocks` tensor, counted with it
        group = strange.get(t.name.rpartition(".")[0]) if strange else None
        if group is not None:
            if t is group[0]:  # one layer per module, made at its first tensor
                _strange_module(ctx, t.name.rpartition(".")[0], group, made)
            continue
        if t.name.endswith("_blocks") and t.name[: -len("_blocks")] + "_scales" in names and t.dtype == "U8" \
                and len(t.shape) >= 3:
            layer = _mxfp4_blocks(t, tensors[t.name[: -len("_blocks")] + "_scales"])
        elif _loose_is_op(t):
            layer = _plain(ctx, t.name, {}, t)
        else:
            made.params_stored += t.numel
            continue
        made.add(layer, _file_order(first, layer))


def _strange_module(ctx: Ctx, module: str, group: list[Any], made: _Made) -> None:
    """A module of integer tensors no suffix explains: HQQ when its names say so, else unknown."""
    hqq = hqq_parts(module, group)
    layer = _hqq(ctx, module, hqq) if hqq is not None else None
    at = min(x.begin for x in group)
    if layer is None:
        made.add(_unknown(module, group, made.unknown), at, params=sum(x.numel for x in group))
    else:
        assert hqq is not None
        made.add(layer, at, params=layer.params + (hqq["bias"].numel if "bias" in hqq else 0))


def _check_quant_config(ctx: Ctx, inv: Inventory, layers: list[Layer], layouts: dict[str, int]) -> None:
    """The layers against config.json's quantization_config, or a note that packed weights have none."""
    if ctx.spec is not None:
        inv.facts["quant_method"] = ctx.spec.method
        inv.metrics["quant_method"] = ctx.spec.method
        if ctx.spec.method in CHECKED_METHODS:
            check_config(ctx, layers)
        else:  # hqq, quanto, torchao...: their storage is not described here, so nothing is claimed
            inv.semantic_findings.append(F.info(
                "ST_QUANT_METHOD_UNCHECKED",
                f"config.json quant_method {ctx.spec.method!r} is not one quantgate checks against the "
                f"stored tensors ({', '.join(sorted(CHECKED_METHODS))})", field="config.json"))
    elif not any(f.code == "ST_CONFIG_INVALID" for f in inv.semantic_findings) and any(
            key in layouts for key in ("gptq", "awq", "ct-pack-quantized", "ct-nvfp4-pack-quantized", "mlx-affine",
                                       "mlx-mxfp4", "mlx-nvfp4", "mlx-mxfp8")):
        inv.semantic_findings.append(F.info(
            "ST_NO_QUANT_CONFIG",
            "packed quantized weights but no config.json with quantization_config beside the file: loaders "
            "need it, and bits/group size were inferred from shapes", field="config.json"))


# integer dtypes that only a packing of narrower values would put in a weight (I64 is left out: index
# buffers such as `position_ids` [1, n])
PACKED_INTS = ("I32", "U32", "I16", "U16")
_INTS = (*PACKED_INTS, "I8", "U8")
MAX_UNKNOWN_FINDINGS = 20


def unknown_groups(loose: list[Any], names: set[str]) -> dict[str, list[Any]]:
    """The loose tensors of each module (name up to its last dot) that holds an integer tensor of 2+ dims
    no layout explains: a packed container dtype, or an 8-bit one beside other loose tensors (torchao
    `_weight_qdata` + `_weight_scale`); HQQ modules are among them (told apart by hqq_parts). A lone
    I8/U8 tensor stays an int8 op."""
    suspect: set[str] = set()
    for t in loose:  # most loose tensors are float biases and norms: the dtype test comes first
        # (HQQ's view_as_float stores W_q as a float tensor)
        if ((t.dtype in _INTS and len(t.shape) >= 2 and min(t.shape) > 1) or t.name.endswith(".W_q")) \
                and not _mxfp4_part(t.name, names):
            suspect.add(t.name.rpartition(".")[0])
    suspect.discard("")
    if not suspect:
        return {}
    by_module: dict[str, list[Any]] = {}
    for t in loose:
        module = t.name.rpartition(".")[0]
        if module in suspect and not _mxfp4_part(t.name, names):
            by_module.setdefault(module, []).append(t)
    return {m: g for m, g in by_module.items() if len(g) > 1 or g[0].dtype in PACKED_INTS}


def _mxfp4_part(name: str, names: set[str]) -> bool:
    """One of a gpt-oss MXFP4 `X_blocks` / `X_scales` pair (read by _mxfp4_blocks)."""
    if name.endswith("_blocks"):
        return name[: -len("_blocks")] + "_scales" in names
    return name.endswith("_scales") and name[: -len("_scales")] + "_blocks" in names


HQQ_REQUIRED = ("W_q", "scale", "zero", "shape", "nbits")
HQQ_BITS = (1, 2, 3, 4, 8)


def hqq_parts(module: str, group: list[Any]) -> dict[str, Any] | None:
    """HQQ's HQQLinear state dict (hqq, transformers' HqqConfig) by its names, when they are all there."""
    parts = {t.name[len(module) + 1:]: t for t in group}
    return parts if all(k in parts for k in HQQ_REQUIRED) else None


def _read_int(ctx: Ctx, t: Any | None) -> int | None:
    """A one-element integer tensor's value (HQQ keeps nbits, group_size and axis so)."""
    size = {"I32": 4, "I64": 8, "I16": 2, "U8": 1, "I8": 1}.get(t.dtype) if t is not None else None
    if size is None or t.numel != 1 or not ctx.readable(t, 8):
        return None
    return int.from_bytes(ctx.read(t), "little", signed=t.dtype != "U8")


def _hqq(ctx: Ctx, module: str, parts: dict[str, Any]) -> Layer | None:
    """HQQ (`HQQLinear`): `W_q` holds the weight grouped as [out·in/group, group] (axis 1), quantized to
    `nbits` and packed along the first dim (8/nbits rows a byte, the first rows in the high bits; 3-bit:
    10 a 32-bit word), `scale` and `zero` one per group, `shape` the logical [out, in]: w = (q - zero)·scale.
    None when the meta tensors do not describe W_q (then the module is an unknown layout)."""
    name = module + ".weight"
    wq = parts["W_q"]
    shape = _read_weight_shape(ctx, parts["shape"])
    nbits = _read_int(ctx, parts["nbits"])
    if shape is None or len(shape) != 2 or nbits not in HQQ_BITS:
        return None
    numel = _numel(shape)
    capacity = wq.nbytes // 4 * 10 if nbits == 3 else wq.nbytes * 8 // nbits  # 3-bit: 10 in 32 bits
    if capacity < numel:
        ctx.semantic.append(F.error(
            "ST_COMPANION_SHAPE_MISMATCH",
            f"{name}: HQQ shape {list(shape)} at {nbits} bits needs more than W_q {_tinfo(wq)} holds",
            tensor=name))
        return None
    detail: dict[str, Any] = {"layout": "hqq", "stored": _tinfo(wq)}
    gs = _read_int(ctx, parts.get("group_size"))
    if gs is not None:
        detail["group_size"] = gs
    wbytes = sum(parts[k].nbytes for k in ("W_q", "scale", "zero"))
    return Layer(name=name, kind=layer_kind(name, 2), shape=shape, dtype=f"int{nbits}({wq.dtype})", bits=nbits,
                 numeric=INT, quantized=True, params=numel, weight_bytes=wbytes, detail=detail)


def _unknown(module: str, tensors: list[Any], unknown: dict[str, list[str]]) -> Layer:
    """A module whose integer tensors no layout decodes: a layer of unknown precision (never float, never
    a quantized claim), sized by its largest integer tensor's stored elements."""
    ints = [t for t in tensors if t.dtype in _INTS] or tensors  # HQQ's W_q may be stored as a float view
    main = max(ints, key=lambda t: t.nbytes)
    # names and dtypes, not shapes: the modules of one quantizer share the pattern whatever their sizes
    parts = sorted(f"{t.name[len(module) + 1:] if module else t.name} {t.dtype}" for t in tensors)
    pattern = "{" + ", ".join(parts[:10]) + (", ..." if len(parts) > 10 else "") + "}"
    unknown.setdefault(pattern, []).append(module)
    # named like every other layer, `<module>.weight`, whatever the storage
    name = main.name if main.name.endswith(".weight") or not module else (
        module if module.endswith(".weight") else module + ".weight")
    return Layer(name=name, kind=layer_kind(name, len(main.shape)), shape=tuple(main.shape),
                 dtype=f"unknown({main.dtype})", bits=None, numeric=UNKNOWN, quantized=None, params=main.numel,
                 weight_bytes=None, detail={"layout": "unknown", "stored": _tinfo(main),
                                            "tensors": len(tensors)})


def _report_unknown(unknown: dict[str, list[str]], semantic: list[Finding]) -> None:
    for pattern, modules in list(unknown.items())[:MAX_UNKNOWN_FINDINGS]:
        semantic.append(F.warning(
            "ST_UNKNOWN_LAYOUT",
            f"{len(modules)} module(s) like {modules[0]} hold integer tensors in a layout quantgate does not "
            f"decode: {modules[0]}.{pattern}; counted as layers of unknown precision, not as weights: check the "
            "quantizer (torchao, EXL2, Marlin...) and gate on coverage.*.unknown",
            tensor=modules[0] or None))
    if len(unknown) > MAX_UNKNOWN_FINDINGS:
        semantic.append(F.warning(
            "ST_UNKNOWN_LAYOUT", f"{len(unknown) - MAX_UNKNOWN_FINDINGS} more unknown tensor pattern(s) not listed"))


def _by_module(tensors: dict[str, Any]) -> tuple[list[Any], dict[str, dict[str, Any]], list[Any], dict[str, int]]:
    """The `.weight` tensors with no companion (most of a checkpoint), in header order; the other
    tensors grouped by module ({role: tensor}, in header order); the tensors of no known role; and the
    first byte in the data buffer of each grouped module and each loose tensor. The `.weight` names are
    told apart first: only the others (and the weights of modules that have them) are split by role."""
    names = list(tensors)
    values = list(tensors.values())
    is_weight = list(map(str.endswith, names, repeat(".weight")))
    if ".weight" in tensors:  # a bare `.weight` is no module's weight
        is_weight[names.index(".weight")] = False
    modules: dict[str, Any] = {}
    loose: list[Any] = []
    first: dict[str, int] = {}
    if False not in is_weight:
        return values, modules, loose, first
    for t in compress(values, map(operator.not_, is_weight)):
        name = t.name
        module, role = split_name(name)
        if role is None:
            loose.append(t)
            first[name] = min(first.get(name, _NO_BYTE), t.begin)
            continue
        parts = modules.get(module)
        if parts is None:
            modules[module] = {role: t}
            first[module] = min(first.get(module, _NO_BYTE), t.begin)
        else:
            parts[role] = t
            first[module] = min(first[module], t.begin)
    weights = list(compress(values, is_weight))
    if not modules and not first:
        return weights, modules, loose, first
    paired = {module + ".weight" for module in modules}
    lone = []
    for t in weights:
        if t.name in paired:  # the weight of a module with companions
            module = t.name[:-7]
            modules[module]["weight"] = t
            first[module] = min(first[module], t.begin)
        else:
            lone.append(t)
            if t.name[:-7] in first:  # a loose tensor named like the weight's module shares its first byte
                first[t.name[:-7]] = min(first[t.name[:-7]], t.begin)
    return lone, modules, loose, first


_NO_BYTE = 1 << 64  # past any data offset


def _file_order(first: dict[str, int], layer: Layer) -> int:
    """Where a layer's tensors start in the file (0 when its name is no module's or tensor's)."""
    name = layer.name
    return first.get(_module_of(name), first.get(name, 0))


def _loose_is_op(t: Any) -> bool:
    """A tensor without a `.weight`-style suffix is an op when it has 2+ dims and could be a weight:
    not a bias (`experts.down_proj_bias`), not an index buffer (`position_ids` I64)."""
    if len(t.shape) < 2 or t.name.rsplit(".", 1)[-1].endswith("bias"):
        return False
    return t.dtype not in ("BOOL", "I16", "U16", "I32", "U32", "I64", "U64")


def _module_of(layer_name: str) -> str:
    return layer_name[: -len(".weight")] if layer_name.endswith(".weight") else layer_name
