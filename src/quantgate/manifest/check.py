"""Release manifests: reading them safely, checking their claims, and writing them from measurement.

A manifest is a contract: every claim in it (path, size, sha256, format, method, coverage, layer
lists, parameter count) is checked against the file next to it. The same measurement writes one
(`quantgate manifest`), so export scripts can stop writing claims by hand.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantgate.core import confine as C
from quantgate.core import findings as F
from quantgate.core import jsonfile
from quantgate.core.confine import confine
from quantgate.core.coverage import coverage_metrics, matches_any
from quantgate.core.findings import Finding
from quantgate.core.hashing import sha256_file
from quantgate.core.inventory import FLOAT, Inventory, Layer
from quantgate.formats import MODEL_FORMATS, read_inventory
from quantgate.formats.sniff import sniff

MAX_MANIFEST_BYTES = 16 << 20
MANIFEST_VERSION = 1
INT8_METHODS = ("INT8", "W8A8")
INT4_METHODS = ("INT4", "W4A8", "W4A16")
FLOAT_METHODS = {"FP16": 16, "F16": 16, "BF16": 16, "FP32": 32, "F32": 32, "ALL_F32": 32}
# a parameter count may be rounded by the export script ("1.23B"): 0.5 % is still the same model
PARAMETERS_TOLERANCE = 0.005
BPW_TOLERANCE = 0.05

FINDING_CODES = {
    "MANIFEST_NOT_JSON": "The manifest is not UTF-8 JSON (or holds NaN, Infinity or an integer of more than 300 "
    "digits, which no claim can be).",
    "MANIFEST_NOT_OBJECT": "The manifest's top level is not a JSON object.",
    "MANIFEST_TOO_LARGE": "The manifest is larger than 16 MiB; it was not parsed.",
    "MANIFEST_TOO_DEEP": "The manifest nests too deeply to be a manifest; it was not parsed.",
    "MANIFEST_DUPLICATE_KEY": "A JSON object repeats a key (the last one would silently win).",
    "MANIFEST_SCHEMA": "The manifest breaks `schemas/manifest.schema.json` (one finding per error, with its JSON "
    "path).",
    "MANIFEST_PATH_ABSOLUTE": "An artifact path is absolute; paths are relative to the manifest's folder.",
    "MANIFEST_PATH_ESCAPES": "An artifact path leaves the manifest's folder (`..`, or a link resolving outside).",
    "MANIFEST_PATH_SYMLINK": "An artifact path goes through a symbolic link.",
    "MANIFEST_FILE_MISSING": "A listed artifact does not exist, or is not a regular file (never opened).",
    "MANIFEST_SIZE_MISMATCH": "The artifact's size differs from the claimed `size_bytes`.",
    "MANIFEST_SHA256_MISMATCH": "The artifact's sha256 differs from the claimed one.",
    "MANIFEST_FORMAT_MISMATCH": "The artifact's content is not the claimed format.",
    "MANIFEST_ARTIFACT_BROKEN": "The artifact fails integrity, so its quantization claims cannot hold.",
    "MANIFEST_METHOD_MISMATCH": "The claimed method is not what the artifact stores.",
    "MANIFEST_COVERAGE_OVERCLAIMED": "The claimed coverage is above the measured one by more than the tolerance.",
    "MANIFEST_COVERAGE_UNDERCLAIMED": "The claimed coverage is below the measured one by more than the tolerance.",
    "MANIFEST_COVERAGE_UNMEASURABLE": "Coverage is claimed but the artifact has no weight-bearing ops to measure.",
    "MANIFEST_PARAMETERS_MISMATCH": "The claimed parameter count differs from the artifact's by more than 0.5 %.",
    "MANIFEST_BPW_MISMATCH": "The claimed `bits_per_weight` differs from the measured one by more than 0.05.",
    "MANIFEST_LAYER_CLAIM_FALSE": "A layer claimed quantized is float, or one claimed fp32 is quantized.",
    "MANIFEST_LAYER_UNKNOWN": "A claimed layer name matches no weight-bearing layer (an `info`: norms and biases "
    "carry no coverage).",
}


class ManifestError(Exception):
    """The manifest cannot be read at all; `finding` says why."""

    def __init__(self, finding: Finding):
        super().__init__(finding.message)
        self.finding = finding


@dataclass
class ClaimedArtifact:
    """One artifact's claims, normalized from either form; `where` is its JSON path."""

    where: str
    path: str
    format: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    parameters: int | None = None
    quantization: dict[str, Any] = field(default_factory=dict)
    int8_coverage: float | None = None  # the short form's top-level extra
    reference: str | None = None  # the float artifact `fidelity` compares it with (long form)


