"""The command line (docs/architecture.md#the-command-line). stdout carries only the report; everything
else goes to stderr.

Exit codes: 0 pass, 1 fail, 2 error, 3 no input, 4 usage. argparse's own usage exit (2) is mapped
to 4 so that 2 always means "could not decide".
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import sys
from typing import Any, NoReturn

from quantgate import __version__
from quantgate.cli import extras
from quantgate.core.progress import log
from quantgate.core.untrusted import lines as inert_lines
from quantgate.core.untrusted import plain, stop_commands
from quantgate.gate import BOUNDED_ERROR_SKIPS, EXIT_ERROR, EXIT_USAGE, UsageError, session
from quantgate.gate.verdict import verdict_of
from quantgate.report import OUTPUT_FORMATS, render
from quantgate.report.jsonfmt import dumps, dumps_bytes
from quantgate.report.text import COLOR_MODES

SUBCOMMANDS = ("run", "guard", "inspect", "guards", "schema", "manifest", "merge", *extras.SUBCOMMANDS)
EXIT_CODES_HELP = """exit codes:
  0  every required guard reached a verdict and none failed
  1  at least one FAIL (0 with --report-only)
  2  at least one ERROR, or a required guard could not run
  3  no artifact found, or no guard applied
  4  usage error: bad flags, invalid policy, unknown guard
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"quantgate: error: {inert_lines(message)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _output(text: str) -> tuple[str, str]:
    fmt, path = _key_value(text)
    if fmt not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(f"unknown report format {fmt!r}; choose from {', '.join(OUTPUT_FORMATS)}")
    if not path:
        raise argparse.ArgumentTypeError(f"--output {text!r} names no file")
    return fmt, path


def _seconds(text: str) -> float:
    """--timeout: a finite, positive budget (nan would compare false with everything and disable it)."""
    from quantgate.gate.policy import MAX_TIMEOUT_S

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"expected a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {text!r}")
    return value


def _jobs(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --jobs {value!r}: a whole number or auto") from None


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return int(match[1]), int(match[2])


def _scalar(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="gate artifacts against the policy",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("paths", nargs="*", metavar="PATH", help="files or folders (default: the policy's paths)")
    run.add_argument(
        "--policy",
        metavar="FILE",
        help="policy file (default: ./quantgate.toml, else [tool.quantgate] in ./pyproject.toml)",
    )
    run.add_argument("--format", choices=OUTPUT_FORMATS, default="text", help="report on stdout (default: text)")
    run.add_argument(
        "--output",
        action="append",
        type=_output,
        default=[],
        metavar="FORMAT=FILE",
        help="also write a report to FILE (repeatable)",
    )
    run.add_argument("--fail-on", choices=("fail", "warn"), help="what makes the gate fail (default: policy)")
    run.add_argument("--report-only", action="store_true", help="exit 0 instead of 1 on FAIL (never hides 2, 3, 4)")
    run.add_argument("--guards", metavar="ID,ID", help="run only these guards")
    run.add_argument("--jobs", type=_jobs, default="auto", metavar="N|auto",
                     help="artifacts gated in parallel worker processes (default auto: serial when only header "
                          "scans apply, else one worker per runtime-checked artifact up to the cores)")
    run.add_argument("--sha256", action="store_true", help="hash every artifact into the report")
    run.add_argument("--shard", type=_shard, metavar="K/N", help="gate only the K-th of N shards of the artifacts")
    run.add_argument(
        "--no-github",
        action="store_true",
        help="no annotations, step summary or outputs even when GITHUB_ACTIONS=true",
    )


def _add_guard(sub: Any) -> None:
    guard = sub.add_parser("guard", help="run one guard on one file and print its result JSON")
    guard.add_argument("guard_id", metavar="ID")
    guard.add_argument("path", metavar="PATH")
    guard.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="EXPR",
        help="a bound that must hold, e.g. coverage.ops.int8>=0.9 (repeatable)",
    )
    guard.add_argument("--warn", action="append", default=[], metavar="EXPR", help="a soft bound (repeatable)")
    guard.add_argument(
        "--param",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a guard parameter, e.g. params=1230000000 (repeatable)",
    )
    guard.add_argument(
        "--expect-unquantized",
        action="append",
        default=[],
        metavar="PATTERN",
        help="a layer-name glob (or kind:embedding) that is meant to stay float",
    )
    guard.add_argument("--policy", metavar="FILE", help="take the guard's settings from this policy too")
    guard.add_argument("--basis", choices=("ops", "params", "flops"), help="basis of the headline int8_coverage")
    guard.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="time budget (default 300)")


