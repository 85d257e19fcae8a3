"""Concrete sizes for the symbolic dims of an ONNX model's inputs, for the output-fidelity runs.

A 1x3x1x1 "image" exercises almost nothing of a convolutional network (every window sees padding),
so its cosine says little about the real one. Each symbolic dim takes the first of:

1. `input_shapes` (policy `[guards.fidelity] input_shapes = {x = [1, 3, 48, 320]}` or
   `--param input_shapes=x:1x3x48x320`): the whole shape of that input;
2. `dim.<name>=N` for a named symbolic dim (`dim_param`, e.g. `height`), in every input using it;
3. `dynamic_dim=N` given explicitly: every remaining symbolic dim (the old behaviour);
4. the model's `metadata_props`: a key equal to the dim's name with an integer value, Ultralytics'
   `imgsz` (`640` or `[640, 640]`, also `image_size`/`img_size`) for an image's height and width,
   `batch` for a batch dim;
5. a batch dim (named like `batch`/`N`, or the unnamed or made-up-named leading dim of an input of
   rank 2+) is 1;
6. a Reshape of the input (through casts and quantize ops) to a constant shape fixes its one
   symbolic dim left;
7. the height and width of an image (rank 4, 1/3/4 channels at axis 1, or at axis 3 with symbolic
   axes 1 and 2; or a dim named `height`/`width`/`h`/`w`) are 224, rounded up to a multiple of the
   largest stride product of the Conv/pool chains the input feeds (a 64x-downsampling net gets 256);
8. a dim named `a + b` (`past_sequence_length + 1`) is the sum of its parts once they are known;
9. any other symbolic dim (sequence, time, count) is 128.

Named dims take one size wherever they appear. Everything here reads the model with quantgate's
own bounded reader; nothing raises but `ShapeRequestError`, for a requested shape that cannot be.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

IMAGE_SIDE = 224
SEQUENCE = 128
BATCH = 1
MAX_DIM = 1 << 20  # a requested or hinted size above this is not a real input
IMAGE_CHANNELS = (1, 3, 4)
MAX_HINT_NODES = 100_000  # the op walks stop here on a huge graph (the defaults then apply)

_BATCH_NAME = re.compile(r"(?i)^(n|b|bs|batch|batch_?size|num_?batch(es)?|.*batch.*)$")
_SPATIAL_NAME = re.compile(r"(?i)^(h|w|height|width|img_?h|img_?w|image_?height|image_?width|.*(height|width).*)$")
_GENERIC_NAME = re.compile(r"^(unk__\d+|s\d+|dim_?\d+|d\d+)$")  # tf2onnx's and torch.export's made-up names
_EXPRESSION = re.compile(r"^\s*([A-Za-z_][\w.]*|\d+)(\s*[+-]\s*([A-Za-z_][\w.]*|\d+))+\s*$")
_IMGSZ_KEYS = ("imgsz", "image_size", "img_size")
_BATCH_KEYS = ("batch", "batch_size")
# ops a hint walks through unchanged: the value keeps the input's layout
_PASS = {"Cast", "CastLike", "Identity", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
         "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Mul", "Add", "Sub",
         "Div", "BatchNormalization", "InstanceNormalization", "Pad", "Concat", "Sum", "Max", "Min",
         "PRelu", "Silu", "Gelu", "Elu", "Selu", "Softplus", "QLinearAdd", "QLinearMul"}
_STRIDED = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool", "QLinearAveragePool"}


class ShapeRequestError(Exception):
    """A requested shape the model cannot take (wrong rank, a fixed dim changed, not a positive int)."""


@dataclass
class Hints:
    metadata: dict[str, str] = field(default_factory=dict)
    reshape: dict[str, int] = field(default_factory=dict)  # input -> elements a constant Reshape of it holds
    strides: dict[str, tuple[int, ...]] = field(default_factory=dict)  # image input -> per spatial axis


def _positive(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number != int(number) or not 1 <= number <= MAX_DIM:
        return None
    return int(number)


def parse_input_shapes(value: Any) -> dict[str, list[int]]:
    """`{"x": [1, 3, 48, 320]}` (policy table or JSON text) or `x:1x3x48x320;y:1x128` -> name -> shape."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ShapeRequestError(f"input_shapes is not valid JSON: {exc}") from None
        else:
            parsed: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in text.split(";"))):
                name, sep, dims = part.rpartition(":")
                if not sep or not name:
                    raise ShapeRequestError(f"input_shapes entry {part!r} is not NAME:D1xD2x...")
                parsed[name.strip()] = dims.strip().split("x") if dims.strip() else []
            value = parsed
    if not isinstance(value, Mapping):
        raise ShapeRequestError("input_shapes must map input names to shapes, e.g. {x = [1, 3, 48, 320]}")
    out: dict[str, list[int]] = {}
    for name, shape in value.items():
        if not isinstance(shape, list | tuple):
            raise ShapeRequestError(f"input_shapes[{str(name)!r}] must be a list of sizes, not {shape!r}")
        dims = [_positive(d) for d in shape]
        if any(d is None for d in dims):
            raise ShapeRequestError(f"input_shapes[{str(name)!r}] = {list(shape)!r}: every size must be an "
                                    f"integer from 1 to {MAX_DIM}")
        out[str(name)] = [int(d) for d in dims if d is not None]
    return out


