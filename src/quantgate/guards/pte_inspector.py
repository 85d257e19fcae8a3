"""`pte-inspector`: the ExecuTorch program run once by the real runtime, its executed ops classified.

The static guard (`pte-program`) says what the file stores; this one says what the runtime ran.
A child process (`quantgate.runtime.pte_runner`) loads the program with ETDump enabled, runs the
method once on deterministic inputs built from its metadata, and reports the profile events and
the instruction table as JSON. Here, with neither torch nor executorch imported, each executed
weight-bearing op becomes a `Layer` and the shared coverage engine does the rest:

* XNNPACK events (`Fully Connected (NC, QS8, QC8W) GEMM #1`, `Convolution (NHWC, QC8) DWConv #1`):
  the parenthesised descriptor says the precision, each token looked up in XNNPACK's token table
  (`formats.pte.xnnpack.XNN_TOKENS`). QS8/QU8/QD8/QDU8/QP8/PQS8 → int8 activations (compute "int8");
  QC8W/QC8/QS8/QU8 → 8-bit weights, QC4W/QB4W → 4-bit, QC2W → 2-bit weights; F32/F16/BF16 alone
  → float. The runtime picks the activation token by CPU (QDU8 on AVX512-VNNI, QD8 elsewhere,
  QP8 with Arm's KleidiAI), the classification is the same. A token the table does not know, or
  a descriptor naming no precision, leaves the op's precision unknown (PTE_RUNTIME_UNKNOWN_DESCRIPTOR).
* Native kernel calls (`native_call_addmm.out`, mapped to `aten::addmm.out` through
  `instruction_id`): the weight operand is traced back through copies/permutes and `dequantize_*`
  producers to its constant; quantized storage = an integer constant that is dequantized (or a
  quantized kernel such as `embedding_byte`). The portable library has no integer GEMM, so native
  ops always compute in floating point ("int8 storage, fp32 compute").

* Shapes of delegated ops: the ETDump names an XNNPACK op but not its shapes. The runner also lists
  each XNNPACK delegate's FC/conv/deconv/batch-matmul nodes in graph order (the payload pte-program
  reads, `runtime.program_table.xnnpack_nodes`), and the k-th such op a delegate call executes is
  the k-th such node (the runtime creates one operator per node, in order). So each executed op gets
  its weight's dims, params and output positions, and `coverage.params.*` / `coverage.flops.*`
  exist; the precision stays what the runtime ran. A call whose ops do not line up with its nodes
  (kinds or count) keeps descriptor-only ops (PTE_RUNTIME_DELEGATE_UNMAPPED), and then, as for
  native ops without the instruction table, only the `ops` basis is reported.

Static views (`view`/`reshape` of a memory-planned tensor) have no instruction: the emitter makes
the view share its base's memory. A weight read through one (`permute_copy -> expand_copy -> view
-> bmm`, a linear on a non-contiguous 3-D input) is traced to the last kernel output written to
the same memory before the reader.

Embedding lookups count as weight-bearing ops (docs/policy.md#coverage); `matmul_coverage` gives the same shares
over the linear and conv ops only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantgate.core import findings as F
from quantgate.core.coverage import coverage_metrics
from quantgate.core.findings import Finding
from quantgate.core.inventory import CONV, EMBEDDING, FLOAT, INT, LINEAR, UNKNOWN, Layer
from quantgate.formats.pte.xnnpack import DYNAMIC, FLOAT_T, STATIC, WEIGHT, XNN_TOKENS
from quantgate.guards.base import Guard, GuardConfig, GuardContext, Outcome
from quantgate.guards.coverage_guard import COVERAGE_METRICS
from quantgate.runtime import child
from quantgate.runtime.box import DEFAULT_MAX_RSS_MB, max_rss_mb_of, memory_message
from quantgate.runtime.child import DEFAULT_TIMEOUT_S, ChildRun

FINDING_CODES = {
    "PTE_RUNTIME_LOAD_FAILED": "The ExecuTorch runtime rejected the program or its method at load time "
    "(error code and name in the message: InvalidProgram, OperatorMissing...).",
    "PTE_RUNTIME_EXECUTE_FAILED": "The ExecuTorch runtime loaded the method but running it once on "
    "inputs built from its metadata failed (error code and name in the message).",
    "PTE_RUNTIME_INPUT_UNSUPPORTED": "The method takes an input the runner cannot build (a non-tensor "
    "or an unsupported dtype); the guard reports ERROR.",
    "PTE_RUNTIME_PROGRAM_UNREAD": "The instruction table could not be read after the run; native ops "
    "were classified by kernel name only and their weight storage is unknown.",
    "PTE_RUNTIME_DELEGATE_UNPROFILED": "A delegate call ran without per-operator events (an opaque "
    "backend); the weight ops inside it could not be classified.",
    "PTE_RUNTIME_UNKNOWN_DESCRIPTOR": "An executed XNNPACK weight op (or batch matmul) names a datatype "
    "token quantgate's XNNPACK token table does not know, or a descriptor that says no precision; its "
    "precision counts as unknown, never as float (one finding per op and descriptor).",
    "PTE_RUNTIME_NO_EVENTS": "The ETDump holds no execution events for the method, so nothing could "
    "be measured.",
    "PTE_RUNTIME_NO_WEIGHT_OPS": "The run executed no weight-bearing op (e.g. a KV-cache-only "
    "program); coverage is not defined.",
    "PTE_RUNTIME_DELEGATE_UNMAPPED": "The XNNPACK ops a delegate call executed could not be matched, in "
    "order and kind, to the FC/conv/matmul nodes of its graph; their params and flops are unknown, so only "
    "the ops basis is reported (info).",
}

RUNNER_MODULE = "quantgate.runtime.pte_runner"
CRASH_HINT = (
    "the ExecuTorch runtime crashed on this program; check it with the pte-program and integrity "
    "guards, and re-export it"
)

# --- XNNPACK descriptors (docs/runtime.md#pte-inspector) --------------------------------------------

_XNN_WEIGHT_OPS = {"Fully Connected": LINEAR, "Convolution": CONV, "Deconvolution": CONV}
# a batch matmul carries a weight only when one operand is a constant; the event cannot say so
# unless the descriptor names a quantized weight type
_XNN_BMM = "Batch Matrix Multiply"
# XNNPACK's names are under 80 characters; a longer one is not an XNNPACK operator
_XNN_NAME_MAX = 512


def parse_xnnpack_event(name: str) -> dict[str, Any] | None:
    """Split `Fully Connected (NC, QD8, F32, QC8W) GEMM #2` into op, tokens and variant."""
    text = name.strip()
    if len(text) > _XNN_NAME_MAX:
        return None
    # plain string splits, not a regex: linear in the name's length whatever it holds
    opening = text.find("(")
    closing = text.find(")", opening + 1)
    if opening <= 0 or closing < 0 or "#" in text[:opening]:
        return None
    label = text
    variant, hash_sign, number = text[closing + 1:].partition("#")
    if hash_sign:
        digits = number.rstrip()
        if not (digits.isascii() and digits.isdigit()):
            return None
        label = text[:text.rindex("#")].rstrip()
    tokens = [t.strip() for t in text[opening + 1:closing].split(",") if t.strip()]
    return {
        "op": text[:opening].strip(),
        "descriptor": ", ".join(tokens),
        "tokens": tokens,
        "variant": variant.strip(),
        "label": label,
    }


def classify_descriptor(tokens: list[str]) -> dict[str, Any]:
    """Activations, weights, bits, quantized and compute precision from descriptor tokens.

    Each token is looked up in XNNPACK's token table (`formats.pte.xnnpack.XNN_TOKENS`). A token the
    table lacks (`unknown_tokens`) could change any of the answers, so it leaves them all unknown:
    an op is never counted as float because its integer activation type went unrecognised.
    """
    upper = [t.upper() for t in tokens]
    unknown = [t for t in tokens if t.upper() not in XNN_TOKENS]
    if unknown:
        return {"activations": None, "weights": None, "bits": None, "quantized": None, "compute": None,
                "unknown_tokens": unknown}
    kinds = [(t, XNN_TOKENS[t]) for t in upper]
    activations = next((t for t, k in kinds if k.role in (STATIC, DYNAMIC)), None)
    weight = next((t for t, k in kinds if k.role == WEIGHT), None)
    floats = [t for t, k in kinds if k.role == FLOAT_T]
    if weight == "QC8" and activations is None:
        activations = "QS8"  # conv descriptors name one type: qs8 inputs, per-channel qc8 filters
    bits: float | None
    quantized: bool | None
    if weight is not None:
        bits, quantized = XNN_TOKENS[weight].bits, True
    elif activations is not None and XNN_TOKENS[activations].role == STATIC:
        # static quantized operators (QS8/QU8 with no separate weight type) take weights of their type
        weight, bits, quantized = activations, XNN_TOKENS[activations].bits, True
    elif floats and activations is None:
        weight, bits, quantized = floats[0], XNN_TOKENS[floats[0]].bits, False
    else:
        bits, quantized = None, None
    if activations is not None:
        compute = XNN_TOKENS[activations].compute
    elif floats:
        compute = XNN_TOKENS[floats[0]].compute
    else:
        compute = None
    return {"activations": activations, "weights": weight, "bits": bits, "quantized": quantized,
            "compute": compute, "unknown_tokens": []}


# --- native kernels --------------------------------------------------------------------------

# base op name (namespace dropped) -> (kind, index of the weight operand)
NATIVE_WEIGHT_OPS: dict[str, tuple[str, int]] = {
    "addmm": (LINEAR, 2),
    "mm": (LINEAR, 1),
    "bmm": (LINEAR, 1),
    "linear": (LINEAR, 1),
    "mixed_linear": (LINEAR, 1),
    "mixed_mm": (LINEAR, 1),
    "_weight_int8pack_mm": (LINEAR, 1),
    "_weight_int4pack_mm": (LINEAR, 1),
    "convolution": (CONV, 1),
    "embedding": (EMBEDDING, 0),
    "embedding_byte": (EMBEDDING, 0),
    "embedding_2bit": (EMBEDDING, 0),
    "embedding_4bit": (EMBEDDING, 0),
}
# kernels that compute on a quantized weight themselves: nominal bits, logical elements per stored one
QUANTIZED_KERNELS = {
    "embedding_byte": (8, 1),
    "embedding_4bit": (4, 2),
    "embedding_2bit": (2, 4),
    "_weight_int8pack_mm": (8, 1),
    "_weight_int4pack_mm": (4, 2),
    "mixed_linear": (8, 1),
    "mixed_mm": (8, 1),
}
# ops a weight flows through unchanged on its way from the constant to the GEMM
PASS_THROUGH = {
    "permute_copy", "view_copy", "t_copy", "transpose_copy", "_to_dim_order_copy", "_clone_dim_order",
    "clone", "expand_copy", "unsqueeze_copy", "squeeze_copy", "_to_copy", "alias_copy",
    "et_view",  # a view the emitter kept (dynamic shapes); static views share memory (`_views`)
}
DEQUANTIZE = {
    "dequantize_per_channel", "dequantize_per_tensor", "dequantize_per_channel_group",
    "dequantize_affine", "dequantize_per_token",
}
# how many copies/dequantizes a weight may pass through between its constant and the GEMM
_TRACE_DEPTH = 8

# ScalarType id -> (dtype string, bits, numeric, integer storage that can be quantized)
SCALAR_TYPES: dict[int, tuple[str, int, str]] = {
    0: ("uint8", 8, INT), 1: ("int8", 8, INT), 2: ("int16", 16, INT), 3: ("int32", 32, INT),
    4: ("int64", 64, INT), 5: ("float16", 16, FLOAT), 6: ("float32", 32, FLOAT), 7: ("float64", 64, FLOAT),
    11: ("bool", 8, INT), 12: ("qint8", 8, INT), 13: ("quint8", 8, INT), 14: ("qint32", 32, INT),
    15: ("bfloat16", 16, FLOAT), 16: ("quint4x2", 4, INT), 17: ("quint2x4", 2, INT),
    23: ("float8_e5m2", 8, FLOAT), 24: ("float8_e4m3fn", 8, FLOAT),
}
_QUANTIZABLE = {0, 1, 12, 13, 16, 17, 23, 24}


def base_op(op: str) -> str:
    """`quantized_decomposed::embedding_byte.out` / `native_call_addmm.out` -> `embedding_byte` / `addmm`."""
    name = op.split("::")[-1]
    if name.startswith("native_call_"):
        name = name[len("native_call_"):]
    return name.split(".")[0]


def _numel(sizes: list[int]) -> int:
    n = 1
    for s in sizes:
        n *= max(0, int(s))
    return n


def _producers(instructions: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """value index -> the kernel instruction that writes it (the `out` argument comes last)."""
    out: dict[int, dict[str, Any]] = {}
    for row in instructions:
        if row.get("kind") == "KernelCall" and row.get("args"):
            out.setdefault(row["args"][-1], row)
    return out


def _mem_key(value: list[Any]) -> tuple[Any, ...] | None:
    """Where a memory-planned value lives and what it holds: (memory id, offset, dtype, elements)."""
    mem = value[4] if len(value) > 4 else None
    if not isinstance(mem, list) or len(mem) != 2:
        return None
    return (mem[0], mem[1], value[0], _numel(value[1]))


def _views(instructions: list[dict[str, Any]], values: list[Any]) -> dict[tuple[Any, ...], list[tuple[int, int]]]:
    """Kernel outputs by memory location, in instruction order: the emitter elides a static view (the
    view value just shares its base's memory), so a view is traced to the last output written there."""
    out: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
    for row in instructions:
        if row.get("kind") == "KernelCall" and row.get("args"):
            value = _value(values, row["args"][-1])
            key = _mem_key(value) if value is not None else None
            if key is not None:
                out.setdefault(key, []).append((row.get("index", -1), row["args"][-1]))
    return out


def _view_base(index: int, before: int, values: list[Any],
               views: dict[tuple[Any, ...], list[tuple[int, int]]]) -> int | None:
    value = _value(values, index)
    key = _mem_key(value) if value is not None else None
    base = None
    for at, other in views.get(key, ()) if key is not None else ():
        if at >= before:
            break
        if other != index:
            base = other
    return base


def _value(values: list[Any], index: int) -> list[Any] | None:
    if 0 <= index < len(values):
        value = values[index]
        if isinstance(value, list) and len(value) >= 3:
            return value
    return None


def trace_weight(
    index: int, values: list[Any], producers: dict[int, dict[str, Any]],
    views: dict[tuple[Any, ...], list[tuple[int, int]]] | None = None, at: int | None = None,
) -> dict[str, Any] | None:
    """Follow a weight operand (read by instruction `at`) back to its constant; None for an activation."""
    through: list[str] = []
    for _ in range(_TRACE_DEPTH):
        value = _value(values, index)
        if value is None:
            return None
        if value[2]:
            return {"value": index, "scalar_type": int(value[0]), "sizes": list(value[1]),
                    "fqn": value[3] if len(value) > 3 else None, "through": through}
        producer = producers.get(index)
        if producer is None:
            base = _view_base(index, at, values, views) if views is not None and at is not None else None
            if base is None:
                return None
            through.append("view")
            index = base
            continue
        at = producer.get("index", at)
        name = base_op(producer.get("op", ""))
        if name not in PASS_THROUGH and name not in DEQUANTIZE:
            return None
        through.append(producer.get("op", name))
        index = producer["args"][0]
    return None


# --- building the layers ---------------------------------------------------------------------

def _native_layer(row: dict[str, Any] | None, op_name: str, instruction: int, values: list[Any] | None,
                  producers: dict[int, dict[str, Any]], time_ns: int,
                  views: dict[tuple[Any, ...], list[tuple[int, int]]] | None = None,
                  ) -> tuple[Layer | None, dict[str, Any]]:
    """One executed native kernel call -> a Layer (None when it carries no constant weight)."""
    name = base_op(op_name)
    kind, weight_arg = NATIVE_WEIGHT_OPS[name]
    record: dict[str, Any] = {"instruction": instruction, "op": op_name, "backend": "portable",
                              "kind": kind, "compute": "fp32", "time_ns": time_ns}
    quant_kernel = QUANTIZED_KERNELS.get(name)
    if row is None or values is None:
        # event name only: quantized kernels say their storage, the others cannot be known
        bits = quant_kernel[0] if quant_kernel else None
        quantized = True if quant_kernel else None
        if name in ("mm", "bmm"):
            return None, record  # without the program, a matmul of activations is indistinguishable
        record.update(weights=None, bits=bits, quantized=quantized, shape=None)
        layer = Layer(name=f"instr {instruction}: {op_name}", kind=kind, shape=(), dtype="unknown",
                      bits=bits, numeric=INT if quant_kernel else UNKNOWN, quantized=quantized, params=0,
                      compute="fp32", position=instruction, detail={"shape_known": False})
        return layer, record
    args = row.get("args", [])
    if weight_arg >= len(args):
        return None, record
    traced = trace_weight(args[weight_arg], values, producers, views, instruction)
    if traced is None:
        return None, record
    scalar = traced["scalar_type"]
    dtype, stored_bits, numeric = SCALAR_TYPES.get(scalar, (f"scalar_type_{scalar}", None, UNKNOWN))
    dequantized = any(base_op(op) in DEQUANTIZE for op in traced["through"])
    numel = _numel(traced["sizes"])
    if quant_kernel is not None:
        bits, per_stored = quant_kernel
        quantized, params = True, numel * per_stored
        dtype = {4: "int4", 2: "int2"}.get(bits, dtype)
    elif dequantized and scalar in _QUANTIZABLE:
        bits, quantized, params = stored_bits, True, numel
    else:
        bits, quantized, params = stored_bits, False, numel
    shape = list(traced["sizes"])
    if quant_kernel is not None and quant_kernel[1] > 1 and shape:
        shape[-1] *= quant_kernel[1]
    out_positions = None
    out = _value(values, args[-1]) if args else None
    if out is not None and kind != EMBEDDING and out[1]:
        channels = out[1][1] if kind == CONV and len(out[1]) > 1 else out[1][-1]
        out_positions = _numel(out[1]) // channels if channels else None
    record.update(weights=dtype, bits=bits, quantized=quantized, shape=shape, dequantized=dequantized,
                  weight_value=traced["value"], weight_name=traced["fqn"])
    label = f"instr {instruction}: {op_name}" + (f" ({traced['fqn']})" if traced["fqn"] else "")
    layer = Layer(name=label, kind=kind, shape=tuple(shape), dtype=dtype, bits=bits, numeric=numeric,
                  quantized=quantized, params=params, out_positions=out_positions, compute="fp32",
                  position=instruction, detail={"shape_known": True})
    return layer, record


def _xnn_layer(parsed: dict[str, Any], event_name: str, instruction: int, backend: str,
               time_ns: int, node: dict[str, Any] | None = None) -> tuple[Layer | None, dict[str, Any], str | None]:
    """One executed XNNPACK op -> a Layer, and why its precision is unknown (None when it is known).

    `node`: the delegate graph node this op was created from (`_node_shapes`), with its weight's
    dims, params and output positions; the precision still comes from what the runtime ran.
    """
    kind = _XNN_WEIGHT_OPS.get(parsed["op"])
    cls = classify_descriptor(parsed["tokens"])
    unknown = ", ".join(cls["unknown_tokens"])
    if node is not None:
        if node.get("weight") is None:
            return None, {}, None  # the graph says: a batch matmul of two activations
        if parsed["op"] == _XNN_BMM:
            kind = LINEAR  # a batch matmul by a constant: a linear layer, whatever its descriptor says
    if kind is None and parsed["op"] == _XNN_BMM:
        if cls["weights"] is not None and XNN_TOKENS[cls["weights"]].role == WEIGHT:
            kind = LINEAR
        elif unknown:
            return None, {}, (f"names datatype token(s) {unknown!r} quantgate's XNNPACK token table "
                              "does not know (a newer XNNPACK); whether it multiplies by a constant "
                              "weight cannot be told, so it is not counted")
    if kind is None:
        return None, {}, None
    shape = list(node["weight"]["dims"]) if node is not None else None
    record = {"instruction": instruction, "op": event_name, "backend": backend, "kind": kind,
              "variant": parsed["variant"], "descriptor": parsed["descriptor"], **cls, "shape": shape,
              "time_ns": time_ns}
    numeric = INT if cls["quantized"] else (FLOAT if cls["quantized"] is False else UNKNOWN)
    detail: dict[str, Any] = {"shape_known": node is not None, "descriptor": parsed["descriptor"]}
    if node is not None:
        record.update(node=node["node"], params=node["params"], stored=node["weight"]["datatype"])
        detail["node"] = node["node"]
    layer = Layer(name=f"instr {instruction}: {event_name}", kind=kind, shape=tuple(shape or ()),
                  dtype=(cls["weights"] or "unknown").lower(), bits=cls["bits"], numeric=numeric,
                  quantized=cls["quantized"], params=node["params"] if node is not None else 0,
                  out_positions=node.get("positions") if node is not None else None, compute=cls["compute"],
                  position=instruction, detail=detail)
    if unknown:
        return layer, record, (f"names datatype token(s) {unknown!r} quantgate's XNNPACK token table "
                               "does not know (a newer XNNPACK); its precision counts as unknown, "
                               "not as float")
    if cls["quantized"] is None:
        return layer, record, "has a descriptor that does not say its precision; it counts as unknown"
    return layer, record, None


# XNNPACK operator names -> the delegate graph node kinds they are created from
_XNN_NODE_KINDS = {
    "Fully Connected": ("fully_connected",),
    "Convolution": ("conv2d", "depthwise_conv2d"),
    "Deconvolution": ("conv_transpose2d",),
    "Batch Matrix Multiply": ("batch_matmul",),
}


def _node_shapes(events: list[dict[str, Any]], rows: dict[int, dict[str, Any]],
                 delegates: dict[str, Any] | None, values: list[Any] | None) -> tuple[dict[int, list], list[int]]:
    """Executed XNNPACK weight-kind ops -> their delegate graph nodes, per delegate call instruction.

    The XNNPACK runtime creates one operator per FC / conv / deconv / batch matmul node, in graph
    order, and profiles them in that order on every call; so the k-th such event of a call is the
    k-th such node of its delegate's graph. The mapping is used only when every event's operator
    matches its node's kind (and the count is a whole number of calls); otherwise the call's ops keep
    their descriptor only. A node whose weight is a delegate input gets the program constant that
    feeds it (None when that input is an activation). Returns ({instruction: [node per event]},
    [instructions that could not be mapped]).
    """
    if not delegates:
        return {}, []
    per_call: dict[int, list[str]] = {}
    for event in events:
        name = event.get("delegate_name") or ""
        if not name or event.get("chain") != 0:
            continue
        parsed = parse_xnnpack_event(name)
        if parsed is not None and parsed["op"] in _XNN_NODE_KINDS:
            per_call.setdefault(event["instruction"], []).append(parsed["op"])
    mapped: dict[int, list] = {}
    failed: list[int] = []
    for iid, ops in per_call.items():
        row = rows.get(iid) or {}
        nodes = delegates.get(str(row.get("delegate_index"))) if row.get("kind") == "DelegateCall" else None
        if not isinstance(nodes, list) or not nodes or len(ops) % len(nodes):
            failed.append(iid)
            continue
        sequence = [nodes[i % len(nodes)] for i in range(len(ops))]
        if any(node.get("kind") not in _XNN_NODE_KINDS[op] for op, node in zip(ops, sequence, strict=True)):
            failed.append(iid)
            continue
        mapped[iid] = [_resolve_external(node, row.get("args") or [], values) for node in sequence]
    return mapped, sorted(failed)


def _resolve_external(node: dict[str, Any], args: list[int], values: list[Any] | None) -> dict[str, Any]:
    """A node whose weight is a delegate input: the program constant behind that input, or no weight."""
    weight = node.get("weight")
    if not weight or weight.get("external_arg") is None:
        return node
    ext = weight["external_arg"]
    value = _value(values or [], args[ext]) if isinstance(ext, int) and 0 <= ext < len(args) else None
    if value is None or not value[2]:
        return {**node, "weight": None}  # an activation fed in: no weight
    sizes = list(value[1])
    params = _numel(sizes)
    positions = node.get("positions")
    if positions is not None and node.get("params"):
        positions = positions * node["params"] // params if params else None
    return {**node, "weight": {**weight, "dims": sizes}, "params": params, "positions": positions}


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def matmul_coverage(layers: list[Layer]) -> dict[str, Any]:
    """Shares over the executed linear and conv ops only (embedding lookups left out)."""
    ops = [x for x in layers if x.kind in (LINEAR, CONV)]
    n = len(ops)
    return {
        "ops": n,
        "quantized": _share(sum(1 for x in ops if x.quantized), n),
        "int8": _share(sum(1 for x in ops if x.is_int8), n),
        "int4": _share(sum(1 for x in ops if x.is_int4), n),
        "integer_compute": _share(sum(1 for x in ops if x.compute_is_integer), n),
    }


def analyse(entry: dict[str, Any], config: GuardConfig | None = None) -> Outcome:
    """A runner entry (one program's JSON) -> the guard's outcome. Pure: no torch, no executorch."""
    config = config or GuardConfig()
    status = entry.get("status")
    findings: list[Finding] = []
    log = [line for line in entry.get("log") or [] if "cpuinfo" not in line]
    cause = f"; runtime log: {log[0]}" if log else ""
    code = entry.get("error_code")
    code_text = f"error 0x{code:02x} {entry.get('error_name')}" if code is not None else "no error code"
    if status in ("load_failed", "method_load_failed"):
        what = "program" if status == "load_failed" else f"method {entry.get('method')!r}"
        findings.append(F.error(
            "PTE_RUNTIME_LOAD_FAILED",
            f"the ExecuTorch runtime rejected the {what} at {entry.get('stage')} ({code_text}){cause}; "
            "re-export the program with a matching executorch version and its kernel libraries",
            field=entry.get("stage"),
        ))
        return Outcome(metrics={"runtime": _runtime_metrics(entry)}, findings=findings,
                       summary="the runtime rejected the program")
    if status == "execute_failed":
        findings.append(F.error(
            "PTE_RUNTIME_EXECUTE_FAILED",
            f"running method {entry.get('method')!r} once failed ({code_text}){cause}; "
            "the program loads but does not run on inputs shaped by its metadata",
            field="execute",
        ))
        return Outcome(metrics={"runtime": _runtime_metrics(entry)}, findings=findings,
                       summary="the program failed to run")
    if status == "input_unsupported":
        findings.append(F.warning(
            "PTE_RUNTIME_INPUT_UNSUPPORTED",
            f"cannot build the inputs of method {entry.get('method')!r}: {entry.get('message')}",
            field="inputs",
        ))
        return Outcome(findings=findings, error=(
            "input_unsupported", f"pte-inspector cannot build the inputs: {entry.get('message')}",
            "disable pte-inspector for this artifact; rely on pte-program"))
    if status != "ok":
        return Outcome(error=("runner", f"the runtime runner failed at {entry.get('stage')}: "
                              f"{entry.get('message')}", "this is a quantgate bug; please report it"))
    return _measure_events(entry, config, findings)


def _runtime_metrics(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"method": entry.get("method"), "status": entry.get("status")}
    for key in ("error_code", "error_name", "stage"):
        if entry.get(key) is not None:
            out[key] = entry[key]
    if entry.get("timing_s"):
        out["timing_s"] = {k: round(v, 6) for k, v in entry["timing_s"].items()}
    if entry.get("inputs") is not None:
        out["inputs"] = entry["inputs"]
    if entry.get("data_path"):
        out["data_path"] = entry["data_path"]
    return out


def _measure_events(entry: dict[str, Any], config: GuardConfig, findings: list[Finding]) -> Outcome:
    """An `ok` runner entry -> the guard's outcome: the events walked, classified, measured."""
    every = entry.get("events") or []
    # chain -1 events are the Method/Program wrappers; the rest map to chain-0 instructions
    events = [e for e in every if e.get("chain", -1) >= 0 and e.get("instruction", -1) >= 0]
    total_ns = sum(e["duration_ns"] for e in every if e.get("name") == "Method::execute")
    if entry.get("instructions") is None:
        findings.append(F.warning(
            "PTE_RUNTIME_PROGRAM_UNREAD",
            f"the instruction table could not be read ({entry.get('program_error')}); native ops were "
            "classified by kernel name only",
        ))
    tally = _Tally.of(entry, events)
    for event in events:
        tally.add(event)
    findings.extend(_tally_findings(tally, events))
    metrics, unquantized = coverage_metrics(tally.layers, basis=config.basis,
                                            expect_unquantized=config.expect_unquantized)
    _event_metrics(metrics, tally, events, total_ns)
    metrics["runtime"] = _runtime_metrics(entry)
    if not tally.layers and events and not tally.unprofiled():
        findings.append(F.info("PTE_RUNTIME_NO_WEIGHT_OPS",
                               "the run executed no weight-bearing op; coverage is not defined"))
    return Outcome(metrics=metrics, findings=findings, unquantized=unquantized, summary=_summary(metrics))


def _bump(table: dict[str, int], key: str, by: int = 1) -> None:
    table[key] = table.get(key, 0) + by


@dataclass
class _Tally:
    """What the walk over a run's events collects: the weight ops as layers, and the counts."""

    instructions: list[dict[str, Any]] | None
    values: list[Any] | None
    rows: dict[int, dict[str, Any]]
    node_of: dict[int, list]
    unmapped: list[int]
    producers: dict[int, dict[str, Any]] = field(default_factory=dict)
    views: dict[tuple[Any, ...], list[tuple[int, int]]] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    executed: list[dict[str, Any]] = field(default_factory=list)
    by_name: dict[str, int] = field(default_factory=dict)
    by_descriptor: dict[str, int] = field(default_factory=dict)
    time_by_op: dict[str, int] = field(default_factory=dict)
    unclassified_ops: dict[str, tuple[int, str]] = field(default_factory=dict)
    native_calls: int = 0
    delegate_calls: int = 0
    delegate_ops: int = 0
    profiled_delegates: set[int] = field(default_factory=set)
    delegate_instructions: dict[int, int] = field(default_factory=dict)
    node_seen: dict[int, int] = field(default_factory=dict)
    # a kernel instruction gives a named event (`native_call_addmm.out`, or `llama::update_cache.out`
    # for custom ops, none at all for some) and then its OPERATOR_CALL: the latter is the unit counted
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, entry: dict[str, Any], events: list[dict[str, Any]]) -> _Tally:
        instructions, values = entry.get("instructions"), entry.get("values")
        rows = {r["index"]: r for r in instructions or []}
        node_of, unmapped = _node_shapes(events, rows, entry.get("delegates"), values)
        return cls(instructions, values, rows, node_of, unmapped, producers=_producers(instructions or []),
                   views=_views(instructions or [], values or []))

    def unprofiled(self) -> set[int]:
        """Delegate calls that ran without per-operator events."""
        return set(self.delegate_instructions) - self.profiled_delegates

    def add(self, event: dict[str, Any]) -> None:
        iid = event["instruction"]
        # the instruction table is chain 0's; events of other chains keep only their own names
        row = self.rows.get(iid) if event.get("chain") == 0 else None
        name = event.get("name") or ""
        if name == "DELEGATE_CALL":
            self.delegate_calls += 1
            self.delegate_instructions[iid] = self.delegate_instructions.get(iid, 0) + 1
        elif not event.get("delegate_name") and name and name != "OPERATOR_CALL":
            self.pending[iid] = event
            _bump(self.by_name, name)
        elif name == "OPERATOR_CALL":
            self._native_call(event, iid, row)
        else:
            self._delegate_op(event, iid, row)

    def _native_call(self, event: dict[str, Any], iid: int, row: dict[str, Any] | None) -> None:
        self.native_calls += 1
        named = self.pending.pop(iid, None)
        duration = (named or event)["duration_ns"]
        if row and row.get("op"):
            op_name = row["op"]
        elif named is not None:
            op_name = named["name"].removeprefix("native_call_")
        else:
            op_name = f"instruction {iid}"
        _bump(self.time_by_op, op_name, duration)
        if base_op(op_name) in NATIVE_WEIGHT_OPS:
            layer, record = _native_layer(row if self.instructions is not None else None, op_name, iid,
                                          self.values, self.producers, duration, self.views)
            if layer is not None:
                self.layers.append(layer)
                self.executed.append(record)

    def _delegate_op(self, event: dict[str, Any], iid: int, row: dict[str, Any] | None) -> None:
        # a delegate's own operator event: XNNPACK puts its name in the debug string
        name = event.get("delegate_name") or event.get("name") or ""
        if not name:
            return
        self.delegate_ops += 1
        self.profiled_delegates.add(iid)
        parsed = parse_xnnpack_event(name)
        label = parsed["label"] if parsed else name
        _bump(self.by_name, label)
        _bump(self.time_by_op, label, event["duration_ns"])
        if parsed is None:
            return
        _bump(self.by_descriptor, parsed["descriptor"])
        backend = (row or {}).get("backend") or "delegate"
        node = None
        if parsed["op"] in _XNN_NODE_KINDS and iid in self.node_of and event.get("chain") == 0:
            k = self.node_seen.get(iid, 0)
            self.node_seen[iid] = k + 1
            node = self.node_of[iid][k] if k < len(self.node_of[iid]) else None
        layer, record, unclassified = _xnn_layer(parsed, name, iid, backend, event["duration_ns"], node)
        if layer is not None:
            self.layers.append(layer)
            self.executed.append(record)
        if unclassified:
            key = f"{parsed['op']} ({parsed['descriptor']})"
            count = self.unclassified_ops.get(key, (0, unclassified))[0]
            self.unclassified_ops[key] = (count + 1, unclassified)


