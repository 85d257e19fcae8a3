"""Weight-bearing layers of an ExecuTorch program, from kernels and XNNPACK payloads
(docs/formats.md#executorch-pte-pte-program).

Portable kernels: the weight argument of addmm/mm/linear/convolution/embedding (and the quantized
embedding and linear kernels) is traced back through view, permute, dim-order copies and
dequantize ops to the constant it comes from, so the *stored* dtype is known; the kernel's output
dtype is its compute precision (an int8 weight dequantized for an fp32 addmm stores int8 and
computes fp32). XNNPACK delegates: each fully connected, conv, depthwise, transposed conv and
batch matmul with a constant operand, from `formats.pte.xnnpack`; an integer activation with a
quantized filter computes in int8. Other backends are opaque: one layer of unknown precision per
delegate, never quantized and never float.

A quantized KV cache (int8 mutable buffers written by `llama::update_cache` from a quantize op) has
no weight-bearing op, so it gets its own metric, `kv_cache`.
"""

from __future__ import annotations

from typing import Any

from quantgate.core import findings as F
from quantgate.core.inventory import CONV, EMBEDDING, FLOAT, INT, LINEAR, UNKNOWN, Inventory, Layer
from quantgate.formats.pte import schema as S
from quantgate.formats.pte.model import Plan, Program, Tensor
from quantgate.formats.wire.binary import Budget, View

XNNPACK = "XnnpackBackend"
MAX_TRACE = 32  # producer hops followed from a weight argument to its constant
# layers a program may yield: delegate calls x nodes of a shared payload grows with the square of
# the file size, so the total is capped in proportion to it (real programs are far below)
MAX_LAYERS_BASE = 10_000
BYTES_PER_LAYER = 16

# ops a weight passes through unchanged in meaning (layout, copies, dequantization)
_PASS_THROUGH = {
    "aten::permute_copy",
    "aten::view_copy",
    "aten::t_copy",
    "aten::transpose_copy",
    "aten::_reshape_alias_copy",
    "aten::reshape",
    "aten::clone",
    "aten::expand_copy",
    "aten::squeeze_copy",
    "aten::unsqueeze_copy",
    "aten::alias_copy",
    "aten::_to_copy",
    "aten::contiguous",
    "dim_order_ops::_to_dim_order_copy",
    "dim_order_ops::_clone_dim_order",
    "executorch_prim::et_view",  # a view the emitter kept (dynamic shapes); static ones share memory
}
_DEQUANTIZE_PREFIXES = ("quantized_decomposed::dequantize_", "torchao::dequantize_")
_QUANTIZE_PREFIXES = ("quantized_decomposed::quantize_", "torchao::quantize_")

# op -> (kind, weight argument candidates in order, logical bits of a packed weight or None)
_WEIGHT_OPS: dict[str, tuple[str, tuple[int, ...], float | None]] = {
    "aten::addmm": (LINEAR, (2,), None),
    "aten::mm": (LINEAR, (1, 0), None),
    "aten::bmm": (LINEAR, (1, 0), None),
    "aten::matmul": (LINEAR, (1, 0), None),
    "aten::linear": (LINEAR, (1,), None),
    "aten::convolution": (CONV, (1,), None),
    "aten::conv1d": (CONV, (1,), None),
    "aten::conv2d": (CONV, (1,), None),
    "aten::embedding": (EMBEDDING, (0,), None),
    "quantized_decomposed::embedding_byte": (EMBEDDING, (0,), 8),
    "quantized_decomposed::embedding_4bit": (EMBEDDING, (0,), 4),
    "quantized_decomposed::embedding_2bit": (EMBEDDING, (0,), 2),
    "quantized_decomposed::mixed_linear": (LINEAR, (1,), None),
    "quantized_decomposed::mixed_mm": (LINEAR, (1,), None),
    "aten::_weight_int8pack_mm": (LINEAR, (1,), 8),
    "aten::_weight_int4pack_mm": (LINEAR, (1,), 4),
}
# llama custom ops that write a cache: op -> [(cache argument, written-value argument)]
# (schemas in executorch/extension/llm/custom_ops/custom_ops.py; sdpa_with_kv_cache from source only)
_CACHE_WRITERS: dict[str, list[tuple[int, int]]] = {
    "llama::update_cache": [(1, 0)],
    "llama::update_cache_with_indices": [(1, 0)],
    "llama::sdpa_with_kv_cache": [(3, 1), (4, 2)],
}
# ops that write a value into a buffer: the argument holding the written values
_SCATTER_VALUE = {"aten::index_put": 2, "aten::index_put_": 2, "aten::index_copy": 3, "aten::slice_scatter": 1}


