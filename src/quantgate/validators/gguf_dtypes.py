"""`gguf-dtypes`: per-tensor ggml types -> coverage, bits per weight, file_type consistency, memory.

Coverage and bpw come from the shared engine; the reader adds the semantic findings (file_type vs
the tensors, quantization_version, architecture) and the whole-model bpw metrics. This guard adds a
memory estimate from metadata, which a policy can bound (`memory.total_bytes <= 2e9`):

    memory.weights_bytes  = the tensor data (sum of every tensor's exact byte size)
    memory.kv_cache_bytes = ctx x sum over layers of n_head_kv(l) x (head_dim_k + head_dim_v)
                            x bytes per cache element (f16/bf16 2, f32 4, q8_0 34/32, q4_0 18/32, ...)
    memory.total_bytes    = weights + KV cache (no compute buffers, no activations)

with n_layers = `<arch>.block_count`, n_head_kv = `<arch>.attention.head_count_kv` (a number or a
per-layer array; default head_count), head_dim_k/v = `<arch>.attention.key_length` / `value_length`
(default embedding_length / head_count). Parameters: `--param ctx=N` (default: the model's
`<arch>.context_length` capped at 4096, else 4096) and `--param cache_type=f16|bf16|f32|q8_0|q4_0|...`.
"""

from __future__ import annotations

from typing import Any

from quantgate import findings as F
from quantgate.formats import gguf_types as T
from quantgate.inventory import Inventory
from quantgate.validators.base import GuardConfig, Outcome
from quantgate.validators.coverage_guard import COVERAGE_METRICS, CoverageGuard

DEFAULT_CTX = 4096

FINDING_CODES = {
    "GGUF_MEMORY_ESTIMATE_PARTIAL": "The KV-cache estimate could not be made: the metadata lacks "
    "<arch>.block_count or the head counts, or its block count is more than the file's tensors can hold; "
    "memory.kv_cache_bytes and memory.total_bytes are then absent, so "
    "a bound on them is an ERROR, never a silent PASS (info).",
}


def cache_bytes_per_element(cache_type: str) -> tuple[int, int] | None:
    """(bytes per block, elements per block) of a cache type name, or None if unknown."""
    gtype = T.GGML_TYPE_BY_NAME.get(str(cache_type).upper())
    if gtype is None or gtype.id in (T.GGML_TYPE_BY_NAME["Q8_1"].id,):
        return None
    return gtype.size, gtype.block


def _layer_sum(value: Any, n_layers: int) -> tuple[int, int] | None:
    """(sum over the n_layers blocks, block 0's value) of a hparam that is a number or a per-layer
    array; None when absent or an array shorter than n_layers. Never sized by n_layers: an array is
    as long as the file made it, and a number is multiplied, not repeated."""
    if isinstance(value, list):
        return (sum(int(x) for x in value[:n_layers]), int(value[0])) if len(value) >= n_layers else None
    if isinstance(value, int):
        return value * n_layers, value
    return None


def kv_cache_bytes(
    hp: dict[str, Any], ctx: int, cache: tuple[int, int], max_layers: int | None = None
) -> tuple[int | None, str]:
    """The KV-cache size in bytes, or None and the reason it cannot be estimated. `max_layers` (the
    file's tensor count: every block has tensors) bounds a block count taken from metadata."""
    n_layers = hp.get("block_count")
    if not isinstance(n_layers, int) or n_layers <= 0:
        return None, "<arch>.block_count is missing"
    if max_layers is not None and n_layers > max_layers:
        return None, f"<arch>.block_count {n_layers:,} is more than the file's {max_layers:,} tensors can hold"
    n_head = _layer_sum(hp.get("head_count"), n_layers)
    n_head_kv = _layer_sum(hp.get("head_count_kv"), n_layers) or n_head
    if n_head_kv is None:
        return None, "<arch>.attention.head_count(_kv) is missing"
    embd = hp.get("embedding_length")
    head_dim = None
    if isinstance(embd, int) and n_head and n_head[1] > 0:
        head_dim = embd // n_head[1]
    k = hp.get("key_length") if isinstance(hp.get("key_length"), int) else head_dim
    v = hp.get("value_length") if isinstance(hp.get("value_length"), int) else head_dim
    if k is None or v is None:
        return None, "neither attention.key_length/value_length nor embedding_length/head_count are given"
    size, block = cache
    elements = ctx * n_head_kv[0] * (k + v)
    return elements * size // block, ""


class GGUFDtypesGuard(CoverageGuard):
    id = "gguf-dtypes"
    metric_names = (
        *COVERAGE_METRICS,
        "bits_per_weight_all",
        "bits_per_weight_excluding_embeddings_and_output",
        "file_type",
        "quantization_version",
        "kv_count",
        "tensor_count",
        *(f"memory.{k}" for k in ("weights_bytes", "kv_cache_bytes", "total_bytes", "ctx", "ctx_source", "cache_type")),
    )
    description = "per-tensor ggml types → coverage, bits per weight, file_type consistency, memory estimate"
    formats = ("gguf",)

    def extra(self, inventory: Inventory, config: GuardConfig, outcome: Outcome) -> None:
        hp = inventory.facts.get("hparams", {})
        cache_type = str(config.param("cache_type", "f16")).lower()
        cache = cache_bytes_per_element(cache_type)
        if cache is None:
            outcome.error = (
                "bad_param",
                f"--param cache_type={cache_type} is not a cache type",
                "use f16, bf16, f32, q8_0, q4_0, q4_1, q5_0 or q5_1",
            )
            return
        ctx_param = config.param("ctx")
        if ctx_param is not None:
            if not isinstance(ctx_param, int) or ctx_param <= 0:
                outcome.error = (
                    "bad_param",
                    f"--param ctx={ctx_param} is not a positive integer",
                    "pass the context length in tokens, e.g. --param ctx=8192",
                )
                return
            ctx, ctx_source = ctx_param, "param"
        elif isinstance(hp.get("context_length"), int) and hp["context_length"] > 0:
            ctx, ctx_source = min(hp["context_length"], DEFAULT_CTX), "model (capped at 4096)"
        else:
            ctx, ctx_source = DEFAULT_CTX, "default"
        weights = int(inventory.facts.get("tensor_data_bytes", 0))
        tensors = inventory.facts.get("tensor_count")
        kv, why = kv_cache_bytes(hp, ctx, cache, tensors if isinstance(tensors, int) else None)
        memory: dict[str, Any] = {
            "weights_bytes": weights,
            "ctx": ctx,
            "ctx_source": ctx_source,
            "cache_type": cache_type,
        }
        if kv is None:
            outcome.findings.append(
                F.info(
                    "GGUF_MEMORY_ESTIMATE_PARTIAL",
                    f"no KV-cache estimate: {why}; "
                    "memory.kv_cache_bytes and memory.total_bytes are not reported",
                )
            )
        else:
            memory["kv_cache_bytes"] = kv
            memory["total_bytes"] = weights + kv
        outcome.metrics["memory"] = memory


GUARD = GGUFDtypesGuard()
