"""`fidelity`: how far a quantized artifact is from the float artifact it was made from.

The reference is named, first match wins, by `--param reference=PATH` (relative to the working
directory), by the policy (`[guards.fidelity] reference = "float.gguf"`, relative to the policy's
folder, or `references = {"*-q8_0.gguf" = "{1}-f16.gguf"}`: the first glob matching the artifact's
file name, its `*`/`?` captures as `{1}`, `{2}`..., `{name}` and `{stem}` for the file name with and
without its extension, resolved in the artifact's folder), or by a release manifest beside it (an
artifact entry's `reference`). With none the guard SKIPs `no_reference`.

Weights: each weight tensor (2+ dims) of the artifact is paired by name with the reference's (GGUF
tensor names, safetensors module names, ONNX initializer names with the quantizer's `_quantized` /
`_Q4` / `_DQ_Q4` suffixes removed, an ONNX `ConvBnFusion_W_<name>` filter with the reference's Conv +
BatchNormalization folded; `.pte` layers by position in execution order and shape), both
are dequantized to float (`quantgate.dequant`) and compared (`quantgate.dequant.metrics`: cosine,
SQNR, relative L2 error, max abs error). A tensor above
`max_elements` (default 2^22) is compared on evenly spaced rows, in chunks, so memory stays bounded
whatever the model size; the result says which layers were sampled. Names or shapes that do not
match, or weights that are unrelated (median cosine < 0.5), are FIDELITY_PAIR_MISMATCH and no
number is reported.

Outputs: ONNX pairs are run by onnxruntime on the same seeded inputs, `.pte` pairs by the ExecuTorch
runtime in a child process (`quantgate.runtime.pte_outputs`): `outputs.cosine` (worst output),
`outputs.sqnr_db`, `outputs.max_abs_error`, `outputs.top1_agreement` (argmax over the last axis).
Symbolic ONNX dims take realistic sizes (`quantgate.dequant.input_shapes`: `input_shapes`,
`dim.<name>`, `dynamic_dim`, the model's metadata and ops, then 1 / 224 / 128 by role);
`outputs.inputs` and `outputs.symbolic_dims` record them.

`size_ratio` = reference bytes / artifact bytes (ONNX external data included).
"""

from __future__ import annotations

import fnmatch
import os
import re
import statistics
from pathlib import Path
from typing import Any

from quantgate.core import findings as F
from quantgate.core.findings import Finding
from quantgate.core.result import NOT_APPLICABLE
from quantgate.formats import FORMATS, MODEL_FORMATS
from quantgate.guards.base import Guard, GuardConfig, GuardContext, Outcome

NO_REFERENCE = "no_reference"
DEFAULT_MAX_ELEMENTS = 1 << 22  # per layer; above it rows are sampled
CHUNK_ELEMENTS = 1 << 20  # elements decoded at once per side
TRANSPOSED_MAX_ELEMENTS = 1 << 24  # a pair stored transposed is compared whole, up to this size
UNRELATED_COSINE = 0.5  # no real quantizer at >= 2 bits leaves the median layer this far off
MIN_PAIRED_SHARE = 0.5
MAX_PER_LAYER = 5000
WORST_SHOWN = 3
NAMES_SHOWN = 5

FINDING_CODES = {
    "FIDELITY_PAIR_MISMATCH": "The reference is not the model the artifact was made from: no weight names in "
    "common, fewer than half of the artifact's weights paired, shapes that differ for the same name, or "
    "unrelated weights (median layer cosine below 0.5). No fidelity number is reported.",
    "FIDELITY_LAYER_UNPAIRED": "Some weights of the artifact have no counterpart in the reference, or the other "
    "way round (warning): they are not measured.",
    "FIDELITY_UNSUPPORTED_ENCODING": "A weight's storage has no dequantizer in quantgate (warning): the layer is "
    "not measured.",
    "FIDELITY_DEQUANT_FAILED": "A quantized weight cannot be decoded: its scales or zero points are missing or "
    "have the wrong shape, or its bytes run past the data.",
    "FIDELITY_NOT_FINITE": "Dequantized weights hold NaN or Inf values (e.g. an Inf scale).",
    "FIDELITY_SAMPLED": "Layers above the size cap were compared on evenly spaced rows, not whole (info).",
    "FIDELITY_WORST_LAYERS": "The layers furthest from the reference, by SQNR (info).",
    "FIDELITY_OUTPUTS_UNAVAILABLE": "Output fidelity was not measured: no runtime for the format is installed, "
    "the pair is not of one format, or an input cannot be built (info).",
    "FIDELITY_RUNTIME_FAILED": "The runtime could not load or run the artifact (or the reference) on inputs "
    "built from its signature.",
    "FIDELITY_OUTPUT_MISMATCH": "The artifact and the reference take different inputs or give outputs of "
    "different number or shape.",
    "FIDELITY_WEIGHTS_UNAVAILABLE": "Weights cannot be paired across these formats (a .pte program pairs by "
    "position only with another .pte); only outputs and size are compared (info).",
}

