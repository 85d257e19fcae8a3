"""The subcommands around the gate: `render` (a saved report in another format), `init` (a starter
policy), `check-policy` (validate policy files, e.g. from pre-commit) and `extras` (the pip extras the
policy's guards need).

Kept apart from cli/main.py so that the core commands and these evolve without merge fights; cli/main.py
calls `add_parsers` and merges `COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from quantgate.core.untrusted import plain, stop_commands
from quantgate.gate import EXIT_PASS, EXIT_USAGE, UsageError
from quantgate.report import OUTPUT_FORMATS, render


def add_parsers(sub: Any, wanted: Callable[[str], bool]) -> None:
    """Add `render`, `init`, `check-policy` and `extras` (those `wanted`) to the subcommand parser."""
    if wanted("render"):
        rend = sub.add_parser(
            "render",
            help=f"re-render a saved JSON report ({', '.join(OUTPUT_FORMATS)})",
            description="Validate a saved report against schemas/report.schema.json, then render it. "
            "An invalid report exits 4 with the JSON path of each problem.",
        )
        rend.add_argument("report", metavar="REPORT.json", help="a report written by `quantgate run` (- = stdin)")
        rend.add_argument("--format", choices=OUTPUT_FORMATS, default="text", help="output format (default: text)")
        rend.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")

    if wanted("init"):
        init = sub.add_parser("init", help="write a commented starter policy that loads cleanly")
        init.add_argument("--output", default="quantgate.toml", metavar="FILE",
                          help="default: quantgate.toml (- = stdout)")
        init.add_argument("--force", action="store_true", help="overwrite an existing file")
        init.add_argument(
            "--path",
            action="append",
            default=[],
            metavar="DIR",
            help="what `quantgate run` scans by default (repeatable; default: dist/)",
        )

    if wanted("check-policy"):
        check = sub.add_parser(
            "check-policy",
            help="validate policy files (quantgate.toml, pyproject.toml) against the schema",
            description="Exit 0 when every file is a valid policy, 4 with one `FILE: key (line N): problem` "
            "line per problem otherwise. A pyproject.toml without [tool.quantgate] has nothing to check.",
        )
        check.add_argument("files", nargs="+", metavar="FILE")

    if wanted("extras"):
        extras = sub.add_parser(
            "extras",
            help="print the pip extras the policy's guards need (e.g. fidelity), comma-separated",
            description="The extras of every guard the policy bounds or requires, for "
            "`pip install 'quantgate[EXTRAS]'`; an empty line when the core install is enough.",
        )
        extras.add_argument(
            "--policy",
            metavar="FILE",
            help="policy file (default: ./quantgate.toml, else [tool.quantgate] in ./pyproject.toml)",
        )


# ---------------------------------------------------------------------------------------------
# render


def cmd_render(args: argparse.Namespace) -> int:
    from quantgate.gate.merge import load_report

    report = load_report(args.report)
    text = render(report, args.format)
    if args.output and args.output != "-":
        from quantgate.core.atomic import write_atomic

        try:
            write_atomic(args.output, text.encode("utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        # on a GitHub runner, the report's untrusted text obeys no workflow command (quantgate.core.untrusted)
        sys.stdout.write(stop_commands(text, sys.stdout) if args.format in ("text", "markdown") else text)
    return EXIT_PASS


# ---------------------------------------------------------------------------------------------
# init

_HEADER = """\
# quantgate policy — what `quantgate run` checks and what makes it fail.
# Reference: docs/policy.md; schema: `quantgate schema policy`; check it: `quantgate check-policy FILE`.
# Bounds are "METRIC OP NUMBER" strings (OP one of >= <= > < ==) on the guard's metrics
# (`quantgate guard ID FILE` prints them all). A bound on a metric a guard does not produce is an
# ERROR, never a pass; unknown keys are a usage error (exit 4), so a typo never disables a check.