def base_name(op: str) -> str:
    """`ns::name.overload` -> `ns::name`."""
    ns, _, rest = op.rpartition("::")
    return f"{ns}::{rest.split('.', 1)[0]}" if ns else rest.split(".", 1)[0]


class _PlanGraph:
    """Producers of a plan's values, for tracing arguments back to constants."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.producer: dict[int, tuple[str, list[int]]] = {}
        self.produced_at: dict[int, int] = {}
        # (memory_id, offset, bytes) -> [(instruction, value)] of the kernel outputs written there
        self.writers: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
        for ins in plan.instructions:
            if ins.kind == S.KERNEL_CALL and ins.args:
                out = ins.args[-1]
                self.producer[out] = (base_name(plan.operators[ins.target]), ins.args)
                self.produced_at.setdefault(out, ins.index)
                t = self.tensor(out)
                if t is not None and t.mem is not None:
                    self.writers.setdefault((*t.mem, t.nbytes), []).append((ins.index, out))

    def view_base(self, index: int, before: int) -> int | None:
        """The value a static view (no instruction of its own) aliases: the last kernel output written
        to the same memory, with the same size, before instruction `before`."""
        t = self.tensor(index)
        if t is None or t.mem is None:
            return None
        base = None
        for at, value in self.writers.get((*t.mem, t.nbytes), ()):
            if at >= before:
                break
            if value != index:
                base = value
        return base

    def tensor(self, index: int) -> Tensor | None:
        if 0 <= index < len(self.plan.values):
            return self.plan.values[index].tensor
        return None

    def trace(
        self, index: int, through: tuple[str, ...] = (), at: int | None = None
    ) -> tuple[Tensor | None, list[str]]:
        """The constant behind value `index` (through pass-through and `through` ops, and static views
        of memory-planned values), read by instruction `at`, and the ops crossed."""
        crossed: list[str] = []
        at = len(self.plan.instructions) if at is None else at
        for _ in range(MAX_TRACE):
            t = self.tensor(index)
            if t is not None and t.constant:
                return t, crossed
            produced = self.producer.get(index)
            if produced is None:
                base = self.view_base(index, at) if at is not None else None
                if base is None:
                    return None, crossed
                crossed.append("view")
                index = base
                continue
            at = self.produced_at.get(index, at)
            op, args = produced
            if op in _PASS_THROUGH or op.startswith(_DEQUANTIZE_PREFIXES) or op.startswith(through):
                crossed.append(op)
                index = args[0]
                continue
            return None, [*crossed, op]
        return None, crossed


def _positions(kind: str, out: Tensor | None) -> tuple[int | None, bool]:
    if out is None or not out.sizes:
        return None, False
    exact = out.dynamism == S.STATIC
    sizes = out.sizes
    if kind == CONV and len(sizes) >= 3 and sizes[1] > 0:  # NCHW (dim order aside, sizes are logical)
        return out.numel // sizes[1], exact
    n = 1
    for d in sizes[:-1]:
        n *= d
    return n, exact


def _stored_quantized(bits: float | None, numeric: str, scalar_type: int) -> bool:
    """Stored in 8 or fewer bits as an integer or small float (bool, ScalarType 11, is not a weight format)."""
    return bits is not None and bits <= 8 and numeric in (INT, FLOAT) and scalar_type != 11


def _xnnpack_detail(op: Any, method: str) -> dict[str, Any]:
    """What every XNNPACK layer records of its node."""
    return {
        "backend": XNNPACK,
        "node": op.node.index,
        "input": op.input.datatype if op.input is not None else None,
        "method": method,
    }


def _portable_layers(plan: Plan, graph: _PlanGraph, prefix: str) -> list[Layer]:
    layers = []
    for ins in plan.instructions:
        if ins.kind != S.KERNEL_CALL:
            continue
        op = base_name(plan.operators[ins.target])
        spec = _WEIGHT_OPS.get(op)
        if spec is None:
            continue
        kind, candidates, packed_bits = spec
        weight, crossed, arg = None, [], -1
        for arg in candidates:
            if arg < len(ins.args):
                weight, crossed = graph.trace(ins.args[arg], at=ins.index)
                if weight is not None:
                    break
        if weight is None or len(weight.sizes) < 2:
            continue  # two activations (attention scores) or a 1-D operand: no weight
        name_s, bits, numeric = S.SCALAR_TYPES.get(weight.scalar_type, (weight.dtype, None, UNKNOWN))
        shape = tuple(weight.sizes)
        params = weight.numel
        dtype = name_s
        if packed_bits is not None and weight.scalar_type in S.INT8_LIKE and packed_bits < 8:
            # packed sub-byte values in uint8 storage: the last dimension holds 8/bits values per byte
            shape = (*shape[:-1], shape[-1] * int(8 // packed_bits))
            params = weight.numel * int(8 // packed_bits)
            bits, dtype = packed_bits, f"int{int(packed_bits)} (packed {name_s})"
        elif packed_bits == 4 and weight.scalar_type == 3:  # _weight_int4pack_mm: 8 values per int32
            params, bits, dtype = weight.numel * 8, 4, "int4 (packed int32)"
        quantized = _stored_quantized(bits, numeric, weight.scalar_type)
        scale_bytes = 0
        for index in _scale_args(graph, ins.args[arg] if arg < len(ins.args) else -1, op, ins.args):
            t = graph.tensor(index)
            if t is not None and t.constant and t is not weight:
                scale_bytes += t.nbytes
        out = graph.tensor(ins.args[-1]) if ins.args else None
        positions, exact = _positions(kind, out)
        batch = 1
        for d in weight.sizes[:-2]:
            batch *= max(d, 1)
        if kind == LINEAR and positions is not None and batch > 1:
            # a batched constant operand [B, K, N]: every batch has its own weights, so each output
            # position uses one batch's K x N (flops = 2 x params x positions stays right)
            positions //= batch
        label = weight.fqn or f"{prefix}{ins.index}:{op}"
        layers.append(
            Layer(
                name=label,
                kind=kind,
                shape=shape,
                dtype=dtype,
                bits=float(bits) if bits is not None else None,
                numeric=numeric,
                quantized=quantized,
                params=params,
                weight_bytes=weight.nbytes + scale_bytes,
                out_positions=None if kind == EMBEDDING else positions,
                out_positions_exact=exact,
                compute=out.dtype if out is not None else None,
                position=ins.index,
                detail={
                    "op": plan.operators[ins.target],
                    **({"via": crossed} if crossed else {}),
                    "method": plan.name,
                    "constant": _constant_key(weight),
                },
            )
        )
    return layers


def _scale_args(graph: _PlanGraph, weight_arg: int, op: str, args: list[int]) -> list[int]:
    """Value indices of the scales / zero points that encode a weight (for bits per weight)."""
    if op.startswith("quantized_decomposed::embedding_") or op == "quantized_decomposed::mixed_linear":
        return args[1:3] if op.startswith("quantized_decomposed::embedding_") else args[2:4]
    out = []
    index = weight_arg
    at = len(graph.plan.instructions)
    for _ in range(MAX_TRACE):
        produced = graph.producer.get(index)
        if produced is None:
            base = graph.view_base(index, at)
            if base is None:
                break
            index = base
            continue
        at = graph.produced_at.get(index, at)
        name, pargs = produced
        if name.startswith(_DEQUANTIZE_PREFIXES):
            out.extend(pargs[1:3])
        elif name not in _PASS_THROUGH:
            break
        index = pargs[0]
    return out


def _external_weight_layer(
    op: Any, n: int, graph: _PlanGraph, call_args: list[int], prefix: str, position: int, method: str, dynamic: bool
) -> Layer | None:
    """A node whose weight is a delegate input (XNNPACK feeds a batch matmul's constant operand that
    way): args[external_id] of the DelegateCall, traced to the program constant; None for an activation."""
    ext = op.weight.external_id
    if not 0 <= ext < len(call_args):
        return None
    weight, crossed = graph.trace(call_args[ext], at=position)
    if weight is None or len(weight.sizes) < 2:
        return None  # two activations (attention scores): no weight
    name_s, bits, numeric = S.SCALAR_TYPES.get(weight.scalar_type, (weight.dtype, None, UNKNOWN))
    quantized = _stored_quantized(bits, numeric, weight.scalar_type)
    positions = op.positions
    return Layer(
        name=weight.fqn or f"{prefix}{op.kind}#{n}",
        kind=LINEAR,
        shape=tuple(weight.sizes),
        dtype=name_s,
        bits=float(bits) if bits is not None else None,
        numeric=numeric,
        quantized=quantized,
        params=weight.numel,
        weight_bytes=weight.nbytes,
        out_positions=positions,
        out_positions_exact=positions is not None and not dynamic,
        compute=op.compute,
        position=position,
        detail={
            **_xnnpack_detail(op, method),
            "weight_from": "delegate input",
            **({"via": crossed} if crossed else {}),
            "constant": _constant_key(weight),
        },
    )


def _xnnpack_layers(
    payload: Any,
    weight_ops: list[Any],
    prefix: str,
    position: int,
    method: str,
    dynamic: bool,
    graph: _PlanGraph,
    call_args: list[int],
) -> list[Layer]:
    """The payload's weight ops; `dynamic`: the call's tensors are dynamic, so its dims are upper bounds."""
    layers = []
    for n, op in enumerate(weight_ops):
        w = op.weight
        if w is not None and op.weight_external:
            layer = _external_weight_layer(op, n, graph, call_args, prefix, position, method, dynamic)
            if layer is not None:
                layers.append(layer)
            continue
        if w is None or not op.weight_constant:
            continue
        scale_bytes = 0
        q = w.quant
        if q is not None and q.scale_buffer_idx and 0 <= q.scale_buffer_idx < len(payload.constant_data):
            scale_bytes = payload.constant_data[q.scale_buffer_idx].size
        positions = op.positions
        kind = LINEAR if op.kind in ("fully_connected", "batch_matmul") else CONV
        layers.append(
            Layer(
                name=f"{prefix}{op.kind}#{n}",
                kind=kind,
                shape=tuple(w.dims),
                dtype=w.datatype,
                bits=float(w.bits) if w.bits is not None else None,
                numeric=w.numeric if w.numeric in (INT, FLOAT) else UNKNOWN,
                quantized=w.quantized,
                params=op.params,
                weight_bytes=(w.constant_size + scale_bytes) if w.constant_size is not None else None,
                out_positions=positions,
                out_positions_exact=positions is not None and not dynamic,
                compute=op.compute,
                position=position,
                detail={
                    **_xnnpack_detail(op, method),
                    **({"constant": w.named_key} if w.named_key else {}),
                    **({"quant": q.to_dict()} if q is not None else {}),
                },
            )
        )
    return layers


def _opaque_layer(prefix: str, backend: str, position: int, size: int | None, method: str) -> Layer:
    """An opaque delegate: its share is `unknown`, never quantized, never float.

    Its weights cannot be counted, so its payload bytes stand in for its params (one byte per
    weight is the 8-bit case; a float payload is then over-weighted, never hidden): a model mostly
    inside an opaque delegate shows a large unknown share on every basis, not just by ops.
    """
    return Layer(
        name=prefix.rstrip("/"),
        kind=LINEAR,
        shape=(),
        dtype="opaque",
        bits=None,
        numeric=UNKNOWN,
        quantized=None,
        params=size or 0,
        out_positions=None,
        position=position,
        detail={"backend": backend, "payload_bytes": size, "method": method, "params": "estimated from payload bytes"},
    )


def _written_from_quantize(graph: _PlanGraph, index: int) -> bool:
    """Whether the values written into a buffer come from a quantize op (through scatters and copies)."""
    for _ in range(MAX_TRACE):
        produced = graph.producer.get(index)
        if produced is None:
            return False
        name, pargs = produced
        if name.startswith(_QUANTIZE_PREFIXES):
            return True
        if name in _SCATTER_VALUE and _SCATTER_VALUE[name] < len(pargs):
            index = pargs[_SCATTER_VALUE[name]]
        elif name in _PASS_THROUGH and pargs:
            index = pargs[0]
        else:
            return False
    return False


def _kv_cache(plan: Plan, graph: _PlanGraph) -> list[tuple[int, Tensor, bool, int]]:
    """(value index, buffer, quantized, quantize ops) of the KV-cache buffers a method writes.

    A cache is a buffer `llama::update_cache` or `llama::sdpa_with_kv_cache` writes, or a mutable
    buffer of 3+ dims written back by `aten::copy_` (index_put/index_copy caches) that is not a method
    input and, when the program carries buffer names, is named like a cache. It is quantized when it
    stores 8-bit integers written from a quantize op.
    """
    inputs = set(plan.inputs)
    out: dict[int, tuple[Tensor, bool, int]] = {}
    for ins in plan.instructions:
        if ins.kind != S.KERNEL_CALL or len(ins.args) < 2:
            continue
        op = base_name(plan.operators[ins.target])
        if op in _CACHE_WRITERS:
            pairs = [(ins.args[c], ins.args[v]) for c, v in _CACHE_WRITERS[op] if max(c, v) < len(ins.args)]
        elif op == "aten::copy_":
            pairs = [(ins.args[0], ins.args[1])]
        else:
            continue
        for cache_index, value_index in pairs:
            cache = graph.tensor(cache_index)
            if cache is None or cache.constant:
                continue
            if op == "aten::copy_":
                named_like_cache = cache.fqn is None or "cache" in cache.fqn.lower()
                if cache_index in inputs or not cache.allocated or len(cache.sizes) < 3 or not named_like_cache:
                    continue
            from_quantize = _written_from_quantize(graph, value_index)
            quantized = from_quantize and cache.scalar_type in S.INT8_LIKE
            prev = out.get(cache_index)
            out[cache_index] = (
                cache,
                quantized or (prev[1] if prev else False),
                int(from_quantize) + (prev[2] if prev else 0),
            )
    return [(i, *v) for i, v in out.items()]


def _kv_metric(found: list[tuple[int, Tensor, bool, int]]) -> dict[str, Any] | None:
    if not found:
        return None
    quantized = [f for f in found if f[2]]
    # with a quantized cache, the other int8/fp buffers it writes are its zero points and scales
    buffers = quantized or found
    dtypes: dict[str, int] = {}
    for _, t, _, _ in buffers:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
    return {
        "quantized": bool(quantized),
        # a number a policy can bound (a bool is not one): `kv_cache.quantized_buffers >= 1`
        "quantized_buffers": len(quantized),
        "buffers": len(buffers),
        "elements": sum(t.numel for _, t, _, _ in buffers),
        "bytes": sum(t.nbytes for _, t, _, _ in buffers),
        "dtypes": dtypes,
        "quantize_ops": sum(q for _, _, _, q in buffers),
        "names": [t.fqn or f"value {i}" for i, t, _, _ in buffers][:64],
        "auxiliary_buffers": len(found) - len(buffers),
    }


def _dedupe_across_methods(layers: list[Layer]) -> list[Layer]:
    """A weight used by several methods (prefill and decode, say) counts once, where it is first used.

    Within one method a shared constant stays two layers (a tied embedding and LM head are two ops).
    """
    first: dict[tuple[str, str], Layer] = {}
    out = []
    for layer in layers:
        constant = layer.detail.get("constant")
        key = (str(layer.detail.get("backend", "portable")), str(constant))
        seen = first.get(key) if constant else None
        if seen is not None and seen.detail.get("method") != layer.detail.get("method"):
            also = seen.detail.setdefault("also_in", [])
            if layer.detail.get("method") not in also:
                also.append(layer.detail.get("method"))
            continue
        if constant:
            first.setdefault(key, layer)
        out.append(layer)
    return out


def _constant_key(t: Tensor) -> str:
    """The program-global identity of a constant (shared across methods)."""
    return str(t.fqn) if t.external else f"buffer {t.data_buffer_idx}"


def _params_stored(prog: Program, layers: list[Layer]) -> int:
    """Elements of every program-level constant once; a packed weight counts its logical elements."""
    elements: dict[str, int] = {}
    for plan in prog.plans:
        for v in plan.values:
            t = v.tensor
            if t is not None and t.constant:
                elements.setdefault(_constant_key(t), t.numel)
    for layer in layers:
        key = layer.detail.get("constant")
        if "backend" not in layer.detail and key in elements:
            elements[key] = layer.params  # packed 4-bit in uint8: twice the stored elements
    return sum(elements.values())


class _Delegates:
    """What the delegates of every plan add up to: XNNPACK payloads read once per blob (however many
    delegates share it), their constants, calls per backend and the opaque payloads' bytes."""

    def __init__(self, prog: Program, view: View):
        self.prog = prog
        self.view = view
        self.counts: dict[str, int] = {}  # backend -> delegates called
        self.opaque_bytes = 0
        self.xnn_constants: dict[Any, int] = {}  # named key (or blob and index) -> elements: shared keys count once
        self.payloads: dict[tuple[int, int], Any] = {}
        self.weight_ops: dict[tuple[int, int], list[Any]] = {}

    def payload(self, span: tuple[int, int]) -> Any:
        """The XNNPACK payload at `span`, read the first time it is asked for."""
        payload = self.payloads.get(span)
        if payload is not None:
            return payload
        from quantgate.formats.pte.xnnpack import read_payload  # only programs with an XNNPACK delegate need it

        start, size = span
        self.view.ensure(start, size)
        data = memoryview(self.view.buf)[start : start + size] if size else b""
        try:
            payload = read_payload(data, base_offset=start, budget=Budget.for_size(size))
        finally:
            if isinstance(data, memoryview):
                data.release()  # the mmap cannot close while a view of it is exported
        self.payloads[span] = payload
        self.weight_ops[span] = payload.weight_ops()
        for finding in payload.findings:
            self.prog.add(finding)
        for v in payload.values:
            if v.is_constant:
                self.xnn_constants[v.named_key or (span, v.constant_buffer_idx)] = v.numel
        return payload

    def named_outside(self) -> dict[str, int]:
        """XNNPACK constants stored under a named key the program's named data does not hold -> bytes."""
        held = {key for key, _ in self.prog.named_data}
        return {c.named_key: c.size for payload in self.payloads.values() for c in payload.constant_data
                if c.named and c.named_key and c.named_key not in held}