def _tally_findings(tally: _Tally, events: list[dict[str, Any]]) -> list[Finding]:
    findings: list[Finding] = []
    # one finding per distinct op and descriptor: a model repeats the same op hundreds of times
    for key, (count, why) in tally.unclassified_ops.items():
        findings.append(F.warning(
            "PTE_RUNTIME_UNKNOWN_DESCRIPTOR",
            f"executed XNNPACK op {key!r} ({count} event{'s' if count > 1 else ''}) {why}; report "
            "the descriptor to quantgate",
            op=key,
        ))
    for iid in tally.unmapped:
        findings.append(F.info(
            "PTE_RUNTIME_DELEGATE_UNMAPPED",
            f"the XNNPACK ops executed by the delegate call at instruction {iid} do not line up with its "
            "graph's FC/conv/matmul nodes; their shapes are unknown, so only the ops basis is reported",
            op=f"instruction {iid}",
        ))
    for iid in sorted(tally.unprofiled()):
        backend = (tally.rows.get(iid) or {}).get("backend") or "a delegate"
        findings.append(F.warning(
            "PTE_RUNTIME_DELEGATE_UNPROFILED",
            f"delegate call at instruction {iid} ({backend}) ran without per-operator events; the weight "
            "ops inside it are not counted",
            op=f"instruction {iid}",
        ))
    if not events:
        findings.append(F.warning("PTE_RUNTIME_NO_EVENTS",
                                  "the ETDump holds no execution events; nothing was measured"))
    return findings