def _add_inspect(sub: Any) -> None:
    inspect = sub.add_parser("inspect", help="show what a reader sees: every layer with kind, shape, dtype, bits")
    inspect.add_argument("path", metavar="PATH")
    inspect.add_argument("--format", choices=("text", "json"), default="text")


def _add_guards(sub: Any) -> None:
    guards = sub.add_parser("guards", help="list the guards, what each needs, and whether it can run here")
    guards.add_argument("--format", choices=("text", "json"), default="text")


def _add_manifest(sub: Any) -> None:
    manifest = sub.add_parser(
        "manifest", help="measure artifacts and write a long-form release manifest that passes the manifest guard"
    )
    manifest.add_argument("paths", nargs="+", metavar="PATH", help="artifact files or folders")
    manifest.add_argument("--model-id", required=True, metavar="ID", help="e.g. org/model-name")
    manifest.add_argument(
        "--output",
        metavar="FILE",
        help="where to write it (default: manifest.json in the artifacts' folder; - for stdout)",
    )
    manifest.add_argument("--basis", choices=("ops", "params", "flops"), default="ops", help="basis of `coverage`")


def _add_merge(sub: Any) -> None:
    merge = sub.add_parser("merge", help="join the JSON reports of `run --shard K/N` into one verdict")
    merge.add_argument("reports", nargs="+", metavar="REPORT.json")
    merge.add_argument("--format", choices=OUTPUT_FORMATS, default="text", help="report on stdout (default: text)")
    merge.add_argument("--output", action="append", type=_output, default=[], metavar="FORMAT=FILE")
    merge.add_argument("--no-github", action="store_true")
    merge.add_argument(
        "--allow-partial",
        action="store_true",
        help="merge even when shards are missing (the report lists them); duplicates and mismatches stay ERROR",
    )


def _add_schema(sub: Any) -> None:
    schema = sub.add_parser("schema", help="print a bundled JSON Schema")
    schema.add_argument("name", choices=("guard-result", "report", "policy", "manifest"))


# in the order `quantgate --help` lists them
_SUBPARSERS = {
    "run": _add_run,
    "guard": _add_guard,
    "inspect": _add_inspect,
    "guards": _add_guards,
    "manifest": _add_manifest,
    "merge": _add_merge,
    "schema": _add_schema,
}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with `command`, only that subcommand's: argparse builds a help
    formatter for every argument it adds, ~10 M instructions for them all, paid by every run."""

    def wanted(name: str) -> bool:
        return command is None or command == name

    parser = _Parser(
        prog="quantgate",
        description="A CI gate for quantized model artifacts (.pte, ONNX, GGUF, safetensors).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"quantgate {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or log lines on stderr")
    parser.add_argument(
        "--color",
        choices=COLOR_MODES,
        default="auto",
        help="colour the text report on stdout (default: auto: on a terminal, off under NO_COLOR)",
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    for name, add in _SUBPARSERS.items():
        if wanted(name):
            add(sub)
    extras.add_parsers(sub, wanted)
    return parser


def _fail_usage(message: str) -> int:
    # a path or a policy value in it is hostile: each line made inert (quantgate.core.untrusted)
    print(f"quantgate: error: {inert_lines(message)}", file=sys.stderr)
    return EXIT_USAGE


def run() -> NoReturn:
    """The `quantgate` command."""
    code = main()
    # the run is over: frozen, its objects are left out of the interpreter's last full collection at
    # exit (about 4 ms of a 60 ms `quantgate guard`; benchmarks/RESULTS.md, startup). Every cleanup
    # (atexit, temporary files, runtime children) still runs.
    import gc

    gc.freeze()
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # global flags work after the subcommand too (`quantgate run dist/ -q`): moved to the front, up to
    # a `--` (after which every word is a path)
    end = argv.index("--") if "--" in argv else len(argv)
    flags, rest, i = [], [], 0
    while i < end:  # `--color MODE` moves with its value
        if argv[i] in ("-q", "--quiet") or argv[i].startswith("--color="):
            flags.append(argv[i])
        elif argv[i] == "--color":
            flags += argv[i : i + 2]
            i += 1
        else:
            rest.append(argv[i])
        i += 1
    argv = [*flags, *rest, *argv[end:]]
    # `quantgate dist/` means `quantgate run dist/`
    index = len(flags) if len(flags) < len(argv) else None
    if index is not None and argv[index] not in (*SUBCOMMANDS, "-h", "--help", "--version"):
        argv.insert(index, "run")
    parser = _parser(argv[index] if index is not None and argv[index] in SUBCOMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from quantgate.core import progress

    progress.set_quiet(args.quiet)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        return _fail_usage(str(exc))
    except KeyboardInterrupt:
        print("quantgate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours: one line, never a traceback unless asked for
        print(
            f"quantgate: internal error: {type(exc).__name__}: {plain(exc)} "
            "(set QUANTGATE_DEBUG=1 for the traceback; please report it)",
            file=sys.stderr,
        )
        if os.environ.get("QUANTGATE_DEBUG"):
            import traceback

            traceback.print_exc()
        return EXIT_ERROR


def _print_bytes(data: bytes) -> None:
    """Write a report's bytes to stdout: to its binary buffer where it has one (a file or a pipe)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream put in its place (io.StringIO)
        sys.stdout.write(data.decode())
        return
    sys.stdout.flush()  # whatever was written as text goes first
    buffer.write(data)
    buffer.flush()


