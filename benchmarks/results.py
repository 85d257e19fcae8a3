"""benchmarks/RESULTS.md: one section per run kind, replaced in place, with the machine and versions."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

PACKAGES = ("quantgate", "gguf", "onnx", "onnxruntime", "safetensors", "executorch", "torch", "numpy")


# runs one command as a grandchild: its RUSAGE_CHILDREN is the command's peak RSS (floor: the wrapper's
# own ~10 MB interpreter, below any Python process) and CPU time (user + system) of the whole process.
# CPU time matters because the 2 cores are shared with other jobs: with no I/O (data in holes, headers
# in the page cache) wall ≈ CPU on an idle runner, and CPU time does not carry the neighbours' noise.
WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_rss_mb": ru.ru_maxrss / 1024, "stdout": proc.stdout, "stderr": proc.stderr[-2000:]}))
"""


def run_measured(cmd: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None) -> dict:
    """One fresh process of `cmd` through WRAPPER: rc, wall_s, cpu_s, peak_rss_mb, stdout, stderr."""
    import sys

    proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True,
                          cwd=cwd, env=env)
    return json.loads(proc.stdout)


def least_cost(cmd: list[str], runs: int, cwd: str | Path | None = None,
               check: Callable[[dict], None] | None = None) -> dict[str, float]:
    """Least CPU time ("s") and wall time ("wall") of `runs` fresh processes of `cmd`, and their largest
    peak RSS ("mib"); `check` sees each run (run_measured's dict) and raises SystemExit on a bad one."""
    best = {"s": float("inf"), "wall": float("inf"), "mib": 0.0}
    for _ in range(runs):
        run = run_measured(cmd, cwd=cwd)
        if check is not None:
            check(run)
        best["s"] = min(best["s"], run["cpu_s"])
        best["wall"] = min(best["wall"], run["wall_s"])
        best["mib"] = max(best["mib"], run["peak_rss_mb"])
    return best