def _event_metrics(metrics: dict[str, Any], tally: _Tally, events: list[dict[str, Any]], total_ns: int) -> None:
    """The run's own metrics beside the coverage ones: matmul shares, compute, time, events."""
    if any(not layer.detail.get("shape_known") for layer in tally.layers):
        _restrict_to_ops(metrics)
    else:
        metrics["shapes_known"] = True
    metrics["matmul_coverage"] = matmul_coverage(tally.layers)
    metrics["executed_weight_ops"] = tally.executed
    metrics["compute"] = _compute_summary(tally.layers)
    metrics["time_ns"] = {
        "total": total_ns,
        "weight_ops": sum(r["time_ns"] for r in tally.executed),
        "by_op": dict(sorted(tally.time_by_op.items(), key=lambda kv: -kv[1])),
    }
    metrics["events"] = {
        "total": len(events),
        "native_calls": tally.native_calls,
        "delegate_calls": tally.delegate_calls,
        "delegate_ops": tally.delegate_ops,
        "by_descriptor": dict(sorted(tally.by_descriptor.items())),
        "by_name": dict(sorted(tally.by_name.items())),
    }
    metrics["executed_instructions"] = len({e["instruction"] for e in events})


def _restrict_to_ops(metrics: dict[str, Any]) -> None:
    """Delegated ops have no shapes in the ETDump: params/flops shares would be partial, so drop them."""
    for key in ("params", "flops"):
        metrics["coverage"].pop(key, None)
        if "compute_coverage" in metrics:
            metrics["compute_coverage"].pop(key, None)
    for key in ("params_total", "params_quantized", "bits_per_weight"):
        metrics.pop(key, None)
    metrics["flops_exact"] = False
    metrics["shapes_known"] = False