# ---------------------------------------------------------------------------------------------
# reading


def _no_duplicates(duplicates: list[str]):  # -> hook
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    return hook


def load_manifest(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Finding]]:
    """Parse a manifest defensively; raises ManifestError when there is nothing to check."""
    size = os.path.getsize(path)
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(F.error("MANIFEST_TOO_LARGE", f"{size:,} bytes is larger than a manifest can be (16 MiB)"))
    raw = Path(path).read_bytes()
    duplicates: list[str] = []
    try:
        doc = jsonfile.loads(raw.decode("utf-8-sig"), object_pairs_hook=_no_duplicates(duplicates))
    except UnicodeDecodeError as exc:
        raise ManifestError(
            F.error("MANIFEST_NOT_JSON", f"not UTF-8 text at byte {exc.start}", offset=exc.start)
        ) from None
    except jsonfile.JSONFileError as exc:
        if exc.too_deep:
            raise ManifestError(
                F.error("MANIFEST_TOO_DEEP", f"the JSON nests too deeply to be a manifest ({exc})")
            ) from None
        raise ManifestError(F.error("MANIFEST_NOT_JSON", str(exc), offset=exc.pos)) from None
    if not isinstance(doc, dict):
        raise ManifestError(
            F.error("MANIFEST_NOT_OBJECT", f"the top level is a JSON {type(doc).__name__}, not an object")
        )
    found = [F.warning("MANIFEST_DUPLICATE_KEY", f"key {k!r} appears more than once", field=k) for k in duplicates]
    return doc, found


def form_of(doc: dict[str, Any]) -> str:
    return "short" if "pte_file" in doc and "manifest_version" not in doc and "artifacts" not in doc else "long"


def schema_findings(doc: dict[str, Any]) -> list[Finding]:
    from quantgate.core.jsonschemas import validate

    return [
        F.error("MANIFEST_SCHEMA", problem, field=problem.split(":", 1)[0])
        for problem in validate(doc, "manifest", form_of(doc))
    ]


def _typed(entry: dict[str, Any], key: str, kind: type) -> Any:
    value = entry.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def claimed_artifacts(doc: dict[str, Any]) -> list[ClaimedArtifact]:
    """Both forms as a list of claims (only well-typed entries; the schema reports the rest)."""
    if form_of(doc) == "short":
        quant = doc.get("quantization") if isinstance(doc.get("quantization"), dict) else {}
        i8 = doc.get("int8_coverage")
        return [
            ClaimedArtifact(
                where="$",
                path=str(doc["pte_file"]),
                format="pte",
                quantization=quant,
                int8_coverage=float(i8) if isinstance(i8, (int, float)) and not isinstance(i8, bool) else None,
            )
        ]
    out = []
    entries = doc.get("artifacts")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):  # else MANIFEST_SCHEMA says why
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            continue

        out.append(
            ClaimedArtifact(
                where=f"$.artifacts[{index}]",
                path=entry["path"],
                format=_typed(entry, "format", str),
                sha256=_typed(entry, "sha256", str),
                size_bytes=_typed(entry, "size_bytes", int),
                parameters=_typed(entry, "parameters", int),
                quantization=entry["quantization"] if isinstance(entry.get("quantization"), dict) else {},
                reference=_typed(entry, "reference", str),
            )
        )
    return out


