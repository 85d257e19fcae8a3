"""The bundled JSON Schemas (shipped in the wheel under quantgate/schemas/)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

NAMES = ("guard-result", "report", "policy", "manifest")


def schema_text(name: str) -> str:
    if name not in NAMES:
        raise KeyError(name)
    return (resources.files("quantgate") / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8")


def _exists(name: str) -> bool:
    return (resources.files("quantgate") / "schemas" / f"{name}.schema.json").is_file()


@cache
def load_schema(name: str) -> dict[str, Any]:
    return json.loads(schema_text(name))


def validate(instance: Any, name: str, definition: str | None = None) -> list[str]:
    """Every schema error as `$.json.path: message` (empty when valid).

    `definition` validates against one of the schema's `$defs` (e.g. the manifest's `long` form),
    which gives precise messages where a `oneOf` would only say "matches none".
    """
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (load_schema(n)["$id"], Resource.from_contents(load_schema(n))) for n in NAMES if _exists(n)
    )
    schema = load_schema(name)
    if definition is not None:
        schema = {"$ref": f"{schema['$id']}#/$defs/{definition}"}
    validator = Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)
    problems = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        problems.append(f"{path}: {err.message}")
    return problems