def _delegate_calls(plan: Plan, graph: _PlanGraph) -> tuple[dict[int, int], dict[int, list[int]], set[int]]:
    """Per delegate index: the first instruction calling it, that call's args, and whether any call
    passes a dynamic-shape tensor."""
    called: dict[int, int] = {}
    call_args: dict[int, list[int]] = {}
    dynamic_calls: set[int] = set()
    for ins in plan.instructions:
        if ins.kind == S.DELEGATE_CALL:
            called.setdefault(ins.target, ins.index)
            call_args.setdefault(ins.target, ins.args)
            if any((t := graph.tensor(a)) is not None and t.dynamism != S.STATIC for a in ins.args):
                dynamic_calls.add(ins.target)
    return called, call_args, dynamic_calls


def _check_externs(prog: Program, plan: Plan, d_index: int, position: int, payload: Any, passed: int) -> None:
    if payload.complete and passed != payload.num_externs:
        prog.add(
            F.error(
                "XNNPACK_EXTERNS_MISMATCH",
                f"the DelegateCall at instruction {position} of {plan.name!r} passes {passed} tensor(s) to "
                f"XNNPACK delegate {d_index}, whose graph declares num_externs {payload.num_externs}; "
                "re-export the program",
                field=f"{plan.name}.delegates[{d_index}]",
            )
        )