def artifact_hints(doc: dict[str, Any], folder: Path) -> dict[str, dict[str, Any]]:
    """What a manifest in `folder` says about the artifacts it lists, by each artifact's resolved path:
    its claimed `parameters` (for size-heuristic) and its float `reference`, resolved (for fidelity).
    Paths that leave the folder are left out (the manifest guard reports them)."""
    hints: dict[str, dict[str, Any]] = {}
    for claim in claimed_artifacts(doc):
        target, problem = resolve_inside(folder, claim.path, claim.where)
        if problem is not None or target is None:
            continue
        found: dict[str, Any] = {}
        if claim.parameters:
            found["parameters"] = claim.parameters
        if claim.reference is not None:
            ref, ref_problem = resolve_inside(folder, claim.reference, claim.where)
            if ref_problem is None and ref is not None:
                found["reference"] = str(ref.resolve())
        if found:
            entry = hints.setdefault(str(target.resolve()), {})
            for key, value in found.items():
                entry.setdefault(key, value)
    return hints


def resolve_inside(folder: Path, relative: str, where: str) -> tuple[Path | None, Finding | None]:
    """The artifact's path, confined to the manifest's folder by the one confinement rule
    (quantgate.core.confine, docs/architecture.md#hostile-input) with no link on the path, checked before
    any read. A file that is not there is returned as its path: the caller reports MANIFEST_FILE_MISSING."""
    field_ = f"{where}.path"
    got = confine(folder, relative, links=False)
    if got.path is not None:
        return Path(got.path), None
    if got.refused == C.MISSING:
        return folder / relative, None
    if got.refused == C.ABSOLUTE:
        return None, F.error(
            "MANIFEST_PATH_ABSOLUTE",
            f"{relative!r} is absolute; make it relative to the manifest's folder",
            field=field_,
        )
    if got.dotdot:
        return None, F.error(
            "MANIFEST_PATH_ESCAPES",
            f"{relative!r} contains '..'; artifacts must sit inside the manifest's folder",
            field=field_,
        )
    if got.refused == C.ESCAPES:
        return None, F.error(
            "MANIFEST_PATH_ESCAPES",
            f"{relative!r} goes through the link {got.link!r} which resolves outside the manifest's folder",
            field=field_,
        )
    if got.refused == C.LINK:
        return None, F.error(
            "MANIFEST_PATH_SYMLINK",
            f"{relative!r} goes through the symbolic link {got.link!r}; ship the file itself",
            field=field_,
        )
    # not a file name, not a regular file (a FIFO is never opened), or not examinable
    return None, F.error("MANIFEST_FILE_MISSING", f"{relative!r} is listed but {got.detail}; not read", field=field_)


# ---------------------------------------------------------------------------------------------
# what the artifact stores


def _share(layers: Sequence[Layer], test) -> float:
    total = sum(x.params for x in layers)
    return sum(x.params for x in layers if test(x)) / total if total else 0.0


def precision_shares(layers: Sequence[Layer]) -> dict[str, float]:
    """Share of weight params per storage family, to say which one dominates."""
    return {
        "int8": _share(layers, lambda x: x.is_int8),
        "int4": _share(layers, lambda x: x.is_int4),
        "fp8": _share(layers, lambda x: bool(x.quantized) and x.numeric == FLOAT and x.bits == 8),
        "other_quantized": _share(
            layers,
            lambda x: (
                bool(x.quantized) and not x.is_int8 and not x.is_int4 and not (x.numeric == FLOAT and x.bits == 8)
            ),
        ),
        "bf16": _share(
            layers, lambda x: x.quantized is False and "bf16" in x.dtype.lower().replace("bfloat16", "bf16")
        ),
        "fp16": _share(
            layers,
            lambda x: (
                x.quantized is False and x.bits == 16 and "bf16" not in x.dtype.lower().replace("bfloat16", "bf16")
            ),
        ),
        "fp32": _share(layers, lambda x: x.quantized is False and x.bits is not None and x.bits >= 32),
        "unknown": _share(layers, lambda x: x.quantized is None),
    }


def dominant(shares: dict[str, float]) -> str:
    return max(shares, key=lambda k: (shares[k], k))


def gguf_type_bits(name: str) -> int | None:
    """Nominal bits a GGUF file-type name promises: Q8_0 -> 8, Q4_K_M -> 4, IQ2_XS -> 2, MXFP4 -> 4."""
    head = name.upper().removeprefix("MOSTLY_")
    for prefix in ("IQ", "TQ", "Q"):
        if head.startswith(prefix) and head[len(prefix) : len(prefix) + 1].isdigit():
            return int(head[len(prefix)])
    if head.startswith(("MXFP4", "NVFP4")):
        return 4
    return None


