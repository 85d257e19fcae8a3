"""A NumPy .npy file as one linear layer (a test plugin; the header is a Python literal dict)."""

from __future__ import annotations

import ast
import math

from quantgate.core import findings as F
from quantgate.core.inventory import FLOAT, INT, LINEAR, Inventory, Layer
from quantgate.formats.wire.binary import ReadError, View, file_size, mapped

FINDING_CODES = {"NPY_BAD_HEADER": "The .npy header is not a dict with descr, fortran_order and shape."}
_DTYPES = {"|i1": (INT, 8), "<f2": (FLOAT, 16), "<f4": (FLOAT, 32)}


def read(path: str) -> Inventory:
    inv = Inventory("npy", path, file_size(path))
    try:
        with mapped(path) as view:
            length = view.u16(8)
            header = ast.literal_eval(view.text(10, length, "header"))
            numeric, bits = _DTYPES[header["descr"]]
            shape = tuple(int(d) for d in header["shape"])
    except (ReadError, ValueError, SyntaxError, KeyError, TypeError) as exc:
        inv.structural_findings.append(F.error("NPY_BAD_HEADER", f"unreadable header: {type(exc).__name__}"))
        return inv
    inv.layers.append(Layer(name="array", kind=LINEAR, shape=shape, dtype=header["descr"], bits=bits,
                            numeric=numeric, quantized=numeric == INT, params=math.prod(shape)))
    return inv


def remote_extent(view: View, head: bytes, block: int) -> int:
    return 10 + int.from_bytes(head[8:10], "little")
