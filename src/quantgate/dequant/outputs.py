"""Output fidelity for ONNX: both models run by onnxruntime on the same seeded inputs.

onnxruntime runs in a child process (`python -m quantgate.dequant.outputs REF ART ...`, one JSON
document on stdout), started and bounded by `quantgate.runtime.child` like the ExecuTorch runner: a
model that crashes the runtime costs this one result, never the gate.

Inputs come from the reference's input signature: float inputs are standard normal, integer inputs
(token ids, indices) are uniform in [0, high) where `high` is the smallest row count of the tables
a Gather reads with them (so every id is in range), else 2; symbolic dims take the sizes
`quantgate.dequant.input_shapes` chooses (requested shapes, the model's metadata and ops, then
defaults by role), and the result records them (`inputs`, `symbolic_dims`).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import numpy as np

from quantgate.dequant.metrics import Stats, top1_agreement

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


MAX_INPUT_ELEMENTS = 1 << 26  # per input: 256 MiB of float32, far past any real single example
BAD_SHAPES = "bad_input_shapes"  # a requested shape the model cannot take: the guard's usage ERROR


class OutputsError(Exception):
    def __init__(self, code: str, message: str, side: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.side = side


def index_ranges(path: str) -> dict[str, int]:
    """Graph input name -> rows of the smallest constant table a Gather indexes with it."""
    from quantgate.formats.onnx import reader

    model, _ = reader.scan(path)
    consts = {t.name: t for t in model.tensors}
    produced = {out: n for n in model.nodes for out in n.outputs if out}
    highs: dict[str, int] = {}
    for node in model.nodes:
        if node.op_type not in ("Gather", "GatherBlockQuantized") or len(node.inputs) < 2:
            continue
        source, depth = node.inputs[0], 0
        while source not in consts and source in produced and depth < 8:  # through DequantizeLinear
            source, depth = produced[source].inputs[0] if produced[source].inputs else "", depth + 1
        table = consts.get(source)
        axis = node.attr_int("gather_axis" if node.op_type == "GatherBlockQuantized" else "axis", 0) or 0
        if table is not None and table.dims and 0 <= axis < len(table.dims) and table.dims[axis] > 0:
            name = node.inputs[1]
            highs[name] = min(highs.get(name, table.dims[axis]), table.dims[axis])
    return highs


def make_inputs(session: Any, highs: dict[str, int], rng: np.random.Generator,
                shapes: dict[str, list[int]]) -> dict[str, Any]:
    feeds: dict[str, Any] = {}
    for arg in session.get_inputs():
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise OutputsError("FIDELITY_OUTPUTS_UNAVAILABLE", f"input {arg.name!r} has type {arg.type}, which "
                               "the input builder does not make")
        shape = shapes[arg.name]
        if np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[arg.name] = np.zeros(shape, dtype=np.bool_)
        else:
            high = max(1, min(highs.get(arg.name, 2), int(np.iinfo(dtype).max)))
            feeds[arg.name] = rng.integers(0, high, size=shape).astype(dtype)
    return feeds


def _session(ort: Any, path: str, side: str) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OutputsError("FIDELITY_RUNTIME_FAILED", f"onnxruntime cannot load the {side}: {exc}", side) from None


def compare_outputs(ref_runs: list[list[np.ndarray]], art_runs: list[list[np.ndarray]],
                    names: list[str]) -> dict[str, Any]:
    """Per output: cosine, SQNR, max abs error, top-1 agreement over all runs; then the worst of each."""
    per_output = []
    for i, name in enumerate(names):
        stats = Stats()
        agree: list[float] = []
        for ref, art in zip(ref_runs, art_runs, strict=True):
            a, b = np.asarray(ref[i]), np.asarray(art[i])
            if a.shape != b.shape:
                raise OutputsError("FIDELITY_OUTPUT_MISMATCH", f"output {name!r} has shape {list(b.shape)} in the "
                                   f"artifact and {list(a.shape)} in the reference")
            if not np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_:
                continue
            stats.update(a.astype(np.float64), b.astype(np.float64))
            if np.issubdtype(a.dtype, np.floating):
                t1 = top1_agreement(a, b)
                if t1 is not None:
                    agree.append(t1)
        row: dict[str, Any] = {"name": name, **stats.to_dict(), "elements": stats.count}
        if stats.nonfinite:
            row["nonfinite"] = stats.nonfinite
        if agree:
            row["top1_agreement"] = round(float(np.mean(agree)), 8)
        per_output.append(row)
    out: dict[str, Any] = {
        "cosine": min(r["cosine"] for r in per_output),
        "sqnr_db": min(r["sqnr_db"] for r in per_output),
        "max_abs_error": max(r["max_abs_error"] for r in per_output),
        "rel_error": max(r["rel_error"] for r in per_output),
    }
    t1s = [r["top1_agreement"] for r in per_output if "top1_agreement" in r]
    if t1s:
        out["top1_agreement"] = min(t1s)
    out["count"] = len(per_output)
    out["per_output"] = per_output
    return out


def onnx_outputs(ref_path: str, art_path: str, *, samples: int, seed: int, dynamic_dim: int | None = None,
                 int_high: int | None = None, input_shapes: dict[str, list[int]] | None = None,
                 dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Run both models `samples` times on the same seeded inputs; raises OutputsError.

    Symbolic dims: `input_shapes` (input -> shape), `dims` (dim name -> size), `dynamic_dim` (every
    other symbolic dim), else what `input_shapes.plan_shapes` reads from the reference."""
    import onnxruntime as ort

    from quantgate.dequant.input_shapes import ShapeRequestError, model_hints, plan_shapes

    ref = _session(ort, ref_path, "reference")
    art = _session(ort, art_path, "artifact")
    ref_inputs = {(a.name, a.type) for a in ref.get_inputs()}
    art_inputs = {(a.name, a.type) for a in art.get_inputs()}
    if ref_inputs != art_inputs:
        raise OutputsError("FIDELITY_OUTPUT_MISMATCH", f"the models take different inputs: artifact "
                           f"{sorted(art_inputs)}, reference {sorted(ref_inputs)}")
    ref_names = [o.name for o in ref.get_outputs()]
    art_names = [o.name for o in art.get_outputs()]
    if len(ref_names) != len(art_names):
        raise OutputsError("FIDELITY_OUTPUT_MISMATCH", f"the artifact has {len(art_names)} outputs, the "
                           f"reference {len(ref_names)}")
    highs = index_ranges(ref_path)
    if int_high is not None:
        highs = {k: min(v, int_high) for k, v in highs.items()} | {a.name: int_high for a in ref.get_inputs()
                                                                  if a.name not in highs}
    signature = [(a.name, list(a.shape or [])) for a in ref.get_inputs()]
    try:
        shapes, symbolic = plan_shapes(signature, model_hints(ref_path, [name for name, _ in signature]),
                                       input_shapes=input_shapes, dims=dims, dynamic_dim=dynamic_dim)
    except ShapeRequestError as exc:
        raise OutputsError(BAD_SHAPES, str(exc)) from None
    for name, shape in shapes.items():
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise OutputsError("FIDELITY_OUTPUTS_UNAVAILABLE", f"input {name!r} would hold {math.prod(shape):,} "
                               f"values as {shape} (over {MAX_INPUT_ELEMENTS:,}): set its shape with "
                               "[guards.fidelity] input_shapes or --param dim.NAME=N")
    rng = np.random.default_rng(seed)
    ref_runs, art_runs = [], []
    for _ in range(samples):
        feeds = make_inputs(ref, highs, rng, shapes)
        for side, session, runs in (("reference", ref, ref_runs), ("artifact", art, art_runs)):
            try:
                runs.append(session.run(None, feeds))
            except Exception as exc:
                chosen = ""
                if symbolic:  # the sizes picked for symbolic dims may be what the model refuses
                    shown = ", ".join(f"{n!r} {s}" for n, s in list(shapes.items())[:4])
                    chosen = (f" (inputs {shown}; set the sizes with [guards.fidelity] input_shapes or "
                              "--param dim.NAME=N)")
                raise OutputsError("FIDELITY_RUNTIME_FAILED", f"onnxruntime failed to run the {side}: {exc}"
                                   f"{chosen}", side) from None
    names = art_names if art_names == ref_names else ref_names
    result = compare_outputs(ref_runs, art_runs, names)
    result["samples"] = samples
    result["seed"] = seed
    result["inputs"] = shapes
    result["symbolic_dims"] = symbolic
    unused = sorted(set(input_shapes or {}) - set(shapes))
    named = {d["dim"] for d in symbolic if d["dim"]}
    unused += sorted(f"dim.{name}" for name in set(dims or {}) - named)
    if unused:
        result["unused_shapes"] = unused
    result["runtime"] = f"onnxruntime {ort.__version__}"
    return result