def infer_method(inventory: Inventory) -> str:
    """The method a manifest should claim for what the artifact stores."""
    file_type = inventory.metrics.get("file_type")
    if inventory.format == "gguf" and isinstance(file_type, str):
        name = file_type.upper().removeprefix("MOSTLY_")
        if gguf_type_bits(name) or name in FLOAT_METHODS:  # GGUF's own names: Q4_K_M, F16, ALL_F32
            return name
    shares = precision_shares(inventory.layers)
    return {"int8": "INT8", "int4": "INT4", "fp8": "FP8", "bf16": "BF16", "fp16": "FP16", "fp32": "FP32"}.get(
        method_family(shares), "FP32"
    )


QUANTIZED_FAMILIES = ("int8", "int4", "fp8", "other_quantized")


def method_family(shares: dict[str, float]) -> str:
    """The storage family a method names: the dominant quantized one when anything is quantized.

    A small model whose int8 linears hold fewer params than its float embedding is still an INT8 model
    (how much of it is quantized is the coverage claim's business); calling it FP32 would be false.
    """
    quantized = {k: shares[k] for k in QUANTIZED_FAMILIES if shares.get(k)}
    return dominant(quantized) if quantized else dominant(shares)


def method_problem(method: str, inventory: Inventory, metrics: dict[str, Any]) -> str | None:
    """Why the claimed method is not what is stored, or None when it is."""
    layers = inventory.layers
    if not layers:
        return None if method in FLOAT_METHODS else f"{method} claimed, but the artifact has no weight-bearing ops"
    shares = precision_shares(layers)
    top = method_family(shares)
    mix = ", ".join(f"{k} {v:.0%}" for k, v in shares.items() if v)
    if method in INT8_METHODS:
        if top != "int8":
            return f"{method} claimed, but {top} weights dominate ({mix} of weight params)"
        if method == "W8A8":
            compute = metrics.get("compute_coverage", {}).get("params")
            if compute and compute["integer"] == 0 and compute["unknown"] < 1:
                return "W8A8 claimed, but no weight-bearing op computes with int8 activations"
        return None
    if method in INT4_METHODS:
        return None if top == "int4" else f"{method} claimed, but {top} weights dominate ({mix} of weight params)"
    if method == "FP8":
        return None if top == "fp8" else f"FP8 claimed, but {top} weights dominate ({mix} of weight params)"
    if method in FLOAT_METHODS:
        quantized = metrics.get("params_quantized", 0)
        if quantized:
            return f"{method} claimed, but {quantized:,} weight params are stored quantized ({mix})"
        wanted = {"FP16": "fp16", "F16": "fp16", "BF16": "bf16"}.get(method, "fp32")
        return None if top == wanted else f"{method} claimed, but {top} weights dominate ({mix} of weight params)"
    bits = gguf_type_bits(method)
    if bits is None:
        return f"unknown method {method!r}"
    if inventory.format != "gguf":
        return f"{method} is a GGUF file type, but the artifact is {inventory.format}"
    file_type = inventory.metrics.get("file_type")
    if isinstance(file_type, str):
        same = file_type.upper().removeprefix("MOSTLY_") == method.upper().removeprefix("MOSTLY_")
        return None if same else f"{method} claimed, but general.file_type says {file_type}"
    weights = sum(x.params for x in layers)
    at_bits = sum(x.params for x in layers if x.quantized and x.bits is not None and round(x.bits) == bits)
    if at_bits < 0.5 * weights:
        return f"{method} claimed, but only {at_bits / max(weights, 1):.0%} of weight params are {bits}-bit"
    return None


def coverage_key(method: str) -> str:
    if method in INT8_METHODS:
        return "int8"
    if method in INT4_METHODS:
        return "int4"
    return "quantized"


# ---------------------------------------------------------------------------------------------
# checking


