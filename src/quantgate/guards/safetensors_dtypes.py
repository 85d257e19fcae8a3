"""`safetensors-dtypes`: stored dtypes and quantization layouts (GPTQ, AWQ, bitsandbytes,
compressed-tensors) → coverage, bits per weight, and config.json consistency.

The reader does the work (`formats/safetensors/layouts.py`); this guard adds the bits per weight
without the embeddings and the output head, since tools differ on whether those count, and, with
`--param scan_scales=1`, a bounded scan of the scale values (`formats/safetensors/scales.py`;
`scan_scales_limit` caps the bytes read, 64 MiB by default).
"""

from __future__ import annotations

from quantgate.core.coverage import bits_per_weight
from quantgate.core.inventory import EMBEDDING, Inventory
from quantgate.guards.base import GuardConfig, Outcome
from quantgate.guards.coverage_guard import COVERAGE_METRICS, CoverageGuard

HEAD_NAMES = ("lm_head", "embed_out")


class SafetensorsDtypesGuard(CoverageGuard):
    id = "safetensors-dtypes"
    metric_names = (*COVERAGE_METRICS, "bits_per_weight_body", "params_stored", "quant_method")
    description = (
        "stored dtypes and quantization layouts (GPTQ, AWQ, bitsandbytes, compressed-tensors) → coverage, "
        "bits per weight, config.json quantization_config consistency"
    )
    formats = ("safetensors",)

    def extra(self, inventory: Inventory, config: GuardConfig, outcome: Outcome) -> None:
        # _is_head's substring pre-test inline: this runs once per layer
        body = [x for x in inventory.layers if x.kind != EMBEDDING
                and (("lm_head" not in x.name and "embed_out" not in x.name) or not _is_head(x.name))]
        bpw = bits_per_weight(body)
        if bpw is not None:
            outcome.metrics["bits_per_weight_body"] = bpw
        if inventory.params_stored is not None:
            outcome.metrics["params_stored"] = inventory.params_stored
        if _truthy(config.param("scan_scales")):
            from quantgate.formats.safetensors.scales import DEFAULT_LIMIT, scan_scales

            limit = int(config.param("scan_scales_limit", DEFAULT_LIMIT))
            found, metrics = scan_scales(inventory.path, limit)
            outcome.findings.extend(found)
            outcome.metrics.update(metrics)


def _is_head(name: str) -> bool:
    """A component of the layer name is one of HEAD_NAMES."""
    if "lm_head" not in name and "embed_out" not in name:  # HEAD_NAMES as substrings: spares the split
        return False
    return any(h in name.split(".") for h in HEAD_NAMES)


def _truthy(value: object) -> bool:
    return value is not None and str(value).lower() not in ("0", "false", "no", "off", "")


GUARD = SafetensorsDtypesGuard()
