"""The formats quantgate reads, in one registry: `FORMATS`.

A format is a package `formats/<id>/` and one `Format` entry below; every other registry is derived
from these entries (the sniffing order, the model extensions, `guards.GUARD_MODULES`, the formats
`fidelity` dequantizes, the sections of docs/finding-codes.md). docs/architecture.md#adding-a-format
says what each field wants.

Modules are named by string and imported only for the format at hand, so reading a GGUF never
imports the ONNX or ExecuTorch code; the `sniff` rules come from the format packages' `__init__`,
which import nothing. A reader never raises on bad input: defects become findings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quantgate.core.inventory import Inventory
from quantgate.formats import gguf, onnx, pte, safetensors


@dataclass(frozen=True)
class CodeSection:
    """One section of docs/finding-codes.md: a title, one paragraph (which guard reports the codes and at
    what severity) and the `FINDING_CODES` tables it lists, each named "module:attribute"."""

    title: str
    intro: str
    tables: tuple[str, ...]


@dataclass(frozen=True)
class Format:
    """What quantgate plugs in for one format."""

    id: str  # the stable format id in reports, policies and manifests
    sniff: Callable[[bytes, int], str | None]  # (first 4 KiB, file size) -> a detail when it is this format
    reader: str  # module with `read(path) -> Inventory` and `remote_extent(view, head, block)` (URL read-ahead)
    extensions: tuple[str, ...] = ()  # names meant to be this format; they never decide the format
    has_magic: bool = True  # False: sniffed after every format with a magic number (it can match by chance)
    model: bool = True  # False: a companion file read beside a model (a .ptd), never gated by itself
    dequantizer: str | None = None  # module with `open_weights(path) -> WeightSet` (the fidelity guard)
    guards: tuple[tuple[str, str], ...] = ()  # (guard id, module defining GUARD), in the order they run
    code_sections: tuple[CodeSection, ...] = ()


# in the order their guards run; the sniffing order is SNIFFING_ORDER
FORMATS: dict[str, Format] = {
    f.id: f
    for f in (
        Format(
            "pte", pte.sniff, "quantgate.formats.pte.reader", extensions=(".pte",),
            dequantizer="quantgate.dequant.pte",
            guards=(
                ("pte-program", "quantgate.guards.pte_program"),
                ("pte-inspector", "quantgate.guards.pte_inspector"),
            ),
            code_sections=(
                CodeSection(
                    "ExecuTorch `.pte`",
                    "Structure codes land in `integrity`, the program's layers and data in `pte-program` "
                    "([format notes](formats.md#executorch-pte-pte-program)).",
                    ("quantgate.formats.pte.reader:FINDING_CODES", "quantgate.guards.pte_program:FINDING_CODES"),
                ),
                CodeSection(
                    "XNNPACK delegate payloads",
                    "Raised while reading a `.pte`'s XNNPACK payloads; offsets are file offsets "
                    "([format notes](formats.md#xnnpack-delegate-payloads)).",
                    ("quantgate.formats.pte.xnnpack:FINDING_CODES",),
                ),
                CodeSection(
                    "ExecuTorch runtime (pte-inspector)",
                    "Raised by `pte-inspector` ([the runtime](runtime.md#pte-inspector)).",
                    ("quantgate.guards.pte_inspector:FINDING_CODES",),
                ),
            ),
        ),
        Format("ptd", pte.sniff_ptd, "quantgate.formats.pte.reader", extensions=(".ptd",), model=False),
        Format(
            "onnx", onnx.sniff, "quantgate.formats.onnx.reader", extensions=(".onnx", ".ort"), has_magic=False,
            dequantizer="quantgate.dequant.onnx", guards=(("onnx-dtypes", "quantgate.guards.onnx_dtypes"),),
            code_sections=(
                CodeSection(
                    "ONNX",
                    "Structural codes land in `integrity` (errors fail it and block `onnx-dtypes`); the "
                    "quantization consistency codes (`ONNX_MATMULNBITS_*`, `ONNX_GATHERBLOCKQUANTIZED_*`, "
                    "`ONNX_DQ_*`, `ONNX_SCALE_*`, `ONNX_NODE_UNREADABLE`, `ONNX_WEIGHTS_QUANTIZED_AT_RUN_TIME`) land "
                    "in `onnx-dtypes`. All are errors except `ONNX_UNKNOWN_DTYPE`, `ONNX_DUPLICATE_INITIALIZER`, "
                    "`ONNX_EXTERNAL_OVERLAP`, `ONNX_NODE_UNREADABLE`, `ONNX_WEIGHTS_QUANTIZED_AT_RUN_TIME` and "
                    "`ONNX_FUNCTION_INLINE_CAPPED` (warnings) and `ONNX_FINDINGS_CAPPED` (info) "
                    "([format notes](formats.md#onnx-onnx-dtypes)).",
                    ("quantgate.formats.onnx.reader:FINDING_CODES",),
                ),
            ),
        ),
        Format(
            "gguf", gguf.sniff, "quantgate.formats.gguf.reader", extensions=(".gguf",),
            dequantizer="quantgate.dequant.gguf", guards=(("gguf-dtypes", "quantgate.guards.gguf_dtypes"),),
            code_sections=(
                CodeSection(
                    "GGUF",
                    "Structural codes (errors unless marked) fail `integrity`, the split-set ones "
                    "(`GGUF_SPLIT_MISSING`, `GGUF_SPLIT_EXTRA`, `GGUF_SPLIT_MISMATCH`) included; the semantic ones "
                    "(architecture, general.* key types, file_type, quantization_version, hparams, "
                    "`GGUF_SPLIT_SHARD`) and the memory note belong to `gguf-dtypes` "
                    "([format notes](formats.md#gguf-gguf-dtypes)).",
                    ("quantgate.formats.gguf.reader:FINDING_CODES", "quantgate.guards.gguf_dtypes:FINDING_CODES"),
                ),
            ),
        ),
        Format(
            "safetensors", safetensors.sniff, "quantgate.formats.safetensors.reader", extensions=(".safetensors",),
            dequantizer="quantgate.dequant.safetensors",
            guards=(("safetensors-dtypes", "quantgate.guards.safetensors_dtypes"),),
            code_sections=(
                CodeSection(
                    "safetensors",
                    "Header structure codes land in `integrity`, layout and config.json codes in "
                    "`safetensors-dtypes` ([format notes](formats.md#safetensors-safetensors-dtypes)).",
                    ("quantgate.formats.safetensors.reader:FINDING_CODES",),
                ),
            ),
        ),
    )
}

MODEL_FORMATS: tuple[str, ...] = tuple(f.id for f in FORMATS.values() if f.model)
# formats with a magic number first (registry order), then those without, which could match by chance
SNIFFING_ORDER: tuple[Format, ...] = tuple(sorted(FORMATS.values(), key=lambda f: not f.has_magic))


def load(ref: str) -> Any:
    """The object a "module:attribute" reference names (imported on first use)."""
    module_name, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def read_inventory(path: str, fmt: str) -> Inventory | None:
    """The artifact's inventory, or None when the format is not a model format this version reads."""
    spec = FORMATS.get(fmt)
    if spec is None or not spec.model:
        return None
    return importlib.import_module(spec.reader).read(path)