@dataclass
class _Checks:
    """What checking one artifact's claims has found so far: the findings, what was measured and how many
    claims were checked."""

    claim: ClaimedArtifact
    out: list[Finding] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)
    checked: int = 0

    def fails(self, code: str, message: str, at: str) -> None:
        self.out.append(F.error(code, f"{self.claim.path}{message}", field=f"{self.claim.where}{at}"))

    def result(self) -> tuple[list[Finding], dict[str, Any], int]:
        return self.out, self.measured, self.checked


def check_artifact(
    claim: ClaimedArtifact, folder: Path, tolerance: float, label: str | None = None
) -> tuple[list[Finding], dict[str, Any], int]:
    """Every claim about one artifact, each its own finding; returns (findings, measured, claims checked).

    The file first (confined path, present, size, sha256, format), then what its structure holds
    (parameters, method, coverage, bits per weight, layer lists); a wrong format or a broken file stops
    the checks that need its structure."""
    checks = _Checks(claim, measured={"path": claim.path})
    target, problem = resolve_inside(folder, claim.path, claim.where)
    if problem:
        return [problem], checks.measured, 1
    assert target is not None
    if not target.is_file():
        checks.checked = 1
        checks.fails("MANIFEST_FILE_MISSING", " is listed but does not exist", ".path")
        return checks.result()
    _check_bytes(checks, target, label)
    fmt = _check_format(checks, target)
    quant = claim.quantization
    wants_structure = bool(quant) or claim.parameters is not None or claim.int8_coverage is not None
    if fmt is None or not wants_structure:
        return checks.result()
    inventory = _sound_inventory(checks, target, fmt)
    if inventory is None:
        return checks.result()
    basis = quant.get("basis", "ops") if quant.get("basis") in ("ops", "params", "flops") else "ops"
    metrics, _ = coverage_metrics(inventory.layers, basis=basis)
    _check_parameters(checks, inventory)
    method = quant.get("method") if isinstance(quant.get("method"), str) else None
    _check_method(checks, inventory, method, metrics)
    _check_coverage(checks, inventory, basis, metrics, coverage_key(method or "INT8"), tolerance)
    _check_bits_per_weight(checks, metrics)
    _check_layer_lists(checks, inventory)
    return checks.result()


def _check_bytes(checks: _Checks, target: Path, label: str | None) -> None:
    """The claimed size and sha256 against the file's."""
    claim = checks.claim
    size = target.stat().st_size
    checks.measured["size_bytes"] = size
    if claim.size_bytes is not None:
        checks.checked += 1
        if claim.size_bytes != size:
            checks.fails(
                "MANIFEST_SIZE_MISMATCH", f" is {size:,} bytes, the manifest says {claim.size_bytes:,}", ".size_bytes"
            )
    if claim.sha256 is not None:
        checks.checked += 1
        digest = sha256_file(target, label or claim.path)
        checks.measured["sha256"] = digest
        if digest != claim.sha256.lower():
            checks.fails(
                "MANIFEST_SHA256_MISMATCH",
                f" has sha256 {digest[:16]}…, the manifest says {claim.sha256[:16]}…",
                ".sha256",
            )


def _check_format(checks: _Checks, target: Path) -> str | None:
    """The sniffed format, or None when it is not the claimed one (nothing further holds then)."""
    sniffed = sniff(target)
    checks.measured["format"] = sniffed.format
    claimed = checks.claim.format
    if claimed is not None:
        checks.checked += 1
        if sniffed.format != claimed:
            checks.fails("MANIFEST_FORMAT_MISMATCH", f" is {sniffed.format}, the manifest says {claimed}", ".format")
            return None
    return sniffed.format


def _sound_inventory(checks: _Checks, target: Path, fmt: str) -> Inventory | None:
    """The artifact's inventory, or None (with MANIFEST_ARTIFACT_BROKEN) when it fails integrity."""
    inventory = read_inventory(str(target), fmt) if fmt in MODEL_FORMATS else None
    if inventory is not None and inventory.structurally_sound:
        return inventory
    first = next((f for f in inventory.structural_findings if f.severity == F.ERROR), None) if inventory else None
    why = f": {first.code}: {first.message}" if first else f" ({fmt})"
    checks.checked += 1
    checks.fails("MANIFEST_ARTIFACT_BROKEN", f" fails integrity{why}", "")
    return None


