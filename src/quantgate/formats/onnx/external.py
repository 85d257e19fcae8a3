"""External data checks for ONNX tensors, made with `lstat`/`realpath` only: the data is never opened.

The rules are the union of the strictest readers' (onnx >= 1.21 and onnxruntime differ): no absolute
path, no `..` component even when it stays inside, the resolved path inside the model's folder, no
symbolic link on the path, no hard link (st_nlink > 1), a regular file, and a numeric range that
fits the file and matches the tensor's byte size.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from typing import Any

from quantgate.core import confine as C
from quantgate.core import findings as F
from quantgate.core.confine import Confined, confine
from quantgate.core.findings import Finding
from quantgate.core.remote import is_url
from quantgate.formats.onnx.proto import Tensor


def locate(base: str, loc: str) -> tuple[str | None, int | None, list[tuple[str, str]]]:
    """External data `loc` beside a model in `base` (a folder or a URL's folder), by the one confinement
    rule (quantgate.core.confine) made as strict as onnx's and onnxruntime's loaders: no link on the path,
    no hard link. Returns (real path or URL, size, []) when it may be read, else (None, None, the
    ONNX_EXTERNAL_* findings as (code, message)). Shared by the reader and the fidelity dequantizer."""
    got = confine(base, loc, links=False, hard_links=False)
    if got.path is not None:
        if not is_url(got.path):
            return got.real, got.size, []
        from quantgate.core import remote

        try:  # sized by the server, never fetched
            return got.path, remote.open_file(got.path).size, []
        except remote.RemoteError as exc:
            return None, None, [("ONNX_EXTERNAL_MISSING", f"external data file {loc!r} cannot be examined: {exc}")]
    return None, None, _refusal(got, loc, base)


def _refusal(got: Confined, loc: str, base: str) -> list[tuple[str, str]]:
    """The findings for a location the rule refused, in the words of the loaders it follows."""
    if got.refused == C.INVALID:
        return [("ONNX_EXTERNAL_PATH_INVALID", f"external data location {loc!r} {got.detail}")]
    if got.refused == C.ABSOLUTE:
        return [("ONNX_EXTERNAL_PATH_ABSOLUTE",
                 f"external data location {loc!r} is absolute; it must be relative to the model's folder")]
    found = []
    if got.dotdot:
        found.append(("ONNX_EXTERNAL_PATH_TRAVERSAL", f"external data location {loc!r} contains `..`; onnx and "
                      "onnxruntime resolve it differently, write a plain relative path"))
    if got.refused == C.ESCAPES:
        found.append(("ONNX_EXTERNAL_PATH_ESCAPES", f"external data location {loc!r} resolves to {got.real}, "
                      f"outside the model's folder {os.path.realpath(base)}"))
    elif got.refused == C.LINK:
        found.append(("ONNX_EXTERNAL_SYMLINK", f"external data location {loc!r}: {got.link!r} is a symbolic "
                      "link; copy the data into the model's folder"))
    elif got.refused == C.MISSING:
        found.append(("ONNX_EXTERNAL_MISSING", f"external data file {loc!r} does not exist next to the model"))
    elif got.refused == C.UNEXAMINABLE:
        found.append(("ONNX_EXTERNAL_MISSING", f"external data file {loc!r} cannot be examined: {got.reason}"))
    elif got.refused == C.NOT_REGULAR:
        found.append(("ONNX_EXTERNAL_NOT_A_FILE", f"external data location {loc!r} is not a regular file"))
    elif got.refused == C.HARD_LINK:
        found.append(("ONNX_EXTERNAL_HARDLINK", f"external data file {loc!r} has {got.nlink} hard links; it may "
                      "alias a file outside the model's folder, copy it instead"))
    return found


class ExternalChecks:
    """Checks every external tensor of a model; findings go to `add`."""

    def __init__(self, tensors: list[Tensor], model_path: str, add: Callable[[Finding], None]):
        self.tensors = tensors
        self.path = model_path
        self.add = add
        self.facts: dict[str, Any] = {}

    def run(self) -> None:
        remote = is_url(self.path)
        base = os.path.dirname(self.path.split("?", 1)[0] if remote else os.path.abspath(self.path))
        checked: dict[str, tuple[str | None, int | None]] = {}  # location -> (real path or None, size)
        ranges: dict[str, list[tuple[int, int, str]]] = {}
        files: set[str] = set()
        for t in self.tensors:
            if not t.is_external:
                continue
            loc = t.external.get("location")
            if loc is None or loc == "":
                self.add(
                    F.error(
                        "ONNX_EXTERNAL_NO_LOCATION",
                        f"tensor {t.name!r} is stored as external data but names no `location`",
                        offset=t.offset,
                        tensor=t.name,
                        field="external_data",
                    )
                )
                continue
            files.add(loc)
            if loc not in checked:
                checked[loc] = self.check_location(t, loc, base)
            real, size = checked[loc]
            rng = self.check_range(t, size)
            if real is not None and rng is not None:
                ranges.setdefault(real, []).append((rng[0], rng[1], t.name))
        for real, spans in ranges.items():
            spans.sort()
            for (a0, a1, an), (b0, b1, bn) in itertools.pairwise(spans):
                if b0 < a1:
                    self.add(
                        F.warning(
                            "ONNX_EXTERNAL_OVERLAP",
                            f"external data of {an!r} [{a0}, {a1}) and {bn!r} [{b0}, {b1}) overlap in "
                            f"{os.path.basename(real)}",
                            tensor=bn,
                            field="external_data",
                        )
                    )
        if files:
            self.facts["external_data_files"] = sorted(files)[:20]

    def check_location(self, t: Tensor, loc: str, base: str) -> tuple[str | None, int | None]:
        """Path checks without opening the file; returns (real path or URL, size) when it is safe to use."""
        where, size, problems = locate(base, loc)
        for code, message in problems:
            self.add(F.error(code, message, offset=t.offset, tensor=t.name, field="external_data.location"))
        return where, size

    def check_range(self, t: Tensor, size: int | None) -> tuple[int, int] | None:
        values: dict[str, int | None] = {}
        for key in ("offset", "length"):
            text = t.external.get(key)
            if text is None:
                values[key] = None
                continue
            text = text.strip()
            if not re.fullmatch(r"[+-]?\d{1,30}", text) or int(text) < 0:
                self.add(
                    F.error(
                        "ONNX_EXTERNAL_BAD_RANGE",
                        f"tensor {t.name!r}: external data {key} "
                        f"{t.external.get(key)!r} is not a non-negative integer",
                        offset=t.offset,
                        tensor=t.name,
                        field=f"external_data.{key}",
                    )
                )
                return None
            values[key] = int(text)
        offset = values["offset"] or 0
        length = values["length"]
        expected = t.expected_bytes() if t.kind != "sparse" else None
        if length is None and size is not None:
            length = max(0, size - offset)
        if length is not None and expected is not None and length != expected:
            self.add(
                F.error(
                    "ONNX_EXTERNAL_LENGTH_MISMATCH",
                    f"tensor {t.name!r} ({t.dtype_name} {t.dims}) needs {expected} bytes "
                    f"but its external data length is {length}",
                    offset=t.offset,
                    tensor=t.name,
                    field="external_data.length",
                )
            )
        if size is not None and length is not None and offset + length > size:
            self.add(
                F.error(
                    "ONNX_EXTERNAL_PAST_EOF",
                    f"tensor {t.name!r}: external data [{offset}, {offset + length}) runs past the end of "
                    f"{t.external.get('location')!r} ({size} bytes); the data file is truncated or wrong",
                    offset=t.offset,
                    tensor=t.name,
                    field="external_data",
                )
            )
            return None
        if length is None:
            return None
        return offset, offset + length