def parse_dims(params: Mapping[str, Any]) -> dict[str, int]:
    """The `dim.<name>=N` parameters: symbolic dim name -> size."""
    out = {}
    for key, value in params.items():
        if isinstance(key, str) and key.startswith("dim.") and len(key) > 4:
            size = _positive(value)
            if size is None:
                raise ShapeRequestError(f"--param {key}={value} is not an integer from 1 to {MAX_DIM}")
            out[key[4:]] = size
    return out


# ------------------------------------------------------------------------------------------------
# what the model says


def model_hints(path: str, input_names: Iterable[str]) -> Hints:
    """Metadata and op hints of the model at `path`; empty hints when it cannot be read."""
    from quantgate.formats.onnx import reader
    from quantgate.formats.wire.binary import ReadError

    hints = Hints()
    try:
        model, _ = reader.scan(path)
    except (OSError, ReadError, ValueError):
        return hints
    # hints are optional: a model they cannot be read from gets the defaults
    with contextlib.suppress(Exception):
        _read_hints(path, model, set(input_names), hints)
    return hints


def _read_hints(path: str, model: Any, inputs: set[str], hints: Hints) -> None:
    from quantgate.formats.onnx.shapes import ShapeInference
    from quantgate.formats.wire.binary import ReadError, mapped

    hints.metadata = dict(model.metadata)
    nodes = [n for n in model.nodes if n.scope == "main"][:MAX_HINT_NODES]
    # the value each node output carries "unchanged" from a graph input (for the Reshape hint)
    origin: dict[str, str] = {name: name for name in inputs}
    reshapes = []
    for node in nodes:
        source = origin.get(node.input(0)) if node.inputs else None
        if source is None:
            continue
        if node.op_type in ("Cast", "CastLike", "Identity", "QuantizeLinear", "DequantizeLinear",
                            "DynamicQuantizeLinear") and node.outputs:
            origin[node.outputs[0]] = source
        elif node.op_type == "Reshape" and len(node.inputs) > 1:
            reshapes.append((source, node.inputs[1]))
    if reshapes:
        consts = {t.name: t for t in model.tensors}
        with mapped(path) as view:
            inference = ShapeInference(view, consts, {})
            for source, target_name in reshapes:
                try:
                    target = inference.small_ints(target_name)
                except ReadError:
                    continue
                if target and all(d > 0 for d in target) and math.prod(target) <= MAX_DIM ** 2:
                    hints.reshape.setdefault(source, math.prod(target))
    hints.strides = _strides(nodes, inputs)