def _check_parameters(checks: _Checks, inventory: Inventory) -> None:
    claimed, stored = checks.claim.parameters, inventory.params_stored
    checks.measured["parameters"] = stored
    if claimed is None or not stored:
        return
    checks.checked += 1
    if abs(claimed - stored) / stored > PARAMETERS_TOLERANCE:
        checks.fails(
            "MANIFEST_PARAMETERS_MISMATCH",
            f" stores {stored:,} parameters, the manifest says {claimed:,}",
            ".parameters",
        )


def _check_method(checks: _Checks, inventory: Inventory, method: str | None, metrics: dict[str, Any]) -> None:
    if not method:
        return
    checks.checked += 1
    checks.measured["method"] = infer_method(inventory)
    why = method_problem(method, inventory, metrics)
    if why:
        checks.fails("MANIFEST_METHOD_MISMATCH", f": {why}", ".quantization.method")


def _check_coverage(
    checks: _Checks, inventory: Inventory, basis: str, metrics: dict[str, Any], key: str, tolerance: float
) -> None:
    """`quantization.coverage` (on the claimed basis, of the method's precision) and the short form's
    `int8_coverage` (ops), each within the tolerance of the measured share."""
    claim, quant = checks.claim, checks.claim.quantization
    coverage_claims = []
    if isinstance(quant.get("coverage"), (int, float)) and not isinstance(quant.get("coverage"), bool):
        coverage_claims.append((float(quant["coverage"]), basis, key, ".quantization.coverage"))
    if claim.int8_coverage is not None:
        coverage_claims.append((claim.int8_coverage, "ops", "int8", ".int8_coverage"))
    for claimed, on_basis, of, at in coverage_claims:
        checks.checked += 1
        cov_metrics = metrics if on_basis == basis else coverage_metrics(inventory.layers, basis=on_basis)[0]
        basis_cov = cov_metrics["coverage"].get(on_basis)
        if basis_cov is None:
            checks.fails(
                "MANIFEST_COVERAGE_UNMEASURABLE",
                f": {claimed:.2%} {of} coverage claimed, but there are no weight-bearing ops to measure on {on_basis}",
                at,
            )
            continue
        actual = basis_cov[of]
        checks.measured.setdefault("coverage", {})[f"{on_basis}.{of}"] = actual
        if claimed - actual > tolerance:
            checks.fails(
                "MANIFEST_COVERAGE_OVERCLAIMED",
                f": {of} coverage on {on_basis} is {actual:.2%}, the manifest claims {claimed:.2%} "
                f"(tolerance {tolerance:g})",
                at,
            )
        elif actual - claimed > tolerance:
            checks.fails(
                "MANIFEST_COVERAGE_UNDERCLAIMED",
                f": {of} coverage on {on_basis} is {actual:.2%}, the manifest claims only {claimed:.2%} "
                f"(tolerance {tolerance:g})",
                at,
            )


def _check_bits_per_weight(checks: _Checks, metrics: dict[str, Any]) -> None:
    bpw = checks.claim.quantization.get("bits_per_weight")
    if not isinstance(bpw, (int, float)) or "bits_per_weight" not in metrics:
        return
    checks.checked += 1
    if abs(bpw - metrics["bits_per_weight"]) > BPW_TOLERANCE:
        checks.fails(
            "MANIFEST_BPW_MISMATCH",
            f": {metrics['bits_per_weight']:.3f} bits per weight measured, the manifest says {bpw}",
            ".quantization.bits_per_weight",
        )


def _check_layer_lists(checks: _Checks, inventory: Inventory) -> None:
    claim = checks.claim
    for key, want_quantized in (("quantized_layers", True), ("fp32_layers", False)):
        names = claim.quantization.get(key)
        if not isinstance(names, list):
            continue
        for index, name in enumerate(n for n in names if isinstance(n, str)):
            checks.checked += 1
            checks.out += _layer_claim(
                claim, inventory.layers, name, want_quantized, f"{claim.where}.quantization.{key}[{index}]"
            )


