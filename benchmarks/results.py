"""benchmarks/RESULTS.md: one section per run kind, replaced in place, with the machine and versions."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("quantgate", "gguf", "onnx", "onnxruntime", "safetensors", "executorch", "torch", "numpy")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0.0
    versions = []
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()} on "
        f"{platform.system()} {platform.release()}; commit {commit or 'unknown'}.\n\nVersions: "
        + ", ".join(versions)
        + "."
    )


def replace_section(path: Path, heading: str, text: str) -> None:
    """Replace the section starting with `heading` (up to the next '## ') or append it."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark and fuzzing results\n\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "\n".join([*lines[:start], text.rstrip("\n"), *lines[end:]]).rstrip("\n") + "\n"
    path.write_text(new, encoding="utf-8")