def _compute_summary(layers: list[Layer]) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer in layers:
        key = layer.compute or "unknown"
        out[key] = out.get(key, 0) + 1
    return out


def _summary(metrics: dict[str, Any]) -> str:
    n = metrics.get("weight_ops", 0)
    if not n:
        return f"ran {metrics['events']['total']} events; no weight-bearing op executed"
    ops = metrics["coverage"].get("ops", {})
    integer = metrics.get("compute_coverage", {}).get("ops", {}).get("integer", 0.0)
    return (
        f"executed {n} weight op(s): {metrics['quantized_ops']} with quantized weights "
        f"(int8 {ops.get('int8', 0.0):.1%}, int4 {ops.get('int4', 0.0):.1%}), integer compute "
        f"{integer:.1%}; method ran in {metrics['time_ns']['total'] / 1e6:.3f} ms"
    )


# --- the child process ---------------------------------------------------------------------------

def _runner_answer(run: ChildRun, timeout_s: float, max_rss_mb: int) -> dict[str, Any] | None:
    """How the runner failed, as the guard says it ({"memory": message} or {"error": (...)}); None when
    it gave a document."""
    if run.failure == child.MEMORY:
        return {"memory": memory_message("the ExecuTorch runtime", max_rss_mb, run.peak_rss_bytes)}
    if run.failure == child.TIMEOUT:
        return {"error": ("timeout", f"the ExecuTorch runtime did not finish within {timeout_s:g} s "
                          "(the child and its process group were killed)",
                          "raise --param timeout=SECONDS if the model is large; a hang on a small "
                          "program means the runtime is stuck on it")}
    if run.failure in (child.START, child.IMPORT):
        return {"error": ("runtime_import", f"the runtime child could not start: {run.detail}",
                          "check the executorch install: pip install 'quantgate[executorch]'")}
    tail = f" ({run.stderr_tail})" if run.stderr_tail else ""
    if run.failure == child.CRASH:
        return {"error": ("runtime_crash", f"the ExecuTorch runtime crashed with {run.detail} while loading or "
                          "running the program" + tail, CRASH_HINT)}
    if run.failure == child.NO_RESULT:
        return {"error": ("runtime_output", f"the runtime child exited with code {run.returncode} and "
                          "printed no JSON result" + tail,
                          "run `python -m quantgate.runtime.pte_runner FILE` to see the child's output")}
    return None