def _write(path: str, text: str) -> None:
    """Write `text` to `path` (atomically, see quantgate.core.atomic), or to stdout for `-`."""
    if path == "-":
        sys.stdout.write(text)
        return
    from quantgate.core.atomic import write_atomic  # tempfile: only when a file is written

    write_atomic(path, text.encode("utf-8"))


def cmd_run(args: argparse.Namespace) -> int:
    policy = session.load_policy(args.policy)
    if args.jobs != "auto" and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    guards = [g.strip() for g in args.guards.split(",") if g.strip()] if args.guards else None
    options = session.RunOptions(
        paths=args.paths,
        guards=guards,
        jobs=0 if args.jobs == "auto" else args.jobs,  # 0: chosen from the work (gate.auto_jobs)
        fail_on=args.fail_on,
        report_only=args.report_only,
        hash_all=args.sha256,
        shard=args.shard,
    )
    gate = session.Session(policy, options)
    artifacts = gate.prepare()
    if gate.skipped:
        from quantgate.report.common import skipped_lines  # file names made inert for the terminal

        for line in skipped_lines({"skipped": gate.skipped}):
            log(f"quantgate: not gated: {line}")
    done = 0

    def progress(artifact: Any, out: list[dict[str, Any]]) -> None:
        nonlocal done
        done += 1
        if len(artifacts) > 1:
            log(f"[{done}/{len(artifacts)}] {artifact.display}: {verdict_of(out, 1)}")

    gate.evaluate_all(progress)
    return _emit(gate.report(), args)


def _emit(report: dict[str, Any], args: argparse.Namespace) -> int:
    """Write the --output files, the GitHub integration and stdout; the exit code.

    A failed --output write never loses the verdict: one line on stderr, the report still on stdout,
    and the exit code is the verdict's, or 2 when the verdict would have passed (0): a gate that
    passes while the report it was asked to write is missing (or stale) must not look green."""
    written: dict[str, str] = {}
    write_failed = False
    for fmt, path in args.output:
        try:
            _write(path, render(report, fmt))
        except OSError as exc:
            print(
                f"quantgate: error: cannot write --output {fmt}={plain(path)}: {plain(exc.strerror or exc)}; "
                "the report is on stdout only (check the folder exists and is writable)",
                file=sys.stderr,
            )
            write_failed = True
            continue
        written[fmt] = path
    in_github = os.environ.get("GITHUB_ACTIONS") == "true" and not args.no_github
    if args.format == "json":
        _print_bytes(dumps_bytes(report))  # plain JSON, never wrapped: its strings are escaped
    else:
        if args.format == "text":  # colour on stdout only, never in --output files
            from quantgate.report import text as text_report

            text = text_report.render(report, text_report.use_color(getattr(args, "color", "auto"), sys.stdout))
        else:
            text = render(report, args.format)
        if args.format in ("text", "markdown"):
            # untrusted text on a GitHub runner: no workflow command inside is obeyed. Ended before
            # quantgate's own annotations below, which must work (--format github is those).
            text = stop_commands(text, sys.stdout)
        sys.stdout.write(text)
        sys.stdout.flush()
    if in_github:
        from quantgate.report import github

        if args.format != "github":
            # after the report: the runner must read them once any stop-commands region has ended
            print(
                "\n".join([*github.log_groups(report), *github.annotations(report)]),
                file=sys.stderr,
                flush=True,
            )
        try:
            github.publish(report, report_paths=written)
        except OSError as exc:  # the step summary or outputs file: the report still goes to stdout
            print(f"quantgate: error: cannot write the GitHub step summary or outputs: {exc.strerror or exc}",
                  file=sys.stderr)
            write_failed = True
    code = int(report["exit_code"])
    return EXIT_ERROR if write_failed and code == 0 else code


