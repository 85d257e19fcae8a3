"""The guard registry: stable ids (docs/architecture.md#guard-ids) in the order the gate runs them.

The guards every format shares are listed here; a format's own guards come from its entry in
`formats.FORMATS`. Guard modules are cheap to import (heavy libraries load inside `measure`), so
listing them all costs little at start-up.
"""

from __future__ import annotations

import importlib

from quantgate.formats import FORMATS
from quantgate.guards.base import Guard

# guard id -> module defining GUARD; integrity first, because other guards block on it
GUARD_MODULES: dict[str, str] = {
    "integrity": "quantgate.guards.integrity",
    "size-heuristic": "quantgate.guards.size_heuristic",
    **{guard_id: module for f in FORMATS.values() for guard_id, module in f.guards},
    "fidelity": "quantgate.guards.fidelity",
    "manifest": "quantgate.guards.manifest",
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
