"""Dequantization for the `fidelity` guard: one module per format, each giving float weights.

Every format module exposes `open_weights(path) -> WeightSet`: the artifact's weight tensors (2+
dims), each a `WeightRef` whose `load(rows)` returns the selected rows of the tensor's 2-D view
(all dims but the last flattened into rows) as float32, in the orientation the float model uses
(an ONNX MatMulNBits weight comes back as the [K, N] a float MatMul would hold). Rows are read from
a memory map, so a caller that walks a tensor in row chunks never holds more than one chunk.

numpy is imported here and by the format modules: this package is only imported inside the guard's
measure path, never by the core install.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DequantError(Exception):
    """A weight cannot be decoded: `code` is a stable finding code, the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


UNSUPPORTED = "FIDELITY_UNSUPPORTED_ENCODING"
BROKEN = "FIDELITY_DEQUANT_FAILED"


@dataclass
class WeightRef:
    """One weight tensor, decoded lazily."""

    name: str
    shape: tuple[int, ...]
    encoding: str  # what is stored: "F16", "Q4_0", "int8 per-channel (DQ axis 0)", ...
    quantized: bool
    loader: Callable[[np.ndarray], np.ndarray]  # sorted row indices -> float32 [len(rows), cols]
    key: str = ""  # the name used to pair it with the reference (normalized); defaults to name
    release: Callable[[], None] | None = None  # drops a decoded copy the loader keeps between chunks

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The selected rows (all when None) as float32 [n, cols]."""
        index = np.arange(self.rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        out = self.loader(index)
        if out.shape != (len(index), self.cols):
            raise DequantError(BROKEN, f"{self.name}: decoded {list(out.shape)}, expected [{len(index)}, {self.cols}]")
        return out


@dataclass
class WeightSet:
    """The weights of one artifact, plus what could not be listed (unsupported layouts...)."""

    format: str
    weights: dict[str, WeightRef] = field(default_factory=dict)  # by pairing key
    # other forms of a weight an artifact may hold under another key (an ONNX Conv's filter with its
    # BatchNormalization folded in): variant key -> (the weight's own key, the variant); used only
    # when the artifact has that key and the weights have no such key
    variants: dict[str, tuple[str, WeightRef]] = field(default_factory=dict)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (code, tensor, message)
    facts: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def add(self, ref: WeightRef) -> None:
        key = ref.key or ref.name
        ref.key = key
        if key not in self.weights:
            self.weights[key] = ref

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers.clear()


def open_weights(path: str, fmt: str) -> WeightSet:
    """The format's weights, from the module its `formats.FORMATS` entry names as `dequantizer`
    (imported only for the format at hand); raises DequantError when the format has none."""
    from quantgate.formats import FORMATS

    spec = FORMATS.get(fmt)
    module_name = spec.dequantizer if spec else None
    if module_name is None:
        raise DequantError(UNSUPPORTED, f"weight fidelity is not implemented for {fmt} artifacts")
    return importlib.import_module(module_name).open_weights(path)