def _delegate_layers(
    plan: Plan, graph: _PlanGraph, prefix: str, seen: _Delegates, layers: list[Layer], max_layers: int
) -> None:
    """Append the layers of the plan's delegate calls to `layers`: one opaque layer per non-XNNPACK
    delegate, the weight ops of each XNNPACK payload; stops at `max_layers`."""
    prog = seen.prog
    called, call_args, dynamic_calls = _delegate_calls(plan, graph)
    for d_index, position in sorted(called.items(), key=lambda kv_: kv_[1]):
        d = plan.delegates[d_index]
        seen.counts[d.backend] = seen.counts.get(d.backend, 0) + 1
        dprefix = f"{prefix}{position}:{d.backend}[{d_index}]/"
        if d.backend != XNNPACK or d.span is None:
            seen.opaque_bytes += d.span[1] if d.span else 0
            layers.append(_opaque_layer(dprefix, d.backend, position, d.span[1] if d.span else None, plan.name))
            continue
        payload = seen.payload(d.span)
        args = call_args.get(d_index, [])
        _check_externs(prog, plan, d_index, position, payload, len(args))
        new = _xnnpack_layers(
            payload, seen.weight_ops[d.span], dprefix, position, plan.name, d_index in dynamic_calls, graph, args
        )
        if len(layers) + len(new) > max_layers:
            prog.add(
                F.error(
                    "READ_BUDGET_EXHAUSTED",
                    f"more than {max_layers:,} weight-bearing layers in a {prog.size:,}-byte program "
                    f"({d.backend} delegate {d_index} of {plan.name!r}); the rest were not read",
                    field=f"{plan.name}.delegates[{d_index}]",
                )
            )
            return
        layers.extend(new)