# ------------------------------------------------------------------------------------------------
# the reference


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A shell glob whose `*` and `?` become capture groups ({1}, {2}... in the template)."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("(.*)")
        elif ch == "?":
            out.append("(.)")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + r"\Z")


def map_reference(artifact_path: str, references: dict[str, str]) -> str | None:
    """The reference a `references` mapping gives for an artifact, or None when no pattern matches."""
    name = os.path.basename(artifact_path)
    for pattern, template in references.items():
        match = _glob_regex(pattern).match(name)
        if not match or not fnmatch.fnmatchcase(name, pattern):
            continue
        values = {"name": name, "stem": os.path.splitext(name)[0]}
        values.update({str(i): g for i, g in enumerate(match.groups(), start=1)})
        target = re.sub(r"\{(\w+)\}", lambda m, v=values: v.get(m.group(1), m.group(0)), str(template))
        return os.path.join(os.path.dirname(artifact_path), target)
    return None


MAX_MANIFESTS = 20


def manifest_reference(artifact_path: str) -> str | None:
    """The `reference` a release manifest beside the artifact gives it (`manifest.json` or
    `*.manifest.json` in its folder), for runs that did not scan the manifest (`quantgate guard`)."""
    from quantgate.core.confine import sibling
    from quantgate.manifest.check import ManifestError, artifact_hints, load_manifest

    folder = Path(artifact_path).parent
    try:
        names = sorted(p for p in os.listdir(folder) if p == "manifest.json" or p.endswith(".manifest.json"))
    except OSError:
        return None
    target = str(Path(artifact_path).resolve())
    for name in names[:MAX_MANIFESTS]:
        readable, _ = sibling(folder, name)  # confined like every sibling: a FIFO is never opened
        if readable is None:
            continue
        try:
            doc, _ = load_manifest(readable)
        except (ManifestError, OSError):
            continue
        reference = artifact_hints(doc, folder).get(target, {}).get("reference")
        if reference is not None:
            return reference
    return None


def resolve_reference(ctx: GuardContext, config: GuardConfig) -> tuple[str | None, str]:
    """(path, where it came from) or (None, why there is none)."""
    given = config.param("reference")
    if isinstance(given, str) and given:
        return os.path.abspath(given), "param"
    references = config.param("references")
    if isinstance(references, dict) and references:
        mapped = map_reference(ctx.path, references)
        if mapped:
            return os.path.abspath(mapped), "policy references"
    hinted = ctx.hints.get("reference") or manifest_reference(ctx.path)
    if isinstance(hinted, str) and hinted:
        return hinted, "manifest"
    return None, (
        "no reference artifact: pass --param reference=FLOAT_FILE, set reference (or a references "
        "pattern mapping) in [guards.fidelity], or add `reference` to the artifact's manifest entry"
    )


def _size_with_external(path: str, fmt: str) -> int:
    size = os.path.getsize(path)
    if fmt == "onnx":
        from quantgate.formats import read_inventory

        inventory = read_inventory(path, fmt)
        folder = os.path.dirname(path)
        for location in (inventory.facts.get("external_data_files") or []) if inventory else []:
            candidate = os.path.join(folder, location)
            if os.path.isfile(candidate):
                size += os.path.getsize(candidate)
    return size


# ------------------------------------------------------------------------------------------------
# weights


