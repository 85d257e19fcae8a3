"""The guard registry: stable ids (docs/architecture.md#guard-ids) in the order the gate runs them.

Guard modules are cheap to import (heavy libraries load inside `measure`), so listing them all
costs little at start-up.
"""

from __future__ import annotations

import importlib

from quantgate.validators.base import Guard

# guard id -> module defining GUARD; integrity first, because other guards block on it
GUARD_MODULES: dict[str, str] = {
    "integrity": "quantgate.validators.integrity",
    "size-heuristic": "quantgate.validators.size_heuristic",
    "pte-program": "quantgate.validators.pte_program",
    "pte-inspector": "quantgate.validators.pte_inspector",
    "onnx-dtypes": "quantgate.validators.onnx_dtypes",
    "gguf-dtypes": "quantgate.validators.gguf_dtypes",
    "safetensors-dtypes": "quantgate.validators.safetensors_dtypes",
    "fidelity": "quantgate.validators.fidelity",
    "manifest": "quantgate.validators.manifest",
}


class UnknownGuard(KeyError):
    pass


def guard_ids() -> list[str]:
    return list(GUARD_MODULES)


def get_guard(guard_id: str) -> Guard:
    module_name = GUARD_MODULES.get(guard_id)
    if module_name is None:
        raise UnknownGuard(guard_id)
    return importlib.import_module(module_name).GUARD


def all_guards() -> list[Guard]:
    return [get_guard(g) for g in GUARD_MODULES]
