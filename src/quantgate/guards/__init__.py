"""The guard registry: stable ids (docs/architecture.md#guard-ids) in the order the gate runs them.

The guards every format shares are listed here; a format's own guards come from its entry in
`formats.FORMATS`. Guard modules are cheap to import (heavy libraries load inside `measure`), so
listing them all costs little at start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

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


def unknown_guard_message(names: Sequence[str], shown: str | None = None, *, brief: bool = False) -> str:
    """The one message for guard ids the registry lacks: `unknown guard(s): NAMES; did you mean NEAREST?
    known guards: ...`, naming the closest known id of each name that has one.

    `shown` replaces the list of names by how the caller shows the one id (`'nope'`, or a policy key with
    its line); `brief` (a policy file's problems, one line per key) lists the known ids only when no id
    is close.
    """
    import difflib  # only on this error path: the registry is imported by every command

    known = guard_ids()
    near = [m for name in names for m in difflib.get_close_matches(name, known, n=1)]
    head = f"unknown guard(s): {', '.join(names)}" if shown is None else f"unknown guard {shown}"
    guess = f"did you mean {', '.join(near)}?" if near else ""
    listing = f"known guards: {', '.join(known)}"
    if brief:
        return f"{head}; {guess or listing}"
    return f"{head}; {guess + ' ' if guess else ''}{listing}"


def get_guard(guard_id: str) -> Guard:
    module_name = GUARD_MODULES.get(guard_id)
    if module_name is None:
        raise UnknownGuard(guard_id)
    return importlib.import_module(module_name).GUARD


def all_guards() -> list[Guard]:
    return [get_guard(g) for g in GUARD_MODULES]