def _sample_rows(rows: int, cols: int, max_elements: int) -> tuple[Any, bool]:
    import numpy as np

    if rows * cols <= max_elements:
        return np.arange(rows, dtype=np.int64), False
    n = max(1, min(rows, max_elements // max(1, cols)))
    return np.unique(np.linspace(0, rows - 1, n).round().astype(np.int64)), True


def _compare_pair(ref: Any, art: Any, max_elements: int) -> tuple[Any, int | None]:
    """Stats of one pair and the number of rows compared when sampled (None when whole)."""
    from quantgate.dequant.metrics import Stats

    stats = Stats()
    if ref.shape != art.shape:  # stored transposed (a 2-D pair across formats): compared whole
        a = ref.load().reshape(ref.shape)
        b = art.load().reshape(art.shape).T
        stats.update(a, b)
        return stats, None
    rows, sampled = _sample_rows(ref.rows, ref.cols, max_elements)
    step = max(1, CHUNK_ELEMENTS // max(1, ref.cols))
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        stats.update(ref.load(chunk), art.load(chunk))
    return stats, len(rows) if sampled else None


def _shown(names: list[str]) -> str:
    head = ", ".join(names[:NAMES_SHOWN])
    return head + (f" (+{len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN else "")


def weight_fidelity(art_path: str, art_fmt: str, ref_path: str, ref_fmt: str, config: GuardConfig,
                    findings: list[Finding]) -> dict[str, Any] | None:
    """The `weights` metrics, or None when nothing could be measured (findings say why)."""
    from quantgate.dequant import BROKEN, DequantError, open_weights

    max_elements = max(1, int(float(config.param("max_elements", DEFAULT_MAX_ELEMENTS))))
    sets = []
    for path, fmt, side in ((art_path, art_fmt, "artifact"), (ref_path, ref_fmt, "reference")):
        try:
            sets.append(open_weights(path, fmt))
        except DequantError as exc:
            # the artifact's fault is an error; the reference's leaves the metrics absent (a bound on them
            # is then an ERROR: nothing could be decided)
            maker = F.error if side == "artifact" else F.warning
            findings.append(maker(exc.code, f"the {side}'s weights cannot be read: {exc.message}"))
            for ws in sets:
                ws.close()
            return None
    art, ref = sets
    try:
        if art_fmt != ref_fmt and not any(k in ref.weights for k in art.weights):
            findings.append(F.info("FIDELITY_WEIGHTS_UNAVAILABLE", f"no {art_fmt} weight name matches a {ref_fmt} "
                                   "one of the reference: weights are compared across formats only where names "
                                   "match (an ONNX export keeps PyTorch's names; GGUF renames them)"))
            return None
        return _measure_weights(art, ref, max_elements, findings, BROKEN, DequantError)
    finally:
        art.close()
        ref.close()


def _measure_weights(art: Any, ref: Any, max_elements: int, findings: list[Finding], broken_code: str,
                     dequant_error: type[Exception]) -> dict[str, Any] | None:
    """The `weights` metrics of an opened pair: paired by name, compared layer by layer, summarised."""
    for code, tensor, message in art.problems:
        maker = F.error if code == broken_code else F.warning
        findings.append(maker(code, message, tensor=tensor))
    common = _paired_keys(art, ref, findings)
    if common is None:
        return None
    rows, total, sampled = _compare_layers(art, ref, common, max_elements, findings, broken_code, dequant_error)
    if not rows or total is None:
        return None
    return _weights_summary(rows, total, sampled, max_elements, findings)


def _counterpart(ref: Any, key: str) -> Any:
    """The reference's weight for an artifact key: by name, else a variant (a folded ONNX Conv+BN)."""
    found = ref.weights.get(key)
    if found is None and key in ref.variants:
        found = ref.variants[key][1]
    return found


def _paired_keys(art: Any, ref: Any, findings: list[Finding]) -> list[str] | None:
    """The artifact's weight names that have a counterpart in the reference; None (with a
    FIDELITY_PAIR_MISMATCH) when the reference is not the model the artifact was made from."""
    art_keys = list(art.weights)
    common = [k for k in art_keys if _counterpart(ref, k) is not None]
    if not common:
        findings.append(F.error(
            "FIDELITY_PAIR_MISMATCH",
            f"no weight of the artifact has a counterpart by name in the reference (artifact: "
            f"{_shown(art_keys)}; reference: {_shown(list(ref.weights))}): is this the model it was made from?"))
        return None
    bad_shapes = []
    for key in common:
        a, r = art.weights[key], _counterpart(ref, key)
        transposed = len(a.shape) == 2 and tuple(reversed(a.shape)) == r.shape and a.numel <= TRANSPOSED_MAX_ELEMENTS
        if a.shape != r.shape and not transposed:
            bad_shapes.append(f"{key} {list(a.shape)} vs {list(r.shape)}")
    if bad_shapes:
        findings.append(F.error(
            "FIDELITY_PAIR_MISMATCH",
            f"{len(bad_shapes)} weight(s) have other shapes in the reference: {_shown(bad_shapes)}; the "
            "reference is a different model"))
        return None
    if len(common) < MIN_PAIRED_SHARE * len(art_keys):
        findings.append(F.error(
            "FIDELITY_PAIR_MISMATCH",
            f"only {len(common)} of the artifact's {len(art_keys)} weights have a counterpart in the reference"))
        return None
    unpaired = [k for k in art_keys if _counterpart(ref, k) is None]
    undecoded = {tensor for _, tensor, _ in art.problems}
    as_variant = {ref.variants[k][0] for k in art_keys if k not in ref.weights and k in ref.variants}
    missing = [k for k in ref.weights if k not in art.weights and k not in undecoded and k not in as_variant]
    if unpaired:
        findings.append(F.warning("FIDELITY_LAYER_UNPAIRED", f"{len(unpaired)} weight(s) of the artifact are not "
                                  f"in the reference and were not measured: {_shown(unpaired)}"))
    if missing:
        findings.append(F.warning("FIDELITY_LAYER_UNPAIRED", f"{len(missing)} weight(s) of the reference are not "
                                  f"in the artifact: {_shown(missing)}"))
    return common


def _compare_layers(art: Any, ref: Any, common: list[str], max_elements: int, findings: list[Finding],
                    broken_code: str, dequant_error: type[Exception]) -> tuple[list[dict[str, Any]], Any, list[str]]:
    """One row per compared layer, their merged Stats, and the names of the layers compared on sampled rows."""
    rows: list[dict[str, Any]] = []
    total = None
    sampled: list[str] = []
    for key in common:
        a, r = art.weights[key], _counterpart(ref, key)
        try:
            stats, sampled_rows = _compare_pair(r, a, max_elements)
        except dequant_error as exc:
            code = getattr(exc, "code", broken_code)
            maker = F.error if code == broken_code else F.warning
            findings.append(maker(code, f"{key}: {getattr(exc, 'message', exc)}", tensor=key))
            continue
        except (ValueError, IndexError, TypeError) as exc:  # bytes that do not fit the layout
            findings.append(F.error(broken_code, f"{key}: cannot be decoded: {exc}", tensor=key))
            continue
        finally:
            for ref_or_art in (a, r):
                if ref_or_art.release is not None:
                    ref_or_art.release()
        row: dict[str, Any] = {"name": key, **({"stored_as": a.name} if a.name != key else {}),
                               "shape": list(a.shape), "encoding": a.encoding,
                               "reference_encoding": r.encoding, "quantized": a.quantized, **stats.to_dict()}
        if sampled_rows is not None:
            row["sampled_rows"] = sampled_rows
            sampled.append(key)
        if stats.nonfinite:
            row["nonfinite"] = stats.nonfinite
            findings.append(F.error("FIDELITY_NOT_FINITE", f"{key}: {stats.nonfinite} value(s) are NaN or Inf "
                                    "after dequantization (left out of the numbers)", tensor=key))
        rows.append(row)
        if total is None:
            total = stats
        else:
            total.merge(stats)
    return rows, total, sampled


def _weights_summary(rows: list[dict[str, Any]], total: Any, sampled: list[str], max_elements: int,
                     findings: list[Finding]) -> dict[str, Any] | None:
    """The `weights` metrics from the compared layers; None when they are unrelated to the reference's."""
    cosines = [row["cosine"] for row in rows]
    if len(rows) >= 1 and statistics.median(cosines) < UNRELATED_COSINE:
        findings.append(F.error(
            "FIDELITY_PAIR_MISMATCH",
            f"the weights are unrelated to the reference's: median layer cosine {statistics.median(cosines):.3f} "
            f"over {len(rows)} layers (a quantized copy stays near 1); is this the model it was made from?"))
        return None
    worst = sorted(rows, key=lambda row: row["sqnr_db"])[:WORST_SHOWN]
    def label(row: dict[str, Any]) -> str:
        return row["name"] + (f" ({row['stored_as']})" if "stored_as" in row else "")

    findings.append(F.info("FIDELITY_WORST_LAYERS", "worst layers by SQNR: " + "; ".join(
        f"{label(row)} {row['sqnr_db']:.2f} dB (cosine {row['cosine']:.5f}, rel. error {row['rel_error']:.4g})"
        for row in worst), tensor=worst[0]["name"]))
    if sampled:
        findings.append(F.info("FIDELITY_SAMPLED", f"{len(sampled)} layer(s) above {max_elements:,} elements were "
                               f"compared on evenly spaced rows: {_shown(sampled)}"))
    sqnrs = [row["sqnr_db"] for row in rows]
    rels = [row["rel_error"] for row in rows]
    # the means leave out layers stored bit-identically to the reference (an embedding kept in float):
    # their SQNR is the cap, not a measurement, and would lift the mean
    changed = [row for row in rows if row["rel_error"] > 0] or rows
    return {
        "layers": len(rows),
        "quantized_layers": sum(1 for row in rows if row["quantized"]),
        "sampled_layers": len(sampled),
        "identical_layers": sum(1 for row in rows if row["rel_error"] == 0),
        "cosine": {"min": min(cosines), "mean": round(statistics.fmean(r["cosine"] for r in changed), 8)},
        "sqnr_db": {"min": min(sqnrs), "mean": round(statistics.fmean(r["sqnr_db"] for r in changed), 4),
                    "overall": round(total.sqnr_db, 4)},
        "rel_error": {"max": max(rels), "mean": round(statistics.fmean(r["rel_error"] for r in changed), 8)},
        "max_abs_error": max(row["max_abs_error"] for row in rows),
        "worst": [row["name"] for row in worst],
        "per_layer": rows[:MAX_PER_LAYER],
    }


# ------------------------------------------------------------------------------------------------
# outputs


def _child_timeout(config: GuardConfig) -> float:
    """`--param timeout` (default 120 s), kept under the gate's own budget so the child's overrun is
    reported by this guard."""
    from quantgate.runtime.child import DEFAULT_TIMEOUT_S, timeout_within

    return timeout_within(config.param("timeout", DEFAULT_TIMEOUT_S), config.timeout_s)


def _max_rss_mb(config: GuardConfig) -> int:
    """`--param max_rss_mb` (default 4096): the output runs' memory limit (the runtime box)."""
    from quantgate.runtime.box import max_rss_mb_of

    return max_rss_mb_of(config.param("max_rss_mb"))


def _int_high(ref_path: str, config: GuardConfig) -> int:
    """Token ids stay below the smallest embedding table of the reference (else 2) unless int_high says."""
    given = config.param("int_high")
    if given is not None:
        return max(1, int(float(given)))
    from quantgate.formats import read_inventory

    inventory = read_inventory(ref_path, "pte")
    rows = [layer.shape[0] for layer in (inventory.layers if inventory else []) if layer.kind == "embedding"
            and layer.shape and layer.shape[0] > 0]
    return min(rows) if rows else 2


class BadShapes(Exception):
    """A requested input shape the reference cannot take: the guard's usage ERROR."""


def requested_shapes(config: GuardConfig) -> tuple[dict[str, list[int]], dict[str, int], int | None]:
    """(`input_shapes`, `dim.<name>` sizes, an explicit `dynamic_dim`); raises BadShapes."""
    from quantgate.dequant.input_shapes import ShapeRequestError, parse_dims, parse_input_shapes

    try:
        given = config.param("input_shapes")
        shapes = parse_input_shapes(given) if given not in (None, "") else {}
        dims = parse_dims(config.params)
    except ShapeRequestError as exc:
        raise BadShapes(str(exc)) from None
    dynamic = config.param("dynamic_dim")
    return shapes, dims, max(1, int(float(dynamic))) if dynamic is not None else None


def output_fidelity(art_path: str, art_fmt: str, ref_path: str, ref_fmt: str, config: GuardConfig,
                    findings: list[Finding]) -> dict[str, Any] | None:
    if str(config.param("outputs", "true")).lower() in ("false", "0", "no", "off"):
        return None
    if art_fmt != ref_fmt:
        findings.append(F.info("FIDELITY_OUTPUTS_UNAVAILABLE", f"outputs are compared only between artifacts of one "
                               f"format ({art_fmt} vs {ref_fmt})"))
        return None
    samples = max(1, int(float(config.param("samples", 4))))
    seed = int(float(config.param("seed", 0)))
    if art_fmt == "onnx":
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            findings.append(F.info("FIDELITY_OUTPUTS_UNAVAILABLE", "onnxruntime is not installed: "
                                   "pip install 'quantgate[fidelity]' to compare outputs"))
            return None
        from quantgate.dequant.outputs import BAD_SHAPES, run_child

        int_high = config.param("int_high")
        shapes, dims, dynamic_dim = requested_shapes(config)
        run = run_child(ref_path, art_path, samples=samples, seed=seed, dynamic_dim=dynamic_dim,
                        int_high=int(float(int_high)) if int_high is not None else None,
                        timeout_s=_child_timeout(config), max_rss_mb=_max_rss_mb(config),
                        input_shapes=shapes, dims=dims)
        if "finding" in run:
            code, message = run["finding"]
            if code == BAD_SHAPES:
                raise BadShapes(message)
            maker = F.info if code == "FIDELITY_OUTPUTS_UNAVAILABLE" else F.error
            findings.append(maker(code, message))
            return None
        return run["outputs"]
    if art_fmt == "pte":
        from quantgate.runtime.pte_outputs import run_outputs

        run = run_outputs(ref_path, art_path, samples=samples, seed=seed, int_high=_int_high(ref_path, config),
                          timeout_s=_child_timeout(config), method=config.param("method"),
                          max_rss_mb=_max_rss_mb(config))
        if "finding" in run:
            code, message = run["finding"]
            maker = F.info if code == "FIDELITY_OUTPUTS_UNAVAILABLE" else F.error
            findings.append(maker(code, message))
            return None
        return run["outputs"]
    return None


# ------------------------------------------------------------------------------------------------


def _summary(metrics: dict[str, Any]) -> str:
    parts = []
    w = metrics.get("weights")
    if w:
        parts.append(f"{w['layers']} layers vs the reference: cosine min {w['cosine']['min']:.5f}, SQNR min "
                     f"{w['sqnr_db']['min']:.2f} dB / mean {w['sqnr_db']['mean']:.2f} dB (worst {w['worst'][0]})")
    o = metrics.get("outputs")
    if o:
        top1 = f", top-1 {o['top1_agreement']:.3f}" if "top1_agreement" in o else ""
        parts.append(f"outputs cosine {o['cosine']:.5f}, max abs error {o['max_abs_error']:.4g}{top1}")
        if o.get("symbolic_dims"):  # the sizes chosen for symbolic dims decide what the cosine means
            shapes = list(o["inputs"].items())
            shown = ", ".join(f"{name[:40]!a} {'x'.join(map(str, shape)) or 'scalar'}" for name, shape in shapes[:3])
            parts[-1] += f" (inputs {shown}{', ...' if len(shapes) > 3 else ''})"
    if "size_ratio" in metrics:
        parts.append(f"{metrics['size_ratio']:.2f}x smaller")
    return "; ".join(parts) or "nothing measured"


class FidelityGuard(Guard):
    id = "fidelity"
    metric_names = (
        "size_ratio",
        *(f"reference.{k}" for k in ("path", "format", "size_bytes", "source")),
        *(f"weights.{k}" for k in ("layers", "quantized_layers", "sampled_layers", "identical_layers",
                                   "cosine.min", "cosine.mean", "sqnr_db.min", "sqnr_db.mean", "sqnr_db.overall",
                                   "rel_error.max", "rel_error.mean", "max_abs_error", "worst", "per_layer")),
        *(f"outputs.{k}" for k in ("cosine", "sqnr_db", "max_abs_error", "rel_error", "top1_agreement", "count",
                                   "per_output", "samples", "seed", "runtime", "int_high", "inputs",
                                   "symbolic_dims", "unused_shapes")),
    )
    description = ("distance from the float reference: weights dequantized and compared layer by layer "
                   "(cosine, SQNR, relative error), outputs on seeded inputs (onnxruntime, ExecuTorch), size ratio")
    needs = "fidelity"
    requires_modules = ("numpy",)
    install_hint = "pip install 'quantgate[fidelity]'"
    formats = tuple(f.id for f in FORMATS.values() if f.dequantizer)
    needs_structure = True

    def measure(self, ctx: GuardContext, config: GuardConfig) -> Outcome:
        ref_path, source = resolve_reference(ctx, config)
        if ref_path is None:
            return Outcome(skip=(NO_REFERENCE, source))
        if not os.path.isfile(ref_path):
            return Outcome(error=("reference_missing", f"the reference {ref_path} (from {source}) is not a file",
                                  "fix the reference path; it is resolved as docs/fidelity.md says"))
        try:
            if os.path.samefile(ref_path, ctx.path):
                return Outcome(skip=(NOT_APPLICABLE, "this artifact is the fidelity reference itself"))
        except OSError:
            pass
        from quantgate.formats import read_inventory
        from quantgate.formats.sniff import sniff

        ref_fmt = sniff(Path(ref_path)).format
        if ref_fmt not in MODEL_FORMATS:
            return Outcome(error=("reference_unreadable", f"the reference {ref_path} is not a model file ({ref_fmt})",
                                  "point the reference at the float model the artifact was made from"))
        ref_inventory = read_inventory(ref_path, ref_fmt)
        if ref_inventory is not None and not ref_inventory.structurally_sound:
            first = next(f for f in ref_inventory.structural_findings if f.severity == F.ERROR)
            return Outcome(error=("reference_broken", f"the reference {ref_path} fails integrity: {first.code}: "
                                  f"{first.message}", "run `quantgate guard integrity` on the reference"))

        for key in ("max_elements", "samples", "seed", "dynamic_dim", "int_high", "timeout", "max_rss_mb"):
            given = config.param(key)
            try:
                if given is not None and (float(given) != int(float(given)) or int(float(given)) < 0):
                    raise ValueError
            except (TypeError, ValueError):
                return Outcome(error=("bad_param", f"--param {key}={given} is not a non-negative integer",
                                      "see docs/fidelity.md for the parameters"))
        try:
            requested_shapes(config)
        except BadShapes as exc:
            return Outcome(error=("bad_param", str(exc), "see docs/fidelity.md for input_shapes"))
        findings: list[Finding] = []
        metrics: dict[str, Any] = {}
        art_size = _size_with_external(ctx.path, ctx.format)
        ref_size = _size_with_external(ref_path, ref_fmt)
        metrics["reference"] = {"path": ref_path, "format": ref_fmt, "size_bytes": ref_size, "source": source}
        if art_size:
            metrics["size_ratio"] = round(ref_size / art_size, 6)
        if str(config.param("weights", "true")).lower() not in ("false", "0", "no", "off"):
            if "pte" in (ctx.format, ref_fmt) and ctx.format != ref_fmt:
                findings.append(F.info("FIDELITY_WEIGHTS_UNAVAILABLE", "a .pte program's weights pair by position "
                                       "only with another .pte program's"))
            else:
                weights = weight_fidelity(ctx.path, ctx.format, ref_path, ref_fmt, config, findings)
                if weights is not None:
                    metrics["weights"] = weights
        if not any(f.code == "FIDELITY_PAIR_MISMATCH" for f in findings):
            try:
                outputs = output_fidelity(ctx.path, ctx.format, ref_path, ref_fmt, config, findings)
            except BadShapes as exc:
                return Outcome(error=("bad_param", f"the reference {ref_path}: {exc}",
                                      "fix [guards.fidelity] input_shapes (or --param input_shapes) to the "
                                      "model's input rank and fixed dims"))
            if outputs is not None:
                metrics["outputs"] = outputs
        outcome = Outcome(metrics=metrics, findings=findings)
        outcome.summary = _summary(metrics)
        return outcome


GUARD = FidelityGuard()