def claimed_layers(layers: Sequence[Layer], name: str) -> list[Layer]:
    """The layers a manifest's layer name claims: the layer of that exact name (or whose weight it
    names, `lm_head` for `lm_head.weight`), else those of that kind, else, for a name holding glob
    characters, the layers the glob matches. An exact name wins over a glob reading of it: real layer
    names hold `[` (`layers[0]`)."""
    exact = [x for x in layers if x.name == name or x.name == f"{name}.weight"]
    if exact:
        return exact
    of_kind = [x for x in layers if x.kind == name]
    if of_kind:
        return of_kind
    if any(c in name for c in "*?["):
        return [x for x in layers if matches_any(x, [name])]
    return []


def _layer_claim(
    claim: ClaimedArtifact, layers: Sequence[Layer], name: str, want_quantized: bool, where: str
) -> list[Finding]:
    """A claimed layer (its exact name, its module's name, an explicit glob or a kind) against the
    measured layers. Never a substring: `output.weight` must not claim `blk.0.attn_output.weight`."""
    matched = claimed_layers(layers, name)
    if not matched:
        return [
            F.info(
                "MANIFEST_LAYER_UNKNOWN",
                f"{claim.path}: {name!r} matches no weight-bearing layer",
                field=where,
            )
        ]
    wrong = [x for x in matched if x.quantized is (not want_quantized)]
    if not wrong:
        return []
    state = "float" if want_quantized else "quantized"
    sample = ", ".join(f"{x.name} ({x.dtype})" for x in wrong[:3]) + (
        f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
    )
    claimed = "quantized" if want_quantized else "fp32"
    return [
        F.error(
            "MANIFEST_LAYER_CLAIM_FALSE",
            f"{claim.path}: {name!r} is claimed {claimed}, but "
            f"{len(wrong)} of its {len(matched)} layer(s) are {state}: {sample}",
            field=where,
        )
    ]


# ---------------------------------------------------------------------------------------------
# writing


MAX_LISTED_LAYERS = 1000


def describe(path: Path, folder: Path, basis: str = "ops") -> tuple[dict[str, Any] | None, str | None]:
    """A long-form artifact entry measured from the file, or (None, why) when it cannot be described.

    (entry, note): described, with a note for the user: when most weights are in a layout no reader
    recognises, the entry pins the file (sha256, size, parameters) but claims no quantization, since
    nothing could check such a claim."""
    sniffed = sniff(path)
    if sniffed.format not in MODEL_FORMATS:
        return None, f"{path}: not a model artifact ({sniffed.format}: {sniffed.detail})"
    inventory = read_inventory(str(path), sniffed.format)
    if inventory is None:
        return None, f"{path}: no reader for {sniffed.format}"
    if not inventory.structurally_sound:
        first = next(f for f in inventory.structural_findings if f.severity == F.ERROR)
        return None, f"{path}: fails integrity ({first.code}: {first.message}); fix the artifact first"
    try:
        relative = path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None, f"{path} is outside {folder}; a manifest lists only files in its own folder"
    entry: dict[str, Any] = {
        "path": relative.as_posix(),
        "format": sniffed.format,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
    }
    if inventory.params_stored:
        entry["parameters"] = inventory.params_stored
    if inventory.layers and method_family(precision_shares(inventory.layers)) == "unknown":
        return entry, (
            f"{relative.as_posix()}: most weights are in a layout quantgate does not recognise; "
            "the entry claims no quantization (see the integrity and dtype guards' findings)"
        )
    if inventory.layers:
        method = infer_method(inventory)
        metrics, _ = coverage_metrics(inventory.layers, basis=basis)
        quant: dict[str, Any] = {
            "method": method,
            "coverage": round(metrics["coverage"][basis][coverage_key(method)], 6)
            if basis in metrics["coverage"]
            else 0.0,
            "basis": basis,
        }
        if "bits_per_weight" in metrics:
            quant["bits_per_weight"] = round(metrics["bits_per_weight"], 4)
        quantized = [x.name for x in inventory.layers if x.quantized]
        floats = [x.name for x in inventory.layers if x.quantized is False]
        if len(quantized) <= MAX_LISTED_LAYERS:
            quant["quantized_layers"] = quantized
        if len(floats) <= MAX_LISTED_LAYERS:
            quant["fp32_layers"] = floats
        if basis not in metrics["coverage"]:
            quant.pop("coverage")
        entry["quantization"] = quant
    return entry, None