[quantgate]
version = 1
paths = {paths}   # scanned when `quantgate run` is given no PATH (relative to this file)
# exclude = ["**/scratch/*"]
fail_on = "fail"          # "warn": soft bounds (warn = [...]) and advisory findings fail too
coverage_basis = "ops"    # headline int8_coverage on: ops | params | flops
timeout_s = 300           # per-guard time budget; an overrun is ERROR, never PASS
"""

_INTEGRITY = """
# The file is what it claims: magic, version, offsets and lengths inside the file, LFS pointers.
[guards.integrity]
required = true           # a required guard that cannot run is an ERROR (exit 2)
"""

_SIZE = """
# Implied bits per weight from file size and a parameter count: a cheap cross-check that needs
# the count (params = N); off until you give it one.
[guards.size-heuristic]
enabled = false
# params = { params = 1230000000, quant_bits = 8, float_bits = 32 }
# require = ["bits_per_weight <= 9"]
"""

_COVERAGE = """
# {description}
[guards.{gid}]
require = ["coverage.ops.quantized >= 0.90"]      # at least 90% of weight-bearing ops quantized
warn = ["unexpected_unquantized <= 0"]            # every float layer is listed as expected
expect_unquantized = ["kind:embedding"]           # name globs (or kind:KIND) meant to stay float
# require = ["coverage.ops.int8 >= 0.90", "coverage.params.int4 >= 0.80", "bits_per_weight <= 5"]
"""

_MANIFEST = """
# The release manifest (manifest.json beside the artifacts, as `quantgate manifest` writes it): its
# schema, then every claim (sha256, size, format, method, coverage) checked against the artifact.
[guards.manifest]
required = true
params = { coverage_tolerance = 0.01 }   # claimed vs measured coverage
"""

_FIDELITY = """
# How far each artifact is from the float model it was quantized from (the `fidelity` extra): weights
# dequantized and compared layer by layer, outputs on seeded inputs where a runtime is installed.
# Off until you name the references: an artifact file-name glob -> its float file, resolved in the
# artifact's folder ({1} is what the first * matched), or `reference = "path"` for a single one.
# [guards.fidelity]
# references = { "*-q8_0.gguf" = "{1}-f16.gguf", "*-int8.onnx" = "{1}-fp32.onnx" }
# require = ["weights.cosine.min >= 0.99", "weights.sqnr_db.mean >= 25", "size_ratio >= 1.9"]
# warn = ["outputs.cosine >= 0.98"]
"""

_OTHER = """
# {description}
# [guards.{gid}]
# required = false
# require = []
"""

_WAIVER = """
# A waiver turns one guard's FAIL on one exact file (by sha256) into a pass until it expires; the
# FAIL stays visible in every report. `sha256sum FILE` gives the hash.
# [[waivers]]
# guard = "integrity"
# artifact = "dist/model.gguf"
# sha256 = "<64 hex digits>"
# reason = "why this is acceptable, and who decided"
# expires = {expires}
"""


def starter_policy(paths: list[str] | None = None) -> str:
    """The commented starter policy, with a section for every guard this installation knows."""
    import datetime as dt

    from quantgate.guards import all_guards
    from quantgate.guards.coverage_guard import CoverageGuard

    shown = json.dumps(paths or ["dist/"])
    parts = [_HEADER.format(paths=shown)]
    for guard in all_guards():
        description = guard.description or guard.id
        if guard.id == "integrity":
            parts.append(_INTEGRITY)
        elif guard.id == "size-heuristic":
            parts.append(_SIZE)
        elif guard.id == "manifest":
            parts.append(_MANIFEST)
        elif guard.id == "fidelity":
            parts.append(_FIDELITY)
        elif isinstance(guard, CoverageGuard):
            parts.append(_COVERAGE.format(gid=guard.id, description=description))
        else:
            parts.append(_OTHER.format(gid=guard.id, description=description))
    expires = (dt.date.today() + dt.timedelta(days=90)).isoformat()
    parts.append(_WAIVER.format(expires=expires))
    return "".join(parts)


def cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantgate.core.progress import log

    text = starter_policy(args.path or None)
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_PASS
    target = Path(args.output)
    if target.exists() and not args.force:
        raise UsageError(f"{args.output} exists; pass --force to overwrite it")
    try:
        from quantgate.core.atomic import write_atomic

        write_atomic(args.output, text.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    log(f"quantgate: wrote {args.output}; check it with `quantgate check-policy {args.output}`")
    return EXIT_PASS


# ---------------------------------------------------------------------------------------------
# check-policy


def check_policy_file(path: str) -> tuple[list[str], list[str]]:
    """(problems, notes) of one policy file; problems make it invalid, notes do not."""
    import datetime as dt
    from pathlib import Path

    from quantgate.gate.policy import PYPROJECT, PolicyError, load_policy, metric_problems, tomllib

    file = Path(path)
    if not file.is_file():
        return [f"{path}: not a file"], []
    if file.name == PYPROJECT:
        try:
            tool = tomllib.loads(file.read_text(encoding="utf-8")).get("tool")
            if not (isinstance(tool, dict) and "quantgate" in tool):
                return [], [f"{path}: no [tool.quantgate] table; nothing to check"]
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):  # ValueError: TOMLDecodeError, huge ints
            pass  # load_policy below says what is wrong with it
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        return [f"{path}: {p}" for p in exc.problems], []
    metric_problems_found = metric_problems(policy, file.read_text(encoding="utf-8"))
    if metric_problems_found:
        return [f"{path}: {p}" for p in metric_problems_found], []
    notes = []
    today = dt.date.today()
    for index, waiver in enumerate(policy.waivers):
        if waiver.expires < today:
            notes.append(
                f"{path}: waivers[{index}] ({waiver.guard} on {waiver.artifact}) expired on "
                f"{waiver.expires.isoformat()}; it no longer applies"
            )
    configured = len(policy.guards)
    notes.append(f"{path}: valid policy ({configured} guard section(s), {len(policy.waivers)} waiver(s))")
    return [], notes


def cmd_check_policy(args: argparse.Namespace) -> int:
    from quantgate.core.progress import log

    failed = False
    for path in args.files:
        problems, notes = check_policy_file(path)
        for line in problems:  # they quote the policy's text, which a pull request can set
            print(plain(line), file=sys.stderr)
        for line in notes:
            log(line)
        failed = failed or bool(problems)
    return EXIT_USAGE if failed else EXIT_PASS


def cmd_extras(args: argparse.Namespace) -> int:
    from quantgate.gate.policy import needed_extras
    from quantgate.gate.session import load_policy

    sys.stdout.write(",".join(needed_extras(load_policy(args.policy))) + "\n")
    return EXIT_PASS


COMMANDS = {"render": cmd_render, "init": cmd_init, "check-policy": cmd_check_policy, "extras": cmd_extras}
SUBCOMMANDS = tuple(COMMANDS)