def document_of(argv: list[str]) -> dict[str, Any]:
    """The one JSON document for the command line `argv` (without --serve)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m quantgate.dequant.outputs")
    parser.add_argument("reference")
    parser.add_argument("artifact")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamic-dim", type=int)
    parser.add_argument("--int-high", type=int)
    parser.add_argument("--input-shapes", default="{}", help="JSON: input name -> shape")
    parser.add_argument("--dims", default="{}", help="JSON: symbolic dim name -> size")
    args = parser.parse_args(argv)
    try:
        return {"outputs": onnx_outputs(
            args.reference, args.artifact, samples=max(1, args.samples), seed=args.seed,
            dynamic_dim=args.dynamic_dim, int_high=args.int_high, input_shapes=json.loads(args.input_shapes),
            dims=json.loads(args.dims))}
    except OutputsError as exc:
        return {"finding": [exc.code, exc.message]}
    except Exception as exc:
        return {"finding": ["FIDELITY_RUNTIME_FAILED", f"{type(exc).__name__}: {exc}"]}


def main(argv: list[str] | None = None) -> int:
    from quantgate.runtime.child import main_json

    # `--serve`: long-lived, one request per line (quantgate.runtime.child.serve)
    return main_json(document_of, sys.argv[1:] if argv is None else argv, ("onnxruntime",))


def run_child(ref: str, art: str, *, samples: int, seed: int, dynamic_dim: int | None, int_high: int | None,
              timeout_s: float, max_rss_mb: int = 4096, input_shapes: dict[str, list[int]] | None = None,
              dims: dict[str, int] | None = None) -> dict[str, Any]:
    """{"outputs": ...} or {"finding": (code, message)} from the child; never raises."""
    args = ["--samples", str(samples), "--seed", str(seed), "--input-shapes", json.dumps(input_shapes or {}),
            "--dims", json.dumps(dims or {})]
    if dynamic_dim is not None:
        args += ["--dynamic-dim", str(dynamic_dim)]
    if int_high is not None:
        args += ["--int-high", str(int_high)]
    args += ["--", ref, art]
    from quantgate.runtime.child import serve_json_child

    # the long-lived child: onnxruntime imported once per run (per --jobs worker)
    return serve_json_child("quantgate.dequant.outputs", args, "onnxruntime", timeout_s, max_rss_mb)


if __name__ == "__main__":
    sys.exit(main())