def _metrics(layers: list[Layer], seen: _Delegates, kv: list[tuple[int, Tensor, bool, int]]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if seen.counts:
        metrics["delegates"] = seen.counts
    unknown = [x for x in layers if x.quantized is None]
    if unknown or seen.counts:
        metrics["opaque_delegates"] = len(unknown)
        metrics["opaque_delegate_bytes"] = seen.opaque_bytes
    kv_metric = _kv_metric(kv)
    if kv_metric is not None:
        metrics["kv_cache"] = kv_metric
    return metrics


def attach(prog: Program, view: View, inv: Inventory) -> dict[str, int]:
    """Fill `inv.layers`, `params_stored` and the PTE metrics from a parsed program.

    Returns the XNNPACK constants (named key -> bytes) stored outside the program, for the reader to
    look for in a `.ptd` beside it."""
    layers: list[Layer] = []
    seen = _Delegates(prog, view)
    kv: list[tuple[int, Tensor, bool, int]] = []
    multi = len(prog.plans) > 1
    max_layers = MAX_LAYERS_BASE + prog.size // BYTES_PER_LAYER
    for plan in prog.plans:
        graph = _PlanGraph(plan)
        prefix = f"{plan.name}/" if multi else ""
        plan_start = len(layers)
        layers.extend(_portable_layers(plan, graph, prefix))
        kv.extend(_kv_cache(plan, graph))
        _delegate_layers(plan, graph, prefix, seen, layers, max_layers)
        # in execution order (kernels and delegate calls were collected apart)
        layers[plan_start:] = sorted(layers[plan_start:], key=lambda x: x.position or 0)
    outside = seen.named_outside()
    inv.layers = _dedupe_across_methods(layers)
    inv.params_stored = _params_stored(prog, inv.layers) + sum(seen.xnn_constants.values())
    inv.metrics = _metrics(layers, seen, kv)
    return outside