def _strides(nodes: list[Any], inputs: set[str]) -> dict[str, tuple[int, int]]:
    """Per graph input: the largest (height, width) stride product along its Conv/pool chains."""
    reach: dict[str, tuple[str, int, int]] = {name: (name, 1, 1) for name in inputs}
    best: dict[str, tuple[int, int]] = {}
    for node in nodes:
        if not node.outputs:
            continue
        tracked = [reach[name] for name in node.inputs if name in reach]
        if not tracked:
            continue
        source = tracked[0][0]
        sh = max(t[1] for t in tracked if t[0] == source)
        sw = max(t[2] for t in tracked if t[0] == source)
        if node.op_type in _STRIDED and node.input(0) in reach:
            strides = node.attrs.get("strides")
            if isinstance(strides, list) and len(strides) == 2 and all(isinstance(s, int) and 0 < s <= 64
                                                                         for s in strides):
                sh, sw = sh * strides[0], sw * strides[1]
        elif node.op_type not in _PASS:
            continue  # the chain ends (global pool, reshape, matmul, resize...)
        sh, sw = min(sh, 1 << 12), min(sw, 1 << 12)
        for out in node.outputs:
            reach[out] = (source, sh, sw)
        old = best.get(source, (1, 1))
        best[source] = (max(old[0], sh), max(old[1], sw))
    return {name: strides for name, strides in best.items() if strides != (1, 1)}


# ------------------------------------------------------------------------------------------------
# the choice


def _named(dim: Any) -> str | None:
    """A symbolic dim's name; paddle2onnx's `?` (and empty names) are unnamed."""
    return dim if isinstance(dim, str) and dim.strip() not in ("", "?") else None


def _is_fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim > 0


def _batch_like(label: str | None, axis: int, rank: int) -> bool:
    """A dim named like a batch, or a generically named (or unnamed) leading dim of a rank-2+ input."""
    if label is not None and _BATCH_NAME.match(label):
        return True
    return axis == 0 and rank >= 2 and (label is None or bool(_GENERIC_NAME.match(label)))


def _image_axes(shape: list[Any]) -> tuple[int, int] | None:
    """(height axis, width axis) of an NCHW or NHWC image input, or None."""
    if len(shape) != 4:
        return None
    if _is_fixed(shape[1]) and shape[1] in IMAGE_CHANNELS and not (_is_fixed(shape[2]) and _is_fixed(shape[3])):
        return 2, 3
    if _is_fixed(shape[3]) and shape[3] in IMAGE_CHANNELS and not _is_fixed(shape[1]) and not _is_fixed(shape[2]):
        return 1, 2
    return None


def _metadata_int(metadata: Mapping[str, str], key: str) -> int | None:
    value = metadata.get(key)
    return _positive(value.strip()) if isinstance(value, str) else None


def _imgsz(metadata: Mapping[str, str]) -> tuple[int, int] | None:
    for key in _IMGSZ_KEYS:
        value = metadata.get(key)
        if not isinstance(value, str):
            continue
        numbers = re.findall(r"-?\d+(?:\.\d+)?", value)[:3]
        sizes = [_positive(n) for n in numbers]
        if len(sizes) == 1 and sizes[0]:
            return sizes[0], sizes[0]
        if len(sizes) == 2 and sizes[0] and sizes[1]:
            return sizes[0], sizes[1]
    return None


