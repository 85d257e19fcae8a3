"""quantgate: a CI gate for quantized model artifacts.

The Python API (docs/api.md):

    import quantgate
    report = quantgate.run(["dist/"], policy="quantgate.toml")       # -> quantgate.Report
    report.verdict, report.exit_code, report.to_dict()
    result = quantgate.guard("gguf-dtypes", "model.gguf")            # -> quantgate.GuardResult
    result.status, result.metrics, result.exit_code

Its names are imported on first use (module __getattr__), so `import quantgate` and the `quantgate`
command's start-up stay as cheap as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

SCHEMA_VERSION = "1"

# public name -> the module that defines it
_API = {
    "run": "quantgate.gate.session",
    "guard": "quantgate.gate.session",
    "Report": "quantgate.gate.session",
    "Session": "quantgate.gate.session",
    "RunOptions": "quantgate.gate.session",
    "InputError": "quantgate.gate.session",
    "UsageError": "quantgate.gate",
    "GuardResult": "quantgate.core.result",
}

__all__ = [
    "SCHEMA_VERSION",
    "GuardResult",
    "InputError",
    "Report",
    "RunOptions",
    "Session",
    "UsageError",
    "__version__",
    "guard",
    "run",
]

if TYPE_CHECKING:
    from quantgate.core.result import GuardResult
    from quantgate.gate import UsageError
    from quantgate.gate.session import InputError, Report, RunOptions, Session, guard, run


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'quantgate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
