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

Sliding-window attention (Gemma 2/3/3n/4, Cohere 2, Llama 4, gpt-oss...: `SWA_ARCHS`): as llama.cpp's
iSWA cache, a sliding layer holds min(ctx, window + n_ubatch) cells padded to 256, not ctx, with
head dims `key_length_swa` / `value_length_swa` (default the full ones); the window is
`<arch>.attention.sliding_window` and the layers come from `<arch>.attention.sliding_window_pattern`
or the architecture's built-in pattern. `--param n_ubatch=N` (default 512, llama.cpp's);
`--param swa_full=true` (llama.cpp's --swa-full) counts every layer at ctx. Gemma 3n / Gemma 4 layers
that reuse an earlier layer's cache (`<arch>.attention.shared_kv_layers`) hold none of their own.
"""

from __future__ import annotations

from typing import Any

from quantgate.core import findings as F
from quantgate.core.inventory import Inventory
from quantgate.formats.gguf import types as T
from quantgate.guards.base import GuardConfig, Outcome
from quantgate.guards.coverage_guard import COVERAGE_METRICS, CoverageGuard

DEFAULT_CTX = 4096
N_UBATCH = 512  # llama.cpp's default micro-batch (llama_context_default_params)
SWA_PAD = 256  # llama.cpp pads the SWA cache to 256 cells
GEMMA3N_KV_LAYERS = 20  # llama.cpp: gemma3n's layers from 20 on reuse an earlier layer's cache
MAX_SWA_LAYERS = 65_536  # the reader's tensor cap: a block count above it never gets this far
# Architectures whose llama.cpp loader gives sliding-window layers their own, smaller cache (their
# load_arch_hparams): arch -> (built-in pattern n or None when the file must give the array,
# dense layer first, a window llama.cpp fixes whatever the file says).
SWA_ARCHS: dict[str, tuple[int | None, bool, int | None]] = {
    "gemma2": (2, False, None),
    "gemma3": (6, False, None),
    "gemma3n": (5, False, None),
    "gemma4": (None, False, None),
    "cohere2": (4, False, None),
    "cohere2moe": (4, True, None),
    "llama4": (4, False, 8192),  # chunked attention, 8192-token chunks unless sliding_window = 0
    "gpt-oss": (2, False, None),
    "olmo2": (4, False, None),
    "mellum": (4, False, None),
    "afmoe": (4, False, None),
    "smallthinker": (4, True, 4096),
    "plamo3": (8, False, None),
    "laguna": (4, True, None),
    "exaone-moe": (4, False, None),
    "muse-glimmer": (4, False, None),
    "granite_swa": (None, False, None),
    "mimo2": (None, False, None),
    "step35": (None, False, None),
}

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
    hp: dict[str, Any],
    ctx: int,
    cache: tuple[int, int],
    max_layers: int | None = None,
    arch: str | None = None,
    n_ubatch: int = N_UBATCH,
) -> tuple[int | None, str]:
    """The KV-cache size in bytes, or None and the reason it cannot be estimated. `max_layers` (the
    file's tensor count: every block has tensors) bounds a block count taken from metadata. With
    `arch`, sliding-window layers hold llama.cpp's SWA cache, not `ctx` cells (see `swa_layout`)."""
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
    swa = swa_layout(hp, arch, n_layers) if arch else None
    own = kv_layers(hp, arch, n_layers) if arch else n_layers
    if swa is None and own == n_layers:
        elements = ctx * n_head_kv[0] * (k + v)
        return elements * size // block, ""
    window, is_swa = swa if swa is not None else (0, [False] * n_layers)
    swa_cells = swa_cache_cells(ctx, window, n_ubatch)
    k_swa = hp.get("key_length_swa") if isinstance(hp.get("key_length_swa"), int) else k
    v_swa = hp.get("value_length_swa") if isinstance(hp.get("value_length_swa"), int) else v
    heads_kv = hp.get("head_count_kv") if _layer_sum(hp.get("head_count_kv"), n_layers) else hp.get("head_count")
    elements = 0
    for il, sliding in enumerate(is_swa[:own]):  # n_layers <= max_layers: bounded by the file's tensors
        heads = int(heads_kv[il]) if isinstance(heads_kv, list) else int(heads_kv)
        elements += heads * ((k_swa + v_swa) * swa_cells if sliding else (k + v) * ctx)
    return elements * size // block, ""


def kv_layers(hp: dict[str, Any], arch: str, n_layers: int) -> int:
    """How many layers, from the first, have a KV cache of their own: Gemma 3n and Gemma 4 let the
    last layers reuse an earlier layer's cache (llama.cpp's n_layer_kv_from_start: 20 for gemma3n,
    block_count - `<arch>.attention.shared_kv_layers` for gemma4); every layer elsewhere."""
    if n_layers > MAX_SWA_LAYERS:  # never from a real file; keeps the per-layer sum bounded
        return n_layers
    if arch == "gemma3n":
        return min(n_layers, GEMMA3N_KV_LAYERS)
    shared = hp.get("shared_kv_layers")
    if arch == "gemma4" and isinstance(shared, int) and 0 < shared < n_layers:
        return n_layers - shared
    return n_layers


def swa_cache_cells(ctx: int, window: int, n_ubatch: int = N_UBATCH) -> int:
    """Cells of llama.cpp's SWA cache (llama_kv_cache_iswa): the window plus one micro-batch, at most
    the context, padded to 256 cells."""
    return -(-min(ctx, window + n_ubatch) // SWA_PAD) * SWA_PAD


def swa_layout(hp: dict[str, Any], arch: str, n_layers: int) -> tuple[int, list[bool]] | None:
    """(window, is-sliding per layer) where llama.cpp gives `arch` a sliding-window cache, else None.

    The pattern is `<arch>.attention.sliding_window_pattern`: an array (one flag per layer; layers past
    its end are full) or a number n (every n-th layer full, llama_hparams::set_swa_pattern), else the
    architecture's built-in n. No window (absent or 0) means every layer is full, which only
    overestimates. Unknown architectures are estimated as full attention, for the same reason."""
    spec = SWA_ARCHS.get(arch)
    if spec is None or n_layers > MAX_SWA_LAYERS:
        return None
    default_pattern, dense_first, fixed_window = spec
    window = hp.get("sliding_window")
    if fixed_window is not None and ((isinstance(window, int) and window > 0) or (window is None and arch == "llama4")):
        window = fixed_window  # llama4 chunks by 8192 unless the file says 0
    if not isinstance(window, int) or window <= 0:
        return None
    pattern = hp.get("sliding_window_pattern", default_pattern)
    if isinstance(pattern, list):
        flags = [bool(pattern[il]) if il < len(pattern) else False for il in range(n_layers)]
    elif isinstance(pattern, int) and pattern >= 0:
        if dense_first:
            flags = [pattern == 0 or il % pattern != 0 for il in range(n_layers)]
        else:
            flags = [pattern == 0 or il % pattern < pattern - 1 for il in range(n_layers)]
    else:
        return None
    return (window, flags) if any(flags) else None


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
        *(
            f"memory.{k}"
            for k in (
                "weights_bytes",
                "kv_cache_bytes",
                "total_bytes",
                "ctx",
                "ctx_source",
                "cache_type",
                "swa_window",
                "swa_layers",
                "swa_cells",
                "kv_shared_layers",
            )
        ),
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
        n_ubatch = config.param("n_ubatch", N_UBATCH)
        if not isinstance(n_ubatch, int) or isinstance(n_ubatch, bool) or n_ubatch <= 0:
            outcome.error = (
                "bad_param",
                f"--param n_ubatch={n_ubatch} is not a positive integer",
                "pass llama.cpp's micro-batch size (-ub), e.g. --param n_ubatch=512",
            )
            return
        raw = config.param("swa_full", False)
        swa_full = raw if isinstance(raw, bool) else {"true": True, "false": False}.get(str(raw).lower())
        if swa_full is None:
            outcome.error = (
                "bad_param",
                f"--param swa_full={config.param('swa_full')} is not true or false",
                "pass --param swa_full=true when llama.cpp runs with --swa-full",
            )
            return
        weights = int(inventory.facts.get("tensor_data_bytes", 0))
        tensors = inventory.facts.get("tensor_count")
        arch = inventory.facts.get("architecture")
        # llama.cpp's --swa-full gives sliding layers the full context: estimate them as full layers
        arch = arch if isinstance(arch, str) and not swa_full else None
        kv, why = kv_cache_bytes(hp, ctx, cache, tensors if isinstance(tensors, int) else None, arch, n_ubatch)
        memory: dict[str, Any] = {
            "weights_bytes": weights,
            "ctx": ctx,
            "ctx_source": ctx_source,
            "cache_type": cache_type,
        }
        split = inventory.facts.get("split")
        if isinstance(split, dict) and split.get("no", 1) > 1:
            pass  # a later shard of a split model: the set's memory is reported on its first shard
        elif kv is None:
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
            own = kv_layers(hp, arch, hp["block_count"]) if arch else hp["block_count"]
            if own < hp["block_count"]:
                memory["kv_shared_layers"] = hp["block_count"] - own
            swa = swa_layout(hp, arch, hp["block_count"]) if arch else None
            if swa is not None:
                memory["swa_window"] = swa[0]
                memory["swa_layers"] = sum(swa[1])
                memory["swa_cells"] = swa_cache_cells(ctx, swa[0], n_ubatch)
        outcome.metrics["memory"] = memory


GUARD = GGUFDtypesGuard()