def run_runner(paths: list[str], *, timeout_s: float, method: str | None = None,
               data_path: str | None = None, fault: str | None = None,
               workdir: str | None = None, max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> dict[str, Any]:
    """Run a one-shot child (in the runtime box) on one or more programs.

    Returns {"results": {path: entry}, "peak_rss_bytes"}, {"memory": message} when the child went over
    `max_rss_mb`, or {"error": (...)}.
    """
    cmd = [sys.executable, "-m", RUNNER_MODULE]
    if workdir:
        cmd += ["--workdir", workdir]
    if method:
        cmd += ["--method", method]
    if data_path:
        cmd += ["--data", data_path]
    if fault:
        cmd += ["--fault", fault]
    cmd += ["--", *paths]
    run = child.run_once(cmd, timeout_s=timeout_s, max_rss_mb=max_rss_mb)
    document = run.document or {}
    results = document.get("results")
    if run.failure is None and not isinstance(results, list):
        run.failure = child.NO_RESULT
    elif run.failure is None and document.get("error") and not results:
        run.failure, run.detail = child.IMPORT, str(document["error"])
    failed = _runner_answer(run, timeout_s, max_rss_mb)
    if failed is not None or not isinstance(results, list):
        return failed or {}
    return {"runner": document.get("runner", {}), "peak_rss_bytes": run.peak_rss_bytes,
            "results": {str(r.get("path")): r for r in results if isinstance(r, dict)}}


def run_served(path: str, *, timeout_s: float, method: str | None = None, data_path: str | None = None,
               max_rss_mb: int = DEFAULT_MAX_RSS_MB) -> dict[str, Any]:
    """One program on this process's long-lived runner (started on first use; its imports are paid once
    per run, or once per `--jobs` worker). Same answer as `run_runner`; a crash, timeout or memory kill
    costs this program only: the runner is restarted for the next one."""
    run = child.run_served(("pte",), [sys.executable, "-m", RUNNER_MODULE, "--serve"],
                           {"path": path, "method": method, "data": data_path}, timeout_s=timeout_s,
                           max_rss_mb=max_rss_mb)
    failed = _runner_answer(run, timeout_s, max_rss_mb)
    if failed is not None:
        return failed
    entry = run.document
    return {"runner": run.runner, "peak_rss_bytes": run.peak_rss_bytes,
            "results": {str(entry.get("path")): entry} if isinstance(entry, dict) else {}}


def _sibling_ptd(path: str) -> str | None:
    """External weights beside the program: used when exactly one .ptd sits in its folder."""
    folder = Path(path).parent
    try:
        found = sorted(p for p in folder.iterdir() if p.suffix == ".ptd" and p.is_file())
    except OSError:
        return None
    return str(found[0]) if len(found) == 1 else None


def timeout_for(config: GuardConfig) -> float:
    """The runner's time limit: `--param timeout`, kept under the gate's budget for the guard."""
    return child.timeout_within(config.param("timeout", DEFAULT_TIMEOUT_S), config.timeout_s)


class PTEInspectorGuard(Guard):
    id = "pte-inspector"
    metric_names = (
        *COVERAGE_METRICS,
        *(f"matmul_coverage.{k}" for k in ("ops", "quantized", "int8", "int4", "integer_compute")),
        "compute.*",
        *(f"time_ns.{k}" for k in ("total", "weight_ops")),
        "time_ns.by_op.*",
        *(f"events.{k}" for k in ("total", "native_calls", "delegate_calls", "delegate_ops")),
        "events.by_descriptor.*",
        "events.by_name.*",
        "executed_weight_ops",
        "executed_instructions",
        "shapes_known",
        "runtime.*",
    )
    description = (
        "the program run once by the ExecuTorch runtime with ETDump, in a child process: executed "
        "weight ops classified (XNNPACK descriptors, native kernels) -> executed-op coverage, compute "
        "precision, per-op time"
    )
    needs = "executorch"
    requires_modules = ("executorch", "torch")
    install_hint = "pip install 'quantgate[executorch]'"
    formats = ("pte",)
    needs_structure = True

    def measure(self, ctx: GuardContext, config: GuardConfig) -> Outcome:
        given = config.param("max_rss_mb")
        max_rss_mb = max_rss_mb_of(given)
        if given is not None and str(max_rss_mb) != str(given).removesuffix(".0"):
            return Outcome(error=("bad_param", f"--param max_rss_mb={given} is not a positive whole number of MiB",
                                  "give the runtime child's memory limit in MiB, e.g. --param max_rss_mb=8192"))
        box = {"max_rss_mb": max_rss_mb}
        # what the program plans is known before running it: more than the limit is not run at all
        inventory = ctx.inventory()
        memory = (inventory.metrics.get("memory") if inventory is not None else None) or {}
        needed = int(memory.get("planned_bytes", 0)) + int(memory.get("constant_bytes", 0))
        if needed > max_rss_mb << 20 and not config.param("_fault"):
            return Outcome(metrics={"runtime": {"box": box}, "memory": memory}, findings=[F.error(
                "RUNTIME_MEMORY_LIMIT",
                f"the program plans {needed / (1 << 20):,.0f} MiB (memory.planned_bytes {memory['planned_bytes']:,} "
                f"+ memory.constant_bytes {memory['constant_bytes']:,}), over the {max_rss_mb} MiB memory limit, so it "
                "was not run; raise --param max_rss_mb=N (or `max_rss_mb` in the guard's policy params) if this much "
                "memory is expected")], summary=f"not run: plans more than the {max_rss_mb} MiB memory limit")
        data_path = config.param("data") or _sibling_ptd(ctx.path)
        if data_path:
            data_path = str(Path(str(data_path)).resolve())
        fault = config.param("_fault")  # test-only: segv|abort|hang|nojson|garbage|memory|grandchild|orphan
        if fault:  # a one-shot child, failing before its imports
            run = run_runner([ctx.path], timeout_s=timeout_for(config), method=config.param("method"),
                             data_path=data_path, fault=fault, max_rss_mb=max_rss_mb)
        else:  # the long-lived runner: start-up paid once per run (per worker with --jobs)
            run = run_served(ctx.path, timeout_s=timeout_for(config), method=config.param("method"),
                             data_path=data_path, max_rss_mb=max_rss_mb)
        if "memory" in run:
            return Outcome(metrics={"runtime": {"box": box}}, findings=[F.error("RUNTIME_MEMORY_LIMIT", run["memory"])],
                           summary=f"killed over the {max_rss_mb} MiB memory limit")
        if "error" in run:
            return Outcome(error=run["error"])
        entry = run["results"].get(ctx.path) or next(iter(run["results"].values()), None)
        if entry is None:
            return Outcome(error=("runtime_output", "the runtime child returned no result for the program",
                                  "this is a quantgate bug; please report it"))
        if data_path:
            entry["data_path"] = data_path
        outcome = analyse(entry, config)
        if "runtime" in outcome.metrics:
            outcome.metrics["runtime"]["runner"] = run.get("runner", {})
            outcome.metrics["runtime"]["box"] = {**box, "peak_rss_bytes": run.get("peak_rss_bytes")}
        return outcome


GUARD = PTEInspectorGuard()