def cmd_merge(args: argparse.Namespace) -> int:
    from quantgate.gate.merge import load_report, merge_reports

    reports = [load_report(path) for path in args.reports]
    merged = merge_reports(reports, args.reports, allow_partial=args.allow_partial)
    for problem in merged["merge"]["problems"]:
        print(f"quantgate: merge: {problem}", file=sys.stderr)
    if merged["merge"]["missing"] and args.allow_partial:
        shown = ", ".join(str(k) for k in merged["merge"]["missing"])
        print(f"quantgate: merge: partial: shard(s) {shown} of {merged['merge']['shards']} missing", file=sys.stderr)
    return _emit(merged, args)


def cmd_guard(args: argparse.Namespace) -> int:
    from quantgate.guards.base import CORE, run_guard

    guard = session.known_guard(args.guard_id)
    path = session.check_file(args.path)
    config = session.guard_config(
        guard,
        policy=args.policy,
        require=args.require,
        warn=args.warn,
        expect_unquantized=args.expect_unquantized,
        basis=args.basis,
        timeout_s=args.timeout,
        params={k: _scalar(v) for k, v in args.param},
    )
    # One file in a short-lived process: the objects a reader builds (a million on a large header) live
    # until the result is printed and form no cycles, so the cyclic collector would only re-scan them,
    # several times over (~0.3 s of a 50k-tensor safetensors run). The guards that run numeric work and
    # third-party runtimes for minutes (fidelity, pte-inspector) keep the collector: their libraries may
    # leave cycles behind in every chunk.
    if guard.needs == CORE:
        gc.disable()
    try:
        ctx = session.guard_context(path)
    except session.InputError as exc:  # no Range support, an HTTP error: one line, exit 2
        print(f"quantgate: error: {plain(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    result = run_guard(guard, ctx, config)
    _print_bytes(dumps_bytes(result.to_dict()))
    # bounds were asked for and the guard cannot measure them here (its extra is missing)
    cannot_run = result.status == "SKIP" and result.skip and result.skip["reason"] in BOUNDED_ERROR_SKIPS
    if cannot_run and (config.require or config.warn):
        print(f"quantgate: error: {guard.id} cannot run here: {result.skip['detail']}", file=sys.stderr)
        return EXIT_ERROR
    return result.exit_code


def _remote_arg(text: str) -> str | None:
    """The URL when `text` is an http(s) URL (read by range, see quantgate.core.remote), else None."""
    from quantgate.core.remote import is_url

    return text if is_url(text) else None


def _shown_arg(text: str) -> str:
    from quantgate.core.remote import display_url, is_url

    return display_url(text) if is_url(text) else text


def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantgate.core.coverage import coverage_metrics
    from quantgate.formats import MODEL_FORMATS, read_inventory
    from quantgate.formats.sniff import sniff

    remote_url = _remote_arg(args.path)
    path: Any = remote_url or Path(args.path)
    if not remote_url and not path.is_file():
        raise UsageError(f"not a file: {args.path}")
    sniffed = sniff(path)
    if remote_url and sniffed.format == "unreadable":
        print(f"quantgate: error: {plain(sniffed.detail)}", file=sys.stderr)
        return EXIT_ERROR
    if sniffed.format not in MODEL_FORMATS:
        shown = _shown_arg(args.path)
        print(f"quantgate: {plain(shown)}: {sniffed.format}: {plain(sniffed.detail)}", file=sys.stderr)
        return 1
    from quantgate.core.remote import RemoteError

    try:
        inventory = read_inventory(str(path), sniffed.format)
    except RemoteError as exc:
        print(f"quantgate: error: {plain(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    if inventory is not None and remote_url:
        inventory.path = _shown_arg(remote_url)  # never the query of a presigned URL
    if inventory is None:
        print(f"quantgate: no reader for {sniffed.format} in this version", file=sys.stderr)
        return EXIT_ERROR
    metrics, _ = coverage_metrics(inventory.layers)
    if args.format == "json":
        out = inventory.to_dict()
        out["coverage_metrics"] = metrics
        sys.stdout.write(dumps(out))
    else:
        sys.stdout.write(stop_commands(_inventory_text(inventory, metrics), sys.stdout))
    return 1 if not inventory.structurally_sound else 0


def _inventory_text(inventory: Any, metrics: dict[str, Any]) -> str:
    # every name, key, value and message below comes from the file: each made inert (plain)
    lines = [f"{plain(inventory.path)}: {inventory.format}, {inventory.size_bytes:,} bytes"]
    for key, value in inventory.facts.items():
        lines.append(f"  {plain(key)}: {plain(value)}")
    if inventory.layers:
        rows = [("#", "name", "kind", "shape", "dtype", "bits", "params", "bpw")]
        for i, layer in enumerate(inventory.layers):
            bpw = f"{8 * layer.weight_bytes / layer.params:.3f}" if layer.weight_bytes and layer.params else ""
            bits = "?" if layer.quantized is None else (f"{layer.bits:g}" if layer.bits is not None else "")
            rows.append(
                (
                    str(i),
                    plain(layer.name),
                    plain(layer.kind),
                    plain("×".join(map(str, layer.shape))),
                    plain(layer.dtype),
                    bits,
                    f"{layer.params:,}",
                    bpw,
                )
            )
        widths = [min(60, max(len(r[i]) for r in rows)) for i in range(len(rows[0]))]
        for row in rows:
            lines.append("  " + "  ".join(cell[:60].ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    else:
        lines.append("  no weight-bearing layers")
    if metrics.get("weight_ops"):
        cov = metrics["coverage"]
        summary = ", ".join(
            f"{basis}: int8 {c['int8']:.1%}, quantized {c['quantized']:.1%}" for basis, c in cov.items()
        )
        lines.append(f"coverage — {summary}")
        if "bits_per_weight" in metrics:
            lines.append(f"bits per weight (weight-bearing layers): {metrics['bits_per_weight']:.4f}")
    for finding in inventory.structural_findings + inventory.semantic_findings:
        where = finding.where()
        lines.append(
            f"{finding.severity.upper()} {finding.code}: {plain(finding.message)}"
            + (f" [{plain(where)}]" if where else "")
        )
    return "\n".join(lines) + "\n"


def cmd_guards(args: argparse.Namespace) -> int:
    from quantgate.guards import all_guards

    rows = []
    for guard in all_guards():
        missing = guard.missing_dependency()
        rows.append(
            {
                "id": guard.id,
                "needs": guard.needs,
                "formats": list(guard.formats) if guard.formats else ["any"],
                "available": missing is None,
                "hint": missing,
                "description": guard.description,
            }
        )
    if args.format == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    width = max(len(r["id"]) for r in rows)
    for r in rows:
        state = "ready" if r["available"] else f"unavailable: {r['hint']}"
        sys.stdout.write(f"{r['id']:<{width}}  needs {r['needs']:<10} formats {','.join(r['formats']):<18} {state}\n")
        sys.stdout.write(f"{'':<{width}}  {r['description']}\n")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quantgate.gate.discovery import discover
    from quantgate.manifest.check import MANIFEST_VERSION, describe

    # every shard of a GGUF split set gets its own entry (its sha256 and size), not only the first
    artifacts = [a for a in discover(args.paths, split_sets=False) if a.format != "manifest"]
    if not artifacts:
        raise UsageError("no artifacts found under the given paths")
    if args.output and args.output != "-":
        out = Path(args.output)
        folder = out.resolve().parent
    else:
        out = None
        parents = {Path(a.path).parent for a in artifacts}
        folder = Path(os.path.commonpath([str(p) for p in parents]))
        if args.output != "-":
            out = folder / "manifest.json"
    entries, problems = [], []
    for artifact in artifacts:
        entry, why = describe(Path(artifact.path), folder, args.basis)
        if entry is None:
            problems.append(why)
            continue
        entries.append(entry)
        if why:
            print(f"quantgate: note: {plain(why)}", file=sys.stderr)
    if problems:
        for why in problems:
            print(f"quantgate: cannot describe {plain(why)}", file=sys.stderr)
        return 1
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "model_id": args.model_id,
        "created_by": f"quantgate {__version__}",
        "artifacts": entries,
    }
    # artifact paths may spell `##[` (a runner command anywhere in a log line): the same value escaped
    text = json.dumps(doc, indent=2).replace("##[", "#\\u0023[") + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        try:
            from quantgate.core.atomic import write_atomic

            write_atomic(str(out), text.encode("utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot write {plain(out)}: {exc.strerror or exc}") from None
        print(f"quantgate: wrote {plain(out)} ({len(entries)} artifact(s))", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from quantgate.core.jsonschemas import schema_text

    try:
        sys.stdout.write(schema_text(args.name))
    except (KeyError, FileNotFoundError):
        raise UsageError(f"no bundled schema named {args.name!r}") from None
    return 0


COMMANDS = {
    "run": cmd_run,
    "guard": cmd_guard,
    "inspect": cmd_inspect,
    "guards": cmd_guards,
    "schema": cmd_schema,
    "manifest": cmd_manifest,
    "merge": cmd_merge,
    **extras.COMMANDS,
}
