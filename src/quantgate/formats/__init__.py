"""Format readers: one module per format, each exposing `read(path) -> Inventory`.

Readers are imported lazily, only for the format at hand, so reading a GGUF never imports the
ONNX or ExecuTorch code. A reader never raises on bad input: defects become findings.
"""

from __future__ import annotations

import importlib

from quantgate.core.inventory import Inventory

# format id -> module implementing `read(path: str) -> Inventory`
READERS: dict[str, str] = {
    "gguf": "quantgate.formats.gguf.reader",
    "onnx": "quantgate.formats.onnx.reader",
    "pte": "quantgate.formats.pte.reader",
    "safetensors": "quantgate.formats.safetensors.reader",
}


def reader_for(fmt: str) -> str | None:
    return READERS.get(fmt)


def read_inventory(path: str, fmt: str) -> Inventory | None:
    """The artifact's inventory, or None when this version has no reader for the format."""
    module_name = READERS.get(fmt)
    if module_name is None:
        return None
    module = importlib.import_module(module_name)
    return module.read(path)