def _round_up(size: int, stride: int) -> int:
    return max(stride, -(-size // stride) * stride)


def plan_shapes(inputs: list[tuple[str, list[Any]]], hints: Hints | None = None, *,
                input_shapes: Mapping[str, list[int]] | None = None, dims: Mapping[str, int] | None = None,
                dynamic_dim: int | None = None) -> tuple[dict[str, list[int]], list[dict[str, Any]]]:
    """(input name -> concrete shape, one record per symbolic dim: input, axis, dim name, size, from).

    `inputs` are (name, shape) with shape entries an int (fixed), a str (a named symbolic dim) or
    None (unnamed), as onnxruntime's `get_inputs()` gives them. The sources are tried in the order the
    module docstring gives, each pass leaving the dims an earlier one chose."""
    plan = _Plan(inputs, hints or Hints())
    plan.requested(dict(input_shapes or {}))
    plan.by_name(dict(dims or {}), dynamic_dim)
    plan.from_metadata()
    plan.batch_defaults()  # before the Reshape hint: a constant shape holds the batch too
    plan.from_reshape()
    plan.evaluate(plan.defaults())
    return plan.result()


class _Plan:
    """The sizes chosen so far for the symbolic dims of a model's inputs."""

    def __init__(self, inputs: list[tuple[str, list[Any]]], hints: Hints):
        self.hints = hints
        self.named: dict[str, tuple[int, str]] = {}  # a named dim's size and where it came from, once chosen
        self.chosen: dict[tuple[str, int], tuple[int, str]] = {}
        self.shapes = {name: list(shape or []) for name, shape in inputs}
        self.symbolic = [(name, axis, dim) for name, shape in self.shapes.items() for axis, dim in enumerate(shape)
                         if not _is_fixed(dim)]

    def pick(self, name: str, axis: int, dim: Any, size: int, source: str) -> None:
        self.chosen[(name, axis)] = (size, source)
        label = _named(dim)
        if label is not None:
            self.named.setdefault(label, (size, source))

    def requested(self, input_shapes: dict[str, list[int]]) -> None:
        """`input_shapes`: whole shapes, checked against the model's fixed dims."""
        for name, shape in self.shapes.items():
            want = input_shapes.get(name)
            if want is None:
                continue
            if len(want) != len(shape):
                raise ShapeRequestError(f"input_shapes[{name!r}] has {len(want)} dims but the model's input "
                                        f"{name!r} has {len(shape)} ({_show(shape)})")
            for axis, (have, size) in enumerate(zip(shape, want, strict=True)):
                if _is_fixed(have) and have != size:
                    raise ShapeRequestError(f"input_shapes[{name!r}] sets dim {axis} to {size} but the model "
                                            f"fixes it at {have} ({_show(shape)})")
                if not _is_fixed(have):
                    self.chosen[(name, axis)] = (size, "input_shapes")
                    label = _named(have)
                    if label is not None:
                        self.named.setdefault(label, (size, "input_shapes"))

    def by_name(self, dims: dict[str, int], dynamic_dim: int | None) -> None:
        """A named dim takes one size everywhere: what input_shapes gave it, then dim.<name>; then
        `dynamic_dim` for every dim left."""
        for name, axis, dim in self.symbolic:
            label = _named(dim)
            if (name, axis) in self.chosen:
                continue
            if label is not None and label in self.named:
                self.chosen[(name, axis)] = self.named[label]
            elif label is not None and label in dims:
                self.pick(name, axis, dim, dims[label], f"dim.{label}")
            elif dynamic_dim is not None:
                self.pick(name, axis, dim, dynamic_dim, "dynamic_dim")

    def from_metadata(self) -> None:
        """The model's metadata_props: a key named like the dim, imgsz, batch."""
        metadata = self.hints.metadata
        imgsz = _imgsz(metadata)
        meta_batch = next((v for k in _BATCH_KEYS if (v := _metadata_int(metadata, k))), None)
        for name, axis, dim in self.symbolic:
            if (name, axis) in self.chosen:
                continue
            label = _named(dim)
            shape = self.shapes[name]
            if label is not None and label in self.named:
                self.chosen[(name, axis)] = self.named[label]
                continue
            image = _image_axes(shape)
            batch_like = _batch_like(label, axis, len(shape))
            if label is not None and (size := _metadata_int(metadata, label)):
                self.pick(name, axis, dim, size, f"metadata {label}")
            elif imgsz and image and axis in image:
                self.pick(name, axis, dim, imgsz[image.index(axis)], "metadata imgsz")
            elif meta_batch and batch_like and not (image and axis in image):
                self.pick(name, axis, dim, meta_batch, "metadata batch")

    def batch_defaults(self) -> None:
        for name, axis, dim in self.symbolic:
            label = _named(dim)
            if (name, axis) in self.chosen or (label is not None and label in self.named):
                continue
            image = _image_axes(self.shapes[name])
            if _batch_like(label, axis, len(self.shapes[name])) and not (image and axis in image):
                self.pick(name, axis, dim, BATCH, "batch default")

    def from_reshape(self) -> None:
        """A Reshape to a constant shape fixes the input's one symbolic dim left."""
        for name, shape in self.shapes.items():
            total = self.hints.reshape.get(name)
            open_axes = [a for a, d in enumerate(shape) if not _is_fixed(d) and (name, a) not in self.chosen]
            if total is None or len(open_axes) != 1:
                continue
            known = math.prod(d if _is_fixed(d) else self.chosen[(name, a)][0] for a, d in enumerate(shape)
                              if a != open_axes[0])
            if known and total % known == 0 and _positive(total // known):
                self.pick(name, open_axes[0], shape[open_axes[0]], total // known, "ops: Reshape to a constant shape")

    def defaults(self) -> list[tuple[str, int, Any]]:
        """Image sides, batch and sequence defaults for the dims left; returns the `a + b` dims, which
        wait for their parts."""
        expressions = []
        for name, axis, dim in self.symbolic:
            if (name, axis) in self.chosen:
                continue
            label = _named(dim)
            shape = self.shapes[name]
            if label is not None and label in self.named:
                self.chosen[(name, axis)] = self.named[label]
                continue
            if label is not None and _EXPRESSION.match(label):
                expressions.append((name, axis, dim))
                continue
            image = _image_axes(shape)
            spatial = (image is not None and axis in image) or (label is not None and _SPATIAL_NAME.match(label))
            batch_like = _batch_like(label, axis, len(shape))
            if spatial and not batch_like:
                stride = 1
                if image is not None and axis in image and name in self.hints.strides:  # not a side named `h`
                    stride = self.hints.strides[name][image.index(axis)]
                size = _round_up(IMAGE_SIDE, stride)
                why = "image default" + (f" (stride {stride})" if size != IMAGE_SIDE else "")
                self.pick(name, axis, dim, size, why)
            elif batch_like:
                self.pick(name, axis, dim, BATCH, "batch default")
            else:
                self.pick(name, axis, dim, SEQUENCE, "sequence default")
        return expressions

    def evaluate(self, expressions: list[tuple[str, int, Any]]) -> None:
        for name, axis, dim in expressions:
            label = _named(dim) or ""
            if label in self.named:
                self.chosen[(name, axis)] = self.named[label]
                continue
            value = _evaluate(label, {k: v[0] for k, v in self.named.items()})
            self.pick(name, axis, dim, value if value is not None else SEQUENCE,
                      "expression" if value is not None else "sequence default")

    def result(self) -> tuple[dict[str, list[int]], list[dict[str, Any]]]:
        chosen = self.chosen
        out = {name: [d if _is_fixed(d) else chosen[(name, a)][0] for a, d in enumerate(shape)]
               for name, shape in self.shapes.items()}
        records = [{"input": name, "axis": axis, "dim": _named(dim), "size": chosen[(name, axis)][0],
                    "from": chosen[(name, axis)][1]} for name, axis, dim in self.symbolic]
        return out, records


def _evaluate(text: str, known: Mapping[str, int]) -> int | None:
    total, sign = 0, 1
    for token in re.findall(r"[+-]|[A-Za-z_][\w.]*|\d+", text):
        if token in "+-":
            sign = 1 if token == "+" else -1
            continue
        value = int(token) if token.isdigit() else known.get(token)
        if value is None:
            return None
        total += sign * value
    return total if 1 <= total <= MAX_DIM else None


def _show(shape: list[Any]) -> str:
    # a dim's name comes from the file: repr() keeps control characters out of the one-line message
    return "[" + ", ".join(str(d) if _is_fixed(d) else repr(_named(d)[:40]) if _named(d) else "?" for d in shape) + "]"
