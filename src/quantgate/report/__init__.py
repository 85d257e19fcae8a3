"""Renderers: one module per output format, each `render(report) -> str` from the canonical JSON.

`OUTPUT_FORMATS` names them (what `--format` takes); the formats quantgate reads are `formats.FORMATS`.
"""

from __future__ import annotations

import importlib
from typing import Any

RENDERERS = {
    "text": "quantgate.report.text",
    "json": "quantgate.report.jsonfmt",
    "markdown": "quantgate.report.markdown",
    "junit": "quantgate.report.junit",
    "github": "quantgate.report.github",
    "html": "quantgate.report.html",
    "sarif": "quantgate.report.sarif",
}
OUTPUT_FORMATS = tuple(RENDERERS)


def render(report: dict[str, Any], fmt: str) -> str:
    return importlib.import_module(RENDERERS[fmt]).render(report)