def least_cost_interleaved(cmds: dict[str, list[str]], runs: int, cwd: str | Path | None = None,
                           checks: dict[str, Callable[[dict], None]] | None = None,
                           env: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """least_cost of each command, their runs taken in turn (a, b, a, b...): the shared cores' slow
    spells, which last seconds, then fall on every command alike rather than on whichever ran during one."""
    best = {label: {"s": float("inf"), "wall": float("inf"), "mib": 0.0} for label in cmds}
    for _ in range(runs):
        for label, cmd in cmds.items():
            run = run_measured(cmd, cwd=cwd, env=env)
            if checks and label in checks:
                checks[label](run)
            b = best[label]
            b["s"] = min(b["s"], run["cpu_s"])
            b["wall"] = min(b["wall"], run["wall_s"])
            b["mib"] = max(b["mib"], run["peak_rss_mb"])
    return best


def rerun() -> str:
    """Commit and load for a section rerun after the whole run."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    try:
        load = "load average {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    except OSError:
        load = "load average unknown"
    return f"commit {commit or 'unknown'}, {load}"


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
    try:
        load = "load average {:.1f} / {:.1f} / {:.1f} (1/5/15 min) when the run started".format(*os.getloadavg())
    except OSError:
        load = "load average unknown"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()} on "
        f"{platform.system()} {platform.release()}; commit {commit or 'unknown'}; {load} (the machine is shared, "
        "so timings carry noise; ratios are taken within one run).\n\nVersions: "
        + ", ".join(versions)
        + "."
    )


# the reading order of RESULTS.md: the headline, the machine, each format against its anchor, then the
# cross-cutting runs (hashing, the start-up budget, the cost curve, fidelity, the fuzz campaign); unknown
# sections follow
ORDER = ("Headline", "Machine", "gguf", "onnx", "safetensors", "pte", "pte_inspector", "hash", "startup", "curve",
         "fidelity", "many", "Hostile-input campaign", "Fuzz rerun")


def order_sections(path: Path) -> None:
    """Put the `## ` sections of `path` in ORDER (stable for the others)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    if not starts:
        return
    preamble = lines[: starts[0]]
    sections = [lines[a:b] for a, b in zip(starts, [*starts[1:], len(lines)], strict=True)]

    def rank(section: list[str]) -> int:
        title = section[0][3:].strip()
        return next((i for i, name in enumerate(ORDER) if title == name or title.startswith(name + " ")),
                    len(ORDER))

    out = list(preamble)
    for section in sorted(sections, key=rank):
        while section and not section[-1].strip():
            section = section[:-1]
        out += [*section, ""]
    path.write_text("\n".join(out).rstrip("\n") + "\n", encoding="utf-8")


def replace_section(path: Path, heading: str, text: str, top: bool = False) -> None:
    """Replace the section starting with `heading` (up to the next '## ') or add it: at the end, or
    before the first section when `top`."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark and fuzzing results\n\n"
    lines = old.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None and top:
        first = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
        new = "\n".join([*lines[:first], text.rstrip("\n"), "", *lines[first:]]).rstrip("\n") + "\n"
    elif start is None:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        gap = [""] if end < len(lines) else []
        new = "\n".join([*lines[:start], text.rstrip("\n"), *gap, *lines[end:]]).rstrip("\n") + "\n"
    path.write_text(new, encoding="utf-8")


# A benchmark states its headline comparison with headline(): an HTML comment inside its own section
# (invisible when rendered), collected by rebuild_headline() into the table at the top of RESULTS.md.
HEADLINE_RE = re.compile(r"<!-- headline (\{.*?\}) -->")


def headline(
    fmt: str,
    file: str,
    quantgate_s: float,
    quantgate_mib: float | None,
    anchor: str,
    anchor_s: float,
    anchor_mib: float | None,
    note: str = "",
) -> str:
    """One row of the headline table, as the line a benchmark prints inside its section (after a blank
    line, so that it never continues a table)."""
    row = {"format": fmt, "file": file, "quantgate_s": quantgate_s, "quantgate_mib": quantgate_mib,
           "anchor": anchor, "anchor_s": anchor_s, "anchor_mib": anchor_mib, "note": note}
    return f"\n<!-- headline {json.dumps(row, ensure_ascii=False)} -->"


def _ratio(anchor: float | None, ours: float | None) -> str:
    if not anchor or not ours:
        return "—"
    r = anchor / ours
    return f"**{r:,.0f}×**" if r >= 10 else f"{r:.2f}×"


def _cost(seconds: float, mib: float | None) -> str:
    if seconds < 0.01:
        t = f"{seconds * 1000:.1f} ms"
    else:
        t = f"{seconds * 1000:,.0f} ms" if seconds < 1 else f"{seconds:,.2f} s"
    return t if mib is None else f"{t}, {mib:,.0f} MiB"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def fence_plain(body: str) -> str:
    """A section printed as fixed-width text (no markdown table) goes in a code block, headline rows
    and the heading left outside, so it reads as printed."""
    lines = body.splitlines()
    head = lines[:1] if lines and lines[0].startswith("## ") else []
    rest = lines[len(head):]
    if any(line.startswith(("|", "```")) for line in rest) or not any(re.search(r"\S {3,}\S", x) for x in rest):
        return body
    keep = [x for x in rest if HEADLINE_RE.search(x)]
    plain = [x for x in rest if not HEADLINE_RE.search(x)]
    while plain and not plain[0].strip():
        plain.pop(0)
    while plain and not plain[-1].strip():
        plain.pop()
    return "\n".join([*head, "", "```text", *plain, "```", *keep])


def rebuild_headline(path: Path) -> None:
    """The `## Headline` table at the top, from every section's headline rows."""
    text = path.read_text(encoding="utf-8")
    rows = []
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        found = HEADLINE_RE.search(line)
        if found and section != "Headline":
            rows.append((section, json.loads(found.group(1))))
    lines = [
        "## Headline",
        "",
        "quantgate against the library a user would otherwise reach for, on the same files in the same run. "
        "Ratios are the anchor's cost / quantgate's: above 1 quantgate is cheaper. Time and peak RSS are "
        "measured as each section says (mostly a whole fresh process, as a CI step pays it).",
        "",
        "| format | file | quantgate (time, peak RSS) | anchor | anchor (time, peak RSS) | time ratio | "
        "memory ratio | note | section |",
        "|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for section, r in rows:
        lines.append(
            f"| {r['format']} | {r['file']} | {_cost(r['quantgate_s'], r['quantgate_mib'])} | {r['anchor']} | "
            f"{_cost(r['anchor_s'], r['anchor_mib'])} | {_ratio(r['anchor_s'], r['quantgate_s'])} | "
            f"{_ratio(r['anchor_mib'], r['quantgate_mib'])} | {r.get('note') or ''} | [{section}](#{_slug(section)}) |"
        )
    if not rows:
        lines.append("| — | no benchmark has run yet | | | | | | | |")
    slower = [f"{r['format']} {r['file']} ({r['anchor_s'] / r['quantgate_s']:.2f}×)" for _, r in rows
              if r["quantgate_s"] and r["anchor_s"] / r["quantgate_s"] < 1]
    if slower:
        lines += ["", "Where quantgate is slower than its anchor: " + "; ".join(slower) + "."]
    replace_section(path, "## Headline", "\n".join(lines), top=True)
