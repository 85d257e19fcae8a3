"""The cyclic garbage collector paused while a reader or the coverage engine builds many small objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector off for a reader's run. A reader builds an object or two per tensor, node or
    entry (a million on a large header) and no cycles, so collections mid-read only re-scan them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
